/**
 * Membership (docs/design.md "Membership"): which shards may join, which are
 * live, and what the operator sees of them. A shard registers (new or
 * returning), is admitted or refused (`admission`, pure over the master's
 * state), then heartbeats with its counts, its disk and its session. Once
 * expectShards have registered, the cluster forms: its id is minted and the
 * space split evenly.
 */
import type { Logger } from 'winston';
import { CairnError } from '../common/errors.js';
import { copiesOf, rangesOf, roleCounts, type ClusterMap, type MapRange } from '../common/map.js';
import { evenSplit, rangeCovers, shareOf, type HashRange } from '../common/ranges.js';
import type { FailoverView, FollowerNote } from './failover.js';
import { initialGroups } from './replica-steps.js';
import { newClusterId, type ClusterState } from './cluster-state.js';
import type { DiskReport } from './planner.js';
import type { MasterState } from './meta-store.js';

/** What a registering shard says about itself (RegisterShardRequest). */
export interface ShardHello {
  shardId: string;
  address: string;
  /** The cluster id in its data directory ('' for a new shard or one written before cluster ids). */
  clusterId: string;
  /** The epoch of the map in its data directory. */
  epoch: bigint;
  generation: number;
  sessionId: string;
}

export interface RangeCount extends HashRange {
  rows: number;
  bytes: number;
}

/** What a heartbeat reports (HeartbeatRequest). */
export interface ShardBeat {
  sessionId: string;
  epoch: bigint;
  ranges: RangeCount[];
  opsPerSec: number;
  stopping: boolean;
  disk?: DiskReport;
  /** Where its log ends in each replicated range it holds a copy of. */
  replicas?: Array<{ range: HashRange; lastLsn: bigint; lastTerm: bigint }>;
  /** As a primary: in-sync followers that did not answer in time, and followers ready to join. */
  overdue?: FollowerNote[];
  caughtUp?: FollowerNote[];
  /** As an in-sync follower: ranges whose primary it has not heard from for longer than the lease. */
  primaryUnheard?: FollowerNote[];
}

interface LiveState {
  sessionId: string;
  lastHeartbeatMs: number;
  stopping: boolean;
  epoch: bigint;
  ranges: RangeCount[];
  opsPerSec: number;
  /** The shard's data directory's file system at the last heartbeat; total 0 = not reported (an older shard). */
  disk: DiskReport;
  replicas?: ShardBeat['replicas'];
  overdue?: FollowerNote[];
  caughtUp?: FollowerNote[];
  primaryUnheard?: FollowerNote[];
}

/** As TiKV's down-store time: a shard down this long is not coming back soon, so its copies are made again elsewhere. */
export const DEFAULT_REPLICA_DOWN_TIMEOUT_MS = 10 * 60 * 1000;

export const NO_DISK_REPORT: DiskReport = Object.freeze({ freeBytes: 0, totalBytes: 0, full: false });

export interface ServerView {
  id: string;
  address: string;
  /** unknown: not heard from since this master started (or began leading), which was less than shardDownAfterMs ago. */
  status: 'up' | 'down' | 'unknown';
  bytes: number;
  rows: number;
  ranges: number;
  share: number;
  opsPerSec: number;
  lastHeartbeatMs: number;
  diskFreeBytes: number;
  diskTotalBytes: number;
  diskFull: boolean;
  primaries: number;
  followers: number;
  learners: number;
}

export interface RangeView extends MapRange {
  address: string;
  rows: number;
  bytes: number;
}

export interface MembershipOptions {
  expectShards: number;
  /** Copies of each range when the cluster forms (default 1). */
  replicationFactor?: number;
  /** A shard down this long has its copies rebuilt elsewhere (default 10 minutes). */
  replicaDownTimeoutMs?: number;
  /** New copies being made at once in the cluster (default 2). */
  maxLearners?: number;
  shardDownAfterMs: number;
  /** Refuse shards whose address was not approved with AddServer. */
  requireApproval?: boolean;
}

export class Membership {
  private readonly live = new Map<string, LiveState>();
  private approvals = new Set<string>();
  private readonly startedAtMs = Date.now();
  /** Refusals already logged (shard and reason), so a shard retrying every second logs once. */
  private readonly refusalsLogged = new Set<string>();

  constructor(
    private readonly state: ClusterState,
    private readonly store: MasterState,
    private readonly opts: MembershipOptions,
    private readonly log: Logger,
  ) {}

  async loadApprovals(): Promise<void> {
    this.approvals = new Set(await this.store.loadApprovals());
  }

  /**
   * Admits a shard (new or returning). Once expectShards have registered, the
   * cluster forms: its id is minted and the space split evenly. Refused, with
   * nothing changed (`admission` says why): a shard of another cluster, a
   * shard that belongs to a cluster when this master has no state, a removed
   * id, and a second live process for one shard id (docs/design.md "Membership").
   */
  register(hello: ShardHello): Promise<{ shardId: string; map: ClusterMap }> {
    const state = this.state;
    return state.serial.run(async () => {
      state.checkNotHalted();
      const refusal = this.admission(hello);
      if (refusal) {
        const key = `${hello.shardId}|${hello.address}|${refusal.message}`;
        if (!this.refusalsLogged.has(key)) {
          if (this.refusalsLogged.size > 1000) this.refusalsLogged.clear();
          this.refusalsLogged.add(key);
          this.log.warn('shard refused', { shardId: hello.shardId || '(new)', address: hello.address, reason: refusal.details.reason, why: refusal.message });
        }
        throw refusal;
      }
      const { shardId, address } = hello;
      let rec = shardId ? state.shard(shardId) : undefined;
      const isNew = !rec;
      // The first expectShards shards form the cluster; once it has a map, new shards need AddServer.
      if (!rec && this.opts.requireApproval && state.map.epoch > 0n && !this.approvals.has(address)) {
        throw new CairnError('PERMISSION_DENIED', `shard at ${address} is not approved to join; run: cairn ctl addserver ${address}`);
      }
      if (!rec) {
        const id = shardId || `s${state.nextShardNumber}`;
        const n = /^s(\d+)$/.exec(id);
        if (n) state.nextShardNumber = Math.max(state.nextShardNumber, Number(n[1]) + 1);
        rec = { id, address, registeredAtMs: Date.now() };
        state.shards = [...state.shards, rec];
      }
      const id = rec.id;
      const addressChanged = rec.address !== address;
      const sessionChanged = rec.sessionId !== hello.sessionId || rec.generation !== hello.generation;
      if (addressChanged || sessionChanged) {
        state.shards = state.shards.map((s) => (s.id === id ? { ...s, address, generation: hello.generation, sessionId: hello.sessionId } : s));
      }
      this.live.set(id, { sessionId: hello.sessionId, lastHeartbeatMs: Date.now(), stopping: false, epoch: hello.epoch, ranges: [], opsPerSec: 0, disk: NO_DISK_REPORT });

      if (state.map.epoch === 0n && state.shards.length >= this.opts.expectShards) {
        const owners = state.shards.slice(0, this.opts.expectShards);
        const factor = this.opts.replicationFactor ?? 1;
        const ranges = initialGroups(evenSplit(owners.length), owners.map((o) => o.id), factor);
        state.clusterId = newClusterId();
        this.log.info('All data servers have registered!', { shards: owners.map((s) => s.id), clusterId: state.clusterId, replicationFactor: factor });
        await state.commitMap({ epoch: 1n, ranges, shards: state.shardRefs(), clusterId: state.clusterId, ...(factor > 1 ? { replicationFactor: factor } : {}) });
      } else if (state.map.epoch > 0n && (isNew || addressChanged)) {
        await state.commitShards();
      } else {
        await state.saveRegistry(`shard ${id}`);
        if (state.map.epoch === 0n) {
          this.log.info('waiting for shards', { registered: state.shards.length, expected: this.opts.expectShards });
        }
      }
      this.log.info('shard registered', { shardId: id, address, isNew, generation: hello.generation });
      return { shardId: id, map: state.map };
    });
  }

  /** Why this master may not admit the shard now, or undefined. Pure over the master's state. */
  private admission(hello: ShardHello): CairnError | undefined {
    const ours = this.state.clusterId;
    const theirs = hello.clusterId;
    const who = hello.shardId ? `shard ${hello.shardId} at ${hello.address}` : `the shard at ${hello.address}`;
    const mismatch = (msg: string) => new CairnError('PRECONDITION', msg, { reason: 'CLUSTER_MISMATCH' });
    if (!ours && (theirs || hello.epoch > 0n)) {
      return mismatch(
        `this master has no cluster state, and ${who} already belongs to cluster ${theirs || '(formed before cluster ids)'} at map epoch ${hello.epoch}: ` +
          `the master does not form a new cluster out of it. Start the master on that cluster's data directory, or, if that is lost, ` +
          `rebuild it from the shards: cairn master rebuild --config <master.yaml> --from <shard host:port,...>`,
      );
    }
    if (ours && theirs && theirs !== ours) {
      return mismatch(`${who} belongs to cluster ${theirs} (map epoch ${hello.epoch}), not to this master's cluster ${ours}; point it at its own master`);
    }
    // A late heartbeat or retry from a removed shard must not bring it back into the registry.
    if (hello.shardId && this.state.removed.has(hello.shardId)) {
      return new CairnError('PRECONDITION', `shard ${hello.shardId} was removed from the cluster; to join again, start it with an empty data directory`, { reason: 'SHARD_REMOVED' });
    }
    const rec = hello.shardId ? this.state.shard(hello.shardId) : undefined;
    if (!rec) {
      if (hello.shardId && (theirs || hello.epoch > 0n)) {
        return mismatch(`${who} holds map epoch ${hello.epoch} of cluster ${theirs || '(formed before cluster ids)'}, but this master's cluster ${ours} has no shard ${hello.shardId}`);
      }
      return undefined;
    }
    if (rec.sessionId === hello.sessionId) return undefined; // the same process again
    const conflict = (msg: string, retryAfterMs?: number) => new CairnError('PRECONDITION', msg, { reason: 'SESSION_CONFLICT', ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) });
    const stale = () =>
      conflict(
        `shard ${rec.id}'s data directory at ${hello.address} is at generation ${hello.generation}, not newer than generation ${rec.generation} that last held the id: a stale copy is never admitted`,
      );
    if (rec.sessionId === undefined) {
      // No session admitted yet (state from before sessions, or rebuilt from the shards, which records each one's generation).
      return hello.generation < (rec.generation ?? 0) ? stale() : undefined;
    }
    const now = Date.now();
    const live = this.live.get(rec.id);
    if (live && !live.stopping && live.sessionId === rec.sessionId && now - live.lastHeartbeatMs <= this.opts.shardDownAfterMs) {
      return conflict(
        `shard ${rec.id} is live at ${rec.address} (generation ${rec.generation ?? 0}, last heartbeat ${now - live.lastHeartbeatMs} ms ago); ` +
          `a second process for it (generation ${hello.generation} at ${hello.address}: a copy of its data directory?) is refused while the first one heartbeats`,
        this.opts.shardDownAfterMs - (now - live.lastHeartbeatMs) + 100,
      );
    }
    if (!live && now - this.startedAtMs <= this.opts.shardDownAfterMs) {
      // Just restarted: the admitted session may still be alive and about to heartbeat.
      return conflict(
        `the master restarted ${now - this.startedAtMs} ms ago and waits up to ${this.opts.shardDownAfterMs} ms for shard ${rec.id}'s admitted session (generation ${rec.generation ?? 0}) to report before another may take over`,
        this.opts.shardDownAfterMs - (now - this.startedAtMs) + 100,
      );
    }
    // Only a newer start of the directory may take over: an equal generation in another session is a copy made before the admitted one started.
    if (hello.generation <= (rec.generation ?? 0)) return stale();
    return undefined;
  }

  /** Records a heartbeat; refused when the shard is unknown, or when another process now holds its id. */
  heartbeat(shardId: string, hb: ShardBeat): void {
    const rec = this.state.shard(shardId);
    if (!rec || rec.sessionId === undefined) {
      throw new CairnError('NOT_FOUND', `unknown shard ${shardId}: register first`);
    }
    if (rec.sessionId !== hb.sessionId) {
      throw new CairnError(
        'PRECONDITION',
        `shard ${shardId} is now held by another process (generation ${rec.generation ?? 0} at ${rec.address}); this process must stop`,
        { reason: 'SESSION_SUPERSEDED' },
      );
    }
    const wasFull = this.live.get(shardId)?.disk.full ?? false;
    const disk = hb.disk ?? NO_DISK_REPORT;
    this.live.set(shardId, { lastHeartbeatMs: Date.now(), ...hb, disk });
    if (disk.full !== wasFull) {
      if (disk.full) this.log.warn('shard reports a full disk: it refuses writes until space is freed', { shardId, diskFreeBytes: disk.freeBytes, diskTotalBytes: disk.totalBytes });
      else this.log.info('shard takes writes again: its disk has room', { shardId, diskFreeBytes: disk.freeBytes, diskTotalBytes: disk.totalBytes });
    }
    if (hb.stopping) this.log.info('shard is stopping', { shardId });
  }

  /** What failover decides from: who is up, where each copy's log ends, what primaries reported. */
  failoverView(now = Date.now()): FailoverView {
    const live = [...this.live.entries()].filter(([id]) => this.isUp(id, now));
    const known = new Set(this.state.map.shards.map((s) => s.id));
    const downFor = (id: string) => now - (this.live.get(id)?.lastHeartbeatMs ?? this.startedAtMs);
    return {
      isUp: (id) => this.isUp(id, now),
      givenUp: (id) => !known.has(id) || (!this.isUp(id, now) && downFor(id) > (this.opts.replicaDownTimeoutMs ?? DEFAULT_REPLICA_DOWN_TIMEOUT_MS)),
      maxLearners: this.opts.maxLearners ?? 2,
      positionOf: (id, range) => this.live.get(id)?.replicas?.find((p) => p.range.start === range.start && p.range.end === range.end),
      overdue: live.flatMap(([, l]) => l.overdue ?? []),
      caughtUp: live.flatMap(([, l]) => l.caughtUp ?? []),
      primaryUnheard: live.flatMap(([, l]) => l.primaryUnheard ?? []),
    };
  }

  /** Forgets a removed shard's live state (its record leaves the registry in the same step). */
  forget(shardId: string): void {
    this.live.delete(shardId);
  }

  async addServer(address: string): Promise<boolean> {
    this.approvals.add(address);
    await this.store.saveApprovals([...this.approvals]);
    return !!this.opts.requireApproval;
  }

  isUp(id: string, now = Date.now()): boolean {
    const l = this.live.get(id);
    return !!l && !l.stopping && now - l.lastHeartbeatMs <= this.opts.shardDownAfterMs;
  }

  /** The disk a shard reported at its last heartbeat, if it has one. */
  diskOf(id: string): DiskReport | undefined {
    return this.live.get(id)?.disk;
  }

  /** Counts from a shard's last heartbeat, restricted to the ranges the map gives it now. */
  ownedCounts(shardId: string, within: HashRange[]): { rows: number; bytes: number } {
    let rows = 0;
    let bytes = 0;
    for (const rc of this.live.get(shardId)?.ranges ?? []) {
      if (within.some((r) => rangeCovers(r, rc))) {
        rows += rc.rows;
        bytes += rc.bytes;
      }
    }
    return { rows, bytes };
  }

  listServers(): ServerView[] {
    const now = Date.now();
    const map = this.state.map;
    return this.state.shards.map((s) => {
      const owned = rangesOf(map, s.id);
      const live = this.live.get(s.id);
      return {
        id: s.id,
        address: s.address,
        // A master that just started (a standby that just took over) has heard from nobody yet: that is not "down".
        status: this.isUp(s.id, now) ? 'up' : !live && now - this.startedAtMs <= this.opts.shardDownAfterMs ? 'unknown' : 'down',
        // Bytes and rows of every copy it keeps; ranges and share are of what it is the primary of.
        ...this.ownedCounts(s.id, copiesOf(map, s.id)),
        ranges: owned.length,
        share: shareOf(owned),
        opsPerSec: live?.opsPerSec ?? 0,
        lastHeartbeatMs: live?.lastHeartbeatMs ?? 0,
        diskFreeBytes: live?.disk.freeBytes ?? 0,
        diskTotalBytes: live?.disk.totalBytes ?? 0,
        diskFull: live?.disk.full ?? false,
        ...roleCounts(map, s.id),
      };
    });
  }

  getRanges(): RangeView[] {
    const addr = new Map(this.state.shards.map((s) => [s.id, s.address]));
    return this.state.map.ranges.map((r) => ({
      ...r,
      address: addr.get(r.shardId) ?? '',
      ...this.ownedCounts(r.shardId, [r]),
    }));
  }
}
