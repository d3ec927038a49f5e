/**
 * Row plans: what one row mutation commits, and `settle`, which makes plans
 * exact before they are queued: old value lengths, each row's bucket stats
 * delta, and the ops that keep the derived records (cell counts and
 * newest-version pointers) in step with the cells. Also the per-row locks
 * every plan is made under, and the building of plans: cell writes (with
 * replace), a WriteRows' entries merged by row, and raw ops from a move.
 * Kept apart from the group-commit writer: this is where the store's
 * invariants are computed, under the row locks; the writer only applies
 * what settle decided.
 */
import type { HybridClock } from './clock.js';
import { bucketOfKey, cellColumnKey, cellKey, cellKeyTimestamp, cellTimestampTail, columnBounds, decodeCellTail, hasCellKeyShape, prefixBounds, rowIndexKey } from './keys.js';
import { entries, hex, keysIn, lookup, startsWith, toBuffer, type BatchOp, type RawOp, type Subs } from './store-db.js';
import type { CellIn } from './validate.js';

const INDEX_AFTER = 8; // cells in a plan before it indexes them in a Map

/** A cell count in as few big-endian bytes as it needs (1 for most rows). */
export const encodeCount = (n: number): Buffer => {
  const len = n < 0x100 ? 1 : n < 0x10000 ? 2 : n < 0x1000000 ? 3 : n < 0x100000000 ? 4 : 6;
  const b = Buffer.allocUnsafe(len);
  b.writeUIntBE(n, 0, len);
  return b;
};
export const decodeCount = (b: Buffer): number => b.readUIntBE(0, b.length);

/**
 * What one row mutation commits. Cell ops are kept as the final state per key
 * (later ops on the same key win), with the old value length when the planner
 * already knows it (null = known absent, undefined = not known yet); settle()
 * reads the rest. Kept in parallel arrays: most plans touch one or two cells,
 * so a linear search beats hashing every key into a Map (which is built only
 * for plans with many cells).
 */
export class RowPlan {
  readonly keys: Buffer[] = [];
  readonly values: (Buffer | null)[] = [];
  /** Old value length per key: a number when stored, null when known absent, undefined when unknown. */
  readonly old: (number | null | undefined)[] = [];
  readonly other: RawOp[] = [];
  /** Per key: put with a timestamp the clock just drew (above every stored timestamp). */
  readonly fresh: boolean[] = [];
  /** Set when the plan deletes every stored cell of the row (deleteRow). */
  coversRow = false;
  /** The row's stored cell count, when the planner read it under the row's lock (else settle reads it). */
  count: number | undefined = undefined;
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
export interface Delta {
  bucket: number;
  rows: number;
  bytes: number;
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

/** One caller of RowLocks.acquire: the keys it holds or waits for, and how many it still waits for. */
interface LockHolder {
  keys: string[];
  waiting: number;
  grant: (() => void) | null;
  released: boolean;
}

/**
 * Per-row async locks, FIFO per row. A multi-row caller joins every row's
 * queue in one synchronous step, so no two callers can wait on each other in
 * a cycle. Uncontended rows cost one map entry (no promise per row): a
 * 1,000-row write takes its locks with one promise in all.
 */
export class RowLocks {
  /** The holder of each locked key. */
  private readonly holders = new Map<string, LockHolder>();
  /** The callers waiting for each contended key, in arrival order. */
  private readonly queues = new Map<string, LockHolder[]>();

  acquire(keys: readonly string[]): Promise<() => void> {
    const me: LockHolder = { keys: [], waiting: 0, grant: null, released: false };
    for (const k of keys) {
      const h = this.holders.get(k);
      if (h === undefined) {
        this.holders.set(k, me);
        me.keys.push(k);
      } else if (h !== me) {
        let q = this.queues.get(k);
        if (q === undefined) this.queues.set(k, (q = []));
        if (q[q.length - 1] === me) continue; // the same key twice in this call: queued once
        q.push(me);
        me.keys.push(k);
        me.waiting++;
      }
    }
    const release = (): void => this.release(me);
    if (me.waiting === 0) return Promise.resolve(release);
    return new Promise((resolve) => (me.grant = () => resolve(release)));
  }

  private release(me: LockHolder): void {
    if (me.released) return;
    me.released = true;
    for (const k of me.keys) {
      const q = this.queues.get(k);
      if (q === undefined) {
        this.holders.delete(k);
        continue;
      }
      const next = q.shift()!;
      if (q.length === 0) this.queues.delete(k);
      this.holders.set(k, next);
      if (--next.waiting === 0) next.grant!();
    }
  }
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
 * - `rowindex`: per stored row, its number of stored cells (absent = 0),
 *   keyed by the row-index key (keys.ts: row key first, then the hash), so
 *   the same record that makes "does this row exist?" a point read makes a
 *   row-key prefix scan a seek, at no extra write per row. It is put when
 *   the count goes from 0 to more and deleted when it goes back to 0, so
 *   dropping a range (deleteRange) deletes its entries row by row;
 * - `latest`: per column (its column key prefix), the timestamp tail of its
 *   newest stored cell (absent = no cell), which makes an exact-column read
 *   two point reads instead of an iterator.
 * A path that writes cells without settle must keep both itself.
 * So they always describe the stored cells. None moves with a range: a
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
export async function settle(subs: Subs, plans: RowPlan[]): Promise<{ deltas: Delta[]; derived: BatchOp[] }> {
  let unknownKeys: Buffer[] | null = null;
  for (const plan of plans) {
    for (let i = 0; i < plan.keys.length; i++) if (plan.old[i] === undefined) (unknownKeys ??= []).push(plan.keys[i]!);
  }
  if (unknownKeys) {
    const vals = await lookup(subs.cells, unknownKeys);
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
    deltas[k] = { bucket: bucketOfKey(plan.prefix), rows: 0, bytes };
    if (cells !== 0 && plan.count === undefined) (countKeys ??= []).push(rowIndexKey(plan.prefix));
    planPointers(subs, plan, derived, pending);
  }
  const recs = countKeys ? await lookup(subs.rowindex, countKeys) : null;
  let j = 0;
  for (let k = 0; k < plans.length; k++) {
    if (change[k] === 0) continue;
    const plan = plans[k]!;
    let before: number;
    let key: Buffer;
    if (plan.count !== undefined) {
      before = plan.count;
      key = rowIndexKey(plan.prefix);
    } else {
      const rec = recs![j];
      key = countKeys![j++]!;
      before = rec === undefined ? 0 : decodeCount(rec);
    }
    const after = before + change[k]!;
    if (after < 0) throw new Error(`cell count of a row would go negative (${before} ${change[k]}): a bug`);
    deltas[k]!.rows = before === 0 && after > 0 ? 1 : before > 0 && after === 0 ? -1 : 0;
    derived.push(after === 0 ? { type: 'del', sublevel: subs.rowindex, key } : { type: 'put', sublevel: subs.rowindex, key, value: encodeCount(after) });
  }
  if (pending.length > 0) {
    const ptrs = await lookup(subs.latest, pending.map((c) => c.colKey));
    for (let j = 0; j < pending.length; j++) {
      const c = pending[j]!;
      const ptr = ptrs[j];
      let newest = c.newest;
      if (ptr !== undefined) {
        const deletedOld = c.dels !== null && c.dels.some((t) => t.equals(ptr));
        newest = newer(newest, deletedOld ? await newestStoredExcept(subs, c.colKey, c.dels!) : ptr);
      }
      if (newest === null) {
        if (ptr !== undefined) derived.push({ type: 'del', sublevel: subs.latest, key: c.colKey });
      } else if (ptr === undefined || !newest.equals(ptr)) {
        derived.push({ type: 'put', sublevel: subs.latest, key: c.colKey, value: newest });
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
function planPointers(subs: Subs, plan: RowPlan, derived: BatchOp[], pending: ColumnWork[]): void {
  const n = plan.keys.length;
  if (n === 0) return;
  const groups: ColumnWork[] = [];
  for (let i = 0; i < n; i++) {
    const value = plan.values[i];
    const existed = plan.old[i] !== null;
    if (!value && !existed) continue; // deleting a missing key changes nothing
    const key = plan.keys[i]!;
    const colKey = cellColumnKey(key);
    const tail = cellTimestampTail(key);
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
      derived.push({ type: 'put', sublevel: subs.latest, key: g.colKey, value: g.newest! });
    } else if (cleared) {
      derived.push({ type: 'del', sublevel: subs.latest, key: g.colKey });
    } else {
      pending.push(g);
    }
  }
}

/** The timestamp tail of the newest stored cell of a column whose tail is not in `except`, or null. */
async function newestStoredExcept(subs: Subs, colKey: Buffer, except: Buffer[]): Promise<Buffer | null> {
  for await (const key of keysIn(subs.cells, prefixBounds(colKey))) {
    const tail = cellTimestampTail(key);
    if (!except.some((t) => t.equals(tail))) return Buffer.from(tail);
  }
  return null;
}

/** Adds the puts (and replace deletes) of row writes to a plan; returns the timestamp used for timestamp-0 cells. */
export function planWrite(subs: Subs, clock: HybridClock, plan: RowPlan, segs: { cells: CellIn[]; replace: boolean }[]): bigint | Promise<bigint> {
  let needsNow = false;
  let replace = false;
  for (const s of segs) {
    if (s.replace) replace = true;
    for (const c of s.cells) {
      if (c.timestampUs === 0n) needsNow = true;
      else clock.observe(c.timestampUs);
    }
  }
  // Drawn after observing, so it is above every explicit timestamp in the call, and above every stored one.
  const now = needsNow ? clock.now() : 0n;
  if (replace) return planReplace(subs, plan, segs, now);
  for (const s of segs) planPuts(plan, s.cells, now);
  return now;
}

function planPuts(plan: RowPlan, cells: CellIn[], now: bigint): void {
  for (const c of cells) {
    const fresh = c.timestampUs === 0n; // a clock timestamp is above everything stored: the key cannot exist
    plan.put(cellKey(plan.prefix, c.column, fresh ? now : c.timestampUs), toBuffer(c.value), fresh);
  }
}

async function planReplace(subs: Subs, plan: RowPlan, segs: { cells: CellIn[]; replace: boolean }[], now: bigint): Promise<bigint> {
  for (const s of segs) {
    if (s.replace) {
      for (const column of new Set(s.cells.map((c) => c.column))) {
        const b = columnBounds(plan.prefix, column);
        plan.dropPlannedPuts(b.gte);
        for await (const [key, value] of entries(subs.cells, b)) plan.del(key, value.length);
        (plan.cleared ??= []).push(b.gte);
      }
    }
    planPuts(plan, s.cells, now);
  }
  return now;
}

/**
 * The rows of one WriteRows, each once: entries for the same row are merged
 * (so one request-id record covers all of them). `slotOf` maps each entry to
 * its row; null when the rows are distinct.
 */
export function mergeRowWrites<W extends { row: string }>(rows: W[]): { names: string[]; segsOf: W[][]; slotOf: number[] | null } {
  let names: string[];
  let segsOf: W[][];
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
  return { names, segsOf, slotOf };
}

/**
 * Row plans for raw per-row ops (an exported chunk or a logged batch), one
 * plan per row; every cell timestamp is observed by the clock. Keys and
 * values are used as given (no copies).
 */
export function planRawOps(ops: RawOp[], prefixes: Buffer[], clock: HybridClock): RowPlan[] {
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
      // A well-formed cell key ends with the column terminator and a timestamp tail; decodeCellTail names what is wrong otherwise.
      if (!hasCellKeyShape(key, p.length)) decodeCellTail(key, p.length);
      if (op.value) {
        clock.observe(cellKeyTimestamp(key));
        plan.put(key, op.value);
      } else {
        plan.del(key);
      }
    } else {
      plan.other.push(op.value ? { sublevel: op.sublevel, key: op.key, value: op.value } : { sublevel: op.sublevel, key: op.key });
    }
  }
  return [...plans.values()];
}
