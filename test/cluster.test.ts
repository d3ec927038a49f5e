/**
 * The seed's first day with real OS processes: a master expecting 2 shards,
 * two shards, `ctl ranges`, `ctl load` / `ctl verify`, then every process
 * stopped with SIGTERM and started again with nothing lost.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { HASH_SPACE_END } from '../services/common/hash.js';
import { startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';

let cluster: ProcCluster;
const ROWS = 20_000;

beforeAll(async () => {
  cluster = await startProcCluster({ shards: 2 });
}, 60_000);
afterAll(() => cluster?.cleanup());

describe('two shards as separate processes', () => {
  it('ranges shows two 50% ranges that tile [0, 2^64)', async () => {
    const human = await cluster.ctl(['ranges']);
    expect(human.code).toBe(0);
    expect(human.stdout).toContain('Server 0 50% [00000000000000000000, 09223372036854775808[');
    expect(human.stdout).toContain('Server 1 50% [09223372036854775808, 18446744073709551616[');

    const { json } = await cluster.ctl(['ranges', '--json']);
    expect(json.ranges).toHaveLength(2);
    expect(json.ranges[0].start).toBe('0');
    expect(json.ranges[0].end).toBe(json.ranges[1].start);
    expect(json.ranges[1].end).toBe(HASH_SPACE_END.toString());
    expect(new Set(json.ranges.map((r: { shard: string }) => r.shard)).size).toBe(2);
    // One copy each: the group names the primary alone.
    for (const r of json.ranges) expect(r).toMatchObject({ primary: r.shard, replicas: [r.shard], inSync: [r.shard], learners: [] });
  });

  it(`loads ${ROWS} rows and verifies them: 0 missing, 0 wrong`, async () => {
    const load = await cluster.ctl(['load', '--rows', String(ROWS), '--json']);
    expect(load.code).toBe(0);
    expect(load.json).toEqual({ written: ROWS, errors: 0 });
    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--json']);
    expect(verify.json).toEqual({ checked: ROWS, missing: 0, wrong: 0 });
    expect(verify.code).toBe(0);
    // A different seed wrote nothing: verify must say so and exit non-zero.
    const other = await cluster.ctl(['verify', '--rows', '100', '--seed', '7', '--json']);
    expect(other.json).toEqual({ checked: 100, missing: 100, wrong: 0 });
    expect(other.code).not.toBe(0);
  }, 120_000);

  it('servers shows both shards up, with exact rows summing to the load', async () => {
    await waitUntil(async () => {
      const { json } = await cluster.ctl(['servers', '--json']);
      return json.servers.reduce((n: number, s: { rows: number }) => n + s.rows, 0) === ROWS;
    }, 10_000, 'heartbeats to carry the new counts');
    const { json, code } = await cluster.ctl(['servers', '--json']);
    expect(code).toBe(0);
    expect(json.servers).toHaveLength(2);
    for (const s of json.servers) {
      expect(s.status).toBe('up');
      expect(s.share).toBeCloseTo(0.5, 3);
      expect(s.rows).toBeGreaterThan(ROWS * 0.45);
      expect(s.bytes).toBeGreaterThan(s.rows * 100);
      expect(s).toMatchObject({ primaries: 1, followers: 0, learners: 0 });
    }
  });

  it('after every process is stopped with SIGTERM and started again, verify still finds every row', async () => {
    const exits = await Promise.all(cluster.shards.map((s) => cluster.stop(s, 'SIGTERM')));
    expect(exits).toEqual([0, 0]);
    expect(await cluster.stop(cluster.master, 'SIGTERM')).toBe(0);
    await cluster.restart(cluster.master);
    for (const s of [...cluster.shards]) await cluster.restart(s);
    await waitUntil(async () => {
      const { json } = await cluster.ctl(['servers', '--json']);
      return json.servers.every((s: { status: string }) => s.status === 'up');
    }, 20_000, 'both shards up again');
    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--json']);
    expect(verify.json).toEqual({ checked: ROWS, missing: 0, wrong: 0 });
    const ranges = await cluster.ctl(['ranges', '--json']);
    expect(ranges.json.epoch).not.toBe('0');
    expect(ranges.json.ranges).toHaveLength(2);
  }, 120_000);

  it('data commands: put, get, scan, delete', async () => {
    expect((await cluster.ctl(['put', 'aff4:/C.1', 'metadata:hostname', 'host-1'])).code).toBe(0);
    const got = await cluster.ctl(['get', 'aff4:/C.1', '--json']);
    expect(got.json.cells.map((c: { column: string; value: string }) => [c.column, c.value])).toEqual([['metadata:hostname', 'host-1']]);
    const scan = await cluster.ctl(['scan', 'aff4:/', '--json']);
    expect(scan.json.rows.map((r: { row: string }) => r.row)).toEqual(['aff4:/C.1']);
    expect((await cluster.ctl(['delete', 'aff4:/C.1'])).code).toBe(0);
    expect((await cluster.ctl(['get', 'aff4:/C.1'])).code).not.toBe(0);
  });

  it('expected errors print one line and exit non-zero, without a stack', async () => {
    const bad = await cluster.ctl(['servers'], { env: { CAIRN_PASSWORD: 'wrong' } });
    expect(bad.code).toBe(4);
    expect(bad.stderr).toMatch(/^error: login failed/m);
    expect(bad.stderr).not.toMatch(/\n\s+at /);
    const unknown = await cluster.ctl(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
  });

  it('global flags work before the subcommand too', async () => {
    const r = await cluster.ctl(['--json', '--master', cluster.masterAddress, 'servers']);
    expect(r.code).toBe(0);
    expect(r.json.servers).toHaveLength(2);
  });

  it('a shard that joins later starts at 0%, owning no range, with nothing restarted', async () => {
    const before = (await cluster.ctl(['ranges', '--json'])).json;
    await cluster.addShard();
    await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers.length === 3, 10_000, 'the third shard');
    const human = await cluster.ctl(['ranges']);
    expect(human.stdout).toContain('Server 2 0% (no range)');
    const after = (await cluster.ctl(['ranges', '--json'])).json;
    expect(after.ranges.map((r: { start: string; shard: string }) => [r.start, r.shard])).toEqual(
      before.ranges.map((r: { start: string; shard: string }) => [r.start, r.shard]),
    );
    expect(BigInt(after.epoch)).toBeGreaterThan(BigInt(before.epoch));
    const { json } = await cluster.ctl(['servers', '--json']);
    expect(json.servers[2]).toMatchObject({ status: 'up', share: 0, ranges: 0, rows: 0 });
  });

  it('a shard killed with SIGKILL is shown as down, and up again after a restart', async () => {
    const victim = cluster.shards[2]!;
    await cluster.stop(victim, 'SIGKILL');
    await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers[2].status === 'down', 10_000, 'the killed shard to show as down');
    await cluster.restart(victim);
    await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers[2].status === 'up', 10_000, 'the shard to come back up');
  });
});
