/** Assembles a master process: Master state plus the Master and Admin gRPC services. */
import type { Server } from '@grpc/grpc-js';
import { AdminServiceService } from '../../proto/gen/cairn/v1/admin.js';
import { MasterServiceService } from '../../proto/gen/cairn/v1/master.js';
import { startServer, withPort, type CallObserver, type TlsFiles } from '../common/grpc.js';
import { Master, type MasterOptions } from './master.js';
import { adminServiceImpl, masterServiceImpl } from './service.js';

export interface MasterServerOptions extends MasterOptions {
  listen: string;
  tls?: TlsFiles;
  observe?: CallObserver;
}

export interface RunningMaster {
  master: Master;
  server: Server;
  /** host:port the server is bound to (the port resolved when listen used :0). */
  address: string;
  stop(graceMs?: number): Promise<void>;
}

export async function startMasterServer(opts: MasterServerOptions): Promise<RunningMaster> {
  const master = await Master.open(opts);
  const env = { service: 'master', log: opts.log, tokenKey: master.tokenKey, observe: opts.observe };
  let started;
  try {
    started = await startServer(
      opts.listen,
      [
        [MasterServiceService, masterServiceImpl(master, env)],
        [AdminServiceService, adminServiceImpl(master, { ...env, service: 'admin' })],
      ],
      { maxMessageBytes: opts.maxMessageBytes, tls: opts.tls },
    );
  } catch (err) {
    await master.close();
    throw err;
  }
  const { server, port } = started;
  const address = withPort(opts.listen, port);
  opts.log.info('listening', { address, role: 'master' });
  return {
    master,
    server,
    address,
    async stop(graceMs = 5000) {
      await shutdownServer(server, graceMs);
      await master.close();
    },
  };
}

/** Stops accepting calls, lets those in flight finish within graceMs, then forces the rest. */
export function shutdownServer(server: Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const force = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(force);
      resolve();
    });
  });
}
