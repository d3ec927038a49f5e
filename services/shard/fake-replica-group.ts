/**
 * A simulated replica group of three shards (one primary, two followers)
 * around the replication state machine (replication.ts), driven one action
 * at a time the way the shard and the master will drive it, checking the
 * invariants of DESIGN.md "Replication and failover" after every step
 * (`settle`). For replication.property.test.ts, which draws the actions.
 * Not shipped (package.json leaves fake-* out of the package).
 */
import { chooseNewPrimary, FollowerReplication, PrimaryReplication, type AppendMessage, type GroupConfig, type ShardId } from './replication.js';

const LEASE = 1000;
const GRACE = 1500;
const ACK_TIMEOUT = 2000;
const IDS = ['a', 'b', 'c'] as const;

type Msg =
  | { kind: 'append'; m: AppendMessage; sentAt: number }
  /** The primary's committed prefix as a snapshot (terms stand for the rows). */
  | { kind: 'snapshot'; version: bigint; primary: ShardId; lsn: bigint; terms: bigint[]; sentAt: number }
  | { kind: 'ack'; version: bigint; matchLsn: bigint; sentAt: number }
  | { kind: 'reject'; version: bigint; expectLsn?: bigint; sentAt: number };

export interface Shard {
  id: ShardId;
  /** Durable: the log's terms (index lsn - 1), the applied prefix, the highest version taken. */
  log: bigint[];
  /** Entries below it were truncated away (their terms stay in `log` for the checks only): sending them is a bug. */
  logStart: bigint;
  applied: bigint;
  version: bigint;
  role: { kind: 'primary'; p: PrimaryReplication } | { kind: 'follower'; f: FollowerReplication } | { kind: 'down' };
}

export type Action =
  | { t: 'write'; n: number }
  | { t: 'send'; from: number; to: number; max: number; heartbeat: boolean }
  | { t: 'deliver'; link: number; drop: boolean }
  | { t: 'pump' }
  | { t: 'tick'; ms: number }
  | { t: 'crash'; shard: number }
  | { t: 'restart'; shard: number }
  | { t: 'failover'; tellOld: boolean; tellOthers: boolean }
  | { t: 'removeOverdue'; primaryLate: boolean }
  | { t: 'addLearner'; shard: number; compact: boolean; primaryLate: boolean }
  | { t: 'proposeJoin'; shard: number }
  | { t: 'applyJoin'; primaryLate: boolean }
  | { t: 'primaryTakesMap' }
  | { t: 'compact' };


function must(ok: boolean, what: () => string): void {
  if (!ok) throw new Error(what());
}

/** What the runs exercised, summed over all of them, so a property that tests nothing shows. */
export const seen = { resumed: 0, snapshots: 0, acked: 0, failovers: 0, truncations: 0, removals: 0, joins: 0, staleRefusals: 0 };

export class Group {
  now = 0;
  readonly shards = new Map<ShardId, Shard>();
  map: { version: bigint; primary: ShardId; inSync: ShardId[]; learners: ShardId[] } = { version: 1n, primary: 'a', inSync: ['b', 'c'], learners: [] };
  /** In-order links, keyed from>to. */
  readonly links = new Map<string, Msg[]>();
  /** Writes a client waits for: lsn and term, with the primary (object, not shard: a primary's restart loses them) that took them. */
  pending: Array<{ p: PrimaryReplication; lsn: bigint; term: bigint }> = [];
  /** Every write acknowledged to a client: lsn → term. */
  readonly acked = new Map<bigint, bigint>();
  /** Every applied entry anywhere: lsn → term. */
  readonly applied = new Map<bigint, bigint>();
  readonly primaryOfVersion = new Map<bigint, ShardId>([[1n, 'a']]);
  pendingJoin: { shard: ShardId; version: bigint } | undefined;

  constructor(readonly minInSync: number) {
    for (const id of IDS) this.shards.set(id, { id, log: [], logStart: 1n, applied: 0n, version: 1n, role: { kind: 'down' } });
    this.shard('a').role = { kind: 'primary', p: new PrimaryReplication({ ...this.config(), lastLsn: 0n, lastTerm: 0n, leaseMs: LEASE, ackTimeoutMs: ACK_TIMEOUT, now: 0 }) };
    for (const id of ['b', 'c']) this.shard(id).role = { kind: 'follower', f: this.newFollower(this.shard(id), 'a') };
  }

  shard(id: ShardId): Shard {
    return this.shards.get(id)!;
  }
  config(): GroupConfig {
    return { version: this.map.version, inSync: [...this.map.inSync], learners: [...this.map.learners] };
  }
  newFollower(s: Shard, primary: ShardId): FollowerReplication {
    // termAt reads s.log each time: installing a snapshot replaces the array.
    return new FollowerReplication({ version: s.version, primary, lastLsn: BigInt(s.log.length), lastTerm: s.log.at(-1) ?? 0n, committedLsn: s.applied, graceMs: GRACE, now: this.now, termAt: (lsn) => s.log[Number(lsn) - 1] });
  }
  primaries(): Array<{ s: Shard; p: PrimaryReplication }> {
    return [...this.shards.values()].flatMap((s) => (s.role.kind === 'primary' ? [{ s, p: s.role.p }] : []));
  }
  mapPrimary(): PrimaryReplication | undefined {
    const r = this.shard(this.map.primary).role;
    return r.kind === 'primary' ? r.p : undefined;
  }
  /** A shard becomes a follower that has read the current map (restart, deposed primary); it kept its version's primary durably. */
  stepDown(s: Shard): FollowerReplication {
    const f = this.newFollower(s, this.primaryOfVersion.get(s.version)!);
    f.adoptConfig(this.map.version, this.map.primary, this.now);
    s.role = { kind: 'follower', f };
    return f;
  }
  link(from: ShardId, to: ShardId): Msg[] {
    const key = `${from}>${to}`;
    if (!this.links.has(key)) this.links.set(key, []);
    return this.links.get(key)!;
  }
  /**
   * The master's step: a new map version, pushed to the followers that are
   * up, and taken by its primary then or (primaryLate) later: followers may
   * refuse its batches meanwhile, and it must keep counting whom it counted.
   */
  mapStep(change: Partial<Pick<Group['map'], 'inSync' | 'learners'>>, primaryLate: boolean): void {
    this.map = { ...this.map, ...change, version: this.map.version + 1n };
    this.pendingJoin = undefined;
    this.primaryOfVersion.set(this.map.version, this.map.primary);
    if (!primaryLate) this.primaryTakesMap();
    for (const s of this.shards.values()) if (s.role.kind === 'follower') s.role.f.adoptConfig(this.map.version, this.map.primary, this.now);
  }

  primaryTakesMap(): void {
    const p = this.mapPrimary();
    if (p && p.version < this.map.version) must(p.reconfigure(this.config(), this.now).kind === 'ok', () => `reconfigure to ${this.map.version} refused`);
  }

  send(from: Shard, p: PrimaryReplication, to: ShardId, max: number, heartbeat: boolean): void {
    if (!heartbeat && p.catchUpPlan(to, from.logStart) === 'snapshot') {
      const lsn = p.committedLsn();
      must(p.snapshotSent(to, lsn, this.now), () => `snapshotSent refused lsn ${lsn}`);
      seen.snapshots++;
      this.link(from.id, to).push({ kind: 'snapshot', version: p.version, primary: from.id, lsn, terms: from.log.slice(0, Number(lsn)), sentAt: this.now });
      return;
    }
    const s = heartbeat ? p.heartbeat(to, this.now) : p.nextSend(to, max, this.now);
    if (s === undefined) return;
    must(s.toLsn < s.fromLsn || s.fromLsn >= from.logStart, () => `${from.id} sends lsn ${s.fromLsn}, truncated below ${from.logStart}`);
    const entries = [];
    for (let lsn = s.fromLsn; lsn <= s.toLsn; lsn++) entries.push({ lsn, term: from.log[Number(lsn) - 1]! });
    const m: AppendMessage = { version: s.version, primary: from.id, prevLsn: s.prevLsn, prevTerm: s.prevTerm ?? from.log[Number(s.prevLsn) - 1]!, entries, primaryCommitted: s.primaryCommitted };
    this.link(from.id, to).push({ kind: 'append', m, sentAt: s.sentAt });
  }

  deliver(from: ShardId, to: ShardId, drop: boolean): void {
    const msg = this.link(from, to).shift();
    const s = this.shard(to);
    if (msg === undefined || drop || s.role.kind === 'down') return;
    if (msg.kind === 'append') {
      if (s.role.kind === 'primary') {
        if (msg.m.version <= s.role.p.version) {
          this.link(to, from).push({ kind: 'reject', version: s.role.p.version, sentAt: msg.sentAt });
          return;
        }
        this.stepDown(s); // a newer primary's batch: this one was deposed
      }
      return this.onAppend(s, (s.role as { f: FollowerReplication }).f, from, msg.m, msg.sentAt);
    }
    if (msg.kind === 'snapshot') {
      if (s.role.kind !== 'follower') return;
      const f = s.role.f;
      const out = f.installSnapshot({ version: msg.version, primary: msg.primary, lsn: msg.lsn, term: msg.terms.at(-1) ?? 0n }, this.now);
      if (out.kind === 'installed') {
        must(msg.lsn >= s.applied, () => `${s.id} installed a snapshot at ${msg.lsn} behind its applied ${s.applied}`);
        s.log = [...msg.terms];
        s.applied = msg.lsn;
        this.link(to, from).push({ kind: 'ack', version: f.version, matchLsn: out.matchLsn, sentAt: msg.sentAt });
      } else this.link(to, from).push({ kind: 'reject', version: f.version, expectLsn: f.committedLsn() + 1n, sentAt: msg.sentAt });
      return;
    }
    if (s.role.kind !== 'primary') return;
    const p = s.role.p;
    const out = msg.kind === 'ack' ? p.onAck(from, msg, this.now) : p.onReject(from, msg, this.now);
    // Deposed: the caller reads the map; still primary there, it takes it, else it steps down.
    if (out.kind === 'deposed') {
      if (this.map.primary === s.id && p.version < this.map.version) {
        seen.resumed++;
        this.primaryTakesMap();
      }
      else this.stepDown(s);
    }
  }

  onAppend(s: Shard, f: FollowerReplication, from: ShardId, m: AppendMessage, sentAt: number): void {
    const before = f.version;
    const out = f.onAppend(m, this.now);
    if (out.kind === 'malformed' || out.kind === 'violation') throw new Error(`${s.id}: ${out.kind}: ${out.reason}`);
    if (out.kind === 'stale') {
      seen.staleRefusals++;
      this.link(s.id, from).push({ kind: 'reject', version: out.version, sentAt });
      return;
    }
    must(m.version >= before, () => `${s.id} at version ${before} accepted from version ${m.version}`);
    if (out.truncateAfter !== undefined) {
      must(out.truncateAfter >= s.applied, () => `${s.id} told to truncate after ${out.truncateAfter}, applied ${s.applied}`);
      if (BigInt(s.log.length) > out.truncateAfter) seen.truncations++;
      s.log.length = Number(out.truncateAfter);
    }
    if (out.kind === 'mismatch') {
      this.link(s.id, from).push({ kind: 'reject', version: f.version, expectLsn: out.expectLsn, sentAt });
      return;
    }
    if (out.storeFrom !== undefined) for (const e of m.entries) if (e.lsn >= out.storeFrom) s.log[Number(e.lsn) - 1] = e.term;
    s.applied = out.applyUpTo > s.applied ? out.applyUpTo : s.applied;
    this.link(s.id, from).push({ kind: 'ack', version: f.version, matchLsn: out.matchLsn, sentAt });
  }

  run(a: Action): void {
    const p = this.mapPrimary();
    const primaryShard = this.shard(this.map.primary);
    switch (a.t) {
      case 'write': {
        if (!p || !p.canWrite(this.now, this.minInSync).ok) return;
        const last = p.append(a.n);
        for (let lsn = last - BigInt(a.n) + 1n; lsn <= last; lsn++) {
          primaryShard.log.push(p.version);
          this.pending.push({ p, lsn, term: p.version });
        }
        must(BigInt(primaryShard.log.length) === last, () => `append returned ${last}, log has ${primaryShard.log.length}`);
        return;
      }
      case 'send': {
        const ps = this.primaries();
        const sender = ps[a.from % Math.max(1, ps.length)];
        if (sender && IDS[a.to] !== sender.s.id) this.send(sender.s, sender.p, IDS[a.to]!, a.max, a.heartbeat);
        return;
      }
      case 'deliver': {
        const busy = [...this.links].filter(([, q]) => q.length > 0);
        const pick = busy[a.link % Math.max(1, busy.length)];
        if (pick) this.deliver(pick[0].split('>')[0]!, pick[0].split('>')[1]!, a.drop);
        return;
      }
      case 'pump': // a good round on the network: the map's primary sends to everyone, all of it arrives, answers too
        if (!p) return;
        for (const id of [...this.map.inSync, ...this.map.learners]) {
          this.send(primaryShard, p, id, 3, false);
          this.send(primaryShard, p, id, 3, true);
        }
        for (let i = 0; i < 3; i++) for (const from of IDS) for (const to of IDS) while (this.link(from, to).length > 0) this.deliver(from, to, false);
        return;
      case 'tick':
        this.now += a.ms;
        return;
      case 'crash': {
        const s = this.shard(IDS[a.shard] ?? this.map.primary);
        if (s.id === this.map.primary) this.pendingJoin = undefined;
        s.role = { kind: 'down' };
        return;
      }
      case 'restart': {
        const down = IDS.filter((id) => this.shard(id).role.kind === 'down');
        if (down.length > 0) this.stepDown(this.shard(down[a.shard % down.length]!));
        return;
      }
      case 'failover':
        return this.failover(a.tellOld, a.tellOthers);
      case 'removeOverdue': {
        if (!p) return;
        const late = p.overdue(this.now);
        if (late.length === 0) return;
        seen.removals++;
        this.mapStep({ inSync: this.map.inSync.filter((id) => !late.includes(id)), learners: [...this.map.learners.filter((id) => !late.includes(id)), ...late] }, a.primaryLate);
        return;
      }
      case 'addLearner': {
        // A shard outside the group (a deposed or restarted primary) comes back as a learner.
        const outside = IDS.filter((id) => id !== this.map.primary && !this.map.inSync.includes(id) && !this.map.learners.includes(id) && this.shard(id).role.kind !== 'down');
        const s = outside.length > 0 ? this.shard(outside[a.shard % outside.length]!) : undefined;
        if (!p || s === undefined) return;
        if (s.role.kind === 'primary') this.stepDown(s);
        this.mapStep({ learners: [...this.map.learners, s.id] }, a.primaryLate);
        if (a.compact) this.compact(primaryShard, p); // its log is long gone: the learner will start from a snapshot
        return;
      }
      case 'proposeJoin': {
        const id = this.map.learners[a.shard % Math.max(1, this.map.learners.length)];
        // The master's step is a compare-and-set on the primary's version: a primary behind the map proposes nothing.
        if (p && id !== undefined && this.pendingJoin === undefined && 'ok' in p.proposeJoin(id)) this.pendingJoin = { shard: id, version: p.version };
        return;
      }
      case 'compact': {
        if (p) this.compact(primaryShard, p);
        return;
      }
      case 'applyJoin': {
        const j = this.pendingJoin;
        if (!p || j === undefined || j.version !== this.map.version) return;
        seen.joins++;
        this.mapStep({ inSync: [...this.map.inSync, j.shard], learners: this.map.learners.filter((id) => id !== j.shard) }, a.primaryLate);
        return;
      }
      case 'primaryTakesMap':
        return this.primaryTakesMap();
    }
  }

  /** The caller truncates its log below what every follower still needs, and never what it has not applied. */
  compact(s: Shard, p: PrimaryReplication): void {
    const upTo = p.retainFrom() < s.applied + 1n ? p.retainFrom() : s.applied + 1n;
    if (upTo > s.logStart) s.logStart = upTo;
  }

  /**
   * The master's failover: only when the primary is down (or restarted, so
   * not primary any more) or an in-sync follower asks (its lease is then
   * gone). A restarted primary is a candidate too: it is in the in-sync set.
   */
  failover(tellOld: boolean, tellOthers: boolean): void {
    const old = this.shard(this.map.primary);
    const asks = this.map.inSync.some((id) => {
      const r = this.shard(id).role;
      return r.kind === 'follower' && r.f.version === this.map.version && r.f.shouldAskPromotion(this.now); // an ask about an older map is answered with the map
    });
    if (old.role.kind === 'primary' && !asks) return;
    const up = [...this.shards.values()].filter((s) => s.role.kind === 'follower');
    const inSync = [old.id, ...this.map.inSync];
    const chosen = chooseNewPrimary(
      up.map((s) => {
        const f = (s.role as { f: FollowerReplication }).f;
        return { shard: s.id, inSync: inSync.includes(s.id), lastLsn: f.lastLsn, lastTerm: f.lastTerm };
      }),
    );
    if (chosen === undefined) return;
    must(inSync.includes(chosen), () => `promoted ${chosen}, outside the in-sync set ${inSync.join(',')}`);
    seen.failovers++;
    const s = this.shard(chosen);
    this.map = { version: this.map.version + 1n, primary: chosen, inSync: this.map.inSync.filter((id) => id !== chosen), learners: this.map.learners };
    this.pendingJoin = undefined;
    must(!this.primaryOfVersion.has(this.map.version), () => `version ${this.map.version} already had a primary`);
    this.primaryOfVersion.set(this.map.version, chosen);
    const p = (s.role as { f: FollowerReplication }).f.promote(this.config(), { leaseMs: LEASE, ackTimeoutMs: ACK_TIMEOUT, now: this.now });
    if (!(p instanceof PrimaryReplication)) throw new Error(p.reason);
    s.role = { kind: 'primary', p };
    s.version = this.map.version;
    this.holdsAcked(chosen); // the new primary has every acknowledged write
    for (const o of this.shards.values()) {
      // The map push may not reach a follower (it then learns the version from the new primary's first batch).
      if (o.role.kind === 'follower' && (o.id === old.id ? tellOld : tellOthers)) o.role.f.adoptConfig(this.map.version, chosen, this.now);
      if (o.role.kind === 'primary' && o.id === old.id && tellOld) this.stepDown(o);
    }
  }

  holdsAcked(id: ShardId): void {
    const log = this.shard(id).log;
    for (const [lsn, term] of this.acked) must(log[Number(lsn) - 1] === term, () => `${id} lacks acknowledged lsn ${lsn} term ${term} (has ${log[Number(lsn) - 1]})`);
  }

  /** Client acknowledgements, applying, durable versions; then every invariant. */
  settle(): void {
    for (const { s, p } of this.primaries()) {
      if (p.deposed === undefined && p.committedLsn() > s.applied) s.applied = p.committedLsn();
      this.pending = this.pending.filter((w) => {
        if (w.p !== p || !p.canAcknowledge(w.lsn, this.now)) return true;
        must(s.log[Number(w.lsn) - 1] === w.term && (this.acked.get(w.lsn) ?? w.term) === w.term, () => `acknowledging lsn ${w.lsn} term ${w.term} twice or over another entry`);
        this.acked.set(w.lsn, w.term);
        seen.acked++;
        return false;
      });
    }
    const live = new Set(this.primaries().map(({ p }) => p));
    this.pending = this.pending.filter((w) => live.has(w.p)); // the clients of a primary gone or deposed get an error
    let leases = 0;
    for (const s of this.shards.values()) {
      if (s.role.kind === 'down') continue;
      const v = s.role.kind === 'primary' ? s.role.p.version : s.role.f.version;
      must(v >= s.version, () => `${s.id}'s version went from ${s.version} to ${v}`);
      s.version = v;
      if (s.role.kind === 'primary') {
        must(this.primaryOfVersion.get(v) === s.id, () => `${s.id} primary at version ${v}, which is ${this.primaryOfVersion.get(v)}'s`);
        must(s.role.p.lastLsn === BigInt(s.log.length), () => `${s.id}'s primary lastLsn is not its log's`);
        if (s.role.p.leaseHolds(this.now)) leases++;
        // A read it serves sees every acknowledged write (no stale reads).
        if (s.role.p.canServeReads(this.now).ok) for (const lsn of this.acked.keys()) must(lsn <= s.applied, () => `${s.id} serves reads at applied ${s.applied} without acknowledged lsn ${lsn}`);
      } else {
        const f = s.role.f;
        must(f.lastLsn === BigInt(s.log.length) && f.lastTerm === (s.log.at(-1) ?? 0n), () => `${s.id}'s follower last (${f.lastLsn}, ${f.lastTerm}) is not its log's`);
      }
    }
    must(leases <= 1, () => `${leases} primaries hold a lease at ${this.now}`);
    // Every acknowledged write is on every in-sync member (up or down: logs are durable) with its term.
    for (const id of [this.map.primary, ...this.map.inSync]) this.holdsAcked(id);
    // Applied prefixes agree, and stay in the log.
    for (const s of this.shards.values()) {
      must(BigInt(s.log.length) >= s.applied, () => `${s.id} applied ${s.applied} past its log's ${s.log.length}`);
      for (let i = 0; i < Number(s.applied); i++) {
        const lsn = BigInt(i + 1);
        must(s.log[i] === (this.applied.get(lsn) ?? s.log[i]), () => `${s.id} applied term ${s.log[i]} at lsn ${lsn}, another replica ${this.applied.get(lsn)}`);
        this.applied.set(lsn, s.log[i]!);
      }
    }
  }
}
