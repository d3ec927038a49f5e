/**
 * The follower's side of replication (docs/design.md "Replication and
 * failover"): the Replicate stream a primary opens to this shard for one
 * range. Each message is checked against the follower's map and log, then
 * applied to the store with the follower's new log position in the same
 * batch, and answered.
 *
 * - A sender whose group version is older than ours is refused (STALE): a
 *   deposed primary collects no acknowledgement, so it can acknowledge no
 *   client write. A newer one makes us fetch the map first.
 * - Log matching (Raft's): entries are taken only after an entry both logs
 *   hold with the same term. A log that ends too early answers MISMATCH with
 *   where it ends; a log holding entries the primary lacks (from a primary
 *   that was deposed before they were acknowledged) answers SNAPSHOT_NEEDED.
 *   Entries are applied as they arrive, so such a suffix cannot be cut off:
 *   the range is copied again instead.
 * - A snapshot deletes our copy of the range, takes the primary's chunks and
 *   ends at the primary's position. Until it ends, the position says "empty",
 *   so a crash mid-snapshot starts it again.
 */
import type { Logger } from 'winston';
import type { ReplicateRequest, ReplicateResponse } from '../../proto/gen/cairn/v1/control.js';
import { CairnError } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import { inSyncOf, learnersOf, replicasOf, type ClusterMap } from '../common/map.js';
import { rangeKey, showRange, type HashRange } from '../common/ranges.js';
import { positionKey, positionToJson, type RangeLog, type RangeLogs } from './replica-log.js';
import type { RawOp, ShardStore } from './store.js';
import { unpackOps } from './replica-wire.js';
import { fromWireOps, opsBytes, rangeFromRequest } from './transfer-wire.js';

/** What the follower's side needs from its shard (ShardNode implements it). */
export interface ReplicaHost {
  readonly log: Logger;
  readonly nodeId: string;
  readonly map: ClusterMap;
  readonly store: Pick<ShardStore, 'metaOp' | 'applyReplicated' | 'deleteRange' | 'putMeta'>;
  readonly rangeLogs: RangeLogs;
  ensureEpoch(epoch: bigint): Promise<void>;
  /** A message from the range's current primary at its current version (primary-silence.ts). */
  heardFromPrimary(range: HashRange, version: bigint): void;
}

type Answer = Omit<ReplicateResponse, 'version' | 'logEndLsn' | 'logEndTerm' | 'readsPackedOps'>;

const accepted = (lsn: bigint, term: bigint): Answer => ({ outcome: 'ACCEPTED', lastLsn: lsn, lastTerm: term, message: '' });

/**
 * Serves one Replicate stream: answers each message in order. A primary's
 * stream never ends by itself: `stop` (the shard is shutting down) ends it,
 * so the shard's drain does not wait its whole grace for streams (defect:
 * every replicated shard took its full shutdownGraceMs to stop).
 */
export async function serveReplicate(host: ReplicaHost, requests: AsyncIterable<ReplicateRequest>, send: (res: ReplicateResponse) => Promise<void>, stop?: AbortSignal): Promise<void> {
  const messages = requests[Symbol.asyncIterator]();
  const stopped = new Promise<'stopped'>((resolve) => {
    if (stop?.aborted) resolve('stopped');
    stop?.addEventListener('abort', () => resolve('stopped'), { once: true });
  });
  for (;;) {
    const next = await Promise.race([messages.next(), stopped]);
    if (next === 'stopped' || next.done) return;
    await send(await answer(host, next.value));
  }
}

/** Per range, one message at a time, whichever stream it came on (an old and a new primary may overlap). */
const queues = new WeakMap<ReplicaHost, Map<string, { range: HashRange; last: Promise<unknown> }>>();

function serially<T>(host: ReplicaHost, range: HashRange, fn: () => Promise<T>): Promise<T> {
  let q = queues.get(host);
  if (!q) queues.set(host, (q = new Map()));
  const key = rangeKey(range);
  const run = (q.get(key)?.last ?? Promise.resolve()).then(fn, fn);
  q.set(key, { range, last: run.catch(() => undefined) });
  return run;
}

async function answer(host: ReplicaHost, req: ReplicateRequest): Promise<ReplicateResponse> {
  const range = rangeFromRequest(req.start, req.end);
  if (req.epoch > host.map.epoch) await host.ensureEpoch(req.epoch);
  return serially(host, range, async () => {
    const r = host.map.ranges.find((x) => x.start === range.start && x.end === range.end);
    const version = r?.version ?? 0n;
    const refuse = (outcome: string, message: string): ReplicateResponse => ({ version, outcome, lastLsn: 0n, lastTerm: 0n, message, logEndLsn: 0n, logEndTerm: 0n, readsPackedOps: true });
    if (!r) return refuse('STALE', `shard ${host.nodeId} has no range ${showRange(range)} in map epoch ${host.map.epoch}`);
    if (req.version < version) return refuse('STALE', `version ${req.version} of ${showRange(range)} is older than ours, ${version}`);
    if (req.version > version) throw new CairnError('NOT_READY', `shard ${host.nodeId} holds version ${version} of ${showRange(range)}, older than ${req.version}; retry`, { retryAfterMs: 100 });
    const member = replicasOf(r).includes(host.nodeId) || learnersOf(r).includes(host.nodeId);
    if (r.shardId !== req.primary || r.shardId === host.nodeId || !member) {
      return refuse('STALE', `at version ${version} of ${showRange(range)} the primary is ${r.shardId} and shard ${host.nodeId} is ${member ? 'a follower' : 'no member'}`);
    }
    host.heardFromPrimary(range, version);
    await settleWholeRange(host, range);
    const log = await host.rangeLogs.get(range);
    const answer = await apply(host, range, log, req);
    return { version, ...answer, logEndLsn: log.lastLsn, logEndTerm: log.lastTerm, readsPackedOps: true };
  });
}

/**
 * A piece of a split range continues the whole range's log (replica-log.ts
 * `coveringPosition`): a message of the whole range still being applied
 * (taken before this shard had the map with the split) lands first, so the
 * piece starts from where the whole log really ends. Messages of the whole
 * range that come later are refused: it is no longer in the map.
 */
async function settleWholeRange(host: ReplicaHost, range: HashRange): Promise<void> {
  const q = queues.get(host);
  if (!q) return;
  // The queue's ranges as they came (defect: each message parsed every queued key back into bigints).
  for (const { range: r, last } of q.values()) {
    if (r.start <= range.start && range.end <= r.end && (r.start !== range.start || r.end !== range.end)) await last;
  }
}

async function apply(host: ReplicaHost, range: HashRange, log: RangeLog, req: ReplicateRequest): Promise<Answer> {
  const key = positionKey(range);
  if (req.snapshotBegin) {
    // Our copy goes first; an in-sync copy must stay whole (it may be promoted), so it is never taken.
    const r = host.map.ranges.find((x) => x.start === range.start && x.end === range.end);
    if (r && inSyncOf(r).includes(host.nodeId)) {
      return { outcome: 'REFUSED', lastLsn: log.lastLsn, lastTerm: log.lastTerm, message: `shard ${host.nodeId} is in the in-sync set of ${showRange(range)}: it takes a snapshot only once out of it` };
    }
    log.resetTo(0n, 0n);
    await host.store.putMeta(key, positionToJson(log.position()), true);
    await host.store.deleteRange(range);
    host.log.info('receiving a snapshot of a replicated range', { range: showRange(range), primary: req.primary });
    return accepted(0n, 0n);
  }
  if (req.snapshotOps.length) {
    await host.store.applyReplicated(fromWireOps(req.snapshotOps, range), [], { sync: false });
    return accepted(0n, 0n);
  }
  if (req.snapshotEnd) {
    log.resetTo(req.snapshotLsn, req.snapshotTerm);
    await host.store.applyReplicated([], [host.store.metaOp(key, positionToJson(log.position()))], { sync: true });
    host.log.info('snapshot of a replicated range received', { range: showRange(range), lsn: String(req.snapshotLsn) });
    return accepted(req.snapshotLsn, req.snapshotTerm);
  }
  const snapshotNeeded = (why: string): Answer => ({ outcome: 'SNAPSHOT_NEEDED', lastLsn: log.lastLsn, lastTerm: log.lastTerm, message: why });
  if (req.prevLsn > log.lastLsn) return { outcome: 'MISMATCH', lastLsn: log.lastLsn, lastTerm: log.lastTerm, message: `log ends at ${log.lastLsn}, before ${req.prevLsn}` };
  const prevTerm = log.termAt(req.prevLsn);
  if (prevTerm !== req.prevTerm) return snapshotNeeded(`entry ${req.prevLsn} has term ${prevTerm ?? 'unknown'} here, ${req.prevTerm} on the primary`);
  const fresh: typeof req.entries = [];
  for (const e of req.entries) {
    if (e.lsn > log.lastLsn) fresh.push(e);
    else if (log.termAt(e.lsn) !== e.term) return snapshotNeeded(`entry ${e.lsn} has term ${log.termAt(e.lsn) ?? 'unknown'} here, ${e.term} on the primary`);
  }
  if (fresh.length) {
    // Packed ops (one buffer per entry) when the primary sent them so, else one TransferOp per op.
    const applied = fresh.map((e) => {
      const packed = e.packedOps.length ? e.packedOps : undefined;
      return { lsn: e.lsn, term: e.term, ops: packed ? unpackOps(packed, range) : fromWireOps(e.ops, range), sync: e.sync, packed };
    });
    if (applied[0]!.lsn !== log.lastLsn + 1n) return { outcome: 'MISMATCH', lastLsn: log.lastLsn, lastTerm: log.lastTerm, message: `entries start at ${applied[0]!.lsn}, after ${log.lastLsn}` };
    const after = log.position();
    for (const e of applied) if (after.terms.at(-1)?.[0] !== e.term) after.terms.push([e.term, e.lsn]);
    const last = applied.at(-1)!;
    const ops: RawOp[] = applied.flatMap((e) => e.ops);
    await host.store.applyReplicated(ops, [host.store.metaOp(key, positionToJson({ ...after, lastLsn: last.lsn, lastTerm: last.term }))], { sync: applied.some((e) => e.sync) });
    // Kept packed as received: promoted, this shard sends them on without encoding them again.
    for (const e of applied) log.append({ lsn: e.lsn, term: e.term, ops: e.ops, sync: e.sync, bytes: opsBytes(e.ops), ...(e.packed && { packed: e.packed }) });
    failpoint('follower-before-ack'); // `crash`: applied and durable here, the primary never told
  }
  const end = req.entries.at(-1);
  return end ? accepted(end.lsn, end.term) : accepted(req.prevLsn, req.prevTerm);
}
