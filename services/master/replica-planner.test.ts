import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { HASH_SPACE_END } from '../common/hash.js';
import { factorOf, learnersOf, mapError, replicasOf, type ClusterMap, type MapRange } from '../common/map.js';
import { BUCKET_COUNT, bucketSpan, bucketStart, evenSplit, findRangeIndex, type HashRange } from '../common/ranges.js';
import { prefixSums, type BucketStats } from './bucket-sums.js';
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

/** Bytes per shard: every copy (replica or learner) counts its range's bytes. */
function copyLoads(ranges: readonly MapRange[], buckets: ReadonlyMap<number, BucketStats>): Map<string, number> {
  const { bytes } = prefixSums(buckets);
  const out = new Map<string, number>();
  for (const r of ranges) {
    const [s, e] = bucketSpan(r);
    for (const id of [...replicasOf(r), ...learnersOf(r)]) out.set(id, (out.get(id) ?? 0) + bytes[e]! - bytes[s]!);
  }
  return out;
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

  it('trims when the factor is lowered: drops and hand-overs only, no bytes', () => {
    const map = groupMap(evenSplit(6), [['s0', 's1', 's2'], ['s1', 's2', 's0'], ['s2', 's0', 's1']], ['s0', 's1', 's2'], 2);
    const p = planReplicas({ map, shards: up('s0', 's1', 's2'), buckets });
    expect([...kinds(p.steps)].every((k) => k === 'dropReplica' || k === 'handOver')).toBe(true);
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
