/**
 * The primary's side of replication on a shard (docs/design.md "Replication
 * and failover"): for every range this shard is the primary of and that has
 * other copies, it numbers the writes (the store's sequencer), streams them
 * to each follower and learner over a long-lived Replicate stream, and holds
 * back each client's answer until every in-sync member has the write and the
 * lease holds. The bookkeeping (what to send, what is committed, the lease)
 * is the pure PrimaryReplication; the follower's side is replica-apply.ts.
 *
 * One link per (range, follower): one request in flight, each carrying every
 * entry waiting (batched), or an empty append every leaseMs/4 so the lease
 * stays renewed. A follower whose log cannot continue from what this primary
 * keeps (too far behind, or holding entries this primary lacks) gets a
 * snapshot of the range first, as a move's copy does.
 *
 * Ranges held alone (replicationFactor 1) have no group here: the sequencer
 * skips them and nothing waits, so a single copy behaves as before.
 */
import type { ClientDuplexStream } from '@grpc/grpc-js';
import type { Logger } from 'winston';
import type { ReplicateRequest, ReplicateResponse, ShardControlServiceClient } from '../../proto/gen/cairn/v1/control.js';
import { CairnError } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import { endToProto } from '../common/hash.js';
import { metadataFor, type ClientPool } from '../common/grpc.js';
import { addressOf, inSyncOf, learnersOf, replicasOf, type ClusterMap, type MapRange } from '../common/map.js';
import { findRangeIndex, rangeKey, showRange, type HashRange } from '../common/ranges.js';
import { hashOfKey } from './keys.js';
import { positionKey, positionToJson, projectEntry, strictlyContains, type LogEntry, type RangeLog, type RangeLogs } from './replica-log.js';
import { PrimaryReplication } from './replication.js';
import { maxLsn } from './replication-primary.js';
import type { BatchOp, RawOp, ShardStore } from './store.js';
import { packOps } from './replica-wire.js';
import { opsBytes, toWireOps } from './transfer-wire.js';

const NO_BYTES = Buffer.alloc(0);

/** Replication timings (shard config). */
export interface ReplicationTimings {
  /** A primary that has not heard from an in-sync follower for this long serves nothing. */
  leaseMs: number;
  /** An in-sync follower that leaves a write unacknowledged this long is reported to the master. */
  ackTimeoutMs: number;
}

export const DEFAULT_REPLICATION_TIMINGS: ReplicationTimings = { leaseMs: 2000, ackTimeoutMs: 3000 };

/** Bytes of entries in one append; a snapshot chunk is as big. */
const APPEND_BYTES = 1024 * 1024;

/** What the replicator needs from its shard (ShardNode implements it). */
export interface ReplicatorHost {
  readonly log: Logger;
  readonly nodeId: string;
  readonly map: ClusterMap;
  readonly store: Pick<ShardStore, 'metaOp' | 'setSequencer' | 'drain' | 'exportRange'>;
  readonly rangeLogs: RangeLogs;
  readonly controlPeers: ClientPool<ShardControlServiceClient>;
  readonly serverToken: { get(): string };
  /** A follower answered with a newer version: fetch the map. */
  refreshMap(): Promise<void>;
}

/** The replica group a range has in the map, when it has more than one member. */
export function groupOf(r: MapRange): { followers: string[]; learners: string[] } | undefined {
  const followers = replicasOf(r).filter((s) => s !== r.shardId);
  const learners = [...learnersOf(r)];
  return followers.length || learners.length ? { followers, learners } : undefined;
}

/** Whether a raw op's key hashes into `r`. */
function inRange(r: HashRange): (op: RawOp) => boolean {
  return (op) => {
    const h = hashOfKey(op.key);
    return r.start <= h && h < r.end;
  };
}

/** Followers that receive the stream and count for nothing: learners, and replicas out of sync (catching up). */
function nonVoting(r: MapRange): string[] {
  const inSync = inSyncOf(r);
  return [...replicasOf(r).filter((s) => !inSync.includes(s)), ...learnersOf(r)];
}

/** One follower of one range, at the group version the primary saw (a heartbeat's overdue and caught-up lists). */
export interface FollowerReport {
  range: HashRange;
  version: bigint;
  follower: string;
}

/**
 * How many members must be in sync for a write: min(2, the range's replicas).
 * Counted on the replicas the group has (learners excluded), so a range whose
 * factor was just raised keeps taking writes while its new copies are made.
 */
export function minInSyncOf(r: MapRange): number {
  return Math.min(2, replicasOf(r).length);
}

interface Waiter {
  lsn: bigint;
  since: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/**
 * Wakes the links of a group when there is something new to send. A link
 * notes the generation before it sends and waits only if nothing was
 * signalled since: a signal while its heartbeat was in flight is not lost
 * (defect: such a write waited out the whole heartbeat interval, a quarter
 * of the lease, before it was sent; every write paused ~500 ms now and then).
 */
export class WorkSignal {
  private generation = 0;
  private wake: Array<() => void> = [];

  get seen(): number {
    return this.generation;
  }

  signal(): void {
    this.generation++;
    const w = this.wake;
    this.wake = [];
    for (const f of w) f();
  }

  /** Resolves at the next signal, at once if one came after `seen`, or after ms. */
  wait(ms: number, seen: number): Promise<void> {
    if (seen !== this.generation) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      t.unref();
      this.wake.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}

/** One range this shard is the primary of. */
class PrimaryGroup {
  readonly links = new Map<string, FollowerLink>();
  readonly waiters: Waiter[] = [];
  /**
   * The last lsn numbered for a batch still on its way to disk (0 when none). LevelDB shows a batch to
   * readers before its promise resolves here, so a read may return rows of an entry the log does not hold
   * yet: what a read waits for is the numbered end, not the log's.
   */
  numberedLsn = 0n;
  /** Set once the range was split: its pieces this shard is the primary of, which take what this group still numbered. */
  splitInto: Array<{ group: PrimaryGroup; inPart: (op: RawOp) => boolean }> | undefined;
  /** Wakes links when entries were added or the configuration changed. */
  readonly work = new WorkSignal();
  closed = false;

  constructor(
    readonly range: MapRange,
    readonly log: RangeLog,
    readonly state: PrimaryReplication,
    readonly servesFrom: number,
  ) {}

  get minInSync(): number {
    return minInSyncOf(this.range);
  }

  /** Why the range cannot be served now (the lease, or, for writes, too few in sync), or undefined. */
  problem(now: number, write: boolean): string | undefined {
    if (now < this.servesFrom) return `a new primary waits ${this.servesFrom - now} ms for a deposed one's lease to run out`;
    if (write) {
      const ok = this.state.canWrite(now, this.minInSync);
      return ok.ok ? undefined : ok.reason;
    }
    return this.state.leaseProblem(now);
  }

  signal(): void {
    this.work.signal();
  }

  /** Resolves the waiters that are committed now (and the lease holds). */
  settle(now = Date.now()): void {
    if (this.problem(now, false)) return;
    const committed = this.state.committedLsn();
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (w.lsn <= committed) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  fail(err: CairnError): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(err);
    this.signal();
  }
}

export class Replicator {
  private readonly groups = new Map<string, PrimaryGroup>();
  /** Bumped whenever `groups` changes (groupOfHash's cache). */
  private groupsChanged = 0;
  private byIndex: { map: ClusterMap | undefined; groups: number; previous: ClusterMap | undefined; at: Array<PrimaryGroup | null | undefined> } = { map: undefined, groups: -1, previous: undefined, at: [] };
  private timer: NodeJS.Timeout | undefined;
  /** The map of the last onMap: who was the primary of each range before. */
  private previous: ClusterMap | undefined;
  /** In-sync followers late at the last tick, and followers ready to join: the next heartbeat tells the master. */
  overdue: FollowerReport[] = [];
  caughtUp: FollowerReport[] = [];

  constructor(
    private readonly host: ReplicatorHost,
    readonly timings: ReplicationTimings = DEFAULT_REPLICATION_TIMINGS,
  ) {
    host.store.setSequencer({ idle: () => this.idle(), refusal: (raw) => this.refusal(raw), number: (raw, sync) => this.sequence(raw, sync) });
    this.timer = setInterval(() => this.tick(), Math.max(50, Math.floor(timings.leaseMs / 4)));
    this.timer.unref();
  }

  /** Takes the map's groups: starts, reconfigures or ends the groups this shard is the primary of. */
  async onMap(map: ClusterMap): Promise<void> {
    const me = this.host.nodeId;
    const before = this.previous;
    this.previous = map;
    // Primary in the version just before: no other primary can have held a lease since.
    const wasPrimary = (r: MapRange) =>
      !!before?.ranges.some((x) => x.start <= r.start && r.end <= x.end && x.shardId === me && (x.version ?? 0n) >= (r.version ?? 0n) - 1n);
    const wanted = new Map(map.ranges.filter((r) => r.shardId === me && groupOf(r)).map((r) => [rangeKey(r), r]));
    this.splitGroups(map, wanted); // before any await: from here on the pieces number the writes
    for (const [key, g] of this.groups) {
      const next = wanted.get(key);
      if (!next) {
        this.end(key, g, `shard ${me} is no longer the primary of ${showRange(g.range)} (map epoch ${map.epoch})`);
        continue;
      }
      if ((next.version ?? 0n) > g.state.version) {
        const out = g.state.reconfigure({ version: next.version ?? 0n, inSync: inSyncOf(next).filter((s) => s !== me), learners: nonVoting(next) }, Date.now());
        if (out.kind === 'refused') this.end(key, g, `reconfigure refused: ${out.reason}`);
        else {
          (g as { range: MapRange }).range = next;
          this.startLinks(g, map);
          g.settle();
          g.signal();
        }
      }
    }
    const starting = [...wanted].filter(([key]) => !this.groups.has(key));
    // A batch an ended group numbered may still be on its way to disk: its entries reach the log only once
    // written, and a new group's state must start after them (defect: it started before, its lsns fell behind
    // the log's, and every follower it snapshotted refused its next batch, forever).
    if (starting.length) await this.host.store.drain();
    for (const [key, r] of starting) {
      if (this.groups.has(key)) continue;
      const log = await this.host.rangeLogs.get(r);
      if (this.groups.has(key) || this.host.map.epoch !== map.epoch) continue; // a newer map came meanwhile: it decides
      const state = new PrimaryReplication({
        version: r.version ?? 0n,
        inSync: inSyncOf(r).filter((s) => s !== me),
        learners: nonVoting(r),
        lastLsn: log.lastLsn,
        lastTerm: log.lastTerm,
        committedLsn: 0n,
        leaseMs: this.timings.leaseMs,
        ackTimeoutMs: this.timings.ackTimeoutMs,
        now: Date.now(),
        termAt: (lsn) => log.termAt(lsn),
      });
      // A new primary serves only once the lease a deposed one may still hold has run out (after a
      // restart too: the map may have changed while this process was down).
      const g = new PrimaryGroup(r, log, state, wasPrimary(r) ? 0 : Date.now() + this.timings.leaseMs);
      this.groups.set(key, g);
      this.groupsChanged++;
      this.host.log.info('primary of a replicated range', { range: showRange(r), version: String(r.version ?? 0n), followers: state.inSync, learners: state.learners, lastLsn: String(log.lastLsn) });
      this.startLinks(g, map);
    }
  }

  private end(key: string, g: PrimaryGroup, why: string): void {
    this.groups.delete(key);
    this.groupsChanged++;
    g.fail(new CairnError('NOT_READY', `${why}; retry`, { retryAfterMs: 100 }));
  }

  /** The group serving a hash, if this shard is the primary of a replicated range holding it. */
  private groupOfHash(hash: bigint): PrimaryGroup | undefined {
    if (this.groups.size === 0) return undefined;
    const map = this.host.map;
    const i = findRangeIndex(map.ranges, hash);
    if (i < 0) return this.wholeGroupOf(hash, map);
    // Called per op and per row of every write: the group of each of the map's ranges is looked up (by its
    // key, two bigints printed) once per map and set of groups, not per call.
    let c = this.byIndex;
    if (c.map !== map || c.groups !== this.groupsChanged || c.previous !== this.previous) {
      c = this.byIndex = { map, groups: this.groupsChanged, previous: this.previous, at: new Array<PrimaryGroup | null | undefined>(map.ranges.length) };
    }
    let g = c.at[i];
    if (g === undefined) g = c.at[i] = this.groups.get(rangeKey(map.ranges[i]!)) ?? null;
    return g ?? this.wholeGroupOf(hash, map);
  }

  /** The group of no range of the map: while the replicator has not seen the map yet, the group of a whole range split in it. */
  private wholeGroupOf(hash: bigint, map: ClusterMap): PrimaryGroup | undefined {
    if (this.previous === map) return undefined;
    // The shard took a map this replicator has not seen yet (onMap comes after some awaits): a range
    // split in it is still numbered by its whole range's group until onMap splits that group.
    for (const whole of this.groups.values()) if (whole.range.start <= hash && hash < whole.range.end) return whole;
    return undefined;
  }

  /**
   * A range this shard is the primary of was split (docs/design.md "Splitting
   * a replicated range"): each piece it stays the primary of continues the
   * whole range's log, projected (same lsns and terms, each entry with only
   * the piece's ops), so every replica's piece lines up with ours at the
   * lsn its whole log had. Synchronous, and the writer numbers one batch at
   * a time: a batch numbered by the whole group and not yet written reaches
   * the pieces when it is (`splitInto`), before any write they number.
   */
  private splitGroups(map: ClusterMap, wanted: ReadonlyMap<string, MapRange>): void {
    for (const [key, whole] of [...this.groups]) {
      if (wanted.has(key)) continue;
      const pieces = map.ranges.filter((r) => strictlyContains(whole.range, r));
      const mine = pieces.filter((r) => wanted.has(rangeKey(r)) && !this.groups.has(rangeKey(r)));
      if (mine.length === 0) continue;
      const children: PrimaryGroup[] = [];
      for (const r of mine) {
        const log = whole.log.projectedOnto(inRange(r));
        const state = new PrimaryReplication({
          version: whole.state.version,
          inSync: whole.state.inSync,
          learners: whole.state.learners,
          lastLsn: log.lastLsn,
          lastTerm: log.lastTerm,
          // Committed in the whole log is on every in-sync follower, so committed in each piece.
          committedLsn: whole.state.committedLsn(),
          leaseMs: this.timings.leaseMs,
          ackTimeoutMs: this.timings.ackTimeoutMs,
          now: Date.now(),
          termAt: (lsn) => log.termAt(lsn),
        });
        const child = new PrimaryGroup(r, log, state, 0);
        // A batch the whole range numbered is still on its way to disk: a read of the piece waits for it too.
        child.numberedLsn = whole.numberedLsn;
        this.host.rangeLogs.put(r, log);
        this.groups.set(rangeKey(r), child);
        this.groupsChanged++;
        children.push(child);
      }
      whole.splitInto = children.map((c) => ({ group: c, inPart: inRange(c.range) }));
      // A write waiting for its entry to be committed waits for it in every piece; a piece now primaried
      // elsewhere cannot tell us, so its writers retry.
      const everyPieceMine = pieces.length === mine.length;
      const waiting = everyPieceMine ? whole.waiters.splice(0) : [];
      for (const w of waiting) Promise.all(children.map((c) => this.waitCommitted(c, w.lsn))).then(w.resolve, w.reject);
      this.end(key, whole, `${showRange(whole.range)} was split (map epoch ${map.epoch})`);
      this.host.log.info('a replicated range was split: its pieces continue its log', { range: showRange(whole.range), pieces: mine.map(showRange), lastLsn: String(whole.log.lastLsn), version: String(whole.state.version) });
      for (const c of children) this.startLinks(c, map);
    }
  }

  /** The replicated range holding `hash` when no group here serves it (this shard is not, no longer or not yet its primary). */
  private replicatedWithoutGroup(hash: bigint): MapRange | undefined {
    if (this.groupOfHash(hash)) return undefined;
    const r = this.host.map.ranges[findRangeIndex(this.host.map.ranges, hash)];
    return r && groupOf(r) ? r : undefined;
  }

  /**
   * Throws UNAVAILABLE unless the range of `hash` may be served here now: a
   * replicated range needs its lease (every in-sync follower answered lately)
   * and, for writes, minInSync members. A single copy always may.
   */
  assertServing(hash: bigint, write: boolean): void {
    if (this.idle()) return; // nothing replicated: a single copy always may
    const g = this.groupOfHash(hash);
    if (!g) {
      const r = this.replicatedWithoutGroup(hash);
      if (r) throw new CairnError('NOT_READY', `range ${showRange(r)} is not ready to serve on shard ${this.host.nodeId} yet; retry`, { retryAfterMs: 100 });
      return;
    }
    const problem = g.problem(Date.now(), write);
    if (problem) throw new CairnError('NOT_READY', `range ${showRange(g.range)} on shard ${this.host.nodeId}: ${problem}`, { retryAfterMs: 200 });
  }

  /**
   * Resolves once everything this shard has written to the replicated ranges
   * holding these hashes is on every in-sync member (and the lease holds): a
   * write may then be acknowledged, and what a read returned is committed.
   */
  async committed(hashes: Iterable<bigint>): Promise<void> {
    if (this.idle()) return; // no group here and nothing replicated: nothing to wait for, and every hash may be served (hashes is not read)
    const seen = new Set<PrimaryGroup>();
    for (const h of hashes) {
      const g = this.groupOfHash(h);
      if (g) seen.add(g);
      // The group that numbered it ended and none took over here: whether the followers have it is unknown.
      else this.assertServing(h, false);
    }
    // What a read returned may be of a batch still on its way to disk (numberedLsn): it waits for that too.
    await Promise.all([...seen].map((g) => this.waitCommitted(g, maxLsn(g.numberedLsn, g.log.lastLsn))));
  }

  private waitCommitted(g: PrimaryGroup, lsn: bigint): Promise<void> {
    if (g.closed) return Promise.reject(new CairnError('NOT_READY', `range ${showRange(g.range)}: no longer the primary here; retry`, { retryAfterMs: 100 }));
    if (lsn <= g.state.committedLsn() && !g.problem(Date.now(), false)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      g.waiters.push({ lsn, since: Date.now(), resolve, reject });
      g.signal();
    });
  }

  // ------------------------------------------------------------ numbering writes

  /** The map `idle` last looked at, and whether it has a replicated range. */
  private idleMap: ClusterMap | undefined;
  private idleMapReplicated = false;

  /**
   * True when no write can be refused or numbered now: no group here, and no
   * range of the map has a replica group (every range a single copy), so the
   * writer need not build the per-row op list for `refusal` and `number`.
   */
  private idle(): boolean {
    if (this.groups.size > 0) return false;
    const map = this.host.map;
    if (map !== this.idleMap) {
      this.idleMapReplicated = map.ranges.some((r) => groupOf(r) !== undefined);
      this.idleMap = map;
    }
    return !this.idleMapReplicated;
  }

  /** A write to a replicated range is numbered by its group here, or not written at all. */
  private refusal(raw: RawOp[]): CairnError | undefined {
    for (const op of raw) {
      const r = this.replicatedWithoutGroup(hashOfKey(op.key));
      if (r) return new CairnError('NOT_READY', `range ${showRange(r)} is not served by shard ${this.host.nodeId} now (map epoch ${this.host.map.epoch}, primary ${r.shardId}); retry`, { retryAfterMs: 100 });
    }
    return undefined;
  }


  private sequence(raw: RawOp[], sync: boolean): { ops: BatchOp[]; written(ok: boolean): void } | undefined {
    if (this.groups.size === 0) return undefined;
    const per = new Map<PrimaryGroup, RawOp[]>();
    for (const op of raw) {
      const g = this.groupOfHash(hashOfKey(op.key));
      if (!g) continue;
      const list = per.get(g);
      if (list) list.push(op);
      else per.set(g, [op]);
    }
    if (per.size === 0) return undefined;
    const entries: Array<[PrimaryGroup, LogEntry]> = [];
    const ops: BatchOp[] = [];
    for (const [g, list] of per) {
      const entry: LogEntry = { lsn: g.log.lastLsn + 1n, term: g.state.version, ops: list, sync, bytes: opsBytes(list) };
      entries.push([g, entry]);
      g.numberedLsn = entry.lsn;
      const after = g.log.position();
      if (after.terms.at(-1)?.[0] !== entry.term) after.terms.push([entry.term, entry.lsn]);
      ops.push(this.host.store.metaOp(positionKey(g.range), positionToJson({ ...after, lastLsn: entry.lsn, lastTerm: entry.term })));
    }
    return {
      ops,
      written: (ok) => {
        const pieces = (g: PrimaryGroup) => (g.splitInto ?? []).map((p) => p.group);
        for (const [g] of entries) for (const x of [g, ...pieces(g)]) x.numberedLsn = 0n;
        if (!ok) {
          // Nothing of the batch was written: a read that waited for its entries waits for nothing more.
          for (const [g] of entries) {
            for (const x of [g, ...pieces(g)]) {
              for (const w of x.waiters) if (w.lsn > x.log.lastLsn) w.lsn = x.log.lastLsn;
              x.settle();
            }
          }
          return;
        }
        for (const [g, entry] of entries) {
          g.log.append(entry);
          g.state.append(1, entry.term);
          g.settle(); // alone in sync, it is committed now: a read waiting for it may answer
          g.signal();
          // Numbered by a range's group that was split meanwhile: each piece takes its part (splitGroups).
          for (const { group, inPart } of g.splitInto ?? []) {
            group.log.append(projectEntry(entry, inPart));
            group.state.append(1, entry.term);
            group.settle();
            group.signal();
          }
        }
      },
    };
  }

  // ------------------------------------------------------------ links

  private startLinks(g: PrimaryGroup, map: ClusterMap): void {
    const members = [...g.state.inSync, ...g.state.learners];
    for (const [id, link] of g.links) {
      if (!members.includes(id)) {
        link.stop();
        g.links.delete(id);
      }
    }
    for (const id of members) {
      if (g.links.has(id)) continue;
      const link = new FollowerLink(this, g, id, () => addressOf(this.host.map, id) ?? addressOf(map, id) ?? '');
      g.links.set(id, link);
      void link.run();
    }
  }

  /**
   * Periodic: notes the overdue followers and those ready to join the in-sync
   * set (the heartbeat carries both to the master), and re-checks waiters
   * (the lease may have come back). A follower ready to join counts for
   * commit from now on (proposeJoin), so no write is acknowledged without it
   * while the master adds it.
   */
  private tick(): void {
    const now = Date.now();
    const overdue: FollowerReport[] = [];
    const caughtUp: FollowerReport[] = [];
    for (const g of this.groups.values()) {
      const report = (follower: string): FollowerReport => ({ range: g.range, version: g.state.version, follower });
      for (const f of g.state.overdue(now)) overdue.push(report(f));
      for (const [f, link] of g.links) if (link.needsSnapshot && g.state.inSync.includes(f) && !overdue.some((o) => o.follower === f)) overdue.push(report(f));
      // Only a follower answering now may start counting: one that died would hold every write back.
      for (const f of g.state.learners) if (g.links.get(f)?.readyToJoin(now - this.timings.leaseMs) && 'ok' in g.state.proposeJoin(f)) caughtUp.push(report(f));
      const oldest = g.waiters.reduce((m, w) => Math.min(m, w.since), now);
      if (now - oldest > this.timings.ackTimeoutMs) {
        this.host.log.warn('writes wait for their followers', { range: showRange(g.range), version: String(g.state.version), waiting: g.waiters.length, committedLsn: String(g.state.committedLsn()), lastLsn: String(g.log.lastLsn), lease: g.problem(now, false) ?? 'holds' });
      }
      g.settle(now);
      g.signal();
    }
    for (const o of overdue) if (!this.overdue.some((x) => x.follower === o.follower && x.version === o.version)) this.host.log.warn('an in-sync follower is overdue: writes to the range wait until it answers or the master takes it out of the in-sync set', { range: showRange(o.range), version: String(o.version), follower: o.follower });
    this.overdue = overdue;
    this.caughtUp = caughtUp;
  }

  get hostRef(): ReplicatorHost {
    return this.host;
  }

  close(): void {
    clearInterval(this.timer);
    for (const [key, g] of this.groups) this.end(key, g, 'the shard is stopping');
    this.host.store.setSequencer(undefined);
  }
}

/** One follower's stream from this primary. */
class FollowerLink {
  private stopped = false;
  /** When this link last sent appends or a heartbeat (0: never; the first message goes at once). */
  private lastSentAt = 0;
  /** The heartbeat interval: an idle link sends an empty append this often, so the lease stays renewed. */
  private get beatMs(): number {
    return Math.floor(this.r.timings.leaseMs / 4);
  }
  /** When the follower last answered on this link. */
  private lastAnswerAt = 0;
  /**
   * A learner is a new copy: the range's rows from before its log (a range
   * that had one copy, or rows a log no longer keeps) reach it only in a
   * snapshot, so it gets one before anything else, however its log ends.
   */
  private snapshotDone = false;
  /** An in-sync follower this primary can bring up to date only by a snapshot: reported overdue until the master takes it out of sync. */
  needsSnapshot = false;

  answeredSince(t: number): boolean {
    return this.lastAnswerAt >= t;
  }

  /** May the master count this follower in sync? It answers, and a learner has had its snapshot. */
  readyToJoin(since: number): boolean {
    return this.answeredSince(since) && (this.snapshotDone || !this.isLearner());
  }

  private isLearner(): boolean {
    return learnersOf(this.g.range).includes(this.follower);
  }
  private stream: ClientDuplexStream<ReplicateRequest, ReplicateResponse> | undefined;

  constructor(
    private readonly r: Replicator,
    private readonly g: PrimaryGroup,
    readonly follower: string,
    private readonly address: () => string,
  ) {}

  stop(): void {
    this.stopped = true;
    this.stream?.cancel();
  }

  private get live(): boolean {
    return !this.stopped && !this.g.closed;
  }

  async run(): Promise<void> {
    let backoff = 100;
    while (this.live) {
      try {
        await this.session();
        backoff = 100;
      } catch (err) {
        if (!this.live) return;
        this.r.hostRef.log.debug('replication stream ended; reconnecting', { range: showRange(this.g.range), follower: this.follower, error: (err as Error).message });
      }
      await new Promise((res) => setTimeout(res, backoff).unref());
      backoff = Math.min(backoff * 2, 1000);
    }
  }

  /** One stream: appends (or a snapshot) until it breaks or the link stops. */
  private async session(): Promise<void> {
    const host = this.r.hostRef;
    const client = host.controlPeers.get(this.address());
    // waitForReady: a channel whose peer was down keeps trying to connect rather than failing each call with its last error.
    const md = metadataFor(host.serverToken.get());
    md.setOptions({ waitForReady: true });
    const stream = client.replicate(md);
    // Cancelling the stream (below, and in stop) emits 'error' (CANCELLED): unheard, it would end the process.
    stream.on('error', () => undefined);
    this.stream = stream;
    const answers = stream[Symbol.asyncIterator]() as AsyncIterator<ReplicateResponse>;
    // What the last stream sent and never heard back about may be lost: send again after what the follower acknowledged.
    this.g.state.reconnected(this.follower);
    // A new stream starts with a message at once (it probes the follower's log).
    this.lastSentAt = 0;
    /** The follower said it reads packed ops (an older one would take packed entries as entries without ops). */
    let packedOk = false;
    const ask = async (req: Partial<ReplicateRequest>): Promise<ReplicateResponse> => {
      const g = this.g;
      this.lastSentAt = Date.now();
      stream.write({
        start: g.range.start,
        end: endToProto(g.range.end),
        version: g.state.version,
        epoch: host.map.epoch,
        primary: host.nodeId,
        prevLsn: 0n,
        prevTerm: 0n,
        entries: [],
        committedLsn: g.state.committedLsn(),
        snapshotBegin: false,
        snapshotOps: [],
        snapshotEnd: false,
        snapshotLsn: 0n,
        snapshotTerm: 0n,
        ...req,
      });
      // A follower that stops answering (paused, or a connection that died without a reset) must not hold the
      // link: past the ack timeout the stream is dropped and opened again.
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer from ${this.follower} within ${this.r.timings.ackTimeoutMs} ms`)), this.r.timings.ackTimeoutMs);
      });
      const next = await Promise.race([answers.next(), late]).finally(() => clearTimeout(timer));
      if (next.done) throw new Error('the follower closed the stream');
      this.lastAnswerAt = Date.now();
      if (next.value.readsPackedOps) packedOk = true;
      return next.value;
    };
    try {
      while (this.live) {
        const now = Date.now();
        const seen = this.g.work.seen;
        let send = this.g.state.nextSend(this.follower, 10_000, now);
        if (!send) {
          const beat = this.g.state.heartbeat(this.follower, now);
          if (!beat) return;
          // Nothing new: an empty message only when one is due. Every answer renews the lease, so right after
          // one (defect: each batch's answer was followed at once by an empty message, a fifth of all messages
          // under load) the link waits for work or for the heartbeat interval instead.
          const idle = now - this.lastSentAt;
          if (idle < this.beatMs) {
            await this.g.work.wait(this.beatMs - idle, seen);
            continue;
          }
          send = beat;
        }
        let entries: LogEntry[] | undefined = [];
        if (send.toLsn >= send.fromLsn) {
          entries = this.g.log.entriesFrom(send.fromLsn, APPEND_BYTES);
          if (entries) entries = entries.filter((e) => e.lsn <= send.toLsn);
        }
        const prevTerm = send.prevTerm ?? this.g.log.termAt(send.prevLsn);
        if (entries === undefined || prevTerm === undefined) {
          await this.snapshot(ask, `entries from ${send.fromLsn} are no longer kept`);
          continue;
        }
        if (!this.snapshotDone && this.isLearner()) {
          await this.snapshot(ask, 'a new copy');
          continue;
        }
        if (entries.length) failpoint('primary-before-replicate'); // `crash`: writes applied here that no follower has
        const sentAt = Date.now();
        const res = await ask({
          prevLsn: send.prevLsn,
          prevTerm,
          // Packed once per entry for every follower and resend, to a follower that reads them so; else one TransferOp per op.
          entries: entries.map((e) =>
            packedOk ? { lsn: e.lsn, term: e.term, ops: [], sync: e.sync, packedOps: (e.packed ??= packOps(e.ops)) } : { lsn: e.lsn, term: e.term, ops: toWireOps(e.ops), sync: e.sync, packedOps: NO_BYTES },
          ),
        });
        const refusal = await this.answer(res, sentAt);
        if (refusal) await this.snapshot(ask, refusal);
        if (entries.length === 0) await this.g.work.wait(this.beatMs, seen);
      }
    } finally {
      stream.cancel();
      this.stream = undefined;
    }
  }

  /** Takes a follower's answer; says why when only a snapshot can bring it back. */
  private async answer(res: ReplicateResponse, sentAt: number): Promise<string | undefined> {
    const g = this.g;
    const now = Date.now();
    switch (res.outcome) {
      case 'ACCEPTED':
        // Its log may run past what we asked about: entries a deposed primary wrote and never had
        // acknowledged. A copy holding them cannot be counted in sync; it gets a snapshot.
        if (res.logEndLsn > g.log.lastLsn || g.log.termAt(res.logEndLsn) !== res.logEndTerm) {
          return `its log ends at ${res.logEndLsn} (term ${res.logEndTerm}), which this primary's log does not hold`;
        }
        g.state.onAck(this.follower, { version: res.version, matchLsn: res.lastLsn, sentAt }, now);
        g.settle(now);
        g.log.forgetBelow(g.state.retainFrom());
        return undefined;
      case 'MISMATCH': {
        // Its log ends elsewhere: continue after its end if ours has the same entry there, else copy the range.
        const same = res.lastLsn <= g.log.lastLsn && g.log.termAt(res.lastLsn) === res.lastTerm;
        g.state.onReject(this.follower, { version: res.version, expectLsn: res.lastLsn + 1n, sentAt }, now);
        return same ? undefined : `its log ends at ${res.lastLsn} (term ${res.lastTerm}), which this primary's log does not hold`;
      }
      case 'STALE':
        g.state.onReject(this.follower, { version: res.version, sentAt }, now);
        void this.r.hostRef.refreshMap().catch(() => undefined);
        throw new Error(`follower ${this.follower} holds a newer version ${res.version} of ${showRange(g.range)}`);
      default:
        g.state.onReject(this.follower, { version: res.version, sentAt }, now);
        return `${res.outcome}: ${res.message}`;
    }
  }

  /** Replaces the follower's copy with this primary's, then continues from the snapshot's position. */
  private async snapshot(ask: (req: Partial<ReplicateRequest>) => Promise<ReplicateResponse>, why: string): Promise<void> {
    const g = this.g;
    const host = this.r.hostRef;
    if (g.state.inSync.includes(this.follower)) {
      // A snapshot first deletes the follower's copy. An in-sync copy may be promoted at any moment, so it must
      // not be emptied: the master takes it out of the in-sync set first (reported as overdue), then it is copied.
      this.needsSnapshot = true;
      throw new Error(`in-sync follower ${this.follower} of ${showRange(g.range)} needs a snapshot (${why}): asking the master to take it out of the in-sync set first`);
    }
    this.needsSnapshot = false;
    host.log.info('sending a snapshot to a follower', { range: showRange(g.range), follower: this.follower, why });
    await host.store.drain();
    const lsn = g.log.lastLsn;
    const term = g.log.termAt(lsn) ?? g.state.version;
    let res = await ask({ snapshotBegin: true });
    if (res.outcome !== 'ACCEPTED') throw new Error(`snapshot of ${showRange(g.range)} refused by ${this.follower}: ${res.message}`);
    for await (const chunk of host.store.exportRange(g.range, APPEND_BYTES)) {
      if (!this.live) throw new Error('link stopped');
      res = await ask({ snapshotOps: toWireOps(chunk) });
      if (res.outcome !== 'ACCEPTED') throw new Error(`snapshot chunk refused by ${this.follower}: ${res.message}`);
    }
    const sentAt = Date.now();
    res = await ask({ snapshotEnd: true, snapshotLsn: lsn, snapshotTerm: term });
    if (res.outcome !== 'ACCEPTED') throw new Error(`snapshot end refused by ${this.follower}: ${res.message}`);
    g.state.onReject(this.follower, { version: res.version, expectLsn: lsn + 1n, sentAt }, Date.now());
    g.state.onAck(this.follower, { version: res.version, matchLsn: lsn, sentAt }, Date.now());
    this.snapshotDone = true;
    g.settle();
  }
}
