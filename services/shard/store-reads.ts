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
  decodeKeyOrderToken,
  decodeScanToken,
  encodeKeyOrderToken,
  encodeScanToken,
  hashOfIndexKey,
  hashRangeBounds,
  isKeyOrderToken,
  type KeyOrderPart,
  isTimestampTail,
  rowIndexKeyAfter,
  rowIndexPrefixBounds,
  rowKeyBytes,
  rowPrefixOf,
  rowPrefixOfIndexKey,
  strinc,
  timestampOfTail,
  type KeyBounds,
} from './keys.js';
import { bucketOf } from '../common/ranges.js';
import { decodeCount } from './store-plan.js';
import { CHUNK, entries, lookup, rangeOpts, startsWith, type BinSub, type Snapshot, type Subs } from './store-db.js';
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
    const cols = sortedColumns(f.columns);
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

/** Exact columns once each, in byte order, so a result is ordered by column. */
function sortedColumns(columns: string[]): string[] {
  return columns.length === 1 ? columns : [...new Set(columns)].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
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

/** Most cells read per hop when reading one row in a prefix scan (the row's count in the index says how many it has). */
const ROW_FIRST_CHUNK = 1024;

/**
 * One page of a row-key prefix scan by the row-key index: the rows of
 * [hashStart, hashEnd) whose key starts with rowPrefix, in row-key order,
 * resuming after a key-order token's position. It examines the shard's rows
 * that match the prefix (seeking the index), not every row: a selective
 * prefix costs what it matches. Rows of other hash ranges held here are read
 * from the index and skipped (they count against the examine budget).
 *
 * A key-order token (keys.ts) says, per part of the hash space, up to which
 * row key the rows are done. Normally it has one part, the window itself.
 * When the range was merged since, the window is scanned part by part, each
 * after its own key, and from the first key where no part reaches; when it
 * was split, the parts past the window are carried on in every token this
 * page returns, and when the window is done a token at hashEnd carries them
 * to the next range. A null nextToken is the only end signal: a page may be
 * short (or empty) when the examine budget runs out first.
 */
export async function scanByRowKey(subs: Subs, req: ScanIn, snapshot: Snapshot): Promise<{ rows: RowCellsOut[]; nextToken: Buffer | null }> {
  const limit = req.limit > 0 ? req.limit : DEFAULT_SCAN_PAGE;
  const bounds = rowIndexPrefixBounds(Buffer.from(req.rowPrefix, 'utf8'));
  const { hashStart, hashEnd } = req;
  const resumed = req.resumeToken && req.resumeToken.length > 0 ? decodeKeyOrderToken(req.resumeToken) : null;
  const from = resumed && resumed.start > hashStart ? resumed.start : hashStart;
  if (from >= hashEnd) return { rows: [], nextToken: null };
  // The window cut where the token's parts end, each piece scanned after its part's key.
  const parts = resumed?.parts ?? [];
  const stages: { start: bigint; end: bigint; afterKey: Buffer }[] = [];
  let at = from;
  for (const part of parts) {
    if (at >= hashEnd) break;
    if (part.end <= at) continue;
    const end = part.end < hashEnd ? part.end : hashEnd;
    stages.push({ start: at, end, afterKey: part.afterKey });
    at = end;
  }
  if (at < hashEnd) stages.push({ start: at, end: hashEnd, afterKey: EMPTY_KEY });
  const beyond = parts.filter((p) => p.end > hashEnd); // what the token says past the window: kept as it is
  const tokenAt = (i: number, last: Buffer): Buffer => {
    const rest: KeyOrderPart[] = [{ end: stages[i]!.end, afterKey: last }];
    for (let j = i + 1; j < stages.length; j++) rest.push({ end: stages[j]!.end, afterKey: stages[j]!.afterKey });
    rest.push(...beyond);
    return encodeKeyOrderToken({ start: stages[i]!.start, parts: trimmed(rest) }); // past the last part nothing is done anyway
  };
  const f = req.filter;
  const pointerColumns = f.columns.length > 0 && !f.timeRange && !f.allVersions ? sortedColumns(f.columns) : null;
  const cellLimit = f.limit > 0 ? f.limit : Infinity;
  const rows: RowCellsOut[] = [];
  let examined = 0;
  const cells = subs.cells.iterator({ snapshot });
  try {
    for (let i = 0; i < stages.length; i++) {
      const stage = stages[i]!;
      if (rows.length >= limit || examined >= SCAN_EXAMINE_BUDGET) return { rows, nextToken: tokenAt(i, stage.afterKey) };
      let gte = bounds.gte;
      if (stage.afterKey.length > 0) {
        const after = rowIndexKeyAfter(stage.afterKey);
        if (Buffer.compare(after, gte) > 0) gte = after;
      }
      if (bounds.lt && Buffer.compare(gte, bounds.lt) >= 0) continue;
      const index = subs.rowindex.iterator(rangeOpts({ gte, lt: bounds.lt }, { snapshot }));
      let last: Buffer | null = null;
      try {
        for (;;) {
          const found = (await index.nextv(Math.min(1024, Math.max(CHUNK, limit + 1)))) as [Buffer, Buffer][];
          if (found.length === 0) break;
          for (const [key, count] of found) {
            if (last && (rows.length >= limit || examined >= SCAN_EXAMINE_BUDGET)) return { rows, nextToken: tokenAt(i, last) };
            examined++;
            const prefix = rowPrefixOfIndexKey(key);
            last = rowKeyBytes(prefix);
            const hash = hashOfIndexKey(key);
            if (hash < stage.start || hash >= stage.end) continue; // a row of another range this shard holds
            // Newest versions of exact columns: by their pointers (synchronous point reads, no hop to
            // LevelDB's threads; ~3x cheaper per row than a seek). They read the current state, not the
            // page's snapshot: null when a write moved a pointer between the two reads, then seek.
            const got = (pointerColumns && (await newestCells(subs, prefix, pointerColumns, cellLimit))) || (await readRowAt(cells, prefix, req.filter, decodeCount(count)));
            if (got.length > 0) rows.push({ row: last.toString('utf8'), cells: got });
          }
        }
      } finally {
        await index.close();
      }
    }
  } finally {
    await cells.close();
  }
  const carry = beyond.filter((p) => p.afterKey.length > 0).length > 0 ? encodeKeyOrderToken({ start: hashEnd, parts: trimmed(beyond) }) : null;
  return { rows, nextToken: carry };
}

/** Parts without the trailing ones that say nothing (an empty key). */
function trimmed(parts: KeyOrderPart[]): KeyOrderPart[] {
  let n = parts.length;
  while (n > 0 && parts[n - 1]!.afterKey.length === 0) n--;
  return parts.slice(0, n);
}

const EMPTY_KEY = Buffer.alloc(0);

/**
 * The cells of one row chosen by a filter, read by seeking a shared iterator
 * to the row. `cells` is the row's cell count from the index: it reads that
 * many (the whole row in one hop up to 1,024 cells, and nothing past it).
 */
async function readRowAt(it: ReturnType<BinSub['iterator']>, prefix: Buffer, f: CellFilterIn, cells: number): Promise<CellOut[]> {
  it.seek(prefix);
  const sel = new CellSelector(f, prefix.length);
  const out: CellOut[] = [];
  let left = cells; // exact: the count and the cells are read in the same snapshot
  while (left > 0) {
    const entries = (await it.nextv(Math.min(ROW_FIRST_CHUNK, left))) as [Buffer, Buffer][];
    if (entries.length === 0) return out;
    for (const [key, value] of entries) {
      if (!startsWith(key, prefix)) return out;
      const c = sel.offer(key, value);
      if (c) out.push(c);
      if (sel.full) return out;
    }
    left -= entries.length;
  }
  return out;
}

/**
 * Reading a window's rows in storage order (the walk a full scan does) costs
 * about this many times reading one row-key index entry and skipping it
 * (store alone, 100k rows: a walk ~5.8 µs per row, an index entry ~0.3 µs;
 * bench/NOTES.md). A seek to a matching row costs about a walked row.
 */
export const WALK_VS_INDEX_ENTRY = 18;
/** Below this many rows a shard always scans a prefix by the index (the walk cannot save much there, and one order is simpler). */
export const WALK_MIN_ROWS = 20_000;

/**
 * The fewest matches of a prefix on a shard at which walking a window beats
 * scanning it by the index. By the index a window costs every match's index
 * entry on the shard (the index is in row-key order, so the matches of the
 * shard's other windows are read and skipped too) plus a seek per match in
 * the window; a walk costs every row of the window, matching or not. With
 * m matches of R rows, Rw of them in the window, and k = WALK_VS_INDEX_ENTRY:
 * m + k·m·Rw/R > k·Rw, i.e. m > k·Rw / (1 + k·Rw/R). A shard holding one
 * range walks only when nearly every row matches; one holding 32 when over
 * ~1 in 3 does. Infinity when the index always wins.
 */
export function walkThreshold(shardRows: number, windowRows: number): number {
  if (shardRows < WALK_MIN_ROWS || windowRows <= 0) return Infinity;
  const k = WALK_VS_INDEX_ENTRY;
  const m = (k * windowRows) / (1 + (k * windowRows) / shardRows);
  return m > shardRows ? Infinity : Math.ceil(m);
}

/** Rows of the buckets a hash window touches, from the per-bucket counts (an estimate when the window is not bucket-aligned). */
export function windowRows(rowsPerBucket: Float64Array, start: bigint, end: bigint): number {
  let n = 0;
  for (let b = bucketOf(start), last = bucketOf(end - 1n); b <= last; b++) n += rowsPerBucket[b]!;
  return n;
}

/**
 * How many rows of this shard a prefix matches, counted from the index up to
 * `atLeast` (so a broad prefix costs at most that many key reads). Counts are
 * kept a few seconds per prefix: a scan visits the shard's windows one after
 * another, and each would otherwise count again.
 */
export class PrefixMatchCounts {
  private readonly counts = new Map<string, { n: number; complete: boolean; atMs: number }>();
  constructor(
    private readonly ttlMs = 5000,
    private readonly max = 64,
  ) {}

  async reaches(subs: Subs, rowPrefix: string, atLeast: number, snapshot: Snapshot, nowMs = Date.now()): Promise<boolean> {
    const known = this.counts.get(rowPrefix);
    if (known && nowMs - known.atMs < this.ttlMs && (known.complete || known.n >= atLeast)) return known.n >= atLeast;
    const keys = subs.rowindex.keys(rangeOpts(rowIndexPrefixBounds(Buffer.from(rowPrefix, 'utf8')), { limit: atLeast, snapshot }));
    let n = 0;
    try {
      for (;;) {
        const chunk = await keys.nextv(1024);
        if (chunk.length === 0) break;
        n += chunk.length;
      }
    } finally {
      await keys.close();
    }
    this.counts.delete(rowPrefix);
    if (this.counts.size >= this.max) this.counts.delete(this.counts.keys().next().value!);
    this.counts.set(rowPrefix, { n, complete: n < atLeast, atMs: nowMs });
    return n >= atLeast;
  }
}

/**
 * Where a prefix scan page may start a fresh walk of its window (see
 * prefixMatchesMost): with no token, or a key-order token that has done
 * nothing in the window yet (no parts: it only says where the window's rest
 * starts). Null when the page continues a scan by the index, which must go
 * on by the index to stay exact.
 */
export function freshWindowStart(req: ScanIn): bigint | null {
  if (req.rowPrefix.length === 0) return null;
  if (!req.resumeToken || req.resumeToken.length === 0) return req.hashStart;
  if (!isKeyOrderToken(req.resumeToken)) return null;
  const at = decodeKeyOrderToken(req.resumeToken);
  if (at.parts.length > 0) return null;
  return at.start > req.hashStart ? at.start : req.hashStart;
}

/** Whether a scan runs by the row-key index: a prefix scan, unless it resumes a page of the hash-order walk (a token from before the index). */
export function scansByRowKey(req: ScanIn): boolean {
  if (req.rowPrefix.length === 0) return false;
  return !req.resumeToken || req.resumeToken.length === 0 || isKeyOrderToken(req.resumeToken);
}
