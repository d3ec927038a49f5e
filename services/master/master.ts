/**
 * The master: wires its parts and answers for them. Each part owns one thing:
 *
 * - cluster-state.ts: the map, the cluster id and the shard registry, and the
 *   one serialized, durable way they change (a failed write halts the master);
 * - membership.ts: registration and admission, heartbeats, live shards, and
 *   the operator's views of servers and ranges;
 * - access.ts: the client list, login, reload, revocations, and the cluster
 *   checks on every call's token;
 * - shard-calls.ts: the master's calls to the shards' control service (map
 *   push, bucket stats, stop);
 * - operations.ts: rebalance and drain (plan and start), removal of a shard;
 * - coordinator.ts: the moves themselves, journaled step by step.
 */
import type { Logger } from 'winston';
import { deriveTokenKey, ServerTokenSource, type Claims } from '../common/auth.js';
import type { ClientTls } from '../common/grpc.js';
import { factorOf, type ClusterMap } from '../common/map.js';
import { mapOrThrow, setFactor } from './replica-steps.js';
import { Access, type ClientUser } from './access.js';
import type { ClientListChange } from './client-list.js';
import { ClusterState } from './cluster-state.js';
import { MoveCoordinator } from './coordinator.js';
import { planFailover, type FailoverView } from './failover.js';
import { ReplicaMoves, type ReplicaOperation } from './replica-moves.js';
import { failpoint } from '../common/failpoints.js';
import type { LoginCaller } from './logins.js';
import { Membership, type RangeView, type ServerView, type ShardBeat, type ShardHello } from './membership.js';
import { Operations, type StartedOperation } from './operations.js';
import type { Plan } from './planner.js';
import { ShardCalls } from './shard-calls.js';
import type { MasterState } from './meta-store.js';
import { MasterStore } from './store.js';

export type { ClientUser } from './access.js';
export { newClusterId } from './cluster-state.js';
export { NO_DISK_REPORT, type RangeCount, type RangeView, type ServerView, type ShardHello } from './membership.js';
export type { StartedOperation } from './operations.js';

export interface MasterOptions {
  nodeId?: string;
  dataDir: string;
  serverCredential: string;
  clients: ClientUser[];
  expectShards: number;
  tokenTtlSeconds: number;
  heartbeatIntervalMs: number;
  shardDownAfterMs: number;
  maxMessageBytes: number;
  /** Refuse shards whose address was not approved with AddServer. */
  requireApproval?: boolean;
  maxConcurrentMoves?: number;
  /** Default throttle per move in MB/s; 0 = unthrottled. */
  moveMaxMbps?: number;
  /** The planner never gives a shard data that would take its disk's use past this fraction of its size (default 0.9). */
  diskHighWater?: number;
  /** How many shards hold each range, where there are that many; read when the cluster forms (default 1). */
  replicationFactor?: number;
  /** A shard down this long has its copies rebuilt on other shards (default 10 minutes). */
  replicaDownTimeoutMs?: number;
  /** TLS used when the master dials shards. */
  peerTls?: ClientTls;
  log: Logger;
  /**
   * Opens the durable state; default: the LevelDB store in dataDir. Whoever
   * passes another (the etcd store) holds its leadership; the master closes
   * the state at close. Until `metaStore: etcd` is configured, tests use it.
   */
  openState?: () => Promise<MasterState>;
  /**
   * Reads the client list again from where it came from (the config file,
   * flags and environment), for SIGHUP and AdminService.Reload; throws with
   * the config error. `restartNeeded` names other keys that changed, which
   * take effect only at a restart. Unset: reload is refused.
   */
  reloadConfig?: () => { clients: ClientUser[]; restartNeeded: string[] };
  /**
   * Called once when a durable write of the master's state failed: its outcome
   * is unknown, so the master stops acting (as etcd stops on a WAL sync
   * failure) and the process should exit; the restarted master reads what is
   * on disk and carries every journaled move to its end. Default: log only.
   */
  onFatal?: (err: Error) => void;
  /** Called when a shard refuses one of this master's calls with STALE_TERM (a newer master leads): the role steps down at once. */
  onStaleTerm?: (why: string) => void;
  /**
   * The term this master leads under, carried by every call it makes to a
   * shard (shards refuse a lower term than the highest they have seen): the
   * leadership key's create revision on etcd (master-role.ts). Default "0",
   * the fixed term of an embedded master.
   */
  term?: string;
}

/** The term of an embedded master: the lowest, so any master elected on etcd later outranks it. */
export const EMBEDDED_TERM = '0';

/** How often the master looks for replica groups to change. */
const REPLICA_PASS_MS = 250;
/** A gap this long between two passes means the process itself stalled. */
const STALL_MS = 1000;

export class Master {
  readonly nodeId: string;
  readonly tokenKey: Buffer;
  readonly coordinator: MoveCoordinator;
  private readonly members: Membership;
  private readonly access: Access;
  private readonly calls: ShardCalls;
  private readonly operations: Operations;
  /** Rebalance and drain of replicated clusters (replica-moves.ts). */
  private readonly replicaMoves: ReplicaMoves;
  /** Failover, in-sync removals and rejoins of replicated ranges (failover.ts), a pass every REPLICA_PASS_MS. */
  private readonly replicaTimer: NodeJS.Timeout;
  private replicaPassRunning = false;
  /**
   * No group change before this time: a master that has just started, or
   * has just run again after a stall (paused, swapped out), has heard no
   * heartbeat lately, and must not take shards that are up for down.
   */
  private judgeShardsFrom: number;
  private lastPassAt = Date.now();

  private constructor(
    private readonly opts: MasterOptions,
    private readonly store: MasterState,
    private readonly state: ClusterState,
  ) {
    this.nodeId = opts.nodeId ?? 'master';
    this.tokenKey = deriveTokenKey(opts.serverCredential);
    const serverToken = new ServerTokenSource(this.tokenKey, this.nodeId, { clusterId: () => state.clusterId, term: opts.term ?? EMBEDDED_TERM });
    this.members = new Membership(state, store, { ...opts, maxLearners: opts.maxConcurrentMoves ?? 2 }, opts.log);
    this.access = new Access(state, store, this.tokenKey, opts.clients, opts, opts.log);
    this.calls = new ShardCalls(state, serverToken, opts.log, opts);
    this.coordinator = new MoveCoordinator(
      {
        log: opts.log,
        addressOf: (id) => state.shard(id)?.address,
        commitMove: (move, journal) => state.commitMove(move, journal),
        pushMapTo: (id) => this.calls.pushMapTo(id),
        saveMove: (id, journal) => state.durably(`journal move ${id}`, () => store.saveMove(id, journal)),
        epoch: () => state.map.epoch,
      },
      this.calls.clients,
      serverToken,
      { maxConcurrentMoves: opts.maxConcurrentMoves ?? 2, moveMaxMbps: opts.moveMaxMbps ?? 0 },
    );
    this.replicaMoves = new ReplicaMoves(
      {
        log: opts.log,
        map: () => state.map,
        // One durable compare-and-set step, serialized with the failover pass and every other map change.
        commit: (step, what) =>
          state.serial.run(async () => {
            state.checkNotHalted();
            const next = mapOrThrow(step(state.map));
            await state.commitMap(next);
            opts.log.info('replica group changed by a move', { change: what, epoch: next.epoch.toString() });
          }),
        caughtUp: (range, version, shard) =>
          this.members.failoverView().caughtUp.some((n) => n.follower === shard && n.version === version && n.range.start === range.start && n.range.end === range.end),
      },
      opts.maxConcurrentMoves ?? 2,
    );
    this.operations = new Operations({ state, members: this.members, calls: this.calls, coordinator: this.coordinator, store, log: opts.log, diskHighWater: opts.diskHighWater, replicaMoves: this.replicaMoves });
    this.judgeShardsFrom = Date.now() + this.judgeAfterMs;
    this.replicaTimer = setInterval(() => void this.replicaPass(), REPLICA_PASS_MS);
    this.replicaTimer.unref();
  }

  /** One failover pass: the group changes the shards' state calls for, as one durable map step. */
  private async replicaPass(): Promise<void> {
    const now = Date.now();
    if (now - this.lastPassAt > STALL_MS) {
      this.judgeShardsFrom = now + this.judgeAfterMs;
      this.opts.log.warn('the master did not run for a while (paused?); it judges shards again once they could have reported', { stalledMs: now - this.lastPassAt, waitMs: this.judgeAfterMs });
    }
    this.lastPassAt = now;
    if (now < this.judgeShardsFrom || this.replicaPassRunning || this.state.closed || this.state.map.epoch === 0n) return;
    this.replicaPassRunning = true;
    try {
      if (!planFailover(this.state.map, this.failoverView())) return;
      await this.state.serial.run(async () => {
        const plan = planFailover(this.state.map, this.failoverView()); // again, on the map as it is now
        if (!plan || this.state.closed) return;
        failpoint('master-before-replica-step'); // `crash`: the pass decided (promote, in-sync out or back, new copy), nothing written
        await this.state.commitMap(plan.map);
        failpoint('master-after-replica-step'); // `crash`: the step is durable, not yet pushed to the shards
        for (const change of plan.changes) this.opts.log.warn('replica group changed', { change, epoch: plan.map.epoch.toString() });
      });
    } catch (err) {
      this.opts.log.error('a failover pass failed; the next pass tries again', { error: (err as Error).message });
    } finally {
      this.replicaPassRunning = false;
    }
  }

  /** The shards as the heartbeats tell them, and the ranges a rebalance or drain is changing (left to it). */
  private failoverView(): FailoverView {
    return { ...this.members.failoverView(), ownedByMoves: (range) => this.replicaMoves.owns(range) };
  }

  /** A rebalance or drain of a replicated cluster, by its operation id. */
  replicaOperation(id: string): ReplicaOperation | undefined {
    return this.replicaMoves.operation(id);
  }

  /** Every rebalance or drain of replicas this master ran. */
  replicaOperations(): ReplicaOperation[] {
    return this.replicaMoves.list();
  }

  static async open(opts: MasterOptions): Promise<Master> {
    const store = await (opts.openState?.() ?? MasterStore.open(opts.dataDir));
    let m: Master | undefined;
    const state = new ClusterState(store, opts.log, {
      onHalt: () => void m?.coordinator.close(0),
      onFatal: opts.onFatal,
      onCommit: () => void m?.calls.pushMapToAll(),
    });
    await state.load();
    m = new Master(opts, store, state);
    await m.members.loadApprovals();
    // The list may have changed while the master was down: revoke as a reload would.
    await m.access.start();
    opts.log.info('master state loaded', { epoch: state.map.epoch.toString(), shards: state.shards.length });
    await m.coordinator.resume(await store.loadMoves());
    return m;
  }

  get log(): Logger {
    return this.opts.log;
  }

  currentMap(): ClusterMap {
    return this.state.map;
  }

  get epoch(): bigint {
    return this.state.map.epoch;
  }

  get clusterId(): string {
    return this.state.clusterId;
  }

  /** The term its shard calls carry. */
  get term(): string {
    return this.opts.term ?? EMBEDDED_TERM;
  }

  /** True once it stopped acting: closed, or halted after a failed durable write. */
  get closed(): boolean {
    return this.state.closed;
  }

  get heartbeatIntervalMs(): number {
    return this.opts.heartbeatIntervalMs;
  }

  /** Subscribes to committed maps; returns the unsubscribe function. */
  watch(fn: (m: ClusterMap) => void): () => void {
    return this.state.watch(fn);
  }

  // Membership

  register(hello: ShardHello): Promise<{ shardId: string; map: ClusterMap }> {
    return this.members.register(hello);
  }

  heartbeat(shardId: string, hb: ShardBeat): void {
    this.members.heartbeat(shardId, hb);
  }

  listServers(): ServerView[] {
    return this.members.listServers();
  }

  getRanges(): RangeView[] {
    return this.members.getRanges();
  }

  addServer(address: string): Promise<boolean> {
    return this.members.addServer(address);
  }

  // Access

  login(user: string, password: string, from?: LoginCaller): Promise<{ token: string; expiresAtMs: number; role: string }> {
    return this.access.login(user, password, from);
  }

  reload(): Promise<{ change: ClientListChange; users: number; restartNeeded: string[] }> {
    return this.access.reload();
  }

  checkServerCall(claims: Claims, method: string): void {
    this.access.checkServerCall(claims, method);
  }

  checkClientCall(claims: Claims): void {
    this.access.checkClientCall(claims);
  }

  tokenRevocations(): Array<{ user: string; notBeforeMs: number }> {
    return this.access.tokenRevocations();
  }

  // Operations

  planRebalance(drain?: string): Promise<{ plan: Plan; before: Map<string, number>; after: Map<string, number> }> {
    return this.operations.planRebalance(drain);
  }

  startRebalance(maxMbps: number, drain?: string, operationId = ''): Promise<StartedOperation> {
    return this.operations.startRebalance(maxMbps, drain, operationId);
  }

  removeServer(server: string, operationId = ''): Promise<{ shardId: string; stopped: boolean }> {
    return this.operations.removeServer(server, operationId);
  }

  /** Changes the replication factor (one durable map step); re-replication or trimming follows by itself. */
  setReplicationFactor(factor: number): Promise<{ previous: number; factor: number }> {
    this.state.checkNotHalted();
    return this.state.serial.run(async () => {
      const previous = factorOf(this.state.map);
      const next = mapOrThrow(setFactor(this.state.map, factor));
      if (next !== this.state.map) await this.state.commitMap(next);
      if (factor !== previous) this.opts.log.info('replication factor changed', { previous, factor, epoch: next.epoch.toString() });
      return { previous, factor };
    });
  }

  /** Pushes the current map to every shard; returns the ids that did not answer. */
  pushMapToAll(): Promise<{ failed: Array<{ id: string; error: string }> }> {
    return this.calls.pushMapToAll();
  }

  /**
   * How long shards get to report before the master judges them: the down
   * time, two heartbeats, and a reconnect (channels back off up to 2 s).
   */
  private get judgeAfterMs(): number {
    return this.opts.shardDownAfterMs + 2 * this.opts.heartbeatIntervalMs + 2000;
  }

  /** Stops the failover pass (at the start of a shutdown, before calls are drained). */
  stopActing(): void {
    clearInterval(this.replicaTimer);
  }

  async close(): Promise<void> {
    this.state.closed = true;
    clearInterval(this.replicaTimer);
    this.replicaMoves.close();
    await this.coordinator.close();
    await this.state.close();
    this.calls.close();
    await this.store.close();
  }
}
