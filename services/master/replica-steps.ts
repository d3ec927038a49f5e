/**
 * Every configuration change of a replica group, as one pure step from a map
 * to the next (docs/design.md "Replication and failover"). Pure: no I/O, no
 * clock. The master writes the map a step returns with its compare-and-set;
 * the map is PacificA's configuration service, so these steps are the only
 * way a group's primary, in-sync set, replicas or learners change.
 *
 * Each accepted step changes one range's group, bumps that group's `version`
 * and the map's `epoch` by one, and leaves every other range as it was (the
 * same objects). A refused step says why, with a code from the error table,
 * and changes nothing. No step returns a map that fails `mapError`.
 *
 * A range is addressed by its exact [start, end): a step on a map where that
 * range was split or merged meanwhile is refused (CONFLICT), and the caller
 * decides again on the new map.
 */
import { CairnError, type ErrorCode } from '../common/errors.js';
import { factorOf, groupVersionOf, inSyncOf, learnersOf, mapError, replicasOf, roleCounts, type ClusterMap, type MapRange } from '../common/map.js';
import { showRange, type HashRange } from '../common/ranges.js';

/** Why a step was refused: `code` from the error table, `reason` naming the range and the shard. */
export interface Refusal {
  ok: false;
  code: ErrorCode;
  reason: string;
}

export type StepResult = { ok: true; map: ClusterMap } | Refusal;

/** The map a step returned, or the refusal as a CairnError with the step's code. */
export function mapOrThrow(result: StepResult): ClusterMap {
  if (!result.ok) throw new CairnError(result.code, result.reason);
  return result.map;
}

export type ReplicaRole = 'primary' | 'follower' | 'learner';

/** What a shard is to a range, or undefined when it holds no copy. */
export function roleOf(r: MapRange, shard: string): ReplicaRole | undefined {
  if (r.shardId === shard) return 'primary';
  if (replicasOf(r).includes(shard)) return 'follower';
  return learnersOf(r).includes(shard) ? 'learner' : undefined;
}

// ------------------------------------------------------------------ the steps

/**
 * Failover: the in-sync follower `candidate` becomes the primary. The old
 * primary leaves the in-sync set (it is dead or deposed, and may have missed
 * writes the new primary acknowledges) but stays a replica: it may catch up
 * and rejoin as a follower. Never promotes a replica outside the in-sync set:
 * it may miss acknowledged writes.
 */
export function promote(map: ClusterMap, range: HashRange, candidate: string): StepResult {
  return primacyTo(map, range, candidate, { oldPrimaryInSync: false, what: 'promoted' });
}

/**
 * The primary hands primacy to the in-sync follower `to` (before the primary
 * is moved away). Both have every acknowledged write, so the old primary
 * stays in the in-sync set, as a follower.
 */
export function handOver(map: ClusterMap, range: HashRange, to: string): StepResult {
  return primacyTo(map, range, to, { oldPrimaryInSync: true, what: 'handed primacy' });
}

/**
 * A follower that did not answer the primary in time leaves the in-sync set,
 * so the primary may acknowledge writes without it. It stays a replica and
 * rejoins once caught up (rejoinInSync).
 */
export function removeFromInSync(map: ClusterMap, range: HashRange, follower: string): StepResult {
  return step(map, range, follower, (r, where) => {
    if (follower === r.shardId) return precondition(`shard ${follower} is the primary of ${where}: it cannot leave the in-sync set (promote another first)`);
    if (!inSyncOf(r).includes(follower)) return precondition(`shard ${follower} is not in the in-sync set of ${where}`);
    return { replicas: replicasOf(r), inSync: without(inSyncOf(r), follower), learners: learnersOf(r) };
  });
}

/** A replica outside the in-sync set that has caught up with the primary rejoins it. */
export function rejoinInSync(map: ClusterMap, range: HashRange, follower: string): StepResult {
  return step(map, range, follower, (r, where) => {
    if (inSyncOf(r).includes(follower)) return precondition(`shard ${follower} is already in the in-sync set of ${where}`);
    if (learnersOf(r).includes(follower)) return precondition(`shard ${follower} is a learner of ${where}: it joins with promoteLearner`);
    if (!replicasOf(r).includes(follower)) return precondition(`shard ${follower} is not a replica of ${where}`);
    return { replicas: replicasOf(r), inSync: [...inSyncOf(r), follower], learners: learnersOf(r) };
  });
}

/** A new copy of the range starts on `shard` as a learner: it receives the snapshot and the stream, and counts for nothing. */
export function addLearner(map: ClusterMap, range: HashRange, shard: string): StepResult {
  return step(map, range, shard, (r, where) => {
    const role = roleOf(r, shard);
    if (role) return precondition(`shard ${shard} already holds a copy of ${where} (as its ${role})`);
    return { replicas: replicasOf(r), inSync: inSyncOf(r), learners: [...learnersOf(r), shard] };
  });
}

/**
 * The caught-up learner joins the replicas and the in-sync set in one step.
 * With `replacing` (a move: "replace replica X with Y"), X leaves in that
 * same step, so the group never counts an extra or a missing member. The
 * primary cannot be replaced: it hands primacy over first.
 */
export function promoteLearner(map: ClusterMap, range: HashRange, learner: string, replacing?: string): StepResult {
  return step(map, range, learner, (r, where) => {
    if (!learnersOf(r).includes(learner)) return precondition(`shard ${learner} is not a learner of ${where}`);
    let replicas = replicasOf(r);
    let inSync = inSyncOf(r);
    if (replacing !== undefined) {
      if (!map.shards.some((s) => s.id === replacing)) return refusal('NOT_FOUND', `shard ${replacing} is not a registered shard (replacing it in ${where})`);
      if (replacing === r.shardId) return precondition(`shard ${replacing} is the primary of ${where}: hand primacy over before replacing it`);
      if (!replicas.includes(replacing)) return precondition(`shard ${replacing} is not a replica of ${where}: there is nothing to replace`);
      replicas = without(replicas, replacing);
      inSync = without(inSync, replacing);
    }
    return { replicas: [...replicas, learner], inSync: [...inSync, learner], learners: without(learnersOf(r), learner) };
  });
}

/**
 * Trims a follower or a learner from the group (the factor was lowered, or
 * its shard is being removed). Dropping an in-sync follower is allowed: the
 * caller keeps at least minInSyncFor(...) in sync, or writes are refused.
 */
export function dropReplica(map: ClusterMap, range: HashRange, shard: string): StepResult {
  return step(map, range, shard, (r, where) => {
    const role = roleOf(r, shard);
    if (role === 'primary') return precondition(`shard ${shard} is the primary of ${where}: hand primacy over before dropping it`);
    if (!role) return precondition(`shard ${shard} holds no copy of ${where}`);
    return { replicas: without(replicasOf(r), shard), inSync: without(inSyncOf(r), shard), learners: without(learnersOf(r), shard) };
  });
}

/**
 * The cluster's replication factor. Only the setting changes (the epoch with
 * it): re-replication or trimming follows as steps per range. Setting the
 * factor the map already has returns the same map, so nothing is written.
 */
export function setFactor(map: ClusterMap, factor: number): StepResult {
  if (!Number.isInteger(factor) || factor < 1) return refusal('INVALID_ARGUMENT', `replicationFactor must be an integer >= 1, got ${factor}`);
  if (map.epoch === 0n) return precondition('there is no map yet: the factor is set when the cluster forms');
  if (factorOf(map) === factor) return { ok: true, map };
  // Factor 1 is written as no field at all, as in maps from before replication.
  const { replicationFactor: _previous, ...rest } = map;
  return { ok: true, map: { ...rest, epoch: map.epoch + 1n, ...(factor > 1 ? { replicationFactor: factor } : {}) } };
}

// ------------------------------------------------------------------ sizing and placement

/** How many replicas a range wants: the factor, but never more than the shards there are. */
export function wantedReplicas(map: ClusterMap, shardCount: number): number {
  return Math.min(factorOf(map), shardCount);
}

/**
 * How many in-sync members a range needs to take writes: `configured` when
 * given, clamped to [1, the replicas the range can have], else
 * min(2, the replicas the range can have), so a single copy still writes.
 */
export function minInSyncFor(factor: number, shardCount: number, configured?: number): number {
  const canHave = Math.max(1, Math.min(factor, shardCount));
  if (configured === undefined) return Math.min(2, canHave);
  return Math.min(canHave, Math.max(1, Math.floor(configured)));
}

export interface UnderReplicated {
  range: MapRange;
  wanted: number;
  /** Replicas on live shards (learners count for nothing). */
  replicas: number;
  /** In-sync members on live shards. */
  inSync: number;
  /** 'replicas': a copy must be built (a learner added); 'inSync': enough copies exist, some must catch up. */
  short: 'replicas' | 'inSync';
}

/** The ranges with fewer live replicas, or fewer live in-sync members, than min(factor, live shards). */
export function underReplicated(map: ClusterMap, liveShardIds: readonly string[]): UnderReplicated[] {
  const live = new Set(liveShardIds);
  const wanted = wantedReplicas(map, live.size);
  const out: UnderReplicated[] = [];
  for (const range of map.ranges) {
    const replicas = replicasOf(range).filter((s) => live.has(s)).length;
    const inSync = inSyncOf(range).filter((s) => live.has(s)).length;
    if (replicas < wanted) out.push({ range, wanted, replicas, inSync, short: 'replicas' });
    else if (inSync < wanted) out.push({ range, wanted, replicas, inSync, short: 'inSync' });
  }
  return out;
}

/** The ranges a shard holds a copy of, in map order, with its role in each. */
export function rangesOnShard(map: ClusterMap, shard: string): Array<{ range: MapRange; role: ReplicaRole }> {
  return map.ranges.flatMap((range) => {
    const role = roleOf(range, shard);
    return role ? [{ range, role }] : [];
  });
}

export type ReplicaCount = ReturnType<typeof roleCounts>;

/** Per registered shard (zeros included), how many ranges it holds in each role (map.ts roleCounts, for every shard). */
export function replicaCounts(map: ClusterMap): Map<string, ReplicaCount> {
  return new Map(map.shards.map((s) => [s.id, roleCounts(map, s.id)]));
}

/**
 * The replica groups of a freshly formed map: range i's primary is shard
 * i mod n (primaries spread evenly), its followers the next shards in order,
 * min(factor, n) distinct shards in all, every one in sync, version 1. With
 * one copy the range carries no group fields, so a factor-1 map is as before
 * replication on the wire and on disk.
 */
export function initialGroups(ranges: readonly HashRange[], shardIds: readonly string[], factor: number): MapRange[] {
  if (!Number.isInteger(factor) || factor < 1) throw new CairnError('INVALID_ARGUMENT', `replicationFactor must be an integer >= 1, got ${factor}`);
  if (shardIds.length === 0) throw new CairnError('INVALID_ARGUMENT', 'initialGroups needs at least one shard');
  if (new Set(shardIds).size !== shardIds.length) throw new CairnError('INVALID_ARGUMENT', `shard ids must be distinct, got ${shardIds.join(', ')}`);
  const n = shardIds.length;
  const copies = Math.min(factor, n);
  return ranges.map((r, i) => {
    const ids = Array.from({ length: copies }, (_, k) => shardIds[(i + k) % n]!);
    const base = { start: r.start, end: r.end, shardId: ids[0]! };
    return copies === 1 ? base : { ...base, replicas: ids, inSync: [...ids], version: 1n };
  });
}

// ------------------------------------------------------------------ machinery

/** A group's members after a step; the primary is the first replica. */
interface Group {
  replicas: readonly string[];
  inSync: readonly string[];
  learners: readonly string[];
}

/**
 * Finds the range exactly, checks `shard` is registered, and applies `change`
 * to its group: the result has the group's version and the map's epoch one
 * higher, every other range the same object, and passes mapError.
 */
function step(map: ClusterMap, range: HashRange, shard: string, change: (r: MapRange, where: string) => Group | Refusal): StepResult {
  const where = showRange(range);
  const i = map.ranges.findIndex((r) => r.start === range.start && r.end === range.end);
  if (i < 0) return refusal('CONFLICT', `range ${where} is not in the map at epoch ${map.epoch} (split or merged meanwhile?): decide again on the current map`);
  if (!map.shards.some((s) => s.id === shard)) return refusal('NOT_FOUND', `shard ${shard} is not a registered shard (step on ${where})`);
  const r = map.ranges[i]!;
  const group = change(r, where);
  if ('ok' in group) return group;
  const next: MapRange = {
    start: r.start,
    end: r.end,
    shardId: group.replicas[0]!,
    replicas: [...group.replicas],
    inSync: [...group.inSync],
    // Empty learners are written as no field, as mapFromJson and mapFromProto read them back.
    ...(group.learners.length ? { learners: [...group.learners] } : {}),
    version: groupVersionOf(r) + 1n,
  };
  const ranges = map.ranges.slice();
  ranges[i] = next;
  const result: ClusterMap = { ...map, epoch: map.epoch + 1n, ranges };
  // Unreachable from a valid map; a refusal rather than a broken map if the input was already broken.
  const err = mapError(result);
  if (err) return refusal('INTERNAL', `the step on ${where} would give an invalid map: ${err}`);
  return { ok: true, map: result };
}

/** promote and handOver: `to`, an in-sync follower, becomes the first replica; the old primary stays a replica, in sync or not. */
function primacyTo(map: ClusterMap, range: HashRange, to: string, how: { oldPrimaryInSync: boolean; what: string }): StepResult {
  return step(map, range, to, (r, where) => {
    const role = roleOf(r, to);
    if (role === 'primary') return precondition(`shard ${to} is already the primary of ${where}`);
    if (role === 'learner') return precondition(`shard ${to} is a learner of ${where}: it cannot be ${how.what} before it joins the in-sync set`);
    if (!role) return precondition(`shard ${to} is not a replica of ${where}`);
    if (!inSyncOf(r).includes(to)) return precondition(`shard ${to} is not in the in-sync set of ${where}: it may miss acknowledged writes`);
    const followersInSync = without(inSyncOf(r), to, ...(how.oldPrimaryInSync ? [] : [r.shardId]));
    return { replicas: [to, ...without(replicasOf(r), to)], inSync: [to, ...followersInSync], learners: learnersOf(r) };
  });
}

const refusal = (code: ErrorCode, reason: string): Refusal => ({ ok: false, code, reason });
const precondition = (reason: string): Refusal => refusal('PRECONDITION', reason);
const without = (list: readonly string[], ...drop: string[]): string[] => list.filter((s) => !drop.includes(s));
