/**
 * The shard's storage engine: rows of timestamped cells in LevelDB.
 *
 * Layout (one LevelDB per data directory, one process per directory):
 * - `cells`, `leases`, `reqids`: the per-row sublevels, keyed as in keys.ts, so
 *   a hash range is one key range in each and everything of a row moves with it;
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
import { randomUUID } from 'node:crypto';
import { Level, type BatchOperation } from 'level';
import { CairnError, invalidArgument } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';
import { BUCKET_COUNT, bucketOf, bucketSpan, isBucketAligned, type HashRange } from '../common/ranges.js';
import { HybridClock } from './clock.js';
import {
  cellKey,
  columnBounds,
  columnPrefixBounds,
  columnTimeBounds,
  decodeCellTail,
  decodeScanToken,
  encodeScanToken,
  hashRangeBounds,
  leaseKey,
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
}

export const DEFAULT_REQUEST_ID_TTL_MS = 10 * 60 * 1000;
/** Rows per scan page when the caller sends limit 0. */
export const DEFAULT_SCAN_PAGE = 1000;
/** A scan page stops after examining this many rows, so a selective prefix cannot hold one call for a whole shard. */
export const SCAN_EXAMINE_BUDGET = 10_000;

const CHUNK = 256; // entries per nextv
const MAX_GROUP_OPS = 20_000; // ops merged into one group commit (at least one entry always goes)
const READ_CONCURRENCY = 32;

const META_STATS_MARKER = 'stats/v1'; // present once the bucket records are complete and exact
const META_STATS_PREFIX = 'stats/b/';
const META_CLOCK = 'clock';
const META_USER_PREFIX = 'x/'; // getMeta/putMeta keys live here, apart from the store's own

const bucketMetaKey = (b: number): string => META_STATS_PREFIX + b.toString(16).padStart(4, '0');

function sublevels(db: Level<Buffer, Buffer>) {
  const bin = { keyEncoding: 'buffer', valueEncoding: 'buffer' } as const;
  return {
    cells: db.sublevel<Buffer, Buffer>('cells', bin),
    leases: db.sublevel<Buffer, Buffer>('leases', bin),
    reqids: db.sublevel<Buffer, Buffer>('reqids', bin),
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
 * already knows it (null = known absent); settle() reads the rest.
 */
class RowPlan {
  readonly cells = new Map<string, { key: Buffer; value: Buffer | null }>();
  readonly known = new Map<string, number | null>();
  readonly other: RawOp[] = [];
  /** Set when the plan deletes every cell of the row (deleteRow): nothing is left outside it. */
  coversRow = false;
  constructor(readonly prefix: Buffer) {}

  put(key: Buffer, value: Buffer, knownAbsent = false): void {
    const k = hex(key);
    this.cells.set(k, { key, value });
    if (knownAbsent && !this.known.has(k)) this.known.set(k, null);
  }

  /** Deletes a cell; `oldLength` is its value's length when the caller read it. */
  del(key: Buffer, oldLength?: number): void {
    const k = hex(key);
    this.cells.set(k, { key, value: null });
    if (oldLength !== undefined && !this.known.has(k)) this.known.set(k, oldLength);
  }

  /** Deletes the cells this plan itself put under a key prefix (replace within one call). */
  dropPlannedPuts(prefix: Buffer): void {
    for (const op of this.cells.values()) if (op.value && startsWith(op.key, prefix)) op.value = null;
  }
}

/** The stats change of one row, in its bucket. */
interface Delta {
  bucket: number;
  rows: number;
  bytes: number;
}

/** One entry of the group-commit queue. */
interface Pending {
  ops: BatchOp[];
  raw: RawOp[];
  deltas: Delta[];
  sync: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
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
  constructor(private readonly it: ReturnType<BinSub['iterator']>) {}

  async peek(): Promise<[Buffer, Buffer] | undefined> {
    if (this.i < this.buf.length) return this.buf[this.i];
    if (this.ended) return undefined;
    this.buf = (await this.it.nextv(CHUNK)) as [Buffer, Buffer][];
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

  private constructor(
    readonly dir: string,
    private readonly db: Level<Buffer, Buffer>,
    private readonly subs: Subs,
    opts: StoreOptions,
  ) {
    this.ttlMs = opts.requestIdTtlMs ?? DEFAULT_REQUEST_ID_TTL_MS;
  }

  static async open(dir: string, opts: StoreOptions = {}): Promise<ShardStore> {
    const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    try {
      await db.open();
    } catch (err) {
      const e = err as { code?: string; cause?: { code?: string } };
      if (e.code === 'LEVEL_LOCKED' || e.cause?.code === 'LEVEL_LOCKED') {
        throw new CairnError('CONFLICT', `data directory ${dir} is in use by another process`);
      }
      throw err;
    }
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
    await this.drain();
    await this.flushing;
    await this.db.close();
  }

  // ---------------------------------------------------------------- writes

  /** Writes cells, atomically per row. Returns per row the clock timestamp given to its timestamp-0 cells (0n when it had none). */
  async writeRows(rows: RowWriteIn[], o: WriteOpts): Promise<bigint[]> {
    // Entries for the same row are merged so one request id record covers all of them.
    const byRow = new Map<string, RowWriteIn[]>();
    for (const r of rows) {
      const segs = byRow.get(r.row);
      if (segs) segs.push(r);
      else byRow.set(r.row, [r]);
    }
    const results = new Map<string, bigint>();
    await Promise.all(
      [...byRow].map(async ([row, segs]) => {
        results.set(row, await this.writeRow(row, segs, o));
      }),
    );
    return rows.map((r) => results.get(r.row)!);
  }

  private writeRow(row: string, segs: RowWriteIn[], o: WriteOpts): Promise<bigint> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      const prior = await this.priorOutcome(prefix, o.requestId, 'write', row);
      if (prior) return BigInt(prior.ts ?? '0');
      const plan = new RowPlan(prefix);
      const ts = await this.planWrite(plan, segs);
      this.record(plan, o.requestId, { k: 'write', ts: ts.toString() });
      await this.commitPlans([plan], o.sync);
      return ts;
    });
  }

  /** Adds the puts (and replace deletes) of row writes to a plan; returns the timestamp used for timestamp-0 cells. */
  private async planWrite(plan: RowPlan, segs: { cells: CellIn[]; replace: boolean }[]): Promise<bigint> {
    let needsNow = false;
    for (const s of segs) {
      for (const c of s.cells) {
        if (c.timestampUs === 0n) needsNow = true;
        else this.clock.observe(c.timestampUs);
      }
    }
    // Drawn after observing, so it is above every explicit timestamp in the call.
    const now = needsNow ? this.clock.now() : 0n;
    for (const s of segs) {
      if (s.replace) {
        for (const column of new Set(s.cells.map((c) => c.column))) {
          const b = columnBounds(plan.prefix, column);
          plan.dropPlannedPuts(b.gte);
          for await (const [key, value] of this.entries(this.subs.cells, b)) plan.del(key, value.length);
        }
      }
      for (const c of s.cells) {
        const fresh = c.timestampUs === 0n; // a clock timestamp is above everything stored: the key cannot exist
        plan.put(cellKey(plan.prefix, c.column, fresh ? now : c.timestampUs), Buffer.from(c.value), fresh);
      }
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
      if ((await this.subs.leases.get(leaseKey(prefix))) !== undefined) plan.other.push({ sublevel: 'leases', key: leaseKey(prefix) });
      this.record(plan, o.requestId, { k: 'deleteRow', n });
      await this.commitPlans([plan], o.sync);
      return n;
    });
  }

  /** Deletes the given columns of a row, every version or only those in the time range. Returns the number of cells deleted. */
  deleteCells(row: string, columns: string[], timeRange: TimeRangeIn | undefined, o: WriteOpts): Promise<number> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      const prior = await this.priorOutcome(prefix, o.requestId, 'deleteCells', row);
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
      }
      this.record(plan, o.requestId, { k: 'deleteCells', n });
      if (n > 0 || o.requestId) await this.commitPlans([plan], o.sync);
      return n;
    });
  }

  /** Checks the newest version of one column and writes the cells only if the check holds; atomic with other writes to the row. */
  checkAndMutate(req: CheckAndMutateIn, o: WriteOpts): Promise<{ succeeded: boolean; timestampUs: bigint }> {
    const prefix = rowPrefix(req.row);
    return this.mutate([prefix], async () => {
      const prior = await this.priorOutcome(prefix, o.requestId, 'cas', req.row);
      if (prior) return { succeeded: prior.ok === true, timestampUs: BigInt(prior.ts ?? '0') };
      let newest: Buffer | undefined;
      for await (const [, value] of this.entries(this.subs.cells, columnBounds(prefix, req.checkColumn), { limit: 1 })) newest = value;
      const succeeded = req.expectAbsent ? newest === undefined : newest !== undefined && newest.equals(req.expectedValue);
      const plan = new RowPlan(prefix);
      const timestampUs = succeeded ? await this.planWrite(plan, [req]) : 0n;
      this.record(plan, o.requestId, { k: 'cas', ok: succeeded, ts: timestampUs.toString() });
      if (succeeded || o.requestId) await this.commitPlans([plan], o.sync);
      return { succeeded, timestampUs };
    });
  }

  // ---------------------------------------------------------------- leases

  /** Takes a lease on a row; CONFLICT while another unexpired lease is held. Leases are written with sync: a lost lease would break exclusion. */
  lockRow(row: string, leaseMs: number, requestId: string): Promise<{ leaseId: string; expiresAtMs: number }> {
    const prefix = rowPrefix(row);
    return this.mutate([prefix], async () => {
      const prior = await this.priorOutcome(prefix, requestId, 'lock', row);
      if (prior) return { leaseId: prior.id!, expiresAtMs: prior.exp! };
      const now = Date.now();
      const cur = await this.getLease(prefix);
      if (cur && cur.exp > now) {
        throw new CairnError('CONFLICT', `row ${show(row)} is leased by another holder until ${new Date(cur.exp).toISOString()}`);
      }
      const lease: Lease = { id: randomUUID(), exp: now + leaseMs };
      const plan = new RowPlan(prefix);
      plan.other.push({ sublevel: 'leases', key: leaseKey(prefix), value: Buffer.from(JSON.stringify(lease)) });
      this.record(plan, requestId, { k: 'lock', id: lease.id, exp: lease.exp });
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
    const v = await this.subs.leases.get(leaseKey(prefix));
    return v === undefined ? undefined : (JSON.parse(v.toString('utf8')) as Lease);
  }

  // ---------------------------------------------------------------- reads

  /** Cells of one row, by column then newest first. */
  async readRow(row: string, filter: CellFilterIn): Promise<CellOut[]> {
    return this.readCells(rowPrefix(row), filter);
  }

  /** The rows that have matching cells, in request order. */
  async readRows(rows: string[], filter: CellFilterIn): Promise<RowCellsOut[]> {
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
      // Exact columns: one bounded read each, in byte order so the result is ordered by column.
      const cols = [...new Set(f.columns)].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
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
   * One page of rows whose key starts with rowPrefix, in storage order inside
   * [hashStart, hashEnd), resuming strictly after the token's row. A null
   * nextToken is the only end signal: a page may be short (or empty) when the
   * examine budget runs out first.
   */
  async scan(req: ScanIn): Promise<{ rows: RowCellsOut[]; nextToken: Buffer | null }> {
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
    const cursor = new Cursor(this.subs.cells.iterator(rangeOpts({ gte, lt: window.lt })));
    let last: Buffer | null = null;
    let examined = 0;
    try {
      for (;;) {
        let e = await cursor.peek();
        if (!e) return { rows, nextToken: null };
        if (last && (rows.length >= limit || examined >= SCAN_EXAMINE_BUDGET)) return { rows, nextToken: encodeScanToken(last) };
        const prefix = Buffer.from(rowPrefixOf(e[0])); // copy: the key may share memory with the chunk
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

  /** The clock's high-water mark: above every stored timestamp. */
  clockHigh(): bigint {
    return this.clock.high();
  }

  // ---------------------------------------------------------------- meta

  /** A record stored with putMeta (shard id, cluster map), or undefined. */
  async getMeta<T = unknown>(key: string): Promise<T | undefined> {
    const v = await this.subs.meta.get(META_USER_PREFIX + key);
    return v === undefined ? undefined : (JSON.parse(v.toString('utf8')) as T);
  }

  /** Stores a small JSON value (no bigints: encode them as strings); synced by default, since these records say who the shard is and what it owns. */
  putMeta(key: string, value: unknown, sync = true): Promise<void> {
    const v = Buffer.from(JSON.stringify(value), 'utf8');
    return this.track(this.enqueue([{ type: 'put', sublevel: this.subs.meta, key: META_USER_PREFIX + key, value: v }], [], [], sync));
  }

  delMeta(key: string, sync = true): Promise<void> {
    return this.track(this.enqueue([{ type: 'del', sublevel: this.subs.meta, key: META_USER_PREFIX + key }], [], [], sync));
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
    const prefixes = ops.map((op) => Buffer.from(rowPrefixOf(op.key)));
    return this.mutate(prefixes, async () => {
      const plans = new Map<string, RowPlan>();
      for (const [i, op] of ops.entries()) {
        const p = prefixes[i]!;
        let plan = plans.get(hex(p));
        if (!plan) plans.set(hex(p), (plan = new RowPlan(p)));
        if (op.sublevel === 'cells') {
          if (op.value) {
            this.clock.observe(decodeCellTail(op.key, p.length).timestampUs);
            plan.put(Buffer.from(op.key), Buffer.from(op.value));
          } else {
            plan.del(Buffer.from(op.key));
          }
        } else {
          plan.other.push({ sublevel: op.sublevel, key: Buffer.from(op.key), ...(op.value ? { value: Buffer.from(op.value) } : {}) });
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
            [],
            false,
          ),
        );
        n += dels.length;
        dels = [];
      };
      for await (const [key, value] of this.entries(this.subs.reqids, {})) {
        let t = -Infinity;
        try {
          t = (JSON.parse(value.toString('utf8')) as Outcome).t;
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

  /** The outcome recorded for this request id on this row, if any. */
  private async priorOutcome(prefix: Buffer, requestId: string, kind: Outcome['k'], row: string): Promise<Outcome | undefined> {
    if (!requestId) return undefined;
    const v = await this.subs.reqids.get(requestIdKey(prefix, requestId));
    if (v === undefined) return undefined;
    const prior = JSON.parse(v.toString('utf8')) as Outcome;
    if (prior.k !== kind) throw invalidArgument(`requestId: ${JSON.stringify(requestId)} was already used for a ${prior.k} on row ${show(row)}`);
    return prior;
  }

  private record(plan: RowPlan, requestId: string, outcome: Omit<Outcome, 't'>): void {
    if (!requestId) return;
    const value = Buffer.from(JSON.stringify({ ...outcome, t: Date.now() }));
    plan.other.push({ sublevel: 'reqids', key: requestIdKey(plan.prefix, requestId), value });
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

  /** Runs fn holding the locks of the given rows; the lock queue is joined synchronously, at call time. */
  private mutate<T>(prefixes: Buffer[], fn: () => Promise<T>): Promise<T> {
    try {
      this.assertOpen();
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
    const ops: BatchOp[] = [];
    const raw: RawOp[] = [];
    const deltas: Delta[] = [];
    for (const plan of plans) {
      deltas.push(await this.settle(plan));
      for (const { key, value } of plan.cells.values()) {
        ops.push(value ? { type: 'put', sublevel: this.subs.cells, key, value } : { type: 'del', sublevel: this.subs.cells, key });
        raw.push(value ? { sublevel: 'cells', key, value } : { sublevel: 'cells', key });
      }
      for (const op of plan.other) {
        const sublevel = this.subs[op.sublevel];
        ops.push(op.value ? { type: 'put', sublevel, key: op.key, value: op.value } : { type: 'del', sublevel, key: op.key });
        raw.push(op);
      }
    }
    if (ops.length > 0) await this.enqueue(ops, raw, deltas, sync);
  }

  /**
   * The exact stats change of a plan. Bytes: new minus old (key + value) of
   * every touched cell. Rows: a row counts while it has a cell, so the count
   * changes only when the plan puts into a row that had no cell outside the
   * plan, or deletes the last cells of one.
   */
  private async settle(plan: RowPlan): Promise<Delta> {
    const unknown = [...plan.cells.keys()].filter((k) => !plan.known.has(k));
    if (unknown.length > 0) {
      const vals = await this.subs.cells.getMany(unknown.map((k) => plan.cells.get(k)!.key));
      unknown.forEach((k, i) => plan.known.set(k, vals[i] === undefined ? null : vals[i]!.length));
    }
    let bytes = 0;
    let anyOld = false;
    let anyNew = false;
    for (const [k, { key, value }] of plan.cells) {
      const old = plan.known.get(k) ?? null;
      if (old !== null) {
        bytes -= key.length + old;
        anyOld = true;
      }
      if (value) {
        bytes += key.length + value.length;
        anyNew = true;
      }
    }
    let rows = 0;
    if (anyNew !== anyOld) {
      const untouched = plan.coversRow ? false : await this.rowHasCellOutside(plan.prefix, plan.cells);
      if (!untouched) rows = anyNew ? 1 : -1;
    }
    return { bucket: bucketOf(plan.prefix.readBigUInt64BE(0)), rows, bytes };
  }

  /** True when the row has a stored cell whose key is not in `touched`. */
  private async rowHasCellOutside(prefix: Buffer, touched: Map<string, unknown>): Promise<boolean> {
    const it = this.subs.cells.keys(rangeOpts(rowBounds(prefix)));
    try {
      for (;;) {
        const keys = (await it.nextv(16)) as Buffer[];
        if (keys.length === 0) return false;
        if (keys.some((k) => !touched.has(hex(k)))) return true;
      }
    } finally {
      await it.close();
    }
  }

  private enqueue(ops: BatchOp[], raw: RawOp[], deltas: Delta[], sync: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ ops, raw, deltas, sync, resolve, reject });
      if (!this.flushing) this.flushing = this.flushLoop();
    });
  }

  /** The group-commit writer: one batch in flight; each batch takes everything queued meanwhile. */
  private async flushLoop(): Promise<void> {
    try {
      await undefined; // let entries queued in the same tick join the first batch
      while (this.queue.length > 0) {
        let count = 0;
        let take = 0;
        while (take < this.queue.length && (take === 0 || count + this.queue[take]!.ops.length <= MAX_GROUP_OPS)) {
          count += this.queue[take]!.ops.length;
          take++;
        }
        const group = this.queue.splice(0, take);
        try {
          await this.writeGroup(group);
        } catch (err) {
          // Nothing of the group was applied (the batch is atomic): fail every writer in it.
          for (const p of group) p.reject(err);
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
    for (const p of group) {
      for (const op of p.ops) ops.push(op);
      for (const d of p.deltas) {
        if (d.rows === 0 && d.bytes === 0) continue;
        const t = touched.get(d.bucket) ?? { rows: this.statRows[d.bucket]!, bytes: this.statBytes[d.bucket]! };
        t.rows += d.rows;
        t.bytes += d.bytes;
        touched.set(d.bucket, t);
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
    await this.db.batch<Buffer | string, Buffer>(ops, { sync });
    for (const [b, t] of touched) {
      this.totalRows += t.rows - this.statRows[b]!;
      this.totalBytes += t.bytes - this.statBytes[b]!;
      this.statRows[b] = t.rows;
      this.statBytes[b] = t.bytes;
    }
    if (high > this.persistedClock) this.persistedClock = high;
    const raw = group.flatMap((p) => p.raw);
    if (raw.length > 0) {
      for (const l of this.listeners) {
        try {
          l(raw);
        } catch {
          // A broken listener must not fail writes that are already committed.
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
    this.persistedClock = clockRec === undefined ? 0n : clockRec.readBigUInt64BE(0);
    let floor = this.persistedClock;
    if (scanned && scanned.maxTs > floor) floor = scanned.maxTs;
    this.clock = new HybridClock(floor);
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

