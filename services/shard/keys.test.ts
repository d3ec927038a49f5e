import { describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { HASH_SPACE_END, hashToBytes, rowHash, rowHashBytes } from '../common/hash.js';
import { BUCKET_COUNT, bucketOf } from '../common/ranges.js';
import {
  bucketOfKey,
  bucketOfStatsKey,
  bucketStatsBounds,
  bucketStatsKey,
  cellColumnKey,
  cellKey,
  cellKeyOfTail,
  cellKeyTimestamp,
  cellTimestampTail,
  columnBounds,
  columnKeyPrefix,
  columnPrefixBounds,
  columnTimeBounds,
  decodeCellKey,
  decodeKeyOrderToken,
  decodeRequestIdKey,
  decodeRowPrefix,
  decodeScanToken,
  encodeKeyOrderToken,
  encodeScanToken,
  escapeColumn,
  hasCellKeyShape,
  hashOfKey,
  hashOfIndexKey,
  hashRangeBounds,
  isKeyOrderToken,
  isTimestampTail,
  leaseKey,
  makeRowPrefix,
  requestIdKey,
  requestIdKeys,
  rowBounds,
  rowIndexKey,
  rowIndexKeyAfter,
  rowIndexPrefixBounds,
  rowKeyBytes,
  rowPrefix,
  rowPrefixOf,
  rowPrefixOfIndexKey,
  strinc,
  timestampOfTail,
  userMetaKey,
  type KeyBounds,
} from './keys.js';
import { writeDigest } from './store-reqids.js';

const U64_MAX = (1n << 64n) - 1n;

/** Strings rich in the bytes that matter to the escaping: 0x00, 0x01, high code points. */
const tricky = fc.string({
  unit: fc.oneof(fc.constantFrom('\u0000', '\u0001', 'a', 'b', '\u00ff', '\uffff', '\u{1F600}'), fc.string({ unit: 'binary', minLength: 1, maxLength: 1 })),
  maxLength: 8,
});
const timestamp = fc.bigInt({ min: 1n, max: U64_MAX });
/** A few distinct hashes, so that different rows often share one and the row-key order is exercised. */
const hash8 = fc.constantFrom(0n, 1n, 0xffn << 56n, U64_MAX, 12345678901234567n).map((h) => hashToBytes(h));

const within = (k: Buffer, b: KeyBounds): boolean => Buffer.compare(k, b.gte) >= 0 && (b.lt === undefined || Buffer.compare(k, b.lt) < 0);
const cmpBytes = (a: Buffer, b: Buffer): number => Buffer.compare(a, b);
const sign = (n: number): number => (n > 0 ? 1 : n < 0 ? -1 : 0);

describe('row prefix', () => {
  test('is hash | u16 length | row bytes', () => {
    const p = rowPrefix('héllo');
    expect(p.subarray(0, 8)).toEqual(rowHashBytes('héllo'));
    expect(p.readUInt16BE(8)).toBe(6);
    expect(p.subarray(10).toString('utf8')).toBe('héllo');
    expect(decodeRowPrefix(p)).toEqual({ hash: rowHash('héllo'), row: 'héllo' });
  });

  test('rejects a row key the length field cannot hold', () => {
    expect(() => makeRowPrefix(Buffer.alloc(8), Buffer.alloc(0x10000))).toThrow(/key format limit/);
    expect(() => makeRowPrefix(Buffer.alloc(7), Buffer.alloc(1))).toThrow(/8 bytes/);
  });

  test('rowPrefixOf finds the prefix in cell, lease and request-id keys', () => {
    fc.assert(
      fc.property(tricky, tricky, timestamp, tricky, (row, col, ts, rid) => {
        const p = rowPrefix(row);
        expect(rowPrefixOf(cellKey(p, col, ts))).toEqual(p);
        expect(rowPrefixOf(leaseKey(p))).toEqual(p);
        expect(rowPrefixOf(requestIdKey(p, rid))).toEqual(p);
      }),
    );
  });

  test('a truncated key is refused', () => {
    const p = rowPrefix('abc');
    expect(() => rowPrefixOf(p.subarray(0, 9))).toThrow(RangeError);
    expect(() => rowPrefixOf(p.subarray(0, p.length - 1))).toThrow(RangeError);
  });
});

describe('cell keys', () => {
  test('encode/decode round-trips', () => {
    fc.assert(
      fc.property(tricky, tricky, timestamp, (row, column, timestampUs) => {
        const k = cellKey(rowPrefix(row), column, timestampUs);
        expect(decodeCellKey(k)).toEqual({ hash: rowHash(row), row, column, timestampUs });
      }),
    );
  });

  test('decodes from a view into a larger buffer', () => {
    const k = cellKey(rowPrefix('r'), 'c\u0000d', 42n);
    const big = Buffer.concat([Buffer.from('junk'), k, Buffer.from('more')]);
    const view = big.subarray(4, 4 + k.length);
    expect(decodeCellKey(view)).toMatchObject({ row: 'r', column: 'c\u0000d', timestampUs: 42n });
  });

  test('escapes 0x00 in columns', () => {
    expect([...escapeColumn('a\u0000b')]).toEqual([0x61, 0x00, 0xff, 0x62]);
    expect(escapeColumn('plain')).toEqual(Buffer.from('plain'));
  });

  test('byte order is (hash, row length, row bytes, column bytes, timestamp descending)', () => {
    const cell = fc.record({ hash: hash8, row: tricky, column: tricky, ts: timestamp });
    fc.assert(
      fc.property(cell, cell, (a, b) => {
        const ka = cellKey(makeRowPrefix(a.hash, Buffer.from(a.row)), a.column, a.ts);
        const kb = cellKey(makeRowPrefix(b.hash, Buffer.from(b.row)), b.column, b.ts);
        const ra = Buffer.from(a.row);
        const rb = Buffer.from(b.row);
        const expected =
          cmpBytes(a.hash, b.hash) ||
          ra.length - rb.length ||
          cmpBytes(ra, rb) ||
          cmpBytes(Buffer.from(a.column), Buffer.from(b.column)) ||
          (a.ts === b.ts ? 0 : a.ts > b.ts ? -1 : 1);
        expect(sign(cmpBytes(ka, kb))).toBe(sign(expected));
      }),
      { numRuns: 2000 },
    );
  });

  test('a column that is a prefix of another sorts first, even when the other continues with 0x00', () => {
    const p = rowPrefix('r');
    const ks = ['a', 'a\u0000', 'a\u0000\u0000', 'a\u0001', 'ab'].map((c) => cellKey(p, c, 5n));
    const sorted = [...ks].sort(Buffer.compare);
    expect(sorted).toEqual(ks);
  });
});

describe('column bounds', () => {
  test('columnPrefixBounds holds exactly the columns starting with the prefix', () => {
    fc.assert(
      fc.property(tricky, tricky, tricky, timestamp, (row, prefix, column, ts) => {
        const p = rowPrefix(row);
        const inside = within(cellKey(p, column, ts), columnPrefixBounds(p, prefix));
        expect(inside).toBe(column.startsWith(prefix));
        // And with the prefix glued on, always inside.
        expect(within(cellKey(p, prefix + column, ts), columnPrefixBounds(p, prefix))).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  test('columnPrefixBounds never reaches another row', () => {
    fc.assert(
      fc.property(hash8, tricky, tricky, tricky, tricky, timestamp, (h, rowA, rowB, prefix, column, ts) => {
        fc.pre(rowA !== rowB);
        const pa = makeRowPrefix(h, Buffer.from(rowA));
        const pb = makeRowPrefix(h, Buffer.from(rowB));
        expect(within(cellKey(pb, column, ts), columnPrefixBounds(pa, prefix))).toBe(false);
        expect(within(cellKey(pb, column, ts), rowBounds(pa))).toBe(false);
      }),
    );
  });

  test('columnBounds holds every version of exactly one column', () => {
    fc.assert(
      fc.property(tricky, tricky, tricky, timestamp, (row, a, b, ts) => {
        const p = rowPrefix(row);
        expect(within(cellKey(p, a, ts), columnBounds(p, a))).toBe(true);
        expect(within(cellKey(p, b, ts), columnBounds(p, a))).toBe(a === b);
      }),
    );
  });

  test('columnTimeBounds selects start <= ts < end', () => {
    fc.assert(
      fc.property(timestamp, fc.bigInt({ min: 0n, max: 1000n }), fc.bigInt({ min: 0n, max: 1000n }), (ts, start, width) => {
        const p = rowPrefix('r');
        const end = width === 0n ? 0n : start + width;
        const b = columnTimeBounds(p, 'c', start, end);
        const k = cellKey(p, 'c', ts);
        const want = ts >= start && (end === 0n || ts < end);
        const got = b !== null && Buffer.compare(k, b.gte) >= 0 && Buffer.compare(k, b.lte) <= 0;
        expect(got).toBe(want);
      }),
    );
    const p = rowPrefix('r');
    expect(columnTimeBounds(p, 'c', 10n, 10n)).toBeNull();
    expect(columnTimeBounds(p, 'c', 10n, 5n)).toBeNull();
    const b = columnTimeBounds(p, 'c', 10n, 20n)!;
    expect(Buffer.compare(cellKey(p, 'c', 19n), b.gte)).toBe(0);
    expect(Buffer.compare(cellKey(p, 'c', 10n), b.lte)).toBe(0);
  });
});

describe('strinc', () => {
  test('is above every extension of the prefix and is the least such string', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 6 }), fc.uint8Array({ maxLength: 6 }), fc.uint8Array({ maxLength: 8 }), (prefix, ext, other) => {
        const up = strinc(prefix);
        const extended = Buffer.concat([prefix, ext]);
        if (up === undefined) {
          expect(prefix.every((b) => b === 0xff)).toBe(true);
          return;
        }
        expect(Buffer.compare(extended, up)).toBeLessThan(0);
        // Least: anything in [prefix, up) starts with prefix.
        const o = Buffer.from(other);
        if (Buffer.compare(o, Buffer.from(prefix)) >= 0 && Buffer.compare(o, up) < 0) {
          expect(o.subarray(0, prefix.length)).toEqual(Buffer.from(prefix));
        }
      }),
      { numRuns: 2000 },
    );
    expect(strinc(Buffer.from([1, 2, 0xff, 0xff]))).toEqual(Buffer.from([1, 3]));
    expect(strinc(Buffer.from([0xff]))).toBeUndefined();
  });
});

describe('hash range bounds', () => {
  test('keys of every row fall inside the bounds of exactly the ranges that contain its hash', () => {
    const hashes = fc.bigInt({ min: 0n, max: U64_MAX });
    fc.assert(
      fc.property(tricky, tricky, timestamp, hashes, hashes, (row, column, ts, x, y) => {
        fc.pre(x !== y);
        const start = x < y ? x : y;
        const end = x < y ? y : x;
        const h = rowHash(row);
        const p = rowPrefix(row);
        for (const range of [
          { start, end },
          { start, end: HASH_SPACE_END },
          { start: 0n, end },
        ]) {
          const b = hashRangeBounds(range);
          const inRange = h >= range.start && h < range.end;
          expect(within(cellKey(p, column, ts), b)).toBe(inRange);
          expect(within(leaseKey(p), b)).toBe(inRange);
          expect(within(requestIdKey(p, 'req-1'), b)).toBe(inRange);
        }
      }),
      { numRuns: 500 },
    );
  });

  test('the range ending at 2^64 has no upper bound; edges are exact', () => {
    expect(hashRangeBounds({ start: 5n, end: HASH_SPACE_END }).lt).toBeUndefined();
    const max = makeRowPrefix(hashToBytes(U64_MAX), Buffer.from('z'));
    expect(within(max, hashRangeBounds({ start: U64_MAX, end: HASH_SPACE_END }))).toBe(true);
    const at = makeRowPrefix(hashToBytes(100n), Buffer.from(''));
    expect(within(at, hashRangeBounds({ start: 100n, end: 101n }))).toBe(true);
    expect(within(at, hashRangeBounds({ start: 0n, end: 100n }))).toBe(false);
    expect(() => hashRangeBounds({ start: 5n, end: 5n })).toThrow(RangeError);
  });
});

describe('request ids and scan tokens', () => {
  test('request-id keys round-trip', () => {
    fc.assert(
      fc.property(tricky, tricky, (row, requestId) => {
        expect(decodeRequestIdKey(requestIdKey(rowPrefix(row), requestId))).toEqual({ hash: rowHash(row), row, requestId });
      }),
    );
  });

  test('scan tokens round-trip and start with the row hash', () => {
    fc.assert(
      fc.property(tricky, (row) => {
        const t = encodeScanToken(rowPrefix(row));
        expect(decodeScanToken(t)).toEqual(rowPrefix(row));
        expect(t.readBigUInt64BE(0)).toBe(rowHash(row));
      }),
    );
  });

  test('malformed tokens are refused', () => {
    const t = encodeScanToken(rowPrefix('abc'));
    expect(() => decodeScanToken(t.subarray(0, 5))).toThrow('malformed resume token');
    expect(() => decodeScanToken(t.subarray(0, t.length - 1))).toThrow('malformed resume token');
    expect(() => decodeScanToken(Buffer.concat([t, Buffer.from('x')]))).toThrow('malformed resume token');
  });
});

describe('key parts the store reads without decoding', () => {
  test('row key bytes, hash and bucket of a row prefix and of any per-row key', () => {
    fc.assert(
      fc.property(tricky, tricky, (row, column) => {
        const p = rowPrefix(row);
        expect(rowKeyBytes(p).toString('utf8')).toBe(row);
        for (const key of [p, cellKey(p, column, 7n), requestIdKey(p, 'r')]) {
          expect(hashOfKey(key)).toBe(rowHash(row));
          expect(bucketOfKey(key)).toBe(bucketOf(rowHash(row)));
        }
      }),
    );
  });

  test('a cell key is its column key prefix followed by its timestamp tail', () => {
    fc.assert(
      fc.property(tricky, tricky, fc.bigInt({ min: 0n, max: U64_MAX }), (row, column, ts) => {
        const p = rowPrefix(row);
        const key = cellKey(p, column, ts);
        const colKey = cellColumnKey(key);
        const tail = cellTimestampTail(key);
        expect(colKey).toEqual(columnKeyPrefix(p, column));
        expect(isTimestampTail(tail)).toBe(true);
        expect(timestampOfTail(tail)).toBe(ts);
        expect(cellKeyTimestamp(key)).toBe(ts);
        expect(cellKeyOfTail(colKey, tail)).toEqual(key);
        expect(hasCellKeyShape(key, p.length)).toBe(true);
      }),
    );
  });

  test('tails of newer versions sort first', () => {
    const p = rowPrefix('r');
    expect(Buffer.compare(cellTimestampTail(cellKey(p, 'c', 9n)), cellTimestampTail(cellKey(p, 'c', 8n)))).toBe(-1);
    expect(isTimestampTail(Buffer.alloc(7))).toBe(false);
  });

  test('hasCellKeyShape refuses keys without a terminator and timestamp', () => {
    const p = rowPrefix('r');
    expect(hasCellKeyShape(p, p.length)).toBe(false);
    expect(hasCellKeyShape(requestIdKey(p, 'abcdefghij'), p.length)).toBe(false);
    expect(hasCellKeyShape(cellKey(p, 'c', 1n).subarray(0, -1), p.length)).toBe(false);
  });

  test('requestIdKeys is requestIdKey of each prefix', () => {
    const ps = ['a', 'b', ''].map(rowPrefix);
    expect(requestIdKeys(ps, 'id-1')).toEqual(ps.map((p) => requestIdKey(p, 'id-1')));
  });
});

describe('meta keys', () => {
  test('bucket stats keys round-trip, sort in bucket order and fall in their bounds', () => {
    const { gte, lt } = bucketStatsBounds();
    let last = '';
    for (const b of [0, 1, 15, 16, 255, 4096, BUCKET_COUNT - 1]) {
      const k = bucketStatsKey(b);
      expect(bucketOfStatsKey(k)).toBe(b);
      expect(k > last).toBe(true);
      expect(k >= gte && k < lt).toBe(true);
      last = k;
    }
    expect(bucketStatsKey(10)).toBe('stats/b/000a');
  });

  test('user meta keys are apart from the stats records', () => {
    const { gte, lt } = bucketStatsBounds();
    const k = userMetaKey('stats/b/0001');
    expect(k >= gte && k < lt).toBe(false);
  });
});

describe('row-key index keys', () => {
  const inBounds = (k: Buffer, b: KeyBounds): boolean => Buffer.compare(k, b.gte) >= 0 && (b.lt === undefined || Buffer.compare(k, b.lt) < 0);
  const sign = (n: number): number => (n < 0 ? -1 : n > 0 ? 1 : 0);

  test('decode(encode) gives back the row prefix, and the hash is read from the end', () => {
    fc.assert(
      fc.property(tricky, (row) => {
        const p = rowPrefix(row);
        const k = rowIndexKey(p);
        expect(rowPrefixOfIndexKey(k)).toEqual(p);
        expect(hashOfIndexKey(k)).toBe(rowHash(row));
      }),
    );
  });

  test('index order is row-key byte order, whatever the hashes', () => {
    fc.assert(
      fc.property(tricky, tricky, hash8, hash8, (a, b, ha, hb) => {
        fc.pre(a !== b);
        const ka = rowIndexKey(makeRowPrefix(ha, Buffer.from(a)));
        const kb = rowIndexKey(makeRowPrefix(hb, Buffer.from(b)));
        expect(sign(Buffer.compare(ka, kb))).toBe(sign(Buffer.compare(Buffer.from(a), Buffer.from(b))));
      }),
    );
  });

  test('prefix bounds hold exactly the rows whose key starts with the prefix', () => {
    fc.assert(
      fc.property(tricky, tricky, hash8, (row, prefix, h) => {
        const k = rowIndexKey(makeRowPrefix(h, Buffer.from(row)));
        expect(inBounds(k, rowIndexPrefixBounds(Buffer.from(prefix)))).toBe(Buffer.from(row).subarray(0, Buffer.byteLength(prefix)).equals(Buffer.from(prefix)));
      }),
    );
  });

  test('the key after a row is above every key of that row and at most every key of a later row', () => {
    fc.assert(
      fc.property(tricky, tricky, hash8, hash8, (a, b, ha, hb) => {
        const after = rowIndexKeyAfter(Buffer.from(a));
        expect(Buffer.compare(after, rowIndexKey(makeRowPrefix(ha, Buffer.from(a))))).toBe(1);
        const kb = rowIndexKey(makeRowPrefix(hb, Buffer.from(b)));
        const later = Buffer.compare(Buffer.from(b), Buffer.from(a)) > 0;
        expect(Buffer.compare(after, kb) <= 0).toBe(later);
      }),
    );
  });

  test('a malformed index key is refused, naming what is wrong', () => {
    expect(() => rowPrefixOfIndexKey(Buffer.from('short'))).toThrow(/no row-key terminator/);
    const bad = Buffer.concat([Buffer.from([0x61, 0x00, 0x07, 0x00, 0x01]), Buffer.alloc(8)]);
    expect(() => rowPrefixOfIndexKey(bad)).toThrow(/bad escape 0x00 0x7/);
  });
});

describe('key-order resume tokens', () => {
  const hash = fc.bigInt({ min: 0n, max: U64_MAX });
  const position = fc
    .tuple(hash, fc.uniqueArray(fc.bigInt({ min: 1n, max: U64_MAX + 1n }), { maxLength: 4 }), fc.array(tricky, { maxLength: 4 }))
    .map(([start, ends, keys]) => ({
      start,
      parts: ends
        .filter((e) => e > start)
        .sort((a, b) => (a < b ? -1 : 1))
        .map((end, i) => ({ end, afterKey: Buffer.from(keys[i] ?? '') })),
    }));

  test('decode(encode) is the identity; the first 8 bytes are the start hash; never taken for a row-prefix token', () => {
    fc.assert(
      fc.property(position, (p) => {
        const t = encodeKeyOrderToken(p);
        expect(decodeKeyOrderToken(t)).toEqual(p);
        expect(t.readBigUInt64BE(0)).toBe(p.start);
        expect(isKeyOrderToken(t)).toBe(true);
        expect(() => decodeScanToken(t)).toThrow(RangeError);
      }),
    );
  });

  test('a row-prefix token is never taken for a key-order token', () => {
    fc.assert(
      fc.property(tricky, (row) => {
        expect(isKeyOrderToken(encodeScanToken(rowPrefix(row)))).toBe(false);
      }),
    );
  });

  test('truncated or out-of-order tokens are refused', () => {
    const t = encodeKeyOrderToken({ start: 5n, parts: [{ end: 10n, afterKey: Buffer.from('abc') }, { end: 20n, afterKey: Buffer.from('d') }] });
    for (let n = 12; n < t.length; n++) if (n !== 11 + 13) expect(() => decodeKeyOrderToken(t.subarray(0, n))).toThrow(RangeError);
    expect(() => decodeKeyOrderToken(encodeKeyOrderToken({ start: 10n, parts: [{ end: 10n, afterKey: Buffer.alloc(0) }] }))).toThrow(RangeError);
    expect(() => decodeKeyOrderToken(encodeKeyOrderToken({ start: 1n, parts: [{ end: 9n, afterKey: Buffer.alloc(0) }, { end: 3n, afterKey: Buffer.alloc(0) }] }))).toThrow(RangeError);
  });
});

describe('row prefixes and hashes written in place', () => {
  const sha1 = (b: Uint8Array) => createHash('sha1').update(b).digest().subarray(0, 8);
  test('rowPrefix is the SHA-1 prefix of the key\'s UTF-8 bytes, their length and the bytes, for any string (lone surrogates too)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ minLength: 1 }), fc.string({ unit: 'binary', minLength: 1 }), fc.string({ unit: 'grapheme', minLength: 1 })), (row) => {
        const bytes = Buffer.from(row, 'utf8');
        expect(rowPrefix(row).equals(makeRowPrefix(sha1(bytes), bytes))).toBe(true);
        expect(rowHashBytes(row).equals(sha1(bytes))).toBe(true);
        expect(rowHashBytes(bytes).equals(sha1(bytes))).toBe(true);
        expect(rowHash(row)).toBe(sha1(bytes).readBigUInt64BE(0));
      }),
      { numRuns: 300 },
    );
    expect(rowPrefix('aff4:/C.1234').subarray(0, 8).toString('hex')).toBe(createHash('sha1').update('aff4:/C.1234').digest('hex').slice(0, 16));
  });
});

describe('request digests', () => {
  test('a write digest is the first 16 bytes of SHA-256 of the documented canonical layout', () => {
    const cell = fc.record({ column: fc.string(), timestampUs: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), value: fc.uint8Array({ maxLength: 20 }) });
    fc.assert(
      fc.property(fc.array(fc.record({ replace: fc.boolean(), cells: fc.array(cell, { maxLength: 4 }) }), { minLength: 1, maxLength: 3 }), (segs) => {
        const parts: Buffer[] = [];
        for (const s of segs) {
          const h = Buffer.alloc(5);
          h[0] = s.replace ? 1 : 0;
          h.writeUInt32BE(s.cells.length, 1);
          parts.push(h);
          for (const c of s.cells) {
            const col = Buffer.from(c.column, 'utf8');
            const b = Buffer.alloc(4 + col.length + 12);
            b.writeUInt32BE(col.length, 0);
            col.copy(b, 4);
            b.writeBigUInt64BE(c.timestampUs, 4 + col.length);
            b.writeUInt32BE(c.value.length, 12 + col.length);
            parts.push(b, Buffer.from(c.value));
          }
        }
        expect(writeDigest(segs).equals(createHash('sha256').update(Buffer.concat(parts)).digest().subarray(0, 16))).toBe(true);
      }),
      { numRuns: 200 },
    );
  });
});
