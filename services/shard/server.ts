/** Assembles a shard process: the node (store, map, membership) plus the Shard gRPC service. */
import type { Server } from '@grpc/grpc-js';
import { ShardServiceService } from '../../proto/gen/cairn/v1/shard.js';
import { startServer, withPort, type CallObserver, type TlsFiles } from '../common/grpc.js';
import { shutdownServer } from '../master/server.js';
import { ShardNode, type ShardOptions } from './node.js';
import { shardServiceImpl } from './service.js';

export interface ShardServerOptions extends Omit<ShardOptions, 'advertise'> {
  listen: string;
  /** Defaults to the bound listen address. */
  advertise?: string;
  tls?: TlsFiles;
  requireClientCert?: boolean;
  observe?: CallObserver;
}

export interface RunningShard {
  node: ShardNode;
  server: Server;
  address: string;
  /** Resolves once the master has admitted the shard. */
  registered: Promise<void>;
  stop(graceMs?: number): Promise<void>;
}

export async function startShardServer(opts: ShardServerOptions): Promise<RunningShard> {
  const node = await ShardNode.open({ ...opts, advertise: opts.advertise ?? opts.listen });
  const env = { service: 'shard', log: opts.log, tokenKey: node.tokenKey, observe: opts.observe };
  let started;
  try {
    started = await startServer(opts.listen, [[ShardServiceService, shardServiceImpl(node, env)]], {
      maxMessageBytes: opts.limits.maxMessageBytes,
      tls: opts.tls,
      requireClientCert: opts.requireClientCert,
    });
  } catch (err) {
    await node.close();
    throw err;
  }
  const { server, port } = started;
  const address = withPort(opts.listen, port);
  const advertise = opts.advertise && !opts.advertise.endsWith(':0') ? opts.advertise : withPort(opts.advertise ?? opts.listen, port);
  node.opts.advertise = advertise;
  opts.log.info('listening', { address, advertise, role: 'shard' });
  const abort = new AbortController();
  const registered = node.register(abort.signal);
  return {
    node,
    server,
    address,
    registered,
    async stop(graceMs = 5000) {
      abort.abort();
      await shutdownServer(server, graceMs);
      await node.close();
    },
  };
}
