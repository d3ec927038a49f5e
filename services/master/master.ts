/**
 * The master: membership, the cluster map, client login, and the Admin view.
 * State changes are serialized and written durably (synced) before they are
 * acknowledged or pushed; the map always tiles [0, 2^64) once it exists.
 */
import type { Logger } from 'winston';
import { ShardControlServiceClient } from '../../proto/gen/cairn/v1/control.js';
import { randomBytes } from 'node:crypto';
import { checkClientClaims, deriveTokenKey, hashPasswordAsync, mintToken, ServerTokenSource, verifyPasswordAsync, type Claims, type Role } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import { call, ClientPool, type ClientTls } from '../common/grpc.js';
import { EMPTY_MAP, mapError, mapToProto, rangesOf, type ClusterMap } from '../common/map.js';
import { evenSplit, rangeCovers, rangesOverlap, reassign, shareOf, type HashRange } from '../common/ranges.js';
import { AmbiguousWrite, MoveCoordinator, type Operation } from './coordinator.js';
import type { Move } from './moves.js';
import { DEFAULT_DISK_HIGH_WATER, diskRoomBytes, drainShortfallMessage, plan as planMoves, shardLoads, type DiskReport, type Plan } from './planner.js';
import { MasterStore, type AdminOpRecord, type Registry, type ShardRecord } from './store.js';
import { LoginGate, type LoginCaller } from './logins.js';
import { applied, diffClients, revoke, revokedBefore, type ClientListChange, type Revocation } from './client-list.js';

export interface ClientUser {
  user: string;
  passwordHash: string;
  role: Exclude<Role, 'server'>;
}

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
  /** TLS used when the master dials shards. */
  peerTls?: ClientTls;
  log: Logger;
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
}

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

interface LiveState {
  sessionId: string;
  lastHeartbeatMs: number;
  stopping: boolean;
  epoch: bigint;
  ranges: RangeCount[];
  opsPerSec: number;
  /** The shard's data directory's file system at the last heartbeat; total 0 = not reported (an older shard). */
  disk: DiskReport;
}

export const NO_DISK_REPORT: DiskReport = Object.freeze({ freeBytes: 0, totalBytes: 0, full: false });

export interface ServerView {
  id: string;
  address: string;
  status: 'up' | 'down';
  bytes: number;
  rows: number;
  ranges: number;
  share: number;
  opsPerSec: number;
  lastHeartbeatMs: number;
  diskFreeBytes: number;
  diskTotalBytes: number;
  diskFull: boolean;
}

export interface RangeView extends HashRange {
  shardId: string;
  address: string;
  rows: number;
  bytes: number;
}

/** Serializes async state changes so each is one durable step after the previous. */
class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}

export class Master {
  readonly nodeId: string;
  readonly tokenKey: Buffer;
  private map: ClusterMap = EMPTY_MAP;
  private shards: ShardRecord[] = [];
  /** Ids removed with remserver; a process still holding one may not register again with it. */
  private removed = new Set<string>();
  private nextShardNumber = 1;
  private readonly live = new Map<string, LiveState>();
  private readonly serial = new Serial();
  private readonly watchers = new Set<(m: ClusterMap) => void>();
  private readonly shardClients: ClientPool<ShardControlServiceClient>;
  private readonly serverToken: ServerTokenSource;
  private closed = false;
  /** Set once a durable write failed: the master acts no more (see MasterOptions.onFatal). */
  private halted: Error | undefined;
  private approvals = new Set<string>();
  /** Made once when the cluster forms; '' until then. */
  private clusterIdValue = '';
  private readonly startedAtMs = Date.now();
  /** Refusals already logged (shard and reason), so a shard retrying every second logs once. */
  private readonly refusalsLogged = new Set<string>();
  /** Password checks: a few at a time off the event loop, and per-user and per-host failure limits (logins.ts). */
  private readonly logins = new LoginGate({}, Date.now, (l) =>
    this.log.warn(`login failure limit reached: logins ${l.kind === 'user' ? 'for this user' : 'from this host'} are refused until ${new Date(l.untilMs).toISOString()}`, l),
  );
  /** The client list in force: from the config at start, replaced by reload(). */
  private clients: ClientUser[];
  /** Users whose earlier tokens no longer hold (client-list.ts); shards get them with each heartbeat. */
  private revocations: Revocation[] = [];
  /** Set while a new client list is being saved: logins wait, so none mints a token under the old list after the revocation time. */
  private applyingClients: Promise<unknown> | undefined;
  /** Answers of admin calls by the caller's operation id (answerOnce). */
  private readonly answers = new Map<string, { what: string; answer: Promise<unknown> }>();
  /** Checked against for unknown users; hashed once per process, off the event loop, from the start. */
  private readonly dummyHash = dummyPasswordHash();
  coordinator!: MoveCoordinator;

  private constructor(
    private readonly opts: MasterOptions,
    private readonly store: MasterStore,
  ) {
    this.nodeId = opts.nodeId ?? 'master';
    this.clients = opts.clients;
    this.tokenKey = deriveTokenKey(opts.serverCredential);
    this.serverToken = new ServerTokenSource(this.tokenKey, this.nodeId, { clusterId: () => this.clusterIdValue });
    this.shardClients = new ClientPool(ShardControlServiceClient, { tls: opts.peerTls, maxMessageBytes: opts.maxMessageBytes });
  }

  static async open(opts: MasterOptions): Promise<Master> {
    const store = await MasterStore.open(opts.dataDir);
    const m = new Master(opts, store);
    const state = await store.load();
    m.shards = state.shards;
    m.nextShardNumber = state.nextShardNumber;
    m.removed = new Set(state.removed);
    m.clusterIdValue = state.clusterId;
    if (state.map) {
      const err = mapError(state.map);
      if (err) throw new Error(`stored map is invalid: ${err}`);
      m.map = state.map;
    }
    if (m.map.epoch > 0n && !m.clusterIdValue) {
      // State written before clusters had ids: this master's own cluster gets one now, and its shards adopt it when they register.
      m.clusterIdValue = newClusterId();
      await store.save({ ...m.registry() });
      opts.log.info('cluster id minted for a cluster formed before cluster ids', { clusterId: m.clusterIdValue, epoch: m.map.epoch.toString() });
    }
    m.map = { ...m.map, clusterId: m.clusterIdValue };
    m.approvals = new Set(await store.loadApprovals());
    // The list may have changed while the master was down: revoke as a reload would.
    const { clients: before, revocations } = await store.loadClientState();
    m.revocations = revocations;
    await m.applyClientList(opts.clients, before, 'start');
    m.coordinator = new MoveCoordinator(
      {
        log: opts.log,
        addressOf: (id) => m.shards.find((s) => s.id === id)?.address,
        commitMove: (move, journal) => m.commitMove(move, journal),
        pushMapTo: (id) => m.pushMapTo(id),
        saveMove: (id, journal) => m.durably(`journal move ${id}`, () => store.saveMove(id, journal)),
        epoch: () => m.map.epoch,
      },
      m.shardClients,
      m.serverToken,
      { maxConcurrentMoves: opts.maxConcurrentMoves ?? 2, moveMaxMbps: opts.moveMaxMbps ?? 0 },
    );
    opts.log.info('master state loaded', { epoch: m.map.epoch.toString(), shards: m.shards.length });
    await m.coordinator.resume(await store.loadMoves());
    return m;
  }

  get log(): Logger {
    return this.opts.log;
  }

  currentMap(): ClusterMap {
    return this.map;
  }

  get epoch(): bigint {
    return this.map.epoch;
  }

  get clusterId(): string {
    return this.clusterIdValue;
  }

  get heartbeatIntervalMs(): number {
    return this.opts.heartbeatIntervalMs;
  }

  /** Subscribes to committed maps; returns the unsubscribe function. */
  watch(fn: (m: ClusterMap) => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  /**
   * Runs one durable write of the master's state. A write that fails has an
   * unknown outcome (an fsync error may follow a write that reached the disk),
   * so the master halts instead of guessing: it acts no more, and the process
   * exits (onFatal); the restarted master reads what is really on disk.
   */
  private async durably<T>(what: string, write: () => Promise<T>): Promise<T> {
    if (this.halted) throw new AmbiguousWrite(`the master stopped after a failed durable write (${this.halted.message}); restart it`);
    try {
      return await write();
    } catch (err) {
      const e = err as Error;
      this.halted = e;
      this.closed = true;
      this.log.error('a durable write of the master state failed; its outcome is unknown, so the master stops: restart it to carry on from what is on disk', {
        write: what,
        error: e.message,
      });
      void this.coordinator?.close(0);
      this.opts.onFatal?.(e);
      throw new AmbiguousWrite(`${what}: the durable write failed (${e.message}); its outcome is unknown and the master stopped`);
    }
  }

  /** Tells each watcher; a watcher that throws is logged, never allowed to fail the step that committed. */
  private publish(next: ClusterMap): void {
    for (const w of this.watchers) {
      try {
        w(next);
      } catch (err) {
        this.log.warn('a map watcher failed', { epoch: next.epoch.toString(), error: (err as Error).message });
      }
    }
    void this.pushMapToAll();
  }

  /** The one place a new map becomes current: validate, persist (synced), publish. */
  private async commitMap(next: ClusterMap, adminOps: Array<{ id: string; json: AdminOpRecord }> = []): Promise<void> {
    const err = mapError(next);
    if (err) throw new CairnError('INTERNAL', `refusing to commit an invalid map: ${err}`);
    if (next.epoch !== this.map.epoch + 1n) throw new CairnError('INTERNAL', `map epoch must grow by one: ${this.map.epoch} -> ${next.epoch}`);
    await this.durably(`map epoch ${next.epoch}`, () => this.store.save({ map: next, ...this.registry(), adminOps }));
    this.map = next;
    this.log.info('map committed', { epoch: next.epoch.toString(), ranges: next.ranges.length });
    this.publish(next);
  }

  private registry(): Registry {
    return { clusterId: this.clusterIdValue, shards: this.shards, nextShardNumber: this.nextShardNumber, removed: [...this.removed] };
  }

  private shardRefs() {
    return this.shards.map((s) => ({ id: s.id, address: s.address }));
  }

  /**
   * Admits a shard (new or returning). Once expectShards have registered, the
   * cluster forms: its id is minted and the space split evenly. Refused, with
   * nothing changed (`admission` says why): a shard of another cluster, a
   * shard that belongs to a cluster when this master has no state, a removed
   * id, and a second live process for one shard id (docs/design.md "Membership").
   */
  register(hello: ShardHello): Promise<{ shardId: string; map: ClusterMap }> {
    return this.serial.run(async () => {
      if (this.halted) throw new CairnError('NOT_READY', 'the master stopped after a failed durable write; it must be restarted', { retryAfterMs: 1000 });
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
      let rec = shardId ? this.shards.find((s) => s.id === shardId) : undefined;
      const isNew = !rec;
      // The first expectShards shards form the cluster; once it has a map, new shards need AddServer.
      if (!rec && this.opts.requireApproval && this.map.epoch > 0n && !this.approvals.has(address)) {
        throw new CairnError('PERMISSION_DENIED', `shard at ${address} is not approved to join; run: cairn ctl addserver ${address}`);
      }
      if (!rec) {
        const id = shardId || `s${this.nextShardNumber}`;
        const n = /^s(\d+)$/.exec(id);
        if (n) this.nextShardNumber = Math.max(this.nextShardNumber, Number(n[1]) + 1);
        rec = { id, address, registeredAtMs: Date.now() };
        this.shards = [...this.shards, rec];
      }
      const id = rec.id;
      const addressChanged = rec.address !== address;
      const sessionChanged = rec.sessionId !== hello.sessionId || rec.generation !== hello.generation;
      if (addressChanged || sessionChanged) {
        this.shards = this.shards.map((s) => (s.id === id ? { ...s, address, generation: hello.generation, sessionId: hello.sessionId } : s));
      }
      this.live.set(id, { sessionId: hello.sessionId, lastHeartbeatMs: Date.now(), stopping: false, epoch: hello.epoch, ranges: [], opsPerSec: 0, disk: NO_DISK_REPORT });

      if (this.map.epoch === 0n && this.shards.length >= this.opts.expectShards) {
        const owners = this.shards.slice(0, this.opts.expectShards);
        const ranges = evenSplit(owners.length).map((r, i) => ({ ...r, shardId: owners[i]!.id }));
        this.clusterIdValue = newClusterId();
        this.log.info('All data servers have registered!', { shards: owners.map((s) => s.id), clusterId: this.clusterIdValue });
        await this.commitMap({ epoch: 1n, ranges, shards: this.shardRefs(), clusterId: this.clusterIdValue });
      } else if (this.map.epoch > 0n && (isNew || addressChanged)) {
        await this.commitMap({ ...this.map, epoch: this.map.epoch + 1n, shards: this.shardRefs() });
      } else {
        await this.durably(`registry (shard ${id})`, () => this.store.save({ ...this.registry() }));
        if (this.map.epoch === 0n) {
          this.log.info('waiting for shards', { registered: this.shards.length, expected: this.opts.expectShards });
        }
      }
      this.log.info('shard registered', { shardId: id, address, isNew, generation: hello.generation });
      return { shardId: id, map: this.map };
    });
  }

  /** Why this master may not admit the shard now, or undefined. Pure over the master's state. */
  private admission(hello: ShardHello): CairnError | undefined {
    const ours = this.clusterIdValue;
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
    if (hello.shardId && this.removed.has(hello.shardId)) {
      return new CairnError('PRECONDITION', `shard ${hello.shardId} was removed from the cluster; to join again, start it with an empty data directory`, { reason: 'SHARD_REMOVED' });
    }
    const rec = hello.shardId ? this.shards.find((s) => s.id === hello.shardId) : undefined;
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

  /**
   * Makes `next` the client list in force. Users removed, lowered, or given a
   * new password since `before` (the list last applied) have their tokens
   * revoked: the master refuses them at once, each shard at its next
   * heartbeat. Durable before it takes effect.
   */
  private async applyClientList(next: ClientUser[], before: ReturnType<typeof applied> | undefined, why: 'start' | 'reload'): Promise<ClientListChange> {
    const now = Date.now();
    const nextApplied = applied(next);
    const change = diffClients(before ?? nextApplied, nextApplied);
    const revocations = revoke(this.revocations, change.revoked, now, this.opts.tokenTtlSeconds * 1000);
    const saving = this.durably(`client list (${why})`, () => this.store.saveClientState(nextApplied, revocations));
    this.applyingClients = saving;
    try {
      await saving;
    } finally {
      this.applyingClients = undefined;
    }
    this.clients = next;
    this.revocations = revocations;
    const changed = Object.entries(change).filter(([k, v]) => k !== 'revoked' && v.length);
    if (changed.length || why === 'reload') {
      this.log.info(`client list ${why === 'start' ? 'changed while the master was down' : 'reloaded'}`, { users: next.length, ...Object.fromEntries(changed), revoked: change.revoked });
    }
    return change;
  }

  /**
   * Reads the client list again (SIGHUP, AdminService.Reload) and applies it.
   * A config error changes nothing and is returned as FAILED_PRECONDITION
   * naming the key.
   */
  reload(): Promise<{ change: ClientListChange; users: number; restartNeeded: string[] }> {
    return this.serial.run(async () => {
      if (this.halted) throw new CairnError('NOT_READY', 'the master stopped after a failed durable write; it must be restarted', { retryAfterMs: 1000 });
      if (!this.opts.reloadConfig) throw new CairnError('PRECONDITION', 'this master was not started from a config it can read again; restart it to change its client list');
      let loaded: { clients: ClientUser[]; restartNeeded: string[] };
      try {
        loaded = this.opts.reloadConfig();
      } catch (err) {
        throw new CairnError('PRECONDITION', `reload refused, nothing changed: ${(err as Error).message}`);
      }
      const change = await this.applyClientList(loaded.clients, applied(this.clients), 'reload');
      if (loaded.restartNeeded.length) this.log.warn('reload: these keys changed and take effect only at a restart', { keys: loaded.restartNeeded });
      return { change, users: loaded.clients.length, restartNeeded: loaded.restartNeeded };
    });
  }

  /**
   * Checks every call made with a server token (HandlerEnv.checkServerCall).
   * A shard of another cluster, say after this master was started on the
   * wrong state, must hear "another cluster" on every call: never
   * "superseded" on a heartbeat because a new shard took its id here (it
   * would stop), nor "unknown move" on GetMoveStatus (it would lift a fence
   * its own master may have committed). RegisterShard is judged by
   * admission(), which says more. An empty id is a shard not yet in a cluster.
   */
  checkServerCall(claims: Claims, method: string): void {
    const theirs = claims.cid ?? '';
    if (method === 'RegisterShard' || !theirs || theirs === this.clusterIdValue) return;
    throw new CairnError(
      'PRECONDITION',
      `refused ${method} from a process of cluster ${theirs} (${claims.sub}): this master's cluster is ${this.clusterIdValue || '(none: it has no state)'}`,
      { reason: 'CLUSTER_MISMATCH' },
    );
  }

  /** Checks a client token's cluster and revocation (HandlerEnv.checkClientCall). */
  checkClientCall(claims: Claims): void {
    checkClientClaims(claims, { clusterId: this.clusterIdValue, revokedBefore: (u) => revokedBefore(this.revocations, u) });
  }

  /** The revocations in force, for the shards (heartbeat and register answers). */
  tokenRevocations(): Array<{ user: string; notBeforeMs: number }> {
    return this.revocations.map((r) => ({ user: r.user, notBeforeMs: r.notBeforeMs }));
  }

  /** Records a heartbeat; refused when the shard is unknown, or when another process now holds its id. */
  heartbeat(shardId: string, hb: { sessionId: string; epoch: bigint; ranges: RangeCount[]; opsPerSec: number; stopping: boolean; disk?: DiskReport }): void {
    const rec = this.shards.find((s) => s.id === shardId);
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

  /**
   * Checks a password and mints a token. The scrypt check runs on the libuv
   * pool, a few at a time, and not at all for a user name or host over its
   * failure limit (LIMIT_EXCEEDED) or while too many wait (NOT_READY): see
   * logins.ts. `from` is the caller (its host, deadline, whether it left).
   */
  async login(user: string, password: string, from: LoginCaller = { peer: 'local' }): Promise<{ token: string; expiresAtMs: number; role: string }> {
    const u = this.clients.find((c) => c.user === user);
    // Verify even for unknown users (against a dummy hash) so timing does not reveal which users exist.
    const ok = await this.logins.attempt({ ...from, user }, async () => (await verifyPasswordAsync(password, u?.passwordHash ?? (await this.dummyHash))) && !!u);
    if (!ok || !u) throw new CairnError('UNAUTHENTICATED', 'login failed: unknown user or wrong password');
    // A reload during the check may have removed or changed the user: mint only what the list in force allows.
    while (this.applyingClients) await this.applyingClients.catch(() => undefined);
    const current = this.clients.find((c) => c.user === user);
    if (!current || current.passwordHash !== u.passwordHash) throw new CairnError('UNAUTHENTICATED', 'login failed: unknown user or wrong password');
    // Bound to the cluster: another cluster sharing the server credential refuses it (auth.ts checkClientClaims).
    const { token, expiresAtMs } = mintToken(this.tokenKey, current.user, current.role, this.opts.tokenTtlSeconds * 1000, Date.now(), this.clusterIdValue);
    return { token, expiresAtMs, role: current.role };
  }

  private isUp(id: string, now = Date.now()): boolean {
    const l = this.live.get(id);
    return !!l && !l.stopping && now - l.lastHeartbeatMs <= this.opts.shardDownAfterMs;
  }

  /** Counts from a shard's last heartbeat, restricted to the ranges the map gives it now. */
  private ownedCounts(shardId: string, within: HashRange[]): { rows: number; bytes: number } {
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
    return this.shards.map((s) => {
      const owned = rangesOf(this.map, s.id);
      const live = this.live.get(s.id);
      return {
        id: s.id,
        address: s.address,
        status: this.isUp(s.id, now) ? 'up' : 'down',
        ...this.ownedCounts(s.id, owned),
        ranges: owned.length,
        share: shareOf(owned),
        opsPerSec: live?.opsPerSec ?? 0,
        lastHeartbeatMs: live?.lastHeartbeatMs ?? 0,
        diskFreeBytes: live?.disk.freeBytes ?? 0,
        diskTotalBytes: live?.disk.totalBytes ?? 0,
        diskFull: live?.disk.full ?? false,
      };
    });
  }

  getRanges(): RangeView[] {
    const addr = new Map(this.shards.map((s) => [s.id, s.address]));
    return this.map.ranges.map((r) => ({
      ...r,
      address: addr.get(r.shardId) ?? '',
      ...this.ownedCounts(r.shardId, [r]),
    }));
  }

  /**
   * A move's commit: the map with the range given to the destination, and
   * the move's journal record, in ONE synced batch (docs/design.md "Moving data", step 5).
   */
  commitMove(move: Move, journal: unknown): Promise<void> {
    return this.serial.run(async () => {
      const r = { start: move.start, end: move.end };
      const stray = this.map.ranges.find((x) => rangesOverlap(x, r) && x.shardId !== move.from);
      if (stray) throw new CairnError('INTERNAL', `cannot commit move ${move.id}: [${stray.start}, ${stray.end}) is owned by ${stray.shardId}, not ${move.from}`);
      const next: ClusterMap = { ...this.map, epoch: this.map.epoch + 1n, ranges: reassign(this.map.ranges, r, move.to) };
      const err = mapError(next);
      if (err) throw new CairnError('INTERNAL', `refusing to commit an invalid map: ${err}`);
      await this.durably(`commit of move ${move.id}`, async () => {
        await this.store.save({ map: next, ...this.registry(), moves: [{ id: move.id, json: journal }] });
        failpoint('master-after-commit-write'); // `error` here: the batch is durable but the write reports a failure (an fsync error)
      });
      this.map = next;
      this.log.info('map committed', { epoch: next.epoch.toString(), ranges: next.ranges.length, moveId: move.id });
      this.publish(next);
    });
  }

  /** Pushes the current map to one shard; true when it took it. */
  async pushMapTo(shardId: string): Promise<boolean> {
    const s = this.shards.find((x) => x.id === shardId);
    if (!s || this.closed) return false;
    try {
      const client = this.shardClients.get(s.address);
      const res = await call(client, client.pushMap, { map: mapToProto(this.map) }, { token: this.serverToken.get(), timeoutMs: 3000 });
      return (res.header?.epoch ?? 0n) >= this.map.epoch;
    } catch {
      return false;
    }
  }

  /** Finds a shard by id or by advertised host:port. */
  resolveShard(server: string): ShardRecord {
    const s = this.shards.find((x) => x.id === server || x.address === server);
    if (!s) throw new CairnError('NOT_FOUND', `no shard "${server}"; \`cairn ctl servers\` lists ids and addresses`);
    return s;
  }

  /** The planner's input: exact per-bucket counts from every shard that is up. */
  private async gatherBuckets(): Promise<Map<number, { bytes: number; rows: number }>> {
    const buckets = new Map<number, { bytes: number; rows: number }>();
    const owners = new Set(this.map.ranges.map((r) => r.shardId));
    await Promise.all(
      this.shards
        .filter((s) => owners.has(s.id) && this.isUp(s.id))
        .map(async (s) => {
          const client = this.shardClients.get(s.address);
          const res = await call(client, client.getBucketStats, {}, { token: this.serverToken.get(), timeoutMs: 10_000 });
          for (const b of res.buckets) buckets.set(b.bucket, { rows: Number(b.rows), bytes: Number(b.bytes) });
        }),
    );
    return buckets;
  }

  /** A dry run: the moves a rebalance (or the drain of `drain`) would make now. */
  async planRebalance(drain?: string): Promise<{ plan: Plan; before: Map<string, number>; after: Map<string, number> }> {
    if (this.map.epoch === 0n) throw new CairnError('PRECONDITION', 'the cluster has no map yet: waiting for expectShards shards to register');
    // A plan made while moves run is planned against a map about to change, and could not start anyway: refuse before showing one.
    if (this.coordinator.busy()) throw new CairnError('CONFLICT', 'another rebalance or drain is still running; watch it with `cairn ctl moves`');
    const draining = drain ? this.resolveShard(drain).id : undefined;
    if (draining && !this.shards.some((s) => s.id !== draining && this.isUp(s.id))) {
      throw new CairnError('PRECONDITION', `cannot drain ${draining}: no other shard is up to take its ranges`);
    }
    const buckets = await this.gatherBuckets();
    const highWater = this.opts.diskHighWater ?? DEFAULT_DISK_HIGH_WATER;
    const room = new Map(this.shards.map((s) => [s.id, diskRoomBytes(this.live.get(s.id)?.disk, highWater)]));
    const plan = planMoves({
      map: this.map,
      shards: this.shards.map((s) => ({ id: s.id, up: this.isUp(s.id), draining: s.id === draining, roomBytes: room.get(s.id) })),
      buckets,
    });
    const stuck = draining ? plan.targetMap.filter((r) => r.shardId === draining).length : 0;
    if (stuck) {
      const others = this.shards.filter((s) => s.id !== draining && this.isUp(s.id));
      // Every range of a draining shard goes somewhere unless the other shards' disks are at the mark.
      if (others.length && others.every((s) => room.get(s.id) !== undefined)) {
        const left = shardLoads(plan.targetMap, buckets).get(draining!)?.bytes ?? 0;
        const rooms = others.map((s) => ({ id: s.id, roomBytes: room.get(s.id)!, plannedBytes: plan.moves.filter((m) => m.to === s.id).reduce((n, m) => n + m.bytes, 0) }));
        throw new CairnError('PRECONDITION', drainShortfallMessage(draining!, left, highWater, rooms));
      }
      throw new CairnError('PRECONDITION', `cannot drain ${draining}: ${stuck} of its ranges have no shard up to take them`);
    }
    const loads = (ranges: typeof this.map.ranges) => new Map([...shardLoads(ranges, buckets)].map(([id, l]) => [id, l.bytes]));
    return { plan, before: loads(this.map.ranges), after: loads(plan.targetMap) };
  }

  /**
   * Plans and starts a rebalance (or the drain of `drain`). With an
   * `operationId`, a retry of the same call (the first answer was lost) gets
   * the first call's operation and starts nothing; the id used for another
   * kind of call is refused.
   */
  startRebalance(maxMbps: number, drain?: string, operationId = ''): Promise<StartedOperation> {
    const what = drain ? `drain of ${drain}` : 'rebalance';
    return this.answerOnce(operationId, what, async () => {
      const journaled = operationId ? this.coordinator.operation(operationId) : undefined;
      if (journaled) {
        // Started before this master restarted: its moves are in the journal, and so is what it planned.
        if (journaled.kind !== (drain ? 'drain' : 'rebalance')) throw reusedOperationId(operationId, journaled.kind, what);
        const moves = this.coordinator.movesOf(journaled).map(({ move: m }) => ({ start: m.start, end: m.end, from: m.from, to: m.to, bytes: m.bytes, rows: 0 }))
          .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0)); // as a plan orders them
        const movedBytes = moves.reduce((n, m) => n + m.bytes, 0);
        return { op: journaled, plan: { moves, targetMap: [], totalBytes: 0, movedBytes, minimumBytes: 0, basis: 'bytes' }, before: new Map(), after: new Map() };
      }
      if (this.coordinator.busy()) throw new CairnError('CONFLICT', 'another rebalance or drain is still running; watch it with `cairn ctl moves`');
      const p = await this.planRebalance(drain);
      if (p.plan.moves.length === 0) return p;
      return { ...p, op: this.coordinator.start(p.plan, drain ? 'drain' : 'rebalance', maxMbps, operationId || undefined) };
    });
  }

  /**
   * Runs an admin call once per caller-chosen operation id: a retry while the
   * first still runs, or after it answered, gets the same answer. A failed
   * call is forgotten, so its retry runs again. Kept for the last
   * ANSWERS_KEPT ids; what must outlive a restart is also in the store
   * (journaled moves, removals).
   */
  private answerOnce<T>(operationId: string, what: string, run: () => Promise<T>): Promise<T> {
    if (!operationId) return run();
    const seen = this.answers.get(operationId);
    if (seen) {
      if (seen.what !== what) return Promise.reject(reusedOperationId(operationId, seen.what, what));
      return seen.answer as Promise<T>;
    }
    const answer = run();
    this.answers.set(operationId, { what, answer });
    answer.catch(() => this.answers.get(operationId)?.answer === answer && this.answers.delete(operationId));
    if (this.answers.size > ANSWERS_KEPT) this.answers.delete(this.answers.keys().next().value!);
    return answer;
  }

  /**
   * Removes a shard that owns no range, then tells its process to stop. With
   * an `operationId`, the removal is recorded under it in the same durable
   * step, so a retry (even after a master restart) answers as the first call
   * did instead of NOT_FOUND.
   */
  removeServer(server: string, operationId = ''): Promise<{ shardId: string; stopped: boolean }> {
    return this.answerOnce(operationId, `removal of ${server}`, async () => {
      const recorded = operationId ? await this.store.loadAdminOp(operationId) : undefined;
      if (recorded) {
        if (recorded.what !== `removal of ${server}`) throw reusedOperationId(operationId, recorded.what, `removal of ${server}`);
        return { shardId: recorded.shardId, stopped: await this.stopRemoved(recorded) };
      }
      return this.removeServerNow(server, operationId);
    });
  }

  private async removeServerNow(server: string, operationId: string): Promise<{ shardId: string; stopped: boolean }> {
    const target = this.resolveShard(server);
    const record = { what: `removal of ${server}`, shardId: target.id, address: target.address };
    const removed = await this.serial.run(async () => {
      const owned = rangesOf(this.map, target.id);
      if (owned.length) {
        const { bytes, rows } = this.ownedCounts(target.id, owned);
        throw new CairnError(
          'PRECONDITION',
          `shard ${target.id} still owns ${owned.length} range${owned.length === 1 ? '' : 's'} (${bytes} bytes, ${rows} rows); drain it first: cairn ctl dropserver ${target.id}`,
        );
      }
      this.shards = this.shards.filter((s) => s.id !== target.id);
      this.live.delete(target.id);
      this.removed.add(target.id);
      const adminOps = operationId ? [{ id: operationId, json: record }] : [];
      if (this.map.epoch > 0n) await this.commitMap({ ...this.map, epoch: this.map.epoch + 1n, shards: this.shardRefs() }, adminOps);
      else await this.durably(`registry (removing ${target.id})`, () => this.store.save({ ...this.registry(), adminOps }));
      this.log.info('shard removed', { shardId: target.id, address: target.address, operationId: operationId || undefined });
      return target;
    });
    return { shardId: removed.id, stopped: await this.stopRemoved(record) };
  }

  /** Tells a removed shard's process to stop; true when it acknowledged. */
  private async stopRemoved(r: { shardId: string; address: string }): Promise<boolean> {
    try {
      const client = this.shardClients.get(r.address);
      await call(client, client.stopShard, { shardId: r.shardId }, { token: this.serverToken.get(), timeoutMs: 3000 });
      return true;
    } catch (err) {
      this.log.warn('removed shard did not acknowledge the stop', { shardId: r.shardId, error: (err as Error).message });
      return false;
    }
  }

  async addServer(address: string): Promise<boolean> {
    this.approvals.add(address);
    await this.store.saveApprovals([...this.approvals]);
    return !!this.opts.requireApproval;
  }

  /** Pushes the current map to every shard; returns the ids that did not answer. */
  async pushMapToAll(): Promise<{ failed: Array<{ id: string; error: string }> }> {
    const map = mapToProto(this.map);
    const failed: Array<{ id: string; error: string }> = [];
    await Promise.all(
      this.shards.map(async (s) => {
        if (this.closed) return;
        try {
          const client = this.shardClients.get(s.address);
          await call(client, client.pushMap, { map }, { token: this.serverToken.get(), timeoutMs: 2000 });
        } catch (err) {
          failed.push({ id: s.id, error: (err as Error).message });
        }
      }),
    );
    if (failed.length) this.log.debug('map push missed shards', { failed });
    return { failed };
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.coordinator?.close();
    this.watchers.clear();
    await this.serial.run(async () => undefined);
    this.shardClients.close();
    await this.store.close();
  }
}

/** Admin answers kept in memory by operation id: far more than an operator retries at once. */
const ANSWERS_KEPT = 256;

export type StartedOperation = { op?: Operation; plan: Plan; before: Map<string, number>; after: Map<string, number> };

function reusedOperationId(id: string, first: string, now: string): CairnError {
  return new CairnError('CONFLICT', `operation_id: "${id}" was already used for the ${first}, not the ${now}; use a new id for a new operation`);
}

/** A cluster id: made once when a cluster forms, kept by the master and every shard. */
export const newClusterId = (): string => `c-${randomBytes(8).toString('hex')}`;

// A hash of a random password, so a login for an unknown user costs the same as a wrong password (made once, off the event loop).
let dummyHash: Promise<string> | undefined;
const dummyPasswordHash = (): Promise<string> => {
  if (!dummyHash) {
    dummyHash = hashPasswordAsync(randomBytes(16).toString('hex'));
    dummyHash.catch(() => undefined); // a failure reaches the login that awaits it, never the process
  }
  return dummyHash;
};
