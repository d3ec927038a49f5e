/**
 * Thin gRPC handlers for the Shard data service (ShardService, the API
 * clients call). Each one validates with a pure check (validate.ts), routes
 * by the shard's map, and delegates to the store or forwards one hop to the
 * owner. Errors go through the one table.
 *
 * Routing rule (docs/design.md "Requests and routing"):
 * - the shard serves a key only while its own map says it owns the key;
 * - a request with an epoch for a key owned elsewhere gets WRONG_SHARD
 *   (FAILED_PRECONDITION) naming the owner and the current epoch;
 * - a request without an epoch is forwarded to the owner, with our epoch set
 *   so the owner never forwards again, under the caller's deadline;
 * - a key we own but have fenced for a move gets FENCED (UNAVAILABLE with a
 *   retry hint), checked before the store is touched. Local store calls are
 *   tracked, so a fence can wait for the calls that passed the check.
 *
 * Each handler is written once (`handlers`) and served two ways: as its unary
 * RPC, and as a call inside a Batch stream (batch-service.ts), which carries
 * many calls per message.
 *
 * The internal calls (map push, transfers, move state, stop) are a service of
 * their own, on the same port: control-service.ts.
 */
import type { UntypedServiceImplementation } from '@grpc/grpc-js';
import type { CellFilter, Cell, CellWrite, RowCells } from '../../proto/gen/cairn/v1/common.js';
import type {
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
  ReadRowsRequest,
  ReadRowsResponse,
  ScanRowsRequest,
  ScanRowsResponse,
  ShardServiceClient,
  ShardServiceServer,
  UnlockRowRequest,
  UnlockRowResponse,
  WriteRowsRequest,
  WriteRowsResponse,
} from '../../proto/gen/cairn/v1/shard.js';
import type { Role } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { call, unary, type HandlerEnv, type RpcContext } from '../common/grpc.js';
import { endFromProto, hashFromBytes, HASH_SPACE_END, rowHash } from '../common/hash.js';
import { addressOf, ownerOfHash, type ClusterMap } from '../common/map.js';
import { rangeContains, type HashRange } from '../common/ranges.js';
import { batchService } from './batch-service.js';
import { encodeKeyOrderToken, encodeScanToken, rowPrefix } from './keys.js';
import type { ShardNode } from './node.js';
import type { CellFilterIn, CellIn, CellOut } from './store.js';
import * as check from './validate.js';

export const toFilter = (f: CellFilter | undefined): CellFilterIn => ({
  columns: f?.columns ?? [],
  columnPrefix: f?.columnPrefix ?? '',
  timeRange: f?.timeRange ? { startUs: f.timeRange.startUs, endUs: f.timeRange.endUs } : undefined,
  allVersions: f?.allVersions ?? false,
  limit: f?.limit ?? 0,
});

const toCells = (cells: CellWrite[]): CellIn[] => cells.map((c) => ({ column: c.column, timestampUs: c.timestampUs, value: c.value }));
const fromCells = (cells: CellOut[]): Cell[] => cells.map((c) => ({ column: c.column, timestampUs: c.timestampUs, value: c.value }));

type Route = { local: true } | { local: false; owner: string; address: string };

export class Router {
  constructor(private readonly node: ShardNode) {}

  private get map(): ClusterMap {
    return this.node.map;
  }

  /** Where a hash is served, or the error the caller must see (a write needs enough of a replicated range's members in sync). */
  routeHash(hash: bigint, epoch: bigint, write = false): Route {
    const map = this.map;
    if (map.epoch === 0n || !this.node.id) {
      throw new CairnError('NOT_READY', 'this shard has no cluster map yet (the master is waiting for shards to register)', { retryAfterMs: 200 });
    }
    const owner = ownerOfHash(map, hash);
    if (!owner) throw new CairnError('INTERNAL', `map epoch ${map.epoch} does not cover hash ${hash}`);
    if (owner.shardId === this.node.id) {
      this.node.fences.checkHash(hash);
      this.node.replicator.assertServing(hash, write);
      return { local: true };
    }
    const address = addressOf(map, owner.shardId) ?? '';
    if (epoch !== 0n) {
      if (epoch > map.epoch) {
        // The caller knows a newer map than we do: learn it, and let the caller retry.
        void this.node.refreshMap().catch(() => undefined);
        throw new CairnError('NOT_READY', `shard ${this.node.id} holds map epoch ${map.epoch}, older than the request's ${epoch}; retry`, {
          retryAfterMs: 50,
          epoch: map.epoch,
        });
      }
      throw new CairnError('WRONG_SHARD', `row is owned by shard ${owner.shardId} at ${address} (map epoch ${map.epoch})`, {
        epoch: map.epoch,
        owner: owner.shardId,
        ownerAddress: address,
      });
    }
    return { local: false, owner: owner.shardId, address };
  }

  /** Throws FENCED when any of a locally served window is fenced. */
  checkUnfenced(window: HashRange): void {
    this.node.fences.checkRange(window);
  }

  routeRow(row: string, epoch: bigint, write = false): Route {
    return this.routeHash(rowHash(row), epoch, write);
  }

  /** Calls the same method on the owner, one hop, with our epoch and the caller's token and deadline. */
  async forward<Req extends { epoch: bigint }, Res>(
    address: string,
    method: (c: ShardServiceClient) => Parameters<typeof call<Req, Res>>[1],
    req: Req,
    ctx: RpcContext,
  ): Promise<Res> {
    const client = this.node.peers.get(address);
    try {
      return await call(client, method(client), { ...req, epoch: this.map.epoch }, { token: ctx.token, deadline: Math.min(ctx.deadline, Date.now() + 30_000) });
    } catch (err) {
      const e = err as CairnError;
      // The owner moved under us: the plain caller cannot refresh a map, so it just retries.
      if (e.code === 'WRONG_SHARD') throw new CairnError('NOT_READY', `ownership changed while forwarding: ${e.message}; retry`, { retryAfterMs: 50 });
      throw e;
    }
  }
}

/** Groups items by route, keeping each item's index so results can be merged in request order. */
function groupByRoute<T>(router: Router, items: T[], keyOf: (t: T) => string, epoch: bigint, write = false) {
  const local: Array<{ i: number; item: T }> = [];
  const remote = new Map<string, Array<{ i: number; item: T }>>();
  items.forEach((item, i) => {
    const r = router.routeRow(keyOf(item), epoch, write);
    if (r.local) local.push({ i, item });
    else {
      const list = remote.get(r.address) ?? [];
      list.push({ i, item });
      remote.set(r.address, list);
    }
  });
  return { local, remote };
}

/** One data call's handler, served alike as its unary RPC and inside a Batch stream: the method name and role it is checked under, and the work. */
export interface Handler<Req, Res> {
  method: string;
  need: Role;
  run: (req: Req, ctx: RpcContext) => Promise<Res>;
}

const handler = <Req, Res>(method: string, need: Role, run: (req: Req, ctx: RpcContext) => Promise<Res>): Handler<Req, Res> => ({ method, need, run });

export function shardServiceImpl(node: ShardNode, env: HandlerEnv): ShardServiceServer & UntypedServiceImplementation {
  const router = new Router(node);
  const limits = node.opts.limits;
  const store = node.store;
  const header = () => ({ nodeId: node.nodeId, epoch: node.map.epoch });
  /**
   * A local call: tracked (a fence waits for it), then answered only once
   * what it wrote or read is on every in-sync member of the replicated
   * ranges of these rows (nothing to wait for with a single copy).
   */
  const served = async <T>(p: Promise<T>, rows: Iterable<string>): Promise<T> => {
    const out = await node.trackLocal(p);
    await node.replicator.committed(hashesOf(rows)); // hashed only when some range is replicated
    return out;
  };

  const handlers = {
    writeRows: handler('WriteRows', 'rw', async (req: WriteRowsRequest, ctx): Promise<WriteRowsResponse> => {
      check.checkWriteRows(
        req.rows, // decoded RowWrite/CellWrite have the store's input shape: no copies
        limits,
      );
      check.checkRequestId(req.requestId);
      node.countOp(req.rows.length);
      const { local, remote } = groupByRoute(router, req.rows, (r) => r.row, req.epoch, true);
      const timestamps: bigint[] = new Array(req.rows.length).fill(0n);
      const work: Promise<void>[] = [];
      if (local.length) {
        work.push(
          served(
            store.writeRows(local.length === req.rows.length ? req.rows : local.map(({ item }) => item), { requestId: req.requestId, sync: req.sync }),
            local.map(({ item }) => item.row),
          ).then((ts) => ts.forEach((t, k) => (timestamps[local[k]!.i] = t))),
        );
      }
      for (const [address, part] of remote) {
        work.push(
          router
            .forward(address, (c) => c.writeRows, { ...req, rows: part.map((p) => p.item) }, ctx)
            .then((res) => res.timestampsUs.forEach((t, k) => (timestamps[part[k]!.i] = t))),
        );
      }
      await Promise.all(work);
      return { header: header(), timestampsUs: timestamps };
    }),

    readRow: handler('ReadRow', 'r', async (req: ReadRowRequest, ctx): Promise<ReadRowResponse> => {
      check.checkRowKey(req.row, limits, 'row');
      const filter = toFilter(req.filter);
      check.checkCellFilter(filter, limits);
      node.countOp();
      const r = router.routeRow(req.row, req.epoch);
      if (!r.local) return router.forward(r.address, (c) => c.readRow, req, ctx);
      return { header: header(), cells: fromCells(await served(store.readRow(req.row, filter), [req.row])) };
    }),

    readRows: handler('ReadRows', 'r', async (req: ReadRowsRequest, ctx): Promise<ReadRowsResponse> => {
      const filter = toFilter(req.filter);
      check.checkReadRows(req.rows, filter, limits);
      node.countOp(req.rows.length);
      const { local, remote } = groupByRoute(router, req.rows, (r) => r, req.epoch);
      const found: Array<{ i: number; rows: RowCells }> = [];
      const work: Promise<void>[] = [];
      if (local.length) {
        work.push(
          served(store.readRows(local.map((l) => l.item), filter), local.map((l) => l.item)).then((rows) => {
            const index = new Map(local.map((l) => [l.item, l.i]));
            for (const row of rows) found.push({ i: index.get(row.row)!, rows: { row: row.row, cells: fromCells(row.cells) } });
          }),
        );
      }
      for (const [address, part] of remote) {
        work.push(
          router.forward(address, (c) => c.readRows, { ...req, rows: part.map((p) => p.item) }, ctx).then((res) => {
            const index = new Map(part.map((p) => [p.item, p.i]));
            for (const row of res.rows) found.push({ i: index.get(row.row)!, rows: row });
          }),
        );
      }
      await Promise.all(work);
      found.sort((a, b) => a.i - b.i);
      return { header: header(), rows: found.map((f) => f.rows) };
    }),

    scanRows: handler('ScanRows', 'r', async (req: ScanRowsRequest, ctx): Promise<ScanRowsResponse> => {
      const filter = toFilter(req.filter);
      const window: HashRange = { start: req.hashStart, end: endFromProto(req.hashEnd) };
      check.checkScan({ rowPrefix: req.rowPrefix, filter, limit: req.limit, hashStart: window.start, hashEnd: window.end, resumeToken: req.resumeToken }, limits);
      node.countOp();
      const limit = req.limit || 1000;
      // Where to start: after the resume token's position, else at the window start.
      let from = req.resumeToken.length >= 8 ? hashFromBytes(req.resumeToken) : window.start;
      if (!rangeContains(window, from)) throw new CairnError('INVALID_ARGUMENT', 'resume_token: points outside the hash window');
      let token: Buffer | undefined = req.resumeToken.length ? Buffer.from(req.resumeToken) : undefined;
      const rows: RowCells[] = [];
      // Walk the map's ranges from `from` in hash order: scan what we own, forward the rest
      // (only for callers without an epoch; with one, the window must be ours).
      while (rows.length < limit && from < window.end) {
        const owner = ownerOfHash(node.map, from);
        const route = router.routeHash(from, req.epoch);
        const segEnd = owner && owner.end < window.end ? owner.end : window.end;
        let next: Buffer | null;
        if (route.local) {
          router.checkUnfenced({ start: from, end: segEnd });
          const page = await node.trackLocal(store.scan({ rowPrefix: req.rowPrefix, filter, limit: limit - rows.length, resumeToken: token, hashStart: from, hashEnd: segEnd }));
          await node.replicator.committed([from]);
          rows.push(...page.rows.map((r) => ({ row: r.row, cells: fromCells(r.cells) })));
          next = page.nextToken;
        } else {
          const res = await router.forward(
            route.address,
            (c) => c.scanRows,
            { ...req, limit: limit - rows.length, resumeToken: token ?? Buffer.alloc(0), hashStart: from, hashEnd: segEnd === HASH_SPACE_END ? 0n : segEnd },
            ctx,
          );
          rows.push(...res.rows);
          next = res.nextToken.length ? Buffer.from(res.nextToken) : null;
        }
        // A prefix scan's token at segEnd carries a range that reaches past this one (it was
        // split since the token was made): an epoch-0 walk goes on with it; with an epoch the
        // caller routes it (its window ends here); at the window's end nothing is left.
        const carried = next !== null && req.rowPrefix.length > 0 && hashFromBytes(next) === segEnd;
        if (next && !(carried && req.epoch === 0n)) return { header: header(), rows, nextToken: next };
        from = segEnd;
        token = carried && from < window.end ? next! : undefined;
      }
      // The page filled exactly where a range ended and more of the window is
      // left (an epoch-0 walk): resume there, not "done". A full scan resumes
      // after the last row (hash order); a prefix scan at the next range's start.
      if (from < window.end && (rows.length > 0 || token)) {
        const nextToken = token ?? (req.rowPrefix.length > 0 ? encodeKeyOrderToken({ start: from, parts: [] }) : encodeScanToken(rowPrefix(rows[rows.length - 1]!.row)));
        return { header: header(), rows, nextToken };
      }
      return { header: header(), rows, nextToken: Buffer.alloc(0) };
    }),

    deleteRow: handler('DeleteRow', 'rw', async (req: DeleteRowRequest, ctx): Promise<DeleteRowResponse> => {
      check.checkRowKey(req.row, limits, 'row');
      check.checkRequestId(req.requestId);
      node.countOp();
      const r = router.routeRow(req.row, req.epoch, true);
      if (!r.local) return router.forward(r.address, (c) => c.deleteRow, req, ctx);
      const n = await served(store.deleteRow(req.row, { requestId: req.requestId, sync: req.sync }), [req.row]);
      return { header: header(), deletedCells: BigInt(n) };
    }),

    deleteCells: handler('DeleteCells', 'rw', async (req: DeleteCellsRequest, ctx): Promise<DeleteCellsResponse> => {
      const timeRange = req.timeRange ? { startUs: req.timeRange.startUs, endUs: req.timeRange.endUs } : undefined;
      check.checkDeleteCells(req.row, req.columns, timeRange, limits);
      check.checkRequestId(req.requestId);
      node.countOp();
      const r = router.routeRow(req.row, req.epoch, true);
      if (!r.local) return router.forward(r.address, (c) => c.deleteCells, req, ctx);
      const n = await served(store.deleteCells(req.row, req.columns, timeRange, { requestId: req.requestId, sync: req.sync }), [req.row]);
      return { header: header(), deletedCells: BigInt(n) };
    }),

    checkAndMutate: handler('CheckAndMutate', 'rw', async (req: CheckAndMutateRequest, ctx): Promise<CheckAndMutateResponse> => {
      const m = {
        row: req.row,
        checkColumn: req.checkColumn,
        expectedValue: req.expectedValue,
        expectAbsent: req.expectAbsent,
        cells: toCells(req.cells),
        replace: req.replace,
      };
      check.checkCheckAndMutate(m, limits);
      check.checkRequestId(req.requestId);
      node.countOp();
      const r = router.routeRow(req.row, req.epoch, true);
      if (!r.local) return router.forward(r.address, (c) => c.checkAndMutate, req, ctx);
      const out = await served(store.checkAndMutate(m, { requestId: req.requestId, sync: req.sync }), [req.row]);
      return { header: header(), succeeded: out.succeeded, timestampUs: out.timestampUs };
    }),

    lockRow: handler('LockRow', 'rw', async (req: LockRowRequest, ctx): Promise<LockRowResponse> => {
      check.checkRowKey(req.row, limits, 'row');
      check.checkLease(req.leaseMs);
      check.checkRequestId(req.requestId);
      node.countOp();
      const r = router.routeRow(req.row, req.epoch, true);
      if (!r.local) return router.forward(r.address, (c) => c.lockRow, req, ctx);
      const l = await served(store.lockRow(req.row, req.leaseMs, req.requestId), [req.row]);
      return { header: header(), leaseId: l.leaseId, expiresAtMs: BigInt(l.expiresAtMs) };
    }),

    extendLease: handler('ExtendLease', 'rw', async (req: ExtendLeaseRequest, ctx): Promise<ExtendLeaseResponse> => {
      check.checkRowKey(req.row, limits, 'row');
      check.checkLease(req.leaseMs);
      if (!req.leaseId) throw new CairnError('INVALID_ARGUMENT', 'lease_id: must not be empty');
      node.countOp();
      const r = router.routeRow(req.row, req.epoch, true);
      if (!r.local) return router.forward(r.address, (c) => c.extendLease, req, ctx);
      const l = await served(store.extendLease(req.row, req.leaseId, req.leaseMs), [req.row]);
      return { header: header(), expiresAtMs: BigInt(l.expiresAtMs) };
    }),

    unlockRow: handler('UnlockRow', 'rw', async (req: UnlockRowRequest, ctx): Promise<UnlockRowResponse> => {
      check.checkRowKey(req.row, limits, 'row');
      if (!req.leaseId) throw new CairnError('INVALID_ARGUMENT', 'lease_id: must not be empty');
      node.countOp();
      const r = router.routeRow(req.row, req.epoch, true);
      if (!r.local) return router.forward(r.address, (c) => c.unlockRow, req, ctx);
      await served(store.unlockRow(req.row, req.leaseId), [req.row]);
      return { header: header() };
    }),
  };

  const asUnary = <Req, Res>(h: Handler<Req, Res>) => unary(env, h.method, h.need, h.run);
  return {
    writeRows: asUnary(handlers.writeRows),
    readRow: asUnary(handlers.readRow),
    readRows: asUnary(handlers.readRows),
    scanRows: asUnary(handlers.scanRows),
    deleteRow: asUnary(handlers.deleteRow),
    deleteCells: asUnary(handlers.deleteCells),
    checkAndMutate: asUnary(handlers.checkAndMutate),
    lockRow: asUnary(handlers.lockRow),
    extendLease: asUnary(handlers.extendLease),
    unlockRow: asUnary(handlers.unlockRow),
    // The same handlers, many calls per message (batch-service.ts); scans stay unary (a page is already a batch).
    batch: batchService(env, node.opts.limits.maxMessageBytes, handlers, node.batchTraffic),
  };
}

/** The rows' hashes, computed as they are read. */
function* hashesOf(rows: Iterable<string>): Generator<bigint> {
  for (const row of rows) yield rowHash(row);
}
