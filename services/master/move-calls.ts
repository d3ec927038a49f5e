/**
 * The shard RPCs the move coordinator makes: PullRange on the destination
 * (which drives the whole transfer), and after an abort AbortMove on the
 * source and DropRange on the destination. The one place the master calls
 * them (the map pushes are the master's own, master.ts).
 */
import type { ClientReadableStream } from '@grpc/grpc-js';
import type { PullRangeResponse, ShardControlServiceClient } from '../../proto/gen/cairn/v1/control.js';
import type { ServerTokenSource } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { call, metadataFor, type ClientPool } from '../common/grpc.js';
import { endToProto } from '../common/hash.js';
import type { Move } from './moves.js';

export class MoveCalls {
  constructor(
    private readonly shards: ClientPool<ShardControlServiceClient>,
    private readonly token: ServerTokenSource,
    private readonly addressOf: (shardId: string) => string | undefined,
  ) {}

  private client(shardId: string): ShardControlServiceClient {
    const address = this.addressOf(shardId);
    if (!address) throw new CairnError('NOT_FOUND', `shard ${shardId} has no known address`);
    return this.shards.get(address);
  }

  /** Asks the destination to pull the move's range from the source; the stream carries its progress reports. */
  pull(move: Move, epoch: bigint, mbps: number, deadline: number): ClientReadableStream<PullRangeResponse> {
    const dest = this.client(move.to);
    const sourceAddress = this.addressOf(move.from);
    if (!sourceAddress) throw new CairnError('NOT_FOUND', `source shard ${move.from} has no known address`);
    return dest.pullRange(
      {
        moveId: move.id,
        start: move.start,
        end: endToProto(move.end),
        sourceShardId: move.from,
        sourceAddress,
        epoch,
        chunkBytes: 0,
        maxBytesPerSec: BigInt(Math.round(mbps * 1e6)),
      },
      metadataFor(this.token.get()),
      { deadline },
    );
  }

  /** Tells both shards the move aborted: the source lifts its fence, then the destination drops what it received. Both are idempotent. */
  async abort(move: Move, epoch: bigint): Promise<void> {
    const token = this.token.get();
    const src = this.client(move.from);
    await call(src, src.abortMove, { moveId: move.id, epoch }, { token, timeoutMs: 5000 });
    const dst = this.client(move.to);
    await call(dst, dst.dropRange, { moveId: move.id, start: move.start, end: endToProto(move.end), epoch }, { token, timeoutMs: 60_000 });
  }
}
