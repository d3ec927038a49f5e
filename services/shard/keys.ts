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
 * (The row-key index, below, is the one derived sublevel keyed by row key.)
 *
 * The column is escaped (0x00 → 0x00 0xFF) and terminated by 0x00 0x01, which
 * keeps byte order equal to column order and makes "every column starting with
 * P" one contiguous range. The inverted timestamp sorts newer versions first.
 */
import { HASH_SPACE_END, hashToBytes, writeRowHash } from '../common/hash.js';
import { BUCKET_BITS, type HashRange } from '../common/ranges.js';

/** Largest row key the u16 length field can hold (validation applies the smaller configured limit). */
export const MAX_ROW_KEY_BYTES = 0xffff;
const U64_MAX = (1n << 64n) - 1n;
const HEADER = 10; // hash (8) + length (2)
const TERMINATOR = Buffer.from([0x00, 0x01]);
/** Bytes of the inverted timestamp that ends every cell key (its "timestamp tail"). */
export const TIMESTAMP_BYTES = 8;

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

/** The prefix shared by every stored key of `row` (one allocation: the hash and the key are written in place). */
export function rowPrefix(row: string): Buffer {
  const n = Buffer.byteLength(row, 'utf8');
  if (n > MAX_ROW_KEY_BYTES) throw new RangeError(`row key is ${n} bytes, over the ${MAX_ROW_KEY_BYTES}-byte key format limit`);
  const out = Buffer.allocUnsafe(HEADER + n);
  out.write(row, HEADER, 'utf8');
  // A string is hashed as its UTF-8 bytes (lone surrogates as U+FFFD, as Buffer.from writes them): the keys.test property pins it.
  writeRowHash(row, out, 0);
  out.writeUInt16BE(n, 8);
  return out;
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

/** The row key's UTF-8 bytes inside a row prefix (a view, no copy). */
export function rowKeyBytes(prefix: Buffer): Buffer {
  return prefix.subarray(HEADER);
}

/** The hash of the row a per-row key (or row prefix) belongs to: its first 8 bytes. */
export function hashOfKey(key: Buffer): bigint {
  return key.readBigUInt64BE(0);
}

/** The stats bucket of a per-row key (or row prefix): the top BUCKET_BITS bits of its row hash. */
export function bucketOfKey(key: Buffer): number {
  return key.readUInt32BE(0) >>> (32 - BUCKET_BITS);
}

/** The column's UTF-8 bytes with 0x00 escaped as 0x00 0xFF (no terminator). */
export function escapeColumn(column: string): Buffer {
  return escapeZeros(Buffer.from(column, 'utf8'));
}

/** `raw` (a buffer the caller owns) with 0x00 escaped as 0x00 0xFF: itself when it holds no zero. */
function escapeZeros(raw: Buffer): Buffer {
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

/**
 * The column key prefix of a cell key: everything but its timestamp tail, the
 * same bytes as `columnKeyPrefix` (a view, no copy). It keys the column's
 * newest-version pointer.
 */
export function cellColumnKey(key: Buffer): Buffer {
  return key.subarray(0, key.length - TIMESTAMP_BYTES);
}

/** The timestamp tail of a cell key: its last 8 bytes, the inverted timestamp (a view, no copy). */
export function cellTimestampTail(key: Buffer): Buffer {
  return key.subarray(key.length - TIMESTAMP_BYTES);
}

/** Whether a stored value has the shape of a timestamp tail (a newest-version pointer). */
export function isTimestampTail(b: Buffer): boolean {
  return b.length === TIMESTAMP_BYTES;
}

/** The timestamp (µs) a timestamp tail stands for. */
export function timestampOfTail(tail: Buffer): bigint {
  return U64_MAX - tail.readBigUInt64BE(0);
}

/** The timestamp (µs) of a cell key, read from its tail without decoding the column. */
export function cellKeyTimestamp(key: Buffer): bigint {
  return U64_MAX - key.readBigUInt64BE(key.length - TIMESTAMP_BYTES);
}

/** The cell key of one version: its column key prefix followed by its timestamp tail. */
export function cellKeyOfTail(colKey: Buffer, tail: Buffer): Buffer {
  return Buffer.concat([colKey, tail]);
}

/**
 * A cheap check that a key whose row prefix is `prefixLength` bytes ends like
 * a cell key: the column terminator, then a timestamp tail. It does not check
 * the column's escaping; decodeCellTail does, and names what is wrong.
 */
export function hasCellKeyShape(key: Uint8Array, prefixLength: number): boolean {
  const n = key.length;
  return n >= prefixLength + TERMINATOR.length + TIMESTAMP_BYTES && key[n - 10] === 0x00 && key[n - 9] === 0x01;
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

/** requestIdKey of each row prefix for one request id (the id is encoded once). */
export function requestIdKeys(prefixes: readonly Buffer[], requestId: string): Buffer[] {
  const id = Buffer.from(requestId, 'utf8');
  return prefixes.map((p) => Buffer.concat([p, id], p.length + id.length));
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

/** The row prefix inside a (row-prefix) resume token; throws RangeError on a malformed token. */
export function decodeScanToken(token: Uint8Array): Buffer {
  if (isKeyOrderToken(token)) throw new RangeError('malformed resume token');
  let n: number;
  try {
    n = rowPrefixLength(token);
  } catch {
    throw new RangeError('malformed resume token');
  }
  if (n !== token.length) throw new RangeError('malformed resume token');
  return Buffer.from(token);
}

/*
 * The row-key index (sublevel `rk`): one key per stored row, the only
 * sublevel keyed by row key rather than by hash, so a row-key prefix is one
 * contiguous key range (a seek), not a walk over every row:
 *
 *     row index key = escaped row key | 0x00 0x01 | hash (8, big-endian)
 *
 * The row key is escaped and terminated as a column is in a cell key (0x00 →
 * 0x00 0xFF, then 0x00 0x01), so index order is row-key byte order, and "every
 * row whose key starts with P" is exactly the keys starting with escape(P).
 * The hash at the end lets a scan keep only the rows of one hash range
 * without hashing each key, and rebuilds the row prefix without hashing.
 * The value is the row's cell count (store-plan.ts settle): the same record
 * answers "does this row exist?" as a point read on every write.
 */
const INDEX_HASH_BYTES = 8;

/** The row-index key of the row whose row prefix (see rowPrefix) is `prefix`. */
export function rowIndexKey(prefix: Buffer): Buffer {
  const row = rowKeyBytes(prefix);
  let zeros = 0;
  for (let i = 0; i < row.length; i++) if (row[i] === 0) zeros++;
  const n = row.length + zeros;
  const out = Buffer.allocUnsafe(n + TERMINATOR.length + INDEX_HASH_BYTES);
  if (zeros === 0) {
    out.set(row, 0);
  } else {
    let j = 0;
    for (let i = 0; i < row.length; i++) {
      out[j++] = row[i]!;
      if (row[i] === 0) out[j++] = 0xff;
    }
  }
  out[n] = 0x00;
  out[n + 1] = 0x01;
  out.set(prefix.subarray(0, INDEX_HASH_BYTES), n + 2);
  return out;
}

/** The hash at the end of a row-index key. */
export function hashOfIndexKey(key: Buffer): bigint {
  return key.readBigUInt64BE(key.length - INDEX_HASH_BYTES);
}

/** The row prefix (hash | length | row key) a row-index key stands for; throws RangeError on a malformed key. */
export function rowPrefixOfIndexKey(key: Uint8Array): Buffer {
  const end = key.length - INDEX_HASH_BYTES - TERMINATOR.length;
  if (end < 0 || key[end] !== 0x00 || key[end + 1] !== 0x01) throw new RangeError('row index key has no row-key terminator');
  let zeros = 0;
  for (let i = 0; i < end; i++) {
    if (key[i] !== 0) continue;
    if (key[i + 1] !== 0xff) throw new RangeError(`bad escape 0x00 0x${(key[i + 1] ?? 0).toString(16)} in row index key`);
    zeros++;
    i++;
  }
  const rowLength = end - zeros;
  if (rowLength > MAX_ROW_KEY_BYTES) throw new RangeError(`row index key holds a row key of ${rowLength} bytes, over the key format limit`);
  const out = Buffer.allocUnsafe(HEADER + rowLength);
  out.set(key.subarray(end + TERMINATOR.length), 0);
  out.writeUInt16BE(rowLength, 8);
  if (zeros === 0) {
    out.set(key.subarray(0, end), HEADER);
  } else {
    let j = HEADER;
    for (let i = 0; i < end; i++) {
      out[j++] = key[i]!;
      if (key[i] === 0) i++; // skip the escape's 0xFF
    }
  }
  return out;
}

/** Every row-index key of a row whose key starts with `rowKeyPrefix` (UTF-8 bytes). */
export function rowIndexPrefixBounds(rowKeyPrefix: Uint8Array): KeyBounds {
  return prefixBounds(escapeBytes(rowKeyPrefix));
}

/** The first row-index key after every key of the row named by `rowKey` (its UTF-8 bytes). */
export function rowIndexKeyAfter(rowKey: Uint8Array): Buffer {
  const e = escapeBytes(rowKey);
  const out = Buffer.allocUnsafe(e.length + 2);
  out.set(e, 0);
  out[e.length] = 0x00;
  out[e.length + 1] = 0x02; // just past the terminator 0x00 0x01 that every key of this row has next
  return out;
}

function escapeBytes(raw: Uint8Array): Buffer {
  return escapeZeros(Buffer.from(raw));
}

/*
 * A prefix scan's resume token: where the scan stands in row-key order, per
 * part of the hash space (see store-reads.ts scanByRowKey).
 *
 *     key-order token = start (8) | 0xFF 0xFF 0xFF | part*
 *     part            = end (8, 0 = 2^64) | u16 BE key length | last row key UTF-8
 *
 * It says: the scan stands at `start`; in each part, [previous end (or
 * start), end), every row whose key is at most the part's key has been
 * returned (none when the key is empty); at and past the last end, nothing
 * has. There is one part, the range being scanned, unless the range was
 * split while the scan was in it: then the pieces already scanned further
 * keep their own keys. Its first 8 bytes are the hash where the scan
 * continues, as in a row-prefix token, so routers read both alike. The three
 * 0xFF bytes tell it from a row-prefix token: there, byte 10 starts a UTF-8
 * row key, which never holds 0xFF.
 */
const KEY_ORDER_TAG = 0xff;
const KEY_ORDER_HEADER = 8 + 3;
const PART_HEADER = 8 + 2;

export interface KeyOrderPart {
  /** End of the part (exclusive, up to 2^64); parts are in hash order and end above `start`. */
  end: bigint;
  /** UTF-8 bytes of the last row key returned or examined in the part; empty when none. */
  afterKey: Buffer;
}

export interface KeyOrderPosition {
  /** The hash where the scan continues. */
  start: bigint;
  parts: KeyOrderPart[];
}

export function encodeKeyOrderToken(p: KeyOrderPosition): Buffer {
  let n = KEY_ORDER_HEADER;
  for (const part of p.parts) n += PART_HEADER + part.afterKey.length;
  const out = Buffer.allocUnsafe(n);
  out.writeBigUInt64BE(p.start, 0);
  out[8] = out[9] = out[10] = KEY_ORDER_TAG;
  let at = KEY_ORDER_HEADER;
  for (const part of p.parts) {
    out.writeBigUInt64BE(part.end >= HASH_SPACE_END ? 0n : part.end, at);
    out.writeUInt16BE(part.afterKey.length, at + 8);
    out.set(part.afterKey, at + PART_HEADER);
    at += PART_HEADER + part.afterKey.length;
  }
  return out;
}

/** Whether a resume token is a prefix scan's key-order token (else it is a row-prefix token). */
export function isKeyOrderToken(token: Uint8Array): boolean {
  return token.length >= KEY_ORDER_HEADER && token[8] === KEY_ORDER_TAG && token[9] === KEY_ORDER_TAG && token[10] === KEY_ORDER_TAG;
}

/** The position in a key-order token; throws RangeError on a malformed one. */
export function decodeKeyOrderToken(token: Uint8Array): KeyOrderPosition {
  const bad = () => new RangeError('malformed resume token');
  if (!isKeyOrderToken(token)) throw bad();
  const b = Buffer.from(token.buffer, token.byteOffset, token.length);
  const start = b.readBigUInt64BE(0);
  const parts: KeyOrderPart[] = [];
  let at = KEY_ORDER_HEADER;
  let prev = start;
  while (at < b.length) {
    if (b.length - at < PART_HEADER) throw bad();
    const raw = b.readBigUInt64BE(at);
    const end = raw === 0n ? HASH_SPACE_END : raw;
    const n = b.readUInt16BE(at + 8);
    if (end <= prev || b.length - at - PART_HEADER < n) throw bad();
    parts.push({ end, afterKey: Buffer.from(b.subarray(at + PART_HEADER, at + PART_HEADER + n)) });
    prev = end;
    at += PART_HEADER + n;
  }
  return { start, parts };
}

/*
 * Keys of the `meta` sublevel (UTF-8 strings), which is not per-row:
 *
 *     stats/b/<bucket, 4 lower-case hex digits>   a bucket's rows and bytes
 *     x/<name>                                    getMeta/putMeta records
 *
 * plus the single keys below. Fixed-width hex keeps the buckets in numeric order.
 */
/** Present once the bucket stats records are complete and exact. */
export const META_STATS_MARKER = 'stats/v1';
/** Present in stores from before the row-key index, whose cell counts were keyed by row prefix (`rc`); removed when the index is built. */
export const META_ROWCELLS_MARKER = 'rc/v1';
/** Present once every column's newest-version pointer is complete and exact. */
export const META_LATEST_MARKER = 'lv/v1';
/**
 * Present once the row-key index has, for every stored row and no other, its
 * exact cell count. v2: v1 (this work before it was merged) kept empty values
 * beside `rc`, so a v1 index is rebuilt too.
 */
export const META_ROWINDEX_MARKER = 'rk/v2';
/** The clock's persisted high-water mark. */
export const META_CLOCK = 'clock';
const META_STATS_PREFIX = 'stats/b/';
const META_USER_PREFIX = 'x/'; // getMeta/putMeta keys live here, apart from the store's own

/** The meta key of a bucket's stats record. */
export function bucketStatsKey(bucket: number): string {
  return META_STATS_PREFIX + bucket.toString(16).padStart(4, '0');
}

/** The bucket a stats record key names. */
export function bucketOfStatsKey(key: string): number {
  return parseInt(key.slice(META_STATS_PREFIX.length), 16);
}

/** Bounds of every bucket stats record in the meta sublevel. */
export function bucketStatsBounds(): { gte: string; lt: string } {
  return { gte: META_STATS_PREFIX, lt: META_STATS_PREFIX + '\uffff' };
}

/** The meta key of a getMeta/putMeta record, apart from the store's own keys. */
export function userMetaKey(name: string): string {
  return META_USER_PREFIX + name;
}
