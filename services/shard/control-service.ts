/**
 * Thin gRPC handlers for the Shard control service (ShardControlService,
 * proto/cairn/v1/control.proto): the internal calls the master and other
 * shards make, on the same port as the data service (service.ts). Every
 * handler needs a server token, so a client token is refused with
 * PERMISSION_DENIED before any of them runs; transfer.ts drives the move
 * calls (PullRange, TransferRange, AckTransfer, AbortMove, DropRange,
 * GetMoveState).
 */
import type { UntypedServiceImplementation } from '@grpc/grpc-js';
import type { ShardControlServiceServer } from '../../proto/gen/cairn/v1/control.js';
import { CairnError } from '../common/errors.js';
import { duplexStream, serverStream, unary, type HandlerEnv } from '../common/grpc.js';
import { endToProto } from '../common/hash.js';
import { mapFromProto, mapToProto } from '../common/map.js';
import { showRange } from '../common/ranges.js';
import type { ShardNode } from './node.js';
import { serveReplicate } from './replica-apply.js';
import { dropAbortedCopy, runPull } from './transfer-sink.js';
import { serveTransfer } from './transfer-source.js';
import { checkMoveId, rangeFromRequest, transferParams } from './transfer-wire.js';

/** How long AbortMove waits for the move's task here to stop before it answers anyway. */
const ABORT_WAIT_MS = 2000;

export function shardControlServiceImpl(node: ShardNode, env: HandlerEnv): ShardControlServiceServer & UntypedServiceImplementation {
  const limits = node.opts.limits;
  const store = node.store;
  const header = () => ({ nodeId: node.nodeId, epoch: node.map.epoch });

  return {
    getBucketStats: unary(env, 'GetBucketStats', 'server', async () => ({
      header: header(),
      buckets: node.ownedRanges().flatMap((r) => store.bucketStats(r).map((b) => ({ bucket: b.bucket, rows: BigInt(b.rows), bytes: BigInt(b.bytes) }))),
    })),

    stopShard: unary(env, 'StopShard', 'server', async (req) => {
      if (req.shardId !== node.id) throw new CairnError('INVALID_ARGUMENT', `shard_id: this is shard ${node.id || '(unregistered)'}, not ${req.shardId}`);
      node.log.info('the master removed this shard; stopping', { shardId: node.id });
      setImmediate(() => node.requestStop());
      return { header: header() };
    }),

    describeShard: unary(env, 'DescribeShard', 'server', async () => ({
      header: header(),
      clusterId: node.clusterId,
      shardId: node.id,
      generation: BigInt(node.generation),
      map: mapToProto(node.map),
      registered: node.isRegistered,
      refusal: node.refusal,
    })),

    replicate: duplexStream(env, 'Replicate', 'server', (requests, _ctx, send) => serveReplicate(node, requests, send, node.following.signal)),

    pushMap: unary(env, 'PushMap', 'server', async (req) => {
      await node.installMap(mapFromProto(req.map));
      return { header: header() };
    }),

    pullRange: serverStream(env, 'PullRange', 'server', async (req, ctx, send) => {
      const p = transferParams(req, limits.maxMessageBytes);
      await runPull(node, { ...p, sourceShardId: req.sourceShardId, sourceAddress: req.sourceAddress }, ctx, send);
    }),

    transferRange: serverStream(env, 'TransferRange', 'server', async (req, ctx, send) => {
      await serveTransfer(node, transferParams(req, limits.maxMessageBytes), ctx, send);
    }),

    ackTransfer: unary(env, 'AckTransfer', 'server', async (req) => {
      checkMoveId(req.moveId);
      if (!req.ack) throw new CairnError('INVALID_ARGUMENT', 'ack: required (how far the destination has applied the transfer)');
      const task = node.moves.find('transfer', req.moveId);
      if (!task?.onAck) throw new CairnError('NOT_FOUND', `move ${req.moveId}: no transfer of it is running on this shard`);
      task.onAck(req.ack);
      return { header: header() };
    }),

    abortMove: unary(env, 'AbortMove', 'server', async (req) => {
      checkMoveId(req.moveId);
      // With an older map, learn the current one first: if it gave the range away, the move committed and the fence is dropped, not lifted.
      await node.ensureEpoch(req.epoch);
      const cancelled = await node.moves.abortAndWait(req.moveId, ABORT_WAIT_MS);
      const lifted = await node.fences.lift(req.moveId);
      if (lifted || cancelled) node.log.info('move aborted', { moveId: req.moveId, fenceLifted: lifted ? showRange(lifted.range) : undefined, cancelled });
      return { header: header(), fenceLifted: !!lifted, cancelled };
    }),

    dropRange: unary(env, 'DropRange', 'server', async (req) => {
      checkMoveId(req.moveId);
      const range = rangeFromRequest(req.start, req.end);
      await node.ensureEpoch(req.epoch);
      const { deletedKeys } = await dropAbortedCopy(node, req.moveId, range);
      return { header: header(), deletedKeys: BigInt(deletedKeys) };
    }),

    getMoveState: unary(env, 'GetMoveState', 'server', async (req) => {
      checkMoveId(req.moveId);
      const f = node.fences.get(req.moveId);
      const phases = node.moves.phaseOf(req.moveId);
      return {
        header: header(),
        fenced: !!f,
        fenceStart: f?.range.start ?? 0n,
        fenceEnd: f ? endToProto(f.range.end) : 0n,
        transferPhase: phases.transfer,
        pullPhase: phases.pull,
      };
    }),
  };
}
