import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { CairnError } from '../common/errors.js';
import { HASH_SPACE_END, hashToBytes, rowHash } from '../common/hash.js';
import type { ClusterMap } from '../common/map.js';
import { BUCKET_COUNT, bucketStart, evenSplit, rangeContains, tilingError } from '../common/ranges.js';
import {
  cursorAfter,
  decodeScanToken,
  encodeScanToken,
  FULL_WINDOW,
  groupByShard,
  planScan,
  routeRow,
  splitBatches,
} from './router.js';

const SHARDS = ['s1', 's2', 's3', 's4'];

function mapFrom(cuts: number[], owners: number[], epoch = 3n): ClusterMap {
  const bounds = [0n, ...[...new Set(cuts)].sort((a, b) => a - b).map(bucketStart), HASH_SPACE_END];
  const ranges = bounds.slice(0, -1).map((start, i) => ({ start, end: bounds[i + 1]!, shardId: SHARDS[owners[i % owners.length]! % SHARDS.length]! }));
  return { epoch, ranges, shards: SHARDS.map((id, i) => ({ id, address: `127.0.0.1:${7001 + i}` })), clusterId: 'c-test' };
}

/** Random valid maps: bucket-aligned cut points, owners drawn from four shards. */
const arbMap = fc
  .tuple(fc.uniqueArray(fc.integer({ min: 1, max: BUCKET_COUNT - 1 }), { maxLength: 12 }), fc.array(fc.nat(3), { minLength: 1, maxLength: 13 }))
  .map(([cuts, owners]) => mapFrom(cuts, owners));

const threeWay: ClusterMap = {
  epoch: 1n,
  ranges: evenSplit(3).map((r, i) => ({ ...r, shardId: SHARDS[i]! })),
  shards: SHARDS.slice(0, 3).map((id, i) => ({ id, address: `h${i}:1` })),
  clusterId: 'c-test',
};

describe('routeRow', () => {
  it('names the owner and its address', () => {
    const r = routeRow(threeWay, 'aff4:/C.0000000000000001');
    expect(rangeContains(r.range, rowHash('aff4:/C.0000000000000001'))).toBe(true);
    expect(r.address).toBe(`h${SHARDS.indexOf(r.shardId)}:1`);
  });

  it('answers WRONG_SHARD when the map cannot route (no map yet, or an unknown address)', () => {
    const empty: ClusterMap = { epoch: 0n, ranges: [], shards: [], clusterId: '' };
    expect(() => routeRow(empty, 'x')).toThrow(CairnError);
    expect(() => routeRow(empty, 'x')).toThrow(expect.objectContaining({ code: 'WRONG_SHARD' }));
    const noAddress = { ...threeWay, shards: [] };
    expect(() => routeRow(noAddress, 'x')).toThrow(expect.objectContaining({ code: 'WRONG_SHARD' }));
  });
});

describe('groupByShard', () => {
  it('puts every item in exactly one group, owned by a range that contains its hash', () => {
    fc.assert(
      fc.property(arbMap, fc.array(fc.string({ minLength: 1, maxLength: 20 }), { maxLength: 80 }), (map, rows) => {
        const groups = groupByShard(map, rows, (r) => r);
        const seen = new Array(rows.length).fill(0);
        for (const [shardId, g] of groups) {
          expect(g.shardId).toBe(shardId);
          expect(g.address).toBe(map.shards.find((s) => s.id === shardId)!.address);
          let last = -1;
          for (const { index, item } of g.items) {
            expect(item).toBe(rows[index]);
            expect(index).toBeGreaterThan(last); // input order within a group
            last = index;
            seen[index] += 1;
            const h = rowHash(item);
            expect(map.ranges.some((r) => r.shardId === shardId && rangeContains(r, h))).toBe(true);
          }
        }
        expect(seen.every((n) => n === 1)).toBe(true);
      }),
    );
  });

  it('returns no groups for no items', () => {
    expect(groupByShard(threeWay, [], (r: string) => r).size).toBe(0);
  });
});

describe('splitBatches', () => {
  it('keeps order and respects the item and weight caps', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(30)), fc.integer({ min: 1, max: 10 }), fc.integer({ min: 1, max: 50 }), (weights, maxItems, maxW) => {
        const batches = splitBatches(weights, { maxItems, weights: [{ max: maxW, of: (w) => w }] });
        expect(batches.flat()).toEqual(weights);
        for (const b of batches) {
          expect(b.length).toBeGreaterThan(0);
          expect(b.length).toBeLessThanOrEqual(maxItems);
          // Only a lone oversized item may exceed the weight budget.
          if (b.length > 1) expect(b.reduce((s, w) => s + w, 0)).toBeLessThanOrEqual(maxW);
        }
      }),
    );
  });

  it('cuts by rows and by cells', () => {
    const rows = Array.from({ length: 2500 }, (_, i) => ({ row: `r${i}`, cells: 3 }));
    expect(splitBatches(rows, { maxItems: 1000 }).map((b) => b.length)).toEqual([1000, 1000, 500]);
    const fat = Array.from({ length: 5 }, () => ({ cells: 4000 }));
    expect(splitBatches(fat, { maxItems: 1000, weights: [{ max: 10_000, of: (r) => r.cells }] }).map((b) => b.length)).toEqual([2, 2, 1]);
  });
});

describe('planScan', () => {
  it('tiles the window with segments in hash order, each inside one owner range', () => {
    const arbWindow = fc
      .tuple(fc.bigInt({ min: 0n, max: HASH_SPACE_END - 1n }), fc.bigInt({ min: 1n, max: HASH_SPACE_END }))
      .filter(([a, b]) => a < b)
      .map(([start, end]) => ({ start, end }));
    fc.assert(
      fc.property(arbMap, fc.oneof(fc.constant(FULL_WINDOW), arbWindow), (map, window) => {
        const segs = planScan(map, window);
        let expected = window.start;
        for (const s of segs) {
          expect(s.start).toBe(expected);
          expect(s.end).toBeGreaterThan(s.start);
          const owner = map.ranges.find((r) => rangeContains(r, s.start))!;
          expect(s.shardId).toBe(owner.shardId);
          expect(s.end <= owner.end).toBe(true);
          expected = s.end;
        }
        expect(expected).toBe(window.end);
      }),
    );
  });

  it('visits every range of the whole space once', () => {
    const segs = planScan(threeWay);
    expect(segs.map((s) => s.shardId)).toEqual(['s1', 's2', 's3']);
    expect(tilingError(segs)).toBeNull();
  });
});

describe('scan tokens', () => {
  it('round-trip a position at a hash and a shard token', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: HASH_SPACE_END - 1n }), fc.uint8Array({ maxLength: 40 }), (hash, tail) => {
        expect(decodeScanToken(encodeScanToken({ hash }))).toEqual({ hash });
        const shardToken = Buffer.concat([hashToBytes(hash), tail]);
        const c = cursorAfter(shardToken, 0n);
        expect(c.hash).toBe(hash);
        const back = decodeScanToken(encodeScanToken(c));
        expect(back.hash).toBe(hash);
        expect(back.shardToken!.equals(shardToken)).toBe(true);
      }),
    );
  });

  it('moves to the end of the segment when the shard says the window is done', () => {
    expect(cursorAfter(Buffer.alloc(0), 12345n)).toEqual({ hash: 12345n });
  });

  it('rejects tokens it did not make', () => {
    for (const t of ['', 'not a token!', Buffer.from('hello world').toString('base64url'), Buffer.from([1, 0, 1, 2]).toString('base64url')]) {
      expect(() => decodeScanToken(t)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
  });
});
