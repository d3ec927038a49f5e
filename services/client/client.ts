/**
 * The Cairn client SDK. It logs in to the master, caches the cluster map,
 * sends every data call straight to the shard that owns the row (with the
 * map epoch it routed by), groups batches by owner, and retries wrong-shard
 * and unavailable answers inside the caller's deadline (retry.ts).
 *
 * Writes are retried safely because each logical write gets one request id,
 * reused by every retry and every sub-batch; the shard applies an id once per
 * row, even when a retry reaches a range's new owner after a move.
 */
import type { CallOptions as GrpcCallOptions, ClientReadableStream, ClientUnaryCall, Metadata, ServiceError } from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import {
  AdminServiceClient,
  type DropServerResponse,
  type ReloadResponse,
  type RemoveServerResponse,
  type StartRebalanceResponse,
  type WatchOperationResponse,
} from '../../proto/gen/cairn/v1/admin.js';
import type { CellFilter, CellWrite, RowWrite } from '../../proto/gen/cairn/v1/common.js';
import { MasterServiceClient, type WatchMapResponse } from '../../proto/gen/cairn/v1/master.js';
import { ShardServiceClient } from '../../proto/gen/cairn/v1/shard.js';
import { CairnError, fromServiceError } from '../common/errors.js';
import { call, channelOptions, clientCredentials, ClientPool, metadataFor, type ClientTls } from '../common/grpc.js';
import type { Metadata as GrpcMetadata } from '@grpc/grpc-js';
import { endFromProto, endToProto } from '../common/hash.js';
import { EMPTY_MAP, mapError, mapFromProto, type ClusterMap } from '../common/map.js';
import { classify, backoffMs, realSleep, retryLoop } from './retry.js';
import {
  cursorAfter,
  cursorInWindow,
  decodeScanToken,
  encodeScanToken,
  FULL_WINDOW,
  groupByShard,
  routeRow,
  segmentAt,
  splitBatches,
  type BatchCaps,
  type Indexed,
  type ScanCursor,
} from './router.js';

// ---------------------------------------------------------------------------
// Public types

/** A cell value: strings are stored as UTF-8. */
export type Value = string | Uint8Array;

export interface CellInput {
  column: string;
  value: Value;
  /** Microseconds since the Unix epoch; leave out to let the shard's clock pick one. */
  timestampUs?: bigint;
}

/** `{ column: value }`, or a list of cells when timestamps are given. */
export type CellsInput = Record<string, Value> | CellInput[];

export interface Cell {
  column: string;
  /** Microseconds since the Unix epoch. */
  timestampUs: bigint;
  value: Buffer;
}

/** Versions with startUs <= timestamp < endUs; either bound may be left out. */
export interface TimeRange {
  startUs?: bigint;
  endUs?: bigint;
}

export interface CallOptions {
  /** Deadline for the whole call, retries included (default: the client's timeoutMs). */
  timeoutMs?: number;
}

export interface WriteOptions extends CallOptions {
  /** Delete every earlier version of each column written. */
  replace?: boolean;
  /** Acknowledge only once the write is on disk. */
  sync?: boolean;
}

export interface ReadOptions extends CallOptions {
  /** Exact column names; empty or absent (with no prefix) means every column. */
  columns?: string[];
  /** Only columns starting with this (ignored when `columns` is set). */
  columnPrefix?: string;
  timeRange?: TimeRange;
  /** Every matching version instead of only the newest of each column. */
  allVersions?: boolean;
  /** The most cells returned per row. */
  limit?: number;
}

export interface ScanOptions extends ReadOptions {
  /** Rows fetched per page (default 500). */
  pageSize?: number;
}

export interface ScanPageOptions extends ReadOptions {
  /** The most rows in this page (default 500). A page may hold fewer and still have a nextToken. */
  limit?: number;
  /** The nextToken of the previous page; absent starts a new scan. */
  resumeToken?: string;
  /** The most cells per row (ReadOptions.limit is the rows per page here). */
  cellLimit?: number;
}

export interface RowInput {
  row: string;
  cells: CellsInput;
  replace?: boolean;
}

export interface ScanRow {
  row: string;
  cells: Cell[];
}

export interface ScanPage {
  rows: ScanRow[];
  /** Pass as resumeToken for the next page; absent when the scan is complete. */
  nextToken?: string;
}

export interface Lease {
  leaseId: string;
  /** When the lease ends, ms since the Unix epoch. */
  expiresAtMs: number;
}

export interface CellCheck {
  column: string;
  /** The check holds when the column's newest value equals this. */
  equals?: Value;
  /** The check holds when the column has no version at all. */
  absent?: boolean;
}

export interface ServerInfo {
  id: string;
  address: string;
  /** "up" or "down". */
  status: string;
  bytes: number;
  rows: number;
  ranges: number;
  /** Fraction of the hash space owned, 0..1. */
  share: number;
  opsPerSec: number;
  /** ms since the Unix epoch; 0 = never. */
  lastHeartbeatMs: number;
  /** Free bytes on the shard's data directory's file system at its last heartbeat. */
  diskFreeBytes: number;
  /** Size of that file system; 0 = not reported (an older shard). */
  diskTotalBytes: number;
  /** The shard refuses writes because its disk is full (it resumes by itself once space is freed). */
  diskFull: boolean;
}

export interface RangeInfo {
  start: bigint;
  /** Exclusive; 2^64 for the last range. */
  end: bigint;
  shardId: string;
  address: string;
  bytes: number;
  rows: number;
}

export interface ConnectOptions {
  /** host:port of the master. */
  master: string;
  user?: string;
  password?: string;
  /** A token from an earlier login; used as-is (it cannot be renewed without a password). */
  token?: string;
  /** Default deadline of each call, retries included, and of connect itself (default 10 s). */
  timeoutMs?: number;
  tls?: ClientTls;
  /** gRPC message limit (default 16 MiB, the servers' default). */
  maxMessageBytes?: number;
  /** Keep the map fresh with MasterService.WatchMap instead of only on WRONG_SHARD. */
  watch?: boolean;
}

// ---------------------------------------------------------------------------
// Limits the SDK keeps to when it splits batches (the servers' defaults).

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
const MAX_ROWS_PER_CALL = 1000;
const MAX_CELLS_PER_CALL = 10_000;
const DEFAULT_PAGE_SIZE = 500;
/** Sub-calls of one logical call in flight at once. */
const FAN_OUT = 8;
/** How long before expiry a token is renewed: a fifth of its life, at most this. */
const RENEW_MARGIN_MS = 30_000;

// ---------------------------------------------------------------------------
// Conversions

const hasEmptyOperationId = (req: unknown): boolean =>
  typeof req === 'object' && req !== null && 'operationId' in req && (req as { operationId: unknown }).operationId === '';

/** The auth failures a fresh login fixes: an expired token, and one revoked because its user changed (the new token has the current role). */
const isExpiry = (err: CairnError): boolean => err.code === 'UNAUTHENTICATED' && (err.details.reason === 'TOKEN_EXPIRED' || err.details.reason === 'TOKEN_REVOKED');

/** An operation id for one logical admin call, reused by its retries (the master starts the operation once). */
export const newOperationId = (): string => `op-${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;

function toBuffer(v: Value, what: string): Buffer {
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (v instanceof Uint8Array) return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new CairnError('INVALID_ARGUMENT', `${what}: expected a string or Uint8Array, got ${typeof v}`);
}

function toCellWrites(cells: CellsInput): CellWrite[] {
  if (Array.isArray(cells)) {
    return cells.map((c) => ({ column: c.column, timestampUs: c.timestampUs ?? 0n, value: toBuffer(c.value, `value of column ${c.column}`) }));
  }
  return Object.entries(cells).map(([column, value]) => ({ column, timestampUs: 0n, value: toBuffer(value, `value of column ${column}`) }));
}

function toFilter(o: ReadOptions, limit = o.limit): CellFilter {
  return {
    columns: o.columns ?? [],
    columnPrefix: o.columnPrefix ?? '',
    timeRange: o.timeRange ? { startUs: o.timeRange.startUs ?? 0n, endUs: o.timeRange.endUs ?? 0n } : undefined,
    allVersions: o.allVersions ?? false,
    limit: limit ?? 0,
  };
}

/** Decoded proto cells already have exactly the public shape: no copy. */
const toCells = (cells: Array<{ column: string; timestampUs: bigint; value: Buffer }>): Cell[] => cells;

/** 16 random bytes: unique enough that two logical writes never share one. */
export const newRequestId = (): string => randomBytes(16).toString('hex');

/**
 * Request ids from one client, in newRequestId's format (32 hex digits): 12
 * random bytes drawn once per 2^32 ids, then a 32-bit counter. As unique as
 * newRequestId in practice (two prefixes collide with probability 2^-96; one
 * prefix never repeats a counter), without a call into the CSPRNG and a hex
 * encode per write.
 */
class RequestIds {
  private prefix = randomBytes(12).toString('hex');
  private seq = 0;
  next(): string {
    if (this.seq > 0xffffffff) {
      this.prefix = randomBytes(12).toString('hex');
      this.seq = 0;
    }
    return this.prefix + (this.seq++).toString(16).padStart(8, '0');
  }
}

/** The token a call can use as it stands, or STALE when one must be fetched first. */
const STALE: unique symbol = Symbol('stale token');

function rowWriteBytes(r: RowWrite): number {
  let n = Buffer.byteLength(r.row) + 16;
  for (const c of r.cells) n += Buffer.byteLength(c.column) + c.value.length + 16;
  return n;
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

// ---------------------------------------------------------------------------

export class CairnClient {
  private readonly masterClient: MasterServiceClient;
  private readonly adminClient: AdminServiceClient;
  private readonly shards: ClientPool<ShardServiceClient>;
  private readonly timeoutMs: number;
  private readonly maxMessageBytes: number;
  private readonly user: string | undefined;
  private readonly password: string | undefined;

  private currentMap: ClusterMap = EMPTY_MAP;
  private currentToken: string | undefined;
  private tokenExpiresAt = Infinity;
  private renewAt = Infinity;
  /** Set when a server said our token expired: log in again before the next call. */
  private tokenStale = false;
  private loggingIn: Promise<void> | undefined;
  private refreshing: Promise<void> | undefined;
  private closed = false;

  private watchStream: ClientReadableStream<WatchMapResponse> | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private watchFailures = 0;
  private readonly ids = new RequestIds();
  /** Metadata for the current token, reused by every call (grpc-js clones it per call). */
  private mdToken: string | undefined | null = null;
  private md: GrpcMetadata | undefined;

  private constructor(private readonly opts: ConnectOptions) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxMessageBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.user = opts.user;
    this.password = opts.password;
    this.currentToken = opts.token;
    const creds = clientCredentials(opts.tls);
    const chan = channelOptions(this.maxMessageBytes);
    this.masterClient = new MasterServiceClient(opts.master, creds, chan);
    this.adminClient = new AdminServiceClient(opts.master, creds, chan);
    this.shards = new ClientPool(ShardServiceClient, { tls: opts.tls, maxMessageBytes: this.maxMessageBytes });
  }

  /**
   * Logs in (when a user is given), fetches the map, waiting while the
   * cluster has none yet (epoch 0), and starts watching it when asked.
   */
  static async connect(opts: ConnectOptions): Promise<CairnClient> {
    if (!opts.master) throw new CairnError('INVALID_ARGUMENT', 'master: must be host:port of the Cairn master');
    if (opts.user !== undefined && opts.password === undefined) {
      throw new CairnError('INVALID_ARGUMENT', `password: required with user ${JSON.stringify(opts.user)}`);
    }
    const client = new CairnClient(opts);
    const deadline = Date.now() + client.timeoutMs;
    try {
      await retryLoop(
        async () => {
          await client.authToken(deadline);
          await client.refreshMap(deadline);
          if (client.currentMap.epoch === 0n) {
            throw new CairnError('NOT_READY', 'the cluster has no map yet: the master is waiting for shards to register', { retryAfterMs: 200 });
          }
        },
        { deadline },
      );
    } catch (err) {
      client.close();
      throw fromServiceError(err);
    }
    if (opts.watch) client.startWatch();
    return client;
  }

  /** The cached cluster map the client routes by. */
  get map(): ClusterMap {
    return this.currentMap;
  }

  /** The bearer token sent with every call (undefined without credentials). */
  get token(): string | undefined {
    return this.currentToken;
  }

  /**
   * Replaces the cached map, whatever its epoch. For tests and tools: a wrong
   * map is harmless, since the first WRONG_SHARD answer makes the client
   * fetch the real one.
   */
  setMap(map: ClusterMap): void {
    this.currentMap = map;
  }

  /** Ends the map watch and closes every channel. Calls after close fail with CANCELLED. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.watchTimer);
    this.watchStream?.cancel();
    this.watchStream = undefined;
    this.shards.close();
    this.masterClient.close();
    this.adminClient.close();
  }

  // -------------------------------------------------------------------------
  // Data API

  /** Writes cells to one row and returns the timestamp given to cells sent without one. */
  async put(row: string, cells: CellsInput, o: WriteOptions = {}): Promise<bigint> {
    // writeRows of one row, without the batch machinery: one owner, one sub-call.
    const req = { epoch: 0n, requestId: this.ids.next(), sync: o.sync ?? false, rows: [{ row, cells: toCellWrites(cells), replace: o.replace ?? false }] };
    const res = await this.onOwner(o, row, (shard, epoch, callOpts) => {
      req.epoch = epoch;
      return this.unary(shard, shard.writeRows, req, callOpts);
    });
    return res.timestampsUs[0] ?? 0n;
  }

  /**
   * Writes many rows (atomically per row, not across rows). Rows are grouped
   * by owner and sent as concurrent sub-batches; after a failure only the
   * rows that failed are re-grouped and sent again. Returns each row's
   * assigned timestamp, in input order.
   *
   * When it fails (a non-retryable error, or the deadline), some sub-batches
   * may already be written; rows are never half-written.
   */
  async writeRows(rows: RowInput[], o: WriteOptions = {}): Promise<bigint[]> {
    const writes: RowWrite[] = rows.map((r) => ({ row: r.row, cells: toCellWrites(r.cells), replace: r.replace ?? o.replace ?? false }));
    const out: bigint[] = new Array<bigint>(rows.length).fill(0n);
    const requestId = this.ids.next();
    const caps: BatchCaps<RowWrite> = {
      maxItems: MAX_ROWS_PER_CALL,
      weights: [
        { max: MAX_CELLS_PER_CALL, of: (r) => r.cells.length },
        // Leave room for the envelope under the message limit.
        { max: Math.floor(this.maxMessageBytes * 0.9), of: rowWriteBytes },
      ],
    };
    await this.fanOut(o, writes, (r) => r.row, caps, async (shard, epoch, batch, callOpts) => {
      const res = await this.unary(shard, shard.writeRows, { epoch, requestId, sync: o.sync ?? false, rows: batch.map((b) => b.item) }, callOpts);
      batch.forEach((b, k) => (out[b.index] = res.timestampsUs[k] ?? 0n));
    });
    return out;
  }

  /** Reads one row: newest version of each column unless `allVersions`. Cells come by column, newest first. */
  async get(row: string, o: ReadOptions = {}): Promise<Cell[]> {
    const filter = toFilter(o);
    const res = await this.onOwner(o, row, (shard, epoch, callOpts) => this.unary(shard, shard.readRow, { epoch, row, filter }, callOpts));
    return toCells(res.cells);
  }

  /** The newest value of one column, or undefined. */
  async getValue(row: string, column: string, o: CallOptions = {}): Promise<Buffer | undefined> {
    const cells = await this.get(row, { ...o, columns: [column] });
    return cells.find((c) => c.column === column)?.value;
  }

  /** Reads many rows with one filter, per owner in parallel. Rows with no matching cell are absent from the result. */
  async getRows(rows: string[], o: ReadOptions = {}): Promise<Map<string, Cell[]>> {
    const unique = [...new Set(rows)];
    const filter = toFilter(o);
    const found = new Map<string, Cell[]>();
    await this.fanOut(o, unique, (r) => r, { maxItems: MAX_ROWS_PER_CALL }, async (shard, epoch, batch, callOpts) => {
      const res = await this.unary(shard, shard.readRows, { epoch, rows: batch.map((b) => b.item), filter }, callOpts);
      for (const r of res.rows) found.set(r.row, toCells(r.cells));
    });
    // Request order, which is what a caller iterating the map expects.
    return new Map(unique.filter((r) => found.has(r)).map((r) => [r, found.get(r)!]));
  }

  /**
   * Every row whose key starts with `prefix`, in storage order (hash, then
   * key; not alphabetical), fetched page by page across every shard.
   */
  async *scan(prefix: string, o: ScanOptions = {}): AsyncGenerator<ScanRow> {
    let resumeToken: string | undefined;
    do {
      const page = await this.scanPage(prefix, { ...o, limit: o.pageSize ?? DEFAULT_PAGE_SIZE, cellLimit: o.limit, resumeToken });
      for (const r of page.rows) yield r;
      resumeToken = page.nextToken;
    } while (resumeToken !== undefined);
  }

  /**
   * One page of a scan. The scan walks the map's ranges in hash order; the
   * token records a hash position, so it stays valid when ranges move
   * between pages. It is opaque: pass it back with the same prefix.
   */
  async scanPage(prefix: string, o: ScanPageOptions = {}): Promise<ScanPage> {
    const limit = o.limit ?? DEFAULT_PAGE_SIZE;
    if (!Number.isInteger(limit) || limit < 1) throw new CairnError('INVALID_ARGUMENT', `limit: must be a positive integer, got ${limit}`);
    const window = FULL_WINDOW;
    const filter = toFilter(o, o.cellLimit);
    const deadline = this.deadlineOf(o);
    let cursor: ScanCursor = o.resumeToken ? decodeScanToken(o.resumeToken) : { hash: window.start };
    const rows: ScanRow[] = [];
    while (rows.length < limit && cursorInWindow(cursor, window)) {
      const at = cursor;
      // Re-planned on every attempt: after a map refresh the same hash may have a new owner.
      const { res, segmentEnd } = await this.attempt(deadline, async (token, map) => {
        const seg = segmentAt(map, at.hash, window.end);
        const shard = this.shard(seg.address);
        const req = {
          epoch: map.epoch,
          rowPrefix: prefix,
          filter,
          limit: limit - rows.length,
          resumeToken: at.shardToken ?? Buffer.alloc(0),
          hashStart: at.hash,
          hashEnd: endToProto(seg.end),
        };
        return { res: await this.unary(shard, shard.scanRows, req, { token, deadline }), segmentEnd: seg.end };
      });
      for (const r of res.rows) rows.push(r); // decoded RowCells have the ScanRow shape: no copy
      cursor = cursorAfter(res.nextToken, segmentEnd);
    }
    return cursorInWindow(cursor, window) ? { rows, nextToken: encodeScanToken(cursor) } : { rows };
  }

  /** Deletes every cell of a row; returns how many cells were deleted. */
  async deleteRow(row: string, o: Omit<WriteOptions, 'replace'> = {}): Promise<number> {
    const requestId = this.ids.next();
    const res = await this.onOwner(o, row, (shard, epoch, callOpts) =>
      call(shard, shard.deleteRow, { epoch, requestId, sync: o.sync ?? false, row }, callOpts),
    );
    return Number(res.deletedCells);
  }

  /** Deletes columns of a row, optionally only versions in a time range; returns how many cells were deleted. */
  async deleteCells(row: string, columns: string[], o: Omit<WriteOptions, 'replace'> & { timeRange?: TimeRange } = {}): Promise<number> {
    const requestId = this.ids.next();
    const timeRange = o.timeRange ? { startUs: o.timeRange.startUs ?? 0n, endUs: o.timeRange.endUs ?? 0n } : undefined;
    const res = await this.onOwner(o, row, (shard, epoch, callOpts) =>
      call(shard, shard.deleteCells, { epoch, requestId, sync: o.sync ?? false, row, columns, timeRange }, callOpts),
    );
    return Number(res.deletedCells);
  }

  /**
   * Writes `cells` only if the newest version of `check.column` equals
   * `check.equals` (or the column is absent, with `absent: true`). Returns
   * whether the write happened; a retry of the same call gets the first
   * outcome (request id).
   */
  async checkAndMutate(row: string, check: CellCheck, cells: CellsInput, o: WriteOptions = {}): Promise<boolean> {
    if (!check.absent && check.equals === undefined) {
      throw new CairnError('INVALID_ARGUMENT', 'check: give `equals` (a value) or `absent: true`');
    }
    const req = {
      requestId: this.ids.next(),
      sync: o.sync ?? false,
      row,
      checkColumn: check.column,
      expectedValue: check.absent ? Buffer.alloc(0) : toBuffer(check.equals!, 'check.equals'),
      expectAbsent: check.absent ?? false,
      cells: toCellWrites(cells),
      replace: o.replace ?? false,
    };
    const res = await this.onOwner(o, row, (shard, epoch, callOpts) => call(shard, shard.checkAndMutate, { ...req, epoch }, callOpts));
    return res.succeeded;
  }

  /** Takes a lease on a row. Another holder's live lease fails with CONFLICT. */
  async lockRow(row: string, leaseMs: number, o: CallOptions = {}): Promise<Lease> {
    const requestId = this.ids.next();
    const res = await this.onOwner(o, row, (shard, epoch, callOpts) => call(shard, shard.lockRow, { epoch, row, leaseMs, requestId }, callOpts));
    return { leaseId: res.leaseId, expiresAtMs: Number(res.expiresAtMs) };
  }

  /** Extends a held lease to `leaseMs` from now. */
  async extendLease(row: string, leaseId: string, leaseMs: number, o: CallOptions = {}): Promise<{ expiresAtMs: number }> {
    const res = await this.onOwner(o, row, (shard, epoch, callOpts) => call(shard, shard.extendLease, { epoch, row, leaseId, leaseMs }, callOpts));
    return { expiresAtMs: Number(res.expiresAtMs) };
  }

  /** Releases a lease. */
  async unlockRow(row: string, leaseId: string, o: CallOptions = {}): Promise<void> {
    await this.onOwner(o, row, (shard, epoch, callOpts) => call(shard, shard.unlockRow, { epoch, row, leaseId }, callOpts));
  }

  // -------------------------------------------------------------------------
  // Admin API (needs role admin)

  async listServers(o: CallOptions = {}): Promise<ServerInfo[]> {
    const res = await this.run(this.deadlineOf(o), (token, _map, deadline) => call(this.adminClient, this.adminClient.listServers, {}, { token, deadline }));
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
    }));
  }

  async getRanges(o: CallOptions = {}): Promise<RangeInfo[]> {
    const res = await this.run(this.deadlineOf(o), (token, _map, deadline) => call(this.adminClient, this.adminClient.getRanges, {}, { token, deadline }));
    return res.ranges.map((r) => ({
      start: r.start,
      end: endFromProto(r.end),
      shardId: r.shardId,
      address: r.address,
      bytes: Number(r.bytes),
      rows: Number(r.rows),
    }));
  }

  /**
   * Calls any Admin RPC with the client's token and the usual retries, e.g.
   * `client.admin((a) => a.planRebalance, { drain: '' })`. A request with an
   * empty `operationId` gets one, the same for every retry, so a retry after
   * an ambiguous failure never starts a second operation.
   */
  async admin<Req, Res>(
    pick: (a: AdminServiceClient) => (req: Req, md: Metadata, opts: Partial<GrpcCallOptions>, cb: (err: ServiceError | null, res: Res) => void) => ClientUnaryCall,
    req: Req,
    o: CallOptions = {},
  ): Promise<Res> {
    const once = hasEmptyOperationId(req) ? { ...req, operationId: newOperationId() } : req;
    return this.run(this.deadlineOf(o), (token, _map, deadline) => call(this.adminClient, pick(this.adminClient), once, { token, deadline }));
  }

  /** Plans and starts a rebalance; retried safely under one operation id (yours, or one made here). */
  startRebalance(o: CallOptions & { maxMbps?: number; operationId?: string } = {}): Promise<StartRebalanceResponse> {
    return this.admin((a) => a.startRebalance, { maxMbps: o.maxMbps ?? 0, operationId: o.operationId ?? newOperationId() }, o);
  }

  /** Drains a shard (by id or host:port) to the others; retried safely under one operation id. */
  dropServer(server: string, o: CallOptions & { maxMbps?: number; operationId?: string } = {}): Promise<DropServerResponse> {
    return this.admin((a) => a.dropServer, { server, maxMbps: o.maxMbps ?? 0, operationId: o.operationId ?? newOperationId() }, o);
  }

  /** Removes a shard that owns nothing and stops its process; retried safely under one operation id. */
  removeServer(server: string, o: CallOptions & { operationId?: string } = {}): Promise<RemoveServerResponse> {
    return this.admin((a) => a.removeServer, { server, operationId: o.operationId ?? newOperationId() }, o);
  }

  /** Has the master read its client list again (as SIGHUP does); says who lost their tokens. */
  reload(o: CallOptions = {}): Promise<ReloadResponse> {
    return this.admin((a) => a.reload, {}, o);
  }

  /** Streams an operation's progress (WatchOperation) until every move has ended. */
  async *watchOperation(operationId: string): AsyncIterable<WatchOperationResponse> {
    const stream = this.adminClient.watchOperation({ operationId }, metadataFor(this.currentToken));
    try {
      for await (const msg of stream as AsyncIterable<WatchOperationResponse>) yield msg;
    } catch (err) {
      throw fromServiceError(err);
    } finally {
      stream.cancel();
    }
  }

  // -------------------------------------------------------------------------
  // Routing and retries

  private deadlineOf(o: CallOptions): number {
    return Date.now() + (o.timeoutMs ?? this.timeoutMs);
  }

  private shard(address: string): ShardServiceClient {
    return this.shards.get(address);
  }

  /**
   * One logical call with retries inside the deadline. `fn` sees the token
   * and the map current at each attempt, so a retry after a refresh routes
   * by the new map. A token the server calls expired is renewed once.
   */
  private run<T>(
    deadline: number,
    fn: (token: string | undefined, map: ClusterMap, deadline: number) => Promise<T>,
    previous?: CairnError,
  ): Promise<T> {
    return retryLoop(
      async () => {
        if (this.closed) throw new CairnError('CANCELLED', 'the client is closed');
        return this.withToken(deadline, (token) => fn(token, this.currentMap, deadline));
      },
      { deadline, onRefresh: () => this.refreshMap(deadline), previous },
    );
  }

  /**
   * Runs fn with the current token; if a server answers that the token
   * expired (our clock and theirs may disagree), logs in and runs fn once more.
   */
  private async withToken<T>(deadline: number, fn: (token: string | undefined) => Promise<T>): Promise<T> {
    try {
      return await fn(await this.authToken(deadline));
    } catch (e) {
      const err = fromServiceError(e);
      // Expiry or revocation (the cairn-error-reason trailer) are the auth failures a fresh login fixes; any other fails.
      if (!isExpiry(err) || !this.canLogin) throw err;
      this.tokenStale = true;
      return await fn(await this.authToken(deadline));
    }
  }

  /** A single-row call sent to the row's owner. */
  private onOwner<T>(
    o: CallOptions,
    row: string,
    fn: (shard: ShardServiceClient, epoch: bigint, callOpts: { token?: string; deadline: number }) => Promise<T>,
  ): Promise<T> {
    return this.attempt(this.deadlineOf(o), (token, map, deadline) => fn(this.shard(routeRow(map, row).address), map.epoch, { token, deadline }));
  }

  /**
   * One logical call, fast: the first attempt is sent at once, with the token
   * and map as they stand (no retry loop, no await before the send). Only a
   * retryable failure (or a token that must be fetched first) goes on to the
   * full loop of `run`, under the same deadline, after what the loop itself
   * would have done first: refresh the map, or wait the backoff.
   */
  private attempt<T>(deadline: number, fn: (token: string | undefined, map: ClusterMap, deadline: number) => Promise<T>): Promise<T> {
    const token = this.readyToken();
    if (token === STALE || this.closed) return this.run(deadline, fn);
    let first: Promise<T>;
    try {
      first = fn(token, this.currentMap, deadline);
    } catch (e) {
      first = Promise.reject(e);
    }
    return first.catch((e: unknown) => this.recover(fromServiceError(e), deadline, fn));
  }

  private async recover<T>(err: CairnError, deadline: number, fn: (token: string | undefined, map: ClusterMap, deadline: number) => Promise<T>): Promise<T> {
    if (isExpiry(err) && this.canLogin) {
      this.tokenStale = true; // as withToken: log in again, then the loop
      return this.run(deadline, fn);
    }
    let action = classify(err);
    if (action === 'fail') throw err;
    if (action === 'refresh-map') {
      try {
        await this.refreshMap(deadline);
      } catch (e) {
        err = fromServiceError(e);
        if (classify(err) === 'fail') throw err;
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

  /** The current token when it can be sent as is; STALE when a login must come first. */
  private readyToken(): string | undefined | typeof STALE {
    if (!this.canLogin) return this.currentToken;
    if (this.currentToken === undefined || this.tokenStale || Date.now() >= this.renewAt) return STALE;
    return this.currentToken;
  }

  /** A unary call with the caller's deadline and metadata reused for the same token (grpc.ts `call`, minus a Metadata per call). */
  private unary<Req, Res>(
    client: ShardServiceClient,
    method: (req: Req, md: GrpcMetadata, opts: Partial<GrpcCallOptions>, cb: (err: ServiceError | null, res: Res) => void) => ClientUnaryCall,
    req: Req,
    o: { token?: string; deadline: number },
  ): Promise<Res> {
    if (o.token !== this.mdToken || !this.md) {
      this.md = metadataFor(o.token);
      this.mdToken = o.token;
    }
    const md = this.md;
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
  private async fanOut<T>(
    o: CallOptions,
    items: readonly T[],
    keyOf: (item: T) => string,
    caps: BatchCaps<T>,
    send: (shard: ShardServiceClient, epoch: bigint, batch: Array<Indexed<T>>, callOpts: { token?: string; deadline: number }) => Promise<void>,
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
        await send(this.shard(subCalls[0]!.address), map.epoch, subCalls[0]!.batch, { token, deadline });
        return;
      }
      const failed: Array<Indexed<T>> = [];
      const errors: CairnError[] = [];
      await forEachLimit(subCalls, FAN_OUT, async ({ address, batch }) => {
        try {
          await send(this.shard(address), map.epoch, batch, { token, deadline });
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

  // -------------------------------------------------------------------------
  // Map

  /** Installs a map unless it is older than ours. An equal epoch replaces ours (it may have been set by hand). */
  private installMap(next: ClusterMap): void {
    if (next.epoch === 0n || next.epoch < this.currentMap.epoch) return;
    if (mapError(next)) return; // never route by a map that does not tile
    this.currentMap = next;
  }

  /** Fetches the map from the master; concurrent callers share one GetMap. */
  private refreshMap(deadline: number): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        const until = Math.min(deadline, Date.now() + this.timeoutMs);
        const res = await this.withToken(until, (token) => call(this.masterClient, this.masterClient.getMap, {}, { token, deadline: until }));
        this.installMap(mapFromProto(res.map));
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  /**
   * Keeps the map fresh from WatchMap. A broken stream is reopened after a
   * backoff; no stream error ever escapes (a client must not crash the
   * process that embeds it).
   */
  private startWatch(): void {
    if (this.closed) return;
    let over = false;
    const reopen = (err?: CairnError) => {
      if (over) return;
      over = true;
      this.watchStream = undefined;
      if (this.closed) return;
      if (err?.code === 'UNAUTHENTICATED') this.tokenStale = true;
      const delay = Math.max(50, backoffMs(this.watchFailures++));
      this.watchTimer = setTimeout(() => this.startWatch(), delay);
      this.watchTimer.unref();
    };
    void (async () => {
      let token = this.currentToken;
      try {
        token = await this.authToken(Date.now() + this.timeoutMs);
      } catch {
        // Try with the token we have; the stream's own error will schedule a retry.
      }
      if (this.closed) return;
      const stream = this.masterClient.watchMap({ minEpoch: this.currentMap.epoch }, metadataFor(token));
      this.watchStream = stream;
      stream.on('data', (res: WatchMapResponse) => {
        this.watchFailures = 0;
        this.installMap(mapFromProto(res.map));
      });
      stream.on('error', (e) => reopen(fromServiceError(e)));
      stream.on('end', () => reopen());
    })().catch((e) => reopen(fromServiceError(e)));
  }

  // -------------------------------------------------------------------------
  // Authentication

  private get canLogin(): boolean {
    return this.user !== undefined && this.password !== undefined;
  }

  /** The token for the next call, logging in first when there is none yet or it is about to expire. */
  private async authToken(deadline: number): Promise<string | undefined> {
    if (!this.canLogin) return this.currentToken;
    const now = Date.now();
    if (this.currentToken === undefined || this.tokenStale || now >= this.renewAt) {
      try {
        await this.login(deadline);
      } catch (err) {
        // An early renewal that fails is not fatal while the old token still works.
        if (this.currentToken === undefined || this.tokenStale || now >= this.tokenExpiresAt) throw err;
        this.renewAt = now + 1000;
      }
    }
    return this.currentToken;
  }

  /** MasterService.Login; concurrent callers share one login. */
  private login(deadline: number): Promise<void> {
    this.loggingIn ??= (async () => {
      try {
        const sent = Date.now();
        const res = await call(this.masterClient, this.masterClient.login, { user: this.user!, password: this.password! }, { deadline });
        const expires = Number(res.expiresAtMs);
        this.currentToken = res.token;
        this.tokenExpiresAt = expires;
        this.renewAt = expires - Math.min(RENEW_MARGIN_MS, (expires - sent) / 5);
        this.tokenStale = false;
      } finally {
        this.loggingIn = undefined;
      }
    })();
    return this.loggingIn;
  }
}
