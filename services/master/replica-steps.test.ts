import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { CairnError } from '../common/errors.js';
import { groupVersionOf, mapError, replicasOf, type ClusterMap, type MapRange } from '../common/map.js';
import { evenSplit, showRange, type HashRange } from '../common/ranges.js';
import {
  addLearner,
  dropReplica,
  handOver,
  initialGroups,
  mapOrThrow,
  minInSyncFor,
  promote,
  promoteLearner,
  rangesOnShard,
  rejoinInSync,
  removeFromInSync,
  replicaCounts,
  setFactor,
  underReplicated,
  wantedReplicas,
  type StepResult,
} from './replica-steps.js';

const shardRefs = (ids: readonly string[]) => ids.map((id, i) => ({ id, address: `127.0.0.1:${7001 + i}` }));

/**
 * Four ranges on s1..s4 at factor 3 (s5 is registered and holds nothing).
 * R0's group is mixed: primary s1, in-sync follower s2, lagging follower s3,
 * learner s4.
 */
function fixture(): ClusterMap {
  const ranges = initialGroups(evenSplit(4), ['s1', 's2', 's3', 's4'], 3);
  ranges[0] = { ...ranges[0]!, replicas: ['s1', 's2', 's3'], inSync: ['s1', 's2'], learners: ['s4'], version: 5n };
  return { epoch: 10n, ranges, shards: shardRefs(['s1', 's2', 's3', 's4', 's5']), clusterId: 'c-1', replicationFactor: 3 };
}
const R0: HashRange = { start: evenSplit(4)[0]!.start, end: evenSplit(4)[0]!.end };
const group = (r: MapRange) => ({ shardId: r.shardId, replicas: r.replicas, inSync: r.inSync, learners: r.learners, version: r.version });

/** The map of an accepted step, checked for what every accepted step keeps: epoch + 1, R0's version + 1, the rest the same objects. */
function accepted(before: ClusterMap, result: StepResult): ClusterMap {
  if (!result.ok) throw new Error(`refused: ${result.reason}`);
  const after = result.map;
  expect(mapError(after)).toBeNull();
  expect(after.epoch).toBe(before.epoch + 1n);
  expect(groupVersionOf(after.ranges[0]!)).toBe(groupVersionOf(before.ranges[0]!) + 1n);
  for (let i = 1; i < before.ranges.length; i++) expect(after.ranges[i]).toBe(before.ranges[i]);
  expect(before).toEqual(fixture());
  return after;
}

function refused(result: StepResult): { code: string; reason: string } {
  if (result.ok) throw new Error('accepted, expected a refusal');
  return { code: result.code, reason: result.reason };
}

const where = showRange(R0);

describe('promote (failover)', () => {
  it('makes the in-sync follower primary; the old primary stays a replica but leaves the in-sync set', () => {
    const m = fixture();
    const after = accepted(m, promote(m, R0, 's2'));
    expect(group(after.ranges[0]!)).toEqual({ shardId: 's2', replicas: ['s2', 's1', 's3'], inSync: ['s2'], learners: ['s4'], version: 6n });
  });

  it.each([
    ['a replica outside the in-sync set', 's3', 'PRECONDITION', `shard s3 is not in the in-sync set of ${where}: it may miss acknowledged writes`],
    ['a learner', 's4', 'PRECONDITION', `shard s4 is a learner of ${where}: it cannot be promoted before it joins the in-sync set`],
    ['the primary', 's1', 'PRECONDITION', `shard s1 is already the primary of ${where}`],
    ['a shard with no copy', 's5', 'PRECONDITION', `shard s5 is not a replica of ${where}`],
    ['an unknown shard', 's9', 'NOT_FOUND', `shard s9 is not a registered shard (step on ${where})`],
  ])('refuses %s', (_, shard, code, reason) => {
    expect(refused(promote(fixture(), R0, shard))).toEqual({ code, reason });
  });

  it('refuses a range that is no longer in the map exactly, naming it', () => {
    const half = { start: R0.start, end: R0.end / 2n };
    const r = refused(promote(fixture(), half, 's2'));
    expect(r.code).toBe('CONFLICT');
    expect(r.reason).toContain(`range ${showRange(half)} is not in the map at epoch 10`);
  });
});

describe('handOver', () => {
  it('moves primacy to the in-sync follower; the old primary stays in sync as a follower', () => {
    const m = fixture();
    const after = accepted(m, handOver(m, R0, 's2'));
    expect(group(after.ranges[0]!)).toEqual({ shardId: 's2', replicas: ['s2', 's1', 's3'], inSync: ['s2', 's1'], learners: ['s4'], version: 6n });
  });

  it.each(['s1', 's3', 's4', 's5'])('refuses %s, which is no in-sync follower', (shard) => {
    expect(refused(handOver(fixture(), R0, shard)).code).toBe('PRECONDITION');
  });
});

describe('removeFromInSync and rejoinInSync', () => {
  it('a silent follower leaves the in-sync set and stays a replica', () => {
    const m = fixture();
    const after = accepted(m, removeFromInSync(m, R0, 's2'));
    expect(group(after.ranges[0]!)).toEqual({ shardId: 's1', replicas: ['s1', 's2', 's3'], inSync: ['s1'], learners: ['s4'], version: 6n });
  });

  it.each([
    ['s1', `shard s1 is the primary of ${where}: it cannot leave the in-sync set (promote another first)`],
    ['s3', `shard s3 is not in the in-sync set of ${where}`],
    ['s4', `shard s4 is not in the in-sync set of ${where}`],
    ['s5', `shard s5 is not in the in-sync set of ${where}`],
  ])('removeFromInSync refuses %s', (shard, reason) => {
    expect(refused(removeFromInSync(fixture(), R0, shard))).toEqual({ code: 'PRECONDITION', reason });
  });

  it('a caught-up replica rejoins', () => {
    const m = fixture();
    const after = accepted(m, rejoinInSync(m, R0, 's3'));
    expect(group(after.ranges[0]!)).toEqual({ shardId: 's1', replicas: ['s1', 's2', 's3'], inSync: ['s1', 's2', 's3'], learners: ['s4'], version: 6n });
  });

  it.each([
    ['s2', `shard s2 is already in the in-sync set of ${where}`],
    ['s4', `shard s4 is a learner of ${where}: it joins with promoteLearner`],
    ['s5', `shard s5 is not a replica of ${where}`],
  ])('rejoinInSync refuses %s', (shard, reason) => {
    expect(refused(rejoinInSync(fixture(), R0, shard))).toEqual({ code: 'PRECONDITION', reason });
  });
});

describe('learners', () => {
  it('addLearner starts a new copy as a learner', () => {
    const m = fixture();
    const after = accepted(m, addLearner(m, R0, 's5'));
    expect(group(after.ranges[0]!)).toEqual({ shardId: 's1', replicas: ['s1', 's2', 's3'], inSync: ['s1', 's2'], learners: ['s4', 's5'], version: 6n });
  });

  it.each([
    ['s1', 'primary'],
    ['s3', 'follower'],
    ['s4', 'learner'],
  ])('addLearner refuses %s, which holds a copy as its %s', (shard, role) => {
    expect(refused(addLearner(fixture(), R0, shard))).toEqual({ code: 'PRECONDITION', reason: `shard ${shard} already holds a copy of ${where} (as its ${role})` });
  });

  it('addLearner refuses an unknown shard', () => {
    expect(refused(addLearner(fixture(), R0, 's9')).code).toBe('NOT_FOUND');
  });

  it('promoteLearner adds the learner to the replicas and the in-sync set in one step', () => {
    const m = fixture();
    const after = accepted(m, promoteLearner(m, R0, 's4'));
    expect(group(after.ranges[0]!)).toEqual({ shardId: 's1', replicas: ['s1', 's2', 's3', 's4'], inSync: ['s1', 's2', 's4'], learners: undefined, version: 6n });
  });

  it.each([
    ['a lagging follower', 's3', ['s1', 's2', 's4'], ['s1', 's2', 's4']],
    ['an in-sync follower', 's2', ['s1', 's3', 's4'], ['s1', 's4']],
  ])('promoteLearner replacing %s removes it in the same step', (_, replacing, replicas, inSync) => {
    const m = fixture();
    const after = accepted(m, promoteLearner(m, R0, 's4', replacing));
    expect(group(after.ranges[0]!)).toEqual({ shardId: 's1', replicas, inSync, learners: undefined, version: 6n });
  });

  it.each([
    ['the primary', 's4', 's1', 'PRECONDITION', `shard s1 is the primary of ${where}: hand primacy over before replacing it`],
    ['a shard with no copy', 's4', 's5', 'PRECONDITION', `shard s5 is not a replica of ${where}: there is nothing to replace`],
    ['an unknown shard', 's4', 's9', 'NOT_FOUND', `shard s9 is not a registered shard (replacing it in ${where})`],
    ['nothing, with a follower as the learner', 's3', undefined, 'PRECONDITION', `shard s3 is not a learner of ${where}`],
  ])('promoteLearner refuses replacing %s', (_, learner, replacing, code, reason) => {
    expect(refused(promoteLearner(fixture(), R0, learner, replacing))).toEqual({ code, reason });
  });
});

describe('dropReplica', () => {
  it.each([
    ['an in-sync follower', 's2', { replicas: ['s1', 's3'], inSync: ['s1'], learners: ['s4'] }],
    ['a lagging follower', 's3', { replicas: ['s1', 's2'], inSync: ['s1', 's2'], learners: ['s4'] }],
    ['a learner', 's4', { replicas: ['s1', 's2', 's3'], inSync: ['s1', 's2'], learners: undefined }],
  ])('trims %s', (_, shard, expected) => {
    const m = fixture();
    const after = accepted(m, dropReplica(m, R0, shard));
    expect(group(after.ranges[0]!)).toEqual({ shardId: 's1', ...expected, version: 6n });
  });

  it('refuses the primary and a shard with no copy', () => {
    expect(refused(dropReplica(fixture(), R0, 's1'))).toEqual({ code: 'PRECONDITION', reason: `shard s1 is the primary of ${where}: hand primacy over before dropping it` });
    expect(refused(dropReplica(fixture(), R0, 's5'))).toEqual({ code: 'PRECONDITION', reason: `shard s5 holds no copy of ${where}` });
  });
});

describe('setFactor and mapOrThrow', () => {
  it('changes the factor and the epoch only; factor 1 is written as no field; the same factor changes nothing', () => {
    const m = fixture();
    const two = mapOrThrow(setFactor(m, 2));
    expect(two).toEqual({ ...m, epoch: 11n, replicationFactor: 2 });
    expect(two.ranges).toBe(m.ranges);
    const one = mapOrThrow(setFactor(m, 1));
    expect('replicationFactor' in one).toBe(false);
    expect(one.epoch).toBe(11n);
    expect(mapOrThrow(setFactor(m, 3))).toBe(m);
  });

  it.each([0, -1, 1.5, Number.NaN])('refuses factor %s', (factor) => {
    expect(refused(setFactor(fixture(), factor)).code).toBe('INVALID_ARGUMENT');
  });

  it('mapOrThrow throws the refusal as a CairnError with its code', () => {
    const thrown = (() => {
      try {
        mapOrThrow(promote(fixture(), R0, 's3'));
      } catch (e) {
        return e;
      }
    })();
    expect(thrown).toBeInstanceOf(CairnError);
    expect((thrown as CairnError).code).toBe('PRECONDITION');
    expect((thrown as CairnError).message).toContain('it may miss acknowledged writes');
  });
});

describe('sizing helpers', () => {
  it.each<[number, number, number | undefined, number]>([
    [3, 5, undefined, 2],
    [1, 5, undefined, 1],
    [3, 1, undefined, 1],
    [2, 2, undefined, 2],
    [3, 0, undefined, 1],
    [3, 5, 3, 3],
    [3, 5, 9, 3],
    [3, 2, 3, 2],
    [3, 5, 0, 1],
    [5, 5, 4, 4],
  ])('minInSyncFor(factor %i, %i shards, configured %s) is %i', (factor, shards, configured, expected) => {
    expect(minInSyncFor(factor, shards, configured)).toBe(expected);
  });

  it('wantedReplicas is the factor, but never more than the shards', () => {
    expect(wantedReplicas(fixture(), 5)).toBe(3);
    expect(wantedReplicas(fixture(), 2)).toBe(2);
    expect(wantedReplicas({ ...fixture(), replicationFactor: undefined }, 5)).toBe(1);
  });

  it('underReplicated counts live replicas and live in-sync members, and says which are short', () => {
    const m = fixture();
    const short = (live: string[]) => underReplicated(m, live).map((u) => [m.ranges.indexOf(u.range), u.short, u.replicas, u.inSync, u.wanted]);
    expect(short(['s1', 's2', 's3', 's4', 's5'])).toEqual([[0, 'inSync', 3, 2, 3]]);
    expect(short(['s1', 's2', 's4', 's5'])).toEqual([
      [0, 'replicas', 2, 2, 3],
      [1, 'replicas', 2, 2, 3],
      [2, 'replicas', 2, 2, 3],
    ]);
    expect(short(['s1', 's2'])).toEqual([
      [1, 'replicas', 1, 1, 2],
      [2, 'replicas', 1, 1, 2],
    ]);
  });

  it('rangesOnShard and replicaCounts give every role', () => {
    const m = fixture();
    expect(rangesOnShard(m, 's4').map(({ range, role }) => [m.ranges.indexOf(range), role])).toEqual([
      [0, 'learner'],
      [1, 'follower'],
      [2, 'follower'],
      [3, 'primary'],
    ]);
    expect(rangesOnShard(m, 's5')).toEqual([]);
    expect(Object.fromEntries(replicaCounts(m))).toEqual({
      s1: { primaries: 1, followers: 2, learners: 0 },
      s2: { primaries: 1, followers: 2, learners: 0 },
      s3: { primaries: 1, followers: 2, learners: 0 },
      s4: { primaries: 1, followers: 2, learners: 1 },
      s5: { primaries: 0, followers: 0, learners: 0 },
    });
  });
});

describe('initialGroups', () => {
  it('places min(factor, shards) copies, primaries round the shards, followers the next ones', () => {
    const groups = initialGroups(evenSplit(4), ['a', 'b', 'c'], 2);
    expect(groups.map((r) => [r.shardId, r.replicas, r.inSync, r.version])).toEqual([
      ['a', ['a', 'b'], ['a', 'b'], 1n],
      ['b', ['b', 'c'], ['b', 'c'], 1n],
      ['c', ['c', 'a'], ['c', 'a'], 1n],
      ['a', ['a', 'b'], ['a', 'b'], 1n],
    ]);
    expect(initialGroups(evenSplit(2), ['a', 'b'], 5).map((r) => r.replicas)).toEqual([['a', 'b'], ['b', 'a']]);
  });

  it('a single copy carries no group fields', () => {
    expect(initialGroups(evenSplit(2), ['a', 'b'], 1)).toEqual(evenSplit(2).map((r, i) => ({ ...r, shardId: ['a', 'b'][i] })));
  });

  it('gives a valid map with primaries spread within one of each other (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 12 }), fc.integer({ min: 1, max: 5 }), (n, count, factor) => {
        const ids = Array.from({ length: n }, (_, i) => `s${i + 1}`);
        const ranges = initialGroups(evenSplit(count), ids, factor);
        const m: ClusterMap = { epoch: 1n, ranges, shards: shardRefs(ids), clusterId: 'c', replicationFactor: factor };
        expect(mapError(m)).toBeNull();
        for (const r of ranges) expect(replicasOf(r)).toHaveLength(Math.min(factor, n));
        const primaries = [...replicaCounts(m).values()].map((c) => c.primaries);
        expect(Math.max(...primaries) - Math.min(...primaries)).toBeLessThanOrEqual(1);
      }),
    );
  });

  it.each<[string, string[], number]>([
    ['factor 0', ['a'], 0],
    ['no shards', [], 2],
    ['a shard twice', ['a', 'a'], 2],
  ])('refuses %s', (_, ids, factor) => {
    expect(() => initialGroups(evenSplit(1), ids, factor)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });
});
