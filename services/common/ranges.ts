/**
 * Range arithmetic over the 64-bit hash space. Pure: no I/O.
 *
 * A map is a list of half-open ranges [start, end) sorted by start that tile
 * [0, 2^64) exactly. Every function that builds a map returns one that tiles,
 * and `checkTiling` is the single place that proves it.
 */
import { HASH_SPACE_END } from './hash.js';

export interface HashRange {
  start: bigint;
  /** Exclusive; at most 2^64. */
  end: bigint;
}

export interface OwnedRange extends HashRange {
  shardId: string;
}

export function rangeSize(r: HashRange): bigint {
  return r.end - r.start;
}

export function rangeContains(r: HashRange, hash: bigint): boolean {
  return hash >= r.start && hash < r.end;
}

export function rangesOverlap(a: HashRange, b: HashRange): boolean {
  return a.start < b.end && b.start < a.end;
}

/** True when `inner` lies entirely inside `outer`. */
export function rangeCovers(outer: HashRange, inner: HashRange): boolean {
  return inner.start >= outer.start && inner.end <= outer.end;
}

export function rangeKey(r: HashRange): string {
  return `${r.start}-${r.end}`;
}

/** Describes why a list of ranges does not tile [0, 2^64), or returns null when it does. */
export function tilingError(ranges: readonly HashRange[]): string | null {
  if (ranges.length === 0) return 'no ranges: the map must cover [0, 2^64)';
  let expected = 0n;
  for (const [i, r] of ranges.entries()) {
    if (r.start !== expected) {
      return r.start > expected
        ? `gap: [${expected}, ${r.start}) is owned by no range (before range ${i})`
        : `overlap: range ${i} starts at ${r.start}, before the previous range's end ${expected}`;
    }
    if (r.end <= r.start) return `empty or inverted range ${i}: [${r.start}, ${r.end})`;
    if (r.end > HASH_SPACE_END) return `range ${i} ends past 2^64: ${r.end}`;
    expected = r.end;
  }
  if (expected !== HASH_SPACE_END) return `gap: [${expected}, 2^64) is owned by no range`;
  return null;
}

/** Throws unless the ranges tile [0, 2^64) exactly. */
export function checkTiling(ranges: readonly HashRange[]): void {
  const err = tilingError(ranges);
  if (err) throw new Error(`ranges do not tile the hash space: ${err}`);
}

/**
 * Shards keep exact row and byte counts per *stats bucket*: the hash space cut
 * into 2^16 equal buckets of 2^48 hashes. Every range boundary in a map is a
 * bucket boundary, so the exact counts of any range are a sum of buckets, and
 * the planner can split a range where the bytes are, at bucket precision.
 */
export const BUCKET_BITS = 16;
export const BUCKET_COUNT = 1 << BUCKET_BITS;
export const BUCKET_SHIFT = 64n - BigInt(BUCKET_BITS);
export const BUCKET_SIZE = 1n << BUCKET_SHIFT;

/** The stats bucket a hash falls in, 0..BUCKET_COUNT-1. */
export function bucketOf(hash: bigint): number {
  return Number(hash >> BUCKET_SHIFT);
}

/** The first hash of a bucket; bucketStart(BUCKET_COUNT) is 2^64. */
export function bucketStart(bucket: number): bigint {
  return BigInt(bucket) << BUCKET_SHIFT;
}

/** The buckets a range covers, as [first, endExclusive); the range must be bucket-aligned. */
export function bucketSpan(r: HashRange): [number, number] {
  return [bucketOf(r.start), Number(r.end >> BUCKET_SHIFT)];
}

export function isBucketAligned(h: bigint): boolean {
  return h % BUCKET_SIZE === 0n;
}

/** Like tilingError, and also requires every boundary to be a bucket boundary. */
export function mapLayoutError(ranges: readonly HashRange[]): string | null {
  const err = tilingError(ranges);
  if (err) return err;
  for (const [i, r] of ranges.entries()) {
    if (!isBucketAligned(r.start)) return `range ${i} starts at ${r.start}, not a multiple of 2^${BUCKET_SHIFT}`;
  }
  return null;
}

/**
 * Splits [0, 2^64) into n contiguous ranges of equal size, rounded down to
 * bucket boundaries (the last takes the remainder), as GRR's seed did:
 * 3 shards split at 06148914691236516864, not at 2^64/3.
 */
export function evenSplit(n: number): HashRange[] {
  if (!Number.isInteger(n) || n < 1 || n > BUCKET_COUNT) throw new RangeError(`evenSplit needs 1 <= n <= ${BUCKET_COUNT}, got ${n}`);
  const step = (HASH_SPACE_END / BigInt(n) / BUCKET_SIZE) * BUCKET_SIZE;
  const out: HashRange[] = [];
  for (let i = 0; i < n; i++) {
    out.push({ start: step * BigInt(i), end: i === n - 1 ? HASH_SPACE_END : step * BigInt(i + 1) });
  }
  return out;
}

/**
 * Index of the range containing `hash` in a sorted tiling, by binary search:
 * O(log ranges). Returns -1 only when the list does not cover the hash.
 */
export function findRangeIndex(ranges: readonly HashRange[], hash: bigint): number {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const r = ranges[mid]!;
    if (hash < r.start) hi = mid - 1;
    else if (hash >= r.end) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/** Splits the range containing `at` into [start, at) and [at, end); no-op when `at` is already a boundary. */
export function splitAt<R extends HashRange>(ranges: readonly R[], at: bigint): R[] {
  const i = findRangeIndex(ranges, at);
  if (i < 0) throw new RangeError(`split point ${at} is outside the ranges`);
  const r = ranges[i]!;
  if (r.start === at) return ranges.slice();
  return [...ranges.slice(0, i), { ...r, end: at }, { ...r, start: at }, ...ranges.slice(i + 1)];
}

/** Merges neighbouring ranges that have the same owner (for OwnedRange) or all neighbours (plain). */
export function mergeAdjacent<R extends HashRange>(ranges: readonly R[], same: (a: R, b: R) => boolean): R[] {
  const out: R[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last.end === r.start && same(last, r)) out[out.length - 1] = { ...last, end: r.end };
    else out.push({ ...r });
  }
  return out;
}

/**
 * Assigns `range` (which must align with existing boundaries or will be split
 * to align) to `shardId`, merging neighbours with one owner. The result tiles
 * whenever the input did.
 */
export function reassign(ranges: readonly OwnedRange[], range: HashRange, shardId: string): OwnedRange[] {
  let out = splitAt(ranges, range.start);
  if (range.end < HASH_SPACE_END) out = splitAt(out, range.end);
  out = out.map((r) => (rangeCovers(range, r) ? { ...r, shardId } : r));
  return mergeAdjacent(out, (a, b) => a.shardId === b.shardId);
}

/** Fraction of the hash space a set of ranges covers, 0..1. */
export function shareOf(ranges: readonly HashRange[]): number {
  let total = 0n;
  for (const r of ranges) total += rangeSize(r);
  // Scale to keep precision past 2^53 before converting.
  return Number((total * 1_000_000n) / HASH_SPACE_END) / 1_000_000;
}

/** The seed's decimal, 20-digit zero-padded form: 09223372036854775808. */
export function formatHash(h: bigint): string {
  return h.toString().padStart(20, '0');
}

/** A range as logs and messages print it: `[start, end)`. */
export const showRange = (r: HashRange): string => `[${r.start}, ${r.end})`;
