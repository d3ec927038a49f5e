/**
 * The destination's side of a range move (docs/design.md "Moving data"; the
 * steps are declared in services/master/move-steps.ts).
 *
 * PullRange (called by the master): refuse if D owns any of R; delete any
 * leftover of R; open TransferRange on S; check sequence numbers, phases and
 * both checksums (StreamVerifier, transfer-wire.ts); apply each chunk as one
 * atomic batch (which also moves D's clock past every received timestamp)
 * and acknowledge it: snapshot (COPY) chunks through a bulk ingestion of the
 * emptied range (store.beginIngest, store-ingest.ts: raw batches, derived
 * records and stats computed from the chunks), the log's chunks with
 * store.applyRaw (exact: they may overwrite and delete); apply the fenced tail with sync,
 * finish with a synced write, acknowledge `end`, wait for `sealed`, and only
 * then report READY (so the master can only commit a move whose source holds
 * a sealed fence). Any failure fails the call; the master then aborts the
 * move (AbortMove on S, DropRange on D).
 *
 * DropRange (called by the master after an abort): deletes what the aborted
 * move left here.
 *
 * The shard is reached through the narrow TransferSink interface; the
 * source's RPCs (TransferRange, AckTransfer) are called in one place,
 * sourceClient.
 */
import type { ClientReadableStream } from '@grpc/grpc-js';
import type { Logger } from 'winston';
import type { PullRangeResponse, ShardControlServiceClient, TransferAck, TransferRangeResponse } from '../../proto/gen/cairn/v1/control.js';
import { CairnError, fromServiceError, invalidArgument } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import { call, metadataFor, type RpcContext } from '../common/grpc.js';
import { endToProto } from '../common/hash.js';
import type { HashRange } from '../common/ranges.js';
import { showRange } from '../common/ranges.js';
import { subtractRanges, type RangeJanitor } from './fence.js';
import type { MoveRegistry, MoveTask } from './move-tasks.js';
import type { ShardStore, SnapshotIngest } from './store.js';
import { MAX_TRANSFER_MS, PROGRESS_INTERVAL_MS, StreamVerifier, TransferPhase, type PullParams, type TransferParams } from './transfer-wire.js';

/** What the destination's side of a move needs from its shard (ShardNode implements it). */
export interface TransferSink {
  readonly log: Logger;
  /** '' until registered. */
  readonly id: string;
  readonly nodeId: string;
  readonly map: { readonly epoch: bigint };
  readonly opts: { readonly advertise: string };
  readonly store: Pick<ShardStore, 'deleteRange' | 'applyRaw' | 'putMeta' | 'beginIngest'>;
  readonly janitor: Pick<RangeJanitor, 'settled' | 'forget'>;
  readonly moves: MoveRegistry;
  /** Clients of the other shards, and this shard's server token for calling them. */
  readonly controlPeers: { get(address: string): ShardControlServiceClient };
  readonly serverToken: { get(): string };
  ensureEpoch(epoch: bigint): Promise<void>;
  assertOwnsNone(range: HashRange, moveId: string): void;
  ownedRanges(): HashRange[];
}

/** The source's transfer RPCs as the destination calls them: the one place they are called. */
function sourceClient(node: TransferSink, address: string) {
  const client = node.controlPeers.get(address);
  return {
    transfer(p: TransferParams, deadline: number): ClientReadableStream<TransferRangeResponse> {
      const req = { moveId: p.moveId, start: p.range.start, end: endToProto(p.range.end), epoch: p.epoch, chunkBytes: p.chunkBytes, maxBytesPerSec: BigInt(p.maxBytesPerSec) };
      return client.transferRange(req, metadataFor(node.serverToken.get()), { deadline });
    },
    ack(moveId: string, ack: TransferAck): Promise<unknown> {
      return call(client, client.ackTransfer, { moveId, ack }, { token: node.serverToken.get(), timeoutMs: 10_000 });
    },
  };
}

// ---------------------------------------------------------------- destination: DropRange

/**
 * Deletes what an aborted move left on this (destination) shard. Parts of the
 * range that this shard now owns, or that another move is pulling or holds a
 * finished copy of, are kept: every pull clears its range before it copies,
 * so the aborted move's leftovers there are gone already, and what is there
 * now belongs to the later move (deleting it would lose its acknowledged writes).
 */
export async function dropAbortedCopy(node: TransferSink, moveId: string, range: HashRange): Promise<{ deletedKeys: number; kept: HashRange[] }> {
  const { store, moves } = node;
  const pull = moves.find('pull', moveId);
  if (pull) {
    pull.abort(new CairnError('CONFLICT', `move ${moveId} was aborted: its range is being dropped`));
    await pull.done;
  }
  moves.forgetReady(moveId);
  const keep = () => [...node.ownedRanges(), ...moves.destinationRanges(moveId)];
  let deletedKeys = 0;
  for (const piece of subtractRanges([range], keep())) {
    // Registered in the same tick as the subtraction: from here on no pull of another move can start on the piece.
    const task = moves.begin('drop', moveId, piece);
    try {
      await node.janitor.settled(piece);
      for (const part of subtractRanges([piece], keep())) deletedKeys += await store.deleteRange(part);
    } finally {
      moves.finish(task);
    }
  }
  const kept = subtractRanges([range], subtractRanges([range], keep()));
  node.log.info('dropped the copy of an aborted move', { moveId, range: showRange(range), keys: deletedKeys, kept: kept.map(showRange) });
  return { deletedKeys, kept };
}

// ---------------------------------------------------------------- destination: PullRange

export async function runPull(node: TransferSink, p: PullParams, ctx: RpcContext, send: (msg: PullRangeResponse) => Promise<void>): Promise<void> {
  const { store, moves } = node;
  const log = node.log;
  if (!p.sourceAddress) throw invalidArgument('source_address: must be the host:port of the source shard');
  if ((p.sourceShardId && p.sourceShardId === node.id) || p.sourceAddress === node.opts.advertise) {
    throw invalidArgument(`source: shard ${node.nodeId} cannot pull a range from itself`);
  }
  await node.ensureEpoch(p.epoch);
  node.assertOwnsNone(p.range, p.moveId);
  const task = moves.begin('pull', p.moveId, p.range, ctx.cancelled);
  const v = new StreamVerifier(p.range);
  let source = { rows: 0n, bytes: 0n };
  let sourceMaxFenceMs = 0;
  let lastReport = 0;
  let reportedPhase = TransferPhase.TRANSFER_PHASE_UNSPECIFIED;
  const report = async (force = false) => {
    const now = Date.now();
    if (!force && task.phase === reportedPhase && now - lastReport < PROGRESS_INTERVAL_MS) return;
    lastReport = now;
    reportedPhase = task.phase;
    await send({
      header: { nodeId: node.nodeId, epoch: node.map.epoch },
      moveId: p.moveId,
      phase: task.phase,
      bytesReceived: BigInt(v.bytes),
      keysReceived: BigInt(v.keys),
      rowsReceived: BigInt(v.rows),
      sourceRows: source.rows,
      sourceBytes: source.bytes,
      chunksReceived: BigInt(v.chunks),
      maxFenceMs: sourceMaxFenceMs,
    });
  };
  let stream: ClientReadableStream<TransferRangeResponse> | undefined;
  let ingest: SnapshotIngest | undefined;
  const endIngest = () => {
    if (!ingest || ingest.closed) return;
    ingest.close();
    if (ingest.taintedBy) log.info('snapshot chunks went the exact way', { moveId: p.moveId, why: ingest.taintedBy, bulk: ingest.counts.bulk, exact: ingest.counts.exact });
  };
  const startedAt = Date.now();
  log.info('pull started', { moveId: p.moveId, range: showRange(p.range), source: p.sourceShardId, sourceAddress: p.sourceAddress });
  try {
    task.phase = TransferPhase.TRANSFER_PHASE_COPY;
    await report(true);
    // Whatever this shard still holds in the range is garbage from an earlier owner or attempt: it must not outlive the copy.
    await node.janitor.settled(p.range);
    await node.janitor.forget(p.range);
    task.check();
    await store.deleteRange(p.range);
    task.check();
    // The range is empty now: the snapshot's chunks go in as raw batches with their derived records and stats
    // computed from the chunks (store-ingest.ts); the log (catch-up, fenced tail) may overwrite and delete, so it
    // keeps the exact path. Closed when the snapshot is in, or in `finally`.
    ingest = await store.beginIngest(p.range);
    task.check();
    const peer = sourceClient(node, p.sourceAddress);
    stream = peer.transfer(p, Math.min(ctx.deadline, Date.now() + MAX_TRANSFER_MS));
    const s = stream;
    task.whenAborted(() => s.cancel());
    // The source sends ahead only a few chunks past the last acknowledged one, and fences and seals only on acknowledgements.
    // Awaited, so they arrive in order. A refused or lost one fails nothing here: the source, short of it, stops or
    // fails its stream, and the stream's own outcome (its error, or no `sealed`) is what the pull reports.
    const acknowledge = (appliedSeq: number, endVerified = false) =>
      peer.ack(p.moveId, { appliedSeq: BigInt(appliedSeq), endVerified }).catch(
        (err: Error) => log.debug('acknowledgement not taken by the source', { moveId: p.moveId, appliedSeq, error: err.message }),
      );
    for await (const msg of s as AsyncIterable<TransferRangeResponse>) {
      task.check();
      const ev = v.accept(msg);
      if (ev.kind === 'begin') {
        if (p.sourceShardId && ev.sourceId !== p.sourceShardId) {
          throw new CairnError('CONFLICT', `move ${p.moveId}: ${p.sourceAddress} is shard ${ev.sourceId || '(unregistered)'}, not the source ${p.sourceShardId}`);
        }
        source = { rows: ev.rows, bytes: ev.bytes };
        sourceMaxFenceMs = ev.maxFenceMs;
      } else if (ev.kind === 'chunk') {
        // One chunk, one atomic batch; the fenced tail goes straight to disk.
        if (ev.phase === TransferPhase.TRANSFER_PHASE_COPY && ingest && !ingest.closed) await ingest.apply(ev.ops, { sync: false });
        else await store.applyRaw(ev.ops, { sync: ev.phase === TransferPhase.TRANSFER_PHASE_FENCED });
        if (ev.phase === TransferPhase.TRANSFER_PHASE_COPY) failpoint('dest-during-copy');
        if (ev.phase === TransferPhase.TRANSFER_PHASE_CATCH_UP) failpoint('dest-during-catch-up');
        task.check();
        await acknowledge(ev.seq);
        task.phase = ev.phase;
        await report();
      } else if (ev.kind === 'snapshotDone') {
        endIngest();
        task.phase = TransferPhase.TRANSFER_PHASE_CATCH_UP;
        await report();
      } else if (ev.kind === 'end') {
        // A synced write after the last batch: everything applied before it is on disk.
        await store.putMeta('lastPull', { moveId: p.moveId, start: p.range.start.toString(), end: p.range.end.toString(), atMs: Date.now() }, true);
        failpoint('dest-after-fenced-tail');
        task.check();
        await acknowledge(v.chunks, true);
      }
    }
    if (!v.sealed) {
      throw new CairnError('CONFLICT', `transfer stream is invalid: it ended ${v.ended ? 'after the end marker but before the source sealed its fence' : 'before the end marker'}`);
    }
    failpoint('dest-before-ready');
    task.phase = TransferPhase.TRANSFER_PHASE_READY;
    moves.markReady(p.moveId, p.range);
    log.info('pull finished', { moveId: p.moveId, range: showRange(p.range), chunks: v.chunks, keys: v.keys, bytes: v.bytes, rows: v.rows, ms: Date.now() - startedAt });
    await report(true);
  } catch (err) {
    const e = pullError(p, task, err);
    log.warn('pull failed', { moveId: p.moveId, range: showRange(p.range), chunks: v.chunks, bytes: v.bytes, error: e.message });
    throw e;
  } finally {
    endIngest();
    if (stream && !v.sealed) stream.cancel();
    moves.finish(task);
  }
}

/** The error a failed pull reports: the abort reason when aborted, else what went wrong, naming the move and the source. */
function pullError(p: PullParams, task: MoveTask, err: unknown): CairnError {
  if (task.abortReason) return task.abortReason;
  if (task.callerGone) return new CairnError('CANCELLED', `move ${p.moveId}: the caller cancelled the pull`);
  const e = err instanceof CairnError ? err : typeof (err as { code?: unknown })?.code === 'number' ? fromServiceError(err) : undefined;
  if (!e) return err as CairnError; // unexpected: reaches the caller as INTERNAL and is logged whole
  if (e.message.startsWith(`move ${p.moveId}`)) return e;
  const from = `shard ${p.sourceShardId || '?'} at ${p.sourceAddress}`;
  // An INTERNAL answer from the source would be masked again here; report it as an aborted transfer instead.
  const code = e.code === 'INTERNAL' ? 'CONFLICT' : e.code;
  return new CairnError(code, `move ${p.moveId}: pulling ${showRange(p.range)} from ${from} failed: ${e.message}`, e.details);
}