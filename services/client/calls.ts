/**
 * The core every API call goes through: one logical call with its retries
 * inside one deadline (`run`), the fast first attempt that skips the loop
 * when nothing is wrong (`attempt`, `recover`), a single-row call to the
 * row's owner on its Batch stream or unary (`onOwnerCall`; the stream is
 * batch.ts), and a batch fanned out by owner (`fanOut`).
 *
 * The loop itself, what is retried and how long to wait, is retry.ts; the
 * token is session.ts; the map is map-cache.ts.
 */
import type { CallOptions as GrpcCallOptions, ClientUnaryCall, Metadata, ServiceError } from '@grpc/grpc-js';
import type { ShardServiceClient } from '../../proto/gen/cairn/v1/shard.js';
import { CairnError, fromServiceError } from '../common/errors.js';
import type { ClusterMap } from '../common/map.js';
import { BatchStreams, BatchUnsupported, type BatchKind, type BatchReq, type BatchRes } from './batch.js';
import { RequestIds } from './convert.js';
import type { MapCache } from './map-cache.js';
import { backoffMs, classify, realSleep, refreshFailure, retryLoop } from './retry.js';
import { groupByShard, routeRow, splitBatches, type BatchCaps, type Indexed } from './router.js';
import { isExpiry, STALE, type Session } from './session.js';
import type { CallOptions } from './types.js';

/** Sub-calls of one logical call in flight at once. */
const FAN_OUT = 8;

/** What an attempt is given: the token and map current when it starts, and the call's deadline. */
export type Attempt<T> = (token: string | undefined, map: ClusterMap, deadline: number) => Promise<T>;

/** The token and deadline a shard call is sent with. */
export interface ShardCallOpts {
  token?: string;
  deadline: number;
}

/** Runs fn over items with at most `limit` in flight. */
async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * Of the errors of one round of sub-calls, the one that decides what happens
 * next: a final error ends the call; otherwise a stale map is fixed first
 * (refreshing helps every sub-call); otherwise wait the longest hint given.
 */
function decisiveError(errors: CairnError[]): CairnError {
  const fatal = errors.find((e) => classify(e) === 'fail');
  if (fatal) return fatal;
  const stale = errors.find((e) => classify(e) === 'refresh-map');
  if (stale) return stale;
  return errors.reduce((a, b) => ((b.details.retryAfterMs ?? 0) > (a.details.retryAfterMs ?? 0) ? b : a));
}

export class Calls {
  /** One id per logical write, reused by its retries and sub-batches: what makes retrying a write safe. */
  readonly ids = new RequestIds();

  /** The Batch streams single-row calls share (batch.ts); undefined when the client was told `batch: false`. */
  readonly batches: BatchStreams | undefined;

  constructor(
    readonly session: Session,
    readonly maps: MapCache,
    batch = true,
  ) {
    this.batches = batch ? new BatchStreams(session.maxMessageBytes) : undefined;
  }

  deadlineOf(o: CallOptions): number {
    return Date.now() + (o.timeoutMs ?? this.session.timeoutMs);
  }

  /**
   * One logical call with retries inside the deadline. `fn` sees the token
   * and the map current at each attempt, so a retry after a refresh routes
   * by the new map. A token the server calls expired is renewed once.
   */
  run<T>(deadline: number, fn: Attempt<T>, previous?: CairnError): Promise<T> {
    return retryLoop(
      async () => {
        if (this.session.closed) throw new CairnError('CANCELLED', 'the client is closed');
        return this.session.withToken(deadline, (token) => fn(token, this.maps.current, deadline));
      },
      { deadline, onRefresh: () => this.maps.refresh(deadline), previous },
    );
  }

  /**
   * One logical call, fast: the first attempt is sent at once, with the token
   * and map as they stand (no retry loop, no await before the send). Only a
   * retryable failure (or a token that must be fetched first) goes on to the
   * full loop of `run`, under the same deadline, after what the loop itself
   * would have done first: refresh the map, or wait the backoff.
   */
  attempt<T>(deadline: number, fn: Attempt<T>): Promise<T> {
    const token = this.session.readyToken();
    if (token === STALE || this.session.closed) return this.run(deadline, fn);
    let first: Promise<T>;
    try {
      first = fn(token, this.maps.current, deadline);
    } catch (e) {
      first = Promise.reject(e);
    }
    return first.catch((e: unknown) => this.recover(fromServiceError(e), deadline, fn));
  }

  private async recover<T>(err: CairnError, deadline: number, fn: Attempt<T>): Promise<T> {
    if (isExpiry(err) && this.session.canLogin) {
      this.session.markStale(); // as withToken: log in again, then the loop
      return this.run(deadline, fn);
    }
    let action = classify(err);
    if (action === 'fail') throw err;
    if (action === 'refresh-map') {
      try {
        await this.maps.refresh(deadline);
      } catch (e) {
        err = fromServiceError(e);
        if (refreshFailure(err, Date.now(), deadline) === 'fail') throw err;
        action = 'backoff';
      }
    }
    if (action === 'backoff') {
      const delay = backoffMs(0, err.details.retryAfterMs);
      if (Date.now() + delay >= deadline) throw err;
      if (delay > 0) await realSleep(delay);
    }
    return this.run(deadline, fn, err);
  }

  /**
   * A single-row call sent to the row's owner: on the owner's Batch stream,
   * coalesced with the other calls in flight to it, or as its unary RPC when
   * batching is off, the shard has no Batch, or the call is big (`bytes`, its
   * estimated size, would hold up the small calls behind it). Either way it
   * resolves or fails exactly as the unary RPC would.
   */
  onOwnerCall<K extends BatchKind>(o: CallOptions, row: string, kind: K, request: (epoch: bigint) => BatchReq<K>, bytes = 0): Promise<BatchRes<K>> {
    return this.attempt(this.deadlineOf(o), (token, map, deadline) => {
      const address = routeRow(map, row).address;
      return this.toShard(address, kind, request(map.epoch), { token, deadline }, bytes);
    });
  }

  /** One call to one shard, on its Batch stream when it can go there (see onOwnerCall). */
  toShard<K extends BatchKind>(address: string, kind: K, req: BatchReq<K>, o: ShardCallOpts, bytes = 0): Promise<BatchRes<K>> {
    const client = this.session.shard(address);
    const unary = () => this.unary(client, client[kind] as never, req, o) as Promise<BatchRes<K>>;
    const b = this.batches;
    if (!b || bytes > b.maxCallBytes || !b.usable(address)) return unary();
    return b
      .call(address, client, this.session.metadata(o.token), o.token, kind, req, o.deadline, bytes + 64)
      .catch((e: unknown) => {
        // A shard without Batch (an older version) took nothing: the same call, unary.
        if (e instanceof BatchUnsupported) return unary();
        throw e;
      });
  }

  /** Cancels the Batch streams; their calls fail with CANCELLED. */
  close(): void {
    this.batches?.close();
  }

  /** A unary call with the caller's deadline and metadata reused for the same token (grpc.ts `call`, minus a Metadata per call). */
  unary<Req, Res>(
    client: ShardServiceClient,
    method: (req: Req, md: Metadata, opts: Partial<GrpcCallOptions>, cb: (err: ServiceError | null, res: Res) => void) => ClientUnaryCall,
    req: Req,
    o: ShardCallOpts,
  ): Promise<Res> {
    const md = this.session.metadata(o.token);
    return new Promise<Res>((resolve, reject) => {
      method.call(client, req, md, { deadline: o.deadline }, (err, res) => (err ? reject(fromServiceError(err)) : resolve(res)));
    });
  }

  /**
   * A batch call: items grouped by owner, cut into sub-batches, sent
   * concurrently. Each round resends only the items whose sub-call failed,
   * re-grouped by the map current then; `send` writes its results by the
   * items' original indexes.
   */
  async fanOut<T>(
    o: CallOptions,
    items: readonly T[],
    keyOf: (item: T) => string,
    caps: BatchCaps<T>,
    send: (shard: ShardServiceClient, epoch: bigint, batch: Array<Indexed<T>>, callOpts: ShardCallOpts) => Promise<void>,
  ): Promise<void> {
    let pending: Array<Indexed<T>> = items.map((item, index) => ({ index, item }));
    if (pending.length === 0) return;
    const weights = caps.weights?.map((w) => ({ max: w.max, of: (x: Indexed<T>) => w.of(x.item) }));
    await this.attempt(this.deadlineOf(o), async (token, map, deadline) => {
      const subCalls: Array<{ address: string; batch: Array<Indexed<T>> }> = [];
      for (const g of groupByShard(map, pending, (p) => keyOf(p.item)).values()) {
        const own = g.items.map((x) => x.item);
        for (const batch of splitBatches(own, { maxItems: caps.maxItems, weights })) subCalls.push({ address: g.address, batch });
      }
      if (subCalls.length === 1) {
        // One owner, one sub-batch (a put, or a small batch): nothing to fan out.
        await send(this.session.shard(subCalls[0]!.address), map.epoch, subCalls[0]!.batch, { token, deadline });
        return;
      }
      const failed: Array<Indexed<T>> = [];
      const errors: CairnError[] = [];
      await forEachLimit(subCalls, FAN_OUT, async ({ address, batch }) => {
        try {
          await send(this.session.shard(address), map.epoch, batch, { token, deadline });
        } catch (e) {
          failed.push(...batch);
          errors.push(fromServiceError(e));
        }
      });
      if (errors.length > 0) {
        pending = failed.sort((a, b) => a.index - b.index);
        throw decisiveError(errors);
      }
    });
  }
}
