/**
 * Operator mistakes that used to lose acknowledged data (issue: data safety
 * first), reproduced with real processes and real LevelDB:
 *
 * - A master started on an empty directory formed a new epoch-1 map out of
 *   an existing cluster's shards; at the next map change (a shard joining)
 *   the shards deleted the ranges "lost in the new map". Now the master
 *   refuses them, naming their cluster id and epoch; they keep their map and
 *   data, report NOT_SERVING, and rejoin their own master by themselves.
 * - The master's directory truly lost: `cairn master rebuild` rebuilds its
 *   state from the shards, and verify finds every row.
 * - A copy of a live shard's directory started as a second process took over
 *   the shard's identity (the master re-pointed the id). Now it is refused
 *   while the original heartbeats and exits non-zero; nothing changes.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { CairnClient } from '../services/client/index.js';
import { CAIRN_BIN, spawnCairn, startProcCluster, waitUntil, type Proc, type ProcCluster } from './harness/cluster.js';
import { USERS } from './harness/inproc.js';
import { describeShard } from './harness/raw.js';

const ROWS = 3000;

function runCairn(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [CAIRN_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

/** The master's config with another data directory, written beside the original. */
async function masterYamlWith(cluster: ProcCluster, dataDir: string, name: string): Promise<string> {
  const conf = parse(await readFile(cluster.masterYaml, 'utf8')) as Record<string, unknown>;
  const file = join(cluster.dir, name);
  await writeFile(file, stringify({ ...conf, dataDir }));
  return file;
}

const alive = (p: Proc) => p.child.exitCode === null && p.child.signalCode === null;

describe('a master on the wrong state, and a lost master', () => {
  let cluster: ProcCluster;
  let clusterId: string;
  let epoch: bigint;

  beforeAll(async () => {
    cluster = await startProcCluster({ shards: 3 });
    const load = await cluster.ctl(['load', '--rows', String(ROWS), '--seed', '11', '--json']);
    expect(load.json).toEqual({ written: ROWS, errors: 0 });
    const d = await describeShard(cluster.shards[0]!.address);
    clusterId = d.clusterId;
    epoch = d.map!.epoch;
  }, 120_000);
  afterAll(() => cluster?.cleanup());

  it('every shard keeps the cluster id its master made when the cluster formed', async () => {
    expect(clusterId).toMatch(/^c-[0-9a-f]{16}$/);
    for (const s of cluster.shards) expect(await describeShard(s.address)).toMatchObject({ clusterId, registered: true, refusal: '' });
  });

  it('a master started on an empty directory forms nothing; the shards keep their map and data, and rejoin their own master by themselves', async () => {
    const pids = cluster.shards.map((s) => s.child.pid);
    // The cluster's shards are paused while the masters are swapped, so a new shard registers with the empty
    // master first and takes the id s1 there: s1's next heartbeat then names an id the empty master gave to
    // another process. It must be refused as another cluster's, never answered "superseded" (which stops s1).
    for (const s of cluster.shards) s.child.kill('SIGSTOP');
    await cluster.stop(cluster.master);
    const emptyYaml = await masterYamlWith(cluster, join(cluster.dir, 'master-empty'), 'master-empty.yaml');
    const impostor = await spawnCairn('master-empty', ['master', '--config', emptyYaml, '--listen', `127.0.0.1:${cluster.master.port}`], cluster.env);
    const refused = (id: string) => impostor.logs.find((l) => l.message === 'shard refused' && l.shardId === id);
    let joiner: Awaited<ReturnType<typeof cluster.addShard>> | undefined;
    try {
      // A new shard joining is the map change that made the shards delete data before.
      joiner = await cluster.addShard();
      await waitUntil(() => impostor.logs.some((l) => l.message === 'shard registered' && l.shardId === 's1'), 20_000, 'the new shard to take the id s1 on the empty master');
      for (const s of cluster.shards) if (s !== joiner) s.child.kill('SIGCONT');
      await waitUntil(() => ['s1', 's2', 's3'].every((id) => refused(id)), 20_000, 'the empty master to refuse every shard of the cluster');
      expect(refused('s1')).toMatchObject({ reason: 'CLUSTER_MISMATCH', why: expect.stringContaining(clusterId) });
      expect(String(refused('s1')!.why)).toContain(`map epoch ${epoch}`);
      expect(String(refused('s1')!.why)).toContain('cairn master rebuild');
      expect(impostor.logs.some((l) => l.message === 'All data servers have registered!')).toBe(false);

      for (const s of cluster.shards.slice(0, 3)) {
        const d = await describeShard(s.address);
        expect(d).toMatchObject({ clusterId, registered: false });
        expect(d.map!.epoch).toBe(epoch);
        expect(d.refusal).toContain('no cluster state');
        const health = await runCairn(['health', '--addr', s.address], {});
        expect(health.code).toBe(1); // NOT_SERVING while a master that is not its own refuses it
      }
    } finally {
      for (const s of cluster.shards) s.child.kill('SIGCONT');
      if (joiner) {
        await cluster.stop(joiner, 'SIGKILL');
        cluster.shards.splice(cluster.shards.indexOf(joiner), 1);
      }
      await cluster.stop(impostor);
    }

    await cluster.restart(cluster.master);
    await waitUntil(async () => {
      const r = await cluster.ctl(['servers', '--json']);
      return r.json.servers.length === 3 && r.json.servers.every((s: { status: string }) => s.status === 'up');
    }, 30_000, 'the shards to rejoin their own master');
    expect(cluster.shards.map((s) => s.child.pid)).toEqual(pids); // no shard was restarted
    expect(cluster.shards.every(alive)).toBe(true);
    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--seed', '11', '--json']);
    expect(verify.json).toMatchObject({ checked: ROWS, missing: 0, wrong: 0 });
    for (const s of cluster.shards) expect(await describeShard(s.address)).toMatchObject({ clusterId, registered: true, refusal: '' });
  }, 120_000);

  it('a lost master directory is rebuilt from the shards; verify finds every row and data moves again', async () => {
    await cluster.stop(cluster.master);
    await rm(join(cluster.dir, 'master'), { recursive: true, force: true });
    const from = cluster.shards.map((s) => s.address);

    const partial = await runCairn(['master', 'rebuild', '--config', cluster.masterYaml, '--from', from.slice(0, 2).join(',')], cluster.env);
    expect(partial.code).toBe(1);
    const third = (await describeShard(from[2]!)).shardId;
    expect(partial.stderr).toContain(`did not answer: ${third} (${from[2]})`);

    const rebuilt = await runCairn(['master', 'rebuild', '--config', cluster.masterYaml, '--from', from.join(',')], cluster.env);
    expect(rebuilt.stderr).toBe('');
    expect(rebuilt.code).toBe(0);
    expect(rebuilt.stdout).toContain(`Rebuilt cluster ${clusterId} at map epoch`);

    const again = await runCairn(['master', 'rebuild', '--config', cluster.masterYaml, '--from', from.join(',')], cluster.env);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('already holds master state');

    await cluster.restart(cluster.master);
    await waitUntil(async () => {
      const r = await cluster.ctl(['servers', '--json']);
      return r.json.servers.length === 3 && r.json.servers.every((s: { status: string }) => s.status === 'up');
    }, 30_000, 'the shards to register with the rebuilt master');
    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--seed', '11', '--json']);
    expect(verify.json).toMatchObject({ checked: ROWS, missing: 0, wrong: 0 });

    await cluster.addShard();
    await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers.length === 4, 20_000, 'a fourth shard');
    const r = await cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 120_000 });
    expect({ code: r.code, error: r.stderr.split('\n').filter((l) => l.startsWith('error')) }).toEqual({ code: 0, error: [] });
    expect(r.json.aborted).toBe(0);
    expect((await cluster.ctl(['verify', '--rows', String(ROWS), '--seed', '11', '--json'])).json).toMatchObject({ checked: ROWS, missing: 0, wrong: 0 });
    for (const s of cluster.shards) expect((await describeShard(s.address)).clusterId).toBe(clusterId);
  }, 180_000);
});

describe('a copy of a live shard directory', () => {
  let cluster: ProcCluster;
  beforeAll(async () => {
    cluster = await startProcCluster({ shards: 2 });
  }, 60_000);
  afterAll(() => cluster?.cleanup());

  it('is refused while the original heartbeats, exits non-zero, and changes nothing: every acknowledged write stays', async () => {
    const writer = USERS.find((u) => u.role === 'rw')!;
    const client = await CairnClient.connect({ master: cluster.masterAddress, user: writer.user, password: writer.password });
    const acked: string[] = [];
    let stop = false;
    const writing = (async () => {
      for (let i = 0; !stop && i < 100_000; i++) {
        try {
          await client.put(`copy-${i}`, { v: String(i) }, { timeoutMs: 5000 });
          acked.push(`copy-${i}`);
        } catch {
          /* unknown outcome: not counted */
        }
      }
    })();
    try {
      await waitUntil(() => acked.length >= 200, 20_000, 'some writes');
      const original = cluster.shards.find((p) => p.args.includes(join(cluster.dir, 'shard1')))!;
      const id = (await describeShard(original.address)).shardId;
      const before = (await cluster.ctl(['servers', '--json'])).json.servers;
      const copyDir = join(cluster.dir, 'shard1-copy');
      await cp(join(cluster.dir, 'shard1'), copyDir, { recursive: true });
      const copy = await spawnCairn('copy', [
        'shard', '--listen', '127.0.0.1:0', '--data-dir', copyDir, '--master', cluster.masterAddress,
        '--server-credential-file', cluster.credFile, '--heartbeat-interval-ms', '250',
      ], cluster.env);
      const code = await Promise.race([copy.exited, new Promise((r) => setTimeout(() => r('still running'), 30_000))]);
      if (code === 'still running') copy.child.kill('SIGKILL');
      expect(code).toBe(1);
      const refusal = copy.logs.find((l) => l.message === 'the master will not admit this shard');
      expect(refusal).toMatchObject({ reason: 'SESSION_CONFLICT', error: expect.stringContaining(`shard ${id} is live at ${original.address}`) });

      const after = (await cluster.ctl(['servers', '--json'])).json.servers;
      expect(after.map((s: { id: string; address: string; status: string }) => [s.id, s.address, s.status])).toEqual(
        before.map((s: { id: string; address: string }) => [s.id, s.address, 'up']),
      );
      expect(alive(original)).toBe(true);
    } finally {
      stop = true;
      await writing;
    }
    const got = await client.getRows(acked, { timeoutMs: 30_000 });
    const lost = acked.filter((row) => !got.get(row)?.length);
    expect(lost).toEqual([]);
    client.close();
  }, 120_000);
});
