/**
 * The primary's side of a range's replication (see replication.ts). It
 * numbers writes, tracks for each follower what was sent and what it
 * acknowledged, and derives the two things that gate a client's answer:
 * `committedLsn` (the write is on every in-sync member) and the PacificA lease
 * (every in-sync follower answered recently). Pure: the caller passes `now`.
 *
 * Removing a follower is never this module's decision: `overdue` names the
 * followers to remove, the master removes them by a durable map step, and
 * only the resulting `reconfigure` stops counting them. Until then they keep
 * holding back `committedLsn`, so no write they miss is acknowledged early.
 */
import { CairnError } from '../common/errors.js';
import type { GroupConfig, Refused, ShardId, TermAt } from './replication.js';

export const maxLsn = (a: bigint, b: bigint): bigint => (a > b ? a : b);
export const minLsn = (a: bigint, b: bigint): bigint => (a < b ? a : b);

export interface PrimaryOptions extends GroupConfig {
  /** The last entry of this shard's log: a new primary starts from its whole staged log. */
  lastLsn: bigint;
  lastTerm: bigint;
  /** What is already known committed (a promoted follower's applied prefix); default 0. */
  committedLsn?: bigint;
  /** An in-sync follower that gave no answer for this long loses the primary its lease. */
  leaseMs: number;
  /** An in-sync follower that leaves an entry unacknowledged, or gives no answer, this long is overdue. */
  ackTimeoutMs: number;
  now: number;
  /** Terms of entries older than this primary's own (for `prevTerm`); without it `prevTerm` may be undefined. */
  termAt?: TermAt;
}

/** One batch to send: entries fromLsn..toLsn (none when toLsn < fromLsn: a heartbeat), after prevLsn/prevTerm. */
export interface Send {
  follower: ShardId;
  version: bigint;
  prevLsn: bigint;
  /** undefined only if the primary cannot tell it (no termAt): the caller reads it from its log. */
  prevTerm: bigint | undefined;
  fromLsn: bigint;
  toLsn: bigint;
  /** The primary's commit point: the follower may apply up to it. */
  primaryCommitted: bigint;
  /** The primary's clock when sent; the follower echoes it so the lease counts from the send, not the answer. */
  sentAt: number;
}

/** A follower accepted a batch: its log matches ours up to matchLsn. */
export interface AckAnswer {
  version: bigint;
  matchLsn: bigint;
  /** The `sentAt` of the batch this answers (omit: the answer's arrival). */
  sentAt?: number;
}

/**
 * A follower refused a batch: gap or conflicting term, resend from
 * expectLsn. Without expectLsn it refused the sender as stale (it has a
 * newer version): such an answer grants nothing.
 */
export interface RejectAnswer {
  version: bigint;
  expectLsn?: bigint;
  sentAt?: number;
}

export interface LsnRange {
  fromLsn: bigint;
  toLsn: bigint;
}

export type AnswerOutcome =
  /** Counted; `newlyCommitted` = the lsns that became committed by it (acknowledge them if the lease holds). */
  | { kind: 'ok'; newlyCommitted?: LsnRange }
  /**
   * The follower knows a newer version: this primary stops serving and the
   * caller fetches the map. If the map still names it primary (the follower
   * merely took a change before it), `reconfigure` resumes; otherwise the
   * caller drops this object.
   */
  | { kind: 'deposed'; version: bigint }
  | { kind: 'ignored'; reason: string };

interface FollowerTrack {
  role: 'in-sync' | 'learner';
  /** A learner counted for commit while the master adds it to the in-sync set (see proposeJoin). */
  joining: boolean;
  /** The highest lsn at which its log is known to match ours; undefined: not known yet. */
  acked: bigint | undefined;
  /** The highest lsn sent; the next batch starts after it (pipelining). */
  sentUpTo: bigint;
  /** Batches sent and not yet covered by an ack, oldest first (for `overdue`). */
  unacked: Array<{ toLsn: bigint; at: number }>;
  /** The `sentAt` of the newest message it answered under this primary. */
  answeredAt: number | undefined;
  /** When it became a member of this primary's group (its silence is counted from here). */
  since: number;
  /** Where its log is first probed, position unknown: this primary's log end when it joined. */
  probeFrom: bigint;
}

export class PrimaryReplication {
  private version_: bigint;
  /** Answers under an older version than this were not addressed to this primary. */
  private readonly firstVersion: bigint;
  private lastLsn_: bigint;
  private committed: bigint;
  private deposedBy: bigint | undefined;
  private readonly followers = new Map<ShardId, FollowerTrack>();
  /** Where each of this primary's terms starts in the log, oldest first. */
  private readonly ownTerms: Array<{ fromLsn: bigint; term: bigint }> = [];
  private readonly inheritedLast: { lsn: bigint; term: bigint };
  readonly leaseMs: number;
  readonly ackTimeoutMs: number;
  private readonly termAt: TermAt | undefined;

  constructor(o: PrimaryOptions) {
    if (o.lastTerm > o.version) throw new CairnError('INVALID_ARGUMENT', `replication: lastTerm ${o.lastTerm} is newer than version ${o.version}`);
    if ((o.committedLsn ?? 0n) > o.lastLsn) throw new CairnError('INVALID_ARGUMENT', `replication: committedLsn ${o.committedLsn} is past lastLsn ${o.lastLsn}`);
    this.version_ = o.version;
    this.firstVersion = o.version;
    this.lastLsn_ = o.lastLsn;
    this.inheritedLast = { lsn: o.lastLsn, term: o.lastTerm };
    this.committed = o.committedLsn ?? 0n;
    this.leaseMs = o.leaseMs;
    this.ackTimeoutMs = o.ackTimeoutMs;
    this.termAt = o.termAt;
    const refusal = this.takeMembers(o, o.now);
    if (refusal) throw new CairnError('INVALID_ARGUMENT', `replication: ${refusal}`);
    this.recommit();
  }

  get version(): bigint {
    return this.version_;
  }
  get lastLsn(): bigint {
    return this.lastLsn_;
  }
  /** The in-sync followers (the primary excluded). */
  get inSync(): ShardId[] {
    return [...this.followers].filter(([, t]) => t.role === 'in-sync').map(([id]) => id);
  }
  get learners(): ShardId[] {
    return [...this.followers].filter(([, t]) => t.role === 'learner').map(([id]) => id);
  }
  /** The newer version a follower answered with, until a reconfigure reaches it: meanwhile nothing is served or sent. */
  get deposed(): bigint | undefined {
    return this.deposedBy;
  }

  /**
   * Numbers `count` new writes; returns the last lsn. The caller stores them before sending. `term` is the
   * version they were numbered under, which the caller wrote into its log with them: the current one unless a
   * reconfigure came between numbering and storing (then the older one; this primary's terms must be its log's,
   * or a follower given the log's term in a snapshot refuses the next batch, which names ours).
   */
  append(count = 1, term = this.version_): bigint {
    if (count < 1) throw new CairnError('INVALID_ARGUMENT', `replication: append(${count})`);
    const last = this.ownTerms.at(-1);
    if (term > this.version_ || (last !== undefined && term < last.term)) {
      throw new CairnError('INVALID_ARGUMENT', `replication: append under term ${term}, outside [${last?.term ?? 0n}, ${this.version_}]`);
    }
    if (last === undefined || last.term !== term) this.ownTerms.push({ fromLsn: this.lastLsn_ + 1n, term });
    this.lastLsn_ += BigInt(count);
    this.recommit(); // alone in the group, a write is committed once stored
    return this.lastLsn_;
  }

  /** The term of the entry at lsn, as far as this primary knows it. */
  termOf(lsn: bigint): bigint | undefined {
    if (lsn === 0n) return 0n;
    if (lsn > this.lastLsn_) return undefined;
    for (let i = this.ownTerms.length - 1; i >= 0; i--) if (lsn >= this.ownTerms[i]!.fromLsn) return this.ownTerms[i]!.term;
    if (lsn === this.inheritedLast.lsn) return this.inheritedLast.term;
    return this.termAt?.(lsn);
  }

  /**
   * The next batch for a follower (in-sync or learner): at most maxEntries
   * after what was already sent, so several may be in flight. undefined when
   * everything is sent. A rejection rewinds it (onReject).
   */
  nextSend(follower: ShardId, maxEntries: number, now: number): Send | undefined {
    const t = this.followers.get(follower);
    if (t === undefined || this.deposedBy !== undefined || t.sentUpTo >= this.lastLsn_) return undefined;
    const toLsn = minLsn(this.lastLsn_, t.sentUpTo + BigInt(Math.max(1, maxEntries)));
    const send = this.batch(follower, t.sentUpTo, toLsn, now);
    t.unacked.push({ toLsn, at: now });
    t.sentUpTo = toLsn;
    return send;
  }

  /**
   * An empty batch that renews the lease and carries the commit point. It
   * names the last lsn the follower is known to match (or, not known yet, the
   * end of what was sent, which probes its log).
   */
  heartbeat(follower: ShardId, now: number): Send | undefined {
    const t = this.followers.get(follower);
    if (t === undefined || this.deposedBy !== undefined) return undefined;
    return this.batch(follower, t.acked ?? t.sentUpTo, t.acked ?? t.sentUpTo, now);
  }

  private batch(follower: ShardId, prevLsn: bigint, toLsn: bigint, now: number): Send {
    return { follower, version: this.version_, prevLsn, prevTerm: this.termOf(prevLsn), fromLsn: prevLsn + 1n, toLsn, primaryCommitted: this.committed, sentAt: now };
  }

  /** A follower accepted: its log matches ours up to matchLsn. Renews its lease clock. */
  onAck(follower: ShardId, a: AckAnswer, now: number): AnswerOutcome {
    const check = this.answerFrom(follower, a.version);
    if (check.kind !== 'ok') return check;
    const t = check.track;
    if (a.matchLsn > this.lastLsn_) return { kind: 'ignored', reason: `${follower} acknowledged lsn ${a.matchLsn} past our last ${this.lastLsn_}` };
    this.answered(t, a.sentAt ?? now);
    t.acked = maxLsn(t.acked ?? 0n, a.matchLsn);
    t.sentUpTo = maxLsn(t.sentUpTo, t.acked);
    while (t.unacked.length > 0 && t.unacked[0]!.toLsn <= t.acked) t.unacked.shift();
    return this.recommit();
  }

  /**
   * A new stream to the follower: what the last one sent and never heard back
   * about may be lost, so the next batch starts after what it acknowledged,
   * or, its position still unknown, probes its log where this primary first
   * did (its own log's end when it took the follower on). Defect: this once
   * rewound an unknown follower to lsn 1, which a log that no longer holds
   * lsn 1 (after a restart, or built by a snapshot) can give only by a
   * snapshot, so a new primary had every in-sync follower taken out of sync.
   * Unacknowledged sends stay counted for `overdue`.
   */
  reconnected(follower: ShardId): void {
    const t = this.followers.get(follower);
    if (t === undefined) return;
    t.sentUpTo = t.acked ?? minLsn(t.sentUpTo, t.probeFrom);
  }

  /** A follower refused a batch (gap or conflicting term): resend from its expectLsn. */
  onReject(follower: ShardId, r: RejectAnswer, now: number): AnswerOutcome {
    const check = this.answerFrom(follower, r.version);
    if (check.kind !== 'ok') return check;
    const t = check.track;
    // A refusal as stale renews no lease, even once we took its version: the follower did not take the batch as ours.
    if (r.expectLsn === undefined) return { kind: 'ok' };
    this.answered(t, r.sentAt ?? now);
    if (r.expectLsn >= 1n) {
      // Never behind what it acknowledged (a reordered old answer), never past our log.
      const next = minLsn(this.lastLsn_ + 1n, maxLsn(r.expectLsn, (t.acked ?? 0n) + 1n));
      t.sentUpTo = next - 1n; // unacked sends stay: a follower that only ever rejects still becomes overdue
    }
    return { kind: 'ok' };
  }

  private answerFrom(follower: ShardId, version: bigint): { kind: 'ok'; track: FollowerTrack } | Exclude<AnswerOutcome, { kind: 'ok' }> {
    if (version > this.version_) this.deposedBy = maxLsn(this.deposedBy ?? 0n, version);
    if (this.deposedBy !== undefined) return { kind: 'deposed', version: this.deposedBy };
    if (version < this.firstVersion) return { kind: 'ignored', reason: `answer from ${follower} under version ${version}, before this primary's ${this.firstVersion}` };
    const track = this.followers.get(follower);
    if (track === undefined) return { kind: 'ignored', reason: `${follower} is not a follower at version ${this.version_}` };
    return { kind: 'ok', track };
  }

  private answered(t: FollowerTrack, sentAt: number): void {
    t.answeredAt = Math.max(t.answeredAt ?? sentAt, sentAt);
  }

  /** The followers a write waits for: the in-sync set, and learners being added to it. */
  private counted(): FollowerTrack[] {
    return [...this.followers.values()].filter((t) => t.role === 'in-sync' || t.joining);
  }

  /** Raises the commit point to what every counted follower and we hold; returns what it newly covers. */
  private recommit(): AnswerOutcome {
    if (this.deposedBy !== undefined) return { kind: 'ok' };
    let upTo = this.lastLsn_;
    for (const t of this.counted()) upTo = minLsn(upTo, t.acked ?? 0n);
    if (upTo <= this.committed) return { kind: 'ok' };
    const newlyCommitted = { fromLsn: this.committed + 1n, toLsn: upTo };
    this.committed = upTo;
    return { kind: 'ok', newlyCommitted };
  }

  /**
   * The highest lsn on this primary and on every in-sync follower (learners
   * never count; a joining learner does). Never decreases. A client's write
   * with lsn L is acknowledged only when committedLsn() >= L and the lease holds.
   */
  committedLsn(): bigint {
    return this.committed;
  }

  /** Whether a write with this lsn may be acknowledged to its client now. */
  canAcknowledge(lsn: bigint, now: number): boolean {
    return lsn <= this.committed && this.leaseHolds(now);
  }

  /**
   * PacificA's lease: every in-sync follower answered a message sent less
   * than leaseMs ago (counted from the send, so the lease ends before the
   * follower's grace, which starts at the receipt). A new primary holds none
   * until each in-sync follower has answered it once. A joining learner
   * counts too: the map may make it in-sync (and so able to ask for a
   * promotion) before this primary takes that map. Without the lease the
   * primary serves neither reads nor write acknowledgements.
   */
  leaseHolds(now: number): boolean {
    return this.leaseProblem(now) === undefined;
  }

  /** Why the lease does not hold, for the caller's UNAVAILABLE; undefined when it holds. */
  leaseProblem(now: number): string | undefined {
    if (this.deposedBy !== undefined) return `deposed: a follower answered with version ${this.deposedBy} (ours ${this.version_}); waiting for the map`;
    for (const [id, t] of this.followers) {
      if (t.role !== 'in-sync' && !t.joining) continue;
      if (t.answeredAt === undefined) return `lease not granted: no answer from ${id} yet at version ${this.version_}`;
      if (now - t.answeredAt >= this.leaseMs) return `lease lost: no answer from ${id} for ${now - t.answeredAt} ms`;
    }
    return undefined;
  }

  /**
   * The in-sync followers (and joining learners) that left a batch sent more
   * than ackTimeoutMs ago unacknowledged, or answered nothing for that long
   * (the caller sends heartbeats). The caller asks the master to take them out
   * of the in-sync set; they keep counting until `reconfigure` says so.
   */
  overdue(now: number): ShardId[] {
    const late: ShardId[] = [];
    for (const [id, t] of this.followers) {
      if (t.role !== 'in-sync' && !t.joining) continue;
      const oldestUnacked = t.unacked[0]?.at;
      if ((oldestUnacked !== undefined && now - oldestUnacked > this.ackTimeoutMs) || now - (t.answeredAt ?? t.since) > this.ackTimeoutMs) late.push(id);
    }
    return late;
  }

  /**
   * Whether the primary may serve reads now: the lease holds, and every entry
   * it inherited (a promoted follower's staged log, which holds every write
   * the old primary acknowledged) is committed, so its applied rows include
   * every acknowledged write. Before that, a read could miss one.
   */
  canServeReads(now: number): { ok: true } | { ok: false; reason: string } {
    const problem = this.leaseProblem(now);
    if (problem !== undefined) return { ok: false, reason: problem };
    if (this.committed < this.inheritedLast.lsn) return { ok: false, reason: `catching up: committed lsn ${this.committed} of ${this.inheritedLast.lsn} inherited` };
    return { ok: true };
  }

  /** Whether the primary may take writes now, or the reason for the caller's UNAVAILABLE. */
  canWrite(now: number, minInSync: number): { ok: true } | { ok: false; reason: string } {
    const members = this.inSync.length + 1;
    if (members < minInSync) return { ok: false, reason: `in-sync ${members} of minInSync ${minInSync}` };
    const problem = this.leaseProblem(now);
    return problem === undefined ? { ok: true } : { ok: false, reason: problem };
  }

  /**
   * Takes the map's new configuration for the range (after a durable step):
   * the version must grow. Followers that stay keep their positions (a
   * learner joining the in-sync set too); new ones start unknown (their
   * first batch probes their log); removed ones stop counting, which may
   * commit writes they were holding back.
   */
  reconfigure(c: GroupConfig, now: number): AnswerOutcome | Refused {
    if (c.version <= this.version_) return { kind: 'refused', reason: `version ${c.version} is not newer than ${this.version_}` };
    const before = new Map(this.followers);
    const refusal = this.takeMembers(c, now);
    if (refusal) {
      this.followers.clear();
      for (const [id, t] of before) this.followers.set(id, t);
      return { kind: 'refused', reason: refusal };
    }
    this.version_ = c.version;
    if (this.deposedBy !== undefined && c.version >= this.deposedBy) this.deposedBy = undefined; // still primary at the newer version
    return this.recommit();
  }

  private takeMembers(c: GroupConfig, now: number): string | undefined {
    const learners = c.learners ?? [];
    const all = [...c.inSync, ...learners];
    if (new Set(all).size !== all.length) return `a shard is listed twice in in-sync ${c.inSync.join(',')} / learners ${learners.join(',')}`;
    const old = new Map(this.followers);
    this.followers.clear();
    for (const id of all) {
      const role = c.inSync.includes(id) ? 'in-sync' : 'learner';
      const kept = old.get(id);
      this.followers.set(id, kept ? { ...kept, role, joining: false } : { role, joining: false, acked: undefined, sentUpTo: this.lastLsn_, unacked: [], answeredAt: undefined, since: now, probeFrom: this.lastLsn_ });
    }
    return undefined;
  }

  /**
   * Before the master adds a learner to the in-sync set: refused until it
   * matches our log up to the commit point; from then on it counts for
   * commit and the lease, so no write is acknowledged without it while the
   * map step is in flight. It stops counting (as a learner) only by a
   * reconfigure that keeps it a learner. Without this, writes acknowledged
   * between the check and the step could be missing on a new in-sync member.
   * The master's step must be a compare-and-set on this primary's `version`
   * (any reconfigure ends the join, so a step based on a newer map must not
   * use it).
   */
  proposeJoin(learner: ShardId): { ok: true } | Refused {
    const t = this.followers.get(learner);
    if (t === undefined || t.role !== 'learner') return { kind: 'refused', reason: `${learner} is not a learner` };
    if (t.acked === undefined || t.acked < this.committed) return { kind: 'refused', reason: `${learner} has lsn ${t.acked ?? 'unknown'} of committed ${this.committed}` };
    t.joining = true;
    return { ok: true };
  }

  /** The next lsn a follower needs, as far as we know. */
  private needs(t: FollowerTrack): bigint {
    return (t.acked ?? t.sentUpTo) + 1n;
  }

  /**
   * How to bring a follower up to date: from the log when everything after
   * what it holds is still retained (or it needs nothing), else a snapshot.
   */
  catchUpPlan(follower: ShardId, oldestRetainedLsn: bigint): 'log' | 'snapshot' | undefined {
    const t = this.followers.get(follower);
    if (t === undefined) return undefined;
    const need = this.needs(t);
    return need >= oldestRetainedLsn || need > this.lastLsn_ ? 'log' : 'snapshot';
  }

  /** The caller installed a snapshot up to lsn (≤ committedLsn) on the follower: stream from after it. */
  snapshotSent(follower: ShardId, lsn: bigint, now: number): boolean {
    const t = this.followers.get(follower);
    if (t === undefined || lsn > this.committed) return false;
    t.sentUpTo = lsn;
    t.unacked.push({ toLsn: lsn, at: now });
    return true;
  }

  /** The lowest lsn some follower or learner may still need: the caller may truncate its log only below it. */
  retainFrom(): bigint {
    let from = this.committed + 1n;
    for (const t of this.followers.values()) from = minLsn(from, this.needs(t));
    return from;
  }
}
