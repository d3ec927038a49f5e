/**
 * The master's part in replication (docs/design.md "Replication and
 * failover"): it changes replica groups, and only it does, each change one
 * durable map step. `planFailover` is pure: the master's view of the shards
 * in, the next map out. For each replicated range:
 *
 * - its primary is down: the in-sync follower that is up and has the most
 *   writes (chooseNewPrimary over the heartbeats' log positions) is promoted;
 *   never a replica outside the in-sync set. None up: the range waits.
 * - an in-sync follower is down, or its primary reported it overdue at the
 *   range's current version: it leaves the in-sync set, so writes go on
 *   without it (and it catches up when it is back);
 * - a follower out of sync (or a learner) that its primary reports caught up
 *   at the current version rejoins the in-sync set.
 *
 * Every change of one pass goes into one map, one epoch on.
 */
import type { ClusterMap, MapRange } from '../common/map.js';
import { inSyncOf, learnersOf, replicasOf } from '../common/map.js';
import { rangeKey, showRange, type HashRange } from '../common/ranges.js';
import { chooseNewPrimary } from '../shard/replication.js';
import { promote, promoteLearner, rejoinInSync, removeFromInSync, type StepResult } from './replica-steps.js';

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
    if (!view.isUp(original.shardId)) {
      const candidates = inSyncOf(original)
        .filter((s) => s !== original.shardId && view.isUp(s))
        .map((shard) => ({ shard, inSync: true, lastLsn: view.positionOf(shard, range)?.lastLsn ?? 0n, lastTerm: view.positionOf(shard, range)?.lastTerm ?? 0n }));
      const chosen = chooseNewPrimary(candidates);
      if (chosen) take(promote(next, range, chosen), `${showRange(range)}: primary ${original.shardId} is down; ${chosen} promoted`);
    }
    for (const f of inSyncOf(current())) {
      if (f === current().shardId) continue;
      if (!view.isUp(f)) take(removeFromInSync(next, range, f), `${showRange(range)}: follower ${f} is down; out of the in-sync set`);
    }
    for (const n of noted(view.overdue, original)) {
      if (inSyncOf(current()).includes(n.follower) && n.follower !== current().shardId) {
        take(removeFromInSync(next, range, n.follower), `${showRange(range)}: follower ${n.follower} did not answer its primary in time; out of the in-sync set`);
      } else if (n.follower !== current().shardId && current().version === original.version) {
        // A follower about to join (its primary counts it) went silent: a new version makes the primary stop counting it.
        take(bumpVersion(next, range), `${showRange(range)}: follower ${n.follower}, about to rejoin, went silent; it keeps catching up`);
      }
    }
    for (const n of noted(view.caughtUp, original)) {
      if (!view.isUp(n.follower) || current().shardId !== original.shardId) continue;
      if (learnersOf(current()).includes(n.follower)) take(promoteLearner(next, range, n.follower), `${showRange(range)}: learner ${n.follower} caught up; in sync`);
      else if (replicasOf(current()).includes(n.follower) && !inSyncOf(current()).includes(n.follower)) {
        take(rejoinInSync(next, range, n.follower), `${showRange(range)}: follower ${n.follower} caught up; back in sync`);
      }
    }
  }
  return changes.length ? { map: { ...next, epoch: map.epoch + 1n }, changes } : undefined;
}
