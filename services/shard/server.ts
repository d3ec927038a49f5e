/**
 * Wires a shard process: the node (store, map, membership) plus its two gRPC
 * services on one port, the data API (ShardService, service.ts) and the
 * internal control service (ShardControlService, control-service.ts), on the
 * shared server assembly (services/common/server.ts: health, reflection, the
 * call gate, and with `metricsListen` Prometheus metrics).
 *
 * Health is NOT_SERVING until the master has admitted the shard, then SERVING.
 * While its disk is full, `cairn.v1.ShardService` reports NOT_SERVING (writes
 * are refused, reads answered) and the overall status stays as it was.
 * stop(): NOT_SERVING at once; new calls are refused (retryable UNAVAILABLE)
 * while those in flight get `graceMs` to finish; then the server closes and
 * the node tells the master it is stopping (shown down at once; it keeps its
 * ranges) and closes LevelDB, which flushes it.
 */
import type { Server } from '@grpc/grpc-js';
import { ShardControlServiceService } from '../../proto/gen/cairn/v1/control.js';
import { ShardServiceService } from '../../proto/gen/cairn/v1/shard.js';
import { withPort, type HandlerEnv } from '../common/grpc.js';
import type { ServingState } from '../common/health.js';
import type { Metrics } from '../common/metrics.js';
import { serverOptionsOf, startProcessServer, type ServerOptions } from '../common/server.js';
import { shardControlServiceImpl } from './control-service.js';
import { registerFenceMetrics } from './fence.js';
import { ShardNode, type ShardOptions } from './node.js';
import { shardServiceImpl } from './service.js';

export interface ShardServerOptions extends Omit<ShardOptions, 'advertise'>, ServerOptions {
  /** Defaults to the bound listen address. */
  advertise?: string;
  /** Fail the TLS handshake of any client without a CA-signed certificate (clients too, not only servers). */
  requireClientCert?: boolean;
}

export interface RunningShard {
  node: ShardNode;
  server: Server;
  address: string;
  /** host:port of the metrics endpoint, when metricsListen was set. */
  metricsAddress?: string;
  /** Health status and the call gate. */
  serving: ServingState;
  metrics?: Metrics;
  /** Resolves once the master has admitted the shard. */
  registered: Promise<void>;
  stop(graceMs?: number): Promise<void>;
}

/** The data service first (a full disk holds it NOT_SERVING), then the control service. */
export const SHARD_SERVICES = ['cairn.v1.ShardService', 'cairn.v1.ShardControlService'];

export async function startShardServer(opts: ShardServerOptions): Promise<RunningShard> {
  const node = await ShardNode.open({ ...opts, advertise: opts.advertise ?? opts.listen });
  const abort = new AbortController();
  let stopWatchingDisk: (() => void) | undefined;
  const running = await startProcessServer({
    role: 'shard',
    log: opts.log,
    ...serverOptionsOf(opts),
    healthServices: SHARD_SERVICES,
    maxMessageBytes: opts.limits.maxMessageBytes,
    requireClientCert: opts.requireClientCert,
    registerMetrics: (metrics) => registerShardMetrics(metrics, node),
    services: (assembled) => {
      const env: HandlerEnv = {
        ...assembled,
        service: 'shard',
        tokenKey: node.tokenKey,
        checkServerCall: (claims, method) => node.checkServerCall(claims, method),
        checkClientCall: (claims) => node.checkClientCall(claims),
      };
      return [
        [ShardServiceService, shardServiceImpl(node, env)],
        [ShardControlServiceService, shardControlServiceImpl(node, env)],
      ];
    },
    onBound: (port) => {
      const advertise = opts.advertise && !opts.advertise.endsWith(':0') ? opts.advertise : withPort(opts.advertise ?? opts.listen, port);
      node.opts.advertise = advertise;
      return { advertise };
    },
    onStop: () => {
      abort.abort();
      node.following.abort(); // a stopping shard is no follower to count on; its incoming streams end now
      stopWatchingDisk?.();
    },
    close: () => node.close(),
  });
  const { server, address, metricsAddress, serving, metrics, stop } = running;
  // SERVING while the master admits this process; NOT_SERVING while a master (of another cluster, or with no state) refuses it.
  node.onAdmission = (admitted) => {
    if (!abort.signal.aborted) serving.setServing(admitted && !!node.id);
  };
  // A full disk: the data service reports NOT_SERVING (it cannot take writes) until the store resumes by itself.
  const holdWhileFull = (full: boolean, message: string) => serving.holdService(SHARD_SERVICES[0]!, full ? message : null);
  const disk = node.store.diskState();
  if (disk.full) holdWhileFull(true, disk.message);
  stopWatchingDisk = node.store.onDiskState((s) => holdWhileFull(s.full, s.message));
  const registered = node.register(abort.signal);
  return { node, server, address, metricsAddress, serving, metrics, registered, stop };
}

/** The shard's own view: its map epoch and the size of what it owns. */
export function registerShardMetrics(metrics: Metrics, node: ShardNode): void {
  metrics.gauge('cairn_map_epoch', 'Epoch of the cluster map this process holds.', [], (set) => set({}, Number(node.map.epoch)));
  const owned = () => {
    let rows = 0;
    let bytes = 0;
    const ranges = node.rangeCounts();
    for (const r of ranges) {
      rows += Number(r.rows);
      bytes += Number(r.bytes);
    }
    return { rows, bytes, ranges: ranges.length };
  };
  const shard = () => node.nodeId;
  metrics.gauge('cairn_shard_bytes', 'Live bytes (keys + values) in the ranges this shard owns.', ['shard'], (set) => set({ shard: shard() }, owned().bytes));
  metrics.gauge('cairn_shard_rows', 'Live rows in the ranges this shard owns.', ['shard'], (set) => set({ shard: shard() }, owned().rows));
  metrics.gauge('cairn_shard_ranges', 'Ranges the map gives this shard.', ['shard'], (set) => set({ shard: shard() }, node.ownedRanges().length));
  metrics.gauge('cairn_shard_fenced_ranges', 'Ranges this shard has fenced for a move in its critical section.', ['shard'], (set) =>
    set({ shard: shard() }, node.fences?.all().length ?? 0),
  );
  if (node.fences) registerFenceMetrics(metrics, node.fences);
  // Calls per message is what the Batch stream buys: the ratio of these two.
  let messagesSeen = 0;
  let callsSeen = 0;
  metrics.counter('cairn_batch_messages_total', 'Messages received on ShardService.Batch streams.', [], (c) => {
    c.inc(node.batchTraffic.messages - messagesSeen);
    messagesSeen = node.batchTraffic.messages;
  });
  metrics.counter('cairn_batch_calls_total', 'Calls carried by those messages.', [], (c) => {
    c.inc(node.batchTraffic.calls - callsSeen);
    callsSeen = node.batchTraffic.calls;
  });
}
