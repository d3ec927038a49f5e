/**
 * The master's calls to its shards' control service (ShardControlService,
 * proto/cairn/v1/control.proto), other than the move calls the coordinator
 * makes: pushing the map, asking for bucket stats (the planner's input), and
 * stopping a removed shard. One client per shard address, every call with a
 * server token of this master's cluster.
 */
import type { Logger } from 'winston';
import { ShardControlServiceClient } from '../../proto/gen/cairn/v1/control.js';
import type { ServerTokenSource } from '../common/auth.js';
import { call, ClientPool, watchRefusals, type ClientTls } from '../common/grpc.js';
import { mapToProto } from '../common/map.js';
import type { ClusterState } from './cluster-state.js';
import type { ShardRecord } from './meta-store.js';

export class ShardCalls {
  /** Shared with the coordinator, which makes the move calls. */
  readonly clients: ClientPool<ShardControlServiceClient>;

  constructor(
    private readonly state: ClusterState,
    private readonly serverToken: ServerTokenSource,
    private readonly log: Logger,
    opts: { peerTls?: ClientTls; maxMessageBytes: number; onStaleTerm?: (why: string) => void },
  ) {
    const onStaleTerm = opts.onStaleTerm;
    // Any call (these, and the coordinator's on the same clients) a shard refuses with STALE_TERM means a newer master leads.
    const interceptors = onStaleTerm ? [watchRefusals((err) => err.details.reason === 'STALE_TERM' && onStaleTerm(err.message))] : undefined;
    this.clients = new ClientPool(ShardControlServiceClient, { tls: opts.peerTls, maxMessageBytes: opts.maxMessageBytes, interceptors });
  }

  private callOpts(timeoutMs: number) {
    return { token: this.serverToken.get(), timeoutMs };
  }

  /** Pushes the current map to one shard; true when it took it. */
  async pushMapTo(shardId: string): Promise<boolean> {
    const s = this.state.shard(shardId);
    if (!s || this.state.closed) return false;
    try {
      const client = this.clients.get(s.address);
      const res = await call(client, client.pushMap, { map: mapToProto(this.state.map) }, this.callOpts(3000));
      return (res.header?.epoch ?? 0n) >= this.state.map.epoch;
    } catch {
      return false;
    }
  }

  /** Pushes the current map to every shard; returns the ids that did not answer. */
  async pushMapToAll(): Promise<{ failed: Array<{ id: string; error: string }> }> {
    const map = mapToProto(this.state.map);
    const failed: Array<{ id: string; error: string }> = [];
    await Promise.all(
      this.state.shards.map(async (s) => {
        if (this.state.closed) return;
        try {
          const client = this.clients.get(s.address);
          await call(client, client.pushMap, { map }, this.callOpts(2000));
        } catch (err) {
          failed.push({ id: s.id, error: (err as Error).message });
        }
      }),
    );
    if (failed.length) this.log.debug('map push missed shards', { failed });
    return { failed };
  }

  /** Exact per-bucket counts of what the given shards own (the planner's input). */
  async bucketStats(shards: ShardRecord[]): Promise<Map<number, { bytes: number; rows: number }>> {
    const buckets = new Map<number, { bytes: number; rows: number }>();
    await Promise.all(
      shards.map(async (s) => {
        const client = this.clients.get(s.address);
        const res = await call(client, client.getBucketStats, {}, this.callOpts(10_000));
        for (const b of res.buckets) buckets.set(b.bucket, { rows: Number(b.rows), bytes: Number(b.bytes) });
      }),
    );
    return buckets;
  }

  /** Tells a removed shard's process to stop; true when it acknowledged. */
  async stopShard(r: { shardId: string; address: string }): Promise<boolean> {
    try {
      const client = this.clients.get(r.address);
      await call(client, client.stopShard, { shardId: r.shardId }, this.callOpts(3000));
      return true;
    } catch (err) {
      this.log.warn('removed shard did not acknowledge the stop', { shardId: r.shardId, error: (err as Error).message });
      return false;
    }
  }

  close(): void {
    this.clients.close();
  }
}
