/**
 * Binary keys of the shard's per-row sublevels (cells, leases, reqids). Pure: no I/O.
 *
 * Every per-row key starts with the row prefix:
 *
 *     row prefix = hash (8, big-endian) | u16 BE row-key byte length | row-key UTF-8 bytes
 *
 * so one hash range [start, end) is one contiguous key range in each sublevel
 * (see `hashRangeBounds`), and all keys of one row are one contiguous range too
 * (the length field makes a row prefix never a prefix of another row's prefix).
 *
 *     cell key       = row prefix | escaped column | 0x00 0x01 | u64 BE (2^64-1 - timestampUs)
 *     lease key      = row prefix
 *     request-id key = row prefix | request id UTF-8
 *
 * The column is escaped (0x00 → 0x00 0xFF) and terminated by 0x00 0x01, which
 * keeps byte order equal to column order and makes "every column starting with
 * P" one contiguous range. The inverted timestamp sorts newer versions first.
 */
import { HASH_SPACE_END, hashToBytes, rowHashBytes } from '../common/hash.js';
import type { HashRange } from '../common/ranges.js';

/** Largest row key the u16 length field can hold (validation applies the smaller configured limit). */
export const MAX_ROW_KEY_BYTES = 0xffff;
const U64_MAX = (1n << 64n) - 1n;
const HEADER = 10; // hash (8) + length (2)
const TERMINATOR = Buffer.from([0x00, 0x01]);

/** Key bounds for a LevelDB iterator; `lt` undefined means "to the end of the sublevel". */
export interface KeyBounds {
  gte: Buffer;
  lt?: Buffer;
}

/** Builds a row prefix from explicit hash bytes; `rowPrefix` is the normal entry point. */
export function makeRowPrefix(hash: Uint8Array, row: Uint8Array): Buffer {
  if (hash.length !== 8) throw new RangeError(`row hash must be 8 bytes, got ${hash.length}`);
  if (row.length > MAX_ROW_KEY_BYTES) throw new RangeError(`row key is ${row.length} bytes, over the ${MAX_ROW_KEY_BYTES}-byte key format limit`);
  const out = Buffer.allocUnsafe(HEADER + row.length);
  out.set(hash, 0);
  out.writeUInt16BE(row.length, 8);
  out.set(row, HEADER);
  return out;
}

/** The prefix shared by every stored key of `row`. */
export function rowPrefix(row: string): Buffer {
  const bytes = Buffer.from(row, 'utf8');
  return makeRowPrefix(rowHashBytes(bytes), bytes);
}

/** Length of the row prefix at the start of a per-row key; throws on a truncated key. */
export function rowPrefixLength(key: Uint8Array): number {
  if (key.length < HEADER) throw new RangeError(`key of ${key.length} bytes is too short for a row prefix`);
  const n = HEADER + ((key[8]! << 8) | key[9]!);
  if (key.length < n) throw new RangeError(`key of ${key.length} bytes is shorter than its row prefix (${n})`);
  return n;
}

/** The row prefix at the start of any per-row key (cell, lease or request-id key). */
export function rowPrefixOf(key: Uint8Array): Buffer {
  return Buffer.from(key.buffer, key.byteOffset, rowPrefixLength(key));
}

/** Decodes a row prefix (or any per-row key) into its hash and row key. */
export function decodeRowPrefix(key: Uint8Array): { hash: bigint; row: string } {
  const n = rowPrefixLength(key);
  const b = Buffer.from(key.buffer, key.byteOffset, key.length);
  return { hash: b.readBigUInt64BE(0), row: b.toString('utf8', HEADER, n) };
}

/** The column's UTF-8 bytes with 0x00 escaped as 0x00 0xFF (no terminator). */
export function escapeColumn(column: string): Buffer {
  const raw = Buffer.from(column, 'utf8');
  let zeros = 0;
  for (const b of raw) if (b === 0) zeros++;
  if (zeros === 0) return raw;
  const out = Buffer.allocUnsafe(raw.length + zeros);
  let j = 0;
  for (const b of raw) {
    out[j++] = b;
    if (b === 0) out[j++] = 0xff;
  }
  return out;
}

/** Inverts the timestamp so that byte order puts newer versions first. */
function invertedTimestamp(timestampUs: bigint): Buffer {
  if (timestampUs < 0n || timestampUs > U64_MAX) throw new RangeError(`timestamp out of range: ${timestampUs}`);
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(U64_MAX - timestampUs, 0);
  return b;
}

/** rowPrefix | escaped column | terminator: the prefix of every version of one column. */
export function columnKeyPrefix(prefix: Uint8Array, column: string): Buffer {
  return Buffer.concat([prefix, escapeColumn(column), TERMINATOR]);
}

export function cellKey(prefix: Uint8Array, column: string, timestampUs: bigint): Buffer {
  if (column.indexOf('\0') >= 0) return Buffer.concat([prefix, escapeColumn(column), TERMINATOR, invertedTimestamp(timestampUs)]);
  // No NUL in the column, so its UTF-8 has no 0x00 to escape: write everything into one buffer.
  if (timestampUs < 0n || timestampUs > U64_MAX) throw new RangeError(`timestamp out of range: ${timestampUs}`);
  const n = prefix.length + Buffer.byteLength(column, 'utf8');
  const out = Buffer.allocUnsafe(n + 10);
  out.set(prefix, 0);
  out.write(column, prefix.length, 'utf8');
  out[n] = 0x00;
  out[n + 1] = 0x01;
  out.writeBigUInt64BE(U64_MAX - timestampUs, n + 2);
  return out;
}

/** The column and timestamp of a cell key whose row prefix is `prefixLength` bytes long. */
export function decodeCellTail(key: Uint8Array, prefixLength: number): { column: string; timestampUs: bigint } {
  const end = key.length - 8;
  // Fast path: a column without 0x00 bytes, so the terminator is the first 0x00 (no unescaping, no copy).
  const b = Buffer.isBuffer(key) ? key : Buffer.from(key.buffer, key.byteOffset, key.length);
  const z = b.indexOf(0, prefixLength);
  if (z === end - 2 && b[z + 1] === 0x01) return { column: b.toString('utf8', prefixLength, z), timestampUs: U64_MAX - b.readBigUInt64BE(end) };
  const bytes: number[] = [];
  let i = prefixLength;
  for (;;) {
    if (i >= end) throw new RangeError('cell key has no column terminator');
    const b = key[i]!;
    if (b !== 0) {
      bytes.push(b);
      i++;
      continue;
    }
    const next = key[i + 1];
    if (next === 0xff) {
      bytes.push(0);
      i += 2;
    } else if (next === 0x01 && i + 2 === end) {
      break;
    } else {
      throw new RangeError(`bad escape 0x00 0x${(next ?? 0).toString(16)} in cell key`);
    }
  }
  const ts = U64_MAX - Buffer.from(key.buffer, key.byteOffset + end, 8).readBigUInt64BE(0);
  return { column: Buffer.from(bytes).toString('utf8'), timestampUs: ts };
}

export interface DecodedCellKey {
  hash: bigint;
  row: string;
  column: string;
  timestampUs: bigint;
}

export function decodeCellKey(key: Uint8Array): DecodedCellKey {
  const { hash, row } = decodeRowPrefix(key);
  return { hash, row, ...decodeCellTail(key, rowPrefixLength(key)) };
}

export const leaseKey = (prefix: Uint8Array): Buffer => Buffer.from(prefix);

export function requestIdKey(prefix: Uint8Array, requestId: string): Buffer {
  return Buffer.concat([prefix, Buffer.from(requestId, 'utf8')]);
}

export function decodeRequestIdKey(key: Uint8Array): { hash: bigint; row: string; requestId: string } {
  const n = rowPrefixLength(key);
  return { ...decodeRowPrefix(key), requestId: Buffer.from(key.buffer, key.byteOffset + n, key.length - n).toString('utf8') };
}

/**
 * The smallest byte string greater than every string that starts with `prefix`
 * (FoundationDB's strinc): drop trailing 0xFF bytes, then add one to the last
 * byte. Undefined when the prefix is all 0xFF (no upper bound exists).
 */
export function strinc(prefix: Uint8Array): Buffer | undefined {
  let n = prefix.length;
  while (n > 0 && prefix[n - 1] === 0xff) n--;
  if (n === 0) return undefined;
  const out = Buffer.from(prefix.subarray(0, n));
  out[n - 1] = out[n - 1]! + 1;
  return out;
}

/** Bounds selecting every key that starts with `prefix`. */
export function prefixBounds(prefix: Uint8Array): KeyBounds {
  const lt = strinc(prefix);
  return lt ? { gte: Buffer.from(prefix), lt } : { gte: Buffer.from(prefix) };
}

/** Every key of one row, in any per-row sublevel. */
export const rowBounds = (prefix: Uint8Array): KeyBounds => prefixBounds(prefix);

/** Every version of every column of the row whose name starts with `colPrefix` ('' = all). */
export function columnPrefixBounds(prefix: Uint8Array, colPrefix: string): KeyBounds {
  return prefixBounds(Buffer.concat([prefix, escapeColumn(colPrefix)]));
}

/** Every version of exactly `column`. */
export function columnBounds(prefix: Uint8Array, column: string): KeyBounds {
  return prefixBounds(columnKeyPrefix(prefix, column));
}

/**
 * Versions of `column` with startUs <= ts < endUs (endUs 0 = unbounded). Since
 * newer sorts first, the newest allowed version is the lower key bound. Returns
 * null for an empty window.
 */
export function columnTimeBounds(prefix: Uint8Array, column: string, startUs: bigint, endUs: bigint): { gte: Buffer; lte: Buffer } | null {
  if (endUs !== 0n && endUs <= startUs) return null;
  const newest = endUs === 0n ? U64_MAX : endUs - 1n;
  return { gte: cellKey(prefix, column, newest), lte: cellKey(prefix, column, startUs) };
}

/** One hash range [start, end) as key bounds, valid in every per-row sublevel. */
export function hashRangeBounds(range: HashRange): KeyBounds {
  if (range.start >= range.end) throw new RangeError(`empty hash range [${range.start}, ${range.end})`);
  const gte = hashToBytes(range.start);
  return range.end >= HASH_SPACE_END ? { gte } : { gte, lt: hashToBytes(range.end) };
}

/**
 * Scan resume tokens are the last returned row's prefix. Callers treat them as
 * opaque, but the first 8 bytes are the row hash, which lets a router see
 * which range a token belongs to without asking the store.
 */
export function encodeScanToken(prefix: Uint8Array): Buffer {
  return Buffer.from(prefix);
}

/** The row prefix inside a resume token; throws RangeError on a malformed token. */
export function decodeScanToken(token: Uint8Array): Buffer {
  let n: number;
  try {
    n = rowPrefixLength(token);
  } catch {
    throw new RangeError('malformed resume token');
  }
  if (n !== token.length) throw new RangeError('malformed resume token');
  return Buffer.from(token);
}
