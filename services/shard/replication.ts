/**
 * Replication of one range's replica group, as a pure state machine
 * (docs: /work/shared/DESIGN.md "Replication and failover"; the design is
 * PacificA's, with Raft's log matching for the stream). No I/O, no timers, no
 * clock reads: the caller passes `now` (ms), stores the log, applies rows and
 * carries the messages. One object per range and role; the caller keys them.
 *
 * - The primary side is `PrimaryReplication` (replication-primary.ts): it
 *   numbers writes, decides what to send to each follower, counts
 *   acknowledgements into `committedLsn`, and holds the PacificA lease.
 * - The follower side is `FollowerReplication` (replication-follower.ts): it
 *   checks each batch against its log (refusing older versions, finding gaps
 *   and conflicting suffixes) and says what to store, truncate and apply.
 * - The master's part is `chooseNewPrimary` (below).
 *
 * The log: entries are numbered by `lsn` (1, 2, 3, … per group) and carry the
 * `term`, the map version under which the primary that wrote them was
 * primary. Because one version has at most one primary and a primary numbers
 * each lsn once, two logs holding an entry with the same (lsn, term) are
 * identical up to it (Raft's log matching property), so a follower checks
 * only the entry before a batch (`prevLsn`, `prevTerm`). lsn 0 is the empty
 * prefix, whose term is 0.
 *
 * What the caller must keep durable: the log entries (before acknowledging
 * them, on both sides), the applied prefix, and the follower's version and
 * primary, so a restarted follower never again accepts an older version.
 *
 * The caller's loop, on the primary:
 * - a client write: `canWrite` (else UNAVAILABLE with its reason), `append`,
 *   store the entries, then wait until `canAcknowledge(lsn, now)`;
 * - per follower and learner stream: `catchUpPlan` ('snapshot': send one up
 *   to `committedLsn()`, then `snapshotSent`), else `nextSend` (or
 *   `heartbeat` when it returns nothing and a beat is due): read
 *   fromLsn..toLsn from the log and send them with the Send's fields; pass
 *   each answer to `onAck`/`onReject` with the echoed `sentAt`. An outcome's
 *   `newlyCommitted` says which waiting writes to look at; 'deposed' means
 *   fetch the map and stop serving;
 * - reads: `canServeReads`; applying: up to `committedLsn()`; truncating the
 *   log: only below `retainFrom()`;
 * - periodically: `overdue(now)`, each reported to the master; a learner that
 *   caught up: `proposeJoin`, then ask the master to add it; every new map
 *   for the range: `reconfigure`.
 * On a follower: each batch to `onAppend` (do what the outcome says, then
 * answer: 'accepted' → ack matchLsn, 'mismatch' → reject with expectLsn,
 * 'stale' → reject with our version; 'violation' and 'malformed' → log it
 * loudly and answer nothing); a snapshot to `installSnapshot`; each new map
 * to `adoptConfig`; `shouldAskPromotion` → ask the master; a map that makes
 * it primary → `promote`, and drop the follower object.
 */
export { PrimaryReplication, type AckAnswer, type AnswerOutcome, type LsnRange, type PrimaryOptions, type RejectAnswer, type Send } from './replication-primary.js';
export { FollowerReplication, type AppendMessage, type AppendOutcome, type FollowerOptions } from './replication-follower.js';

export type ShardId = string;

/** The term of the entry at `lsn` in the caller's log, or undefined when it holds none there. */
export type TermAt = (lsn: bigint) => bigint | undefined;

/** A configuration (the map's in-sync set and learners for one range) that a primary takes. */
export interface GroupConfig {
  /** The map's version for the range; every change bumps it. */
  version: bigint;
  /** The in-sync followers (the primary excluded): every write waits for all of them. */
  inSync: readonly ShardId[];
  /** Followers being caught up (after a snapshot): they receive the stream and count for nothing. */
  learners?: readonly ShardId[];
}

/** An answer that changes nothing, and why (for the caller's log line or its UNAVAILABLE). */
export interface Refused {
  kind: 'refused';
  reason: string;
}

export interface PromotionCandidate {
  shard: ShardId;
  /** Whether the map lists it in the range's in-sync set. */
  inSync: boolean;
  lastLsn: bigint;
  lastTerm: bigint;
}

/**
 * The master's choice on failover: the in-sync member whose log is the most
 * advanced (highest lastTerm, then lastLsn; ties by shard id), never one
 * outside the in-sync set; undefined if there is none. Every acknowledged
 * write is on every in-sync member, so any of them would lose nothing
 * acknowledged; the longest log also keeps the most unacknowledged writes.
 *
 * The master fails over only when the primary is gone or an IN-SYNC follower
 * asks (`shouldAskPromotion`) AT THE MAP'S CURRENT VERSION (an ask made under
 * an older version is answered with the map): that follower has not answered
 * the primary for longer than the grace and answers it no more at that
 * version, so the old primary's lease (which needs every in-sync follower)
 * has expired before the new primary can hold one.
 */
export function chooseNewPrimary(candidates: readonly PromotionCandidate[]): ShardId | undefined {
  let best: PromotionCandidate | undefined;
  for (const c of candidates) {
    if (!c.inSync) continue;
    if (best === undefined || compareLogs(c, best) > 0 || (compareLogs(c, best) === 0 && c.shard < best.shard)) best = c;
  }
  return best?.shard;
}

/** Orders logs by their last entry: the higher term wins, then the higher lsn (Raft's "up to date"). */
function compareLogs(a: PromotionCandidate, b: PromotionCandidate): number {
  if (a.lastTerm !== b.lastTerm) return a.lastTerm > b.lastTerm ? 1 : -1;
  if (a.lastLsn !== b.lastLsn) return a.lastLsn > b.lastLsn ? 1 : -1;
  return 0;
}
