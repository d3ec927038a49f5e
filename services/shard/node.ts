/**
 * A shard process: its store, its copy of the map, registration with the
 * master and heartbeats, and the state of range moves (fences, pending drops,
 * running transfers and pulls). Data handlers live in service.ts; the two
 * sides of a move, in transfer-source.ts and transfer-sink.ts, reach the node
 * through the narrow interfaces it implements (TransferSource, TransferSink).
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'winston';
import { MasterServiceClient } from '../../proto/gen/cairn/v1/master.js';
import { ShardControlServiceClient } from '../../proto/gen/cairn/v1/control.js';
import { ShardServiceClient } from '../../proto/gen/cairn/v1/shard.js';
import { checkClientClaims, deriveTokenKey, ServerTokenSource, type Claims } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import { call, ClientPool, type ClientTls } from '../common/grpc.js';
import { endToProto } from '../common/hash.js';
import { copiesOf, EMPTY_MAP, mapError, mapFromJson, mapFromProto, mapToJson, rangesOf, type ClusterMap, type MapJson } from '../common/map.js';
import type { HashRange } from '../common/ranges.js';
import { showRange } from '../common/ranges.js';
import { coveredBy, FenceReconciler, FenceTable, overlapsAny, RangeJanitor, subtractRanges } from './fence.js';
import { ShardStore } from './store.js';
import { MoveRegistry } from './move-tasks.js';
import type { TransferSink } from './transfer-sink.js';
import type { TransferSource } from './transfer-source.js';
import { DEFAULT_MAX_FENCE_MS } from './transfer-wire.js';
import { PrimarySilence } from './primary-silence.js';
import { coveringPosition, positionFromJson, RangeLogs } from './replica-log.js';
import type { ReplicaHost } from './replica-apply.js';
import { DEFAULT_REPLICATION_TIMINGS, Replicator, type ReplicatorHost } from './replicator.js';
import type { Limits } from './validate.js';
import { MasterTermFence } from './master-term.js';
import { MasterAddresses } from '../common/masters.js';

export interface ShardOptions {
  dataDir: string;
  /** host:port others dial; known after the server has bound its port. */
  advertise: string;
  /** The masters' addresses (`a:7000,b:7000` or a list): the shard follows the one that leads. */
  master: string | readonly string[];
  serverCredential: string;
  heartbeatIntervalMs: number;
  limits: Limits;
  peerTls?: ClientTls;
  log: Logger;
  /** The longest a transfer keeps a range fenced before the destination confirms the fenced tail (default DEFAULT_MAX_FENCE_MS). */
  maxFenceMs?: number;
  /** A primary serves a replicated range only while every in-sync follower answered within this (default 2000). */
  replicaLeaseMs?: number;
  /** An in-sync follower this late is reported to the master (default 3000). */
  replicaAckTimeoutMs?: number;
}

/** At most one info line per this many ms about calling another master (see followLeader). */
const MASTER_SWITCH_LOG_MS = 10_000;

export class ShardNode implements TransferSource, TransferSink, ReplicatorHost, ReplicaHost {
  readonly tokenKey: Buffer;
  readonly serverToken: ServerTokenSource;
  /** Other shards' data service (forwarded calls). */
  readonly peers: ClientPool<ShardServiceClient>;
  /** Other shards' control service (a destination pulling a range from its source). */
  readonly controlPeers: ClientPool<ShardControlServiceClient>;
  private readonly masters: ClientPool<MasterServiceClient>;
  /** Which master to call: the leader, followed from NOT_LEADER answers and unreachable masters. */
  readonly masterAddresses: MasterAddresses;
  /** The highest master term seen: a lower one's calls are refused (master-term.ts). */
  readonly masterTerm: MasterTermFence;
  id = '';
  map: ClusterMap = EMPTY_MAP;
  /** The cluster this shard belongs to, kept in its data directory; '' until it first joins one. */
  clusterId = '';
  /** Process starts of this data directory, this one included (docs/design.md "Membership": sessions). */
  generation = 0;
  /** Random per process start: tells this process from another on a copy of the same directory. */
  readonly sessionId = randomBytes(12).toString('hex');
  /** Why the last refusal happened (by the master, or of a caller from another cluster); '' once admitted. */
  refusal = '';
  /**
   * Users whose tokens issued before a time no longer hold, as the master last
   * said (register and heartbeat answers); kept in the data directory so a
   * restart does not forget them while the master is away.
   */
  private revocations = new Map<string, number>();
  /** Told when the master admits this process (true) or refuses it (false): the health status follows. */
  onAdmission: (admitted: boolean) => void = () => undefined;
  private readonly refusalsLogged = new Set<string>();
  private lastMasterSwitchLogMs = 0;
  private masterSwitchesUnlogged = 0;
  private opsSinceHeartbeat = 0;
  private lastHeartbeatAt = Date.now();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private registered = false;
  /** Fences of ranges this shard is handing over; loaded before anything is served. */
  fences!: FenceTable;
  /** Background deletion of ranges this shard lost. */
  janitor!: RangeJanitor;
  /** Transfers, pulls and drops running here. */
  readonly moves = new MoveRegistry();
  /** Asks the master about fences that no transfer owns (sealed, or loaded at start) and lifts orphans. */
  private readonly fenceReconciler = this.startFenceReconciler();
  /** Data calls served locally that are still running (a fence waits for them). */
  private readonly localCalls = new Set<Promise<unknown>>();
  /** Map installs run one at a time, so the persisted map is always the newest installed. */
  private installing: Promise<unknown> = Promise.resolve();
  /** The logs of the replicated ranges this shard holds a copy of. */
  readonly rangeLogs: RangeLogs;
  /** The primary's side of replication (the follower's is replica-apply.ts, called by the control service). */
  replicator!: Replicator;
  /** Aborted when the shard stops: the Replicate streams primaries keep open to it end (replica-apply.ts). */
  readonly following = new AbortController();
  /** How long each primary this shard follows in sync has been silent (reported past the grace: a lease and a half). */
  readonly primarySilence: PrimarySilence;

  private constructor(
    readonly opts: ShardOptions,
    readonly store: ShardStore,
  ) {
    this.tokenKey = deriveTokenKey(opts.serverCredential);
    this.serverToken = new ServerTokenSource(this.tokenKey, 'shard', { clusterId: () => this.clusterId });
    this.peers = new ClientPool(ShardServiceClient, { tls: opts.peerTls, maxMessageBytes: opts.limits.maxMessageBytes });
    this.controlPeers = new ClientPool(ShardControlServiceClient, { tls: opts.peerTls, maxMessageBytes: opts.limits.maxMessageBytes });
    this.masters = new ClientPool(MasterServiceClient, { tls: opts.peerTls, maxMessageBytes: opts.limits.maxMessageBytes });
    this.masterAddresses = new MasterAddresses(opts.master);
    this.masterTerm = new MasterTermFence(opts.log);
    this.primarySilence = new PrimarySilence(Math.round((opts.replicaLeaseMs ?? DEFAULT_REPLICATION_TIMINGS.leaseMs) * 1.5));
    this.rangeLogs = new RangeLogs(
      async (key) => {
        const j = await store.getMeta<Parameters<typeof positionFromJson>[0]>(key);
        return j ? positionFromJson(j) : undefined;
      },
      (range) => coveringPosition(store, range),
    );
  }

  static async open(opts: ShardOptions): Promise<ShardNode> {
    const store = await ShardStore.open(opts.dataDir);
    const node = new ShardNode(opts, store);
    node.id = ((await store.getMeta('shardId')) as string | undefined) ?? '';
    node.clusterId = ((await store.getMeta('clusterId')) as string | undefined) ?? '';
    node.revocations = new Map((((await store.getMeta('revocations')) as Array<[string, number]> | undefined) ?? []).map(([u, t]) => [u, t]));
    const saved = (await store.getMeta('map')) as MapJson | undefined;
    if (saved) node.map = { ...mapFromJson(saved), clusterId: node.clusterId };
    try {
      // Synced before anything is served: two processes on copies of one directory never share a session.
      node.generation = (((await store.getMeta('generation')) as number | undefined) ?? 0) + 1;
      await store.putMeta('generation', node.generation, true);
      node.fences = await FenceTable.load(store);
      node.janitor = await RangeJanitor.load(store, () => node.heldRanges(), () => node.moves.destinationRanges(), opts.log);
      // A fence whose range the persisted map no longer gives us belongs to a move that committed while we were down.
      const owned = node.ownedRanges();
      const committed = node.fences.all().filter((f) => !overlapsAny(f.range, owned));
      if (committed.length) {
        await node.janitor.record(committed.map((f) => f.range));
        await node.fences.dropUnowned(owned);
      }
      for (const f of node.fences.all()) opts.log.warn('range stays fenced until its move is aborted or committed', { moveId: f.moveId, range: showRange(f.range) });
      node.janitor.start();
      store.onDiskState((s) => node.diskStateChanged(s.full, s.message));
      node.replicator = new Replicator(node, {
        leaseMs: opts.replicaLeaseMs ?? DEFAULT_REPLICATION_TIMINGS.leaseMs,
        ackTimeoutMs: opts.replicaAckTimeoutMs ?? DEFAULT_REPLICATION_TIMINGS.ackTimeoutMs,
      });
      // No primary's work from the map on disk: a restarted shard acts as a primary only once the master has
      // admitted it and it holds the master's map (register), which may have moved the range on meanwhile.
    } catch (err) {
      await store.close();
      throw err;
    }
    return node;
  }

  get log(): Logger {
    return this.opts.log;
  }

  /** True while the master has admitted this process. */
  get isRegistered(): boolean {
    return this.registered;
  }

  get nodeId(): string {
    return this.id || 'unregistered';
  }

  private stopResolve!: (why: { refused?: string }) => void;
  /**
   * Resolves when this process should exit: the master removed the shard
   * (StopShard; exit cleanly), or will never admit it (`refused` says why; exit non-zero).
   */
  readonly stopRequested: Promise<{ refused?: string }> = new Promise((resolve) => (this.stopResolve = resolve));

  requestStop(why: { refused?: string } = {}): void {
    this.stopResolve(why);
  }

  /** Logs a full disk once, and on recovery retries the deletions of lost ranges that failed meanwhile. */
  private diskStateChanged(full: boolean, message: string): void {
    if (full) {
      this.log.error('disk full: writes are refused until space is freed; reads are served; writes resume by themselves', { dataDir: this.opts.dataDir, error: message });
      return;
    }
    this.log.info('disk has room again: LevelDB reopened, writes are taken again', { dataDir: this.opts.dataDir });
    this.janitor.start();
    if (this.registered) void this.heartbeat();
  }

  /** Batch stream traffic since start: messages received and the calls they carried (metrics; tests check coalescing by them). */
  readonly batchTraffic = { messages: 0, calls: 0 };

  countOp(n = 1): void {
    this.opsSinceHeartbeat += n;
  }

  /** The ranges this shard serves: those it is the primary of. */
  ownedRanges(): HashRange[] {
    return this.id ? rangesOf(this.map, this.id) : [];
  }

  /** The ranges this shard keeps a copy of: as primary, follower or learner. */
  heldRanges(map: ClusterMap = this.map): HashRange[] {
    return this.id ? copiesOf(map, this.id) : [];
  }


  /** Throws PRECONDITION (FAILED_PRECONDITION, not retried) unless this shard's map gives it every hash of the range. */
  assertOwnsAll(range: HashRange, moveId: string): void {
    if (!coveredBy(range, this.ownedRanges())) {
      throw new CairnError('PRECONDITION', `move ${moveId}: shard ${this.nodeId} does not own all of ${showRange(range)} in map epoch ${this.map.epoch}`, {
        epoch: this.map.epoch,
      });
    }
  }

  /** Throws PRECONDITION (FAILED_PRECONDITION, not retried) when this shard's map gives it any hash of the range. */
  assertOwnsNone(range: HashRange, moveId: string): void {
    if (overlapsAny(range, this.ownedRanges())) {
      throw new CairnError(
        'PRECONDITION',
        `move ${moveId}: shard ${this.nodeId} owns part of ${showRange(range)} in map epoch ${this.map.epoch}, so it does not pull it`,
        { epoch: this.map.epoch },
      );
    }
  }

  /** Makes sure our map is at least `epoch` (the one a move was planned against), fetching it from the master if needed. */
  async ensureEpoch(epoch: bigint): Promise<void> {
    if (epoch <= this.map.epoch) return;
    try {
      await this.refreshMap();
    } catch (err) {
      throw new CairnError('NOT_READY', `shard ${this.nodeId} holds map epoch ${this.map.epoch}, older than the request's ${epoch}, and could not fetch the current map: ${(err as Error).message}`, {
        retryAfterMs: 200,
      });
    }
    if (epoch > this.map.epoch) {
      throw new CairnError('NOT_READY', `shard ${this.nodeId} holds map epoch ${this.map.epoch}, older than the request's ${epoch}; retry`, { retryAfterMs: 200 });
    }
  }

  /** Tracks a data call served from the local store, so a fence can wait for the ones that passed its check. */
  trackLocal<T>(p: Promise<T>): Promise<T> {
    this.localCalls.add(p);
    const done = (): void => void this.localCalls.delete(p);
    p.then(done, done);
    return p;
  }

  /** Resolves once every local data call running now has finished. */
  async drainLocal(): Promise<void> {
    await Promise.allSettled([...this.localCalls]);
  }

  /**
   * Installs a map if it is newer than ours; persisted before it takes effect.
   * Ranges the new map takes away are recorded for deletion first, then the
   * map is persisted and installed, fences of ranges we no longer own are
   * dropped (their moves committed), and the lost ranges are deleted in the
   * background. Nothing else changes: gaining a range needs no action.
   */
  installMap(next: ClusterMap): Promise<boolean> {
    const run = this.installing.then(() => this.installNow(next));
    this.installing = run.catch(() => undefined);
    return run;
  }

  private async installNow(next: ClusterMap): Promise<boolean> {
    // A map can make a shard with no cluster id join only when it comes from its own master: one that names it at its address.
    const namesUs = !!this.id && next.shards.some((x) => x.id === this.id && x.address === this.opts.advertise);
    await this.checkCluster(next.clusterId, `a map (epoch ${next.epoch})`, namesUs);
    if (next.epoch <= this.map.epoch) return false;
    const err = mapError(next);
    if (err) throw new CairnError('INVALID_ARGUMENT', `map: ${err}`);
    const json = mapToJson(next);
    const after = this.id ? rangesOf(next, this.id) : [];
    // Only a range the shard keeps no copy of is deleted: a primary that becomes a follower keeps its data.
    const lost = subtractRanges(this.heldRanges(), this.heldRanges(next));
    if (lost.length) await this.janitor.record(lost);
    await this.store.putMeta('map', json, true);
    if (lost.length) failpoint('source-before-cleanup');
    if (this.map.epoch > 0n && subtractRanges(after, this.ownedRanges()).length) failpoint('dest-after-commit'); // a move gave us a range
    this.map = next;
    this.moves.abortTransfersOutside(after);
    this.moves.forgetReadyOwned(after);
    const committed = await this.fences.dropUnowned(after);
    for (const f of committed) this.log.info('fence dropped: the move committed', { moveId: f.moveId, range: showRange(f.range), epoch: next.epoch.toString() });
    if (lost.length) {
      this.log.info('ranges lost in the new map are deleted in the background', { epoch: next.epoch.toString(), ranges: lost.map(showRange) });
      this.janitor.start();
    }
    this.rangeLogs.keepOnly(this.heldRanges());
    if (this.registered) {
      this.primarySilence.onMap(next, this.id, Date.now());
      await this.replicator.onMap(next);
    }
    this.log.info('map installed', { epoch: next.epoch.toString(), ownedRanges: this.ownedRanges().length });
    // Report counts for the new ranges now: the master shows only counts of ranges a shard owns,
    // so until this heartbeat a shard that just gained or lost a range would show too little.
    if (this.registered) void this.heartbeat();
    return true;
  }

  /**
   * A shard takes maps, moves and peers only from its own cluster. A shard
   * that has none yet (new, or written before cluster ids) joins the first
   * cluster its master admits it to, and keeps that id for good.
   */
  private async checkCluster(theirs: string, what: string, mayJoin = true): Promise<void> {
    if (!this.clusterId) {
      if (!theirs) return;
      if (!mayJoin) throw this.refuse(`refused ${what} of cluster ${theirs}: it does not name this shard at ${this.opts.advertise}, so it is not from this shard's master`);
      await this.store.putMeta('clusterId', theirs, true);
      this.clusterId = theirs;
      this.map = { ...this.map, clusterId: theirs };
      this.log.info('joined cluster', { clusterId: theirs, shardId: this.nodeId });
      return;
    }
    if (theirs === this.clusterId) return;
    throw this.refuse(
      `refused ${what} from ${theirs ? `cluster ${theirs}` : 'a process with no cluster state'}: this shard belongs to cluster ${this.clusterId}; it keeps its map (epoch ${this.map.epoch}) and its data`,
    );
  }

  /** Checks every call made with a server token (HandlerEnv.checkServerCall): internal calls from another cluster are refused. */
  checkServerCall(claims: Claims, method: string): void {
    // Read-only, and what an operator rebuilding a lost master asks before it knows the cluster id.
    if (method === 'DescribeShard') return;
    if (this.clusterId && claims.cid !== this.clusterId) {
      throw this.refuse(
        `refused ${method} from ${claims.cid ? `a process of cluster ${claims.cid}` : 'a process with no cluster state'} (${claims.sub}): this shard belongs to cluster ${this.clusterId}`,
      );
    }
    // Only after the cluster check: a master of another cluster must not raise the term this shard holds.
    this.masterTerm.check(claims, method);
  }

  /** Checks every call made with a client token (HandlerEnv.checkClientCall): its cluster, and whether its user was revoked. */
  checkClientCall(claims: Claims): void {
    if (!this.clusterId) return; // not in a cluster yet: it serves no data, and learns its cluster (and the revocations) when admitted
    checkClientClaims(claims, { clusterId: this.clusterId, revokedBefore: (u) => this.revocations.get(u) });
  }

  /** Takes the master's list of revocations (it sends every one in force); saved when it changed. */
  private async takeRevocations(list: Array<{ user: string; notBeforeMs: bigint }>): Promise<void> {
    const next = new Map(list.map((r) => [r.user, Number(r.notBeforeMs)]));
    const same = next.size === this.revocations.size && [...next].every(([u, t]) => this.revocations.get(u) === t);
    if (same) return;
    const added = [...next.keys()].filter((u) => this.revocations.get(u) !== next.get(u));
    this.revocations = next;
    if (added.length) this.log.info('token revocations from the master', { users: added });
    await this.store.putMeta('revocations', [...next], true);
  }

  /** Records and logs (once per distinct reason) a refusal, and returns the error to throw. */
  private refuse(message: string): CairnError {
    this.refusal = message;
    if (!this.refusalsLogged.has(message)) {
      if (this.refusalsLogged.size > 100) this.refusalsLogged.clear();
      this.refusalsLogged.add(message);
      this.log.warn('refused a process of another cluster', { why: message });
    }
    return new CairnError('PRECONDITION', message, { reason: 'CLUSTER_MISMATCH' });
  }

  private masterClient(): MasterServiceClient {
    return this.masters.get(this.masterAddresses.current);
  }

  /** After a failed call to the master: the next goes to the leader it named, or to the next master in the list. */
  private followLeader(err: unknown): void {
    const from = this.masterAddresses.current;
    if (!this.masterAddresses.follow(err)) return;
    // During an election the shard tries the masters in turn several times a second: one info line per 10 s says so, the rest are debug.
    const now = Date.now();
    const fields = { from, to: this.masterAddresses.current, why: (err as Error).message };
    if (now - this.lastMasterSwitchLogMs >= MASTER_SWITCH_LOG_MS) {
      this.lastMasterSwitchLogMs = now;
      this.log.info('calling another master', this.masterSwitchesUnlogged > 0 ? { ...fields, switchesSinceLastLine: this.masterSwitchesUnlogged } : fields);
      this.masterSwitchesUnlogged = 0;
    } else {
      this.masterSwitchesUnlogged++;
      this.log.debug('calling another master', fields);
    }
  }

  /**
   * Registers with the master, retrying until it admits this process, then
   * starts heartbeats. A master of another cluster (or one with no state) is
   * retried for as long as it takes: the shard keeps its map and data and
   * rejoins by itself when its own master is back. A removed id, a stale copy,
   * or another process still heartbeating for this id ends the process
   * (`stopRequested` with the master's reason).
   */
  async register(signal?: AbortSignal): Promise<void> {
    let delay = 100;
    let conflictUntil: number | undefined;
    for (;;) {
      if (this.stopping || signal?.aborted) return;
      try {
        const c = this.masterClient();
        const res = await call(
          c,
          c.registerShard,
          { shardId: this.id, address: this.opts.advertise, clusterId: this.clusterId, epoch: this.map.epoch, generation: BigInt(this.generation), sessionId: this.sessionId },
          { token: this.serverToken.get(), timeoutMs: 5000 },
        );
        // Checked before the id is taken: a master of another cluster gets nothing stored.
        const map = mapFromProto(res.map);
        await this.checkCluster(map.clusterId, `the master's map (epoch ${map.epoch})`);
        if (res.shardId !== this.id) {
          this.id = res.shardId;
          await this.store.putMeta('shardId', this.id, true);
        }
        await this.installMap(map);
        await this.takeRevocations(res.revocations);
        this.registered = true;
        this.primarySilence.onMap(this.map, this.id, Date.now());
        await this.replicator.onMap(this.map);
        this.refusal = '';
        this.onAdmission(true);
        this.log.info('DataServer fully registered', { shardId: this.id, master: this.masterAddresses.current, address: this.opts.advertise, clusterId: this.clusterId, generation: this.generation });
        this.scheduleHeartbeat(res.heartbeatIntervalMs || this.opts.heartbeatIntervalMs);
        return;
      } catch (err) {
        const e = err as CairnError;
        const reason = e.details?.reason;
        let retryInMs = delay;
        if (this.masterAddresses.follow(e)) retryInMs = 50; // a standby named the leader, or the master did not answer: ask the next at once
        if (reason === 'CLUSTER_MISMATCH') {
          this.refusal = e.message;
          this.onAdmission(false);
          if (!this.refusalsLogged.has(e.message)) {
            this.refusalsLogged.add(e.message);
            this.log.error('the master refused this shard: it is not this shard\'s cluster; keeping the map and data, and retrying until the right master answers', { error: e.message });
          }
        } else if (reason === 'SESSION_CONFLICT' && e.details.retryAfterMs !== undefined) {
          // Another process holds our id. It may be our own previous run, killed a moment ago: wait until the master
          // would count it down; if it still heartbeats then, this process is a copy and must not serve.
          conflictUntil ??= Date.now() + e.details.retryAfterMs + 2 * this.opts.heartbeatIntervalMs + 1000;
          if (Date.now() > conflictUntil) return this.refusedForGood(e);
          this.log.warn('another process holds this shard id; waiting to see whether it is gone', { error: e.message });
          retryInMs = Math.min(e.details.retryAfterMs, 1000);
        } else if (e.code === 'PRECONDITION') {
          // Removed for good, a stale copy, or superseded: retrying cannot succeed, and the operator must act.
          return this.refusedForGood(e);
        } else if (e.code === 'UNAUTHENTICATED' || e.code === 'PERMISSION_DENIED') {
          this.log.error('the master refused this shard: check serverCredential', { error: e.message });
        } else {
          this.log.warn('registering with the master failed; retrying', { master: this.masterAddresses.current, error: e.message, retryInMs: delay });
        }
        await new Promise((r) => setTimeout(r, retryInMs).unref());
        delay = Math.min(delay * 2, 2000);
      }
    }
  }

  private refusedForGood(e: CairnError): void {
    this.refusal = e.message;
    this.onAdmission(false);
    this.log.error('the master will not admit this shard', { error: e.message, reason: e.details?.reason });
    this.requestStop({ refused: e.message });
  }

  private scheduleHeartbeat(intervalMs: number): void {
    clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = setTimeout(() => void this.heartbeat(intervalMs), intervalMs);
    this.heartbeatTimer.unref();
  }

  /** Counts of every range this shard keeps a copy of (ctl servers shows the bytes each shard holds). */
  rangeCounts() {
    return this.heldRanges().map((r) => {
      const s = this.store.rangeStats(r);
      return { start: r.start, end: endToProto(r.end), rows: BigInt(s.rows), bytes: BigInt(s.bytes) };
    });
  }

  /** One heartbeat; fetches the map when the master's epoch is newer. */
  async heartbeat(intervalMs = this.opts.heartbeatIntervalMs, stopping = false): Promise<void> {
    if (!this.registered) return;
    const now = Date.now();
    const opsPerSec = (this.opsSinceHeartbeat * 1000) / Math.max(1, now - this.lastHeartbeatAt);
    // A heartbeat far later than due: this process was stopped or starved, and heard nothing meanwhile.
    if (now - this.lastHeartbeatAt > intervalMs + this.primarySilence.graceMs) this.primarySilence.resumed(now);
    this.opsSinceHeartbeat = 0;
    this.lastHeartbeatAt = now;
    try {
      // The planner keeps moves off shards short of space; 0/0 (not reported) when statfs fails.
      const disk = await this.store.diskSpace().catch(() => ({ freeBytes: 0, totalBytes: 0 }));
      const c = this.masterClient();
      const res = await call(
        c,
        c.heartbeat,
        {
          shardId: this.id,
          sessionId: this.sessionId,
          epoch: this.map.epoch,
          ranges: this.rangeCounts(),
          opsPerSec,
          stopping,
          diskFreeBytes: BigInt(disk.freeBytes),
          diskTotalBytes: BigInt(disk.totalBytes),
          diskFull: this.store.diskState().full,
          ...this.replicaReports(),
        },
        { token: this.serverToken.get(), timeoutMs: Math.max(1000, intervalMs) },
      );
      await this.takeRevocations(res.revocations);
      if ((res.header?.epoch ?? 0n) > this.map.epoch) await this.refreshMap();
    } catch (err) {
      const e = err as CairnError;
      this.followLeader(e);
      // Unknown here, or a master of another cluster (one started on the wrong state): register, to be admitted or refused.
      if ((e.code === 'NOT_FOUND' || e.details?.reason === 'CLUSTER_MISMATCH') && !stopping && !this.stopping) {
        this.registered = false;
        void this.register();
        return;
      }
      if (e.details?.reason === 'SESSION_SUPERSEDED' && !this.stopping) {
        // Another process took this shard id over (after we were silent too long): serving on would split the data.
        this.registered = false;
        return this.refusedForGood(e);
      }
      this.log.debug('heartbeat failed', { error: e.message });
    }
    if (!stopping && !this.stopping) this.scheduleHeartbeat(intervalMs);
  }

  heardFromPrimary(range: HashRange, version: bigint): void {
    this.primarySilence.heard(range, version, Date.now());
  }

  /** What the heartbeat tells the master of replicated ranges: log ends, overdue followers, followers ready to join. */
  private replicaReports() {
    const report = (r: { range: HashRange; version: bigint; follower: string }) => ({ start: r.range.start, end: endToProto(r.range.end), version: r.version, follower: r.follower });
    return {
      replicas: this.rangeLogs.positions().map((p) => ({ start: p.range.start, end: endToProto(p.range.end), lastLsn: p.lastLsn, lastTerm: p.lastTerm })),
      overdue: this.replicator.overdue.map(report),
      caughtUp: this.replicator.caughtUp.map(report),
      primaryUnheard: this.primarySilence.unheard(Date.now()).map((u) => report({ ...u, follower: this.id })),
    };
  }

  /** Fetches the current map from the master. */
  async refreshMap(): Promise<void> {
    const c = this.masterClient();
    const res = await call(c, c.getMap, {}, { token: this.serverToken.get(), timeoutMs: 2000 }).catch((err: unknown) => {
      this.followLeader(err);
      throw err;
    });
    await this.installMap(mapFromProto(res.map));
  }

  // ---------------------------------------------------------------- fences and the master's journal

  get maxFenceMs(): number {
    return this.opts.maxFenceMs ?? DEFAULT_MAX_FENCE_MS;
  }

  /** What the master's journal says of a move: its state, or 'unknown' when it has none. Throws when the master cannot be asked. */
  async moveStatusAtMaster(moveId: string): Promise<string> {
    const c = this.masterClient();
    const res = await call(c, c.getMoveStatus, { moveId }, { token: this.serverToken.get(), timeoutMs: 2000 }).catch((err: unknown) => {
      this.followLeader(err);
      throw err;
    });
    return res.known ? res.state : 'unknown';
  }

  /** Runs as a field initializer, before the constructor has set `opts`: every dependency is read when used. */
  private startFenceReconciler(): FenceReconciler {
    const node = this;
    const r = new FenceReconciler({
      fences: () => this.fences,
      transferRunning: (moveId) => this.moves.transferRunning(moveId),
      // Only the master that admitted this shard (its own cluster's) may tell it a move is unknown.
      admitted: () => this.registered && !this.stopping,
      askMaster: (moveId) => this.moveStatusAtMaster(moveId),
      refreshMap: () => this.refreshMap(),
      forgetMove: (moveId) => void this.moves.abort(moveId),
      get log() {
        return node.opts.log;
      },
    });
    r.start();
    return r;
  }

  /** Tells the master we are stopping (shown as down at once), then closes the store. */
  async close(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.heartbeatTimer);
    if (this.registered) await this.heartbeat(this.opts.heartbeatIntervalMs, true).catch(() => undefined);
    await this.fenceReconciler.stop();
    this.replicator?.close();
    this.peers.close();
    this.controlPeers.close();
    this.masters.close();
    await this.janitor.stop();
    await this.store.close();
  }
}
