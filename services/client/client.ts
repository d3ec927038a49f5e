/**
 * The Cairn client SDK. It logs in to the master, caches the cluster map,
 * sends every data call straight to the shard that owns the row (with the
 * map epoch it routed by), groups batches by owner, and retries wrong-shard
 * and unavailable answers inside the caller's deadline (retry.ts).
 *
 * Writes are retried safely because each logical write gets one request id,
 * reused by every retry and every sub-batch; the shard applies an id once per
 * row, even when a retry reaches a range's new owner after a move.
 *
 * This file is the public face: `CairnClient`, whose methods each say what
 * they do and hand the work to the module that owns it —
 *   session.ts    channels, login and the token
 *   map-cache.ts  the map: refresh on demand, or WatchMap
 *   calls.ts      the retry core every call goes through (fast first attempt, fan-out by owner)
 *   data.ts       row calls: writes, reads, deletes, check-and-mutate, leases
 *   scan.ts       scans, page by page
 *   admin.ts      AdminService calls
 *   convert.ts    public shapes to wire shapes, request ids
 *   types.ts      the public types
 */
import type {
  AdminServiceClient,
  DropServerResponse,
  ReloadResponse,
  RemoveServerResponse,
  StartRebalanceResponse,
  WatchOperationResponse,
} from '../../proto/gen/cairn/v1/admin.js';
import { CairnError, fromServiceError } from '../common/errors.js';
import type { ClusterMap } from '../common/map.js';
import * as adminCalls from './admin.js';
import { newOperationId } from './admin.js';
import { Calls } from './calls.js';
import * as data from './data.js';
import { MapCache } from './map-cache.js';
import { retryLoop } from './retry.js';
import { scan, scanPage } from './scan.js';
import { Session } from './session.js';
import type {
  CallOptions,
  Cell,
  CellCheck,
  CellsInput,
  ConnectOptions,
  Lease,
  RangeInfo,
  ReadOptions,
  RowInput,
  ScanOptions,
  ScanPage,
  ScanPageOptions,
  ScanRow,
  ServerInfo,
  TimeRange,
  WriteOptions,
} from './types.js';

export type * from './types.js';
export { newRequestId } from './convert.js';
export { newOperationId };

type AdminOpts = CallOptions & { operationId?: string };

export class CairnClient {
  private readonly session: Session;
  private readonly maps: MapCache;
  private readonly calls: Calls;

  private constructor(opts: ConnectOptions) {
    this.session = new Session(opts);
    this.maps = new MapCache(this.session);
    this.calls = new Calls(this.session, this.maps, opts.batch ?? true);
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
    const { session, maps } = client;
    const deadline = Date.now() + session.timeoutMs;
    try {
      await retryLoop(
        async () => {
          await session.authToken(deadline);
          await maps.refresh(deadline);
          if (maps.current.epoch === 0n) {
            throw new CairnError('NOT_READY', 'the cluster has no map yet: the master is waiting for shards to register', { retryAfterMs: 200 });
          }
        },
        { deadline },
      );
    } catch (err) {
      client.close();
      throw fromServiceError(err);
    }
    if (opts.watch) maps.startWatch();
    return client;
  }

  /** The cached cluster map the client routes by. */
  get map(): ClusterMap {
    return this.maps.current;
  }

  /** The bearer token sent with every call (undefined without credentials). */
  get token(): string | undefined {
    return this.session.token;
  }

  /**
   * Replaces the cached map, whatever its epoch. For tests and tools: a wrong
   * map is harmless, since the first WRONG_SHARD answer makes the client
   * fetch the real one.
   */
  setMap(map: ClusterMap): void {
    this.maps.current = map;
  }

  /** Ends the map watch and closes every channel. Calls after close fail with CANCELLED. */
  close(): void {
    if (this.session.closed) return;
    this.session.closed = true; // first: the watch's cancel must not schedule a reopen
    this.maps.stopWatch();
    this.calls.close();
    this.session.closeChannels();
  }

  // -------------------------------------------------------------------------
  // Data API (data.ts, scan.ts). Each method returns the module's promise as
  // is: no await here, so the first attempt still goes out before any await.

  /** Writes cells to one row and returns the timestamp given to cells sent without one. */
  put(row: string, cells: CellsInput, o: WriteOptions = {}): Promise<bigint> {
    return data.put(this.calls, row, cells, o);
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
  writeRows(rows: RowInput[], o: WriteOptions = {}): Promise<bigint[]> {
    return data.writeRows(this.calls, rows, o);
  }

  /** Reads one row: newest version of each column unless `allVersions`. Cells come by column, newest first. */
  get(row: string, o: ReadOptions = {}): Promise<Cell[]> {
    return data.get(this.calls, row, o);
  }

  /** The newest value of one column, or undefined. */
  async getValue(row: string, column: string, o: CallOptions = {}): Promise<Buffer | undefined> {
    const cells = await this.get(row, { ...o, columns: [column] });
    return cells.find((c) => c.column === column)?.value;
  }

  /** Reads many rows with one filter, per owner in parallel. Rows with no matching cell are absent from the result. */
  getRows(rows: string[], o: ReadOptions = {}): Promise<Map<string, Cell[]>> {
    return data.getRows(this.calls, rows, o);
  }

  /**
   * Every row whose key starts with `prefix`, fetched page by page across
   * every shard: ranges in hash order, each range's rows in key order (a
   * seek in each shard's row-key index); with an empty prefix, every row in
   * storage (hash) order.
   */
  scan(prefix: string, o: ScanOptions = {}): AsyncGenerator<ScanRow> {
    return scan(this.calls, prefix, o);
  }

  /**
   * One page of a scan. The scan walks the map's ranges in hash order; the
   * token records a hash position, so it stays valid when ranges move
   * between pages. It is opaque: pass it back with the same prefix.
   */
  scanPage(prefix: string, o: ScanPageOptions = {}): Promise<ScanPage> {
    return scanPage(this.calls, prefix, o);
  }

  /** Deletes every cell of a row; returns how many cells were deleted. */
  deleteRow(row: string, o: Omit<WriteOptions, 'replace'> = {}): Promise<number> {
    return data.deleteRow(this.calls, row, o);
  }

  /** Deletes columns of a row, optionally only versions in a time range; returns how many cells were deleted. */
  deleteCells(row: string, columns: string[], o: Omit<WriteOptions, 'replace'> & { timeRange?: TimeRange } = {}): Promise<number> {
    return data.deleteCells(this.calls, row, columns, o);
  }

  /**
   * Writes `cells` only if the newest version of `check.column` equals
   * `check.equals` (or the column is absent, with `absent: true`). Returns
   * whether the write happened; a retry of the same call gets the first
   * outcome (request id).
   */
  checkAndMutate(row: string, check: CellCheck, cells: CellsInput, o: WriteOptions = {}): Promise<boolean> {
    return data.checkAndMutate(this.calls, row, check, cells, o);
  }

  /** Takes a lease on a row. Another holder's live lease fails with CONFLICT. */
  lockRow(row: string, leaseMs: number, o: CallOptions = {}): Promise<Lease> {
    return data.lockRow(this.calls, row, leaseMs, o);
  }

  /** Extends a held lease to `leaseMs` from now. */
  extendLease(row: string, leaseId: string, leaseMs: number, o: CallOptions = {}): Promise<{ expiresAtMs: number }> {
    return data.extendLease(this.calls, row, leaseId, leaseMs, o);
  }

  /** Releases a lease. */
  unlockRow(row: string, leaseId: string, o: CallOptions = {}): Promise<void> {
    return data.unlockRow(this.calls, row, leaseId, o);
  }

  // -------------------------------------------------------------------------
  // Admin API (admin.ts; needs role admin)

  listServers(o: CallOptions = {}): Promise<ServerInfo[]> {
    return adminCalls.listServers(this.calls, o);
  }

  getRanges(o: CallOptions = {}): Promise<RangeInfo[]> {
    return adminCalls.getRanges(this.calls, o);
  }

  /**
   * Calls any Admin RPC with the client's token and the usual retries, e.g.
   * `client.admin((a) => a.planRebalance, { drain: '' })`. A request with an
   * empty `operationId` gets one, the same for every retry, so a retry after
   * an ambiguous failure never starts a second operation.
   */
  admin<Req, Res>(pick: (a: AdminServiceClient) => adminCalls.AdminMethod<Req, Res>, req: Req, o: CallOptions = {}): Promise<Res> {
    return adminCalls.admin(this.calls, pick, req, o);
  }

  /** Plans and starts a rebalance; retried safely under one operation id (yours, or one made here). */
  startRebalance(o: AdminOpts & { maxMbps?: number } = {}): Promise<StartRebalanceResponse> {
    return this.admin((a) => a.startRebalance, { maxMbps: o.maxMbps ?? 0, operationId: o.operationId ?? newOperationId() }, o);
  }

  /** Drains a shard (by id or host:port) to the others; retried safely under one operation id. */
  dropServer(server: string, o: AdminOpts & { maxMbps?: number } = {}): Promise<DropServerResponse> {
    return this.admin((a) => a.dropServer, { server, maxMbps: o.maxMbps ?? 0, operationId: o.operationId ?? newOperationId() }, o);
  }

  /** Removes a shard that owns nothing and stops its process; retried safely under one operation id. */
  removeServer(server: string, o: AdminOpts = {}): Promise<RemoveServerResponse> {
    return this.admin((a) => a.removeServer, { server, operationId: o.operationId ?? newOperationId() }, o);
  }

  /** Has the master read its client list again (as SIGHUP does); says who lost their tokens. */
  /** Changes how many shards hold each range; the master makes or drops copies by itself. */
  setReplicationFactor(factor: number, o: CallOptions = {}): Promise<{ previous: number; factor: number }> {
    return this.admin((a) => a.setReplicationFactor, { factor }, o).then((r) => ({ previous: r.previous, factor: r.factor }));
  }

  reload(o: CallOptions = {}): Promise<ReloadResponse> {
    return this.admin((a) => a.reload, {}, o);
  }

  /** Streams an operation's progress (WatchOperation) until every move has ended. */
  watchOperation(operationId: string): AsyncIterable<WatchOperationResponse> {
    return adminCalls.watchOperation(this.calls, operationId);
  }
}
