/**
 * Compose, without Docker. deploy/docker-compose.yml is read and every
 * service runs as a local process with the command, environment, mounted
 * config file, secret and health check declared there (test/harness/compose.ts;
 * the only change: service hostnames and ports become distinct loopback
 * ports, container paths become temp dirs). Then the seed walkthrough as the
 * README's "Run with docker compose" shows it: load rows, start the
 * `scale-out` shard, `ctl rebalance --yes`, verify; and every process stops
 * with SIGTERM and exits 0. The compose master config keeps three copies of
 * every range, so the shards' row counts add up to three times the rows, and
 * the rebalance moves copies onto the new shard.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashPassword } from '../services/common/auth.js';
import { LocalCompose } from './harness/compose.js';
import { waitUntil } from './harness/cluster.js';

const PASSWORD = 'compose-test-password';
const ROWS = 8000;
const COPIES = 3; // deploy/config/master.yaml: replicationFactor 3
let dir: string;
let dc: LocalCompose;

/** `docker compose exec -e CAIRN_USER -e CAIRN_PASSWORD master cairn ctl …`, as the README does it. */
function ctl(args: string[], timeoutMs = 120_000) {
  return dc.exec('master', ['cairn', 'ctl', ...args], { CAIRN_USER: 'admin', CAIRN_PASSWORD: PASSWORD, CAIRN_MASTER: `127.0.0.1:${dc.port('master', 7000)}` }, timeoutMs);
}

async function servers(): Promise<Array<{ id: string; address: string; status: string; rows: number; ranges: number; share: number; bytes: number }>> {
  const r = await ctl(['servers', '--json']);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout).servers;
}

async function scrape(service: string): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${dc.port(service, 9100)}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cairn-compose-'));
  // What the operator prepares (README): the server credential file and CAIRN_CLIENTS in deploy/.env.
  dc = new LocalCompose(
    dir,
    { CAIRN_CLIENTS: `admin:${hashPassword(PASSWORD)}:admin` },
    { server_credential: randomBytes(24).toString('base64') + '\n' },
  );
  await dc.allocatePorts();
}, 30_000);

afterAll(async () => {
  await dc?.down('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('docker compose, as local processes', () => {
  it('the master needs CAIRN_CLIENTS, as compose refuses to start without it', async () => {
    const bare = new LocalCompose(join(dir, 'bare'), {}, { server_credential: 'x'.repeat(32) });
    await bare.allocatePorts();
    expect(() => bare.env('master')).toThrow(/required variable CAIRN_CLIENTS/);
    expect(() => bare.env('shard1')).not.toThrow();
  });

  it('`up -d`: the master, then shards 1-3 once it is healthy; every health check passes', async () => {
    const initial = dc.cairnServices().filter((s) => !dc.service(s).profiles?.length);
    expect(initial.sort()).toEqual(['master', 'shard1', 'shard2', 'shard3']);
    // depends_on: master healthy first.
    const waves = [initial.filter((s) => !dc.service(s).depends_on), initial.filter((s) => dc.service(s).depends_on)];
    expect(waves[0]).toEqual(['master']);
    for (const wave of waves) {
      for (const s of wave) dc.up(s);
      await Promise.all(wave.map((s) => dc.waitHealthy(s, 90_000)));
    }
    await waitUntil(async () => {
      const s = await servers();
      return s.length === 3 && s.every((x) => x.status === 'up' && x.ranges === 1);
    }, 60_000, 'three shards up with one range each (expectShards: 3)');
    const s = await servers();
    // Each shard advertises its service name (remapped to its loopback port here).
    expect(s.map((x) => x.address).sort()).toEqual(['shard1', 'shard2', 'shard3'].map((n) => `127.0.0.1:${dc.port(n, Number(/:(\d+)$/.exec(String(dc.service(n).environment!.CAIRN_ADVERTISE))![1]))}`).sort());
  }, 180_000);

  it(`load ${ROWS} rows`, async () => {
    const r = await ctl(['load', '--rows', String(ROWS), '--json']);
    expect({ code: r.code, stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(JSON.parse(r.stdout)).toEqual({ written: ROWS, errors: 0 });
  }, 180_000);

  it('`docker compose --profile scale-out up -d shard4`: it joins at 0%', async () => {
    expect(dc.service('shard4').profiles).toEqual(['scale-out']);
    dc.up('shard4');
    await dc.waitHealthy('shard4', 90_000);
    await waitUntil(async () => (await servers()).length === 4, 30_000, 'the fourth shard');
    const s4 = (await servers()).find((x) => x.address.endsWith(`:${dc.port('shard4', 7004)}`))!;
    expect(s4).toMatchObject({ status: 'up', ranges: 0, share: 0, rows: 0 });
  }, 120_000);

  it('`cairn ctl rebalance --yes` moves data onto it and verify finds every row', async () => {
    await waitUntil(async () => (await servers()).reduce((n, x) => n + x.rows, 0) === ROWS * COPIES, 30_000, 'exact counts in heartbeats');
    const r = await ctl(['rebalance', '--yes', '--json'], 180_000);
    expect({ code: r.code, stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stderr: '' });
    const out = JSON.parse(r.stdout);
    expect(out.aborted).toBe(0);
    expect(out.moves.length).toBeGreaterThan(0);
    expect(out.moves.every((m: { to: string }) => m.to === out.moves[0].to)).toBe(true);
    await waitUntil(async () => {
      const s = await servers();
      return s.length === 4 && s.every((x) => x.status === 'up' && x.rows > 0) && s.reduce((n, x) => n + x.rows, 0) === ROWS * COPIES;
    }, 30_000, 'every shard holding rows');
    const v = await ctl(['verify', '--rows', String(ROWS), '--json']);
    expect(JSON.parse(v.stdout)).toEqual({ checked: ROWS, missing: 0, wrong: 0 });
    expect(v.code).toBe(0);
  }, 240_000);

  it('every process serves the metrics the compose file publishes', async () => {
    const m = await scrape('master');
    expect(m).toMatch(/^cairn_requests_total\{service="admin",method="StartRebalance",code="OK"\} 1$/m);
    expect(m).toMatch(/^cairn_map_epoch [1-9]\d*$/m);
    expect(m).toMatch(/^cairn_moves_in_flight 0$/m);
    expect(m).toMatch(/^cairn_move_bytes_transferred_total [1-9]/m);
    for (const s of ['shard1', 'shard2', 'shard3', 'shard4']) {
      const t = await scrape(s);
      expect(t).toMatch(/^cairn_shard_rows\{shard="s\d+"\} [1-9]\d*$/m);
      expect(t).toContain('process_cpu_user_seconds_total');
    }
  }, 60_000);

  it('`docker compose down`: SIGTERM, and every process exits 0', async () => {
    const shards = ['shard1', 'shard2', 'shard3', 'shard4'];
    expect(await Promise.all(shards.map((s) => dc.stop(s, 'SIGTERM')))).toEqual([0, 0, 0, 0]);
    expect(await dc.stop('master', 'SIGTERM')).toBe(0);
  }, 120_000);
});
