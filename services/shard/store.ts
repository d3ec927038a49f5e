/**
 * The shard's storage engine: rows of timestamped cells in LevelDB.
 *
 * Layout (one LevelDB per data directory, one process per directory):
 * - `cells`, `leases`, `reqids`: the per-row sublevels, keyed as in keys.ts, so
 *   a hash range is one key range in each and everything of a row moves with it;
 * - `rc` (row cell counts) and `lv` (each column's newest version): derived,
 *   shard-local records kept exact in the same batches as the cells (see
 *   settle); they make "does this row exist?" and "newest value of a column"
 *   point reads instead of iterators, and are rebuilt from the cells at open
 *   when missing;
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
import * as crypto from 'node:crypto';
import { statfs } from 'node:fs/promises';
import { Level, type BatchOperation } from 'level';
import { openDataDir } from '../common/datadir.js';
import { CairnError, invalidArgument, isNoSpaceError } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';
import { BUCKET_BITS, BUCKET_COUNT, bucketOf, bucketSpan, isBucketAligned, type HashRange } from '../common/ranges.js';
import { HybridClock } from './clock.js';
import {
  cellKey,
  columnBounds,
  columnKeyPrefix,
  columnPrefixBounds,
  columnTimeBounds,
  decodeCellTail,
  decodeScanToken,
  encodeScanToken,
  hashRangeBounds,
  leaseKey,
  prefixBounds,
  requestIdKey,
  rowBounds,
  rowPrefix,
  rowPrefixOf,
  strinc,
  type KeyBounds,
} from './keys.js';
import type { CellFilterIn, CellIn, CellOut, CheckAndMutateIn, RowWriteIn, ScanIn, TimeRangeIn, WriteOpts } from './validate.js';

export type { CellFilterIn, CellIn, CellOut, CheckAndMutateIn, RowWriteIn, ScanIn, TimeRangeIn, WriteOpts } from './validate.js';

export type PerRowSublevel = 'cells' | 'leases' | 'reqids';
const PER_ROW: readonly PerRowSublevel[] = ['cells', 'leases', 'reqids'];

/** One per-row key as stored; `value` undefined means delete. */
export interface RawOp {
  sublevel: PerRowSublevel;
  key: Buffer;
  value?: Buffer;
}

export interface RowCellsOut {
  row: string;
  cells: CellOut[];
}

export interface RangeStats {
  rows: number;
  bytes: number;
}

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

/** Free and total bytes of the file system holding the data directory (for the unprivileged user: statfs bavail). */
export interface DiskSpace {
  freeBytes: number;
  totalBytes: number;
}

/**
 * The store's write state as to disk space. `full` from the first write that
 * failed for lack of space until LevelDB has been reopened with room again;
 * `message` is what refused writes are told.
 */
export interface DiskState {
  full: boolean;
  message: string;
}

export const DEFAULT_DISK_POLL_MS = 1000;

/**
 * Free bytes needed before a full store reopens and takes writes again: 5% of
 * the file system, at least 1 MiB and at most 64 MiB. Enough that LevelDB can
 * write its recovered memtable and a few batches, so it does not fill again
 * at once; a small bound, so freeing a little space is enough on a big disk.
 */
export function resumeFreeBytes(totalBytes: number): number {
  return Math.min(64 * 1024 * 1024, Math.max(1024 * 1024, Math.floor(totalBytes * 0.05)));
}

/** statfs of a directory as free and total bytes. */
export async function diskSpaceOf(dir: string): Promise<DiskSpace> {
  const s = await statfs(dir);
  return { freeBytes: s.bavail * s.bsize, totalBytes: s.blocks * s.bsize };
}

export const DEFAULT_REQUEST_ID_TTL_MS = 10 * 60 * 1000;
/** Rows per scan page when the caller sends limit 0. */
export const DEFAULT_SCAN_PAGE = 1000;
/** A scan page stops after examining this many rows, so a selective prefix cannot hold one call for a whole shard. */
export const SCAN_EXAMINE_BUDGET = 10_000;

const CHUNK = 256; // entries per nextv
const U64_MAX = (1n << 64n) - 1n;
const INDEX_AFTER = 8; // cells in a plan before it indexes them in a Map
const MAX_GROUP_OPS = 20_000; // ops merged into one group commit (at least one entry always goes)
const READ_CONCURRENCY = 32;

const META_STATS_MARKER = 'stats/v1'; // present once the bucket records are complete and exact
const META_ROWCELLS_MARKER = 'rc/v1'; // present once every row's cell-count record is complete and exact
const META_LATEST_MARKER = 'lv/v1'; // present once every column's newest-version pointer is complete and exact
const META_STATS_PREFIX = 'stats/b/';
const META_CLOCK = 'clock';
const META_USER_PREFIX = 'x/'; // getMeta/putMeta keys live here, apart from the store's own

const bucketMetaKey = (b: number): string => META_STATS_PREFIX + b.toString(16).padStart(4, '0');

/** The stats bucket of a row prefix (or any per-row key): the top BUCKET_BITS bits of its hash. */
const bucketOfPrefix = (key: Buffer): number => key.readUInt32BE(0) >>> (32 - BUCKET_BITS);

/** A cell count in as few big-endian bytes as it needs (1 for most rows). */
const encodeCount = (n: number): Buffer => {
  const len = n < 0x100 ? 1 : n < 0x10000 ? 2 : n < 0x1000000 ? 3 : n < 0x100000000 ? 4 : 6;
  const b = Buffer.allocUnsafe(len);
  b.writeUIntBE(n, 0, len);
  return b;
};
const decodeCount = (b: Buffer): number => b.readUIntBE(0, b.length);

function sublevels(db: Level<Buffer, Buffer>) {
  const bin = { keyEncoding: 'buffer', valueEncoding: 'buffer' } as const;
  return {
    cells: db.sublevel<Buffer, Buffer>('cells', bin),
    leases: db.sublevel<Buffer, Buffer>('leases', bin),
    reqids: db.sublevel<Buffer, Buffer>('reqids', bin),
    /** Per row prefix, its number of stored cells (shard-local, derived: see settle). */
    rowcells: db.sublevel<Buffer, Buffer>('rc', bin), // short names: they are in every key, and every write writes both
    /** Per column key prefix, the timestamp tail of its newest stored cell (shard-local, derived: see settle). */
    latest: db.sublevel<Buffer, Buffer>('lv', bin),
    meta: db.sublevel<string, Buffer>('meta', { keyEncoding: 'utf8', valueEncoding: 'buffer' }),
  };
}
type Subs = ReturnType<typeof sublevels>;
type BinSub = Subs['cells'];
type Snapshot = ReturnType<Level<Buffer, Buffer>['snapshot']>;
type BatchOp = BatchOperation<Level<Buffer, Buffer>, Buffer | string, Buffer>;

/** Iterator options without undefined bounds (abstract-level would try to encode them). */
function rangeOpts(b: { gte?: Buffer; gt?: Buffer; lt?: Buffer; lte?: Buffer }, extra: { limit?: number; snapshot?: Snapshot } = {}) {
  const o: Record<string, unknown> = {};
  for (const k of ['gte', 'gt', 'lt', 'lte'] as const) if (b[k] !== undefined) o[k] = b[k];
  if (extra.limit !== undefined) o.limit = extra.limit;
  if (extra.snapshot !== undefined) o.snapshot = extra.snapshot;
  return o as { gte?: Buffer; gt?: Buffer; lt?: Buffer; lte?: Buffer; limit?: number; snapshot?: Snapshot };
}

const hex = (b: Buffer): string => b.toString('latin1'); // a reversible Map key for a Buffer
const startsWith = (b: Buffer, p: Buffer): boolean => b.length >= p.length && b.compare(p, 0, p.length, 0, p.length) === 0;
const show = (row: string): string => JSON.stringify(row.length > 80 ? `${row.slice(0, 80)}…` : row);

/**
 * What one row mutation commits. Cell ops are kept as the final state per key
 * (later ops on the same key win), with the old value length when the planner
 * already knows it (null = known absent, undefined = not known yet); settle()
 * reads the rest. Kept in parallel arrays: most plans touch one or two cells,
 * so a linear search beats hashing every key into a Map (which is built only
 * for plans with many cells).
 */
class RowPlan {
  readonly keys: Buffer[] = [];
  readonly values: (Buffer | null)[] = [];
  /** Old value length per key: a number when stored, null when known absent, undefined when unknown. */
  readonly old: (number | null | undefined)[] = [];
  readonly other: RawOp[] = [];
  /** Per key: put with a timestamp the clock just drew (above every stored timestamp). */
  readonly fresh: boolean[] = [];
  /** Set when the plan deletes every stored cell of the row (deleteRow). */
  coversRow = false;
  /** Column key prefixes (see keys.ts columnKeyPrefix) whose every stored cell the plan deletes. */
  cleared: Buffer[] | null = null;
  private index: Map<string, number> | null = null;
  constructor(readonly prefix: Buffer) {}

  private slot(key: Buffer): number {
    const n = this.keys.length;
    if (this.index) {
      const k = hex(key);
      const i = this.index.get(k);
      if (i !== undefined) return i;
      this.index.set(k, n);
    } else {
      for (let i = 0; i < n; i++) if (this.keys[i]!.equals(key)) return i;
      if (n >= INDEX_AFTER) {
        this.index = new Map();
        for (let i = 0; i < n; i++) this.index.set(hex(this.keys[i]!), i);
        this.index.set(hex(key), n);
      }
    }
    this.keys.push(key);
    this.values.push(null);
    this.old.push(undefined);
    this.fresh.push(false);
    return n;
  }

  /** `fresh`: the key's timestamp was just drawn from the clock, so it is above every stored one (and the key cannot exist). */
  put(key: Buffer, value: Buffer, fresh = false): void {
    const i = this.slot(key);
    this.values[i] = value;
    this.fresh[i] = fresh;
    if (fresh && this.old[i] === undefined) this.old[i] = null;
  }

  /** Deletes a cell; `oldLength` is its value's length when the caller read it. */
  del(key: Buffer, oldLength?: number): void {
    const i = this.slot(key);
    this.values[i] = null;
    this.fresh[i] = false;
    if (oldLength !== undefined && this.old[i] === undefined) this.old[i] = oldLength;
  }

  /** Deletes the cells this plan itself put under a key prefix (replace within one call). */
  dropPlannedPuts(prefix: Buffer): void {
    for (let i = 0; i < this.keys.length; i++) if (this.values[i] && startsWith(this.keys[i]!, prefix)) this.values[i] = null;
  }
}

/** The stats change of one row, in its bucket. */
interface Delta {
  bucket: number;
  rows: number;
  bytes: number;
}

/** One entry of the group-commit queue: settled row plans, or plain ops (meta records, request-id sweeps). */
interface Pending {
  plans: RowPlan[];
  /** Ops on the derived records (cell counts, newest-version pointers) of the plans' rows. */
  derived: BatchOp[];
  deltas: Delta[];
  ops: BatchOp[];
  /** What listeners see of `ops`. */
  raw: RawOp[];
  sync: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** A touched column of a plan, for its newest-version pointer. */
interface ColumnWork {
  /** The column key prefix (row prefix | escaped column | 0x00 0x01): the pointer's key. */
  colKey: Buffer;
  /** The newest timestamp tail among the cells the plan leaves present in the column, or null. */
  newest: Buffer | null;
  /** Some present cell has a fresh clock timestamp. */
  fresh: boolean;
  /** The plan adds a cell or deletes a stored one. */
  changed: boolean;
  /** Tails of stored cells the plan deletes. */
  dels: Buffer[] | null;
}

/** Of two timestamp tails (inverted, so newer sorts first), the newer; null is "none". */
const newer = (a: Buffer | null, b: Buffer | null): Buffer | null => (a === null ? b : b === null ? a : Buffer.compare(a, b) <= 0 ? a : b);

const SYNC = Object.freeze({ sync: true });
const NO_OPS: BatchOp[] = [];
const NO_RAW: RawOp[] = [];
const NO_PLANS: RowPlan[] = [];

const NO_DELTAS: Delta[] = [];

/**
 * Point reads of a few keys run synchronously (LevelDB's Get on this thread:
 * a few µs, with bloom filters for absent keys); an async getMany costs ~15 µs
 * of CPU per call in thread-pool hand-offs and its implicit snapshot, so it is
 * kept for many keys at once, where it keeps the event loop free.
 */
const SYNC_LOOKUP_MAX = 8;
function lookup(sub: BinSub, keys: Buffer[]): (Buffer | undefined)[] | Promise<(Buffer | undefined)[]> {
  if (keys.length > SYNC_LOOKUP_MAX) return sub.getMany(keys);
  const out = new Array<Buffer | undefined>(keys.length);
  for (let i = 0; i < keys.length; i++) out[i] = sub.getSync(keys[i]!);
  return out;
}

/** About how many batch ops an entry adds (for the group size cap). */
function opCount(p: Pending): number {
  let n = p.ops.length + p.derived.length;
  for (const plan of p.plans) n += plan.keys.length + plan.other.length + 1;
  return n;
}

/** The per-row ops of a group, as listeners see them: each plan's cells, then its other ops (count records are shard-local and left out). */
function rawOf(group: Pending[]): RawOp[] {
  const raw: RawOp[] = [];
  for (const p of group) {
    for (const plan of p.plans) {
      for (let i = 0; i < plan.keys.length; i++) {
        const value = plan.values[i];
        raw.push(value ? { sublevel: 'cells', key: plan.keys[i]!, value } : { sublevel: 'cells', key: plan.keys[i]! });
      }
      for (const op of plan.other) raw.push(op);
    }
    for (const op of p.raw) raw.push(op);
  }
  return raw;
}

/** Per-row async locks. A multi-row caller joins every row's queue in one synchronous step, so no two callers can wait on each other in a cycle. */
class RowLocks {
  private readonly tails = new Map<string, Promise<void>>();

  acquire(keys: Iterable<string>): Promise<() => void> {
    const waits: Promise<void>[] = [];
    const releases: (() => void)[] = [];
    for (const k of new Set(keys)) {
      const prev = this.tails.get(k);
      let release!: () => void;
      const mine = new Promise<void>((r) => (release = r));
      this.tails.set(k, mine);
      if (prev) waits.push(prev);
      releases.push(() => {
        release();
        if (this.tails.get(k) === mine) this.tails.delete(k);
      });
    }
    const releaseAll = (): void => releases.forEach((r) => r());
    return waits.length === 0 ? Promise.resolve(releaseAll) : Promise.all(waits).then(() => releaseAll);
  }
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

interface Outcome {
  /** Which operation recorded it, so a request id reused for another operation is refused. */
  k: 'write' | 'deleteRow' | 'deleteCells' | 'cas' | 'lock';
  /** When it was recorded (ms), for the TTL sweep. */
  t: number;
  ts?: string;
  n?: number;
  ok?: boolean;
  id?: string;
  exp?: number;
  /**
   * The request's digest (requestDigest); absent in records written before
   * digests, which are honoured without a check.
   */
  d?: Buffer;
}

interface Lease {
  id: string;
  exp: number;
}

export class ShardStore {
  private readonly locks = new RowLocks();
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly listeners = new Set<(ops: RawOp[]) => void>();
  private readonly statRows = new Float64Array(BUCKET_COUNT);
  private readonly statBytes = new Float64Array(BUCKET_COUNT);
  private totalRows = 0;
  private totalBytes = 0;
  private queue: Pending[] = [];
  private flushing: Promise<void> | null = null;
  private persistedClock = 0n;
  private clock = new HybridClock();
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweeping = false;
  private closed = false;
  private readonly ttlMs: number;
  /** Set while the disk is full (see enterDiskFull): every write is refused with it, without touching LevelDB. */
  private diskFull: CairnError | null = null;
  private diskTimer: NodeJS.Timeout | undefined;
  /** Set while LevelDB is closed and reopened after a full disk: reads wait for it. */
  private reopening: Promise<void> | null = null;
  private readonly diskListeners = new Set<(state: DiskState) => void>();

  private constructor(
    readonly dir: string,
    private readonly db: Level<Buffer, Buffer>,
    private readonly subs: Subs,
    private readonly opts: StoreOptions,
  ) {
    this.ttlMs = opts.requestIdTtlMs ?? DEFAULT_REQUEST_ID_TTL_MS;
  }

  static async open(dir: string, opts: StoreOptions = {}): Promise<ShardStore> {
    // Refuses a file, unrelated files, a master's directory or a damaged LevelDB, naming what it found (DataDirError).
    const db = await openDataDir(dir, 'shard', () => new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' }));
    const store = new ShardStore(dir, db, sublevels(db), opts);
    try {
      await store.load();
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
    clearTimeout(this.diskTimer);
    await this.reopening;
    await this.drain();
    await this.flushing;
    if (this.db.status !== 'closed') await this.db.close();
  }

  // ---------------------------------------------------------------- disk space

  /** Free and total bytes of the file system the data directory is on. */
  diskSpace(): Promise<DiskSpace> {
    return diskSpaceOf(this.dir);
  }

  /** Whether writes are refused for lack of space, and what they are told. */
  diskState(): DiskState {
    return { full: this.diskFull !== null, message: this.diskFull?.message ?? '' };
  }

  /** Calls `listener` when the store fills up and when it takes writes again. Returns the unsubscribe function. */
  onDiskState(listener: (state: DiskState) => void): () => void {
    this.diskListeners.add(listener);
    return () => void this.diskListeners.delete(listener);
  }

  /**
   * The first write that failed for lack of space puts the store in the full
   * state. LevelDB cannot be written on from then on: after a failed append
   * its log writer has lost its place in the file, so on a full-then-freed
   * disk later writes succeed but are unreadable at the next open (measured
   * on tmpfs: acknowledged, then gone after a reopen), and a failed
   * compaction leaves an error that fails every write until a reopen. So
   * every write is refused here until free space is back, and then LevelDB
   * is closed and opened again, which replays the log up to the failed
   * record (which nobody was told succeeded) and starts a new one.
   */
  private enterDiskFull(cause: unknown): CairnError {
    if (!this.diskFull) {
      const why = String((cause as Error)?.message ?? cause);
      this.diskFull = new CairnError(
        'DISK_FULL',
        `no space left on device in ${this.dir}: this shard refuses writes until space is freed there, then resumes by itself (reads are still served); LevelDB said: ${why}`,
      );
      this.emitDiskState();
      this.scheduleDiskCheck();
    }
    return this.diskFull;
  }

  private emitDiskState(): void {
    const state = this.diskState();
    for (const l of this.diskListeners) {
      try {
        l(state);
      } catch {
        // A listener's failure must not stop the store's own recovery.
      }
    }
  }

  private scheduleDiskCheck(): void {
    if (this.closed) return;
    clearTimeout(this.diskTimer);
    this.diskTimer = setTimeout(() => void this.checkDiskRecovered(), this.opts.diskPollMs ?? DEFAULT_DISK_POLL_MS);
    this.diskTimer.unref();
  }

  /** While full: reopens LevelDB once the file system has room again; otherwise looks again later. */
  private async checkDiskRecovered(): Promise<void> {
    if (this.closed || !this.diskFull) return;
    try {
      const { freeBytes, totalBytes } = await this.diskSpace();
      if (freeBytes >= (this.opts.resumeFreeBytes ?? resumeFreeBytes(totalBytes))) await this.reopen();
    } catch {
      // Not yet (statfs failed, or LevelDB could not open again): the next check tries again.
    }
    if (this.diskFull) this.scheduleDiskCheck();
  }

  /**
   * Closes and opens LevelDB again (writes are refused meanwhile, reads wait),
   * reloads the stats records (a batch whose sync failed may turn out applied
   * after all: its stats ride in it), and takes writes again.
   */
  private async reopen(): Promise<void> {
    const run = (async () => {
      await this.flushing; // every queued write was refused; let the loop end
      if (this.db.status !== 'closed') await this.db.close();
      await this.db.open();
      // Sublevels close with their database and do not reopen with it.
      for (const sub of Object.values(this.subs)) await sub.open();
      await this.loadStatsRecords();
      const rec = await this.subs.meta.get(META_CLOCK);
      const stored = rec ? rec.readBigUInt64BE(0) : 0n;
      this.clock.observe(stored);
      if (stored > this.persistedClock) this.persistedClock = stored;
    })();
    this.reopening = run;
    try {
      await run;
    } finally {
      this.reopening = null;
    }
    if (this.closed) return;
    this.diskFull = null;
    clearTimeout(this.diskTimer);
    this.emitDiskState();
  }

  /** Reads wait while LevelDB is being reopened after a full disk. */
  private whenOpen(): Promise<void> | undefined {
    return this.reopening?.catch(() => undefined);
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
    let names: string[];
    let segsOf: RowWriteIn[][];
    let slotOf: number[] | null = null; // rows[i] -> its merged entry; null when rows are distinct
    if (rows.length === 1) {
      names = [rows[0]!.row];
      segsOf = [rows];
    } else {
      const at = new Map<string, number>();
      names = [];
      segsOf = [];
      const slots = new Array<number>(rows.length);
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i]!;
        let k = at.get(r.row);
        if (k === undefined) {
          at.set(r.row, (k = names.length));
          names.push(r.row);
          segsOf.push([r]);
        } else {
          segsOf[k]!.push(r);
        }
        slots[i] = k;
      }
      if (names.length < rows.length) slotOf = slots;
    }
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
      let idKeys: Buffer[] | null = null;
      if (o.requestId) {
        const id = Buffer.from(o.requestId, 'utf8');
        idKeys = prefixes.map((p) => Buffer.concat([p, id], p.length + id.length));
      }
      const priors = idKeys ? await lookup(this.subs.reqids, idKeys) : null;
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
        const ts = await this.planWrite(plan, segsOf[k]!);
        stamps[k] = ts;
        if (idKeys) plan.other.push({ sublevel: 'reqids', key: idKeys[k]!, value: encodeWriteOutcome(ts, now, digests![k]!) });
        plans.push(plan);
      }
      await this.commitPlans(plans, o.sync);
      return slotOf ? slotOf.map((k) => stamps[k]!) : stamps;
    });
  }

  /** Adds the puts (and replace deletes) of row writes to a plan; returns the timestamp used for timestamp-0 cells. */
  private planWrite(plan: RowPlan, segs: { cells: CellIn[]; replace: boolean }[]): bigint | Promise<bigint> {
    let needsNow = false;
    let replace = false;
    for (const s of segs) {
      if (s.replace) replace = true;
      for (const c of s.cells) {
        if (c.timestampUs === 0n) needsNow = true;
        else this.clock.observe(c.timestampUs);
      }
    }
    // Drawn after observing, so it is above every explicit timestamp in the call, and above every stored one.
    const now = needsNow ? this.clock.now() : 0n;
    if (replace) return this.planReplace(plan, segs, now);
    for (const s of segs) this.planPuts(plan, s.cells, now);
    return now;
  }

  private planPuts(plan: RowPlan, cells: CellIn[], now: bigint): void {
    for (const c of cells) {
      const fresh = c.timestampUs === 0n; // a clock timestamp is above everything stored: the key cannot exist
      plan.put(cellKey(plan.prefix, c.column, fresh ? now : c.timestampUs), toBuffer(c.value), fresh);
    }
  }

  private async planReplace(plan: RowPlan, segs: { cells: CellIn[]; replace: boolean }[], now: bigint): Promise<bigint> {
    for (const s of segs) {
      if (s.replace) {
        for (const column of new Set(s.cells.map((c) => c.column))) {
          const b = columnBounds(plan.prefix, column);
          plan.dropPlannedPuts(b.gte);
          for await (const [key, value] of this.entries(this.subs.cells, b)) plan.del(key, value.length);
          (plan.cleared ??= []).push(b.gte);
        }
      }
      this.planPuts(plan, s.cells, now);
    }
    return now;
  }

  /** Deletes every cell of a row and its lease. Returns the number of cells deleted. */
  deleteRow(row: string, o: WriteOpts): Promise<number> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      const prior = await this.priorOutcome(prefix, o.requestId, 'deleteRow', row);
      if (prior) return prior.n ?? 0;
      const plan = new RowPlan(prefix);
      let n = 0;
      for await (const [key, value] of this.entries(this.subs.cells, rowBounds(prefix))) {
        plan.del(key, value.length);
        n++;
      }
      plan.coversRow = true;
      if (this.subs.leases.getSync(leaseKey(prefix)) !== undefined) plan.other.push({ sublevel: 'leases', key: leaseKey(prefix) });
      this.record(plan, o.requestId, { k: 'deleteRow', n });
      await this.commitPlans([plan], o.sync);
      return n;
    });
  }

  /** Deletes the given columns of a row, every version or only those in the time range. Returns the number of cells deleted. */
  deleteCells(row: string, columns: string[], timeRange: TimeRangeIn | undefined, o: WriteOpts): Promise<number> {
    const prefix = rowPrefix(row);
    const digest = o.requestId ? deleteCellsDigest(columns, timeRange) : undefined;
    return this.mutate([prefix], async () => {
      const prior = await this.priorOutcome(prefix, o.requestId, 'deleteCells', row, digest);
      if (prior) return prior.n ?? 0;
      const plan = new RowPlan(prefix);
      let n = 0;
      for (const column of new Set(columns)) {
        const b = timeRange ? columnTimeBounds(prefix, column, timeRange.startUs, timeRange.endUs) : columnBounds(prefix, column);
        if (!b) continue;
        for await (const [key, value] of this.entries(this.subs.cells, b)) {
          plan.del(key, value.length);
          n++;
        }
        if (!timeRange) (plan.cleared ??= []).push(b.gte as Buffer);
      }
      this.record(plan, o.requestId, { k: 'deleteCells', n, d: digest });
      if (n > 0 || o.requestId) await this.commitPlans([plan], o.sync);
      return n;
    });
  }

  /** Checks the newest version of one column and writes the cells only if the check holds; atomic with other writes to the row. */
  checkAndMutate(req: CheckAndMutateIn, o: WriteOpts): Promise<{ succeeded: boolean; timestampUs: bigint }> {
    const prefix = rowPrefix(req.row);
    const digest = o.requestId ? casDigest(req) : undefined;
    return this.mutate([prefix], async () => {
      const prior = await this.priorOutcome(prefix, o.requestId, 'cas', req.row, digest);
      if (prior) return { succeeded: prior.ok === true, timestampUs: BigInt(prior.ts ?? '0') };
      let newest: Buffer | undefined;
      for await (const [, value] of this.entries(this.subs.cells, columnBounds(prefix, req.checkColumn), { limit: 1 })) newest = value;
      const succeeded = req.expectAbsent ? newest === undefined : newest !== undefined && newest.equals(req.expectedValue);
      const plan = new RowPlan(prefix);
      const timestampUs = succeeded ? await this.planWrite(plan, [req]) : 0n;
      this.record(plan, o.requestId, { k: 'cas', ok: succeeded, ts: timestampUs.toString(), d: digest });
      if (succeeded || o.requestId) await this.commitPlans([plan], o.sync);
      return { succeeded, timestampUs };
    });
  }

  // ---------------------------------------------------------------- leases

  /** Takes a lease on a row; CONFLICT while another unexpired lease is held. Leases are written with sync: a lost lease would break exclusion. */
  lockRow(row: string, leaseMs: number, requestId: string): Promise<{ leaseId: string; expiresAtMs: number }> {
    const prefix = rowPrefix(row);
    const digest = requestId ? lockDigest(leaseMs) : undefined;
    return this.mutate([prefix], async () => {
      const prior = await this.priorOutcome(prefix, requestId, 'lock', row, digest);
      if (prior) return { leaseId: prior.id!, expiresAtMs: prior.exp! };
      const now = Date.now();
      const cur = await this.getLease(prefix);
      if (cur && cur.exp > now) {
        throw new CairnError('CONFLICT', `row ${show(row)} is leased by another holder until ${new Date(cur.exp).toISOString()}`);
      }
      const lease: Lease = { id: crypto.randomUUID(), exp: now + leaseMs };
      const plan = new RowPlan(prefix);
      plan.other.push({ sublevel: 'leases', key: leaseKey(prefix), value: Buffer.from(JSON.stringify(lease)) });
      this.record(plan, requestId, { k: 'lock', id: lease.id, exp: lease.exp, d: digest });
      await this.commitPlans([plan], true);
      return { leaseId: lease.id, expiresAtMs: lease.exp };
    });
  }

  /** Extends a held, unexpired lease to now + leaseMs. */
  extendLease(row: string, leaseId: string, leaseMs: number): Promise<{ expiresAtMs: number }> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      const now = Date.now();
      this.checkHeld(row, await this.getLease(prefix), leaseId, now, true);
      const lease: Lease = { id: leaseId, exp: now + leaseMs };
      const plan = new RowPlan(prefix);
      plan.other.push({ sublevel: 'leases', key: leaseKey(prefix), value: Buffer.from(JSON.stringify(lease)) });
      await this.commitPlans([plan], true);
      return { expiresAtMs: lease.exp };
    });
  }

  /** Releases a lease. An expired lease with the caller's id is released too (it is only cleanup). */
  unlockRow(row: string, leaseId: string): Promise<void> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      this.checkHeld(row, await this.getLease(prefix), leaseId, Date.now(), false);
      const plan = new RowPlan(prefix);
      plan.other.push({ sublevel: 'leases', key: leaseKey(prefix) });
      await this.commitPlans([plan], true);
    });
  }

  private checkHeld(row: string, cur: Lease | undefined, leaseId: string, now: number, mustBeLive: boolean): void {
    if (!cur) throw new CairnError('NOT_FOUND', `row ${show(row)} has no lease`);
    if (cur.id !== leaseId) {
      if (cur.exp > now) throw new CairnError('CONFLICT', `row ${show(row)} is leased by another holder, not by lease ${leaseId}`);
      throw new CairnError('NOT_FOUND', `lease ${leaseId} on row ${show(row)} is not held`);
    }
    if (mustBeLive && cur.exp <= now) throw new CairnError('NOT_FOUND', `lease ${leaseId} on row ${show(row)} expired at ${new Date(cur.exp).toISOString()}`);
  }

  private async getLease(prefix: Buffer): Promise<Lease | undefined> {
    const v = this.subs.leases.getSync(leaseKey(prefix));
    return v === undefined ? undefined : (JSON.parse(v.toString('utf8')) as Lease);
  }

  // ---------------------------------------------------------------- reads

  /** Cells of one row, by column then newest first. */
  async readRow(row: string, filter: CellFilterIn): Promise<CellOut[]> {
    if (this.reopening) await this.whenOpen();
    return this.readCells(rowPrefix(row), filter);
  }

  /** The rows that have matching cells, in request order. */
  async readRows(rows: string[], filter: CellFilterIn): Promise<RowCellsOut[]> {
    if (this.reopening) await this.whenOpen();
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

  private async readCells(prefix: Buffer, f: CellFilterIn): Promise<CellOut[]> {
    const out: CellOut[] = [];
    const limit = f.limit > 0 ? f.limit : Infinity;
    if (f.columns.length > 0) {
      // Exact columns, in byte order so the result is ordered by column.
      const cols = f.columns.length === 1 ? f.columns : [...new Set(f.columns)].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
      if (!f.timeRange && !f.allVersions) {
        const newest = await this.newestCells(prefix, cols, limit);
        if (newest) return newest;
      }
      // A time window or every version: one bounded read each.
      for (const column of cols) {
        const b: KeyBounds | { gte: Buffer; lte: Buffer } | null = f.timeRange
          ? columnTimeBounds(prefix, column, f.timeRange.startUs, f.timeRange.endUs)
          : columnBounds(prefix, column);
        if (!b) continue;
        const want = f.allVersions ? limit - out.length : 1;
        for await (const [key, value] of this.entries(this.subs.cells, b, { limit: Number.isFinite(want) ? want : undefined })) {
          out.push({ column, timestampUs: decodeCellTail(key, prefix.length).timestampUs, value });
        }
        if (out.length >= limit) break;
      }
      return out;
    }
    const sel = new CellSelector(f, prefix.length);
    for await (const [key, value] of this.entries(this.subs.cells, columnPrefixBounds(prefix, f.columnPrefix))) {
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
  private async newestCells(prefix: Buffer, cols: string[], limit: number): Promise<CellOut[] | null> {
    const colKeys = cols.map((c) => columnKeyPrefix(prefix, c));
    const ptrs = await lookup(this.subs.latest, colKeys);
    const found: number[] = [];
    const keys: Buffer[] = [];
    for (let i = 0; i < cols.length && found.length < limit; i++) {
      const ptr = ptrs[i];
      if (ptr === undefined || ptr.length !== 8) continue;
      found.push(i);
      keys.push(Buffer.concat([colKeys[i]!, ptr]));
    }
    if (keys.length === 0) return [];
    const vals = await lookup(this.subs.cells, keys);
    const out: CellOut[] = new Array(keys.length);
    for (let j = 0; j < keys.length; j++) {
      const value = vals[j];
      if (value === undefined) return null;
      out[j] = { column: cols[found[j]!]!, timestampUs: U64_MAX - ptrs[found[j]!]!.readBigUInt64BE(0), value };
    }
    return out;
  }

  /**
   * One page of rows whose key starts with rowPrefix, in storage order inside
   * [hashStart, hashEnd), resuming strictly after the token's row. A null
   * nextToken is the only end signal: a page may be short (or empty) when the
   * examine budget runs out first.
   */
  async scan(req: ScanIn): Promise<{ rows: RowCellsOut[]; nextToken: Buffer | null }> {
    if (this.reopening) await this.whenOpen();
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
    const cursor = new Cursor(this.subs.cells.iterator(rangeOpts({ gte, lt: window.lt })), Math.min(1024, Math.max(CHUNK, limit + 1)));
    let last: Buffer | null = null;
    let examined = 0;
    try {
      for (;;) {
        let e = await cursor.peek();
        if (!e) return { rows, nextToken: null };
        if (last && (rows.length >= limit || examined >= SCAN_EXAMINE_BUDGET)) return { rows, nextToken: encodeScanToken(last) };
        const prefix = rowPrefixOf(e[0]); // a view: keys from nextv are never reused
        examined++;
        const rowBytes = prefix.subarray(10);
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

  // ---------------------------------------------------------------- stats

  /** Exact live rows and bytes (cell key + value) in a bucket-aligned range. */
  rangeStats(range: HashRange): RangeStats {
    const [first, end] = this.span(range);
    let rows = 0;
    let bytes = 0;
    for (let b = first; b < end; b++) {
      rows += this.statRows[b]!;
      bytes += this.statBytes[b]!;
    }
    return { rows, bytes };
  }

  totalStats(): RangeStats {
    return { rows: this.totalRows, bytes: this.totalBytes };
  }

  /** Non-empty buckets in a bucket-aligned range, for the planner's split points. */
  bucketStats(range: HashRange): { bucket: number; rows: number; bytes: number }[] {
    const [first, end] = this.span(range);
    const out: { bucket: number; rows: number; bytes: number }[] = [];
    for (let b = first; b < end; b++) {
      if (this.statRows[b] !== 0 || this.statBytes[b] !== 0) out.push({ bucket: b, rows: this.statRows[b]!, bytes: this.statBytes[b]! });
    }
    return out;
  }

  private span(range: HashRange): [number, number] {
    if (!isBucketAligned(range.start) || !(range.end === HASH_SPACE_END || isBucketAligned(range.end)) || range.end <= range.start) {
      throw new RangeError(`range [${range.start}, ${range.end}) is not bucket-aligned`);
    }
    return bucketSpan(range);
  }

  /** Counts rows and bytes in a range by reading every cell: slow, for checks and tests. */
  async recountStats(range: HashRange = { start: 0n, end: HASH_SPACE_END }): Promise<RangeStats> {
    const { buckets } = await this.scanCells(hashRangeBounds(range));
    let rows = 0;
    let bytes = 0;
    for (const [r, b] of buckets.values()) {
      rows += r;
      bytes += b;
    }
    return { rows, bytes };
  }

  /**
   * Compares the derived records (cell counts, newest-version pointers) with
   * the cells, reading everything: slow, for checks and tests. Returns the
   * differences (empty when exact). Run it with no writes in flight.
   */
  async verifyDerived(): Promise<string[]> {
    const counts = new Map<string, number>();
    const newest = new Map<string, string>();
    for await (const key of this.keysIn(this.subs.cells, {})) {
      const p = hex(rowPrefixOf(key));
      counts.set(p, (counts.get(p) ?? 0) + 1);
      const c = hex(key.subarray(0, key.length - 8));
      if (!newest.has(c)) newest.set(c, hex(key.subarray(key.length - 8)));
    }
    const out: string[] = [];
    const show = (k: string): string => Buffer.from(k, 'latin1').toString('hex');
    for await (const [k, v] of this.entries(this.subs.rowcells, {})) {
      const want = counts.get(hex(k));
      if (want !== decodeCount(v)) out.push(`row ${show(hex(k))}: count record ${decodeCount(v)}, cells ${want ?? 0}`);
      counts.delete(hex(k));
    }
    for (const [k, n] of counts) out.push(`row ${show(k)}: no count record, cells ${n}`);
    for await (const [k, v] of this.entries(this.subs.latest, {})) {
      const want = newest.get(hex(k));
      if (want !== hex(v)) out.push(`column ${show(hex(k))}: pointer ${v.toString('hex')}, newest cell ${want === undefined ? 'none' : show(want)}`);
      newest.delete(hex(k));
    }
    for (const [k, t] of newest) out.push(`column ${show(k)}: no pointer, newest cell ${show(t)}`);
    return out;
  }

  /** The clock's high-water mark: above every stored timestamp. */
  clockHigh(): bigint {
    return this.clock.high();
  }

  // ---------------------------------------------------------------- meta

  /** A record stored with putMeta (shard id, cluster map), or undefined. */
  async getMeta<T = unknown>(key: string): Promise<T | undefined> {
    if (this.reopening) await this.whenOpen();
    const v = await this.subs.meta.get(META_USER_PREFIX + key);
    return v === undefined ? undefined : (JSON.parse(v.toString('utf8')) as T);
  }

  /** Stores a small JSON value (no bigints: encode them as strings); synced by default, since these records say who the shard is and what it owns. */
  putMeta(key: string, value: unknown, sync = true): Promise<void> {
    const v = Buffer.from(JSON.stringify(value), 'utf8');
    return this.track(this.enqueue([{ type: 'put', sublevel: this.subs.meta, key: META_USER_PREFIX + key, value: v }], NO_RAW, sync));
  }

  delMeta(key: string, sync = true): Promise<void> {
    return this.track(this.enqueue([{ type: 'del', sublevel: this.subs.meta, key: META_USER_PREFIX + key }], NO_RAW, sync));
  }

  // ---------------------------------------------------------------- moving ranges

  /** Calls `listener` synchronously after each batch with its per-row ops. Returns the unsubscribe function. */
  onCommit(listener: (ops: RawOp[]) => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  /** Resolves once every write already started (waiting for or holding a row lock, or queued) has committed or failed. */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.inflight]);
  }

  /** A point-in-time copy of a range's per-row keys, in chunks of about chunkBytes. */
  async *exportRange(range: HashRange, chunkBytes: number): AsyncGenerator<RawOp[]> {
    if (this.reopening) await this.whenOpen();
    const snapshot = this.db.snapshot();
    try {
      const bounds = hashRangeBounds(range);
      let chunk: RawOp[] = [];
      let size = 0;
      for (const name of PER_ROW) {
        for await (const [key, value] of this.entries(this.subs[name], bounds, { snapshot })) {
          chunk.push({ sublevel: name, key, value });
          size += key.length + value.length;
          if (size >= chunkBytes) {
            yield chunk;
            chunk = [];
            size = 0;
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
      const plans = new Map<string, RowPlan>();
      let plan: RowPlan | undefined;
      for (let i = 0; i < ops.length; i++) {
        const op = ops[i]!;
        const p = prefixes[i]!;
        // Exported chunks and commit logs come row by row: most ops belong to the previous op's row.
        if (!plan || !plan.prefix.equals(p)) {
          plan = plans.get(hex(p));
          if (!plan) plans.set(hex(p), (plan = new RowPlan(p)));
        }
        if (op.sublevel === 'cells') {
          const key = op.key;
          const n = key.length;
          // A well-formed cell key ends with the column terminator and 8 timestamp bytes; decodeCellTail names what is wrong otherwise.
          if (n < p.length + 10 || key[n - 10] !== 0x00 || key[n - 9] !== 0x01) decodeCellTail(key, p.length);
          if (op.value) {
            this.clock.observe(U64_MAX - key.readBigUInt64BE(n - 8));
            plan.put(key, op.value);
          } else {
            plan.del(key);
          }
        } else {
          plan.other.push(op.value ? { sublevel: op.sublevel, key: op.key, value: op.value } : { sublevel: op.sublevel, key: op.key });
        }
      }
      await this.commitPlans([...plans.values()], o.sync);
    });
  }

  /** Deletes every per-row key in a range, batchSize keys per batch, keeping stats exact. Returns the number of keys deleted. */
  async deleteRange(range: HashRange, batchSize = 1000): Promise<number> {
    const bounds = hashRangeBounds(range);
    let total = 0;
    for (const name of PER_ROW) {
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
    const work = (async () => {
      const cutoff = nowMs - this.ttlMs;
      let n = 0;
      let dels: Buffer[] = [];
      const flush = async (): Promise<void> => {
        if (dels.length === 0) return;
        const raw: RawOp[] = dels.map((key) => ({ sublevel: 'reqids', key }));
        // Only the deletes count as started writes for drain(), not the whole (possibly long) sweep.
        await this.track(
          this.enqueue(
            dels.map((key) => ({ type: 'del', sublevel: this.subs.reqids, key })),
            raw,
            false,
          ),
        );
        n += dels.length;
        dels = [];
      };
      for await (const [key, value] of this.entries(this.subs.reqids, {})) {
        let t = -Infinity;
        try {
          t = decodeOutcome(value).t;
        } catch {
          // An unreadable record cannot dedupe anything: drop it.
        }
        if (!(t >= cutoff)) dels.push(key);
        if (dels.length >= 1000) await flush();
      }
      await flush();
      return n;
    })();
    try {
      return await work;
    } finally {
      this.sweeping = false;
    }
  }

  /** The outcome recorded for this request id on this row, if any; CONFLICT when it was recorded for a different request (digest). */
  private async priorOutcome(prefix: Buffer, requestId: string, kind: Outcome['k'], row: string, digest?: Buffer): Promise<Outcome | undefined> {
    if (!requestId) return undefined;
    const v = this.subs.reqids.getSync(requestIdKey(prefix, requestId));
    return v === undefined ? undefined : parseOutcome(v, requestId, kind, row, digest);
  }

  private record(plan: RowPlan, requestId: string, outcome: Omit<Outcome, 't'>): void {
    if (!requestId) return;
    plan.other.push({ sublevel: 'reqids', key: requestIdKey(plan.prefix, requestId), value: encodeOutcome(outcome, Date.now()) });
  }

  // ---------------------------------------------------------------- commit machinery

  private assertOpen(): void {
    if (this.closed) throw new CairnError('NOT_READY', `store ${this.dir} is closed`);
  }

  /** Queues an entry for the group-commit writer; refused at once while the disk is full. */
  private push(p: Pending): void {
    if (this.diskFull) return p.reject(this.diskFull);
    this.queue.push(p);
    if (!this.flushing) this.flushing = this.flushLoop();
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    const done = (): void => void this.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  /** Runs fn holding the locks of the given rows; the lock queue is joined synchronously, at call time. */
  private mutate<T>(prefixes: Buffer[], fn: () => Promise<T>): Promise<T> {
    try {
      this.assertOpen();
      if (this.diskFull) throw this.diskFull; // refused before any row lock or read: nothing can be written
    } catch (err) {
      return Promise.reject(err);
    }
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

  /** Settles plans (reads what stats need, under the caller's row locks) and commits them in one batch. */
  private async commitPlans(plans: RowPlan[], sync: boolean): Promise<void> {
    if (plans.length === 0) return;
    const { deltas, derived } = await this.settle(plans);
    let any = false;
    for (const p of plans) if (p.keys.length > 0 || p.other.length > 0) any = true;
    if (!any) return;
    await new Promise<void>((resolve, reject) => this.push({ plans, derived, deltas, ops: NO_OPS, raw: NO_RAW, sync, resolve, reject }));
  }

  /**
   * The exact stats change of each plan, and the ops that keep the derived
   * per-row records exact. Bytes: new minus old (key + value) of every
   * touched cell. Rows: a row counts while it has a cell, so the count
   * changes exactly when the row's cell count goes from 0 to more, or back.
   *
   * Two shard-local records are derived from the cells, written in the same
   * batch as the cells, under the row's lock, by this one function that every
   * cell mutation goes through (writes, deletes, applyRaw, deleteRange):
   * - `rowcells`: per row prefix, its number of stored cells (absent = 0);
   * - `latest`: per column (its column key prefix), the timestamp tail of its
   *   newest stored cell (absent = no cell), which makes an exact-column read
   *   two point reads instead of an iterator.
   * So they always describe the stored cells. Neither moves with a range: a
   * range moves as cells (exportRange/applyRaw), and the receiving shard
   * derives its records here as it applies them, as the sender does when
   * deleteRange removes them.
   *
   * Reads, for all plans at once: the old values of touched cells nobody
   * knows yet (one lookup), then the count records of the rows whose count
   * changes and the pointers of the columns that cannot be settled blind (one
   * lookup each); a column whose newest stored version is deleted is read
   * with an iterator to find the next one.
   */
  private async settle(plans: RowPlan[]): Promise<{ deltas: Delta[]; derived: BatchOp[] }> {
    let unknownKeys: Buffer[] | null = null;
    for (const plan of plans) {
      for (let i = 0; i < plan.keys.length; i++) if (plan.old[i] === undefined) (unknownKeys ??= []).push(plan.keys[i]!);
    }
    if (unknownKeys) {
      const vals = await lookup(this.subs.cells, unknownKeys);
      let j = 0;
      for (const plan of plans) {
        for (let i = 0; i < plan.keys.length; i++) {
          if (plan.old[i] !== undefined) continue;
          const v = vals[j++];
          plan.old[i] = v === undefined ? null : v.length;
        }
      }
    }
    const deltas: Delta[] = new Array(plans.length);
    const change: number[] = new Array(plans.length);
    const derived: BatchOp[] = [];
    const pending: ColumnWork[] = [];
    let countKeys: Buffer[] | null = null;
    for (let k = 0; k < plans.length; k++) {
      const plan = plans[k]!;
      let bytes = 0;
      let cells = 0;
      for (let i = 0; i < plan.keys.length; i++) {
        const keyLength = plan.keys[i]!.length;
        const old = plan.old[i]!;
        const value = plan.values[i]!;
        if (old !== null) bytes -= keyLength + old;
        if (value) bytes += keyLength + value.length;
        if (old === null && value) cells++;
        else if (old !== null && !value) cells--;
      }
      change[k] = cells;
      deltas[k] = { bucket: bucketOfPrefix(plan.prefix), rows: 0, bytes };
      if (cells !== 0) (countKeys ??= []).push(plan.prefix);
      this.planPointers(plan, derived, pending);
    }
    if (countKeys) {
      const recs = await lookup(this.subs.rowcells, countKeys);
      let j = 0;
      for (let k = 0; k < plans.length; k++) {
        if (change[k] === 0) continue;
        const rec = recs[j++];
        const before = rec === undefined ? 0 : decodeCount(rec);
        const after = before + change[k]!;
        if (after < 0) throw new Error(`cell count of a row would go negative (${before} ${change[k]}): a bug`);
        deltas[k]!.rows = before === 0 && after > 0 ? 1 : before > 0 && after === 0 ? -1 : 0;
        const key = plans[k]!.prefix;
        derived.push(after === 0 ? { type: 'del', sublevel: this.subs.rowcells, key } : { type: 'put', sublevel: this.subs.rowcells, key, value: encodeCount(after) });
      }
    }
    if (pending.length > 0) {
      const ptrs = await lookup(this.subs.latest, pending.map((c) => c.colKey));
      for (let j = 0; j < pending.length; j++) {
        const c = pending[j]!;
        const ptr = ptrs[j];
        let newest = c.newest;
        if (ptr !== undefined) {
          const deletedOld = c.dels !== null && c.dels.some((t) => t.equals(ptr));
          newest = newer(newest, deletedOld ? await this.newestStoredExcept(c.colKey, c.dels!) : ptr);
        }
        if (newest === null) {
          if (ptr !== undefined) derived.push({ type: 'del', sublevel: this.subs.latest, key: c.colKey });
        } else if (ptr === undefined || !newest.equals(ptr)) {
          derived.push({ type: 'put', sublevel: this.subs.latest, key: c.colKey, value: newest });
        }
      }
    }
    return { deltas, derived };
  }

  /**
   * The newest-version pointer ops a plan needs that it can settle without
   * reading (a fresh clock timestamp is above every stored one; a column the
   * plan clears keeps only what the plan puts); the other changed columns go
   * to `pending`, to be settled against their stored pointer.
   */
  private planPointers(plan: RowPlan, derived: BatchOp[], pending: ColumnWork[]): void {
    const n = plan.keys.length;
    if (n === 0) return;
    const groups: ColumnWork[] = [];
    for (let i = 0; i < n; i++) {
      const value = plan.values[i];
      const existed = plan.old[i] !== null;
      if (!value && !existed) continue; // deleting a missing key changes nothing
      const key = plan.keys[i]!;
      const colKey = key.subarray(0, key.length - 8);
      const tail = key.subarray(key.length - 8);
      let g: ColumnWork | undefined;
      for (const x of groups) {
        if (x.colKey.equals(colKey)) {
          g = x;
          break;
        }
      }
      if (!g) groups.push((g = { colKey, newest: null, fresh: false, changed: false, dels: null }));
      if (value) {
        g.newest = newer(g.newest, tail);
        if (plan.fresh[i]) g.fresh = true;
        if (!existed) g.changed = true;
      } else {
        (g.dels ??= []).push(tail);
        g.changed = true;
      }
    }
    for (const g of groups) {
      if (!g.changed) continue; // only overwrites: the stored versions are the same keys
      const cleared = plan.coversRow || (plan.cleared !== null && plan.cleared.some((c) => c.equals(g.colKey)));
      if (g.fresh || (cleared && g.newest !== null)) {
        derived.push({ type: 'put', sublevel: this.subs.latest, key: g.colKey, value: g.newest! });
      } else if (cleared) {
        derived.push({ type: 'del', sublevel: this.subs.latest, key: g.colKey });
      } else {
        pending.push(g);
      }
    }
  }

  /** The timestamp tail of the newest stored cell of a column whose tail is not in `except`, or null. */
  private async newestStoredExcept(colKey: Buffer, except: Buffer[]): Promise<Buffer | null> {
    for await (const key of this.keysIn(this.subs.cells, prefixBounds(colKey))) {
      const tail = key.subarray(key.length - 8);
      if (!except.some((t) => t.equals(tail))) return Buffer.from(tail);
    }
    return null;
  }

  private enqueue(ops: BatchOp[], raw: RawOp[], sync: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => this.push({ plans: NO_PLANS, derived: NO_OPS, deltas: NO_DELTAS, ops, raw, sync, resolve, reject }));
  }

  /** The group-commit writer: one batch in flight; each batch takes everything queued meanwhile. */
  private async flushLoop(): Promise<void> {
    try {
      await undefined; // let entries queued in the same tick join the first batch
      while (this.queue.length > 0) {
        if (this.diskFull) {
          // Nothing more may reach LevelDB until it is reopened (see enterDiskFull).
          const refused = this.queue;
          this.queue = [];
          for (const p of refused) p.reject(this.diskFull);
          break;
        }
        let count = 0;
        let take = 0;
        while (take < this.queue.length && (take === 0 || count + opCount(this.queue[take]!) <= MAX_GROUP_OPS)) {
          count += opCount(this.queue[take]!);
          take++;
        }
        const group = take === this.queue.length ? this.queue : this.queue.slice(0, take);
        this.queue = take === this.queue.length ? [] : this.queue.slice(take);
        try {
          await this.writeGroup(group);
        } catch (err) {
          // Nothing of the group was applied (the batch is atomic): fail every writer in it.
          const refusal = isNoSpaceError(err) ? this.enterDiskFull(err) : err;
          for (const p of group) p.reject(refusal);
        }
      }
    } finally {
      this.flushing = null;
    }
  }

  private async writeGroup(group: Pending[]): Promise<void> {
    const ops: BatchOp[] = [];
    const touched = new Map<number, { rows: number; bytes: number }>();
    let sync = false;
    const cells = this.subs.cells;
    for (const p of group) {
      for (let k = 0; k < p.plans.length; k++) {
        const plan = p.plans[k]!;
        for (let i = 0; i < plan.keys.length; i++) {
          const value = plan.values[i];
          ops.push(value ? { type: 'put', sublevel: cells, key: plan.keys[i]!, value } : { type: 'del', sublevel: cells, key: plan.keys[i]! });
        }
        for (const op of plan.other) {
          const sublevel = this.subs[op.sublevel];
          ops.push(op.value ? { type: 'put', sublevel, key: op.key, value: op.value } : { type: 'del', sublevel, key: op.key });
        }
      }
      for (const op of p.derived) ops.push(op);
      for (const op of p.ops) ops.push(op);
      for (const d of p.deltas) {
        if (d.rows === 0 && d.bytes === 0) continue;
        let t = touched.get(d.bucket);
        if (!t) touched.set(d.bucket, (t = { rows: this.statRows[d.bucket]!, bytes: this.statBytes[d.bucket]! }));
        t.rows += d.rows;
        t.bytes += d.bytes;
      }
      sync ||= p.sync;
    }
    // Stats records and the clock mark ride in the same batch as the data they describe.
    for (const [b, t] of touched) {
      if (t.rows < 0 || t.bytes < 0) throw new Error(`stats of bucket ${b} would go negative (${t.rows} rows, ${t.bytes} bytes): a bug`);
      if (t.rows === 0 && t.bytes === 0) ops.push({ type: 'del', sublevel: this.subs.meta, key: bucketMetaKey(b) });
      else ops.push({ type: 'put', sublevel: this.subs.meta, key: bucketMetaKey(b), value: encodeStats(t.rows, t.bytes) });
    }
    const high = this.clock.high();
    if (high > this.persistedClock) ops.push({ type: 'put', sublevel: this.subs.meta, key: META_CLOCK, value: u64(high) });
    // No options object unless syncing: abstract-level spreads the options into every op, and
    // with a plain { sync: false } that spread cost ~10 µs per op (measured; see bench/NOTES.md).
    await (this.db.batch as (ops: BatchOp[], o?: { sync: boolean }) => Promise<void>).call(this.db, ops, sync ? SYNC : undefined);
    for (const [b, t] of touched) {
      this.totalRows += t.rows - this.statRows[b]!;
      this.totalBytes += t.bytes - this.statBytes[b]!;
      this.statRows[b] = t.rows;
      this.statBytes[b] = t.bytes;
    }
    if (high > this.persistedClock) this.persistedClock = high;
    if (this.listeners.size > 0) {
      const raw = rawOf(group);
      if (raw.length > 0) {
        for (const l of this.listeners) {
          try {
            l(raw);
          } catch {
            // A broken listener must not fail writes that are already committed.
          }
        }
      }
    }
    for (const p of group) p.resolve();
  }

  // ---------------------------------------------------------------- open-time loading

  private async load(): Promise<void> {
    const marker = await this.subs.meta.get(META_STATS_MARKER);
    const clockRec = await this.subs.meta.get(META_CLOCK);
    const scanned = marker === undefined || clockRec === undefined ? await this.scanCells({}) : undefined;
    if (marker === undefined) {
      // Stats lost (or a new store): rebuild them exactly from the cells, replacing any partial records.
      const ops: BatchOp[] = [];
      for await (const key of this.keysOf(this.subs.meta, META_STATS_PREFIX)) ops.push({ type: 'del', sublevel: this.subs.meta, key });
      for (const [b, [rows, bytes]] of scanned!.buckets) {
        ops.push({ type: 'put', sublevel: this.subs.meta, key: bucketMetaKey(b), value: encodeStats(rows, bytes) });
      }
      ops.push({ type: 'put', sublevel: this.subs.meta, key: META_STATS_MARKER, value: Buffer.from('1') });
      await this.db.batch<Buffer | string, Buffer>(ops, { sync: true });
      for (const [b, [rows, bytes]] of scanned!.buckets) this.setBucket(b, rows, bytes);
    } else {
      await this.loadStatsRecords();
    }
    if ((await this.subs.meta.get(META_ROWCELLS_MARKER)) === undefined || (await this.subs.meta.get(META_LATEST_MARKER)) === undefined) await this.rebuildDerived();
    this.persistedClock = clockRec === undefined ? 0n : clockRec.readBigUInt64BE(0);
    let floor = this.persistedClock;
    if (scanned && scanned.maxTs > floor) floor = scanned.maxTs;
    this.clock = new HybridClock(floor);
  }

  /**
   * Writes the derived per-row records (cell counts, newest-version pointers)
   * from the cells: a store from before they existed, or one whose records
   * were lost. In batches; the markers go last, so a crash part-way makes the
   * next open start over.
   */
  private async rebuildDerived(): Promise<void> {
    await this.subs.rowcells.clear();
    await this.subs.latest.clear();
    let ops: BatchOp[] = [];
    let prefix: Buffer | null = null;
    let colKey: Buffer | null = null;
    let n = 0;
    const flushRow = (): void => {
      if (prefix) ops.push({ type: 'put', sublevel: this.subs.rowcells, key: prefix, value: encodeCount(n) });
    };
    for await (const key of this.keysIn(this.subs.cells, {})) {
      // Keys come column by column, newest version first: the first of each column is its newest.
      const c = key.subarray(0, key.length - 8);
      if (!colKey || !colKey.equals(c)) {
        colKey = Buffer.from(c);
        ops.push({ type: 'put', sublevel: this.subs.latest, key: colKey, value: Buffer.from(key.subarray(key.length - 8)) });
      }
      const p = rowPrefixOf(key);
      if (prefix && prefix.equals(p)) {
        n++;
        continue;
      }
      flushRow();
      if (ops.length >= 10_000) {
        await this.db.batch<Buffer | string, Buffer>(ops, { sync: false });
        ops = [];
      }
      prefix = Buffer.from(p);
      n = 1;
    }
    flushRow();
    ops.push({ type: 'put', sublevel: this.subs.meta, key: META_ROWCELLS_MARKER, value: Buffer.from('1') });
    ops.push({ type: 'put', sublevel: this.subs.meta, key: META_LATEST_MARKER, value: Buffer.from('1') });
    await this.db.batch<Buffer | string, Buffer>(ops, { sync: true });
  }

  /** Sets every bucket's counts from its stats record (absent = empty). */
  private async loadStatsRecords(): Promise<void> {
    this.statRows.fill(0);
    this.statBytes.fill(0);
    this.totalRows = 0;
    this.totalBytes = 0;
    const it = this.subs.meta.iterator({ gte: META_STATS_PREFIX, lt: META_STATS_PREFIX + '\uffff' });
    try {
      for (;;) {
        const chunk = await it.nextv(1024);
        if (chunk.length === 0) break;
        for (const [k, v] of chunk) this.setBucket(parseInt(k.slice(META_STATS_PREFIX.length), 16), Number(v.readBigUInt64BE(0)), Number(v.readBigUInt64BE(8)));
      }
    } finally {
      await it.close();
    }
  }

  private setBucket(b: number, rows: number, bytes: number): void {
    this.totalRows += rows - this.statRows[b]!;
    this.totalBytes += bytes - this.statBytes[b]!;
    this.statRows[b] = rows;
    this.statBytes[b] = bytes;
  }

  /** Reads every cell in bounds: rows and bytes per bucket, and the largest timestamp. */
  private async scanCells(bounds: { gte?: Buffer; lt?: Buffer }): Promise<{ buckets: Map<number, [number, number]>; maxTs: bigint }> {
    const buckets = new Map<number, [number, number]>();
    let maxTs = 0n;
    let lastPrefix: Buffer | null = null;
    for await (const [key, value] of this.entries(this.subs.cells, bounds)) {
      const prefix = rowPrefixOf(key);
      const b = bucketOf(prefix.readBigUInt64BE(0));
      const s = buckets.get(b) ?? [0, 0];
      if (!lastPrefix || !lastPrefix.equals(prefix)) {
        s[0]++;
        lastPrefix = Buffer.from(prefix);
      }
      s[1] += key.length + value.length;
      buckets.set(b, s);
      const ts = decodeCellTail(key, prefix.length).timestampUs;
      if (ts > maxTs) maxTs = ts;
    }
    return { buckets, maxTs };
  }

  // ---------------------------------------------------------------- iteration helpers

  /** Entries in bounds, read in chunks with nextv; the iterator is closed even when the caller stops early. */
  private async *entries(
    sub: BinSub,
    bounds: { gte?: Buffer; gt?: Buffer; lt?: Buffer; lte?: Buffer },
    extra: { limit?: number; snapshot?: Snapshot } = {},
  ): AsyncGenerator<[Buffer, Buffer]> {
    const it = sub.iterator(rangeOpts(bounds, extra));
    try {
      for (;;) {
        const chunk = (await it.nextv(CHUNK)) as [Buffer, Buffer][];
        if (chunk.length === 0) return;
        yield* chunk;
      }
    } finally {
      await it.close();
    }
  }

  /** Keys in bounds, read in chunks with nextv. */
  private async *keysIn(sub: BinSub, bounds: { gte?: Buffer; lt?: Buffer }): AsyncGenerator<Buffer> {
    const it = sub.keys(rangeOpts(bounds));
    try {
      for (;;) {
        const chunk = (await it.nextv(CHUNK)) as Buffer[];
        if (chunk.length === 0) return;
        yield* chunk;
      }
    } finally {
      await it.close();
    }
  }

  private async *keysOf(sub: Subs['meta'], prefix: string): AsyncGenerator<string> {
    const it = sub.keys({ gte: prefix, lt: prefix + '\uffff' });
    try {
      for (;;) {
        const chunk = await it.nextv(1024);
        if (chunk.length === 0) return;
        yield* chunk;
      }
    } finally {
      await it.close();
    }
  }
}

/**
 * Request-id records, binary: version (u8), kind (u8), recorded at (ms, u48),
 * then in version 2 the request's digest (16 bytes; see requestDigest), then
 * per kind: write: ts (u64); cas: ok (u8), ts (u64); deleteRow and
 * deleteCells: n (u48); lock: exp (ms, u48), lease id (UTF-8). Version 1 is
 * the same without a digest (deleteRow records, which need none, are still
 * written so). Records from before the binary format are JSON (they start
 * with '{') and are still read. Moves copy records as raw bytes, digest and
 * all.
 */
const OUTCOME_KINDS: readonly Outcome['k'][] = ['write', 'deleteRow', 'deleteCells', 'cas', 'lock'];
const DIGEST_BYTES = 16;

/** The record header, with the digest when there is one; returns the offset of the kind's fields. */
function outcomeHeader(b: Buffer, kind: number, t: number, digest: Buffer | undefined): number {
  b[0] = digest ? 2 : 1;
  b[1] = kind;
  b.writeUIntBE(t, 2, 6);
  if (!digest) return 8;
  digest.copy(b, 8, 0, DIGEST_BYTES);
  return 8 + DIGEST_BYTES;
}

function encodeOutcome(o: Omit<Outcome, 't'>, t: number): Buffer {
  const h = o.d ? 8 + DIGEST_BYTES : 8;
  let b: Buffer;
  switch (o.k) {
    case 'write':
      b = Buffer.allocUnsafe(h + 8);
      b.writeBigUInt64BE(BigInt(o.ts ?? '0'), h);
      break;
    case 'cas':
      b = Buffer.allocUnsafe(h + 9);
      b[h] = o.ok ? 1 : 0;
      b.writeBigUInt64BE(BigInt(o.ts ?? '0'), h + 1);
      break;
    case 'deleteRow':
    case 'deleteCells':
      b = Buffer.allocUnsafe(h + 6);
      b.writeUIntBE(o.n ?? 0, h, 6);
      break;
    case 'lock': {
      const id = Buffer.from(o.id ?? '', 'utf8');
      b = Buffer.allocUnsafe(h + 6 + id.length);
      b.writeUIntBE(o.exp ?? 0, h, 6);
      id.copy(b, h + 6);
      break;
    }
  }
  outcomeHeader(b, OUTCOME_KINDS.indexOf(o.k), t, o.d);
  return b;
}

/** encodeOutcome of a write, without the string round trip of its timestamp. */
function encodeWriteOutcome(ts: bigint, t: number, digest: Buffer): Buffer {
  const b = Buffer.allocUnsafe(8 + DIGEST_BYTES + 8);
  b.writeBigUInt64BE(ts, outcomeHeader(b, 0 /* OUTCOME_KINDS.indexOf('write') */, t, digest));
  return b;
}

function decodeOutcome(v: Buffer): Outcome {
  if (v[0] !== 1 && v[0] !== 2) return JSON.parse(v.toString('utf8')) as Outcome;
  const k = OUTCOME_KINDS[v[1]!];
  const t = v.readUIntBE(2, 6);
  const h = v[0] === 2 ? 8 + DIGEST_BYTES : 8;
  const d = v[0] === 2 ? { d: v.subarray(8, h) } : {};
  switch (k) {
    case 'write':
      return { k, t, ts: v.readBigUInt64BE(h).toString(), ...d };
    case 'cas':
      return { k, t, ok: v[h] === 1, ts: v.readBigUInt64BE(h + 1).toString(), ...d };
    case 'deleteRow':
    case 'deleteCells':
      return { k, t, n: v.readUIntBE(h, 6), ...d };
    case 'lock':
      return { k, t, exp: v.readUIntBE(h, 6), id: v.toString('utf8', h + 6), ...d };
    default:
      throw new Error(`unknown request-id record kind ${v[1]}`);
  }
}

/** How a refusal names each kind of request. */
const KIND_NAMES: Record<Outcome['k'], string> = { write: 'write', deleteRow: 'deleteRow', deleteCells: 'deleteCells', cas: 'checkAndMutate', lock: 'lockRow' };

/**
 * A stored request-id record. Refuses an id that was used for another kind
 * of operation (INVALID_ARGUMENT), and one used for the same kind with a
 * different request (CONFLICT: the request is well-formed, the stored record
 * is what it clashes with, and retrying it cannot help). A record without a
 * digest (older code) is honoured without that check.
 */
function parseOutcome(v: Buffer, requestId: string, kind: Outcome['k'], row: string, digest: Buffer | undefined): Outcome {
  const prior = decodeOutcome(v);
  if (prior.k !== kind) throw invalidArgument(`requestId: ${JSON.stringify(requestId)} was already used for a ${prior.k} on row ${show(row)}`);
  if (prior.d && digest && !prior.d.equals(digest)) {
    const what = KIND_NAMES[kind];
    throw new CairnError(
      'CONFLICT',
      `requestId: ${JSON.stringify(requestId)} was already used for a different ${what} on row ${show(row)}; a retry must resend the same request, and a new ${what} needs a new request id`,
    );
  }
  return prior;
}

/** crypto.hash (Node >= 20.12) is the one-shot form: no Hash object per call. */
const oneShot = (crypto as unknown as { hash?: (alg: string, data: Uint8Array, enc: 'buffer') => Buffer }).hash;

/**
 * The digest of what a request asks of one row (the row is the record's key):
 * the first 16 bytes of SHA-256 of a canonical encoding of the request's
 * content, whatever its framing on the wire. A retry of the same request has
 * the same digest however the caller regroups the rows of a WriteRows.
 */
function requestDigest(canonical: Buffer): Buffer {
  return (oneShot ? oneShot('sha256', canonical, 'buffer') : crypto.createHash('sha256').update(canonical).digest()).subarray(0, DIGEST_BYTES);
}

/** Cells in canonical form: per cell, column (u32 length, UTF-8), timestamp as sent (u64), value (u32 length, bytes). */
const cellsBytes = (cells: readonly CellIn[]): number => cells.reduce((n, c) => n + 16 + Buffer.byteLength(c.column, 'utf8') + c.value.length, 0);

function putCells(b: Buffer, o: number, cells: readonly CellIn[]): number {
  for (const c of cells) {
    const w = b.write(c.column, o + 4, 'utf8');
    b.writeUInt32BE(w, o);
    o += 4 + w;
    b.writeBigUInt64BE(c.timestampUs, o);
    b.writeUInt32BE(c.value.length, o + 8);
    b.set(c.value, o + 12);
    o += 12 + c.value.length;
  }
  return o;
}

/** Length-prefixed bytes or UTF-8 text, for the smaller digests. */
function lengthPrefixed(x: string | Uint8Array): Buffer {
  const body = typeof x === 'string' ? Buffer.from(x, 'utf8') : x;
  const b = Buffer.allocUnsafe(4 + body.length);
  b.writeUInt32BE(body.length, 0);
  b.set(body, 4);
  return b;
}

/** A row's entries in one WriteRows, in request order: per entry, replace (u8), cell count (u32), cells. */
function writeDigest(segs: readonly { cells: readonly CellIn[]; replace: boolean }[]): Buffer {
  let n = 0;
  for (const s of segs) n += 5 + cellsBytes(s.cells);
  const b = Buffer.allocUnsafe(n);
  let o = 0;
  for (const s of segs) {
    b[o] = s.replace ? 1 : 0;
    b.writeUInt32BE(s.cells.length, o + 1);
    o = putCells(b, o + 5, s.cells);
  }
  return requestDigest(b);
}

/** CheckAndMutate: check column, expect absent (u8), expected value (only when not absent: it is ignored then), replace, cells. */
function casDigest(req: CheckAndMutateIn): Buffer {
  const head = Buffer.concat([lengthPrefixed(req.checkColumn), Buffer.from([req.expectAbsent ? 1 : 0]), lengthPrefixed(req.expectAbsent ? Buffer.alloc(0) : req.expectedValue)]);
  const b = Buffer.allocUnsafe(head.length + 5 + cellsBytes(req.cells));
  head.copy(b, 0);
  b[head.length] = req.replace ? 1 : 0;
  b.writeUInt32BE(req.cells.length, head.length + 1);
  putCells(b, head.length + 5, req.cells);
  return requestDigest(b);
}

/** DeleteCells: the set of columns (sorted, each once), then the time range if any (start, end as u64). */
function deleteCellsDigest(columns: readonly string[], timeRange: TimeRangeIn | undefined): Buffer {
  const parts = [...new Set(columns)].sort().map(lengthPrefixed);
  const tr = Buffer.alloc(17);
  if (timeRange) {
    tr[0] = 1;
    tr.writeBigUInt64BE(timeRange.startUs, 1);
    tr.writeBigUInt64BE(timeRange.endUs, 9);
  }
  return requestDigest(Buffer.concat([...parts, tr]));
}

/** LockRow: the lease length. */
function lockDigest(leaseMs: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(leaseMs), 0);
  return requestDigest(b);
}

/** A value as a Buffer, without copying when it already is one (values from gRPC are). */
const toBuffer = (v: Uint8Array): Buffer => (Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength));

function u64(n: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(n, 0);
  return b;
}

function encodeStats(rows: number, bytes: number): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeBigUInt64BE(BigInt(rows), 0);
  b.writeBigUInt64BE(BigInt(bytes), 8);
  return b;
}

