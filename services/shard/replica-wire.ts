/**
 * The packed form of a replicated entry's ops (ReplicatedEntry.packed_ops):
 * every op of the entry in one buffer, so the primary encodes an entry once
 * for all its followers (and every resend), and a follower reads the keys and
 * values as views of the received message instead of one protobuf object
 * (and its two byte arrays) per op. Pure.
 *
 * Per op: a tag byte (bits 0-1: the sublevel, 0 cells, 1 leases, 2 request
 * ids; bit 2: a delete), the key's length (varint) and bytes, then, unless a
 * delete, the value's length (varint) and bytes.
 */
import type { HashRange } from '../common/ranges.js';
import { CairnError } from '../common/errors.js';
import type { PerRowSublevel, RawOp } from './store-db.js';
import { keyRefusalFor } from './transfer-wire.js';

const SUBLEVELS: readonly PerRowSublevel[] = ['cells', 'leases', 'reqids'];
const TAG_OF: Record<PerRowSublevel, number> = { cells: 0, leases: 1, reqids: 2 };
const DELETE = 4;

const varintBytes = (n: number): number => (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5);

function putVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n & 0x7f) | 0x80;
    n >>>= 7;
  }
  buf[at++] = n;
  return at;
}

/** The ops of an entry in the packed form. */
export function packOps(ops: readonly RawOp[]): Buffer {
  let size = 0;
  for (const op of ops) {
    size += 1 + varintBytes(op.key.length) + op.key.length;
    if (op.value) size += varintBytes(op.value.length) + op.value.length;
  }
  const buf = Buffer.allocUnsafe(size);
  let at = 0;
  for (const op of ops) {
    buf[at++] = TAG_OF[op.sublevel] | (op.value ? 0 : DELETE);
    at = putVarint(buf, at, op.key.length);
    at += op.key.copy(buf, at);
    if (op.value) {
      at = putVarint(buf, at, op.value.length);
      at += op.value.copy(buf, at);
    }
  }
  return buf;
}

const malformed = (why: string) => new CairnError('INVALID_ARGUMENT', `replication: malformed packed ops: ${why}`);

/**
 * Reads packed ops as views of `packed`, refusing any that is malformed or
 * outside `range` (as the TransferOp form is checked).
 */
export function unpackOps(packed: Uint8Array, range: HashRange): RawOp[] {
  const buf = Buffer.isBuffer(packed) ? packed : Buffer.from(packed.buffer, packed.byteOffset, packed.byteLength);
  const ops: RawOp[] = [];
  const refusal = keyRefusalFor(range);
  let at = 0;
  const varint = (): number => {
    let n = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (at >= buf.length) throw malformed(`op ${ops.length} ends inside a length`);
      const b = buf[at++]!;
      n += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return n;
    }
    throw malformed(`op ${ops.length} has a length over 5 bytes`);
  };
  const bytes = (n: number, what: string): Buffer => {
    if (n > buf.length - at) throw malformed(`op ${ops.length}'s ${what} runs past the end (${n} bytes at ${at} of ${buf.length})`);
    const b = buf.subarray(at, at + n);
    at += n;
    return b;
  };
  while (at < buf.length) {
    const tag = buf[at++]!;
    const sublevel = SUBLEVELS[tag & 3];
    if (!sublevel || tag & ~7) throw malformed(`op ${ops.length} has tag ${tag}`);
    const key = bytes(varint(), 'key');
    const why = refusal(key);
    if (why) throw malformed(`op ${ops.length} ${why}`);
    if (tag & DELETE) ops.push({ sublevel, key });
    else ops.push({ sublevel, key, value: bytes(varint(), 'value') });
  }
  return ops;
}
