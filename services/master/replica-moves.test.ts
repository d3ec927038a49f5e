import { describe, expect, it } from '@jest/globals';
import { HASH_SPACE_END } from '../common/hash.js';
import type { ClusterMap, MapRange } from '../common/map.js';
import { decideCopy, mapStepFor, type CopyTask } from './replica-moves.js';

const range = { start: 0n, end: HASH_SPACE_END };
const shards = ['s0', 's1', 's2', 's3'].map((id) => ({ id, address: `${id}:1` }));
const group = (replicas: string[], inSync = replicas, learners: string[] = []): MapRange => ({
  ...range,
  shardId: replicas[0]!,
  replicas,
  inSync,
  ...(learners.length ? { learners } : {}),
  version: 5n,
});
const mapOf = (r: MapRange): ClusterMap => ({ epoch: 9n, ranges: [r], shards, clusterId: 'c', replicationFactor: 3 });

/** Runs decideCopy's steps on a map until it is done, waits or abandons, with `caughtUp` as the primary reports. */
function drive(r: MapRange, task: CopyTask, caughtUp: boolean): { map: ClusterMap; last: string; steps: string[] } {
  let map = mapOf(r);
  let started = false;
  const steps: string[] = [];
  for (let i = 0; i < 10; i++) {
    const a = decideCopy(map.ranges[0], task, started, caughtUp);
    if (a.kind !== 'step') return { map, last: a.kind, steps };
    const res = a.step(map);
    if (!res.ok) throw new Error(res.reason);
    map = res.map;
    steps.push(a.what);
    started = true;
  }
  throw new Error('no end');
}

describe('decideCopy', () => {
  it('adds the learner, then waits until its primary reports it caught up', () => {
    const out = drive(group(['s0', 's1', 's2']), { range, to: 's3', from: 's2', bytes: 1 }, false);
    expect(out.last).toBe('wait');
    expect(out.map.ranges[0]!.learners).toEqual(['s3']);
    expect(out.map.ranges[0]!.replicas).toEqual(['s0', 's1', 's2']);
  });

  it('replaces a follower in one step once caught up: the group never has an extra or a missing member', () => {
    const out = drive(group(['s0', 's1', 's2'], ['s0', 's1', 's2'], ['s3']), { range, to: 's3', from: 's2', bytes: 1 }, true);
    expect(out.last).toBe('done');
    expect(out.steps).toHaveLength(1);
    expect(out.map.ranges[0]).toMatchObject({ shardId: 's0', replicas: ['s0', 's1', 's3'], inSync: ['s0', 's1', 's3'] });
  });

  it('replacing the primary: the learner joins, primacy passes to it, then the old copy goes', () => {
    const out = drive(group(['s0', 's1', 's2'], ['s0', 's1', 's2'], ['s3']), { range, to: 's3', from: 's0', bytes: 1 }, true);
    expect(out.last).toBe('done');
    expect(out.steps).toHaveLength(3);
    expect(out.map.ranges[0]).toMatchObject({ shardId: 's3', replicas: ['s3', 's1', 's2'] });
    expect(new Set(out.map.ranges[0]!.inSync)).toEqual(new Set(['s1', 's2', 's3']));
  });

  it('a new copy (no replaced one) joins the in-sync set', () => {
    const out = drive(group(['s0', 's1'], ['s0', 's1'], ['s2']), { range, to: 's2', bytes: 1 }, true);
    expect(out.last).toBe('done');
    expect(out.map.ranges[0]).toMatchObject({ replicas: ['s0', 's1', 's2'], inSync: ['s0', 's1', 's2'] });
  });

  it('a replaced copy already dropped (by failover) leaves the learner to join alone', () => {
    const out = drive(group(['s0', 's1'], ['s0', 's1'], ['s3']), { range, to: 's3', from: 's2', bytes: 1 }, true);
    expect(out.last).toBe('done');
    expect(out.map.ranges[0]!.replicas).toEqual(['s0', 's1', 's3']);
  });

  it('abandons when the learner was dropped after it was added, or the range is gone', () => {
    expect(decideCopy(group(['s0', 's1', 's2']), { range, to: 's3', from: 's2', bytes: 1 }, true, false).kind).toBe('abandon');
    expect(decideCopy(undefined, { range, to: 's3', bytes: 1 }, false, false).kind).toBe('abandon');
  });

  it('never hands primacy to a copy out of sync', () => {
    const a = decideCopy(group(['s0', 's1', 's3'], ['s0', 's1']), { range, to: 's3', from: 's0', bytes: 1 }, true, true);
    expect(a.kind).toBe('abandon');
  });
});

describe('mapStepFor', () => {
  it('splits a range: both halves keep the group and its version, the epoch grows by one', () => {
    const res = mapStepFor({ kind: 'split', range, at: 1n << 62n })(mapOf(group(['s0', 's1', 's2'])));
    if (!res.ok) throw new Error(res.reason);
    expect(res.map.epoch).toBe(10n);
    expect(res.map.ranges.map((r) => [r.start, r.end, r.version, r.replicas])).toEqual([
      [0n, 1n << 62n, 5n, ['s0', 's1', 's2']],
      [1n << 62n, HASH_SPACE_END, 5n, ['s0', 's1', 's2']],
    ]);
  });

  it('refuses a split of a range the map no longer has (decided again on the new map)', () => {
    const res = mapStepFor({ kind: 'split', range: { start: 0n, end: 50n }, at: 40n })(mapOf(group(['s0', 's1', 's2'])));
    expect(res.ok).toBe(false);
  });
});
