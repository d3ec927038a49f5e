/**
 * The SDK side of ShardService.Batch (TiKV's BatchCommands): one long-lived
 * bidirectional stream per shard, and the calls in flight to that shard
 * coalesced into one message on it. A grpc-js unary call costs ~200 µs of
 * client CPU whatever it carries; on the stream a message of N calls pays
 * that once.
 *
 * Coalescing adds no wait: a call is queued and the queue is written at the
 * end of the current job (a microtask), so a lone call leaves at once, and
 * the calls made in the same turn (64 callers whose answers came back in one
 * message) leave together. While a message is being written, what piles up
 * waits for its write to finish and then leaves as the next message.
 *
 * Each call keeps its own deadline (a timer here; the shard is told the time
 * left, for what it forwards). A call's error comes back as the CairnError
 * its unary RPC would give (services/common/errors.ts fromCallStatus), so the
 * retry core (calls.ts) treats both alike. A stream that breaks fails only the
 * calls sent on it, with the transport's error, which the retry core retries
 * as it retries a unary call that lost its connection. A shard without Batch
 * (an older version, UNIMPLEMENTED) gets that call and every later one unary.
 */
import type { ClientDuplexStream, Metadata } from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import type {
  BatchCall,
  BatchRequest,
  BatchResponse,
  CheckAndMutateRequest,
  CheckAndMutateResponse,
  DeleteCellsRequest,
  DeleteCellsResponse,
  DeleteRowRequest,
  DeleteRowResponse,
  ExtendLeaseRequest,
  ExtendLeaseResponse,
  LockRowRequest,
  LockRowResponse,
  ReadRowRequest,
  ReadRowResponse,
  ShardServiceClient,
  UnlockRowRequest,
  UnlockRowResponse,
  WriteRowsRequest,
  WriteRowsResponse,
} from '../../proto/gen/cairn/v1/shard.js';
import { CairnError, fromCallStatus, fromServiceError } from '../common/errors.js';
import { takeUnderBudget, type Sized } from '../common/message-budget.js';

/** The calls the SDK sends on the stream, by BatchCall field: request and response types. */
export interface BatchKinds {
  writeRows: [WriteRowsRequest, WriteRowsResponse];
  readRow: [ReadRowRequest, ReadRowResponse];
  deleteRow: [DeleteRowRequest, DeleteRowResponse];
  deleteCells: [DeleteCellsRequest, DeleteCellsResponse];
  checkAndMutate: [CheckAndMutateRequest, CheckAndMutateResponse];
  lockRow: [LockRowRequest, LockRowResponse];
  extendLease: [ExtendLeaseRequest, ExtendLeaseResponse];
  unlockRow: [UnlockRowRequest, UnlockRowResponse];
}
export type BatchKind = keyof BatchKinds;
export type BatchReq<K extends BatchKind> = BatchKinds[K][0];
export type BatchRes<K extends BatchKind> = BatchKinds[K][1];

/** A stream with no call in flight this long is closed (reopened by the next call), so an idle client holds nothing open. */
export const IDLE_CLOSE_MS = 2000;

/** Thrown for a call the shard could not take on a stream (no Batch there): send it unary. */
export class BatchUnsupported extends Error {}

interface Pending {
  kind: BatchKind;
  resolve(res: unknown): void;
  reject(err: unknown): void;
  timer: NodeJS.Timeout | undefined;
}

/** Counters for tests and benches: how many calls went out, in how many messages. */
export interface BatchStats {
  calls: number;
  messages: number;
  streams: number;
}

/** One Batch stream to one shard, under one token. */
class ShardStream {
  private readonly stream: ClientDuplexStream<BatchRequest, BatchResponse>;
  private readonly pending = new Map<bigint, Pending>();
  /** Calls not yet written, each with its estimated size. */
  private queue: Sized<BatchCall>[] = [];
  private writing = false;
  private scheduled = false;
  private nextId = 1n;
  private idleTimer: NodeJS.Timeout | undefined;
  /** No new call goes on this stream (retired, idle, broken or closed); those in flight still finish. */
  closed = false;
  /** The stream has failed or ended: nothing more is written on it. */
  private dead = false;

  constructor(
    client: ShardServiceClient,
    md: Metadata,
    readonly token: string | undefined,
    private readonly messageBudget: number,
    private readonly stats: BatchStats,
    /** No new call goes on `s` from now on (`unsupported`: the shard has no Batch). */
    private readonly gone: (s: ShardStream, unsupported: boolean) => void,
    /** The stream has ended, every call on it settled. */
    private readonly ended: (s: ShardStream) => void,
  ) {
    stats.streams += 1;
    this.stream = client.batch(md, {});
    this.stream.on('data', (msg: BatchResponse) => {
      for (const a of msg.answers) {
        const p = this.pending.get(a.id);
        if (!p) continue; // its deadline passed: the caller has had its answer
        this.settle(a.id, p);
        if (a.status && a.status.code !== Status.OK) p.reject(fromCallStatus(a.status));
        else p.resolve(a[p.kind]);
      }
      if (this.pending.size === 0) this.armIdle();
    });
    this.stream.on('error', (err) => this.broken(fromServiceError(err), (err as { code?: number }).code === Status.UNIMPLEMENTED));
    this.stream.on('status', (s: { code: number }) => {
      // Ended without an error (the shard is draining, or we half-closed): nothing left unanswered was served.
      if (s.code === Status.OK) this.broken(new CairnError('NOT_READY', 'the shard ended its batch stream (shutting down?); retry', { retryAfterMs: 50 }), false);
      this.ended(this);
    });
  }

  send<K extends BatchKind>(kind: K, req: BatchReq<K>, deadline: number, bytes: number): Promise<BatchRes<K>> {
    const id = this.nextId++;
    const left = deadline - Date.now();
    return new Promise<BatchRes<K>>((resolve, reject) => {
      const p: Pending = { kind, resolve: resolve as (r: unknown) => void, reject, timer: undefined };
      if (Number.isFinite(left)) {
        p.timer = setTimeout(() => {
          if (this.pending.delete(id)) reject(new CairnError('DEADLINE_EXCEEDED', `deadline exceeded after ${(Math.max(0, left) / 1000).toFixed(3)} s waiting for the shard's answer`));
          if (this.pending.size === 0) this.armIdle();
        }, Math.max(0, left));
      }
      this.pending.set(id, p);
      if (this.idleTimer) {
        clearTimeout(this.idleTimer);
        this.idleTimer = undefined;
      }
      this.queue.push({ item: { id, timeoutMs: Number.isFinite(left) ? Math.max(1, Math.ceil(left)) : 0, [kind]: req }, bytes });
      if (!this.writing && !this.scheduled) {
        this.scheduled = true;
        queueMicrotask(this.flush);
      }
    });
  }

  /** Writes what is queued: in messages under the budget, the next only once the previous is written. */
  private readonly flush = (): void => {
    this.scheduled = false;
    if (this.writing || this.queue.length === 0) return;
    const { taken: calls, rest } = takeUnderBudget(this.queue, this.messageBudget);
    this.queue = rest;
    this.writing = true;
    this.stats.calls += calls.length;
    this.stats.messages += 1;
    this.stream.write({ calls }, () => {
      this.writing = false;
      this.flush();
    });
  };

  private settle(id: bigint, p: Pending): void {
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
  }

  private armIdle(): void {
    if (this.closed || this.idleTimer) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      if (this.pending.size === 0) this.retire();
    }, IDLE_CLOSE_MS);
    this.idleTimer.unref();
  }

  /** Takes no new call; half-closes once what is queued is written (the shard ends the stream after its last answer). */
  retire(): void {
    if (this.closed) return;
    this.closed = true;
    this.gone(this, false);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    const end = (): void => {
      if (this.dead) return;
      if (this.writing || this.queue.length > 0) setImmediate(end);
      else this.stream.end();
    };
    end();
  }

  /** The stream failed: every call still waiting on it fails with the stream's error (the retry core decides what to resend). */
  private broken(err: CairnError, unsupported: boolean): void {
    this.closed = true;
    this.dead = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.gone(this, unsupported);
    const pending = [...this.pending.entries()];
    this.pending.clear();
    this.queue = [];
    for (const [id, p] of pending) {
      this.settle(id, p);
      p.reject(unsupported ? new BatchUnsupported() : err);
    }
  }

  /** Cancels the stream (the client is closing): calls in flight fail with CANCELLED. */
  cancel(): void {
    this.broken(new CairnError('CANCELLED', 'the client is closed'), false);
    this.stream.cancel();
  }
}

/** The Batch streams of one client, one per shard address (and token). */
export class BatchStreams {
  private readonly streams = new Map<string, ShardStream>();
  /** Every stream still open, retired ones included (they finish their calls): what close() cancels. */
  private readonly open = new Set<ShardStream>();
  /** Shards that answered UNIMPLEMENTED: an older version without Batch; they get unary calls. */
  private readonly unsupported = new Set<string>();
  readonly stats: BatchStats = { calls: 0, messages: 0, streams: 0 };
  /** Calls whose estimated size is above this go unary: a big call would hold up every small one behind it. */
  readonly maxCallBytes: number;
  private readonly messageBudget: number;

  constructor(maxMessageBytes: number) {
    this.maxCallBytes = Math.floor(maxMessageBytes / 8);
    this.messageBudget = Math.floor(maxMessageBytes / 2);
  }

  /** True when calls to this shard may go on a stream. */
  usable(address: string): boolean {
    return !this.unsupported.has(address);
  }

  /**
   * Sends one call on the shard's stream under `token`, opening the stream
   * when there is none (or the token changed: the stream's metadata carries
   * it). Rejects with BatchUnsupported when the shard has no Batch.
   */
  call<K extends BatchKind>(
    address: string,
    client: ShardServiceClient,
    md: Metadata,
    token: string | undefined,
    kind: K,
    req: BatchReq<K>,
    deadline: number,
    bytes: number,
  ): Promise<BatchRes<K>> {
    let s = this.streams.get(address);
    if (s && s.token !== token) {
      s.retire();
      s = undefined;
    }
    if (!s) {
      s = new ShardStream(
        client,
        md,
        token,
        this.messageBudget,
        this.stats,
        (gone, unsupported) => {
          if (this.streams.get(address) === gone) this.streams.delete(address);
          if (unsupported) this.unsupported.add(address);
        },
        (ended) => this.open.delete(ended),
      );
      this.streams.set(address, s);
      this.open.add(s);
    }
    return s.send(kind, req, deadline, bytes);
  }

  /** Cancels every stream: their calls fail with CANCELLED. */
  close(): void {
    for (const s of [...this.open]) s.cancel();
    this.open.clear();
    this.streams.clear();
  }
}
