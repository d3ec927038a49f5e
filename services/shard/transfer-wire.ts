/**
 * The transfer stream's wire format (docs/design.md "Moving data"), pure: the
 * protocol's constants and parameters, the op codec, the running checksum,
 * the destination's stream verifier and the source's acknowledgement tracker.
 * The source (transfer-source.ts) writes this format, the destination
 * (transfer-sink.ts) reads it; the move's steps as a whole are in
 * services/master/move-steps.ts.
 *
 * A stream is: begin, COPY chunks, snapshot_done (checksum), CATCH_UP chunks,
 * at least one FENCED chunk, end (checksum), sealed. Chunks are numbered 1,
 * 2, 3, …; every key is inside the range being moved. The destination
 * acknowledges the highest chunk it has applied with AckTransfer (a unary call
 * beside the server stream); the source counts only what was acknowledged.
 */
import { createHash, type Hash } from 'node:crypto';
import { TransferPhase, KeySpace, type TransferAck, type TransferChecksum, type TransferOp, type TransferRangeResponse } from '../../proto/gen/cairn/v1/control.js';
import { CairnError, invalidArgument } from '../common/errors.js';
import { endFromProto, HASH_SPACE_END } from '../common/hash.js';
import { bucketSpan, isBucketAligned, type HashRange } from '../common/ranges.js';
import { showRange } from '../common/ranges.js';
import { bucketOfKey, hashOfKey, rowPrefixLength, rowPrefixOf } from './keys.js';
import type { PerRowSublevel, RawOp } from './store.js';
import { startsWith } from './store-db.js';

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
  const refusal = keyRefusalFor(range);
  return ops.map((op, i) => {
    const sublevel = SUBLEVEL_OF.get(op.keySpace);
    if (!sublevel) throw protocolError(`op ${i} has unknown key space ${op.keySpace}`);
    // Views into the received message, not copies: the batch they go into copies them to LevelDB anyway.
    const key = asBuffer(op.key);
    const why = refusal(key);
    if (why) throw protocolError(`op ${i} ${why}`);
    if (op.isDelete) return { sublevel, key };
    return { sublevel, key, value: asBuffer(op.value) };
  });
}

/**
 * The check of a received op's key against the range it must be in (a move's
 * chunk, a replicated entry): why it is refused (a malformed key, or a hash
 * outside the range), or null. A bucket-aligned range (every move's and
 * every replicated range's) compares the key's bucket, a number, instead of
 * its hash as a bigint.
 */
export function keyRefusalFor(range: HashRange): (key: Buffer) => string | null {
  const aligned = isBucketAligned(range.start) && (range.end === HASH_SPACE_END || isBucketAligned(range.end));
  const [first, end] = aligned ? bucketSpan(range) : [-1, -1];
  return (key) => {
    try {
      rowPrefixLength(key);
    } catch {
      return `has a malformed key (${key.length} bytes)`;
    }
    const inside = aligned ? bucketOfKey(key) >= first && bucketOfKey(key) < end : hashOfKey(key) >= range.start && hashOfKey(key) < range.end;
    return inside ? null : `has hash ${hashOfKey(key)}, outside the range ${showRange(range)}`;
  };
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

/** Where a stream is: before begin, receiving chunks of one phase, past the end marker, or sealed. */
type StreamState = 'begin' | TransferPhase.TRANSFER_PHASE_COPY | TransferPhase.TRANSFER_PHASE_CATCH_UP | TransferPhase.TRANSFER_PHASE_FENCED | 'ended' | 'sealed';

/** A stream state in messages: the proto's phase name in lower case (copy, catch_up, fenced), or begin, ended, sealed. */
const streamStateName = (s: StreamState): string => (typeof s === 'string' ? s : TransferPhase[s].replace('TRANSFER_PHASE_', '').toLowerCase());

/**
 * The destination's check of a transfer stream: begin, COPY chunks,
 * snapshot_done (checksum), CATCH_UP chunks, at least one FENCED chunk, end
 * (checksum), sealed, with chunk numbers 1, 2, 3, … and every key inside the
 * range. Anything else throws CONFLICT with a message that says what was wrong.
 */
export class StreamVerifier {
  private readonly digest = new TransferDigest();
  /** Before begin, the phase of the chunks due (the proto's TransferPhase: the move's one vocabulary), then ended and sealed. */
  private state: StreamState = 'begin';
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
      if (this.state !== 'ended') throw protocolError(`sealed arrived in state ${streamStateName(this.state)}, before the end marker`);
      this.state = 'sealed';
      return { kind: 'sealed' };
    }
    if (this.state === 'ended') throw protocolError('a message arrived after the end marker');
    if (msg.begin) {
      if (this.state !== 'begin') throw protocolError('a second begin message');
      this.state = TransferPhase.TRANSFER_PHASE_COPY;
      return { kind: 'begin', sourceId: msg.header?.nodeId ?? '', rows: msg.begin.rows, bytes: msg.begin.bytes, maxFenceMs: msg.begin.maxFenceMs };
    }
    if (this.state === 'begin') throw protocolError('the first message is not begin');
    if (msg.chunk) {
      const c = msg.chunk;
      const expect = this.digest.chunks + 1;
      if (c.seq !== BigInt(expect)) throw protocolError(`chunk ${c.seq} arrived where chunk ${expect} was due (a chunk was lost or repeated)`);
      // Chunks keep the phase the stream is in; the first FENCED chunk moves it from CATCH_UP to FENCED.
      const allowed = c.phase === this.state || (c.phase === TransferPhase.TRANSFER_PHASE_FENCED && this.state === TransferPhase.TRANSFER_PHASE_CATCH_UP);
      if (!allowed) throw protocolError(`chunk ${c.seq} has phase ${TransferPhase[c.phase] ?? c.phase}, not allowed in state ${streamStateName(this.state)}`);
      if (c.phase === TransferPhase.TRANSFER_PHASE_FENCED) this.state = TransferPhase.TRANSFER_PHASE_FENCED;
      const ops = fromWireOps(c.ops, this.range);
      this.digest.update(ops);
      if (c.phase === TransferPhase.TRANSFER_PHASE_COPY) this.countRows(ops);
      return { kind: 'chunk', seq: expect, phase: c.phase, ops };
    }
    if (msg.snapshotDone) {
      if (this.state !== TransferPhase.TRANSFER_PHASE_COPY) throw protocolError('snapshot_done arrived twice or after the log began');
      const bad = checksumMismatch(msg.snapshotDone, this.digest.totals());
      if (bad) throw new CairnError('CONFLICT', `snapshot checksum mismatch (received vs sent: ${bad}); the copy is corrupt`);
      this.state = TransferPhase.TRANSFER_PHASE_CATCH_UP;
      return { kind: 'snapshotDone' };
    }
    if (msg.end) {
      if (this.state !== TransferPhase.TRANSFER_PHASE_FENCED) throw protocolError(`end arrived in state ${streamStateName(this.state)}, before the fenced tail`);
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
      // A row prefix holds the row key's length, so a key that starts with the last row's whole prefix is of that row.
      const last = this.lastRow;
      const key = op.key;
      if (last && startsWith(key, last)) continue;
      this.rows++;
      this.lastRow = rowPrefixOf(key); // a view: the received message is not reused
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

  /** Wakes whoever waits, with nothing new: they check again at once (an abort, say). */
  nudge(): void {
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
