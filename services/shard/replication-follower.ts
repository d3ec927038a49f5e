/**
 * A follower's side of a range's replication (see replication.ts): it checks
 * each batch from the primary against its staged log and says what the
 * caller stores, truncates, applies and answers. Pure: the caller passes
 * `now` and keeps the log (and answers `termAt` from it).
 *
 * The checks, in order:
 * - a sender with an older version is refused ('stale'), so a deposed
 *   primary collects no acknowledgement; a newer version is adopted;
 * - the batch must follow our log: the entry at prevLsn must exist with
 *   prevTerm (Raft's consistency check), else 'mismatch';
 * - an entry we hold with another term, and everything after it, is dropped
 *   (`truncateAfter`): such a suffix was never committed, since every
 *   committed write is on every in-sync member and so in the new primary's
 *   log. Dropping a committed entry would break that, so it is refused as
 *   'violation' rather than done.
 */
import { maxLsn, minLsn, PrimaryReplication } from './replication-primary.js';
import type { GroupConfig, Refused, ShardId, TermAt } from './replication.js';

export interface FollowerOptions {
  /** The version this follower last took (kept durably by the caller). */
  version: bigint;
  primary: ShardId;
  lastLsn: bigint;
  lastTerm: bigint;
  /** Its applied prefix: committed entries, which no primary may take back. */
  committedLsn: bigint;
  /** Silence from the primary longer than this makes the follower ask the master for a promotion; more than the lease. */
  graceMs: number;
  now: number;
  /** The term of a staged entry (the caller's log). */
  termAt: TermAt;
}

export interface AppendMessage {
  version: bigint;
  primary: ShardId;
  prevLsn: bigint;
  prevTerm: bigint;
  /** Consecutive from prevLsn + 1; empty for a heartbeat. */
  entries: ReadonlyArray<{ lsn: bigint; term: bigint }>;
  primaryCommitted: bigint;
}

export type AppendOutcome =
  /**
   * Refused: the sender's version is older than ours (answer with our
   * version: it deposes the sender), or graceExpired: nothing came from our
   * primary for longer than the grace, so we ask the master and take nothing
   * more from it until a newer version (answer the same way: it renews no lease).
   */
  | { kind: 'stale'; version: bigint; graceExpired?: true }
  /** The batch does not follow our log: answer expectLsn (truncate after truncateAfter first, if set). */
  | { kind: 'mismatch'; expectLsn: bigint; truncateAfter?: bigint }
  /**
   * Truncate staged entries after truncateAfter (if set), store the entries
   * from storeFrom on (if set; earlier ones we already hold), then ack
   * matchLsn. Apply up to applyUpTo: entries beyond stay staged, since a new
   * primary may drop them.
   */
  | { kind: 'accepted'; matchLsn: bigint; truncateAfter?: bigint; storeFrom?: bigint; applyUpTo: bigint }
  /** The batch is malformed (non-consecutive lsns, terms out of order): nothing done. */
  | { kind: 'malformed'; reason: string }
  /** Obeying would break an invariant (drop a committed entry, two primaries in one version): nothing done; report it. */
  | { kind: 'violation'; reason: string };

export class FollowerReplication {
  private version_: bigint;
  private primary_: ShardId;
  private lastLsn_: bigint;
  private lastTerm_: bigint;
  private committed: bigint;
  private heardAt: number;
  readonly graceMs: number;
  private readonly termAt: TermAt;

  constructor(o: FollowerOptions) {
    this.version_ = o.version;
    this.primary_ = o.primary;
    this.lastLsn_ = o.lastLsn;
    this.lastTerm_ = o.lastTerm;
    this.committed = o.committedLsn;
    this.graceMs = o.graceMs;
    this.heardAt = o.now;
    this.termAt = o.termAt;
  }

  get version(): bigint {
    return this.version_;
  }
  get primary(): ShardId {
    return this.primary_;
  }
  get lastLsn(): bigint {
    return this.lastLsn_;
  }
  get lastTerm(): bigint {
    return this.lastTerm_;
  }
  committedLsn(): bigint {
    return this.committed;
  }

  private term(lsn: bigint): bigint | undefined {
    if (lsn === 0n) return 0n;
    if (lsn === this.lastLsn_) return this.lastTerm_;
    return lsn < this.lastLsn_ ? this.termAt(lsn) : undefined;
  }

  /** Whether our log has (lsn, term); a committed entry whose term the log no longer keeps (a snapshot) matches. */
  private holds(lsn: bigint, term: bigint): boolean {
    const held = this.term(lsn);
    return held === term || (held === undefined && lsn <= this.committed);
  }

  /**
   * Takes a newer map (the master's push): a new primary or version. Older
   * or equal versions change nothing. The grace restarts: a new primary has
   * not had the time to send anything yet.
   */
  adoptConfig(version: bigint, primary: ShardId, now: number): boolean {
    if (version <= this.version_) return false;
    this.version_ = version;
    this.primary_ = primary;
    this.heardAt = now;
    return true;
  }

  onAppend(m: AppendMessage, now: number): AppendOutcome {
    if (m.version < this.version_) return { kind: 'stale', version: this.version_ };
    if (m.version === this.version_ && m.primary !== this.primary_) {
      return { kind: 'violation', reason: `${m.primary} and ${this.primary_} both primary at version ${m.version}` };
    }
    // Once the grace ran out we may be asking for a promotion: answering the old primary now would renew the lease it needs us for.
    if (m.version === this.version_ && this.shouldAskPromotion(now)) return { kind: 'stale', version: this.version_, graceExpired: true };
    const malformed = checkBatch(m);
    if (malformed) return { kind: 'malformed', reason: malformed };
    const outcome = this.match(m);
    if (outcome.kind === 'violation') return outcome;
    this.version_ = m.version;
    this.primary_ = m.primary;
    this.heardAt = now;
    return outcome;
  }

  private match(m: AppendMessage): AppendOutcome {
    if (m.prevLsn > this.lastLsn_) return { kind: 'mismatch', expectLsn: this.lastLsn_ + 1n };
    if (!this.holds(m.prevLsn, m.prevTerm)) {
      if (m.prevLsn <= this.committed) return { kind: 'violation', reason: `primary's term ${m.prevTerm} at lsn ${m.prevLsn} differs from our committed entry's ${this.term(m.prevLsn)}` };
      // Everything from prevLsn on is another primary's unacknowledged suffix. Our committed prefix matches any legitimate primary's log: resend from after it.
      const truncateAfter = m.prevLsn - 1n;
      this.truncate(truncateAfter);
      return { kind: 'mismatch', expectLsn: this.committed + 1n, truncateAfter };
    }
    let truncateAfter: bigint | undefined;
    let storeFrom: bigint | undefined;
    for (const e of m.entries) {
      if (e.lsn <= this.lastLsn_) {
        if (this.holds(e.lsn, e.term)) continue; // a duplicate (resend, overlap): already stored
        if (e.lsn <= this.committed) return { kind: 'violation', reason: `primary's term ${e.term} at lsn ${e.lsn} differs from our committed entry's ${this.term(e.lsn)}` };
        truncateAfter = e.lsn - 1n;
        this.truncate(truncateAfter);
      }
      storeFrom = e.lsn;
      break;
    }
    const matchLsn = m.entries.at(-1)?.lsn ?? m.prevLsn;
    if (storeFrom !== undefined) {
      // Entries before a conflict are duplicates; beyond our last they are new. Our log now ends with the batch.
      this.lastLsn_ = matchLsn;
      this.lastTerm_ = m.entries.at(-1)!.term;
    }
    // Entries past matchLsn (if any) were not checked against this primary: they stay unapplied.
    this.committed = maxLsn(this.committed, minLsn(m.primaryCommitted, matchLsn));
    return { kind: 'accepted', matchLsn, applyUpTo: this.committed, ...(truncateAfter !== undefined && { truncateAfter }), ...(storeFrom !== undefined && { storeFrom }) };
  }

  private truncate(after: bigint): void {
    const term = this.term(after);
    this.lastLsn_ = after;
    this.lastTerm_ = term ?? 0n;
  }

  /**
   * The caller installed the primary's snapshot of the range up to lsn (a
   * committed point) in place of its log: the log restarts after it.
   */
  installSnapshot(s: { version: bigint; primary: ShardId; lsn: bigint; term: bigint }, now: number): { kind: 'installed'; matchLsn: bigint } | Refused {
    if (s.version < this.version_) return { kind: 'refused', reason: `snapshot from version ${s.version}, ours is ${this.version_}` };
    if (s.lsn < this.committed) return { kind: 'refused', reason: `snapshot up to lsn ${s.lsn} is behind our committed ${this.committed}` };
    this.version_ = s.version;
    this.primary_ = s.primary;
    this.lastLsn_ = s.lsn;
    this.lastTerm_ = s.term;
    this.committed = s.lsn;
    this.heardAt = now;
    return { kind: 'installed', matchLsn: s.lsn };
  }

  /**
   * Nothing heard from the primary for longer than the grace: the caller asks
   * the master to promote (it decides whom), naming this follower's version:
   * the master acts only on an ask at its map's current version. From then on this follower takes
   * nothing from that primary at this version, so the master must answer the
   * request with a new version (a failover, or a map step that removes
   * whichever side it judges, or just a bump) for it to resume.
   */
  shouldAskPromotion(now: number): boolean {
    return now - this.heardAt > this.graceMs;
  }

  /**
   * The master made this follower the primary at a higher version. Its whole
   * staged log counts: it holds every acknowledged write (it was in-sync), and
   * its unapplied suffix becomes committed once every in-sync follower matches
   * it, like any new write (committedLsn waits for them).
   */
  promote(c: GroupConfig, o: { leaseMs: number; ackTimeoutMs: number; now: number }): PrimaryReplication | Refused {
    if (c.version <= this.version_) return { kind: 'refused', reason: `promotion at version ${c.version}, ours is ${this.version_}` };
    return new PrimaryReplication({ ...c, ...o, lastLsn: this.lastLsn_, lastTerm: this.lastTerm_, committedLsn: this.committed, termAt: this.termAt });
  }
}

/** Why a batch is not a well-formed continuation of prevLsn, or undefined. */
function checkBatch(m: AppendMessage): string | undefined {
  if (m.prevLsn < 0n) return `prevLsn ${m.prevLsn}`;
  let lsn = m.prevLsn;
  let term = m.prevTerm;
  for (const e of m.entries) {
    if (e.lsn !== lsn + 1n) return `entry lsn ${e.lsn} after ${lsn}`;
    if (e.term < term || e.term > m.version) return `entry term ${e.term} at lsn ${e.lsn} (previous ${term}, version ${m.version})`;
    lsn = e.lsn;
    term = e.term;
  }
  return undefined;
}
