/**
 * The admin calls (role admin), sent to the master's AdminService through
 * the retry core. An admin call that starts an operation carries an
 * operation id, one per logical call and reused by its retries, so a retry
 * after an ambiguous failure never starts a second operation.
 */
import type { CallOptions as GrpcCallOptions, ClientUnaryCall, Metadata, ServiceError } from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import type { AdminServiceClient, WatchOperationResponse } from '../../proto/gen/cairn/v1/admin.js';
import { fromServiceError } from '../common/errors.js';
import { call, metadataFor } from '../common/grpc.js';
import { endFromProto } from '../common/hash.js';
import type { Calls } from './calls.js';
import type { CallOptions, RangeInfo, ServerInfo } from './types.js';

/** An operation id for one logical admin call, reused by its retries (the master starts the operation once). */
export const newOperationId = (): string => `op-${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;

const hasEmptyOperationId = (req: unknown): boolean =>
  typeof req === 'object' && req !== null && 'operationId' in req && (req as { operationId: unknown }).operationId === '';

/** An AdminService method as the generated client has it (what `admin` is given to pick). */
export type AdminMethod<Req, Res> = (
  req: Req,
  md: Metadata,
  opts: Partial<GrpcCallOptions>,
  cb: (err: ServiceError | null, res: Res) => void,
) => ClientUnaryCall;

export function admin<Req, Res>(c: Calls, pick: (a: AdminServiceClient) => AdminMethod<Req, Res>, req: Req, o: CallOptions): Promise<Res> {
  const once = hasEmptyOperationId(req) ? { ...req, operationId: newOperationId() } : req;
  return c.run(c.deadlineOf(o), (token, _map, deadline) =>
    c.session.toMaster(() => {
      const a = c.session.admin;
      return call(a, pick(a), once, { token, deadline });
    }),
  );
}

export async function listServers(c: Calls, o: CallOptions): Promise<ServerInfo[]> {
  const res = await admin(c, (a) => a.listServers, {}, o);
  return res.servers.map((s) => ({
    id: s.id,
    address: s.address,
    status: s.status,
    bytes: Number(s.bytes),
    rows: Number(s.rows),
    ranges: s.ranges,
    share: s.share,
    opsPerSec: s.opsPerSec,
    lastHeartbeatMs: Number(s.lastHeartbeatMs),
    diskFreeBytes: Number(s.diskFreeBytes),
    diskTotalBytes: Number(s.diskTotalBytes),
    diskFull: s.diskFull,
    primaries: s.primaries,
    followers: s.followers,
    learners: s.learners,
  }));
}

export async function getRanges(c: Calls, o: CallOptions): Promise<RangeInfo[]> {
  const res = await admin(c, (a) => a.getRanges, {}, o);
  return res.ranges.map((r) => ({
    start: r.start,
    end: endFromProto(r.end),
    shardId: r.shardId,
    address: r.address,
    bytes: Number(r.bytes),
    rows: Number(r.rows),
    // A master from before replication sends no group: the primary alone.
    replicas: r.replicas.length ? r.replicas : [r.shardId],
    inSync: r.inSync.length ? r.inSync : [r.shardId],
    learners: r.learners,
    version: r.version,
  }));
}

export async function* watchOperation(c: Calls, operationId: string): AsyncGenerator<WatchOperationResponse> {
  const stream = c.session.admin.watchOperation({ operationId }, metadataFor(c.session.token));
  try {
    for await (const msg of stream as AsyncIterable<WatchOperationResponse>) yield msg;
  } catch (err) {
    throw fromServiceError(err);
  } finally {
    stream.cancel();
  }
}
