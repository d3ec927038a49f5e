/**
 * Row hashing. A row's position in the hash space is the first 8 bytes of
 * SHA-1 of its key, read as a big-endian unsigned 64-bit integer (as GRR did,
 * so the seed's range numbers mean the same here).
 *
 * 64-bit hashes and epochs are `bigint` everywhere in TypeScript.
 */
import * as crypto from 'node:crypto';

/** 2^64: the exclusive end of the hash space. */
export const HASH_SPACE_END = 1n << 64n;

/**
 * crypto.hash (Node >= 20.12) is the one-shot form: no Hash object per call.
 * Asked for a latin1 string (one char per byte) rather than a Buffer: a
 * Buffer from native code has its own backing store, which costs the garbage
 * collector far more than a short string (0.85 → 0.42 µs per row hash,
 * measured); the bytes are then written where they belong.
 */
const oneShot = (crypto as unknown as { hash?: (alg: string, data: string | Uint8Array, enc: 'latin1') => string }).hash;

/** Writes the first `n` bytes of the `alg` digest of `data` into `out` at `offset`. */
export function writeDigestBytes(alg: 'sha1' | 'sha256', data: string | Uint8Array, out: Buffer, offset: number, n: number): void {
  if (oneShot) out.write(oneShot(alg, data, 'latin1'), offset, n, 'latin1');
  else crypto.createHash(alg).update(data).digest().copy(out, offset, 0, n);
}

/** Writes the 8 big-endian hash bytes of a row key into `out` at `offset`. */
export function writeRowHash(row: string | Uint8Array, out: Buffer, offset: number): void {
  writeDigestBytes('sha1', row, out, offset, 8);
}

/** The 8 big-endian hash bytes of a row key: the prefix of every stored key of the row. */
export function rowHashBytes(row: string | Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(8);
  writeRowHash(row, b, 0);
  return b;
}

/** The row's hash as an unsigned 64-bit integer. */
export function rowHash(row: string | Uint8Array): bigint {
  return rowHashBytes(row).readBigUInt64BE(0);
}

/** Encodes a hash (0 ≤ h < 2^64) as 8 big-endian bytes, so byte order is numeric order. */
export function hashToBytes(hash: bigint): Buffer {
  if (hash < 0n || hash >= HASH_SPACE_END) throw new RangeError(`hash out of range: ${hash}`);
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(hash, 0);
  return b;
}

/** Reads the 8-byte big-endian hash at the start of a stored key. */
export function hashFromBytes(bytes: Uint8Array): bigint {
  return Buffer.from(bytes.buffer, bytes.byteOffset, 8).readBigUInt64BE(0);
}

/** Proto carries a range end of 2^64 as 0 (see common.proto). */
export function endFromProto(end: bigint): bigint {
  return end === 0n ? HASH_SPACE_END : end;
}

/** The inverse of endFromProto. */
export function endToProto(end: bigint): bigint {
  return end === HASH_SPACE_END ? 0n : end;
}
