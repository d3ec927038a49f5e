/**
 * Thin gRPC handlers for the Master and Admin services: validate, delegate to
 * Master, fill the header. Errors go through the one table in grpc.ts.
 */
import type { UntypedServiceImplementation } from '@grpc/grpc-js';
import type { AdminServiceServer } from '../../proto/gen/cairn/v1/admin.js';
import type { MasterServiceServer } from '../../proto/gen/cairn/v1/master.js';
import { invalidArgument } from '../common/errors.js';
import { serverStream, unary, type HandlerEnv } from '../common/grpc.js';
import { endFromProto, endToProto } from '../common/hash.js';
import { mapToProto } from '../common/map.js';
import type { Master } from './master.js';

export function masterServiceImpl(master: Master, env: HandlerEnv): MasterServiceServer & UntypedServiceImplementation {
  const header = () => ({ nodeId: master.nodeId, epoch: master.epoch });
  return {
    registerShard: unary(env, 'RegisterShard', 'server', async (req) => {
      if (!req.address) throw invalidArgument('address: must be the host:port other processes use to reach the shard');
      const { shardId, map } = await master.register(req.shardId, req.address);
      return { header: header(), shardId, map: mapToProto(map), heartbeatIntervalMs: master.heartbeatIntervalMs };
    }),
    heartbeat: unary(env, 'Heartbeat', 'server', async (req) => {
      if (!req.shardId) throw invalidArgument('shard_id: must not be empty');
      master.heartbeat(req.shardId, {
        epoch: req.epoch,
        opsPerSec: req.opsPerSec,
        stopping: req.stopping,
        ranges: req.ranges.map((r) => ({ start: r.start, end: endFromProto(r.end), rows: Number(r.rows), bytes: Number(r.bytes) })),
      });
      return { header: header() };
    }),
    getMap: unary(env, 'GetMap', 'r', async () => ({ header: header(), map: mapToProto(master.currentMap()) })),
    watchMap: serverStream(env, 'WatchMap', 'r', async (req, ctx, send) => {
      let pending: Promise<void> = Promise.resolve();
      let finish!: () => void;
      const ended = new Promise<void>((resolve) => (finish = resolve));
      const forward = (m: ReturnType<Master['currentMap']>) => {
        if (m.epoch <= req.minEpoch) return;
        pending = pending.then(() => send({ header: header(), map: mapToProto(m) })).catch(() => finish());
      };
      const stop = master.watch(forward);
      forward(master.currentMap());
      const poll = setInterval(() => ctx.cancelled() && finish(), 500);
      try {
        await ended;
      } finally {
        clearInterval(poll);
        stop();
      }
    }),
    login: unary(env, 'Login', null, async (req) => {
      if (!req.user) throw invalidArgument('user: must not be empty');
      const t = await master.login(req.user, req.password);
      return { header: header(), token: t.token, expiresAtMs: BigInt(t.expiresAtMs), role: t.role };
    }),
  };
}

export function adminServiceImpl(master: Master, env: HandlerEnv): AdminServiceServer & UntypedServiceImplementation {
  const header = () => ({ nodeId: master.nodeId, epoch: master.epoch });
  return {
    listServers: unary(env, 'ListServers', 'admin', async () => ({
      header: header(),
      servers: master.listServers().map((s) => ({
        ...s,
        bytes: BigInt(s.bytes),
        rows: BigInt(s.rows),
        lastHeartbeatMs: BigInt(s.lastHeartbeatMs),
      })),
    })),
    getRanges: unary(env, 'GetRanges', 'admin', async () => ({
      header: header(),
      ranges: master.getRanges().map((r) => ({
        start: r.start,
        end: endToProto(r.end),
        shardId: r.shardId,
        address: r.address,
        bytes: BigInt(r.bytes),
        rows: BigInt(r.rows),
      })),
    })),
  };
}
