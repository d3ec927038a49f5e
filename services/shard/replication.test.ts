/**
 * The replication state machine (replication.ts), one transition at a time:
 * the primary's numbering, sends, acks, commit point, lease, overdue
 * followers and reconfiguration; the follower's version fencing, log
 * matching and truncation; promotion; and the master's choice of a new
 * primary. The randomized group is in replication.property.test.ts.
 */
import { describe, expect, it } from '@jest/globals';
import { chooseNewPrimary, FollowerReplication, PrimaryReplication, type AppendMessage, type PrimaryOptions } from './replication.js';

const LEASE = 1000;
const ACK_TIMEOUT = 2000;
const GRACE = 3000;

const primary = (o: Partial<PrimaryOptions> = {}): PrimaryReplication =>
  new PrimaryReplication({ version: 1n, lastLsn: 0n, lastTerm: 0n, inSync: ['b', 'c'], leaseMs: LEASE, ackTimeoutMs: ACK_TIMEOUT, now: 0, ...o });

/** A follower over an in-memory log of terms (index lsn - 1), which the test updates as a caller would. */
function follower(terms: bigint[], o: { version?: bigint; committed?: bigint; primary?: string } = {}) {
  const log = [...terms];
  const f = new FollowerReplication({
    version: o.version ?? 1n,
    primary: o.primary ?? 'a',
    lastLsn: BigInt(log.length),
    lastTerm: log.at(-1) ?? 0n,
    committedLsn: o.committed ?? 0n,
    graceMs: GRACE,
    now: 0,
    termAt: (lsn) => log[Number(lsn) - 1],
  });
  /** Delivers a message and does what the outcome says to the log. */
  const deliver = (m: AppendMessage, now = 0) => {
    const out = f.onAppend(m, now);
    if ((out.kind === 'accepted' || out.kind === 'mismatch') && out.truncateAfter !== undefined) log.length = Number(out.truncateAfter);
    if (out.kind === 'accepted' && out.storeFrom !== undefined) for (const e of m.entries) if (e.lsn >= out.storeFrom) log[Number(e.lsn) - 1] = e.term;
    return out;
  };
  return { f, log, deliver };
}

const entries = (from: number, terms: bigint[]) => terms.map((term, i) => ({ lsn: BigInt(from + i), term }));
const msg = (m: Partial<AppendMessage>): AppendMessage => ({ version: 1n, primary: 'a', prevLsn: 0n, prevTerm: 0n, entries: [], primaryCommitted: 0n, ...m });

describe('PrimaryReplication', () => {
  it('numbers writes under its version and sends them in batches, pipelined', () => {
    const p = primary({ version: 3n, lastLsn: 5n, lastTerm: 2n, termAt: (lsn) => (lsn <= 5n ? 2n : undefined) });
    expect(p.append()).toBe(6n);
    expect(p.append(3)).toBe(9n);
    expect(p.termOf(5n)).toBe(2n);
    expect(p.termOf(6n)).toBe(3n);
    // A follower whose position is unknown is probed at the primary's starting point.
    expect(p.nextSend('b', 10, 0)).toMatchObject({ prevLsn: 5n, prevTerm: 2n, fromLsn: 6n, toLsn: 9n });
    expect(p.nextSend('b', 10, 0)).toBeUndefined();
    expect(p.onReject('b', { version: 3n, expectLsn: 4n }, 0)).toEqual({ kind: 'ok' });
    expect(p.nextSend('b', 2, 0)).toMatchObject({ prevLsn: 3n, prevTerm: 2n, fromLsn: 4n, toLsn: 5n, version: 3n });
    expect(p.nextSend('b', 2, 0)).toMatchObject({ prevLsn: 5n, prevTerm: 2n, fromLsn: 6n, toLsn: 7n });
    expect(p.nextSend('b', 5, 0)).toMatchObject({ prevLsn: 7n, prevTerm: 3n, fromLsn: 8n, toLsn: 9n });
    expect(p.nextSend('b', 5, 0)).toBeUndefined();
    expect(p.nextSend('z', 5, 0)).toBeUndefined();
  });

  it('keeps the term a write was numbered under when a reconfigure comes before it is stored', () => {
    // Defect from the replicated chaos run: the writer numbered a batch under version 18, the in-sync set
    // changed (version 19) before the batch was durable, and the primary then recorded the entry under 19
    // while its log said 18. A follower snapshotted at the log's term refused every heartbeat naming the
    // primary's, and was snapshotted again, forever; the range's writes waited for it.
    const p = primary({ version: 18n, lastLsn: 16n, lastTerm: 17n, termAt: (lsn) => (lsn <= 16n ? 17n : undefined) });
    expect(p.reconfigure({ version: 19n, inSync: ['b'], learners: ['c'] }, 0)).toMatchObject({ kind: 'ok' });
    expect(p.append(1, 18n)).toBe(17n);
    expect(p.append(1)).toBe(18n);
    expect(p.termOf(17n)).toBe(18n);
    expect(p.termOf(18n)).toBe(19n);
    expect(() => p.append(1, 18n)).toThrow(/term 18/);
    expect(() => p.append(1, 20n)).toThrow(/term 20/);
  });

  it('commits what every in-sync follower acknowledged, and reports what became acknowledgeable', () => {
    const p = primary();
    p.append(4);
    expect(p.committedLsn()).toBe(0n);
    expect(p.onAck('b', { version: 1n, matchLsn: 4n }, 10)).toEqual({ kind: 'ok' });
    expect(p.onAck('c', { version: 1n, matchLsn: 2n }, 10)).toEqual({ kind: 'ok', newlyCommitted: { fromLsn: 1n, toLsn: 2n } });
    expect(p.committedLsn()).toBe(2n);
    expect(p.onAck('c', { version: 1n, matchLsn: 1n }, 11)).toEqual({ kind: 'ok' }); // a reordered old ack takes nothing back
    expect(p.onAck('c', { version: 1n, matchLsn: 4n }, 12)).toEqual({ kind: 'ok', newlyCommitted: { fromLsn: 3n, toLsn: 4n } });
    expect(p.canAcknowledge(4n, 12)).toBe(true);
    expect(p.canAcknowledge(5n, 12)).toBe(false);
    expect(p.onAck('c', { version: 1n, matchLsn: 9n }, 12).kind).toBe('ignored');
  });

  it('alone in the group, commits each write at once', () => {
    const p = primary({ inSync: [] });
    expect(p.append(2)).toBe(2n);
    expect(p.committedLsn()).toBe(2n);
    expect(p.leaseHolds(1e9)).toBe(true);
  });

  it('learners never count for commit or for the lease', () => {
    const p = primary({ inSync: ['b'], learners: ['l'] });
    p.append(3);
    p.onAck('b', { version: 1n, matchLsn: 3n }, 0);
    expect(p.committedLsn()).toBe(3n);
    expect(p.leaseHolds(LEASE - 1)).toBe(true);
    expect(p.overdue(ACK_TIMEOUT * 5)).toEqual(['b']);
    expect(p.learners).toEqual(['l']);
  });

  it('rewinds to a rejecting follower\'s answer, but never behind what it acknowledged nor past our log', () => {
    const p = primary();
    p.append(6);
    p.onAck('b', { version: 1n, matchLsn: 3n }, 0);
    p.nextSend('b', 10, 0);
    p.onReject('b', { version: 1n, expectLsn: 2n }, 0);
    expect(p.nextSend('b', 10, 0)).toMatchObject({ fromLsn: 4n, toLsn: 6n });
    p.onReject('b', { version: 1n, expectLsn: 5n }, 0);
    expect(p.nextSend('b', 1, 0)).toMatchObject({ prevLsn: 4n, fromLsn: 5n, toLsn: 5n });
    p.onReject('b', { version: 1n, expectLsn: 99n }, 0);
    expect(p.nextSend('b', 1, 0)).toBeUndefined();
  });

  it('on a new stream, resends after what a follower acknowledged, and probes an unknown one where it first did, never from lsn 1', () => {
    // A primary whose log starts at 40 (a restarted shard, or one built by a snapshot): lsn 1 is not in it.
    const p = primary({ lastLsn: 40n, lastTerm: 1n, termAt: (lsn) => (lsn >= 40n ? 1n : undefined) });
    p.append(5);
    expect(p.nextSend('b', 10, 0)).toMatchObject({ prevLsn: 40n, fromLsn: 41n, toLsn: 45n });
    p.reconnected('b');
    expect(p.nextSend('b', 10, 0)).toMatchObject({ prevLsn: 40n, prevTerm: 1n, fromLsn: 41n });
    expect(p.catchUpPlan('b', 40n)).toBe('log');
    // Its log turned out shorter: the probe went back to its end, and a new stream keeps it there.
    p.onReject('b', { version: 1n, expectLsn: 38n }, 0);
    p.reconnected('b');
    expect(p.nextSend('b', 10, 0)).toMatchObject({ prevLsn: 37n, fromLsn: 38n });
    p.onAck('c', { version: 1n, matchLsn: 43n }, 0);
    p.nextSend('c', 10, 0);
    p.reconnected('c');
    expect(p.nextSend('c', 10, 0)).toMatchObject({ prevLsn: 43n, fromLsn: 44n, toLsn: 45n });
  });

  it('holds no lease until every in-sync follower answered, and loses it after leaseMs without ONE of them', () => {
    const p = primary();
    expect(p.leaseHolds(0)).toBe(false);
    expect(p.leaseProblem(0)).toBe('lease not granted: no answer from b yet at version 1');
    p.onAck('b', { version: 1n, matchLsn: 0n }, 100);
    expect(p.leaseHolds(100)).toBe(false);
    p.onReject('c', { version: 1n, expectLsn: 1n, sentAt: 90 }, 100); // any answer renews, from the time it was sent
    expect(p.leaseHolds(100)).toBe(true);
    p.onAck('b', { version: 1n, matchLsn: 0n }, 1000);
    expect(p.leaseHolds(90 + LEASE - 1)).toBe(true);
    expect(p.leaseHolds(90 + LEASE)).toBe(false);
    expect(p.leaseProblem(90 + LEASE + 200)).toBe('lease lost: no answer from c for 1200 ms');
    expect(p.canWrite(90 + LEASE, 2)).toEqual({ ok: false, reason: 'lease lost: no answer from c for 1000 ms' });
    expect(p.canAcknowledge(0n, 90 + LEASE)).toBe(false);
  });

  it('refuses writes below minInSync, with the reason', () => {
    const p = primary({ inSync: [] });
    expect(p.canWrite(0, 2)).toEqual({ ok: false, reason: 'in-sync 1 of minInSync 2' });
    expect(p.canWrite(0, 1)).toEqual({ ok: true });
  });

  it('names an overdue follower, which keeps blocking commit until a reconfigure removes it', () => {
    const p = primary();
    p.append(2);
    const sent = p.nextSend('b', 10, 0);
    p.nextSend('c', 10, 0);
    expect(sent).toMatchObject({ prevLsn: 0n, fromLsn: 1n, toLsn: 2n });
    p.onAck('b', { version: 1n, matchLsn: 2n }, 100);
    p.onReject('c', { version: 1n, expectLsn: 1n }, 100); // c answers, but never acknowledges
    expect(p.overdue(ACK_TIMEOUT)).toEqual([]);
    expect(p.overdue(ACK_TIMEOUT + 1)).toEqual(['c']);
    expect(p.committedLsn()).toBe(0n);
    expect(p.committedLsn()).toBe(0n); // still: overdue changes nothing by itself
    expect(p.reconfigure({ version: 1n, inSync: ['b'], learners: ['c'] }, 3000)).toEqual({ kind: 'refused', reason: 'version 1 is not newer than 1' });
    expect(p.committedLsn()).toBe(0n);
    expect(p.reconfigure({ version: 2n, inSync: ['b'], learners: ['c'] }, 3000)).toEqual({ kind: 'ok', newlyCommitted: { fromLsn: 1n, toLsn: 2n } });
    expect(p.version).toBe(2n);
    expect(p.inSync).toEqual(['b']);
    expect(p.overdue(1e9)).toEqual(['b']); // learners are never overdue; b gave no answer since
  });

  it('counts a follower that never answers as overdue after ackTimeoutMs', () => {
    const p = primary({ now: 500 });
    p.onAck('b', { version: 1n, matchLsn: 0n }, 2000);
    expect(p.overdue(500 + ACK_TIMEOUT)).toEqual([]);
    expect(p.overdue(500 + ACK_TIMEOUT + 1)).toEqual(['c']);
  });

  it('on reconfigure keeps a joining learner\'s position and starts a new member unknown', () => {
    const p = primary({ inSync: ['b'], learners: ['c'] });
    p.append(3);
    p.onAck('b', { version: 1n, matchLsn: 3n }, 0);
    p.onAck('c', { version: 1n, matchLsn: 3n }, 0);
    expect(p.reconfigure({ version: 2n, inSync: ['b', 'c', 'd'] }, 0)).toEqual({ kind: 'ok' });
    expect(p.committedLsn()).toBe(3n); // never goes back
    p.append();
    p.onAck('b', { version: 2n, matchLsn: 4n }, 0);
    p.onAck('c', { version: 2n, matchLsn: 4n }, 0);
    expect(p.committedLsn()).toBe(3n); // d is unknown
    expect(p.leaseProblem(0)).toBe('lease not granted: no answer from d yet at version 2');
    expect(p.onAck('d', { version: 2n, matchLsn: 4n }, 0)).toEqual({ kind: 'ok', newlyCommitted: { fromLsn: 4n, toLsn: 4n } });
    expect(p.reconfigure({ version: 3n, inSync: ['b'], learners: ['b'] }, 0).kind).toBe('refused');
    expect(p.version).toBe(2n);
  });

  it('lets a learner join only once it holds the commit point, and then waits for it', () => {
    const p = primary({ inSync: ['b'], learners: ['l'] });
    p.append(2);
    p.onAck('b', { version: 1n, matchLsn: 2n }, 0);
    expect(p.proposeJoin('l')).toEqual({ kind: 'refused', reason: 'l has lsn unknown of committed 2' });
    expect(p.proposeJoin('b')).toEqual({ kind: 'refused', reason: 'b is not a learner' });
    p.onAck('l', { version: 1n, matchLsn: 2n }, 0);
    expect(p.proposeJoin('l')).toEqual({ ok: true });
    p.append();
    p.onAck('b', { version: 1n, matchLsn: 3n }, 0);
    expect(p.committedLsn()).toBe(2n); // the joining learner holds it back
    expect(p.leaseHolds(LEASE - 1)).toBe(true);
    p.onAck('b', { version: 1n, matchLsn: 3n }, LEASE);
    expect(p.leaseProblem(LEASE)).toBe(`lease lost: no answer from l for ${LEASE} ms`); // and the lease: the map may make it in-sync first
    expect(p.reconfigure({ version: 2n, inSync: ['b'], learners: ['l'] }, 0)).toEqual({ kind: 'ok', newlyCommitted: { fromLsn: 3n, toLsn: 3n } }); // the master did not add it
  });

  it('is deposed by an answer from a newer version, and then does nothing', () => {
    const p = primary();
    p.append();
    p.onAck('b', { version: 1n, matchLsn: 1n }, 0);
    expect(p.onReject('c', { version: 4n }, 0)).toEqual({ kind: 'deposed', version: 4n });
    expect(p.deposed).toBe(4n);
    expect(p.onAck('c', { version: 1n, matchLsn: 1n }, 0)).toEqual({ kind: 'deposed', version: 4n });
    expect(p.committedLsn()).toBe(0n);
    expect(p.leaseHolds(0)).toBe(false);
    expect(p.nextSend('b', 1, 0)).toBeUndefined();
    expect(p.reconfigure({ version: 3n, inSync: ['b', 'c'] }, 0)).toEqual({ kind: 'ok' }); // an older map than the follower's: still deposed
    expect(p.leaseProblem(0)).toBe('deposed: a follower answered with version 4 (ours 3); waiting for the map');
  });

  it('resumes when the map that a follower took first still names it primary', () => {
    const p = primary();
    p.append();
    p.onAck('b', { version: 1n, matchLsn: 1n }, 0);
    expect(p.onReject('c', { version: 2n }, 0)).toEqual({ kind: 'deposed', version: 2n }); // c took version 2 before us
    expect(p.reconfigure({ version: 2n, inSync: ['b', 'c'] }, 0)).toEqual({ kind: 'ok' });
    expect(p.deposed).toBeUndefined();
    expect(p.onReject('c', { version: 2n, sentAt: 0 }, 0)).toEqual({ kind: 'ok' }); // another refusal of a version-1 batch, arriving late
    expect(p.leaseProblem(0)).toBe('lease not granted: no answer from c yet at version 2'); // it grants nothing
    expect(p.onAck('c', { version: 2n, matchLsn: 1n }, 0)).toEqual({ kind: 'ok', newlyCommitted: { fromLsn: 1n, toLsn: 1n } });
    p.onAck('b', { version: 2n, matchLsn: 1n }, 0);
    expect(p.leaseHolds(0)).toBe(true);
  });

  it('ignores answers from before it was primary and from non-members', () => {
    const p = primary({ version: 5n, lastLsn: 2n, lastTerm: 4n });
    expect(p.onAck('b', { version: 4n, matchLsn: 2n }, 0).kind).toBe('ignored');
    expect(p.onAck('z', { version: 5n, matchLsn: 2n }, 0).kind).toBe('ignored');
    expect(p.committedLsn()).toBe(0n);
  });

  it('plans catch-up from the log while it is retained, else a snapshot, and retains what followers need', () => {
    const p = primary({ inSync: ['b'], learners: ['l'] });
    p.append(10);
    p.onAck('b', { version: 1n, matchLsn: 10n }, 0);
    p.onReject('l', { version: 1n, expectLsn: 3n }, 0);
    expect(p.retainFrom()).toBe(3n);
    expect(p.catchUpPlan('l', 3n)).toBe('log');
    expect(p.catchUpPlan('l', 4n)).toBe('snapshot');
    expect(p.catchUpPlan('b', 11n)).toBe('log');
    expect(p.catchUpPlan('z', 1n)).toBeUndefined();
    expect(p.snapshotSent('l', 10n, 0)).toBe(true);
    p.onAck('l', { version: 1n, matchLsn: 10n }, 0);
    expect(p.retainFrom()).toBe(11n);
    expect(p.heartbeat('l', 7)).toMatchObject({ prevLsn: 10n, fromLsn: 11n, toLsn: 10n, primaryCommitted: 10n, sentAt: 7 });
  });
});

describe('FollowerReplication', () => {
  it('stores a batch after its log and applies up to the primary\'s commit point', () => {
    const { f, log, deliver } = follower([1n, 1n]);
    expect(deliver(msg({ prevLsn: 2n, prevTerm: 1n, entries: entries(3, [1n, 1n]), primaryCommitted: 3n }))).toEqual({ kind: 'accepted', matchLsn: 4n, storeFrom: 3n, applyUpTo: 3n });
    expect(log).toEqual([1n, 1n, 1n, 1n]);
    expect(f.lastLsn).toBe(4n);
    expect(f.committedLsn()).toBe(3n);
  });

  it('refuses an older version, and adopts a newer one', () => {
    const { f, deliver } = follower([1n], { version: 3n, primary: 'b' });
    expect(deliver(msg({ version: 2n, prevLsn: 1n, prevTerm: 1n }))).toEqual({ kind: 'stale', version: 3n });
    expect(deliver(msg({ version: 3n, primary: 'c', prevLsn: 1n, prevTerm: 1n })).kind).toBe('violation');
    expect(deliver(msg({ version: 4n, primary: 'c', prevLsn: 1n, prevTerm: 1n }))).toMatchObject({ kind: 'accepted', matchLsn: 1n });
    expect([f.version, f.primary]).toEqual([4n, 'c']);
    expect(deliver(msg({ version: 3n, primary: 'b', prevLsn: 1n, prevTerm: 1n }))).toEqual({ kind: 'stale', version: 4n });
  });

  it('answers a gap with the lsn it expects', () => {
    const { deliver } = follower([1n, 1n]);
    expect(deliver(msg({ prevLsn: 5n, prevTerm: 1n, entries: entries(6, [1n]) }))).toEqual({ kind: 'mismatch', expectLsn: 3n });
  });

  it('drops a conflicting uncommitted suffix at prevLsn and asks for what follows its commit point', () => {
    const { f, log, deliver } = follower([1n, 1n, 2n, 2n], { committed: 2n, version: 2n, primary: 'b' });
    expect(deliver(msg({ version: 3n, primary: 'c', prevLsn: 3n, prevTerm: 1n, entries: entries(4, [3n]) }))).toEqual({ kind: 'mismatch', expectLsn: 3n, truncateAfter: 2n });
    expect(log).toEqual([1n, 1n]);
    expect([f.lastLsn, f.lastTerm]).toEqual([2n, 1n]);
    expect(deliver(msg({ version: 3n, primary: 'c', prevLsn: 2n, prevTerm: 1n, entries: entries(3, [1n, 3n]), primaryCommitted: 4n }))).toEqual({ kind: 'accepted', matchLsn: 4n, storeFrom: 3n, applyUpTo: 4n });
    expect(log).toEqual([1n, 1n, 1n, 3n]);
  });

  it('truncates inside a batch at the first entry of another term, keeping the duplicates before it', () => {
    const { log, deliver } = follower([1n, 1n, 2n, 2n, 2n], { committed: 1n, version: 2n, primary: 'b' });
    expect(deliver(msg({ version: 3n, primary: 'c', prevLsn: 1n, prevTerm: 1n, entries: entries(2, [1n, 2n, 3n]), primaryCommitted: 2n }))).toEqual({ kind: 'accepted', matchLsn: 4n, truncateAfter: 3n, storeFrom: 4n, applyUpTo: 2n });
    expect(log).toEqual([1n, 1n, 2n, 3n]);
  });

  it('never truncates at or below its commit point: that is a violation, and nothing changes', () => {
    const { f, log, deliver } = follower([1n, 1n, 2n], { committed: 2n, version: 2n, primary: 'b' });
    expect(deliver(msg({ version: 3n, primary: 'c', prevLsn: 2n, prevTerm: 3n })).kind).toBe('violation');
    expect(deliver(msg({ version: 3n, primary: 'c', prevLsn: 1n, prevTerm: 1n, entries: entries(2, [3n]) })).kind).toBe('violation');
    expect(log).toEqual([1n, 1n, 2n]);
    expect([f.version, f.lastLsn]).toEqual([2n, 3n]);
  });

  it('skips duplicates idempotently and keeps a longer matching log', () => {
    const { f, log, deliver } = follower([1n, 1n, 1n]);
    expect(deliver(msg({ prevLsn: 0n, prevTerm: 0n, entries: entries(1, [1n, 1n]), primaryCommitted: 3n }))).toEqual({ kind: 'accepted', matchLsn: 2n, applyUpTo: 2n });
    expect(log).toEqual([1n, 1n, 1n]);
    expect(f.lastLsn).toBe(3n);
    expect(deliver(msg({ prevLsn: 1n, prevTerm: 1n, entries: entries(2, [1n, 1n, 1n]), primaryCommitted: 4n }))).toEqual({ kind: 'accepted', matchLsn: 4n, storeFrom: 4n, applyUpTo: 4n });
    expect(log).toEqual([1n, 1n, 1n, 1n]);
  });

  it('refuses a malformed batch', () => {
    const { deliver } = follower([]);
    expect(deliver(msg({ entries: entries(2, [1n]) })).kind).toBe('malformed');
    expect(deliver(msg({ entries: entries(1, [2n]) })).kind).toBe('malformed'); // term beyond the version
  });

  it('asks for a promotion only after the grace without hearing from its primary', () => {
    const { f, deliver } = follower([]);
    deliver(msg({}), 100);
    expect(f.shouldAskPromotion(100 + GRACE)).toBe(false);
    expect(f.shouldAskPromotion(100 + GRACE + 1)).toBe(true);
    deliver(msg({ version: 0n }), 200); // a stale sender is not the primary
    expect(f.shouldAskPromotion(100 + GRACE + 1)).toBe(true);
    // Past the grace it takes nothing more from that primary (that would renew its lease), until a newer version.
    expect(deliver(msg({}), 100 + GRACE + 1)).toEqual({ kind: 'stale', version: 1n, graceExpired: true });
    expect(deliver(msg({ version: 2n, primary: 'b' }), 100 + GRACE + 2)).toMatchObject({ kind: 'accepted' });
    expect(f.shouldAskPromotion(100 + GRACE + 2)).toBe(false);
  });

  it('takes a newer map, and a snapshot not behind its commit point', () => {
    const { f } = follower([1n, 1n], { committed: 2n });
    expect(f.adoptConfig(1n, 'z', 0)).toBe(false);
    expect(f.shouldAskPromotion(GRACE + 1)).toBe(true);
    expect(f.adoptConfig(2n, 'b', GRACE + 1)).toBe(true);
    expect([f.version, f.primary, f.shouldAskPromotion(GRACE + 1)]).toEqual([2n, 'b', false]);
    expect(f.installSnapshot({ version: 2n, primary: 'b', lsn: 1n, term: 1n }, 0).kind).toBe('refused');
    expect(f.installSnapshot({ version: 2n, primary: 'b', lsn: 9n, term: 2n }, 0)).toEqual({ kind: 'installed', matchLsn: 9n });
    expect([f.lastLsn, f.committedLsn()]).toEqual([9n, 9n]);
  });
});

describe('promotion', () => {
  it('makes a primary of the whole staged log, which commits once every in-sync follower matches it', () => {
    const old = follower([1n, 1n, 1n, 1n], { committed: 2n });
    const other = follower([1n, 1n, 1n], { committed: 2n });
    expect(old.f.promote({ version: 1n, inSync: [] }, { leaseMs: LEASE, ackTimeoutMs: ACK_TIMEOUT, now: 0 })).toEqual({ kind: 'refused', reason: 'promotion at version 1, ours is 1' });
    const p = old.f.promote({ version: 2n, inSync: ['c'] }, { leaseMs: LEASE, ackTimeoutMs: ACK_TIMEOUT, now: 0 });
    if (!(p instanceof PrimaryReplication)) throw new Error('not promoted');
    expect([p.version, p.lastLsn, p.committedLsn()]).toEqual([2n, 4n, 2n]);
    expect(p.leaseHolds(0)).toBe(false);
    const w = p.append();
    expect(w).toBe(5n);
    // Probe, rewind, align: the follower ends with the new primary's log.
    const send = (s: ReturnType<PrimaryReplication['nextSend']>) =>
      other.deliver(msg({ version: 2n, primary: 'b', prevLsn: s!.prevLsn, prevTerm: s!.prevTerm!, entries: entries(Number(s!.fromLsn), Array.from({ length: Number(s!.toLsn - s!.fromLsn + 1n) }, (_, i) => p.termOf(s!.fromLsn + BigInt(i))!)), primaryCommitted: s!.primaryCommitted }));
    const first = send(p.nextSend('c', 10, 0));
    expect(first).toEqual({ kind: 'mismatch', expectLsn: 4n });
    p.onReject('c', { version: 2n, expectLsn: 4n }, 0);
    const second = send(p.nextSend('c', 10, 0));
    expect(second).toEqual({ kind: 'accepted', matchLsn: 5n, storeFrom: 4n, applyUpTo: 2n });
    expect(p.onAck('c', { version: 2n, matchLsn: 5n }, 0)).toEqual({ kind: 'ok', newlyCommitted: { fromLsn: 3n, toLsn: 5n } });
    expect(p.canAcknowledge(w, 0)).toBe(true);
    expect(other.log).toEqual([1n, 1n, 1n, 1n, 2n]);
  });

  it('serves reads only once its inherited log is committed (it holds every acknowledged write)', () => {
    const { f } = follower([1n, 1n, 1n], { committed: 1n });
    const p = f.promote({ version: 2n, inSync: ['c'] }, { leaseMs: LEASE, ackTimeoutMs: ACK_TIMEOUT, now: 0 }) as PrimaryReplication;
    p.onReject('c', { version: 2n, expectLsn: 3n }, 10);
    expect(p.leaseHolds(10)).toBe(true);
    expect(p.canServeReads(10)).toEqual({ ok: false, reason: 'catching up: committed lsn 1 of 3 inherited' });
    p.onAck('c', { version: 2n, matchLsn: 3n, sentAt: 20 }, 30);
    expect(p.canServeReads(30)).toEqual({ ok: true });
    expect(p.canServeReads(20 + LEASE)).toEqual({ ok: false, reason: `lease lost: no answer from c for ${LEASE} ms` }); // counted from the send
  });
});

describe('chooseNewPrimary', () => {
  it('takes the in-sync member with the highest (lastTerm, lastLsn), ties by shard id, never one outside', () => {
    expect(chooseNewPrimary([])).toBeUndefined();
    expect(chooseNewPrimary([{ shard: 'a', inSync: false, lastLsn: 99n, lastTerm: 9n }])).toBeUndefined();
    expect(
      chooseNewPrimary([
        { shard: 'a', inSync: false, lastLsn: 99n, lastTerm: 9n },
        { shard: 'b', inSync: true, lastLsn: 10n, lastTerm: 2n },
        { shard: 'c', inSync: true, lastLsn: 5n, lastTerm: 3n },
      ]),
    ).toBe('c');
    expect(
      chooseNewPrimary([
        { shard: 'd', inSync: true, lastLsn: 5n, lastTerm: 3n },
        { shard: 'c', inSync: true, lastLsn: 5n, lastTerm: 3n },
        { shard: 'e', inSync: true, lastLsn: 4n, lastTerm: 3n },
      ]),
    ).toBe('c');
  });
});
