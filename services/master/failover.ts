/**
 * The master's part in replication (docs/design.md "Replication and
 * failover"): it changes replica groups, and only it does, each change one
 * durable map step. `planFailover` is pure: the master's view of the shards
 * in, the next map out. For each replicated range:
 *
 * - its primary is down: the in-sync follower that is up and has the most
 *   writes (chooseNewPrimary over the heartbeats' log positions) is promoted;
 *   never a replica outside the in-sync set. None up: the range waits.
 * - its primary is up but every in-sync follower that is up reports it has not
 *   heard from it for longer than its lease (primary-silence.ts): the primary
 *   is cut off from its followers and serves nothing; the same promotion.
 *   What the replaced primary reported of its followers no longer counts.
 * - an in-sync follower is down, or its primary reported it overdue at the
 *   range's current version: it leaves the in-sync set, so writes go on
 *   without it (and it catches up when it is back); not while its primary is
 *   down too, which acknowledges nothing (the follower stays promotable);
 * - a follower out of sync (or a learner) that its primary reports caught up
 *   at the current version rejoins the in-sync set.
 * - re-replication: a range with fewer usable copies than min(factor,
 *   shards) gets a learner on an up shard holding no copy (the fewest copies
 *   first); its primary streams it a snapshot and the log, and it joins as
 *   above. A copy is unusable on a shard removed from the map or down longer
 *   than replicaDownTimeoutMs. At most `maxLearners` learners at once in
 *   the cluster (the throttle), one per range.
 * - trimming: a range with more replicas than wanted (a replacement joined,
 *   or the factor was lowered) drops one: a given-up copy first, then a down
 *   one, then one out of sync, then the follower on the shard with the most
 *   copies. Never the primary.
 * - ranges a rebalance or drain is changing (view.ownedByMoves): their
 *   learners are joined, and their extra copies dropped, by replica-moves.ts
 *   (which knows which copy each learner replaces), not here.
 *
 * Every change of one pass goes into one map, one epoch on.
 */
import type { ClusterMap, MapRange } from '../common/map.js';
import { factorOf, inSyncOf, learnersOf, replicasOf } from '../common/map.js';
import { rangeKey, showRange, type HashRange } from '../common/ranges.js';
import { chooseNewPrimary } from '../shard/replication.js';
import { addLearner, dropReplica, promote, promoteLearner, rejoinInSync, removeFromInSync, type StepResult } from './replica-steps.js';

/**
 * The crash points of replication (CAIRN_FAILPOINTS, see failpoints.ts): the
 * master between deciding a group change and writing it, and after writing
 * it before pushing it; a primary after applying a write and before any
 * follower has it; a follower after applying entries and before acknowledging.
 */
export const REPLICATION_FAILPOINTS = ['master-before-replica-step', 'master-after-replica-step', 'primary-before-replicate', 'follower-before-ack'] as const;

/** One follower of one range at the version its primary saw (from a heartbeat). */
export interface FollowerNote {
  range: HashRange;
  version: bigint;
  follower: string;
}

/** What the master knows of the shards, from their heartbeats. */
export interface FailoverView {
  isUp(shardId: string): boolean;
  /** Where a shard's log of a range ends; undefined when it has not said. */
  positionOf(shardId: string, range: HashRange): { lastLsn: bigint; lastTerm: bigint } | undefined;
  /** In-sync followers their primaries reported overdue. */
  overdue: readonly FollowerNote[];
  /** Followers and learners their primaries reported caught up. */
  caughtUp: readonly FollowerNote[];
  /** In-sync followers that have not heard from their primary for longer than its lease (each reports itself). */
  primaryUnheard?: readonly FollowerNote[];
  /** A shard down longer than replicaDownTimeoutMs (or gone from the map): its copies are rebuilt elsewhere. */
  givenUp(shardId: string): boolean;
  /** Learners at once in the whole cluster (re-replication's throttle). */
  maxLearners: number;
  /**
   * Ranges a rebalance or drain is changing (replica-moves.ts): their learners
   * join, and their extra copies go, by its steps, which know which copy a
   * learner replaces. Failover and in-sync changes still happen here.
   */
  ownedByMoves?(range: HashRange): boolean;
}

/** The same group at the next version (the primary takes it as a new configuration). */
function bumpVersion(map: ClusterMap, range: HashRange): StepResult {
  const ranges = map.ranges.map((r) => (r.start === range.start && r.end === range.end ? { ...r, version: (r.version ?? 0n) + 1n } : r));
  return { ok: true, map: { ...map, epoch: map.epoch + 1n, ranges } };
}

/** The next map and what changed (for the log), or undefined when nothing needs changing. */
export function planFailover(map: ClusterMap, view: FailoverView): { map: ClusterMap; changes: string[] } | undefined {
  let next = map;
  const changes: string[] = [];
  const take = (result: StepResult, what: string): void => {
    if (!result.ok) return; // a step the map no longer allows (changed meanwhile): the next pass decides again
    next = result.map;
    changes.push(what);
  };
  const noted = (list: readonly FollowerNote[], r: MapRange) => list.filter((n) => rangeKey(n.range) === rangeKey(r) && n.version === (r.version ?? 0n));
  for (const original of map.ranges) {
    if (replicasOf(original).length < 2 && learnersOf(original).length === 0) continue;
    const range = { start: original.start, end: original.end };
    const current = (): MapRange => next.ranges.find((x) => x.start === range.start && x.end === range.end)!;
    // The in-sync followers that are up: only these may be promoted (they hold every acknowledged write).
    const followers = inSyncOf(original).filter((s) => s !== original.shardId && view.isUp(s));
    // PacificA: with the primary up, every such follower has not heard from it for longer than its lease. The
    // master still hears it, but it is cut off from its followers and has stopped serving (its lease ran out):
    // one of them takes over. One follower's complaint alone is its own link's trouble (its primary reports it
    // overdue, and it leaves the in-sync set).
    const unheard = new Set(noted(view.primaryUnheard ?? [], original).map((n) => n.follower));
    const why = !view.isUp(original.shardId)
      ? `primary ${original.shardId} is down`
      : followers.length > 0 && followers.every((f) => unheard.has(f))
        ? `no in-sync follower has heard primary ${original.shardId} for longer than its lease`
        : undefined;
    if (why) {
      const chosen = chooseNewPrimary(followers.map((shard) => ({ shard, inSync: true, lastLsn: view.positionOf(shard, range)?.lastLsn ?? 0n, lastTerm: view.positionOf(shard, range)?.lastTerm ?? 0n })));
      if (chosen) take(promote(next, range, chosen), `${showRange(range)}: ${why}; ${chosen} promoted`);
    }
    // What the primary reported of its followers holds only while it is the primary.
    const reporterLeads = () => current().shardId === original.shardId;
    // A follower leaves the in-sync set so that its primary may acknowledge writes without it. A primary that
    // is down acknowledges nothing, and a follower out of sync can never be promoted: with the primary down too
    // (every shard of a range lost power), the follower stays, and whichever member comes back first takes over.
    for (const f of inSyncOf(current())) {
      if (f === current().shardId || !view.isUp(current().shardId)) continue;
      if (!view.isUp(f)) take(removeFromInSync(next, range, f), `${showRange(range)}: follower ${f} is down; out of the in-sync set`);
    }
    for (const n of noted(view.overdue, original)) {
      if (!reporterLeads()) break;
      if (inSyncOf(current()).includes(n.follower) && n.follower !== current().shardId) {
        take(removeFromInSync(next, range, n.follower), `${showRange(range)}: follower ${n.follower} did not answer its primary in time; out of the in-sync set`);
      } else if (n.follower !== current().shardId && current().version === original.version) {
        // A follower about to join (its primary counts it) went silent: a new version makes the primary stop counting it.
        take(bumpVersion(next, range), `${showRange(range)}: follower ${n.follower}, about to rejoin, went silent; it keeps catching up`);
      }
    }
    for (const n of noted(view.caughtUp, original)) {
      if (!view.isUp(n.follower) || current().shardId !== original.shardId) continue;
      if (learnersOf(current()).includes(n.follower)) {
        if (!view.ownedByMoves?.(range)) take(promoteLearner(next, range, n.follower), `${showRange(range)}: learner ${n.follower} caught up; in sync`);
      } else if (replicasOf(current()).includes(n.follower) && !inSyncOf(current()).includes(n.follower)) {
        take(rejoinInSync(next, range, n.follower), `${showRange(range)}: follower ${n.follower} caught up; back in sync`);
      }
    }
  }
  repair(next, view, take);
  return changes.length ? { map: { ...next, epoch: map.epoch + 1n }, changes } : undefined;
}

/** Re-replication and trimming (see the header), on the map as the failover steps left it. */
function repair(start: ClusterMap, view: FailoverView, take: (result: StepResult, what: string) => void): void {
  let map = start;
  const keep = (result: StepResult, what: string): void => {
    take(result, what);
    if (result.ok) map = result.map;
  };
  const known = new Set(map.shards.map((s) => s.id));
  const usable = (id: string) => known.has(id) && !view.givenUp(id);
  const wanted = Math.min(factorOf(map), map.shards.length);
  const copies = new Map<string, number>(map.shards.map((s) => [s.id, 0]));
  for (const r of map.ranges) for (const id of [...replicasOf(r), ...learnersOf(r)]) copies.set(id, (copies.get(id) ?? 0) + 1);
  let learners = map.ranges.reduce((n, r) => n + learnersOf(r).length, 0);
  for (const original of map.ranges) {
    const range = { start: original.start, end: original.end };
    const r = map.ranges.find((x) => x.start === range.start && x.end === range.end)!;
    const replicas = replicasOf(r);
    const stalled = learnersOf(r).find((id) => !view.isUp(id));
    if (stalled) {
      // A learner that went down copies nothing: free its place (it may be given a copy again later).
      keep(dropReplica(map, range, stalled), `${showRange(range)}: learner ${stalled} is down; dropped`);
      learners--;
      continue;
    }
    if (replicas.length > wanted && !view.ownedByMoves?.(range)) {
      const inSync = inSyncOf(r);
      const rank = (id: string) => (!usable(id) ? 0 : !view.isUp(id) ? 1 : !inSync.includes(id) ? 2 : 3);
      const victim = replicas
        .filter((id) => id !== r.shardId)
        .sort((a, b) => rank(a) - rank(b) || (copies.get(b) ?? 0) - (copies.get(a) ?? 0) || a.localeCompare(b))[0];
      if (victim) {
        keep(dropReplica(map, range, victim), `${showRange(range)}: ${replicas.length} replicas, ${wanted} wanted; ${victim} dropped`);
        copies.set(victim, (copies.get(victim) ?? 1) - 1);
      }
      continue;
    }
    const live = replicas.filter(usable).length + learnersOf(r).filter(usable).length;
    if (live >= wanted || learnersOf(r).length > 0 || learners >= view.maxLearners || !view.isUp(r.shardId)) continue;
    const target = map.shards
      .map((s) => s.id)
      .filter((id) => view.isUp(id) && usable(id) && !replicas.includes(id))
      .sort((a, b) => (copies.get(a) ?? 0) - (copies.get(b) ?? 0) || a.localeCompare(b))[0];
    if (!target) continue;
    keep(addLearner(map, range, target), `${showRange(range)}: ${live} usable copies of ${wanted}; a new copy on ${target}`);
    copies.set(target, (copies.get(target) ?? 0) + 1);
    learners++;
  }
}
