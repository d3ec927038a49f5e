/**
 * The data calls on rows, each sent to the row's owner through the retry
 * core (calls.ts): writes (one row, or many in sub-batches by owner),
 * reads, deletes, check-and-mutate and leases. Scans are scan.ts.
 *
 * Every write takes one request id before its first attempt; the retries
 * and sub-batches of that write reuse it, so the shard applies it once.
 */
import type { RowWrite } from '../../proto/gen/cairn/v1/common.js';
import { CairnError } from '../common/errors.js';
import type { Calls } from './calls.js';
import { rowWriteBytes, toBuffer, toCells, toCellWrites, toFilter, toTimeRange } from './convert.js';
import type { BatchCaps } from './router.js';
import type { CallOptions, Cell, CellCheck, CellsInput, Lease, ReadOptions, RowInput, TimeRange, WriteOptions } from './types.js';

// Limits the SDK keeps to when it splits batches (the servers' defaults).
const MAX_ROWS_PER_CALL = 1000;
const MAX_CELLS_PER_CALL = 10_000;

export async function put(c: Calls, row: string, cells: CellsInput, o: WriteOptions): Promise<bigint> {
  // writeRows of one row, without the batch machinery: one owner, one sub-call.
  const req = { epoch: 0n, requestId: c.ids.next(), sync: o.sync ?? false, rows: [{ row, cells: toCellWrites(cells), replace: o.replace ?? false }] };
  const res = await c.onOwnerCall(
    o,
    row,
    'writeRows',
    (epoch) => {
      req.epoch = epoch;
      return req;
    },
    rowWriteBytes(req.rows[0]!),
  );
  return res.timestampsUs[0] ?? 0n;
}

export async function writeRows(c: Calls, rows: RowInput[], o: WriteOptions): Promise<bigint[]> {
  const writes: RowWrite[] = rows.map((r) => ({ row: r.row, cells: toCellWrites(r.cells), replace: r.replace ?? o.replace ?? false }));
  const out: bigint[] = new Array<bigint>(rows.length).fill(0n);
  const requestId = c.ids.next();
  const caps: BatchCaps<RowWrite> = {
    maxItems: MAX_ROWS_PER_CALL,
    weights: [
      { max: MAX_CELLS_PER_CALL, of: (r) => r.cells.length },
      // Leave room for the envelope under the message limit.
      { max: Math.floor(c.session.maxMessageBytes * 0.9), of: rowWriteBytes },
    ],
  };
  await c.fanOut(o, writes, (r) => r.row, caps, async (shard, epoch, batch, callOpts) => {
    const res = await c.unary(shard, shard.writeRows, { epoch, requestId, sync: o.sync ?? false, rows: batch.map((b) => b.item) }, callOpts);
    batch.forEach((b, k) => (out[b.index] = res.timestampsUs[k] ?? 0n));
  });
  return out;
}

export async function get(c: Calls, row: string, o: ReadOptions): Promise<Cell[]> {
  const filter = toFilter(o);
  const res = await c.onOwnerCall(o, row, 'readRow', (epoch) => ({ epoch, row, filter }));
  return toCells(res.cells);
}

export async function getRows(c: Calls, rows: string[], o: ReadOptions): Promise<Map<string, Cell[]>> {
  const unique = [...new Set(rows)];
  const filter = toFilter(o);
  const found = new Map<string, Cell[]>();
  await c.fanOut(o, unique, (r) => r, { maxItems: MAX_ROWS_PER_CALL }, async (shard, epoch, batch, callOpts) => {
    const res = await c.unary(shard, shard.readRows, { epoch, rows: batch.map((b) => b.item), filter }, callOpts);
    for (const r of res.rows) found.set(r.row, toCells(r.cells));
  });
  // Request order, which is what a caller iterating the map expects.
  return new Map(unique.filter((r) => found.has(r)).map((r) => [r, found.get(r)!]));
}

export async function deleteRow(c: Calls, row: string, o: Omit<WriteOptions, 'replace'>): Promise<number> {
  const requestId = c.ids.next();
  const res = await c.onOwnerCall(o, row, 'deleteRow', (epoch) => ({ epoch, requestId, sync: o.sync ?? false, row }));
  return Number(res.deletedCells);
}

export async function deleteCells(c: Calls, row: string, columns: string[], o: Omit<WriteOptions, 'replace'> & { timeRange?: TimeRange }): Promise<number> {
  const requestId = c.ids.next();
  const timeRange = toTimeRange(o.timeRange);
  const res = await c.onOwnerCall(o, row, 'deleteCells', (epoch) => ({ epoch, requestId, sync: o.sync ?? false, row, columns, timeRange }));
  return Number(res.deletedCells);
}

export async function checkAndMutate(c: Calls, row: string, check: CellCheck, cells: CellsInput, o: WriteOptions): Promise<boolean> {
  if (!check.absent && check.equals === undefined) {
    throw new CairnError('INVALID_ARGUMENT', 'check: give `equals` (a value) or `absent: true`');
  }
  const req = {
    requestId: c.ids.next(),
    sync: o.sync ?? false,
    row,
    checkColumn: check.column,
    expectedValue: check.absent ? Buffer.alloc(0) : toBuffer(check.equals!, 'check.equals'),
    expectAbsent: check.absent ?? false,
    cells: toCellWrites(cells),
    replace: o.replace ?? false,
  };
  const bytes = req.expectedValue.length + rowWriteBytes({ row, cells: req.cells, replace: req.replace });
  const res = await c.onOwnerCall(o, row, 'checkAndMutate', (epoch) => ({ ...req, epoch }), bytes);
  return res.succeeded;
}

export async function lockRow(c: Calls, row: string, leaseMs: number, o: CallOptions): Promise<Lease> {
  const requestId = c.ids.next();
  const res = await c.onOwnerCall(o, row, 'lockRow', (epoch) => ({ epoch, row, leaseMs, requestId }));
  return { leaseId: res.leaseId, expiresAtMs: Number(res.expiresAtMs) };
}

export async function extendLease(c: Calls, row: string, leaseId: string, leaseMs: number, o: CallOptions): Promise<{ expiresAtMs: number }> {
  const res = await c.onOwnerCall(o, row, 'extendLease', (epoch) => ({ epoch, row, leaseId, leaseMs }));
  return { expiresAtMs: Number(res.expiresAtMs) };
}

export async function unlockRow(c: Calls, row: string, leaseId: string, o: CallOptions): Promise<void> {
  await c.onOwnerCall(o, row, 'unlockRow', (epoch) => ({ epoch, row, leaseId }));
}
