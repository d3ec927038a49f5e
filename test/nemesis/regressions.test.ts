/**
 * Bugs the nemesis found in the move protocol, kept as regression tests.
 *
 * Found by a chaos run (seed 1653275238, 3 shards): "moves did not settle
 * within 120s: mv-mwv961br-463a38a9:aborted". The master's log:
 *
 *   1. move A [16095302118268731392, 18131773574770327552) → s1 fails
 *      ("Connection dropped": s1 was killed); A is journaled `aborted`;
 *      AbortMove on the source succeeds, DropRange on s1 fails (s1 is down),
 *      so the clean-up stays pending and is retried every second;
 *   2. s1 comes back; a new rebalance starts move B
 *      [16095302118268731392, 18184409395415220224) → s1, which covers A's range;
 *      A's DropRange was refused while B's pull ran;
 *   3. B commits: s1 owns the range; from then on A's DropRange was refused
 *      forever ("shard s1 owns part of ..."), and `ctl moves` listed A forever.
 *
 * Between 2 and 3 there was a worse window: once B's pull had finished
 * (READY) and before s1 installed the map that commits B, a DropRange for A
 * was not refused: it deleted B's finished copy, and the master then
 * committed B onto an empty range (every acknowledged write in it lost).
 *
 * The fix (services/shard/transfer-sink.ts `dropAbortedCopy`): DropRange deletes
 * only the parts of the range the shard neither owns nor holds for another
 * move. Every pull clears its range before copying, so A's leftovers there
 * are gone already.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { status } from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CairnClient } from '../../services/client/client.js';
import { deriveTokenKey, mintToken } from '../../services/common/auth.js';
import { endToProto } from '../../services/common/hash.js';
import { MasterStore } from '../../services/master/store.js';
import { moveToJson, newMove, transition } from '../../services/master/moves.js';
import { startInProcCluster, TEST_CREDENTIAL, type InProcCluster } from '../harness/inproc.js';
import { ProcessCluster } from '../harness/procs.js';
import { decode, invokeRaw, invokeStream, rawClient, rpc } from './rpc.js';
import { connectClient } from './workload.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A server token of the cluster `clusterId`: shards refuse internal calls from another cluster. */
const serverHeader = (clusterId?: string) => `Bearer ${mintToken(deriveTokenKey(TEST_CREDENTIAL), 'regression-test', 'server', 600_000, Date.now(), clusterId).token}`;
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('move protocol regressions found by the nemesis', () => {
  it('stuck clean-up: an aborted move whose destination has since come to own its range finishes its clean-up', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cairn-regression-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const c = await ProcessCluster.start({ dir, shards: 2 });
    cleanups.push(() => c.stopAll());
    const writer = await connectClient(c.masterAddress, 30_000);
    await writer.writeRows(Array.from({ length: 600 }, (_, i) => ({ row: `reg/${i}`, cells: { c: 'x'.repeat(100) } })));
    writer.close();
    await c.addShard();
    const admin = await connectClient(c.masterAddress, 30_000, 'admin');
    cleanups.push(() => admin.close());
    await c.waitReady();
    // A clean rebalance gives the new shard a range B that an earlier shard owned.
    await admin.startRebalance();
    let moved: { start: bigint; end: bigint; from: string; to: string } | undefined;
    for (const until = Date.now() + 60_000; !moved; await sleep(200)) {
      const moves = (await admin.admin((a) => a.listMoves, { all: true })).moves;
      if (moves.length && moves.every((m) => m.state === 'cleaned' || m.state === 'aborted')) moved = moves.find((m) => m.state === 'cleaned');
      if (Date.now() > until) throw new Error('the rebalance did not finish');
    }
    expect(moved).toBeDefined();

    // The journal as the chaos run left it: an earlier move A of the same range to the same
    // destination, aborted while the destination was down, its clean-up not done.
    await c.kill(c.master);
    const store = await MasterStore.open(join(dir, 'master'));
    let a = newMove({ id: 'mv-0-aborted-earlier', start: moved!.start, end: moved!.end === 0n ? 1n << 64n : moved!.end, from: moved!.from, to: moved!.to, bytes: 0 });
    a = transition(a, 'copying');
    a = transition(a, 'aborted', Date.now(), 'Connection dropped');
    await store.saveMove(a.id, { move: moveToJson(a), operationId: 'op-0-earlier', cleanupDone: false });
    await store.close();
    await c.restart(c.master);

    // The destination's copy of A is long gone (B's pull cleared the range first): nothing is left to clean.
    let pending: string[] = [];
    for (const until = Date.now() + 15_000; Date.now() < until; await sleep(500)) {
      pending = (await admin.admin((x) => x.listMoves, { all: false })).moves.map((m) => `${m.id}:${m.state}`);
      if (pending.length === 0) break;
    }
    expect(pending).toEqual([]);
  }, 180_000);

  it("DropRange of an aborted move keeps another move's finished (READY) copy of the range", async () => {
    const cluster: InProcCluster = await startInProcCluster({ shards: 2 });
    cleanups.push(() => cluster.stop());
    const w = await CairnClient.connect({ master: cluster.masterAddress, user: 'writer', password: 'writer-pass' });
    cleanups.push(() => w.close());
    await w.writeRows(Array.from({ length: 500 }, (_, i) => ({ row: `reg/${i}`, cells: { c: 'x'.repeat(100) } })));
    const dest = await cluster.addShard();
    const source = cluster.shards.find((s) => s.node.ownedRanges().some((r) => r.start === 0n))!;
    const range = { start: 0n, end: 1n << 62n }; // bucket-aligned, owned by the source
    const before = source.node.store.rangeStats(range);
    expect(before.rows).toBeGreaterThan(0);
    const epoch = String(source.node.map.epoch);
    const d = rawClient(dest.address);
    const s = rawClient(source.address);
    cleanups.push(() => (d.close(), s.close()));
    const hdr = serverHeader(cluster.master.master.clusterId);

    // As the master: move B pulls the range to the destination, to READY (the source is now fenced).
    const pull = rpc('ShardControlService', 'PullRange');
    const pulled = await invokeStream(d, pull, pull.encode({ moveId: 'mv-B', start: '0', end: String(range.end), sourceShardId: source.node.id, sourceAddress: source.address, epoch }), hdr);
    expect(status[pulled.code]).toBe('OK');
    expect(decode('cairn.v1.PullRangeResponse', pulled.messages.at(-1)!).phase).toBe('TRANSFER_PHASE_READY');
    expect(dest.node.store.rangeStats(range)).toEqual(before);

    // The late clean-up of an earlier aborted move A of the same range reaches the destination before B commits.
    const drop = rpc('ShardControlService', 'DropRange');
    const dropped = await invokeRaw(d, drop, drop.encode({ moveId: 'mv-A', start: '0', end: String(endToProto(range.end)), epoch }), hdr);
    const after = dest.node.store.rangeStats(range);
    const state = decode('cairn.v1.GetMoveStateResponse', (await invokeRaw(d, rpc('ShardControlService', 'GetMoveState'), rpc('ShardControlService', 'GetMoveState').encode({ moveId: 'mv-B' }), hdr)).messages[0]!);

    // Put things back: B aborts on both sides (lifts the source's fence).
    const abort = rpc('ShardControlService', 'AbortMove');
    await invokeRaw(s, abort, abort.encode({ moveId: 'mv-B', epoch }), hdr);
    await invokeRaw(d, abort, abort.encode({ moveId: 'mv-B', epoch }), hdr);

    // A's clean-up is done (nothing of A is left there), B's copy is whole, and B is still READY.
    expect({ drop: status[dropped.code], deleted: String(decode('cairn.v1.DropRangeResponse', dropped.messages[0]!).deletedKeys ?? 0), rowsLeft: after.rows, bReportedAs: state.pullPhase }).toEqual({
      drop: 'OK',
      deleted: '0',
      rowsLeft: before.rows,
      bReportedAs: 'TRANSFER_PHASE_READY',
    });
  }, 60_000);
});
