/**
 * Request validation for the shard's data calls. Pure: no I/O.
 *
 * Each check throws a CairnError whose message names the field (as a path into
 * the request, e.g. `rows[3].cells[0].value`) or the limit, and the value sent.
 * Per-call limits (cells per call, message size) are LIMIT_EXCEEDED
 * (RESOURCE_EXHAUSTED); per-item sizes and malformed fields are
 * INVALID_ARGUMENT. Handlers validate here, then call the store, which trusts
 * its input.
 *
 * The request shapes live here (the store re-exports them) so that this module
 * depends on nothing stateful.
 */
import { invalidArgument, limitExceeded } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';
import { MAX_ROW_KEY_BYTES, decodeKeyOrderToken, decodeScanToken, isKeyOrderToken } from './keys.js';

export interface CellIn {
  column: string;
  /** 0n = assign now from the shard's clock. */
  timestampUs: bigint;
  value: Uint8Array;
}
export interface RowWriteIn {
  row: string;
  cells: CellIn[];
  /** Delete every earlier version of each written column first. */
  replace: boolean;
}
export interface CellOut {
  column: string;
  timestampUs: bigint;
  value: Buffer;
}
export interface TimeRangeIn {
  /** Inclusive; 0n = no lower bound. */
  startUs: bigint;
  /** Exclusive; 0n = unbounded. */
  endUs: bigint;
}
export interface CellFilterIn {
  /** Exact columns; when empty, `columnPrefix` applies ('' = every column). */
  columns: string[];
  columnPrefix: string;
  timeRange?: TimeRangeIn;
  allVersions: boolean;
  /** Most cells per row; 0 = none. */
  limit: number;
}
export interface WriteOpts {
  /** '' = not idempotent. */
  requestId: string;
  sync: boolean;
}
export interface ScanIn {
  rowPrefix: string;
  filter: CellFilterIn;
  /** Most rows per page; 0 = the store's default page size. */
  limit: number;
  resumeToken?: Buffer;
  hashStart: bigint;
  /** Exclusive, up to 2^64. */
  hashEnd: bigint;
}
export interface CheckAndMutateIn {
  row: string;
  checkColumn: string;
  expectedValue: Uint8Array;
  expectAbsent: boolean;
  cells: CellIn[];
  replace: boolean;
}
export interface Limits {
  maxKeyBytes: number;
  maxColumnBytes: number;
  maxValueBytes: number;
  maxCellsPerCall: number;
  maxMessageBytes: number;
}

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxKeyBytes: 4096,
  maxColumnBytes: 1024,
  maxValueBytes: 1024 * 1024,
  maxCellsPerCall: 10_000,
  maxMessageBytes: 16 * 1024 * 1024,
});

export const MAX_REQUEST_ID_BYTES = 128;
export const MAX_LEASE_MS = 60 * 60 * 1000;
const U64_END = 1n << 64n;

/**
 * The largest explicit write timestamp (HBase's Long.MAX_VALUE). The shard's
 * clock moves past every timestamp it stores, so a write at 2^64 - 1 would
 * leave no timestamp for the next clock-assigned write (found by the fuzz).
 */
export const MAX_WRITE_TIMESTAMP_US = (1n << 63n) - 1n;
/** Per-cell framing counted towards maxMessageBytes (tags, lengths, timestamp). */
const CELL_OVERHEAD_BYTES = 16;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function checkString(s: unknown, field: string, what: string, limitName: keyof Limits | null, max: number, allowEmpty: boolean): number {
  if (typeof s !== 'string') throw invalidArgument(`${field}: must be a string`);
  if (!allowEmpty && s.length === 0) throw invalidArgument(`${field}: must not be empty`);
  // A lone surrogate cannot be encoded as UTF-8; it would be stored as U+FFFD and read back different.
  // (Bytes that are not UTF-8 never get this far over gRPC: the handler wrappers refuse them at decode,
  // naming the field the same way, in services/common/grpc.ts.)
  if (LONE_SURROGATE.test(s)) throw invalidArgument(`${field}: is not valid UTF-8 (contains a lone surrogate)`);
  const n = Buffer.byteLength(s, 'utf8');
  if (n > max) {
    throw invalidArgument(limitName ? `${field}: ${what} is ${n} bytes, over the ${limitName} limit of ${max}` : `${field}: ${what} is ${n} bytes, over the limit of ${max}`);
  }
  return n;
}

export function checkRowKey(row: string, limits: Limits = DEFAULT_LIMITS, field = 'row'): number {
  // The key format stores the length in 16 bits, whatever the configured limit says.
  if (limits.maxKeyBytes > MAX_ROW_KEY_BYTES) return checkString(row, field, 'row key', null, MAX_ROW_KEY_BYTES, false);
  return checkString(row, field, 'row key', 'maxKeyBytes', limits.maxKeyBytes, false);
}

export function checkColumn(column: string, limits: Limits = DEFAULT_LIMITS, field = 'column'): number {
  return checkString(column, field, 'column name', 'maxColumnBytes', limits.maxColumnBytes, false);
}

export function checkRequestId(requestId: string, field = 'requestId'): void {
  checkString(requestId, field, 'request id', null, MAX_REQUEST_ID_BYTES, true);
}

function checkValue(value: Uint8Array, limits: Limits, field: string): number {
  if (!(value instanceof Uint8Array)) throw invalidArgument(`${field}: must be bytes`);
  if (value.length > limits.maxValueBytes) {
    throw invalidArgument(`${field}: value is ${value.length} bytes, over the maxValueBytes limit of ${limits.maxValueBytes}`);
  }
  return value.length;
}

function checkU64(v: bigint, field: string): void {
  if (typeof v !== 'bigint' || v < 0n || v >= U64_END) throw invalidArgument(`${field}: ${String(v)} is not an unsigned 64-bit integer`);
}

function checkCount(n: number, what: string, field: string, limits: Limits): void {
  if (n > limits.maxCellsPerCall) {
    throw limitExceeded(`${field}: ${n} ${what} in one call, over the maxCellsPerCall limit of ${limits.maxCellsPerCall}`);
  }
}

function checkMessageSize(bytes: number, field: string, limits: Limits): void {
  if (bytes > limits.maxMessageBytes) {
    throw limitExceeded(`${field}: about ${bytes} bytes in one call, over the maxMessageBytes limit of ${limits.maxMessageBytes}`);
  }
}

/** Checks cells of one row and returns their approximate encoded size. */
function checkCells(cells: CellIn[], limits: Limits, field: string): number {
  if (!Array.isArray(cells) || cells.length === 0) throw invalidArgument(`${field}: must contain at least one cell`);
  let bytes = 0;
  for (const [j, c] of cells.entries()) {
    const f = `${field}[${j}]`;
    bytes += checkColumn(c.column, limits, `${f}.column`);
    checkU64(c.timestampUs, `${f}.timestampUs`);
    if (c.timestampUs > MAX_WRITE_TIMESTAMP_US) {
      throw invalidArgument(`${f}.timestampUs: ${c.timestampUs} is above ${MAX_WRITE_TIMESTAMP_US} (2^63 - 1), the largest a write may carry`);
    }
    bytes += checkValue(c.value, limits, `${f}.value`) + CELL_OVERHEAD_BYTES;
  }
  return bytes;
}

/** WriteRows: at least one row, each with at least one cell; every cell counts towards maxCellsPerCall. */
export function checkWriteRows(rows: RowWriteIn[], limits: Limits = DEFAULT_LIMITS): void {
  if (!Array.isArray(rows) || rows.length === 0) throw invalidArgument('rows: must contain at least one row');
  // Count before looking at sizes, so an oversized call is refused without walking every cell.
  let total = 0;
  for (const r of rows) total += Array.isArray(r.cells) ? r.cells.length : 0;
  checkCount(total, 'cells', 'cells', limits);
  let bytes = 0;
  for (const [i, r] of rows.entries()) {
    bytes += checkRowKey(r.row, limits, `rows[${i}].row`);
    bytes += checkCells(r.cells, limits, `rows[${i}].cells`);
  }
  checkMessageSize(bytes, 'rows', limits);
}

/** A time range: start <= end unless end is 0 (unbounded); start == end selects nothing and is refused. */
export function checkTimeRange(tr: TimeRangeIn, field = 'timeRange'): void {
  checkU64(tr.startUs, `${field}.startUs`);
  checkU64(tr.endUs, `${field}.endUs`);
  if (tr.endUs === 0n) return;
  if (tr.startUs > tr.endUs) throw invalidArgument(`${field}: start_us ${tr.startUs} is after end_us ${tr.endUs}`);
  if (tr.startUs === tr.endUs) throw invalidArgument(`${field}: start_us ${tr.startUs} equals end_us ${tr.endUs}, an empty range`);
}

export function checkCellFilter(filter: CellFilterIn, limits: Limits = DEFAULT_LIMITS, field = 'filter'): void {
  if (!Array.isArray(filter.columns)) throw invalidArgument(`${field}.columns: must be a list`);
  checkCount(filter.columns.length, 'columns', `${field}.columns`, limits);
  for (const [i, c] of filter.columns.entries()) checkColumn(c, limits, `${field}.columns[${i}]`);
  checkString(filter.columnPrefix, `${field}.columnPrefix`, 'column prefix', 'maxColumnBytes', limits.maxColumnBytes, true);
  if (filter.timeRange) checkTimeRange(filter.timeRange, `${field}.timeRange`);
  if (!Number.isInteger(filter.limit) || filter.limit < 0) throw invalidArgument(`${field}.limit: ${filter.limit} is not a non-negative integer`);
}

export function checkReadRows(rows: string[], filter: CellFilterIn, limits: Limits = DEFAULT_LIMITS): void {
  if (!Array.isArray(rows) || rows.length === 0) throw invalidArgument('rows: must contain at least one row');
  checkCount(rows.length, 'rows', 'rows', limits);
  for (const [i, r] of rows.entries()) checkRowKey(r, limits, `rows[${i}]`);
  checkCellFilter(filter, limits);
}

export function checkScan(req: ScanIn, limits: Limits = DEFAULT_LIMITS): void {
  checkString(req.rowPrefix, 'rowPrefix', 'row prefix', 'maxKeyBytes', limits.maxKeyBytes, true);
  checkCellFilter(req.filter, limits);
  if (!Number.isInteger(req.limit) || req.limit < 0) throw invalidArgument(`limit: ${req.limit} is not a non-negative integer`);
  if (req.limit > limits.maxCellsPerCall) {
    throw limitExceeded(`limit: ${req.limit} rows per page, over the maxCellsPerCall limit of ${limits.maxCellsPerCall}`);
  }
  if (typeof req.hashStart !== 'bigint' || req.hashStart < 0n || req.hashStart >= HASH_SPACE_END) {
    throw invalidArgument(`hashStart: ${String(req.hashStart)} is outside [0, 2^64)`);
  }
  if (typeof req.hashEnd !== 'bigint' || req.hashEnd <= req.hashStart || req.hashEnd > HASH_SPACE_END) {
    throw invalidArgument(`hashEnd: ${String(req.hashEnd)} must be above hashStart ${req.hashStart} and at most 2^64`);
  }
  if (req.resumeToken !== undefined && req.resumeToken.length > 0) {
    const keyOrder = isKeyOrderToken(req.resumeToken);
    if (keyOrder && req.rowPrefix.length === 0) {
      throw invalidArgument('resumeToken: this token continues a scan with a rowPrefix (row-key order); send the same rowPrefix, or no token to start a full scan');
    }
    try {
      if (keyOrder) decodeKeyOrderToken(req.resumeToken);
      else decodeScanToken(req.resumeToken);
    } catch {
      throw invalidArgument(`resumeToken: malformed resume token (${req.resumeToken.length} bytes); pass back a next_token unchanged`);
    }
  }
}

export function checkDeleteCells(row: string, columns: string[], timeRange: TimeRangeIn | undefined, limits: Limits = DEFAULT_LIMITS): void {
  checkRowKey(row, limits);
  if (!Array.isArray(columns) || columns.length === 0) throw invalidArgument('columns: must contain at least one column');
  checkCount(columns.length, 'columns', 'columns', limits);
  for (const [i, c] of columns.entries()) checkColumn(c, limits, `columns[${i}]`);
  if (timeRange) checkTimeRange(timeRange);
}

export function checkCheckAndMutate(req: CheckAndMutateIn, limits: Limits = DEFAULT_LIMITS): void {
  let bytes = checkRowKey(req.row, limits);
  bytes += checkColumn(req.checkColumn, limits, 'checkColumn');
  bytes += checkValue(req.expectedValue, limits, 'expectedValue');
  if (Array.isArray(req.cells)) checkCount(req.cells.length, 'cells', 'cells', limits);
  bytes += checkCells(req.cells, limits, 'cells');
  checkMessageSize(bytes, 'cells', limits);
}

/** A lease length for LockRow and ExtendLease: whole milliseconds, 1 ms to 1 hour. */
export function checkLease(leaseMs: number, field = 'leaseMs'): void {
  if (!Number.isInteger(leaseMs) || leaseMs < 1 || leaseMs > MAX_LEASE_MS) {
    throw invalidArgument(`${field}: ${leaseMs} is outside the allowed 1..${MAX_LEASE_MS} ms (1 hour)`);
  }
}

/** The lease id of ExtendLease and UnlockRow. */
export function checkLeaseId(leaseId: string, field = 'leaseId'): void {
  checkString(leaseId, field, 'lease id', null, MAX_REQUEST_ID_BYTES, false);
}
