/**
 * Bulk writes of whole ranges, kept exact without per-key reads: ingestion of
 * a snapshot (below) and deleteRange's cells (deleteCellsBulk, at the end).
 * Both watch their range (RangeWatch): any other mutation of it sends them
 * back to the exact path.
 *
 * Bulk ingestion of a range's snapshot (a move's COPY chunks) into a range
 * that holds nothing: the chunks are written as raw batches with their
 * derived records (row-key index `rk`, newest-version pointers `lv`) and the
 * bucket stats computed from the chunks themselves, with no old-value, count
 * or pointer reads and no per-cell plans.
 *
 * Why that is exact. settle (store-plan.ts) derives `rk`, `lv` and the
 * stats from the stored cells plus a plan. Here the stored part is known to
 * be nothing:
 * - when the session opens (ShardStore.beginIngest) it is registered first,
 *   then every mutation already in flight is awaited, then the range's exact
 *   bucket stats must say it holds no cell. No cell means, the derived records
 *   being exact, no `rk` entry of any of its rows and no `lv` pointer of any
 *   of its columns;
 * - from registration on, every cell mutation of the store goes through
 *   ShardStore.mutate, which reports its rows here (`touch`, at call time,
 *   before it queues for its row locks): one in the range taints the
 *   session, and a tainted session applies every later chunk by the exact
 *   path (ShardStore.applyRaw), which reads what it needs. A chunk holds its
 *   rows' locks from before it looks at the taint until its batch is written,
 *   so a mutation of one of its rows either tainted it first (and the chunk
 *   goes the exact way) or runs after the chunk's batch is on disk (and reads
 *   exact records, as always);
 * - the chunk's cells must come as exportRange sends them: puts only, in
 *   strictly increasing key order across the whole session (so each key once,
 *   each row's and each column's cells together, a column's newest version
 *   first). Anything else taints the session before the chunk is applied.
 *   A row (or column) cut between two chunks is carried: the later chunk puts
 *   the row's running count again and adds no row to the stats, and leaves
 *   the column's pointer (set by the earlier chunk to its newest version) alone.
 *
 * Every chunk is one batch through the group-commit writer, as applyRaw's
 * are (same write source: the shard's upkeep), with its stats records and the
 * clock's mark: a crash leaves whole chunks with exact records, and the
 * retry's deleteRange removes them exactly. Request-id and lease records are
 * per-row data without derived records: written as given, as applyRaw does.
 */
import type { HashRange } from '../common/ranges.js';
import { bucketSpan } from '../common/ranges.js';
import type { HybridClock } from './clock.js';
import { bucketOfKey, cellKeyTimestamp, cellTimestampTail, decodeCellTail, hasCellKeyShape, rowBounds, rowIndexKey, rowPrefixLength, rowPrefixOf, TIMESTAMP_BYTES } from './keys.js';
import { rangeOpts, startsWith, type BatchOp, type RawOp, type Subs } from './store-db.js';
import { encodeCount, type Delta } from './store-plan.js';

/** What a session needs of its store (ShardStore builds it). */
export interface IngestHost {
  readonly subs: Subs;
  clock(): HybridClock;
  /** Runs fn holding the given rows' locks (by row prefix), as ShardStore.mutate does: other watches of the rows are tainted, not `watch`. */
  lockRows<T>(prefixes: Buffer[], fn: () => Promise<T>, watch: RangeWatch): Promise<T>;
  /** Commits a batch computed here, with its stats deltas, through the group-commit writer (as the shard's upkeep). */
  commit(ops: BatchOp[], raw: RawOp[], deltas: Delta[], sync: boolean): Promise<void>;
  /** The exact path. */
  applyRaw(ops: RawOp[], o: { sync: boolean }): Promise<void>;
  /** Called once when the watch closes. */
  closed(watch: RangeWatch): void;
}

/** How one chunk was applied, for tests and logs. */
export type IngestPath = 'bulk' | 'exact';

/** The chunk's batch and stats, computed blind, and the carried state after it (not yet adopted). */
interface ChunkPlan {
  ops: BatchOp[];
  deltas: Delta[];
  rows: Buffer[];
  maxTs: bigint;
  lastCell: Buffer | null;
  row: Buffer | null;
  rowCount: number;
  col: Buffer | null;
}

/**
 * A range watched for mutations: registered with the store's RangeWatches,
 * it is tainted by any mutation of the range called from then on (other than
 * its owner's own, which pass it to the store's lock).
 */
export class RangeWatch {
  /** Why the bulk way is no longer taken, once it is not. */
  taintedBy: string | null = null;
  /** Chunks (or batches) applied each way. */
  readonly counts = { bulk: 0, exact: 0 };
  protected readonly firstBucket: number;
  protected readonly endBucket: number;
  private isClosed = false;

  constructor(
    readonly range: HashRange,
    protected readonly host: IngestHost,
  ) {
    [this.firstBucket, this.endBucket] = bucketSpan(range);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** From now on everything goes the exact way. */
  taint(why: string): void {
    this.taintedBy ??= why;
  }

  /** A mutation of these rows was called (ShardStore.mutate): one in the range taints the watch. */
  touch(prefixes: readonly Buffer[]): void {
    if (this.taintedBy !== null) return;
    for (const p of prefixes) {
      const b = bucketOfKey(p);
      if (b >= this.firstBucket && b < this.endBucket) {
        this.taint('another mutation of the range');
        return;
      }
    }
  }

  /**
   * Commits a batch computed blind, holding its rows' locks, unless the watch
   * is tainted by the time they are held (then false: the caller goes the
   * exact way). A mutation of these rows called before now tainted it; one
   * called after waits for this batch.
   */
  async commitIfClean(rows: Buffer[], ops: BatchOp[], raw: RawOp[], deltas: Delta[], sync: boolean): Promise<boolean> {
    return this.host.lockRows(
      rows,
      async () => {
        if (this.taintedBy !== null) return false;
        await this.host.commit(ops, raw, deltas, sync);
        return true;
      },
      this,
    );
  }

  /** Ends the watch: later mutations of the range no longer concern it. */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.host.closed(this);
  }
}

/** One ingestion of a snapshot into an emptied range (see the file comment). */
export class SnapshotIngest extends RangeWatch {
  /** The last cell key ingested; the row (prefix) and its cells so far; the column key of the last cell. */
  private lastCell: Buffer | null = null;
  private row: Buffer | null = null;
  private rowCount = 0;
  private col: Buffer | null = null;
  private tail: Promise<unknown> = Promise.resolve();

  /**
   * Applies one chunk of the snapshot as one atomic batch (the bulk way while
   * the session is clean, else applyRaw). Chunks are applied one at a time,
   * in the order given.
   */
  apply(ops: RawOp[], o: { sync: boolean }): Promise<IngestPath> {
    const run = this.tail.then(() => this.applyNow(ops, o));
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async applyNow(ops: RawOp[], o: { sync: boolean }): Promise<IngestPath> {
    if (this.closed) throw new Error('snapshot ingest: the session is closed');
    if (ops.length === 0) return 'bulk';
    const plan = this.taintedBy === null ? this.plan(ops) : null;
    if (plan) {
      // The clock passes the chunk's timestamps before the batch is queued (as applyRaw's planning does); observing more than is written is harmless.
      if (plan.maxTs > 0n) this.host.clock().observe(plan.maxTs);
      let applied: boolean;
      try {
        applied = await this.commitIfClean(plan.rows, plan.ops, ops, plan.deltas, o.sync);
      } catch (err) {
        // Nothing of the batch was written, but what follows cannot assume this chunk's rows: exact from here on.
        this.taint('a chunk failed to commit');
        throw err;
      }
      if (applied) {
        // Chunks are applied one at a time (apply's tail), so the carried state is adopted before the next is planned.
        this.lastCell = plan.lastCell;
        this.row = plan.row;
        this.rowCount = plan.rowCount;
        this.col = plan.col;
        this.counts.bulk++;
        return 'bulk';
      }
    }
    await this.host.applyRaw(ops, o);
    this.counts.exact++;
    return 'exact';
  }

  /** The chunk's batch computed from the chunk and the carried state, or null (and the session tainted) when it cannot be. */
  private plan(ops: RawOp[]): ChunkPlan | null {
    const subs = this.host.subs;
    const batch: BatchOp[] = [];
    const deltas: Delta[] = [];
    const rows: Buffer[] = [];
    let lastCell = this.lastCell;
    let row = this.row;
    let rowCount = this.rowCount;
    let col = this.col;
    let maxTs = 0n;
    let delta: Delta | null = null;
    /** The rk record of the row being counted, put when the row ends (or at the chunk's end, with the count so far). */
    const putCount = () => {
      if (row !== null && rowCount > 0) batch.push({ type: 'put', sublevel: subs.rowindex, key: rowIndexKey(row), value: encodeCount(rowCount) });
    };
    let rowInChunk = false;
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      const key = op.key;
      const value = op.value;
      if (value === undefined) {
        this.taint('a delete in the snapshot');
        return null;
      }
      if (op.sublevel !== 'cells') {
        batch.push({ type: 'put', sublevel: subs[op.sublevel], key, value });
        continue;
      }
      if (lastCell !== null && Buffer.compare(lastCell, key) >= 0) {
        this.taint('cells out of key order');
        return null;
      }
      lastCell = key;
      if (row === null || !startsWith(key, row)) {
        // A new row: the previous one's count is final.
        if (rowInChunk) putCount();
        const n = rowPrefixLength(key);
        row = key.subarray(0, n);
        rowCount = 0;
        col = null;
        const b = bucketOfKey(key);
        if (b < this.firstBucket || b >= this.endBucket) {
          this.taint('a cell outside the range');
          return null;
        }
        if (delta === null || delta.bucket !== b) deltas.push((delta = { bucket: b, rows: 0, bytes: 0 }));
        delta.rows++;
        rows.push(row);
        rowInChunk = true;
      } else if (!rowInChunk) {
        // The row the previous chunk ended in goes on here.
        const b = bucketOfKey(key);
        if (delta === null || delta.bucket !== b) deltas.push((delta = { bucket: b, rows: 0, bytes: 0 }));
        rows.push(row);
        rowInChunk = true;
      }
      if (!hasCellKeyShape(key, row.length)) decodeCellTail(key, row.length); // throws, naming what is wrong
      rowCount++;
      delta!.bytes += key.length + value.length;
      const ts = cellKeyTimestamp(key);
      if (ts > maxTs) maxTs = ts;
      // The column key prefix: the cell key without its timestamp tail. Its first cell is its newest (tails sort newest first).
      if (col === null || col.length !== key.length - TIMESTAMP_BYTES || !startsWith(key, col)) {
        col = key.subarray(0, key.length - TIMESTAMP_BYTES);
        batch.push({ type: 'put', sublevel: subs.latest, key: col, value: cellTimestampTail(key) });
      }
      batch.push({ type: 'put', sublevel: subs.cells, key, value });
    }
    if (rowInChunk) putCount();
    return { ops: batch, deltas, rows, maxTs, lastCell, row, rowCount, col };
  }
}

/** The open watches (ingestions, bulk deletions) of a store; ShardStore.mutate reports every mutation's rows here. */
export class RangeWatches {
  private readonly open = new Set<RangeWatch>();

  get size(): number {
    return this.open.size;
  }

  add(s: RangeWatch): void {
    this.open.add(s);
  }

  remove(s: RangeWatch): void {
    this.open.delete(s);
  }

  /** A mutation of these rows was called; `except` is the watch that makes it. */
  touch(prefixes: readonly Buffer[], except?: RangeWatch): void {
    for (const s of this.open) if (s !== except) s.touch(prefixes);
  }
}

/**
 * Deletes every cell of a watched range (deleteRange's cells), batchSize
 * cells per batch extended to the end of the last row, without reading old
 * values, counts or pointers again: each batch deletes whole rows, so each
 * row's index entry and each column's pointer go (they exist exactly while
 * the row or column has a cell), and the stats lose each row once and each
 * cell's key and value bytes, as read. Exact for the same reasons as an
 * ingestion: the watch was registered, then mutations in flight awaited,
 * before the first read; a batch holds its rows' locks from before it looks
 * at the taint until its batch is written; once the watch is tainted every
 * later batch goes the exact way (`exact`: applyRaw of the deletes, which
 * reads under the locks). Returns the number of cells deleted.
 */
export async function deleteCellsBulk(
  host: IngestHost,
  watch: RangeWatch,
  bounds: { gte: Buffer; lt?: Buffer },
  batchSize: number,
): Promise<number> {
  const subs = host.subs;
  let from: { gte?: Buffer; gt?: Buffer } = { gte: bounds.gte };
  let total = 0;
  for (;;) {
    let got = (await subs.cells.iterator(rangeOpts({ ...from, lt: bounds.lt }, { limit: batchSize })).all()) as [Buffer, Buffer][];
    if (got.length === 0) return total;
    // Whole rows: the rest of the last one.
    const lastKey = got[got.length - 1]![0];
    const rest = (await subs.cells.iterator(rangeOpts({ gt: lastKey, lt: rowBounds(rowPrefixOf(lastKey)).lt })).all()) as [Buffer, Buffer][];
    if (rest.length > 0) got = got.concat(rest);
    total += got.length;
    from = { gt: got[got.length - 1]![0] };
    if (watch.taintedBy === null) {
      const plan = planDeletes(subs, got);
      if (await watch.commitIfClean(plan.rows, plan.ops, plan.raw, plan.deltas, false)) {
        watch.counts.bulk++;
        continue;
      }
    }
    await host.applyRaw(
      got.map(([key]) => ({ sublevel: 'cells', key })),
      { sync: false },
    );
    watch.counts.exact++;
  }
}

/** The batch that deletes these cells (whole rows, in key order) and their rows' derived records, and its stats. */
function planDeletes(subs: Subs, cells: [Buffer, Buffer][]): { ops: BatchOp[]; raw: RawOp[]; deltas: Delta[]; rows: Buffer[] } {
  const ops: BatchOp[] = [];
  const raw: RawOp[] = new Array(cells.length);
  const deltas: Delta[] = [];
  const rows: Buffer[] = [];
  let row: Buffer | null = null;
  let col: Buffer | null = null;
  let delta: Delta | null = null;
  for (let i = 0; i < cells.length; i++) {
    const [key, value] = cells[i]!;
    if (row === null || !startsWith(key, row)) {
      row = key.subarray(0, rowPrefixLength(key));
      col = null;
      ops.push({ type: 'del', sublevel: subs.rowindex, key: rowIndexKey(row) });
      const b = bucketOfKey(key);
      if (delta === null || delta.bucket !== b) deltas.push((delta = { bucket: b, rows: 0, bytes: 0 }));
      delta.rows--;
      rows.push(row);
    }
    if (col === null || col.length !== key.length - TIMESTAMP_BYTES || !startsWith(key, col)) {
      col = key.subarray(0, key.length - TIMESTAMP_BYTES);
      ops.push({ type: 'del', sublevel: subs.latest, key: col });
    }
    delta!.bytes -= key.length + value.length;
    ops.push({ type: 'del', sublevel: subs.cells, key });
    raw[i] = { sublevel: 'cells', key };
  }
  return { ops, raw, deltas, rows };
}
