/**
 * The group-commit writer and the bucket stats it keeps. Every commit of the
 * store goes through one GroupWriter: it merges queued entries (settled row
 * plans, or plain ops) into a single LevelDB batch, one batch in flight at a
 * time, so batches apply in order, and it writes each touched bucket's stats
 * record and the clock's high-water mark in the same batch as the data they
 * describe. Listeners (`onCommit`) see each batch's per-row ops after it is
 * applied and before any of its writers is acknowledged. While the disk is
 * full (see store-disk.ts) it refuses entries without touching LevelDB.
 */
import type { Level } from 'level';
import { isNoSpaceError, type CairnError } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';
import { BUCKET_COUNT, bucketSpan, isBucketAligned, type HashRange } from '../common/ranges.js';
import type { HybridClock } from './clock.js';
import { bucketOfStatsKey, bucketStatsBounds, bucketStatsKey, META_CLOCK } from './keys.js';
import { settle, type Delta, type RowPlan } from './store-plan.js';
import { WriteBatch, type BatchOp, type RawOp, type Subs } from './store-db.js';

const MAX_GROUP_OPS = 20_000; // ops merged into one group commit (at least one entry always goes)

export interface RangeStats {
  rows: number;
  bytes: number;
}

/** Exact live rows and bytes (cell key + value) per bucket, as the stats records in meta hold them. */
export class BucketStats {
  readonly rows = new Float64Array(BUCKET_COUNT);
  readonly bytes = new Float64Array(BUCKET_COUNT);
  totalRows = 0;
  totalBytes = 0;

  set(b: number, rows: number, bytes: number): void {
    this.totalRows += rows - this.rows[b]!;
    this.totalBytes += bytes - this.bytes[b]!;
    this.rows[b] = rows;
    this.bytes[b] = bytes;
  }

  /** Sets every bucket's counts from its stats record (absent = empty). */
  async load(meta: Subs['meta']): Promise<void> {
    this.rows.fill(0);
    this.bytes.fill(0);
    this.totalRows = 0;
    this.totalBytes = 0;
    const it = meta.iterator(bucketStatsBounds());
    try {
      for (;;) {
        const chunk = await it.nextv(1024);
        if (chunk.length === 0) break;
        for (const [k, v] of chunk) this.set(bucketOfStatsKey(k), Number(v.readBigUInt64BE(0)), Number(v.readBigUInt64BE(8)));
      }
    } finally {
      await it.close();
    }
  }

  /** Rows and bytes in a bucket-aligned range. */
  range(range: HashRange): RangeStats {
    const [first, end] = span(range);
    let rows = 0;
    let bytes = 0;
    for (let b = first; b < end; b++) {
      rows += this.rows[b]!;
      bytes += this.bytes[b]!;
    }
    return { rows, bytes };
  }

  /** Non-empty buckets in a bucket-aligned range. */
  buckets(range: HashRange): { bucket: number; rows: number; bytes: number }[] {
    const [first, end] = span(range);
    const out: { bucket: number; rows: number; bytes: number }[] = [];
    for (let b = first; b < end; b++) {
      if (this.rows[b] !== 0 || this.bytes[b] !== 0) out.push({ bucket: b, rows: this.rows[b]!, bytes: this.bytes[b]! });
    }
    return out;
  }
}

function span(range: HashRange): [number, number] {
  if (!isBucketAligned(range.start) || !(range.end === HASH_SPACE_END || isBucketAligned(range.end)) || range.end <= range.start) {
    throw new RangeError(`range [${range.start}, ${range.end}) is not bucket-aligned`);
  }
  return bucketSpan(range);
}

export function encodeStats(rows: number, bytes: number): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeBigUInt64BE(BigInt(rows), 0);
  b.writeBigUInt64BE(BigInt(bytes), 8);
  return b;
}

/** The clock's high-water mark record (META_CLOCK): u64 BE microseconds. */
function encodeClockMark(n: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(n, 0);
  return b;
}

/** The mark in a clock record; 0 when there is none. */
export function decodeClockMark(rec: Buffer | undefined): bigint {
  return rec === undefined ? 0n : rec.readBigUInt64BE(0);
}

/** One entry of the group-commit queue: settled row plans, or plain ops (meta records, request-id sweeps). */
export interface Pending {
  plans: RowPlan[];
  /** Ops on the derived records (cell counts, newest-version pointers) of the plans' rows. */
  derived: BatchOp[];
  deltas: Delta[];
  ops: BatchOp[];
  /** What listeners see of `ops`. */
  raw: RawOp[];
  sync: boolean;
  /** Where its writes come from (see WriteSource); plain ops are the shard's upkeep. */
  from?: WriteSource['from'];
  resolve: () => void;
  reject: (err: unknown) => void;
}

const NO_OPS: BatchOp[] = [];
export const NO_RAW: RawOp[] = [];
const NO_PLANS: RowPlan[] = [];

const NO_DELTAS: Delta[] = [];

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

/**
 * Where a batch's writes come from. A client's (writes, deletes, row leases):
 * on a replicated range only its group here may number them. A primary's log,
 * applied on a follower with the follower's new log positions (`records`):
 * never numbered again. The shard's upkeep (moves' imports, deleting a range
 * it no longer holds or before a snapshot): numbered where a group here holds
 * the range, else each copy's own.
 */
export type WriteSource = { from: 'client' } | { from: 'primary'; records: BatchOp[] } | { from: 'upkeep' };

/**
 * Numbers a batch's writes in the log of each replicated range it touches
 * (replicator.ts).
 */
export interface Sequencer {
  /**
   * True when `refusal` would refuse nothing and `number` would number
   * nothing now (no range is replicated): the writer then skips both. Asked
   * in the same tick as they would be.
   */
  idle?(): boolean;
  /**
   * Why a client's write cannot be numbered now: a range it touches is
   * replicated and this shard holds no group for it (it is not, or no longer,
   * or not yet its primary). Asked of each such entry just before `number`, in
   * the same tick, so a write that passes is numbered.
   */
  refusal(raw: RawOp[]): Error | undefined;
  /**
   * Sees the batch's per-row ops before the batch is written, returns the
   * records of the new log positions to write in the same batch, and is told
   * whether the batch was written.
   */
  number(raw: RawOp[], sync: boolean): { ops: BatchOp[]; written(ok: boolean): void } | undefined;
}

/** What the writer asks of the store that owns it. */
export interface WriterHost {
  /** The store's clock (replaced at open), whose high-water mark rides in every batch. */
  clock(): HybridClock;
  /** The refusal while the disk is full, else null. */
  diskFull(): CairnError | null;
  /** Puts the store in the full state after a write failed for lack of space; returns the refusal. */
  enterDiskFull(cause: unknown): CairnError;
}

export class GroupWriter {
  readonly stats = new BucketStats();
  readonly listeners = new Set<(ops: RawOp[]) => void>();
  sequencer: Sequencer | undefined;
  /** The clock mark last written (or read at open). */
  persistedClock = 0n;
  /** The running flush loop, if any: awaited before LevelDB is closed or reopened. */
  flushing: Promise<void> | null = null;
  private queue: Pending[] = [];

  constructor(
    private readonly db: Level<Buffer, Buffer>,
    private readonly subs: Subs,
    private readonly host: WriterHost,
  ) {}

  /** Queues an entry for the group-commit writer; refused at once while the disk is full. */
  push(p: Pending): void {
    const full = this.host.diskFull();
    if (full) return p.reject(full);
    this.queue.push(p);
    if (!this.flushing) this.flushing = this.flushLoop();
  }

  /** Settles plans (reads what stats need, under the caller's row locks) and commits them in one batch. */
  async commitPlans(plans: RowPlan[], sync: boolean, source: WriteSource): Promise<void> {
    const records = source.from === 'primary' ? source.records : NO_OPS;
    if (plans.length === 0 && !records.length) return;
    const { deltas, derived } = await settle(this.subs, plans);
    let any = records.length > 0;
    for (const p of plans) if (p.keys.length > 0 || p.other.length > 0) any = true;
    if (!any) return;
    await new Promise<void>((resolve, reject) => this.push({ plans, derived, deltas, ops: records, raw: NO_RAW, sync, from: source.from, resolve, reject }));
  }

  /** Queues plain ops (meta records, request-id sweeps); `raw` is what listeners see of them. */
  enqueue(ops: BatchOp[], raw: RawOp[], sync: boolean, deltas: Delta[] = NO_DELTAS): Promise<void> {
    return new Promise<void>((resolve, reject) => this.push({ plans: NO_PLANS, derived: NO_OPS, deltas, ops, raw, sync, resolve, reject }));
  }

  /** The group-commit writer: one batch in flight; each batch takes everything queued meanwhile. */
  private async flushLoop(): Promise<void> {
    try {
      await undefined; // let entries queued in the same tick join the first batch
      while (this.queue.length > 0) {
        const full = this.host.diskFull();
        if (full) {
          // Nothing more may reach LevelDB until it is reopened (see DiskFullGuard.enter).
          const refused = this.queue;
          this.queue = [];
          for (const p of refused) p.reject(full);
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
          const refusal = isNoSpaceError(err) ? this.host.enterDiskFull(err) : err;
          for (const p of group) p.reject(refusal);
        }
      }
    } finally {
      this.flushing = null;
    }
  }

  /** The sequencer's view of a group: the per-row ops of the entries written here first (not those a primary sent). */
  private sequence(group: Pending[]): ReturnType<Sequencer["number"]> {
    const own = group.filter((p) => p.from !== 'primary');
    if (own.length === 0) return undefined;
    const raw = rawOf(own);
    return raw.length ? this.sequencer!.number(raw, own.some((p) => p.sync)) : undefined;
  }

  /**
   * Refuses the client writes that no replication group may number now
   * (defect: such a write was stored unnumbered and acknowledged, on no other
   * copy).
   */
  private admitted(group: Pending[]): Pending[] {
    const sequencer = this.sequencer;
    if (!sequencer || sequencer.idle?.()) return group;
    return group.filter((p) => {
      if (p.from !== 'client') return true;
      const refusal = sequencer.refusal(rawOf([p]));
      if (refusal) p.reject(refusal);
      return !refusal;
    });
  }

  private async writeGroup(all: Pending[]): Promise<void> {
    // No await from here to the sequencer: what `admitted` let through is what it numbers.
    const group = this.admitted(all);
    if (group.length === 0) return;
    const batch = new WriteBatch(this.db);
    let sequenced: ReturnType<Sequencer['number']>;
    let touched: Map<number, { rows: number; bytes: number }>;
    let high: bigint;
    let sync = false;
    try {
      touched = new Map();
      const { cells, meta } = this.subs;
      for (const p of group) {
        for (let k = 0; k < p.plans.length; k++) {
          const plan = p.plans[k]!;
          for (let i = 0; i < plan.keys.length; i++) {
            const value = plan.values[i];
            if (value) batch.put(cells, plan.keys[i]!, value);
            else batch.del(cells, plan.keys[i]!);
          }
          for (const op of plan.other) {
            if (op.value) batch.put(this.subs[op.sublevel], op.key, op.value);
            else batch.del(this.subs[op.sublevel], op.key);
          }
        }
        for (const op of p.derived) batch.op(op);
        for (const op of p.ops) batch.op(op);
        for (const d of p.deltas) {
          if (d.rows === 0 && d.bytes === 0) continue;
          let t = touched.get(d.bucket);
          if (!t) touched.set(d.bucket, (t = { rows: this.stats.rows[d.bucket]!, bytes: this.stats.bytes[d.bucket]! }));
          t.rows += d.rows;
          t.bytes += d.bytes;
        }
        sync ||= p.sync;
      }
      // Stats records and the clock mark ride in the same batch as the data they describe.
      for (const [b, t] of touched) {
        if (t.rows < 0 || t.bytes < 0) throw new Error(`stats of bucket ${b} would go negative (${t.rows} rows, ${t.bytes} bytes): a bug`);
        if (t.rows === 0 && t.bytes === 0) batch.del(meta, bucketStatsKey(b));
        else batch.put(meta, bucketStatsKey(b), encodeStats(t.rows, t.bytes));
      }
      high = this.host.clock().high();
      if (high > this.persistedClock) batch.put(meta, META_CLOCK, encodeClockMark(high));
      // A replicated range's log positions ride in the same batch as the writes they number.
      sequenced = this.sequencer && !this.sequencer.idle?.() ? this.sequence(group) : undefined;
    } catch (err) {
      batch.discard();
      throw err;
    }
    if (sequenced) for (const op of sequenced.ops) batch.op(op);
    try {
      await batch.write(sync);
    } catch (err) {
      sequenced?.written(false);
      throw err;
    }
    sequenced?.written(true);
    for (const [b, t] of touched) this.stats.set(b, t.rows, t.bytes);
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
}
