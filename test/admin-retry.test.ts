/**
 * Admin operations are safe to retry (issue: hardening, item 7). The SDK
 * retries StartRebalance, DropServer and RemoveServer after an ambiguous
 * failure; each call carries an operation id, so a retry gets the first
 * call's answer and never starts a second operation: when the answer is
 * lost on the way back, when the master dies after a removal and before it
 * answers, and when the master restarts while the operation runs. Real
 * processes; the failpoint `master-admin-answer` loses or cuts off the answer.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import type { CairnClient } from '../services/client/client.js';
import { runCtl, startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';
import { connectClient } from './nemesis/workload.js';

const ROWS = 600;

let cluster: ProcCluster | undefined;
let admin: CairnClient | undefined;

afterEach(async () => {
  admin?.close();
  admin = undefined;
  await cluster?.cleanup();
  cluster = undefined;
});

/** Every journaled move, with the operation it belongs to. */
async function allMoves(c: ProcCluster): Promise<Array<{ id: string; operationId: string; state: string }>> {
  const r = await c.ctl(['moves', '--all', '--json']);
  expect(r.code).toBe(0);
  return r.json.moves;
}

const fired = (c: ProcCluster, from = 0) => c.master.logs.slice(from).filter((l) => l.failpoint === 'master-admin-answer').length;

/** A loaded cluster of two shards with a third, empty one: a rebalance has moves to make. */
async function loadedCluster(masterEnv: NodeJS.ProcessEnv = {}): Promise<ProcCluster> {
  const c = await startProcCluster({ shards: 2, masterEnv });
  const load = await c.ctl(['load', '--rows', String(ROWS), '--value-size', '2000', '--seed', '3', '--json']);
  expect(load.code).toBe(0);
  await c.addShard();
  await waitUntil(async () => (await c.ctl(['servers', '--json'])).json?.servers?.filter((s: { status: string }) => s.status === 'up').length === 3, 30_000, 'three shards up');
  return c;
}

describe('admin operations are idempotent by operation id', () => {
  it('a rebalance whose answer is lost: ctl retries, gets the same operation, and follows it; one operation ran', async () => {
    cluster = await loadedCluster({ CAIRN_FAILPOINTS: 'master-admin-answer=lose' });
    const r = await cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 120_000 });
    expect(fired(cluster)).toBe(1); // the first answer really was lost
    expect(r.code).toBe(0);
    const moves = await allMoves(cluster);
    expect(moves.length).toBeGreaterThan(0);
    expect(new Set(moves.map((m) => m.operationId))).toEqual(new Set([r.json.id]));
    expect(moves.every((m) => m.state === 'cleaned' || m.state === 'committed')).toBe(true);
    expect((await cluster.ctl(['verify', '--rows', String(ROWS), '--value-size', '2000', '--seed', '3'])).code).toBe(0);
  }, 180_000);

  it('a drain whose answer is lost, retried through the SDK: one operation; the same id for another call is refused', async () => {
    cluster = await loadedCluster({ CAIRN_FAILPOINTS: 'master-admin-answer=lose' });
    admin = await connectClient(cluster.masterAddress, 30_000, 'admin');
    const servers = await admin.listServers();
    const victim = servers.find((s) => s.bytes > 0)!.id;
    const started = await admin.dropServer(victim, { operationId: 'drain-test-1' });
    expect(fired(cluster)).toBe(1);
    expect(started.operationId).toBe('drain-test-1');
    // The same id again (a late retry) answers the same, and starts nothing.
    const again = await admin.dropServer(victim, { operationId: 'drain-test-1' });
    expect(again.operationId).toBe('drain-test-1');
    expect(again.plan?.moves.length).toBe(started.plan?.moves.length);
    await expect(admin.startRebalance({ operationId: 'drain-test-1' })).rejects.toThrow(/operation_id: "drain-test-1" was already used for the drain of/);
    for await (const snap of admin.watchOperation('drain-test-1')) if (snap.done) break;
    const moves = await allMoves(cluster);
    expect(new Set(moves.map((m) => m.operationId))).toEqual(new Set(['drain-test-1']));
    expect((await admin.listServers()).find((s) => s.id === victim)!.ranges).toBe(0);
  }, 180_000);

  it('a rebalance retried after the master restarted mid-operation gets the journaled operation, not a second one', async () => {
    cluster = await loadedCluster();
    admin = await connectClient(cluster.masterAddress, 30_000, 'admin');
    // Slow moves, so the operation is still running when the master stops.
    const first = await admin.startRebalance({ operationId: 'rebalance-test-1', maxMbps: 0.2 });
    expect(first.plan?.moves.length).toBeGreaterThan(0);
    await cluster.stop(cluster.master);
    await cluster.restart(cluster.master);
    const retry = await admin.startRebalance({ operationId: 'rebalance-test-1', maxMbps: 0.2 });
    expect(retry.operationId).toBe('rebalance-test-1');
    expect(retry.plan?.moves.map((m) => `${m.start}-${m.to}`)).toEqual(first.plan?.moves.map((m) => `${m.start}-${m.to}`));
    for await (const snap of admin.watchOperation('rebalance-test-1')) if (snap.done) break;
    expect(new Set((await allMoves(cluster)).map((m) => m.operationId))).toEqual(new Set(['rebalance-test-1']));
  }, 180_000);

  it('a removal the master made durable before it died: ctl retries across the restart and reports the removal, not NOT_FOUND', async () => {
    cluster = await startProcCluster({ shards: 2 });
    const extra = await cluster.addShard(); // owns nothing: removable at once
    await waitUntil(async () => (await cluster!.ctl(['servers', '--json'])).json?.servers?.length === 3, 30_000, 'three shards');
    const id = (await cluster.ctl(['servers', '--json'])).json.servers.find((s: { address: string }) => s.address === extra.address).id;
    // The master crashes right after the removal is durable and the shard told to stop, before it answers.
    await cluster.stop(cluster.master);
    await cluster.restart(cluster.master, { env: { CAIRN_FAILPOINTS: 'master-admin-answer=crash' } });
    const crashed = cluster.master;
    const ctl = runCtl(['remserver', id, '--yes', '--timeout', '60000'], cluster.ctlEnv, 90_000);
    expect(await crashed.exited).not.toBe(0);
    expect(crashed.logs.some((l) => l.failpoint === 'master-admin-answer')).toBe(true);
    await cluster.restart(crashed);
    const r = await ctl;
    expect(r.stderr).not.toMatch(/no shard/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`Removed ${id}`));
    const servers = (await cluster.ctl(['servers', '--json'])).json.servers;
    expect(servers.map((s: { id: string }) => s.id)).not.toContain(id);
  }, 180_000);
});
