/**
 * Random steps on random replicated maps: every step is accepted exactly when
 * the design allows it, and every accepted one keeps the invariants of
 * docs/design.md "Replication and failover". The unit tests per step are in
 * replica-steps.test.ts.
 */
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { groupVersionOf, inSyncOf, learnersOf, mapError, replicasOf, type ClusterMap, type MapRange } from '../common/map.js';
import { evenSplit, type HashRange } from '../common/ranges.js';
import { addLearner, dropReplica, handOver, initialGroups, promote, promoteLearner, rejoinInSync, removeFromInSync, setFactor, type StepResult } from './replica-steps.js';

const shardRefs = (ids: readonly string[]) => ids.map((id, i) => ({ id, address: `127.0.0.1:${7001 + i}` }));

/** A random valid group over `ids`: any replicas (primary first), the primary plus any of them in sync, learners among the rest. */
const arbGroup = (ids: string[]) =>
  fc.shuffledSubarray(ids, { minLength: 1 }).chain((replicas) =>
    fc.record({
      replicas: fc.constant(replicas),
      inSync: fc.subarray(replicas.slice(1)).map((followers) => [replicas[0]!, ...followers]),
      learners: fc.shuffledSubarray(ids.filter((s) => !replicas.includes(s))),
      version: fc.bigInt({ min: 0n, max: 20n }),
    }),
  );

const arbMap = fc
  .record({ n: fc.integer({ min: 3, max: 6 }), factor: fc.integer({ min: 1, max: 4 }), rangeCount: fc.integer({ min: 1, max: 6 }), formed: fc.boolean() })
  .chain(({ n, factor, rangeCount, formed }) => {
    const ids = Array.from({ length: n }, (_, i) => `s${i + 1}`);
    const base = { epoch: 1n, shards: shardRefs(ids), clusterId: 'c', ...(factor > 1 ? { replicationFactor: factor } : {}) };
    if (formed) return fc.constant<ClusterMap>({ ...base, ranges: initialGroups(evenSplit(rangeCount), ids, factor) });
    return fc.array(arbGroup(ids), { minLength: rangeCount, maxLength: rangeCount }).map(
      (groups): ClusterMap => ({ ...base, ranges: evenSplit(rangeCount).map((r, i) => ({ ...r, shardId: groups[i]!.replicas[0]!, ...groups[i]! })) }),
    );
  });

const KINDS = ['promote', 'handOver', 'removeFromInSync', 'rejoinInSync', 'addLearner', 'promoteLearner', 'dropReplica', 'setFactor'] as const;
type Kind = (typeof KINDS)[number];

const ROLES = ['primary', 'inSync', 'lagging', 'learner', 'outsider', 'unknown'] as const;
type Role = (typeof ROLES)[number];
/** A shard picked by its role in the range: half the time the role its step usually takes (`role` undefined), so legal steps come often too. */
const arbPick = fc.record({ role: fc.option(fc.constantFrom(...ROLES), { nil: undefined, freq: 2 }), k: fc.nat() });
type Pick = typeof arbPick extends fc.Arbitrary<infer T> ? T : never;

/** `other` is promoteLearner's `replacing`. */
const arbStep = fc.record({
  kind: fc.constantFrom(...KINDS),
  range: fc.nat(),
  stale: fc.integer({ min: 0, max: 9 }).map((x) => x === 0),
  shard: arbPick,
  other: fc.option(arbPick, { nil: undefined, freq: 2 }),
  factor: fc.integer({ min: -1, max: 5 }),
});

const definedRole = (p: Pick) => (p.role === undefined ? { k: p.k } : p);

const AIMED: Record<Kind, Role> = {
  promote: 'inSync',
  handOver: 'inSync',
  removeFromInSync: 'inSync',
  rejoinInSync: 'lagging',
  addLearner: 'outsider',
  promoteLearner: 'learner',
  dropReplica: 'lagging',
  setFactor: 'primary',
};

/** The shard a pick names in range r of map m: one of that role, or any registered shard when none has it; 'unknown' is s9. */
function pick(m: ClusterMap, r: MapRange, { role = 'primary', k }: Pick): string {
  const followers = replicasOf(r).slice(1);
  const withRole: Record<Role, readonly string[]> = {
    primary: [r.shardId],
    inSync: followers.filter((s) => inSyncOf(r).includes(s)),
    lagging: followers.filter((s) => !inSyncOf(r).includes(s)),
    learner: learnersOf(r),
    outsider: m.shards.map((x) => x.id).filter((s) => !replicasOf(r).includes(s) && !learnersOf(r).includes(s)),
    unknown: ['s9'],
  };
  const candidates = withRole[role].length ? withRole[role] : m.shards.map((x) => x.id);
  return candidates[k % candidates.length]!;
}
type Step = typeof arbStep extends fc.Arbitrary<infer T> ? T : never;

function apply(m: ClusterMap, kind: Kind, range: HashRange, shard: string, other: string | undefined, factor: number): StepResult {
  switch (kind) {
    case 'promote':
      return promote(m, range, shard);
    case 'handOver':
      return handOver(m, range, shard);
    case 'removeFromInSync':
      return removeFromInSync(m, range, shard);
    case 'rejoinInSync':
      return rejoinInSync(m, range, shard);
    case 'addLearner':
      return addLearner(m, range, shard);
    case 'promoteLearner':
      return promoteLearner(m, range, shard, other);
    case 'dropReplica':
      return dropReplica(m, range, shard);
    case 'setFactor':
      return setFactor(m, factor);
  }
}

/** When each step is legal, written out from docs/design.md independently of replica-steps.ts. */
function legal(kind: Kind, r: MapRange, known: ReadonlySet<string>, shard: string, other: string | undefined, factor: number): boolean {
  const replicas = replicasOf(r);
  const inSync = inSyncOf(r);
  const learners = learnersOf(r);
  const follower = shard !== r.shardId;
  switch (kind) {
    case 'promote':
    case 'handOver':
    case 'removeFromInSync':
      return inSync.includes(shard) && follower;
    case 'rejoinInSync':
      return replicas.includes(shard) && !inSync.includes(shard);
    case 'addLearner':
      return known.has(shard) && !replicas.includes(shard) && !learners.includes(shard);
    case 'promoteLearner':
      return learners.includes(shard) && (other === undefined || (replicas.includes(other) && other !== r.shardId));
    case 'dropReplica':
      return (replicas.includes(shard) || learners.includes(shard)) && follower;
    case 'setFactor':
      return Number.isInteger(factor) && factor >= 1;
  }
}

/** A group as sets: the order of followers is no invariant. */
const groupSets = (r: MapRange) => ({ primary: r.shardId, replicas: new Set(replicasOf(r)), inSync: new Set(inSyncOf(r)), learners: new Set(learnersOf(r)) });

/** The group a legal step leaves, as the design describes each step. */
function expectedGroup(kind: Kind, r: MapRange, shard: string, other: string | undefined) {
  const { replicas, inSync, learners } = groupSets(r);
  let primary = r.shardId;
  switch (kind) {
    case 'promote': // the old primary is presumed dead or deposed: it stays a replica, out of sync
      inSync.delete(r.shardId);
      primary = shard;
      break;
    case 'handOver':
      primary = shard;
      break;
    case 'removeFromInSync':
      inSync.delete(shard);
      break;
    case 'rejoinInSync':
      inSync.add(shard);
      break;
    case 'addLearner':
      learners.add(shard);
      break;
    case 'promoteLearner':
      learners.delete(shard);
      replicas.add(shard);
      inSync.add(shard);
      if (other !== undefined) [replicas, inSync].forEach((set) => set.delete(other));
      break;
    case 'dropReplica':
      [replicas, inSync, learners].forEach((set) => set.delete(shard));
      break;
    case 'setFactor':
      break;
  }
  return { primary, replicas, inSync, learners };
}

describe('random steps on random replicated maps (property)', () => {
  it('accept exactly the legal steps and keep every invariant of the design', () => {
    const acceptedKinds = new Map<Kind, number>();
    fc.assert(
      fc.property(arbMap, fc.array(arbStep, { minLength: 5, maxLength: 25, size: 'max' }), (start, steps: Step[]) => {
        expect(mapError(start)).toBeNull();
        let m = start;
        const versions = new Map(m.ranges.map((r) => [r.start, groupVersionOf(r)]));
        for (const s of steps) {
          const i = s.range % m.ranges.length;
          const r = m.ranges[i]!;
          const range = s.stale ? { start: r.start, end: r.end - 1n } : { start: r.start, end: r.end };
          const shard = pick(m, r, { role: AIMED[s.kind], ...definedRole(s.shard) });
          const other = s.other === undefined ? undefined : pick(m, r, { role: 'inSync', ...definedRole(s.other) });
          const known = new Set(m.shards.map((x) => x.id));
          // Steps touch at most range i and the map's own fields: those are what a mutation of the input would change.
          const before = { epoch: m.epoch, factor: m.replicationFactor, ranges: m.ranges.slice(), range: structuredClone(r) };
          const result = apply(m, s.kind, range, shard, other, s.factor);
          const isLegal = !(s.stale && s.kind !== 'setFactor') && legal(s.kind, r, known, shard, other, s.factor);
          expect({ step: s.kind, accepted: result.ok }).toEqual({ step: s.kind, accepted: isLegal });
          expect({ epoch: m.epoch, factor: m.replicationFactor, ranges: m.ranges, range: m.ranges[i] }).toEqual(before);
          // The INTERNAL guard against producing a broken map is never reached from a valid one.
          if (!result.ok) expect(result.code).not.toBe('INTERNAL');
          if (!result.ok) continue;
          acceptedKinds.set(s.kind, (acceptedKinds.get(s.kind) ?? 0) + 1);
          const next = result.map;
          expect(mapError(next)).toBeNull();
          if (s.kind === 'setFactor') {
            if (next === m) expect(s.factor).toBe(before.factor ?? 1);
            else expect([next.epoch, next.replicationFactor ?? 1, next.ranges]).toEqual([m.epoch + 1n, s.factor, m.ranges]);
            m = next;
            continue;
          }
          expect(next.epoch).toBe(m.epoch + 1n);
          next.ranges.forEach((x, k) => (k === i ? expect(groupVersionOf(x)).toBe(groupVersionOf(r) + 1n) : expect(x).toBe(m.ranges[k])));
          const after = next.ranges[i]!;
          for (const x of next.ranges) {
            expect(groupVersionOf(x)).toBeGreaterThanOrEqual(versions.get(x.start)!);
            versions.set(x.start, groupVersionOf(x));
            expect(inSyncOf(x)).toContain(x.shardId);
            const copies = [...replicasOf(x), ...learnersOf(x)];
            expect(new Set(copies).size).toBe(copies.length);
          }
          // A new primary comes only from the old in-sync set (legal() checked it was in sync).
          if (after.shardId !== r.shardId) expect(inSyncOf(r)).toContain(after.shardId);
          expect(groupSets(after)).toEqual(expectedGroup(s.kind, r, shard, other));
          m = next;
        }
      }),
      { numRuns: 200 },
    );
    // The runs exercise every step, not only its refusals.
    for (const kind of KINDS) expect([kind, (acceptedKinds.get(kind) ?? 0) >= 10]).toEqual([kind, true]);
  });
});
