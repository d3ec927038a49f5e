/**
 * A shard process: its store, its copy of the map, registration with the
 * master and heartbeats. Data handlers live in service.ts.
 */
import type { Logger } from 'winston';
import { MasterServiceClient } from '../../proto/gen/cairn/v1/master.js';
import { ShardServiceClient } from '../../proto/gen/cairn/v1/shard.js';
import { deriveTokenKey, ServerTokenSource } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { call, ClientPool, type ClientTls } from '../common/grpc.js';
import { endToProto } from '../common/hash.js';
import { EMPTY_MAP, mapError, mapFromProto, rangesOf, type ClusterMap } from '../common/map.js';
import type { HashRange } from '../common/ranges.js';
import { ShardStore } from './store.js';
import type { Limits } from './validate.js';

export interface ShardOptions {
  dataDir: string;
  /** host:port others dial; known after the server has bound its port. */
  advertise: string;
  master: string;
  serverCredential: string;
  heartbeatIntervalMs: number;
  limits: Limits;
  peerTls?: ClientTls;
  log: Logger;
}

interface MapJson {
  epoch: string;
  ranges: Array<{ start: string; end: string; shardId: string }>;
  shards: Array<{ id: string; address: string }>;
}

export class ShardNode {
  readonly tokenKey: Buffer;
  readonly serverToken: ServerTokenSource;
  readonly peers: ClientPool<ShardServiceClient>;
  private readonly masters: ClientPool<MasterServiceClient>;
  id = '';
  map: ClusterMap = EMPTY_MAP;
  private opsSinceHeartbeat = 0;
  private lastHeartbeatAt = Date.now();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private registered = false;

  private constructor(
    readonly opts: ShardOptions,
    readonly store: ShardStore,
  ) {
    this.tokenKey = deriveTokenKey(opts.serverCredential);
    this.serverToken = new ServerTokenSource(this.tokenKey, 'shard');
    this.peers = new ClientPool(ShardServiceClient, { tls: opts.peerTls, maxMessageBytes: opts.limits.maxMessageBytes });
    this.masters = new ClientPool(MasterServiceClient, { tls: opts.peerTls, maxMessageBytes: opts.limits.maxMessageBytes });
  }

  static async open(opts: ShardOptions): Promise<ShardNode> {
    const store = await ShardStore.open(opts.dataDir);
    const node = new ShardNode(opts, store);
    node.id = ((await store.getMeta('shardId')) as string | undefined) ?? '';
    const saved = (await store.getMeta('map')) as MapJson | undefined;
    if (saved) {
      node.map = {
        epoch: BigInt(saved.epoch),
        ranges: saved.ranges.map((r) => ({ start: BigInt(r.start), end: BigInt(r.end), shardId: r.shardId })),
        shards: saved.shards,
      };
    }
    return node;
  }

  get log(): Logger {
    return this.opts.log;
  }

  get nodeId(): string {
    return this.id || 'unregistered';
  }

  countOp(n = 1): void {
    this.opsSinceHeartbeat += n;
  }

  ownedRanges(): HashRange[] {
    return this.id ? rangesOf(this.map, this.id) : [];
  }

  /** Installs a map if it is newer than ours; persisted before it takes effect. */
  async installMap(next: ClusterMap): Promise<boolean> {
    if (next.epoch <= this.map.epoch) return false;
    const err = mapError(next);
    if (err) throw new CairnError('INVALID_ARGUMENT', `map: ${err}`);
    const json: MapJson = {
      epoch: next.epoch.toString(),
      ranges: next.ranges.map((r) => ({ start: r.start.toString(), end: r.end.toString(), shardId: r.shardId })),
      shards: next.shards,
    };
    await this.store.putMeta('map', json, true);
    if (next.epoch <= this.map.epoch) return false; // a newer one was installed while we wrote
    this.map = next;
    this.log.info('map installed', { epoch: next.epoch.toString(), ownedRanges: this.ownedRanges().length });
    return true;
  }

  private masterClient(): MasterServiceClient {
    return this.masters.get(this.opts.master);
  }

  /** Registers with the master, retrying until it answers, then starts heartbeats. */
  async register(signal?: AbortSignal): Promise<void> {
    let delay = 100;
    for (;;) {
      if (this.stopping || signal?.aborted) return;
      try {
        const c = this.masterClient();
        const res = await call(c, c.registerShard, { shardId: this.id, address: this.opts.advertise }, { token: this.serverToken.get(), timeoutMs: 5000 });
        if (res.shardId !== this.id) {
          this.id = res.shardId;
          await this.store.putMeta('shardId', this.id, true);
        }
        await this.installMap(mapFromProto(res.map));
        this.registered = true;
        this.log.info('DataServer fully registered', { shardId: this.id, master: this.opts.master, address: this.opts.advertise });
        this.scheduleHeartbeat(res.heartbeatIntervalMs || this.opts.heartbeatIntervalMs);
        return;
      } catch (err) {
        const e = err as CairnError;
        if (e.code === 'UNAUTHENTICATED' || e.code === 'PERMISSION_DENIED') {
          this.log.error('the master refused this shard: check serverCredential', { error: e.message });
        } else {
          this.log.warn('registering with the master failed; retrying', { master: this.opts.master, error: e.message, retryInMs: delay });
        }
        await new Promise((r) => setTimeout(r, delay).unref());
        delay = Math.min(delay * 2, 2000);
      }
    }
  }

  private scheduleHeartbeat(intervalMs: number): void {
    clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = setTimeout(() => void this.heartbeat(intervalMs), intervalMs);
    this.heartbeatTimer.unref();
  }

  rangeCounts() {
    return this.ownedRanges().map((r) => {
      const s = this.store.rangeStats(r);
      return { start: r.start, end: endToProto(r.end), rows: BigInt(s.rows), bytes: BigInt(s.bytes) };
    });
  }

  /** One heartbeat; fetches the map when the master's epoch is newer. */
  async heartbeat(intervalMs = this.opts.heartbeatIntervalMs, stopping = false): Promise<void> {
    if (!this.registered) return;
    const now = Date.now();
    const opsPerSec = (this.opsSinceHeartbeat * 1000) / Math.max(1, now - this.lastHeartbeatAt);
    this.opsSinceHeartbeat = 0;
    this.lastHeartbeatAt = now;
    try {
      const c = this.masterClient();
      const res = await call(
        c,
        c.heartbeat,
        { shardId: this.id, epoch: this.map.epoch, ranges: this.rangeCounts(), opsPerSec, stopping },
        { token: this.serverToken.get(), timeoutMs: Math.max(1000, intervalMs) },
      );
      if ((res.header?.epoch ?? 0n) > this.map.epoch) await this.refreshMap();
    } catch (err) {
      const e = err as CairnError;
      if (e.code === 'NOT_FOUND' && !stopping) {
        this.registered = false;
        void this.register();
        return;
      }
      this.log.debug('heartbeat failed', { error: e.message });
    }
    if (!stopping && !this.stopping) this.scheduleHeartbeat(intervalMs);
  }

  /** Fetches the current map from the master. */
  async refreshMap(): Promise<void> {
    const c = this.masterClient();
    const res = await call(c, c.getMap, {}, { token: this.serverToken.get(), timeoutMs: 2000 });
    await this.installMap(mapFromProto(res.map));
  }

  /** Tells the master we are stopping (shown as down at once), then closes the store. */
  async close(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.heartbeatTimer);
    if (this.registered) await this.heartbeat(this.opts.heartbeatIntervalMs, true).catch(() => undefined);
    this.peers.close();
    this.masters.close();
    await this.store.close();
  }
}
