/**
 * The shard's storage engine: rows of timestamped cells in LevelDB. ShardStore
 * is the facade the service, node, transfer and fence use; the work is done by
 * its parts:
 * - store-plan.ts: row plans, `settle` (exact stats and derived records), row locks;
 * - store-writer.ts: the group-commit writer and the bucket stats;
 * - store-reqids.ts: request-id records, digests and their sweep;
 * - store-leases.ts: row leases;
 * - store-reads.ts: reads and scans (Cursor, CellSelector);
 * - store-open.ts: open, rebuild of derived records, the reopen after a full disk;
 * - store-disk.ts: the disk-full state;
 * - store-db.ts: sublevels and iteration helpers; keys.ts: every key's layout.
 *
 * Layout (one LevelDB per data directory, one process per directory):
 * - `cells`, `leases`, `reqids`: the per-row sublevels, keyed as in keys.ts, so
 *   a hash range is one key range in each and everything of a row moves with it;
 * - `rk` (the row-key index: each row's cell count, keyed by row key first)
 *   and `lv` (each column's newest version): derived, shard-local records
 *   kept exact in the same batches as the cells (see settle); they make
 *   "does this row exist?" and "newest value of a column" point reads
 *   instead of iterators and a row-key prefix scan a seek, and are rebuilt at
 *   open when missing (`rc`, the counts by row prefix of older stores, is
 *   dropped then);
 * - `meta`: string keys for exact per-bucket stats, the clock's high-water
 *   mark, and a small key-value API for the shard's id and cluster map.
 *
 * The correctness spine:
 * - every mutation of a row runs under that row's async lock: read the current
 *   state, compute the ops and the exact stats delta, commit, release;
 * - every commit goes through one group-commit writer, which merges queued
 *   entries into a single LevelDB batch, one batch in flight at a time, so
 *   batches apply in order and the stats records and the clock's mark are
 *   written in the same batch as the data they describe;
 * - listeners (`onCommit`) see the raw per-row ops of each batch after it is
 *   applied and before any of its writers is acknowledged, which is what a
 *   range move's catch-up log needs.
 *
 * Input is trusted: handlers check requests with validate.ts first.
 */
import { Level } from 'level';
import { openDataDir } from '../common/datadir.js';
import { CairnError } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';
import type { HashRange } from '../common/ranges.js';
import { HybridClock } from './clock.js';
import {
  columnBounds,
  columnTimeBounds,
  hashRangeBounds,
  requestIdKeys,
  rowBounds,
  rowIndexKey,
  rowPrefix,
  rowPrefixOf,
  userMetaKey,
} from './keys.js';
import { entries, entryChunks, hex, lookup, lookupAcross, metaKeysIn, PER_ROW, rangeOpts, sublevels, type BatchOp, type RawOp, type Subs } from './store-db.js';
import { DiskFullGuard, diskSpaceOf, type DiskSpace, type DiskState } from './store-disk.js';
import { checkHeld, getLease, hasLease, planDropLease, planPutLease, takeLease } from './store-leases.js';
import { loadStore, recountStats, reopenStore, verifyDerived } from './store-open.js';
import { deleteCellsBulk, RangeWatch, RangeWatches, SnapshotIngest, type IngestHost } from './store-ingest.js';
import { decodeCount, mergeRowWrites, planRawOps, planWrite, RowLocks, RowPlan } from './store-plan.js';
import { freshWindowStart, PrefixMatchCounts, readCells, scanByRowKey, scanPage, scansByRowKey, walkThreshold, windowRows, type RowCellsOut } from './store-reads.js';
import {
  casDigest,
  DEFAULT_REQUEST_ID_TTL_MS,
  deleteCellsDigest,
  encodeWriteOutcome,
  lockDigest,
  parseOutcome,
  priorOutcome,
  recordOutcome,
  sweepRequestIds,
  writeDigest,
} from './store-reqids.js';
import { GroupWriter, NO_RAW, type RangeStats, type Sequencer, type WriteSource } from './store-writer.js';
import type { CellFilterIn, CellOut, CheckAndMutateIn, RowWriteIn, ScanIn, TimeRangeIn, WriteOpts } from './validate.js';

export type { CellFilterIn, CellIn, CellOut, CheckAndMutateIn, RowWriteIn, ScanIn, TimeRangeIn, WriteOpts } from './validate.js';
export type { PerRowSublevel, RawOp } from './store-db.js';
export { DEFAULT_DISK_POLL_MS, diskSpaceOf, resumeFreeBytes, type DiskSpace, type DiskState } from './store-disk.js';
export { DEFAULT_REQUEST_ID_TTL_MS } from './store-reqids.js';
export { DEFAULT_SCAN_PAGE, SCAN_EXAMINE_BUDGET, WALK_MIN_ROWS, type RowCellsOut } from './store-reads.js';
export type { RangeStats, Sequencer } from './store-writer.js';
export type { BatchOp } from './store-db.js';
export type { IngestPath, SnapshotIngest } from './store-ingest.js';

export interface StoreOptions {
  /** How long a request id is remembered (default 10 minutes). */
  requestIdTtlMs?: number;
  /** How often expired request ids are swept (default min(ttl, 1 minute), at least 1 s). */
  sweepIntervalMs?: number;
  /** While the disk is full: how often free space is checked (default 1 s). */
  diskPollMs?: number;
  /** While the disk is full: the free bytes at which writes resume (default resumeFreeBytes(total)). */
  resumeFreeBytes?: number;
}

const READ_CONCURRENCY = 32;
/** Entries per nextv of exportRange: a 1 MiB chunk of 100-byte rows is ~10k entries. */
const EXPORT_NEXTV = 1024;
const CLIENT: WriteSource = Object.freeze({ from: 'client' });
const UPKEEP: WriteSource = Object.freeze({ from: 'upkeep' });

export class ShardStore {
  private readonly locks = new RowLocks();
  /** Open range watches (snapshot ingestions, bulk deletions: store-ingest.ts): every mutation's rows are reported to them. */
  private readonly watches = new RangeWatches();
  private readonly inflight = new Set<Promise<unknown>>();
  /** How many rows recent prefix scans matched here: whether a window is walked or read by the index (see scan). */
  private readonly prefixCounts = new PrefixMatchCounts();
  private clock = new HybridClock();
  private readonly writer: GroupWriter;
  private readonly disk: DiskFullGuard;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweeping = false;
  private closed = false;
  private readonly ttlMs: number;

  private constructor(
    readonly dir: string,
    private readonly db: Level<Buffer, Buffer>,
    private readonly subs: Subs,
    opts: StoreOptions,
  ) {
    this.ttlMs = opts.requestIdTtlMs ?? DEFAULT_REQUEST_ID_TTL_MS;
    this.writer = new GroupWriter(db, subs, {
      clock: () => this.clock,
      diskFull: () => this.disk.full,
      enterDiskFull: (cause) => this.disk.enter(cause),
    });
    this.disk = new DiskFullGuard({
      dir,
      diskPollMs: opts.diskPollMs,
      resumeFreeBytes: opts.resumeFreeBytes,
      isClosed: () => this.closed,
      diskSpace: () => this.diskSpace(),
      reopenDb: () => reopenStore(db, subs, this.writer, () => this.clock),
    });
  }

  static async open(dir: string, opts: StoreOptions = {}): Promise<ShardStore> {
    // Refuses a file, unrelated files, a master's directory or a damaged LevelDB, naming what it found (DataDirError).
    const db = await openDataDir(dir, 'shard', () => new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' }));
    const store = new ShardStore(dir, db, sublevels(db), opts);
    try {
      const { persistedClock, clockFloor } = await loadStore(db, store.subs, store.writer.stats);
      store.writer.persistedClock = persistedClock;
      store.clock = new HybridClock(clockFloor);
    } catch (err) {
      await db.close();
      throw err;
    }
    const every = opts.sweepIntervalMs ?? Math.max(1000, Math.min(store.ttlMs, 60_000));
    store.sweepTimer = setInterval(() => void store.sweepRequestIds().catch(() => {}), every);
    store.sweepTimer.unref();
    return store;
  }

  /** Stops the sweeper, waits for started writes to commit, and closes LevelDB. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweepTimer);
    this.disk.stop();
    await this.disk.reopening;
    await this.drain();
    await this.writer.flushing;
    if (this.db.status !== 'closed') await this.db.close();
  }

  // ---------------------------------------------------------------- disk space

  /** Free and total bytes of the file system the data directory is on. */
  diskSpace(): Promise<DiskSpace> {
    return diskSpaceOf(this.dir);
  }

  /** Whether writes are refused for lack of space, and what they are told. */
  diskState(): DiskState {
    return this.disk.state();
  }

  /** Calls `listener` when the store fills up and when it takes writes again. Returns the unsubscribe function. */
  onDiskState(listener: (state: DiskState) => void): () => void {
    return this.disk.onState(listener);
  }

  // ---------------------------------------------------------------- writes

  /**
   * Writes cells, atomically per row (the rows of one call are in fact
   * committed in one batch). Returns per row the clock timestamp given to its
   * timestamp-0 cells (0n when it had none).
   *
   * The whole call holds every row's lock (joined in one synchronous step), so
   * the request-id records of all rows are read with one getMany, and every
   * new row's plan is settled and committed together.
   */
  writeRows(rows: RowWriteIn[], o: WriteOpts): Promise<bigint[]> {
    // Entries for the same row are merged so one request id record covers all of them.
    const { names, segsOf, slotOf } = mergeRowWrites(rows);
    let prefixes: Buffer[];
    // Per row: what this call asks of it, kept in its request-id record (only with a request id).
    let digests: Buffer[] | null = null;
    try {
      prefixes = names.map(rowPrefix);
      if (o.requestId) digests = segsOf.map(writeDigest);
    } catch (err) {
      return Promise.reject(err); // a promise either way, as when this was an async function
    }
    return this.mutate(prefixes, async () => {
      const stamps = new Array<bigint>(names.length);
      const idKeys = o.requestId ? requestIdKeys(prefixes, o.requestId) : null;
      // The request-id records and the rows' cell counts (which settle needs), read together under the row locks.
      const [priors, counts] = idKeys
        ? await lookupAcross(this.db, [[this.subs.reqids, idKeys], [this.subs.rowindex, prefixes.map(rowIndexKey)]])
        : [null, null];
      // Every recorded row is checked before any row is planned: an id reused for other cells refuses the whole call.
      const done = priors?.map((rec, k) => (rec === undefined ? undefined : BigInt(parseOutcome(rec, o.requestId, 'write', names[k]!, digests![k]).ts ?? '0')));
      const plans: RowPlan[] = [];
      const now = Date.now();
      for (let k = 0; k < names.length; k++) {
        const prior = done?.[k];
        if (prior !== undefined) {
          stamps[k] = prior;
          continue;
        }
        const plan = new RowPlan(prefixes[k]!);
        if (counts) plan.count = counts[k] === undefined ? 0 : decodeCount(counts[k]!);
        const ts = await planWrite(this.subs, this.clock, plan, segsOf[k]!);
        stamps[k] = ts;
        if (idKeys) plan.other.push({ sublevel: 'reqids', key: idKeys[k]!, value: encodeWriteOutcome(ts, now, digests![k]!) });
        plans.push(plan);
      }
      await this.writer.commitPlans(plans, o.sync, CLIENT);
      return slotOf ? slotOf.map((k) => stamps[k]!) : stamps;
    });
  }

  /** Deletes every cell of a row and its lease. Returns the number of cells deleted. */
  deleteRow(row: string, o: WriteOpts): Promise<number> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      const prior = await priorOutcome(this.subs, prefix, o.requestId, 'deleteRow', row);
      if (prior) return prior.n ?? 0;
      const plan = new RowPlan(prefix);
      let n = 0;
      for await (const [key, value] of entries(this.subs.cells, rowBounds(prefix))) {
        plan.del(key, value.length);
        n++;
      }
      plan.coversRow = true;
      if (hasLease(this.subs, prefix)) planDropLease(plan);
      recordOutcome(plan, o.requestId, { k: 'deleteRow', n });
      await this.writer.commitPlans([plan], o.sync, CLIENT);
      return n;
    });
  }

  /** Deletes the given columns of a row, every version or only those in the time range. Returns the number of cells deleted. */
  deleteCells(row: string, columns: string[], timeRange: TimeRangeIn | undefined, o: WriteOpts): Promise<number> {
    const prefix = rowPrefix(row);
    const digest = o.requestId ? deleteCellsDigest(columns, timeRange) : undefined;
    return this.mutate([prefix], async () => {
      const prior = await priorOutcome(this.subs, prefix, o.requestId, 'deleteCells', row, digest);
      if (prior) return prior.n ?? 0;
      const plan = new RowPlan(prefix);
      let n = 0;
      for (const column of new Set(columns)) {
        const b = timeRange ? columnTimeBounds(prefix, column, timeRange.startUs, timeRange.endUs) : columnBounds(prefix, column);
        if (!b) continue;
        for await (const [key, value] of entries(this.subs.cells, b)) {
          plan.del(key, value.length);
          n++;
        }
        if (!timeRange) (plan.cleared ??= []).push(b.gte as Buffer);
      }
      recordOutcome(plan, o.requestId, { k: 'deleteCells', n, d: digest });
      if (n > 0 || o.requestId) await this.writer.commitPlans([plan], o.sync, CLIENT);
      return n;
    });
  }

  /** Checks the newest version of one column and writes the cells only if the check holds; atomic with other writes to the row. */
  checkAndMutate(req: CheckAndMutateIn, o: WriteOpts): Promise<{ succeeded: boolean; timestampUs: bigint }> {
    const prefix = rowPrefix(req.row);
    const digest = o.requestId ? casDigest(req) : undefined;
    return this.mutate([prefix], async () => {
      const prior = await priorOutcome(this.subs, prefix, o.requestId, 'cas', req.row, digest);
      if (prior) return { succeeded: prior.ok === true, timestampUs: BigInt(prior.ts ?? '0') };
      let newest: Buffer | undefined;
      for await (const [, value] of entries(this.subs.cells, columnBounds(prefix, req.checkColumn), { limit: 1 })) newest = value;
      const succeeded = req.expectAbsent ? newest === undefined : newest !== undefined && newest.equals(req.expectedValue);
      const plan = new RowPlan(prefix);
      const timestampUs = succeeded ? await planWrite(this.subs, this.clock, plan, [req]) : 0n;
      recordOutcome(plan, o.requestId, { k: 'cas', ok: succeeded, ts: timestampUs.toString(), d: digest });
      if (succeeded || o.requestId) await this.writer.commitPlans([plan], o.sync, CLIENT);
      return { succeeded, timestampUs };
    });
  }

  // ---------------------------------------------------------------- leases

  /** Takes a lease on a row; CONFLICT while another unexpired lease is held. Leases are written with sync: a lost lease would break exclusion. */
  lockRow(row: string, leaseMs: number, requestId: string): Promise<{ leaseId: string; expiresAtMs: number }> {
    const prefix = rowPrefix(row);
    const digest = requestId ? lockDigest(leaseMs) : undefined;
    return this.mutate([prefix], async () => {
      const prior = await priorOutcome(this.subs, prefix, requestId, 'lock', row, digest);
      if (prior) return { leaseId: prior.id!, expiresAtMs: prior.exp! };
      const now = Date.now();
      const lease = takeLease(row, await getLease(this.subs, prefix), now, leaseMs);
      const plan = new RowPlan(prefix);
      planPutLease(plan, lease);
      recordOutcome(plan, requestId, { k: 'lock', id: lease.id, exp: lease.exp, d: digest });
      await this.writer.commitPlans([plan], true, CLIENT);
      return { leaseId: lease.id, expiresAtMs: lease.exp };
    });
  }

  /** Extends a held, unexpired lease to now + leaseMs. */
  extendLease(row: string, leaseId: string, leaseMs: number): Promise<{ expiresAtMs: number }> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      const now = Date.now();
      checkHeld(row, await getLease(this.subs, prefix), leaseId, now, true);
      const lease = { id: leaseId, exp: now + leaseMs };
      const plan = new RowPlan(prefix);
      planPutLease(plan, lease);
      await this.writer.commitPlans([plan], true, CLIENT);
      return { expiresAtMs: lease.exp };
    });
  }

  /** Releases a lease. An expired lease with the caller's id is released too (it is only cleanup). */
  unlockRow(row: string, leaseId: string): Promise<void> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      checkHeld(row, await getLease(this.subs, prefix), leaseId, Date.now(), false);
      const plan = new RowPlan(prefix);
      planDropLease(plan);
      await this.writer.commitPlans([plan], true, CLIENT);
    });
  }

  // ---------------------------------------------------------------- reads

  /** Cells of one row, by column then newest first. */
  async readRow(row: string, filter: CellFilterIn): Promise<CellOut[]> {
    if (this.disk.reopening) await this.disk.whenOpen();
    return readCells(this.subs, rowPrefix(row), filter);
  }

  /** The rows that have matching cells, in request order. */
  async readRows(rows: string[], filter: CellFilterIn): Promise<RowCellsOut[]> {
    if (this.disk.reopening) await this.disk.whenOpen();
    const out: (RowCellsOut | null)[] = new Array(rows.length).fill(null);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < rows.length) {
        const i = next++;
        const cells = await this.readRow(rows[i]!, filter);
        if (cells.length > 0) out[i] = { row: rows[i]!, cells };
      }
    };
    await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, rows.length) }, worker));
    return out.filter((r): r is RowCellsOut => r !== null);
  }

  /**
   * One page of rows inside [hashStart, hashEnd) whose key starts with
   * rowPrefix, resuming after the token's position. Without a prefix, rows
   * come in storage (hash) order, walking every row; with one, in row-key
   * order by the row-key index (a seek: it examines what matches), with a
   * key-order token (keys.ts), unless the prefix matches so many of a big
   * shard's rows that walking the window costs less (store-reads.ts
   * walkThreshold): then the window is walked in storage order, as a full
   * scan is, with its hash-order token. A null nextToken is the only end signal: a
   * page may be short (or empty) when the examine budget runs out first.
   */
  async scan(req: ScanIn): Promise<{ rows: RowCellsOut[]; nextToken: Buffer | null }> {
    if (this.disk.reopening) await this.disk.whenOpen();
    if (!scansByRowKey(req)) return scanPage(this.subs, req);
    // One snapshot for the index and the cells, so every row the index names is read as of the same moment.
    const snapshot = this.db.snapshot();
    try {
      const start = freshWindowStart(req);
      if (start !== null && start < req.hashEnd) {
        const threshold = walkThreshold(this.writer.stats.totalRows, windowRows(this.writer.stats.rows, start, req.hashEnd));
        if (threshold !== Infinity && (await this.prefixCounts.reaches(this.subs, req.rowPrefix, threshold, snapshot))) {
          return await scanPage(this.subs, { ...req, hashStart: start, resumeToken: undefined });
        }
      }
      return await scanByRowKey(this.subs, req, snapshot);
    } finally {
      await snapshot.close();
    }
  }

  // ---------------------------------------------------------------- stats

  /** Exact live rows and bytes (cell key + value) in a bucket-aligned range. */
  rangeStats(range: HashRange): RangeStats {
    return this.writer.stats.range(range);
  }

  totalStats(): RangeStats {
    return { rows: this.writer.stats.totalRows, bytes: this.writer.stats.totalBytes };
  }

  /** Non-empty buckets in a bucket-aligned range, for the planner's split points. */
  bucketStats(range: HashRange): { bucket: number; rows: number; bytes: number }[] {
    return this.writer.stats.buckets(range);
  }

  /** Counts rows and bytes in a range by reading every cell: slow, for checks and tests. */
  recountStats(range: HashRange = { start: 0n, end: HASH_SPACE_END }): Promise<RangeStats> {
    return recountStats(this.subs, range);
  }

  /**
   * Compares the derived records (cell counts, newest-version pointers, row-key index) with
   * the cells, reading everything: slow, for checks and tests. Returns the
   * differences (empty when exact). Run it with no writes in flight.
   */
  verifyDerived(): Promise<string[]> {
    return verifyDerived(this.subs);
  }

  /** The clock's high-water mark: above every stored timestamp. */
  clockHigh(): bigint {
    return this.clock.high();
  }

  // ---------------------------------------------------------------- meta

  /** A record stored with putMeta (shard id, cluster map), or undefined. */
  async getMeta<T = unknown>(key: string): Promise<T | undefined> {
    if (this.disk.reopening) await this.disk.whenOpen();
    const v = await this.subs.meta.get(userMetaKey(key));
    return v === undefined ? undefined : (JSON.parse(v.toString('utf8')) as T);
  }

  /** The names of the records stored with putMeta (or metaOp) that start with `prefix`. */
  async metaNamesStartingWith(prefix: string): Promise<string[]> {
    if (this.disk.reopening) await this.disk.whenOpen();
    const from = userMetaKey(prefix);
    const names: string[] = [];
    for await (const key of metaKeysIn(this.subs.meta, { gte: from, lt: from + '\uffff' })) names.push(key.slice(userMetaKey('').length));
    return names;
  }

  /** Stores a small JSON value (no bigints: encode them as strings); synced by default, since these records say who the shard is and what it owns. */
  putMeta(key: string, value: unknown, sync = true): Promise<void> {
    const v = Buffer.from(JSON.stringify(value), 'utf8');
    return this.track(this.writer.enqueue([{ type: 'put', sublevel: this.subs.meta, key: userMetaKey(key), value: v }], NO_RAW, sync));
  }

  /** Sets (or, with undefined, removes) what numbers the writes of replicated ranges in the log (replicator.ts). */
  setSequencer(sequencer: Sequencer | undefined): void {
    this.writer.sequencer = sequencer;
  }

  /** A meta record (as putMeta writes it) as an op for a batch the caller builds. */
  metaOp(key: string, value: unknown): BatchOp {
    return { type: 'put', sublevel: this.subs.meta, key: userMetaKey(key), value: Buffer.from(JSON.stringify(value), 'utf8') };
  }

  /**
   * Applies entries a primary sent (raw per-row ops) with the follower's
   * records of its log position, as one batch that the sequencer does not
   * number again: the copy and its position never disagree after a crash.
   */
  applyReplicated(ops: RawOp[], records: BatchOp[], o: { sync: boolean }): Promise<void> {
    const prefixes = ops.map((op) => rowPrefixOf(op.key));
    return this.mutate(prefixes, async () => {
      const plans = planRawOps(ops, prefixes, this.clock);
      await this.writer.commitPlans(plans, o.sync, { from: 'primary', records });
    });
  }

  delMeta(key: string, sync = true): Promise<void> {
    return this.track(this.writer.enqueue([{ type: 'del', sublevel: this.subs.meta, key: userMetaKey(key) }], NO_RAW, sync));
  }

  // ---------------------------------------------------------------- moving ranges

  /** Calls `listener` synchronously after each batch with its per-row ops. Returns the unsubscribe function. */
  onCommit(listener: (ops: RawOp[]) => void): () => void {
    this.writer.listeners.add(listener);
    return () => void this.writer.listeners.delete(listener);
  }

  /** Resolves once every write already started (waiting for or holding a row lock, or queued) has committed or failed. */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.inflight]);
  }

  /** A point-in-time copy of a range's per-row keys, in chunks of about chunkBytes. */
  async *exportRange(range: HashRange, chunkBytes: number): AsyncGenerator<RawOp[]> {
    if (this.disk.reopening) await this.disk.whenOpen();
    const snapshot = this.db.snapshot();
    try {
      const bounds = hashRangeBounds(range);
      let chunk: RawOp[] = [];
      let size = 0;
      for (const name of PER_ROW) {
        // Read a batch of entries at a time (not one await per entry).
        for await (const got of entryChunks(this.subs[name], bounds, { snapshot }, EXPORT_NEXTV)) {
          for (const [key, value] of got) {
            chunk.push({ sublevel: name, key, value });
            size += key.length + value.length;
            if (size >= chunkBytes) {
              yield chunk;
              chunk = [];
              size = 0;
            }
          }
        }
      }
      if (chunk.length > 0) yield chunk;
    } finally {
      await snapshot.close();
    }
  }

  /**
   * Applies raw per-row ops (an exported chunk or a logged batch) as one
   * atomic batch, keeping stats exact and observing every cell timestamp.
   * Replaying ops that are already applied changes nothing.
   */
  applyRaw(ops: RawOp[], o: { sync: boolean }): Promise<void> {
    if (ops.length === 0) return Promise.resolve();
    // Keys and values are used as given (no copies): callers hand over buffers they no longer change.
    const prefixes = ops.map((op) => rowPrefixOf(op.key));
    return this.mutate(prefixes, async () => {
      const plans = planRawOps(ops, prefixes, this.clock);
      await this.writer.commitPlans(plans, o.sync, UPKEEP);
    });
  }

  /**
   * Opens a bulk ingestion of a range's snapshot (a move's COPY chunks) into
   * the range, which must hold no cell (deleteRange first): chunks as
   * exportRange makes them are then written as raw batches with derived
   * records and stats computed from the chunks, without reads (store-ingest.ts
   * says why that is exact). Any other mutation of the range while the
   * session is open, or a chunk not shaped like a snapshot's, makes the
   * session apply every later chunk by the exact path (applyRaw). Close it
   * when the snapshot is in (or the copy failed).
   */
  async beginIngest(range: HashRange): Promise<SnapshotIngest> {
    const session = await this.watchRange(new SnapshotIngest(range, this.ingestHost()));
    const held = this.writer.stats.range(range);
    if (held.rows !== 0 || held.bytes !== 0) session.taint(`the range is not empty (${held.rows} rows, ${held.bytes} bytes)`);
    return session;
  }

  /** What store-ingest.ts's sessions need of the store. */
  private ingestHost(): IngestHost {
    return {
      subs: this.subs,
      clock: () => this.clock,
      lockRows: (prefixes, fn, watch) => this.mutate(prefixes, fn, watch),
      commit: (ops, raw, deltas, sync) => this.writer.enqueue(ops, raw, sync, deltas),
      applyRaw: (ops, o) => this.applyRaw(ops, o),
      closed: (watch) => this.watches.remove(watch),
    };
  }

  /** Registers a watch of a range, then waits for the mutations already in flight: from then on every mutation of the range taints it. */
  private async watchRange<W extends RangeWatch>(watch: W): Promise<W> {
    this.assertOpen();
    this.watches.add(watch);
    try {
      await this.drain();
    } catch (err) {
      watch.close();
      throw err;
    }
    return watch;
  }

  /**
   * Deletes every per-row key in a range, batchSize keys per batch, keeping stats exact. Returns the number of keys deleted.
   * Cells go in whole rows with their derived records and stats computed from what is read (store-ingest.ts
   * deleteCellsBulk), unless a mutation of the range comes meanwhile (then by applyRaw, which reads again under the locks).
   */
  async deleteRange(range: HashRange, batchSize = 1000): Promise<number> {
    const bounds = hashRangeBounds(range);
    let total = 0;
    const host = this.ingestHost();
    const watch = await this.watchRange(new RangeWatch(range, host));
    try {
      total += await deleteCellsBulk(host, watch, bounds, batchSize);
    } finally {
      watch.close();
    }
    for (const name of PER_ROW) {
      if (name === 'cells') continue;
      let from: { gte?: Buffer; gt?: Buffer } = { gte: bounds.gte };
      for (;;) {
        const keys = (await this.subs[name].keys(rangeOpts({ ...from, lt: bounds.lt }, { limit: batchSize })).all()) as Buffer[];
        if (keys.length === 0) break;
        // Old values are read again under the row locks, so stats stay exact even if a write slipped in.
        await this.applyRaw(
          keys.map((key) => ({ sublevel: name, key })),
          { sync: false },
        );
        total += keys.length;
        from = { gt: keys[keys.length - 1]! };
      }
    }
    return total;
  }

  // ---------------------------------------------------------------- request ids

  /** Deletes request-id records older than the TTL, in batches. Returns how many were deleted. */
  async sweepRequestIds(nowMs = Date.now()): Promise<number> {
    if (this.sweeping || this.closed) return 0;
    this.sweeping = true;
    try {
      // Only the deletes count as started writes for drain(), not the whole (possibly long) sweep.
      return await sweepRequestIds(this.subs, nowMs - this.ttlMs, (ops, raw) => this.track(this.writer.enqueue(ops, raw, false)));
    } finally {
      this.sweeping = false;
    }
  }

  // ---------------------------------------------------------------- commit machinery

  private assertOpen(): void {
    if (this.closed) throw new CairnError('NOT_READY', `store ${this.dir} is closed`);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    const done = (): void => void this.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  /**
   * Runs fn holding the locks of the given rows; the lock queue is joined synchronously, at call time.
   * Open range watches (snapshot ingestions, bulk deletions) learn of the rows first; a watch's own batches pass it as `own`.
   */
  private mutate<T>(prefixes: Buffer[], fn: () => Promise<T>, own?: RangeWatch): Promise<T> {
    try {
      this.assertOpen();
      if (this.disk.full) throw this.disk.full; // refused before any row lock or read: nothing can be written
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.watches.size > 0) this.watches.touch(prefixes, own);
    const locked = this.locks.acquire(prefixes.map(hex));
    return this.track(
      locked.then(async (release) => {
        try {
          return await fn();
        } finally {
          release();
        }
      }),
    );
  }
}
