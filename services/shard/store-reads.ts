/**
 * Reads: one row's cells under a filter (by the newest-version pointers when
 * it can: point reads instead of an iterator), and scan pages over a hash
 * window. `Cursor` buffers an iterator and skips a whole row by one seek;
 * `CellSelector` applies a filter to one row's cells as they stream by. Reads
 * take no locks: each LevelDB read sees a consistent state, and the derived
 * records are written in the same batch as the cells they describe.
 */
import {
  cellKeyOfTail,
  columnBounds,
  columnKeyPrefix,
  columnPrefixBounds,
  columnTimeBounds,
  decodeCellTail,
  decodeScanToken,
  encodeScanToken,
  hashRangeBounds,
  isTimestampTail,
  rowKeyBytes,
  rowPrefixOf,
  strinc,
  timestampOfTail,
  type KeyBounds,
} from './keys.js';
import { CHUNK, entries, lookup, rangeOpts, startsWith, type BinSub, type Subs } from './store-db.js';
import type { CellFilterIn, CellOut, ScanIn } from './validate.js';

/** Rows per scan page when the caller sends limit 0. */
export const DEFAULT_SCAN_PAGE = 1000;
/** A scan page stops after examining this many rows, so a selective prefix cannot hold one call for a whole shard. */
export const SCAN_EXAMINE_BUDGET = 10_000;

export interface RowCellsOut {
  row: string;
  cells: CellOut[];
}

/** Buffered reading over an iterator that can skip a whole row cheaply. */
class Cursor {
  private buf: [Buffer, Buffer][] = [];
  private i = 0;
  private ended = false;
  constructor(
    private readonly it: ReturnType<BinSub['iterator']>,
    /** Entries per nextv: each is a hop to LevelDB's thread pool, so a page of many rows reads in big chunks. */
    private readonly chunk = CHUNK,
  ) {}

  async peek(): Promise<[Buffer, Buffer] | undefined> {
    if (this.i < this.buf.length) return this.buf[this.i];
    if (this.ended) return undefined;
    this.buf = (await this.it.nextv(this.chunk)) as [Buffer, Buffer][];
    this.i = 0;
    if (this.buf.length === 0) this.ended = true;
    return this.buf[0];
  }

  advance(): void {
    this.i++;
  }

  /** Skips the rest of the keys under `prefix`: within the buffer if they end there, else by one seek. */
  skipPrefix(prefix: Buffer): void {
    while (this.i < this.buf.length && startsWith(this.buf[this.i]![0], prefix)) this.i++;
    if (this.i < this.buf.length || this.ended) return;
    const next = strinc(prefix);
    if (next === undefined) {
      this.ended = true;
      return;
    }
    this.it.seek(next);
    this.buf = [];
    this.i = 0;
  }

  close(): Promise<void> {
    return this.it.close();
  }
}

/** Chooses the cells of one row, fed in key order (column, then newest first). */
class CellSelector {
  private readonly columns: Set<string> | null;
  private lastColumn: string | undefined;
  private tookColumn = false;
  count = 0;
  constructor(
    private readonly f: CellFilterIn,
    private readonly prefixLength: number,
  ) {
    this.columns = f.columns.length > 0 ? new Set(f.columns) : null;
  }

  get full(): boolean {
    return this.f.limit > 0 && this.count >= this.f.limit;
  }

  offer(key: Buffer, value: Buffer): CellOut | null {
    const { column, timestampUs } = decodeCellTail(key, this.prefixLength);
    if (this.columns ? !this.columns.has(column) : !column.startsWith(this.f.columnPrefix)) return null;
    const tr = this.f.timeRange;
    if (tr && (timestampUs < tr.startUs || (tr.endUs !== 0n && timestampUs >= tr.endUs))) return null;
    if (column !== this.lastColumn) {
      this.lastColumn = column;
      this.tookColumn = false;
    }
    if (this.tookColumn && !this.f.allVersions) return null;
    this.tookColumn = true;
    this.count++;
    return { column, timestampUs, value };
  }
}

export async function readCells(subs: Subs, prefix: Buffer, f: CellFilterIn): Promise<CellOut[]> {
  const out: CellOut[] = [];
  const limit = f.limit > 0 ? f.limit : Infinity;
  if (f.columns.length > 0) {
    // Exact columns, in byte order so the result is ordered by column.
    const cols = f.columns.length === 1 ? f.columns : [...new Set(f.columns)].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    if (!f.timeRange && !f.allVersions) {
      const newest = await newestCells(subs, prefix, cols, limit);
      if (newest) return newest;
    }
    // A time window or every version: one bounded read each.
    for (const column of cols) {
      const b: KeyBounds | { gte: Buffer; lte: Buffer } | null = f.timeRange
        ? columnTimeBounds(prefix, column, f.timeRange.startUs, f.timeRange.endUs)
        : columnBounds(prefix, column);
      if (!b) continue;
      const want = f.allVersions ? limit - out.length : 1;
      for await (const [key, value] of entries(subs.cells, b, { limit: Number.isFinite(want) ? want : undefined })) {
        out.push({ column, timestampUs: decodeCellTail(key, prefix.length).timestampUs, value });
      }
      if (out.length >= limit) break;
    }
    return out;
  }
  const sel = new CellSelector(f, prefix.length);
  for await (const [key, value] of entries(subs.cells, columnPrefixBounds(prefix, f.columnPrefix))) {
    const c = sel.offer(key, value);
    if (c) out.push(c);
    if (sel.full) break;
  }
  return out;
}

/**
 * The newest version of each column by its pointer: two point reads per
 * column, no iterator. Null (read the cells instead) if a pointer names a
 * cell that is not there, which the pointers' invariant rules out.
 */
async function newestCells(subs: Subs, prefix: Buffer, cols: string[], limit: number): Promise<CellOut[] | null> {
  const colKeys = cols.map((c) => columnKeyPrefix(prefix, c));
  const ptrs = await lookup(subs.latest, colKeys);
  const found: number[] = [];
  const keys: Buffer[] = [];
  for (let i = 0; i < cols.length && found.length < limit; i++) {
    const ptr = ptrs[i];
    if (ptr === undefined || !isTimestampTail(ptr)) continue;
    found.push(i);
    keys.push(cellKeyOfTail(colKeys[i]!, ptr));
  }
  if (keys.length === 0) return [];
  const vals = await lookup(subs.cells, keys);
  const out: CellOut[] = new Array(keys.length);
  for (let j = 0; j < keys.length; j++) {
    const value = vals[j];
    if (value === undefined) return null;
    out[j] = { column: cols[found[j]!]!, timestampUs: timestampOfTail(ptrs[found[j]!]!), value };
  }
  return out;
}

/**
 * One page of rows whose key starts with rowPrefix, in storage order inside
 * [hashStart, hashEnd), resuming strictly after the token's row. A null
 * nextToken is the only end signal: a page may be short (or empty) when the
 * examine budget runs out first.
 */
export async function scanPage(subs: Subs, req: ScanIn): Promise<{ rows: RowCellsOut[]; nextToken: Buffer | null }> {
  const window = hashRangeBounds({ start: req.hashStart, end: req.hashEnd });
  let gte = window.gte;
  if (req.resumeToken && req.resumeToken.length > 0) {
    const after = strinc(decodeScanToken(req.resumeToken));
    if (after === undefined) return { rows: [], nextToken: null };
    if (Buffer.compare(after, gte) > 0) gte = after;
  }
  if (window.lt && Buffer.compare(gte, window.lt) >= 0) return { rows: [], nextToken: null };
  const limit = req.limit > 0 ? req.limit : DEFAULT_SCAN_PAGE;
  const want = Buffer.from(req.rowPrefix, 'utf8');
  const rows: RowCellsOut[] = [];
  const cursor = new Cursor(subs.cells.iterator(rangeOpts({ gte, lt: window.lt })), Math.min(1024, Math.max(CHUNK, limit + 1)));
  let last: Buffer | null = null;
  let examined = 0;
  try {
    for (;;) {
      let e = await cursor.peek();
      if (!e) return { rows, nextToken: null };
      if (last && (rows.length >= limit || examined >= SCAN_EXAMINE_BUDGET)) return { rows, nextToken: encodeScanToken(last) };
      const prefix = rowPrefixOf(e[0]); // a view: keys from nextv are never reused
      examined++;
      const rowBytes = rowKeyBytes(prefix);
      if (startsWith(rowBytes, want)) {
        const sel = new CellSelector(req.filter, prefix.length);
        const cells: CellOut[] = [];
        while (e && startsWith(e[0], prefix) && !sel.full) {
          const c = sel.offer(e[0], e[1]);
          if (c) cells.push(c);
          cursor.advance();
          e = await cursor.peek();
        }
        if (cells.length > 0) rows.push({ row: rowBytes.toString('utf8'), cells });
      }
      cursor.skipPrefix(prefix);
      last = prefix;
    }
  } finally {
    await cursor.close();
  }
}
