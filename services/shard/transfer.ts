/**
 * Range moves, shard side (docs/design.md "Moving data"): the source's streamed
 * transfer and the destination's pull.
 *
 * The destination acknowledges the highest chunk it has applied with
 * AckTransfer (a unary call to the source, beside the TransferRange stream,
 * which keeps its server-streaming contract). The source counts only what the
 * destination acknowledged, never what it handed to gRPC (which buffers
 * without bound for a reader that has stopped).
 *
 * Source S, TransferRange for range R (called by the destination D):
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
 * Destination D, PullRange (called by the master): refuse if D owns any of R;
 * delete any leftover of R; open TransferRange on S; check sequence numbers,
 * phases and both checksums; apply each chunk with one store.applyRaw (one
 * atomic batch, which also moves D's clock past every received timestamp) and
 * acknowledge it; apply the fenced tail with sync, finish with a synced write,
 * acknowledge `end`, wait for `sealed`, and only then report READY (so the
 * master can only commit a move whose source holds a sealed fence). Any
 * failure fails the call; the master then aborts the move (AbortMove on S,
 * DropRange on D).
 *
 * The wire codec, checksum, stream verifier, ack tracker, throttle and write
 * log are pure and unit-tested (transfer.test.ts); the two drivers at the
 * bottom do the I/O.
 */
import { createHash, type Hash } from 'node:crypto';
import type { ClientReadableStream } from '@grpc/grpc-js';
import {
  TransferPhase,
  KeySpace,
  type TransferAck,
  type TransferChecksum,
  type TransferOp,
  type TransferRangeResponse,
  type PullRangeResponse,
} from '../../proto/gen/cairn/v1/control.js';
import { CairnError, fromServiceError, invalidArgument } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import { call, metadataFor, type RpcContext } from '../common/grpc.js';
import { endFromProto, endToProto, HASH_SPACE_END } from '../common/hash.js';
import { isBucketAligned, rangesOverlap, type HashRange } from '../common/ranges.js';
import { coveredBy, showRange, subtractRanges } from './fence.js';
import { hashOfKey, rowPrefixLength, rowPrefixOf } from './keys.js';
import type { ShardNode } from './node.js';
import type { PerRowSublevel, RawOp } from './store.js';

export { TransferPhase } from '../../proto/gen/cairn/v1/control.js';

export const DEFAULT_CHUNK_BYTES = 1 << 20;
export const MIN_CHUNK_BYTES = 1024;
/** The source fails a transfer rather than buffer more log than this while the destination catches up. */
export const MAX_LOG_BYTES = 256 << 20;
/**
 * Catch-up stops chasing writers after this long and fences as soon as every
 * chunk sent is acknowledged; the fenced tail then carries the rest (within
 * maxFenceMs, or the move aborts).
 */
export const MAX_CATCH_UP_MS = 10_000;
/** Chunks a source sends ahead of the destination's acknowledgements; then it waits for acks instead of handing more to gRPC. */
export const ACK_WINDOW_CHUNKS = 4;
/** The longest a source keeps a range fenced before the destination confirms the fenced tail (shard config maxFenceMs). */
export const DEFAULT_MAX_FENCE_MS = 1000;
/** Progress messages of a pull are sent at most this often (plus one per phase change). */
export const PROGRESS_INTERVAL_MS = 100;
/** A pull with no deadline from its caller still ends after this long. */
export const MAX_TRANSFER_MS = 24 * 3600_000;
const MAX_MOVE_ID_CHARS = 200;

// ---------------------------------------------------------------- parameters

export interface TransferParams {
  moveId: string;
  range: HashRange;
  /** The map epoch the move was planned against. */
  epoch: bigint;
  chunkBytes: number;
  /** 0 = unlimited. */
  maxBytesPerSec: number;
}

export interface PullParams extends TransferParams {
  sourceShardId: string;
  sourceAddress: string;
}

export function checkMoveId(moveId: string): void {
  if (!moveId) throw invalidArgument('move_id: must not be empty');
  if (moveId.length > MAX_MOVE_ID_CHARS) throw invalidArgument(`move_id: ${moveId.length} characters, over the limit of ${MAX_MOVE_ID_CHARS}`);
}

/** A bucket-aligned, non-empty range from its proto form (end 0 = 2^64). */
export function rangeFromRequest(start: bigint, protoEnd: bigint): HashRange {
  const end = endFromProto(protoEnd);
  if (start >= end) throw invalidArgument(`range: start ${start} must be below end ${end === HASH_SPACE_END ? '2^64' : end}`);
  if (!isBucketAligned(start) || !(end === HASH_SPACE_END || isBucketAligned(end))) {
    throw invalidArgument(`range: [${start}, ${end}) is not bucket-aligned (boundaries are multiples of 2^48)`);
  }
  return { start, end };
}

/** Validates the common transfer parameters; chunk_bytes 0 picks the default. */
export function transferParams(
  req: { moveId: string; start: bigint; end: bigint; epoch: bigint; chunkBytes: number; maxBytesPerSec: bigint },
  maxMessageBytes: number,
): TransferParams {
  checkMoveId(req.moveId);
  const range = rangeFromRequest(req.start, req.end);
  const maxChunk = Math.max(MIN_CHUNK_BYTES, Math.floor(maxMessageBytes / 4));
  let chunkBytes = req.chunkBytes;
  if (chunkBytes === 0) chunkBytes = Math.min(DEFAULT_CHUNK_BYTES, maxChunk);
  else if (chunkBytes < MIN_CHUNK_BYTES || chunkBytes > maxChunk) {
    throw invalidArgument(`chunk_bytes: ${chunkBytes} is outside the limits [${MIN_CHUNK_BYTES}, ${maxChunk}] (a quarter of the gRPC message limit)`);
  }
  return { moveId: req.moveId, range, epoch: req.epoch, chunkBytes, maxBytesPerSec: Number(req.maxBytesPerSec) };
}

// ---------------------------------------------------------------- wire codec (pure)

const SPACE_OF: Record<PerRowSublevel, KeySpace> = {
  cells: KeySpace.KEY_SPACE_CELLS,
  leases: KeySpace.KEY_SPACE_LEASES,
  reqids: KeySpace.KEY_SPACE_REQUEST_IDS,
};
const SUBLEVEL_OF = new Map<KeySpace, PerRowSublevel>(Object.entries(SPACE_OF).map(([k, v]) => [v, k as PerRowSublevel]));
const EMPTY = Buffer.alloc(0);

/** Key plus value bytes of some ops: what chunks, throttles and progress count. */
export function opsBytes(ops: readonly RawOp[]): number {
  let n = 0;
  for (const op of ops) n += op.key.length + (op.value?.length ?? 0);
  return n;
}

export function toWireOps(ops: readonly RawOp[]): TransferOp[] {
  return ops.map((op) => ({ keySpace: SPACE_OF[op.sublevel], key: op.key, value: op.value ?? EMPTY, isDelete: op.value === undefined }));
}

/** Decodes received ops, refusing any that is malformed or outside the range being moved. */
export function fromWireOps(ops: readonly TransferOp[], range: HashRange): RawOp[] {
  return ops.map((op, i) => {
    const sublevel = SUBLEVEL_OF.get(op.keySpace);
    if (!sublevel) throw protocolError(`op ${i} has unknown key space ${op.keySpace}`);
    // Views into the received message, not copies: the batch they go into copies them to LevelDB anyway.
    const key = asBuffer(op.key);
    try {
      rowPrefixLength(key);
    } catch {
      throw protocolError(`op ${i} has a malformed key (${key.length} bytes)`);
    }
    const hash = hashOfKey(key);
    if (hash < range.start || hash >= range.end) throw protocolError(`op ${i} has hash ${hash}, outside the range ${showRange(range)}`);
    if (op.isDelete) return { sublevel, key };
    return { sublevel, key, value: asBuffer(op.value) };
  });
}

const asBuffer = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

const protocolError = (msg: string): CairnError => new CairnError('CONFLICT', `transfer stream is invalid: ${msg}`);

// ---------------------------------------------------------------- checksum (pure)

/**
 * Running totals and SHA-256 over every chunk of a transfer. Each chunk feeds
 * u64 seq | u32 op count, then per op: u8 key space | u8 is-delete |
 * u32 key length | key | u32 value length | value (all big-endian).
 */
export class TransferDigest {
  private readonly hash: Hash = createHash('sha256');
  chunks = 0;
  keys = 0;
  bytes = 0;

  /** Adds the next chunk; returns its sequence number (1 for the first). */
  update(ops: readonly RawOp[]): number {
    const seq = ++this.chunks;
    // One buffer, one hash call per chunk: per-field update() calls into native code cost more than the hashing.
    let size = 12;
    for (const op of ops) size += 10 + op.key.length + (op.value?.length ?? 0);
    const buf = Buffer.allocUnsafe(size);
    buf.writeBigUInt64BE(BigInt(seq), 0);
    buf.writeUInt32BE(ops.length, 8);
    let at = 12;
    for (const op of ops) {
      buf[at] = SPACE_OF[op.sublevel];
      buf[at + 1] = op.value === undefined ? 1 : 0;
      buf.writeUInt32BE(op.key.length, at + 2);
      at += 6;
      at += op.key.copy(buf, at);
      const value = op.value ?? EMPTY;
      buf.writeUInt32BE(value.length, at);
      at += 4;
      at += value.copy(buf, at);
    }
    this.hash.update(buf);
    this.keys += ops.length;
    this.bytes += size - 12 - 10 * ops.length;
    return seq;
  }

  totals(): TransferChecksum {
    return { chunks: BigInt(this.chunks), keys: BigInt(this.keys), bytes: BigInt(this.bytes), sha256: this.hash.copy().digest() };
  }
}

/** Describes how two checksums differ, or returns null when they match. */
export function checksumMismatch(expected: TransferChecksum, got: TransferChecksum): string | null {
  const diffs: string[] = [];
  if (expected.chunks !== got.chunks) diffs.push(`chunks ${got.chunks} != ${expected.chunks}`);
  if (expected.keys !== got.keys) diffs.push(`keys ${got.keys} != ${expected.keys}`);
  if (expected.bytes !== got.bytes) diffs.push(`bytes ${got.bytes} != ${expected.bytes}`);
  if (!Buffer.from(expected.sha256).equals(Buffer.from(got.sha256))) diffs.push('sha256 differs');
  return diffs.length ? diffs.join(', ') : null;
}

// ---------------------------------------------------------------- stream verifier (pure)

export type VerifiedEvent =
  | { kind: 'begin'; sourceId: string; rows: bigint; bytes: bigint; maxFenceMs: number }
  | { kind: 'chunk'; seq: number; phase: TransferPhase; ops: RawOp[] }
  | { kind: 'snapshotDone' }
  | { kind: 'end' }
  | { kind: 'sealed' };

/**
 * The destination's check of a transfer stream: begin, COPY chunks,
 * snapshot_done (checksum), CATCH_UP chunks, at least one FENCED chunk, end
 * (checksum), sealed, with chunk numbers 1, 2, 3, … and every key inside the
 * range. Anything else throws CONFLICT with a message that says what was wrong.
 */
export class StreamVerifier {
  private readonly digest = new TransferDigest();
  private state: 'begin' | 'copy' | 'catchUp' | 'fenced' | 'ended' | 'sealed' = 'begin';
  /** Rows (distinct row prefixes with cells) seen in snapshot chunks. */
  rows = 0;
  private lastRow: Buffer | undefined;

  constructor(private readonly range: HashRange) {}

  /** True once the end checksum has matched. */
  get ended(): boolean {
    return this.state === 'ended' || this.state === 'sealed';
  }

  /** True once the source has sealed its fence (after the end). */
  get sealed(): boolean {
    return this.state === 'sealed';
  }

  get chunks(): number {
    return this.digest.chunks;
  }

  get keys(): number {
    return this.digest.keys;
  }

  get bytes(): number {
    return this.digest.bytes;
  }

  accept(msg: TransferRangeResponse): VerifiedEvent {
    if (this.state === 'sealed') throw protocolError('a message arrived after the seal');
    if (msg.sealed) {
      if (this.state !== 'ended') throw protocolError(`sealed arrived in state ${this.state}, before the end marker`);
      this.state = 'sealed';
      return { kind: 'sealed' };
    }
    if (this.state === 'ended') throw protocolError('a message arrived after the end marker');
    if (msg.begin) {
      if (this.state !== 'begin') throw protocolError('a second begin message');
      this.state = 'copy';
      return { kind: 'begin', sourceId: msg.header?.nodeId ?? '', rows: msg.begin.rows, bytes: msg.begin.bytes, maxFenceMs: msg.begin.maxFenceMs };
    }
    if (this.state === 'begin') throw protocolError('the first message is not begin');
    if (msg.chunk) {
      const c = msg.chunk;
      const expect = this.digest.chunks + 1;
      if (c.seq !== BigInt(expect)) throw protocolError(`chunk ${c.seq} arrived where chunk ${expect} was due (a chunk was lost or repeated)`);
      const allowed =
        c.phase === TransferPhase.TRANSFER_PHASE_COPY
          ? this.state === 'copy'
          : c.phase === TransferPhase.TRANSFER_PHASE_CATCH_UP
            ? this.state === 'catchUp'
            : c.phase === TransferPhase.TRANSFER_PHASE_FENCED && (this.state === 'catchUp' || this.state === 'fenced');
      if (!allowed) throw protocolError(`chunk ${c.seq} has phase ${TransferPhase[c.phase] ?? c.phase}, not allowed in state ${this.state}`);
      if (c.phase === TransferPhase.TRANSFER_PHASE_FENCED) this.state = 'fenced';
      const ops = fromWireOps(c.ops, this.range);
      this.digest.update(ops);
      if (c.phase === TransferPhase.TRANSFER_PHASE_COPY) this.countRows(ops);
      return { kind: 'chunk', seq: expect, phase: c.phase, ops };
    }
    if (msg.snapshotDone) {
      if (this.state !== 'copy') throw protocolError('snapshot_done arrived twice or after the log began');
      const bad = checksumMismatch(msg.snapshotDone, this.digest.totals());
      if (bad) throw new CairnError('CONFLICT', `snapshot checksum mismatch (received vs sent: ${bad}); the copy is corrupt`);
      this.state = 'catchUp';
      return { kind: 'snapshotDone' };
    }
    if (msg.end) {
      if (this.state !== 'fenced') throw protocolError(`end arrived in state ${this.state}, before the fenced tail`);
      const bad = checksumMismatch(msg.end, this.digest.totals());
      if (bad) throw new CairnError('CONFLICT', `end checksum mismatch (received vs sent: ${bad}); the copy is corrupt`);
      this.state = 'ended';
      return { kind: 'end' };
    }
    throw protocolError('an empty message');
  }

  private countRows(ops: RawOp[]): void {
    for (const op of ops) {
      if (op.sublevel !== 'cells') continue;
      const prefix = rowPrefixOf(op.key);
      if (!this.lastRow || !this.lastRow.equals(prefix)) {
        this.rows++;
        this.lastRow = Buffer.from(prefix);
      }
    }
  }
}

// ---------------------------------------------------------------- acknowledgements (pure)

/**
 * The destination's acknowledgements as the source sees them: how far it has
 * applied, checked against what was sent, and whether it confirmed the end.
 * `changed` wakes whoever waits for the next acknowledgement (or failure).
 */
export class AckTracker {
  /** The highest chunk seq the destination has applied. */
  applied = 0;
  /** The destination checked the end checksum and holds the whole stream on disk. */
  endVerified = false;
  /** Why no (more) acknowledgement can come: the destination closed its side, went away, or sent something invalid. */
  failure: CairnError | undefined;
  private waiters: Array<() => void> = [];

  constructor(private readonly moveId: string) {}

  /**
   * Takes one message from the destination; `sent` is the last chunk seq sent
   * and `endSent` whether `end` was. Throws INVALID_ARGUMENT for anything but
   * an acknowledgement that fits what was sent.
   */
  accept(a: TransferAck, sent: number, endSent: boolean): void {
    const bad = (why: string) => invalidArgument(`ack: ${why} (move ${this.moveId})`);
    if (a.appliedSeq > BigInt(sent)) throw bad(`applied_seq ${a.appliedSeq} is beyond the last chunk sent, ${sent}`);
    const seq = Number(a.appliedSeq);
    if (seq < this.applied) throw bad(`applied_seq ${seq} is below ${this.applied}, acknowledged before`);
    if (a.endVerified && !endSent) throw bad('end_verified before the source sent the end');
    if (a.endVerified && seq !== sent) throw bad(`end_verified with applied_seq ${seq}, not the last chunk ${sent}`);
    this.applied = seq;
    if (a.endVerified) this.endVerified = true;
    this.wake();
  }

  /** No more acknowledgements will come; the first reason sticks. */
  close(reason: CairnError): void {
    this.failure ??= reason;
    this.wake();
  }

  /** Resolves at the next acknowledgement or failure, or after `ms` at most. */
  changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.push(done);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
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

// ---------------------------------------------------------------- running moves

export type TaskKind = 'transfer' | 'pull' | 'drop';

/** One transfer, pull or drop running on this shard. */
export class MoveTask {
  phase = TransferPhase.TRANSFER_PHASE_UNSPECIFIED;
  /** A source's transfer: takes the destination's AckTransfer (throws INVALID_ARGUMENT for one that does not fit). */
  onAck: ((ack: TransferAck) => void) | undefined;
  private reason: CairnError | undefined;
  private readonly onAbort: Array<() => void> = [];
  private finish!: () => void;
  readonly done = new Promise<void>((r) => (this.finish = r));

  constructor(
    readonly kind: TaskKind,
    readonly moveId: string,
    readonly range: HashRange,
    private readonly cancelled: () => boolean,
  ) {}

  get abortReason(): CairnError | undefined {
    return this.reason;
  }

  /** True once the caller of the RPC that runs this task has gone away. */
  get callerGone(): boolean {
    return this.cancelled();
  }

  abort(reason: CairnError): void {
    if (this.reason) return;
    this.reason = reason;
    for (const f of this.onAbort) f();
  }

  whenAborted(f: () => void): void {
    if (this.reason) f();
    else this.onAbort.push(f);
  }

  /** Throws when the move was aborted or the caller went away. */
  check(): void {
    if (this.reason) throw this.reason;
    if (this.cancelled()) throw new CairnError('CANCELLED', `move ${this.moveId}: the caller cancelled the ${this.kind}`);
  }

  /** Called once by the registry. */
  ended(): void {
    this.finish();
  }
}

const MAX_REMEMBERED_ABORTS = 10_000;

/**
 * The moves running on a shard. A source runs at most one transfer per range
 * (transfers may not overlap); a destination runs at most one pull or drop
 * per range. Aborted move ids are remembered, so a transfer that arrives after
 * its move was aborted cannot fence the range again.
 */
export class MoveRegistry {
  private readonly tasks = new Set<MoveTask>();
  private readonly aborted = new Set<string>();
  private readonly ready = new Map<string, HashRange>();

  begin(kind: TaskKind, moveId: string, range: HashRange, cancelled: () => boolean = () => false): MoveTask {
    const sourceSide = kind === 'transfer';
    for (const t of this.tasks) {
      if ((t.kind === 'transfer') !== sourceSide) continue;
      if (t.moveId === moveId || rangesOverlap(t.range, range)) {
        throw new CairnError('CONFLICT', `move ${moveId}: a ${t.kind} of move ${t.moveId} on ${showRange(t.range)} is already running on this shard`);
      }
    }
    const task = new MoveTask(kind, moveId, range, cancelled);
    this.tasks.add(task);
    return task;
  }

  finish(task: MoveTask): void {
    this.tasks.delete(task);
    task.ended();
  }

  find(kind: TaskKind, moveId: string): MoveTask | undefined {
    for (const t of this.tasks) if (t.kind === kind && t.moveId === moveId) return t;
    return undefined;
  }

  /** True while a transfer (source side) of the move runs here: it owns the move's fence. */
  transferRunning(moveId: string): boolean {
    return this.find('transfer', moveId) !== undefined;
  }

  /** Ranges this shard is receiving, dropping, or holds a finished copy of (for moves other than `except`): the janitor keeps away from them. */
  destinationRanges(except?: string): HashRange[] {
    return [
      ...[...this.tasks].filter((t) => t.kind !== 'transfer' && t.moveId !== except).map((t) => t.range),
      ...[...this.ready].filter(([id]) => id !== except).map(([, r]) => r),
    ];
  }

  wasAborted(moveId: string): boolean {
    return this.aborted.has(moveId);
  }

  /** Marks a move aborted and aborts its running transfer and pull; returns whether any was running. */
  abort(moveId: string): boolean {
    this.aborted.add(moveId);
    if (this.aborted.size > MAX_REMEMBERED_ABORTS) this.aborted.delete(this.aborted.values().next().value!);
    this.ready.delete(moveId);
    let any = false;
    for (const t of this.tasks) {
      if (t.moveId !== moveId || t.kind === 'drop') continue;
      t.abort(new CairnError('CONFLICT', `move ${moveId} was aborted`));
      any = true;
    }
    return any;
  }

  /** Aborts transfers of ranges this shard no longer fully owns. */
  abortTransfersOutside(owned: readonly HashRange[]): void {
    for (const t of this.tasks) {
      if (t.kind === 'transfer' && !coveredBy(t.range, owned)) {
        t.abort(new CairnError('PRECONDITION', `move ${t.moveId}: this shard no longer owns all of ${showRange(t.range)}`));
      }
    }
  }

  markReady(moveId: string, range: HashRange): void {
    this.ready.set(moveId, range);
  }

  forgetReady(moveId: string): void {
    this.ready.delete(moveId);
  }

  /** Forgets finished pulls whose range the map now gives this shard (the move committed). */
  forgetReadyOwned(owned: readonly HashRange[]): void {
    for (const [id, r] of this.ready) if (owned.some((o) => rangesOverlap(o, r))) this.ready.delete(id);
  }

  /** The phase of this shard's side of a move, for GetMoveState. */
  phaseOf(moveId: string): { transfer: TransferPhase; pull: TransferPhase } {
    const t = this.find('transfer', moveId);
    const p = this.find('pull', moveId);
    return {
      transfer: t?.phase ?? TransferPhase.TRANSFER_PHASE_UNSPECIFIED,
      pull: p?.phase ?? (this.ready.has(moveId) ? TransferPhase.TRANSFER_PHASE_READY : TransferPhase.TRANSFER_PHASE_UNSPECIFIED),
    };
  }
}

// ---------------------------------------------------------------- source: TransferRange

export async function serveTransfer(
  node: ShardNode,
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

// ---------------------------------------------------------------- destination: DropRange

/**
 * Deletes what an aborted move left on this (destination) shard. Parts of the
 * range that this shard now owns, or that another move is pulling or holds a
 * finished copy of, are kept: every pull clears its range before it copies,
 * so the aborted move's leftovers there are gone already, and what is there
 * now belongs to the later move (deleting it would lose its acknowledged writes).
 */
export async function dropAbortedCopy(node: ShardNode, moveId: string, range: HashRange): Promise<{ deletedKeys: number; kept: HashRange[] }> {
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

export async function runPull(node: ShardNode, p: PullParams, ctx: RpcContext, send: (msg: PullRangeResponse) => Promise<void>): Promise<void> {
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
    const client = node.controlPeers.get(p.sourceAddress);
    stream = client.transferRange(
      {
        moveId: p.moveId,
        start: p.range.start,
        end: endToProto(p.range.end),
        epoch: p.epoch,
        chunkBytes: p.chunkBytes,
        maxBytesPerSec: BigInt(p.maxBytesPerSec),
      },
      metadataFor(node.serverToken.get()),
      { deadline: Math.min(ctx.deadline, Date.now() + MAX_TRANSFER_MS) },
    );
    const s = stream;
    task.whenAborted(() => s.cancel());
    // The source sends ahead only a few chunks past the last acknowledged one, and fences and seals only on acknowledgements.
    // Awaited, so they arrive in order. A refused or lost one fails nothing here: the source, short of it, stops or
    // fails its stream, and the stream's own outcome (its error, or no `sealed`) is what the pull reports.
    const acknowledge = (appliedSeq: number, endVerified = false) =>
      call(client, client.ackTransfer, { moveId: p.moveId, ack: { appliedSeq: BigInt(appliedSeq), endVerified } }, { token: node.serverToken.get(), timeoutMs: 10_000 }).catch(
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
        await store.applyRaw(ev.ops, { sync: ev.phase === TransferPhase.TRANSFER_PHASE_FENCED });
        if (ev.phase === TransferPhase.TRANSFER_PHASE_COPY) failpoint('dest-during-copy');
        if (ev.phase === TransferPhase.TRANSFER_PHASE_CATCH_UP) failpoint('dest-during-catch-up');
        task.check();
        await acknowledge(ev.seq);
        task.phase = ev.phase;
        await report();
      } else if (ev.kind === 'snapshotDone') {
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
