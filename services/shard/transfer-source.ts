/**
 * The source's side of a range move (docs/design.md "Moving data"; the steps
 * are declared in services/master/move-steps.ts): TransferRange, called by
 * the destination D, for range R.
 *
 *   1. register a write log for R (store.onCommit), then wait for the writes
 *      already in flight (store.drain), so every write is in the log, in the
 *      snapshot, or in both; replaying a write the snapshot holds is harmless
 *      because ops are final key states applied in commit order;
 *   2. stream the snapshot (store.exportRange) as numbered chunks bounded in
 *      bytes, then `snapshot_done` with the running checksum;
 *   3. stream the log (CATCH_UP) until less than one chunk is left AND D has
 *      acknowledged every chunk sent (after MAX_CATCH_UP_MS of writers
 *      outpacing the transfer: as soon as every chunk sent is acknowledged).
 *      A stalled D leaves S waiting here, unfenced: writes to R go on;
 *   4. fence R (effective at once, persisted with sync before anything more
 *      is sent), wait for in-flight calls and writes, send the rest of the
 *      log (FENCED, at least one chunk, possibly empty) and `end`;
 *   5. seal: once D acknowledges `end` (end_verified: checksum matched, tail
 *      on disk), S sends `sealed`; from then on only the move's outcome (a
 *      map that commits it, or AbortMove) lifts the fence. If maxFenceMs
 *      passes after the fence went up and before the seal, or the stream ends
 *      first, S lifts the fence itself, marks the move aborted (the same move
 *      id cannot transfer again) and fails the stream. The seal and the bound
 *      are decided in one synchronous step each, so exactly one of them wins.
 *   Flow control: at most ACK_WINDOW_CHUNKS chunks are unacknowledged; S
 *   waits for acks instead of sending more. The copy and catch-up also honour
 *   a bytes/s throttle (key and value bytes, paced before each chunk, with
 *   chunks cut to 50 ms of the rate); the fenced tail is not throttled, to
 *   keep the critical section short (it is under one such chunk plus the
 *   writes that were in flight).
 *
 * The throttle and the write log are pure and unit-tested (transfer.test.ts);
 * serveTransfer does the I/O, through the narrow TransferSource interface.
 */
import type { Logger } from 'winston';
import type { TransferRangeResponse } from '../../proto/gen/cairn/v1/control.js';
import { CairnError } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import type { RpcContext } from '../common/grpc.js';
import { rangesOverlap, type HashRange } from '../common/ranges.js';
import { showRange } from '../common/ranges.js';
import type { FenceTable } from './fence.js';
import { hashOfKey } from './keys.js';
import type { MoveRegistry } from './move-tasks.js';
import type { RawOp, ShardStore } from './store.js';
import {
  ACK_WINDOW_CHUNKS,
  AckTracker,
  MAX_CATCH_UP_MS,
  MAX_LOG_BYTES,
  MIN_CHUNK_BYTES,
  opsBytes,
  toWireOps,
  TransferDigest,
  TransferPhase,
  type TransferParams,
} from './transfer-wire.js';

/** What the source's side of a move needs from its shard (ShardNode implements it). */
export interface TransferSource {
  readonly log: Logger;
  readonly nodeId: string;
  readonly map: { readonly epoch: bigint };
  /** The longest the range stays fenced before the destination confirms the fenced tail. */
  readonly maxFenceMs: number;
  readonly store: Pick<ShardStore, 'drain' | 'rangeStats' | 'exportRange' | 'onCommit'>;
  readonly fences: Pick<FenceTable, 'all' | 'get' | 'add' | 'lift'>;
  readonly moves: MoveRegistry;
  ensureEpoch(epoch: bigint): Promise<void>;
  assertOwnsAll(range: HashRange, moveId: string): void;
  /** Resolves once the data calls served locally and running now have finished. */
  drainLocal(): Promise<void>;
}

// ---------------------------------------------------------------- throttle (pure, injectable clock)

export interface Waiter {
  /** Throws to stop waiting (cancelled or aborted). */
  check(): void;
}

/**
 * A throttled transfer's chunks are cut to at most this many seconds of its
 * rate (never under MIN_CHUNK_BYTES): any window of time may hold one chunk
 * more than the rate allows, so a chunk of 50 ms is 1% of a 5 s window, where
 * the default 1 MiB chunk was 21% of 5 s at 1 MB/s.
 */
export const THROTTLED_CHUNK_SECONDS = 0.05;

/** The chunk size a transfer uses: `chunkBytes`, cut to THROTTLED_CHUNK_SECONDS of the rate when throttled. */
export function chunkBytesFor(chunkBytes: number, bytesPerSec: number): number {
  if (!(bytesPerSec > 0)) return chunkBytes;
  return Math.min(chunkBytes, Math.max(MIN_CHUNK_BYTES, Math.floor(bytesPerSec * THROTTLED_CHUNK_SECONDS)));
}

/**
 * Paces a transfer to `bytesPerSec` (0 = unlimited). Call `take(n)` BEFORE
 * sending n bytes: it reserves n / rate of the link, starting when the
 * previous reservation ends or now, whichever is later, and returns when the
 * reservation ends. So, from the first `take`, the bytes let through by time
 * t are at most rate * t (the first chunk is not free), and any window of
 * length W lets through at most rate * W plus one chunk. Time the sender
 * spent idle (a slow destination, a quiet write log) is not banked: it
 * cannot be spent later as a burst.
 */
export class Throttle {
  /** When the reservations made so far end (ms, on `now`'s clock). */
  private reservedUntil: number | undefined;

  constructor(
    private readonly bytesPerSec: number,
    private readonly now: () => number = Date.now,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  ) {}

  /** Reserves `bytes` and returns the milliseconds until they may go (0 when unlimited). */
  delayFor(bytes: number): number {
    if (!(this.bytesPerSec > 0)) return 0;
    const now = this.now();
    this.reservedUntil = Math.max(now, this.reservedUntil ?? now) + (bytes * 1000) / this.bytesPerSec;
    return this.remaining(now);
  }

  /** Waits until `bytes` more may be sent. */
  async take(bytes: number, w?: Waiter): Promise<void> {
    let wait = this.delayFor(bytes);
    while (wait > 0) {
      w?.check();
      await this.sleep(Math.min(wait, 100)); // short slices, so a cancelled transfer stops promptly
      wait = this.remaining(this.now());
    }
  }

  private remaining(now: number): number {
    return this.reservedUntil === undefined ? 0 : Math.max(0, Math.ceil(this.reservedUntil - now));
  }
}

// ---------------------------------------------------------------- write log (pure)

/** Ops committed to one range since the log was registered, in commit order. */
export class WriteLog {
  private ops: RawOp[] = [];
  private head = 0;
  bytes = 0;
  overflowed = false;

  constructor(
    private readonly range: HashRange,
    private readonly maxBytes: number = MAX_LOG_BYTES,
  ) {}

  /** The store.onCommit listener: keeps the ops whose key's hash is in the range. */
  readonly listener = (batch: RawOp[]): void => {
    if (this.overflowed) return;
    for (const op of batch) {
      const h = hashOfKey(op.key);
      if (h < this.range.start || h >= this.range.end) continue;
      this.ops.push(op);
      this.bytes += op.key.length + (op.value?.length ?? 0);
    }
    if (this.bytes > this.maxBytes) {
      this.overflowed = true;
      this.ops = [];
      this.head = 0;
    }
  };

  get length(): number {
    return this.ops.length - this.head;
  }

  /** Removes and returns the oldest ops, up to about maxBytes (always at least one when any is left). */
  take(maxBytes: number): RawOp[] {
    const out: RawOp[] = [];
    let size = 0;
    while (this.head < this.ops.length) {
      const op = this.ops[this.head]!;
      const b = op.key.length + (op.value?.length ?? 0);
      if (out.length > 0 && size + b > maxBytes) break;
      out.push(op);
      size += b;
      this.head++;
    }
    this.bytes -= size;
    if (this.head > 4096 && this.head * 2 > this.ops.length) {
      this.ops = this.ops.slice(this.head);
      this.head = 0;
    }
    return out;
  }
}

// ---------------------------------------------------------------- source: TransferRange

export async function serveTransfer(
  node: TransferSource,
  p: TransferParams,
  ctx: RpcContext,
  send: (msg: TransferRangeResponse) => Promise<void>,
): Promise<void> {
  const { store, fences, moves } = node;
  const log = node.log;
  const maxFenceMs = node.maxFenceMs;
  await node.ensureEpoch(p.epoch);
  if (moves.wasAborted(p.moveId)) throw new CairnError('CONFLICT', `move ${p.moveId} was aborted on this shard; a new attempt needs a new move id`);
  node.assertOwnsAll(p.range, p.moveId);
  const other = fences.all().find((f) => f.moveId !== p.moveId && rangesOverlap(f.range, p.range));
  if (other) {
    throw new CairnError('CONFLICT', `move ${p.moveId}: ${showRange(other.range)} is fenced by move ${other.moveId}, which has not ended`);
  }
  // A fence of this very move (sealed, or from before a restart) may be about to commit: only its outcome may lift
  // it, so no second transfer may take it over (and lift it when that transfer fails).
  const own = fences.get(p.moveId);
  if (own) throw new CairnError('CONFLICT', `move ${p.moveId} already fences ${showRange(own.range)} on this shard; only the move's outcome (commit or abort) lifts it`);
  const task = moves.begin('transfer', p.moveId, p.range, ctx.cancelled);
  const wlog = new WriteLog(p.range);
  const unsubscribe = store.onCommit(wlog.listener);
  const startedAt = Date.now();
  const header = () => ({ nodeId: node.nodeId, epoch: node.map.epoch });
  const digest = new TransferDigest();
  const acks = new AckTracker(p.moveId);
  task.whenAborted(() => acks.nudge()); // the waits below check the task when woken: an abort stops them at once
  let fenced = false;
  let fencedAt = 0;
  let endSent = false;
  let sealed = false;
  let lifted = false;
  let fenceBound: NodeJS.Timeout | undefined;

  /** Lifts the fence this transfer put up, before any seal: nothing can have committed (D reports READY only after `sealed`). */
  const liftOwnFence = (why: string): void => {
    if (!fenced || sealed || lifted) return;
    lifted = true;
    // Marked aborted in the same step: no transfer of this move can fence the range again.
    moves.abort(p.moveId);
    const wasUp = fences.get(p.moveId) !== undefined; // AbortMove may have lifted it already
    const lifting = fences.lift(p.moveId);
    if (wasUp) log.warn('fence lifted: the destination did not confirm the fenced tail', { moveId: p.moveId, range: showRange(p.range), why, fencedMs: Date.now() - fencedAt });
    lifting.catch((err: Error) =>
      log.error('persisting a lifted fence failed; it is lifted in memory, and a restart finds it and asks the master', { moveId: p.moveId, error: err.message }),
    );
  };
  /** The destination confirmed the end: from now on only the move's outcome lifts the fence. */
  const seal = (): void => {
    if (sealed || !fenced || lifted || task.abortReason || task.callerGone) return; // the bound, an abort or the caller's exit came first
    sealed = true;
    clearTimeout(fenceBound);
  };
  const onFenceBound = (): void => {
    if (sealed) return; // the seal came first
    task.abort(
      new CairnError(
        'CONFLICT',
        `move ${p.moveId}: ${showRange(p.range)} stayed fenced for maxFenceMs (${maxFenceMs} ms) without the destination confirming the fenced tail; the source lifted the fence and aborted the move`,
      ),
    );
    liftOwnFence(`maxFenceMs (${maxFenceMs} ms) passed`);
  };

  // The destination's acknowledgements (AckTransfer) arrive here while the task runs; a bad one fails the transfer.
  task.onAck = (ack) => {
    try {
      acks.accept(ack, digest.chunks, endSent);
    } catch (err) {
      acks.close(err as CairnError);
      throw err;
    }
    if (acks.endVerified) seal();
  };

  const checkLog = () => {
    if (wlog.overflowed) {
      throw new CairnError('LIMIT_EXCEEDED', `move ${p.moveId}: more than ${MAX_LOG_BYTES} bytes of writes to ${showRange(p.range)} queued while the destination caught up`);
    }
  };
  /** Waits (checking for aborts, the caller's exit and the log bound) until `cond` holds; re-checked at every acknowledgement. */
  const waitFor = async (cond: () => boolean) => {
    while (!cond()) {
      task.check();
      checkLog();
      if (acks.failure) throw acks.failure;
      await acks.changed(100);
    }
  };
  const sendChunk = async (ops: RawOp[], phase: TransferPhase) => {
    // Flow control: a stalled destination stops the source here, instead of gRPC buffering without bound.
    await waitFor(() => digest.chunks - acks.applied < ACK_WINDOW_CHUNKS);
    const seq = digest.update(ops);
    await send({ header: header(), chunk: { seq: BigInt(seq), phase, ops: toWireOps(ops) } });
  };
  const chunkBytes = chunkBytesFor(p.chunkBytes, p.maxBytesPerSec);
  log.info('transfer started', { moveId: p.moveId, range: showRange(p.range), chunkBytes, maxBytesPerSec: p.maxBytesPerSec, maxFenceMs });
  try {
    task.phase = TransferPhase.TRANSFER_PHASE_COPY;
    // Every write that has started is now in the log, in the snapshot, or both.
    await store.drain();
    task.check();
    const stats = store.rangeStats(p.range);
    await send({ header: header(), begin: { rows: BigInt(stats.rows), bytes: BigInt(stats.bytes), maxFenceMs } });
    const throttle = new Throttle(p.maxBytesPerSec);
    for await (const ops of store.exportRange(p.range, chunkBytes)) {
      task.check();
      checkLog();
      await throttle.take(opsBytes(ops), task);
      await sendChunk(ops, TransferPhase.TRANSFER_PHASE_COPY);
      failpoint('source-during-snapshot');
    }
    const snapshotBytes = digest.bytes;
    await send({ header: header(), snapshotDone: digest.totals() });

    task.phase = TransferPhase.TRANSFER_PHASE_CATCH_UP;
    const catchUpUntil = Date.now() + MAX_CATCH_UP_MS;
    // Fence only once the destination has APPLIED everything sent and less than a chunk of log is left.
    // A destination that stops acknowledging keeps the source here, unfenced, until the log bound, an abort or the caller's exit.
    for (;;) {
      task.check();
      checkLog();
      if (acks.failure) throw acks.failure;
      if (wlog.bytes > chunkBytes && Date.now() < catchUpUntil) {
        const ops = wlog.take(chunkBytes);
        await throttle.take(opsBytes(ops), task);
        await sendChunk(ops, TransferPhase.TRANSFER_PHASE_CATCH_UP);
        failpoint('source-during-catch-up');
        continue;
      }
      if (acks.applied === digest.chunks) break;
      await acks.changed(100);
    }

    // Critical section. Checked and fenced in one synchronous step: an abort either came first (and we stop) or lifts this fence.
    task.check();
    checkLog();
    if (acks.failure) throw acks.failure;
    node.assertOwnsAll(p.range, p.moveId);
    const persisted = fences.add(p.moveId, p.range);
    fenced = true;
    fencedAt = Date.now();
    fenceBound = setTimeout(onFenceBound, maxFenceMs);
    task.phase = TransferPhase.TRANSFER_PHASE_FENCED;
    log.info('range fenced', { moveId: p.moveId, range: showRange(p.range), maxFenceMs });
    await persisted;
    failpoint('source-after-fence');
    // Calls that passed the fence check before it went up finish now; their writes land in the log.
    await node.drainLocal();
    await store.drain();
    task.check();
    do {
      await sendChunk(wlog.take(chunkBytes), TransferPhase.TRANSFER_PHASE_FENCED);
    } while (wlog.length > 0);
    endSent = true;
    await send({ header: header(), end: digest.totals() });
    // The seal is decided where the acknowledgement is read (seal()), in one step against the bound.
    await waitFor(() => sealed);
    await send({ header: header(), sealed: {} });
    log.info('transfer finished', {
      moveId: p.moveId,
      range: showRange(p.range),
      chunks: digest.chunks,
      keys: digest.keys,
      bytes: digest.bytes,
      snapshotBytes,
      logBytes: digest.bytes - snapshotBytes,
      ms: Date.now() - startedAt,
      fencedMs: Date.now() - fencedAt,
      note: 'sealed: the range stays fenced until the map commits the move or AbortMove',
    });
  } catch (err) {
    log.warn('transfer failed', {
      moveId: p.moveId,
      range: showRange(p.range),
      fenced,
      sealed,
      chunks: digest.chunks,
      acknowledged: acks.applied,
      bytes: digest.bytes,
      error: (err as Error).message,
      note: sealed ? 'sealed: the range stays fenced until the move is aborted or the map gives it away' : fenced ? 'not sealed: the fence is lifted' : undefined,
    });
    throw err;
  } finally {
    clearTimeout(fenceBound);
    unsubscribe();
    // Before the task ends: a fence with no running transfer is one the master's journal decides (FenceReconciler).
    if (fenced && !sealed) liftOwnFence(task.abortReason?.message ?? (task.callerGone ? 'the destination went away' : 'the transfer failed'));
    moves.finish(task);
  }
}
