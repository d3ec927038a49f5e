/**
 * Prefix sums of live bytes and rows over the stats buckets, and what the
 * planner computes from them: loads per shard, cuts (binary searches over the
 * sums) and the water level. Pure.
 */
import { CairnError } from '../common/errors.js';
import { learnersOf, replicasOf, type MapRange } from '../common/map.js';
import { BUCKET_COUNT, bucketSpan, type OwnedRange } from '../common/ranges.js';

export interface BucketStats {
  bytes: number;
  rows: number;
}

/** Live bytes and rows per shard under a map (shards owning nothing are absent). */
export function shardLoads(ranges: readonly OwnedRange[], buckets: ReadonlyMap<number, BucketStats>): Map<string, BucketStats> {
  const { bytes, rows } = prefixSums(buckets);
  const out = new Map<string, BucketStats>();
  for (const r of ranges) {
    const [s, e] = bucketSpan(r);
    const cur = out.get(r.shardId) ?? { bytes: 0, rows: 0 };
    out.set(r.shardId, { bytes: cur.bytes + bytes[e]! - bytes[s]!, rows: cur.rows + rows[e]! - rows[s]! });
  }
  return out;
}

/** Live bytes per shard with every copy counted (replicas and learners): what a replicated shard holds. */
export function copyLoads(ranges: readonly MapRange[], buckets: ReadonlyMap<number, BucketStats>): Map<string, number> {
  const { bytes } = prefixSums(buckets);
  const out = new Map<string, number>();
  for (const r of ranges) {
    const [s, e] = bucketSpan(r);
    for (const id of [...replicasOf(r), ...learnersOf(r)]) out.set(id, (out.get(id) ?? 0) + bytes[e]! - bytes[s]!);
  }
  return out;
}

/**
 * P[k] = the sum over buckets below k, for k in 0..BUCKET_COUNT. Sums are
 * taken in bucket order either way; when few buckets hold data, only those
 * are visited and the runs between them are filled natively, which keeps a
 * plan of a sparse cluster cheap.
 */
export function prefixSums(buckets: ReadonlyMap<number, BucketStats>): { bytes: Float64Array; rows: Float64Array } {
  const bytes = new Float64Array(BUCKET_COUNT + 1);
  const rows = new Float64Array(BUCKET_COUNT + 1);
  const present: number[] = [];
  for (const [b, st] of buckets) {
    if (!Number.isInteger(b) || b < 0 || b >= BUCKET_COUNT) {
      throw new CairnError('INVALID_ARGUMENT', `buckets: bucket ${b} is outside 0..${BUCKET_COUNT - 1}`);
    }
    if (!(Number.isFinite(st.bytes) && st.bytes >= 0) || !(Number.isFinite(st.rows) && st.rows >= 0)) {
      throw new CairnError('INVALID_ARGUMENT', `buckets: bucket ${b} has bytes=${st.bytes}, rows=${st.rows}; both must be finite and >= 0`);
    }
    bytes[b + 1] = st.bytes;
    rows[b + 1] = st.rows;
    present.push(b + 1);
  }
  if (present.length > BUCKET_COUNT / 64) {
    for (let k = 1; k <= BUCKET_COUNT; k++) {
      bytes[k]! += bytes[k - 1]!;
      rows[k]! += rows[k - 1]!;
    }
    return { bytes, rows };
  }
  present.sort((x, y) => x - y);
  let sumBytes = 0;
  let sumRows = 0;
  let from = 1;
  for (const k of present) {
    bytes.fill(sumBytes, from, k);
    rows.fill(sumRows, from, k);
    sumBytes += bytes[k]!;
    sumRows += rows[k]!;
    bytes[k] = sumBytes;
    rows[k] = sumRows;
    from = k + 1;
  }
  bytes.fill(sumBytes, from);
  rows.fill(sumRows, from);
  return { bytes, rows };
}

/** P[k] = k: the weights when the shards hold no bytes (equal key space). Shared; never written. */
export const KEYSPACE_SUMS: Float64Array = Float64Array.from({ length: BUCKET_COUNT + 1 }, (_, k) => k);

/** Smallest k in [lo, hi] with P[k] >= v (hi + 1 when none). */
export function lowerBound(P: Float64Array, v: number, lo: number, hi: number): number {
  let a = lo;
  let b = hi + 1;
  while (a < b) {
    const m = (a + b) >>> 1;
    if (P[m]! < v) a = m + 1;
    else b = m;
  }
  return a;
}

/** Smallest k in [lo, hi] with P[k] > v (hi + 1 when none). */
export function upperBound(P: Float64Array, v: number, lo: number, hi: number): number {
  let a = lo;
  let b = hi + 1;
  while (a < b) {
    const m = (a + b) >>> 1;
    if (P[m]! <= v) a = m + 1;
    else b = m;
  }
  return a;
}

/**
 * The level T at which Σ min(T, cap_i) = total: what every shard would hold
 * if each took up to T, but none past its cap (Infinity: no cap). With no
 * finite cap it is the mean. When the caps together hold less than the total
 * (a drain that does not fit), the largest cap.
 */
export function waterLevel(caps: readonly number[], total: number): number {
  const sorted = [...caps].sort((a, b) => a - b);
  let rest = total;
  for (let k = 0; k < sorted.length; k++) {
    const level = rest / (sorted.length - k);
    if (sorted[k]! >= level) return level;
    rest -= sorted[k]!;
  }
  return sorted.length > 0 ? sorted[sorted.length - 1]! : 0;
}