import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { HASH_SPACE_END } from '../common/hash.js';
import { factorOf, learnersOf, mapError, replicasOf, type ClusterMap, type MapRange } from '../common/map.js';
import { BUCKET_COUNT, bucketStart, evenSplit, findRangeIndex, type HashRange } from '../common/ranges.js';
import { copyLoads, type BucketStats } from './bucket-sums.js';
import type { PlanShard } from './plan-types.js';
import { plan } from './planner.js';
import { applyReplicaStep, planReplicas, type ReplicaPlan, type ReplicaPlanOptions, type ReplicaStep } from './replica-planner.js';

// ------------------------------------------------------------------ helpers

type Group = string[];

/** A map of ranges (bucket-aligned) each with its replicas, primary first, all in sync. */
function groupMap(cuts: HashRange[], groups: Group[], shards: string[], factor: number): ClusterMap {
  const ranges: MapRange[] = cuts.map((r, i) => {
    const g = groups[i % groups.length]!;
    return g.length === 1 ? { ...r, shardId: g[0]! } : { ...r, shardId: g[0]!, replicas: [...g], inSync: [...g], version: 1n };
  });
  return { epoch: 1n, ranges, shards: shards.map((id) => ({ id, address: `${id}:1` })), clusterId: 'c-test', ...(factor > 1 ? { replicationFactor: factor } : {}) };
}

function uniformBuckets(bytesPerBucket: number): Map<number, BucketStats> {
  const m = new Map<number, BucketStats>();
  for (let b = 0; b < BUCKET_COUNT; b++) m.set(b, { bytes: bytesPerBucket, rows: 1 });
  return m;
}

const up = (...ids: string[]): PlanShard[] => ids.map((id) => ({ id, up: true }));

/** Runs the steps one at a time, checking every intermediate map is valid (so no shard ever holds two copies), and returns the final map. */
function applySteps(map: ClusterMap, p: ReplicaPlan): ClusterMap {
  let ranges = map.ranges;
  for (const step of p.steps) {
    ranges = applyReplicaStep(ranges, step);
    expect(mapError({ ...map, ranges })).toBeNull();
  }
  expect(ranges).toEqual(p.targetMap);
  return { ...map, epoch: map.epoch + 1n, ranges };
}


const primaryCounts = (ranges: readonly MapRange[], ids: readonly string[]): number[] => ids.map((id) => ranges.filter((r) => r.shardId === id).length);
const kinds = (steps: readonly ReplicaStep[]): Set<ReplicaStep['kind']> => new Set(steps.map((s) => s.kind));
const copySteps = (steps: readonly ReplicaStep[]) => steps.filter((s) => s.kind === 'addReplica' || s.kind === 'replaceReplica');

// ------------------------------------------------------------------ unit cases

describe('planReplicas: unit cases', () => {
  const total = 100 * BUCKET_COUNT;
  const buckets = uniformBuckets(100);

  it('fills an under-replicated cluster onto a joining shard, with copies only', () => {
    // Factor 3 on two shards: every range has two replicas; s2 joins.
    const map = groupMap(evenSplit(4), [['s0', 's1'], ['s1', 's0']], ['s0', 's1', 's2'], 3);
    const p = planReplicas({ map, shards: up('s0', 's1', 's2'), buckets });
    expect(kinds(p.steps)).toEqual(new Set(['addReplica', 'handOver']));
    expect(p.movedBytes).toBe(total);
    expect(p.minimumBytes).toBe(total);
    const after = applySteps(map, p);
    for (const r of after.ranges) expect(new Set(replicasOf(r))).toEqual(new Set(['s0', 's1', 's2']));
    // Four ranges over three shards: primaries 2/1/1 in some order.
    expect(primaryCounts(after.ranges, ['s0', 's1', 's2']).sort()).toEqual([1, 1, 2]);
  });

  it('drains a shard of its replicas, replacing each copy where no copy of that range is', () => {
    const map = groupMap(evenSplit(4), [['s0', 's1'], ['s1', 's2'], ['s2', 's3'], ['s3', 's0']], ['s0', 's1', 's2', 's3'], 2);
    const shards = [...up('s0', 's1', 's2'), { id: 's3', up: true, draining: true }];
    const p = planReplicas({ map, shards, buckets });
    const after = applySteps(map, p);
    expect(after.ranges.some((r) => replicasOf(r).includes('s3'))).toBe(false);
    // s3 held half the data once: at least that moves, and about no more.
    expect(p.minimumBytes).toBeCloseTo(total / 2, 0);
    expect(p.movedBytes).toBeLessThanOrEqual(1.05 * p.minimumBytes);
    const loads = copyLoads(after.ranges, buckets);
    for (const id of ['s0', 's1', 's2']) expect(Math.abs(loads.get(id)! - (2 * total) / 3)).toBeLessThanOrEqual(0.05 * ((2 * total) / 3));
    // The primary on s3 handed over before its copy was replaced.
    expect(p.steps.find((s) => s.kind === 'handOver' && s.from === 's3')).toBeDefined();
    expect(p.steps.some((s) => s.kind === 'replaceReplica' && s.from === 's3' && after.ranges.length > 0)).toBe(true);
  });

  it('gives a shard joining a 3-shard factor-3 cluster a quarter of the copies, moving about the minimum', () => {
    const map = groupMap(evenSplit(3), [['s0', 's1', 's2'], ['s1', 's2', 's0'], ['s2', 's0', 's1']], ['s0', 's1', 's2', 's3'], 3);
    const p = planReplicas({ map, shards: up('s0', 's1', 's2', 's3'), buckets });
    expect(p.minimumBytes).toBeCloseTo(0.75 * total, 0);
    expect(p.movedBytes).toBeLessThanOrEqual(1.05 * p.minimumBytes);
    expect(new Set(copySteps(p.steps).map((s) => s.to))).toEqual(new Set(['s3']));
    const after = applySteps(map, p);
    const loads = copyLoads(after.ranges, buckets);
    for (const id of ['s0', 's1', 's2', 's3']) expect(Math.abs(loads.get(id)! - 0.75 * total)).toBeLessThanOrEqual(0.05 * 0.75 * total);
    for (const r of after.ranges) expect(replicasOf(r)).toHaveLength(3);
    const counts = primaryCounts(after.ranges, ['s0', 's1', 's2', 's3']);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
    expect(planReplicas({ map: after, shards: up('s0', 's1', 's2', 's3'), buckets }).steps).toEqual([]);
  });

  it('trims when the factor is lowered: drops, hand-overs and free splits only, no bytes', () => {
    const map = groupMap(evenSplit(6), [['s0', 's1', 's2'], ['s1', 's2', 's0'], ['s2', 's0', 's1']], ['s0', 's1', 's2'], 2);
    const p = planReplicas({ map, shards: up('s0', 's1', 's2'), buckets });
    expect([...kinds(p.steps)].every((k) => k === 'dropReplica' || k === 'handOver' || k === 'split')).toBe(true);
    expect(p.movedBytes).toBe(0);
    const after = applySteps(map, p);
    for (const r of after.ranges) expect(replicasOf(r)).toHaveLength(2);
    const loads = copyLoads(after.ranges, buckets);
    for (const id of ['s0', 's1', 's2']) expect(loads.get(id)).toBeCloseTo((2 * total) / 3, -3);
  });

  it('evens primaries with hand-overs alone', () => {
    const map = groupMap(evenSplit(6), [['s0', 's1', 's2'], ['s0', 's2', 's1']], ['s0', 's1', 's2'], 3);
    const p = planReplicas({ map, shards: up('s0', 's1', 's2'), buckets });
    expect(kinds(p.steps)).toEqual(new Set(['handOver']));
    expect(p.movedBytes).toBe(0);
    expect(primaryCounts(applySteps(map, p).ranges, ['s0', 's1', 's2'])).toEqual([2, 2, 2]);
  });

  it('never gives a copy to a shard that holds one, even when that shard is the neediest', () => {
    // s2 is new but already holds a copy of the heavy range: the heavy range's copies must go elsewhere.
    const heavy = new Map<number, BucketStats>([[0, { bytes: 1_000_000, rows: 1 }], [BUCKET_COUNT - 1, { bytes: 10, rows: 1 }]]);
    const map = groupMap(evenSplit(2), [['s0', 's2'], ['s1', 's0']], ['s0', 's1', 's2', 's3'], 2);
    const p = planReplicas({ map, shards: up('s0', 's1', 's2', 's3'), buckets: heavy });
    applySteps(map, p);
    for (const s of copySteps(p.steps)) expect(s.to).not.toBe('s2');
  });

  it('leaves the ranges on a down shard alone, and rebuilds them elsewhere once the caller gives up on it', () => {
    const map = groupMap(evenSplit(3), [['s0', 's1'], ['s1', 's2'], ['s2', 's0']], ['s0', 's1', 's2', 's3'], 2);
    const shards: PlanShard[] = [...up('s0', 's1', 's3'), { id: 's2', up: false }];
    const waiting = planReplicas({ map, shards, buckets });
    // Only the range with no copy on s2 may change.
    expect(waiting.steps.length).toBeGreaterThan(0);
    for (const s of waiting.steps) expect(s.range.end <= map.ranges[0]!.end).toBe(true);
    const opts: ReplicaPlanOptions = { replaceDown: new Set(['s2']) };
    const p = planReplicas({ map, shards, buckets }, opts);
    const after = applySteps(map, p);
    expect(after.ranges.some((r) => replicasOf(r).includes('s2'))).toBe(false);
    for (const r of after.ranges) expect(replicasOf(r)).toHaveLength(2);
    expect(p.steps.some((s) => s.kind === 'handOver' && s.from === 's2')).toBe(true);
    expect(planReplicas({ map: after, shards, buckets }, opts).steps).toEqual([]);
  });

  it('leaves a range with learners (a change under way) as it is', () => {
    const map = groupMap([{ start: 0n, end: HASH_SPACE_END }], [['s0']], ['s0', 's1', 's2'], 2);
    map.ranges[0] = { ...map.ranges[0]!, replicas: ['s0'], inSync: ['s0'], learners: ['s1'], version: 2n };
    const p = planReplicas({ map, shards: up('s0', 's1', 's2'), buckets });
    expect(p.steps).toEqual([]);
    expect(p.targetMap).toEqual(map.ranges);
  });

  it('plans factor 1 without groups exactly as planner.ts does (the seed: a third joins two)', () => {
    const map = groupMap(evenSplit(2), [['s0'], ['s1']], ['s0', 's1', 's2'], 1);
    const single = plan({ map, shards: up('s0', 's1', 's2'), buckets });
    const p = planReplicas({ map, shards: up('s0', 's1', 's2'), buckets });
    expect(p.movedBytes).toBe(single.movedBytes);
    expect(kinds(p.steps)).toEqual(new Set(['split', 'replaceReplica']));
    const owners = applySteps(map, p).ranges.map((r) => r.shardId);
    expect(owners).toEqual(['s0', 's2', 's2', 's1']);
  });

  it('relays through a third shard when the neediest holds every range the fullest can give', () => {
    // s0 is over-full because of F, which stays (a copy on the down s3); the neediest, s1, holds A, the only other range of s0.
    const at = (f: number): bigint => bucketStart(Math.round(f * BUCKET_COUNT));
    const cuts = [{ start: 0n, end: at(0.4) }, { start: at(0.4), end: at(0.7) }, { start: at(0.7), end: HASH_SPACE_END }];
    const map = groupMap(cuts, [['s0', 's3'], ['s0', 's1'], ['s2', 's4']], ['s0', 's1', 's2', 's3', 's4'], 2);
    const shards: PlanShard[] = [...up('s0', 's1', 's2', 's4'), { id: 's3', up: false }];
    const p = planReplicas({ map, shards, buckets });
    const after = applySteps(map, p);
    // One bucket at a time through a shard near T would take thousands of steps.
    expect(p.steps.length).toBeLessThan(20);
    const loads = copyLoads(after.ranges, buckets);
    const T = (0.4 + 2 * 0.6) * total / 4;
    for (const id of ['s0', 's1', 's2', 's4']) expect(Math.abs(loads.get(id)! - T)).toBeLessThanOrEqual(0.05 * T);
    expect(planReplicas({ map: after, shards, buckets }).steps).toEqual([]);
  });

  it('trims a map whose factor was lowered to 1, then balances as planner.ts does, so planning again finds nothing', () => {
    const map = groupMap(evenSplit(4), [['s0', 's1'], ['s1', 's0'], ['s0', 's1'], ['s0', 's1']], ['s0', 's1', 's2'], 1);
    const p = planReplicas({ map, shards: up('s0', 's1', 's2'), buckets });
    const after = applySteps(map, p);
    for (const r of after.ranges) expect(replicasOf(r)).toHaveLength(1);
    const loads = copyLoads(after.ranges, buckets);
    for (const id of ['s0', 's1', 's2']) expect(Math.abs(loads.get(id)! - total / 3)).toBeLessThanOrEqual(0.05 * (total / 3));
    expect(planReplicas({ map: after, shards: up('s0', 's1', 's2'), buckets }).steps).toEqual([]);
  });

  it('counts a copy that is not in sync as lost when one replica is wanted (the lower bound)', () => {
    // The only in-sync copy of the second half is on the draining s2: s0's stale copy cannot become its primary.
    const map = groupMap(evenSplit(2), [['s0'], ['s2', 's0']], ['s0', 's1', 's2'], 1);
    map.ranges[1] = { ...map.ranges[1]!, inSync: ['s2'] };
    const shards: PlanShard[] = [...up('s0', 's1'), { id: 's2', up: true, draining: true }];
    const p = planReplicas({ map, shards, buckets });
    expect(p.minimumBytes).toBe(total / 2);
    expect(p.movedBytes).toBeLessThanOrEqual(1.05 * p.minimumBytes);
    expect(applySteps(map, p).ranges.some((r) => replicasOf(r).includes('s2'))).toBe(false);
  });

  it('gives no shard more than its disk room', () => {
    const map = groupMap([{ start: 0n, end: HASH_SPACE_END }], [['s0', 's1']], ['s0', 's1', 's2', 's3'], 2);
    const shards: PlanShard[] = [...up('s0', 's1'), { id: 's2', up: true, roomBytes: 100_000 }, { id: 's3', up: true }];
    const p = planReplicas({ map, shards, buckets });
    const got = (id: string): number => copySteps(p.steps).filter((s) => s.to === id).reduce((n, s) => n + s.bytes, 0);
    expect(got('s2')).toBeGreaterThan(0);
    expect(got('s2')).toBeLessThanOrEqual(100_000);
    expect(got('s3')).toBeGreaterThan(0.4 * total);
    applySteps(map, p);
  });
});

// ------------------------------------------------------------------ properties

interface RandomReplicated {
  input: { map: ClusterMap; shards: PlanShard[]; buckets: Map<number, BucketStats> };
  opts: ReplicaPlanOptions;
  maxBucket: number;
}

/** 3–8 shards (some down or draining), factor 1–3, ranges with one copy fewer to one more than the factor, some followers out of sync. */
const replicatedArb = (singleCopy = false): fc.Arbitrary<RandomReplicated> =>
  fc
    .record({
      n: fc.integer({ min: 3, max: 8 }),
      factor: singleCopy ? fc.constant(1) : fc.integer({ min: 1, max: 3 }),
      splits: fc.uniqueArray(fc.integer({ min: 1, max: BUCKET_COUNT - 1 }), { maxLength: 16 }),
      picks: fc.array(fc.tuple(fc.array(fc.nat(), { minLength: 4, maxLength: 4 }), fc.integer({ min: -1, max: 1 }), fc.boolean()), { minLength: 17, maxLength: 17 }),
      status: fc.array(fc.constantFrom('up', 'up', 'up', 'up', 'up', 'down', 'draining'), { minLength: 8, maxLength: 8 }),
      replaceDown: fc.boolean(),
      histogram: fc.oneof(
        fc.array(fc.tuple(fc.integer({ min: 0, max: BUCKET_COUNT - 1 }), fc.integer({ min: 1, max: 10_000 })), { maxLength: 300 }),
        fc.tuple(fc.integer({ min: 0, max: BUCKET_COUNT - 600 }), fc.array(fc.tuple(fc.integer({ min: 0, max: 599 }), fc.integer({ min: 1, max: 1_000_000 })), { maxLength: 80 })).map(
          ([base, xs]) => xs.map(([o, v]) => [base + o, v] as [number, number]),
        ),
        fc.constant([] as Array<[number, number]>),
      ),
    })
    .map(({ n, factor, splits, picks, status, replaceDown, histogram }) => {
      const ids = Array.from({ length: n }, (_, i) => `s${i}`);
      const points = [0, ...splits.sort((a, b) => a - b), BUCKET_COUNT];
      const ranges: MapRange[] = [];
      for (let i = 0; i + 1 < points.length; i++) {
        const [shuffle, delta, lagging] = picks[i]!;
        const left = [...ids];
        const copies = singleCopy ? 1 : Math.max(1, Math.min(n, factor + delta));
        const replicas = Array.from({ length: copies }, (_, k) => left.splice(shuffle[k]! % left.length, 1)[0]!);
        const r: MapRange = { start: bucketStart(points[i]!), end: bucketStart(points[i + 1]!), shardId: replicas[0]! };
        // A lagging range has its last follower out of sync.
        if (copies > 1) Object.assign(r, { replicas, inSync: lagging ? replicas.slice(0, -1) : replicas, version: 3n });
        ranges.push(r);
      }
      const shards: PlanShard[] = ids.map((id, i) => ({ id, up: status[i] !== 'down', draining: status[i] === 'draining' }));
      const buckets = new Map<number, BucketStats>();
      let maxBucket = 0;
      for (const [b, v] of histogram) {
        const cur = buckets.get(b)?.bytes ?? 0;
        buckets.set(b, { bytes: cur + v, rows: 1 });
        maxBucket = Math.max(maxBucket, cur + v);
      }
      const map: ClusterMap = { epoch: 1n, ranges, shards: ids.map((id) => ({ id, address: `${id}:1` })), clusterId: 'c', ...(factor > 1 ? { replicationFactor: factor } : {}) };
      const opts: ReplicaPlanOptions = replaceDown ? { replaceDown: new Set(shards.filter((s) => !s.up).map((s) => s.id)) } : {};
      return { input: { map, shards, buckets }, opts, maxBucket };
    });

/** Roles as the planner's header defines them, computed here on their own. */
function rolesOf({ input, opts }: RandomReplicated) {
  const sh = (id: string) => input.shards.find((s) => s.id === id)!;
  const eligible = input.shards.filter((s) => s.up && !s.draining).map((s) => s.id);
  const gone = (id: string) => !sh(id).up && (opts.replaceDown?.has(id) ?? false);
  const fixed = (id: string) => !sh(id).up && !gone(id);
  /** Left as it is: a copy on a down shard not given up on, or a gone primary with no in-sync replica that is up. */
  const frozen = (r: MapRange) =>
    replicasOf(r).some(fixed) || (gone(r.shardId) && !(r.inSync ?? [r.shardId]).some((id) => sh(id).up));
  return { eligible, gone, fixed, frozen };
}

/**
 * Runs per property: enough to meet every shape of replicatedArb on each run
 * of `npm run test:unit`; `npm run fuzz` sets CAIRN_FUZZ_RUNS for a long search.
 */
const fuzzRuns = (n: number): { numRuns: number } => ({ numRuns: Number(process.env.CAIRN_FUZZ_RUNS) || n });

describe('planReplicas: properties on random replicated clusters', () => {
  const runs = fuzzRuns(150);
  const arb = replicatedArb();

  it('1. never puts two copies of a range on one shard, in the target or any intermediate map; is deterministic', () => {
    fc.assert(
      fc.property(arb, ({ input, opts }) => {
        const p = planReplicas(input, opts);
        applySteps(input.map, p);
        expect(planReplicas(input, opts)).toEqual(p);
      }),
      runs,
    );
  });

  it('2. gives every range min(factor, eligible) replicas on eligible shards; touches no down shard not given up on', () => {
    fc.assert(
      fc.property(arb, (c) => {
        const { input, opts } = c;
        const { eligible, fixed, frozen } = rolesOf(c);
        const p = planReplicas(input, opts);
        for (const s of p.steps) {
          const named = s.kind === 'dropReplica' ? [s.shard] : s.kind === 'split' ? [] : s.kind === 'addReplica' ? [s.to] : [s.from, s.to];
          expect(named.some(fixed)).toBe(false);
          if (s.kind === 'addReplica' || s.kind === 'replaceReplica') expect(eligible).toContain(s.to);
        }
        if (eligible.length === 0) return;
        const want = Math.min(factorOf(input.map), eligible.length);
        for (const t of p.targetMap) {
          const before = input.map.ranges[findRangeIndex(input.map.ranges, t.start)]!;
          if (frozen(before)) {
            expect(replicasOf(t)).toEqual(replicasOf(before));
            continue;
          }
          expect(replicasOf(t)).toHaveLength(want);
          for (const id of replicasOf(t)) expect(eligible).toContain(id);
        }
      }),
      runs,
    );
  });

  const ratios: number[] = [];
  /** The most moved beyond 1.05 × the bound, in largest buckets per receiver (the granularity allowance). */
  let worstExcess = -Infinity;
  it('3. balances every copy\'s bytes within tolerance (or a bucket), moving at most 1.05 × the lower bound (plus a bucket per receiver)', () => {
    fc.assert(
      fc.property(arb, (c) => {
        const { input, opts, maxBucket } = c;
        const { eligible, frozen } = rolesOf(c);
        const p = planReplicas(input, opts);
        const receivers = new Set(copySteps(p.steps).map((s) => s.to)).size;
        expect(p.movedBytes).toBeLessThanOrEqual(1.05 * p.minimumBytes + maxBucket * receivers + 1e-6);
        if (p.minimumBytes > 0) ratios.push(p.movedBytes / p.minimumBytes);
        if (receivers > 0 && maxBucket > 0) worstExcess = Math.max(worstExcess, (p.movedBytes - 1.05 * p.minimumBytes) / (maxBucket * receivers));
        // Copies of ranges left alone cannot move, so they may hold a shard above the band.
        if (eligible.length === 0 || p.basis !== 'bytes' || input.map.ranges.some(frozen)) return;
        const loads = copyLoads(p.targetMap, input.buckets);
        const mean = eligible.reduce((n, id) => n + (loads.get(id) ?? 0), 0) / eligible.length;
        for (const id of eligible) {
          const dev = Math.abs((loads.get(id) ?? 0) - mean);
          if (dev > 0.05 * mean + 1e-6) expect(dev).toBeLessThanOrEqual(maxBucket);
        }
      }),
      runs,
    );
    ratios.sort((a, b) => a - b);
    console.log(
      `replica plans: moved / lower bound over ${ratios.length} runs with bytes to move: median ${ratios[ratios.length >> 1]?.toFixed(4)}, max ${ratios[ratios.length - 1]?.toFixed(4)}; ` +
        `beyond 1.05 × the bound at most ${worstExcess.toFixed(3)} of the largest bucket per receiver`,
    );
  });

  let evenRuns = 0;
  let primaryRuns = 0;
  it('4. spreads primaries as evenly as hand-overs can: no chain of hand-overs could move one to a shard with two fewer', () => {
    fc.assert(
      fc.property(arb, (c) => {
        const { input, opts } = c;
        const { eligible, frozen } = rolesOf(c);
        const p = planReplicas(input, opts);
        if (eligible.length === 0 || factorOf(input.map) < 2) return;
        const count = new Map(eligible.map((id) => [id, p.targetMap.filter((r) => r.shardId === id).length]));
        // Who may pass primacy to whom: the primary of a range that is not left alone, to its other in-sync replicas.
        const next = new Map<string, Set<string>>(eligible.map((id) => [id, new Set()]));
        for (const r of p.targetMap) {
          if (frozen(input.map.ranges[findRangeIndex(input.map.ranges, r.start)]!) || !count.has(r.shardId)) continue;
          for (const id of r.inSync ?? []) if (id !== r.shardId && count.has(id)) next.get(r.shardId)!.add(id);
        }
        for (const a of eligible) {
          const seen = new Set([a]);
          const todo = [a];
          while (todo.length > 0) for (const b of next.get(todo.pop()!)!) if (!seen.has(b) && seen.add(b)) todo.push(b);
          for (const b of seen) expect(count.get(b)!).toBeGreaterThan(count.get(a)! - 2);
        }
        primaryRuns++;
        if (Math.max(...count.values()) - Math.min(...count.values()) <= 1) evenRuns++;
      }),
      runs,
    );
    console.log(`replica plans: primaries within one of even in ${evenRuns} of ${primaryRuns} runs with factor >= 2`);
  });

  it('5. plans nothing on its own result', () => {
    fc.assert(
      fc.property(arb, ({ input, opts }) => {
        const p = planReplicas(input, opts);
        const after = applySteps(input.map, p);
        const again = planReplicas({ ...input, map: after }, opts);
        expect(again.steps).toEqual([]);
        expect(again.targetMap).toEqual(after.ranges);
      }),
      runs,
    );
  });

  it('5. with factor 1 and no groups, moves what planner.ts moves', () => {
    fc.assert(
      fc.property(replicatedArb(true), ({ input }) => {
        const p = planReplicas(input);
        expect(p.movedBytes).toBe(plan(input).movedBytes);
        applySteps(input.map, p);
      }),
      fuzzRuns(60),
    );
  });

  it('6. gives no shard more than its disk room', () => {
    const withRooms = fc.tuple(arb, fc.array(fc.oneof(fc.constant(undefined), fc.constant(0), fc.double({ min: 0, max: 1, noNaN: true })), { minLength: 8, maxLength: 8 }));
    fc.assert(
      fc.property(withRooms, ([{ input, opts }, fractions]) => {
        const total = [...input.buckets.values()].reduce((n, b) => n + b.bytes, 0);
        const shards = input.shards.map((s, i) => ({ ...s, roomBytes: fractions[i] === undefined ? undefined : Math.floor(fractions[i]! * total) }));
        const p = planReplicas({ ...input, shards }, opts);
        const got = new Map<string, number>();
        for (const s of copySteps(p.steps)) got.set(s.to, (got.get(s.to) ?? 0) + s.bytes);
        for (const [id, bytes] of got) {
          const room = shards.find((s) => s.id === id)?.roomBytes;
          if (room !== undefined) expect(bytes).toBeLessThanOrEqual(room);
        }
        applySteps(input.map, p);
      }),
      fuzzRuns(100),
    );
  });
});
