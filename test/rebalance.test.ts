/**
 * The seed, the Cairn way, with real processes: 2 shards and 30,000 rows; a
 * third shard joins with nothing restarted; `plan`, then `rebalance --yes`
 * moves about a third of the bytes and balances them; nothing is lost. Then
 * `dropserver` and `remserver` take a shard out again, online.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';

let cluster: ProcCluster;
const ROWS = 30_000;

beforeAll(async () => {
  cluster = await startProcCluster({ shards: 2 });
  const load = await cluster.ctl(['load', '--rows', String(ROWS), '--json']);
  expect(load.json).toEqual({ written: ROWS, errors: 0 });
}, 120_000);
afterAll(() => cluster?.cleanup());

async function servers() {
  return (await cluster.ctl(['servers', '--json'])).json.servers as Array<{ id: string; address: string; status: string; bytes: number; rows: number; ranges: number; share: number }>;
}

describe('the seed walkthrough, online', () => {
  it('a third shard joins at 0% with nothing restarted', async () => {
    await cluster.addShard();
    await waitUntil(async () => (await servers()).length === 3, 10_000, 'the third shard');
    expect((await cluster.ctl(['ranges'])).stdout).toContain('Server 2 0% (no range)');
  });

  it('plan lists the moves with their bytes, and changes nothing', async () => {
    await waitUntil(async () => (await servers()).reduce((n, s) => n + s.rows, 0) === ROWS, 10_000, 'exact counts');
    const before = (await cluster.ctl(['ranges', '--json'])).json;
    const plan = await cluster.ctl(['plan', '--json']);
    expect(plan.code).toBe(0);
    expect(plan.json.moves.length).toBeGreaterThan(0);
    for (const m of plan.json.moves) {
      expect(m).toEqual(expect.objectContaining({ start: expect.any(String), end: expect.any(String), from: expect.any(String), to: expect.any(String), bytes: expect.any(Number) }));
    }
    expect(plan.json.movedBytes).toBe(plan.json.moves.reduce((n: number, m: { bytes: number }) => n + m.bytes, 0));
    expect(plan.json.minimumBytes).toBeGreaterThan(0);
    expect((await cluster.ctl(['ranges', '--json'])).json).toEqual(before);
    const human = await cluster.ctl(['plan']);
    expect(human.stdout).toContain('The following moves will be made');
  });

  it('rebalance --yes moves about a third and leaves every shard within ±5% of the mean', async () => {
    const r = await cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 120_000 });
    expect(r.code).toBe(0);
    expect(r.json.aborted).toBe(0);
    expect(r.json.movedBytes).toBeLessThanOrEqual((1.05 * r.json.totalBytes) / 3);
    expect(r.json.movedBytes).toBeGreaterThan(0);
    await waitUntil(async () => {
      const s = await servers();
      return s.reduce((n, x) => n + x.rows, 0) === ROWS && s.every((x) => x.bytes > 0);
    }, 10_000, 'heartbeats with the new counts');
    const s = await servers();
    const mean = s.reduce((n, x) => n + x.bytes, 0) / s.length;
    for (const x of s) expect(Math.abs(x.bytes - mean) / mean).toBeLessThanOrEqual(0.05);
    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--json']);
    expect(verify.json).toEqual({ checked: ROWS, missing: 0, wrong: 0 });
    // Nothing left to do: a second plan is empty (hysteresis).
    expect((await cluster.ctl(['plan', '--json'])).json.moves).toEqual([]);
  }, 150_000);

  it('ranges now tile the space across three shards, and moves lists the journal', async () => {
    const ranges = (await cluster.ctl(['ranges', '--json'])).json.ranges as Array<{ start: string; end: string; shard: string }>;
    expect(ranges[0]!.start).toBe('0');
    for (let i = 1; i < ranges.length; i++) expect(ranges[i]!.start).toBe(ranges[i - 1]!.end);
    expect(ranges[ranges.length - 1]!.end).toBe((1n << 64n).toString());
    expect(new Set(ranges.map((r) => r.shard)).size).toBe(3);
    const moves = (await cluster.ctl(['moves', '--all', '--json'])).json.moves as Array<{ state: string }>;
    expect(moves.length).toBeGreaterThan(0);
    expect(moves.every((m) => m.state === 'cleaned')).toBe(true);
  });

  it('remserver refuses a shard that owns ranges, naming its range count and bytes', async () => {
    const s = await servers();
    const r = await cluster.ctl(['remserver', s[0]!.id, '--yes']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`${s[0]!.id} still owns \\d+ ranges? \\(\\d+ bytes`));
  });

  it('dropserver drains a shard online, then remserver removes it and its process exits 0', async () => {
    const s = await servers();
    const victim = s[2]!;
    const drain = await cluster.ctl(['dropserver', victim.id, '--yes', '--json'], { timeoutMs: 120_000 });
    expect(drain.code).toBe(0);
    expect(drain.json.aborted).toBe(0);
    expect(drain.json.moves.every((m: { from: string }) => m.from === victim.id)).toBe(true);
    const after = await servers();
    expect(after.find((x) => x.id === victim.id)).toMatchObject({ ranges: 0, share: 0 });
    const proc = cluster.shards.find((p) => victim.address.endsWith(`:${p.port}`))!;
    const rem = await cluster.ctl(['remserver', victim.id, '--yes', '--json']);
    expect(rem.code).toBe(0);
    expect(rem.json).toMatchObject({ id: victim.id, stopped: true });
    expect(await proc.exited).toBe(0);
    expect((await servers()).map((x) => x.id)).not.toContain(victim.id);
    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--json']);
    expect(verify.json).toEqual({ checked: ROWS, missing: 0, wrong: 0 });

    // Started again on its old data directory, the removed shard is refused by name, exits non-zero, and stays out.
    const again = await cluster.restart(proc);
    expect(await again.exited).toBe(1);
    expect(String(again.logs.find((l) => l.message === 'the master will not admit this shard')?.error)).toMatch(new RegExp(`shard ${victim.id} was removed`));
    expect((await servers()).map((x) => x.id)).not.toContain(victim.id);
  }, 150_000);

  it('dropserver with no other shard up fails at once with a clear message', async () => {
    const s = await servers();
    // Stop one of the two shards; the other cannot be drained anywhere.
    await cluster.stop(cluster.shards[1]!, 'SIGTERM');
    await waitUntil(async () => (await servers()).filter((x) => x.status === 'up').length === 1, 10_000, 'one shard up');
    const up = (await servers()).find((x) => x.status === 'up')!;
    const r = await cluster.ctl(['dropserver', up.id, '--yes']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/no other shard is up/);
    expect(s.length).toBe(2);
  }, 60_000);
});
