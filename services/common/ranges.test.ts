import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { HASH_SPACE_END } from './hash.js';
import {
  BUCKET_COUNT,
  BUCKET_SIZE,
  bucketOf,
  bucketSpan,
  bucketStart,
  evenSplit,
  findRangeIndex,
  mapLayoutError,
  mergeAdjacent,
  reassign,
  shareOf,
  splitAt,
  tilingError,
  type OwnedRange,
} from './ranges.js';

const bucketBoundary = fc.integer({ min: 1, max: BUCKET_COUNT - 1 }).map((b) => bucketStart(b));
const anyHash = fc.bigInt({ min: 0n, max: HASH_SPACE_END - 1n });

describe('evenSplit', () => {
  it('splits 2 shards at 2^63 (as the seed) and 3 shards at bucket-aligned thirds', () => {
    expect(evenSplit(2)).toEqual([
      { start: 0n, end: 9223372036854775808n },
      { start: 9223372036854775808n, end: HASH_SPACE_END },
    ]);
    // The seed split at 06148914691236516864; ours rounds down to a stats bucket boundary.
    const thirds = evenSplit(3).map((r) => r.start);
    expect(thirds).toEqual([0n, 0x5555n * BUCKET_SIZE, 0xaaaan * BUCKET_SIZE]);
    expect(Number(6148914691236516864n - thirds[1]!) / 2 ** 64).toBeLessThan(1e-4);
  });

  it('tiles and aligns to buckets for any n', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 500 }), (n) => {
        const rs = evenSplit(n);
        expect(rs).toHaveLength(n);
        expect(mapLayoutError(rs)).toBeNull();
      }),
    );
  });

  it('rejects n < 1', () => {
    expect(() => evenSplit(0)).toThrow(/n >= 1|1 <= n/);
  });
});

describe('tilingError', () => {
  it('names gaps, overlaps, empty ranges and a short cover', () => {
    expect(tilingError([])).toMatch(/no ranges/);
    expect(tilingError([{ start: 1n, end: HASH_SPACE_END }])).toMatch(/gap/);
    expect(tilingError([{ start: 0n, end: 10n }, { start: 5n, end: HASH_SPACE_END }])).toMatch(/overlap/);
    expect(tilingError([{ start: 0n, end: 0n }])).toMatch(/empty/);
    expect(tilingError([{ start: 0n, end: 10n }])).toMatch(/gap: \[10, 2\^64\)/);
    expect(tilingError([{ start: 0n, end: HASH_SPACE_END }])).toBeNull();
  });

  it('requires bucket-aligned boundaries for a map', () => {
    expect(mapLayoutError([{ start: 0n, end: 10n }, { start: 10n, end: HASH_SPACE_END }])).toMatch(/not a multiple/);
  });
});

describe('ranges tile the space after any sequence of splits, reassignments and merges', () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('split' as const), at: bucketBoundary }),
    fc.record({
      kind: fc.constant('reassign' as const),
      a: bucketBoundary,
      b: bucketBoundary,
      owner: fc.constantFrom('s1', 's2', 's3', 's4'),
    }),
    fc.record({ kind: fc.constant('merge' as const) }),
  );

  it('holds for random operation sequences', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.array(op, { maxLength: 40 }), (n, ops) => {
        let map: OwnedRange[] = evenSplit(n).map((r, i) => ({ ...r, shardId: `s${i + 1}` }));
        for (const o of ops) {
          if (o.kind === 'split') map = splitAt(map, o.at);
          else if (o.kind === 'merge') map = mergeAdjacent(map, (x, y) => x.shardId === y.shardId);
          else if (o.a !== o.b) {
            const [start, end] = o.a < o.b ? [o.a, o.b] : [o.b, o.a];
            map = reassign(map, { start, end }, o.owner);
            // Every hash in the reassigned range is now owned by the new owner.
            expect(map[findRangeIndex(map, start)]!.shardId).toBe(o.owner);
            expect(map[findRangeIndex(map, end - 1n)]!.shardId).toBe(o.owner);
          }
          expect(mapLayoutError(map)).toBeNull();
        }
        const total = map.reduce((sum, r) => sum + shareOf([r]), 0);
        expect(Math.abs(total - 1)).toBeLessThan(1e-4);
      }),
    );
  });
});

describe('findRangeIndex', () => {
  it('finds the range that contains any hash, by binary search', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 200 }), anyHash, (n, h) => {
        const rs = evenSplit(n);
        const i = findRangeIndex(rs, h);
        expect(h >= rs[i]!.start && h < rs[i]!.end).toBe(true);
      }),
    );
  });
});

describe('buckets', () => {
  it('bucketOf and bucketStart agree, and spans cover a range exactly', () => {
    fc.assert(
      fc.property(anyHash, (h) => {
        const b = bucketOf(h);
        expect(h >= bucketStart(b) && h < bucketStart(b) + BUCKET_SIZE).toBe(true);
      }),
    );
    expect(bucketSpan({ start: 0n, end: HASH_SPACE_END })).toEqual([0, BUCKET_COUNT]);
    expect(bucketStart(BUCKET_COUNT)).toBe(HASH_SPACE_END);
  });
});
