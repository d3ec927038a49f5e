/**
 * Opening a store's LevelDB state: the bucket stats records, the derived
 * per-row records (cell counts, newest-version pointers) and the clock's
 * floor, each rebuilt from the cells when its marker is missing (a new store,
 * a store from before the record existed, or one whose records were lost);
 * reopening after a full disk; and the slow full-read checks of those records
 * for tests. Everything here reads the whole store or runs once per open.
 */
import type { Level } from 'level';
import { HASH_SPACE_END } from '../common/hash.js';
import { bucketOf, type HashRange } from '../common/ranges.js';
import type { HybridClock } from './clock.js';
import {
  bucketStatsBounds,
  bucketStatsKey,
  cellColumnKey,
  cellTimestampTail,
  decodeCellTail,
  hashOfKey,
  hashRangeBounds,
  META_CLOCK,
  META_LATEST_MARKER,
  META_ROWCELLS_MARKER,
  META_ROWINDEX_MARKER,
  META_STATS_MARKER,
  rowIndexKey,
  rowPrefixOf,
} from './keys.js';
import { entries, hex, keysIn, metaKeysIn, type BatchOp, type Subs } from './store-db.js';
import { decodeCount, encodeCount } from './store-plan.js';
import { decodeClockMark, encodeStats, type BucketStats, type GroupWriter, type RangeStats } from './store-writer.js';

/**
 * Loads (or rebuilds) the bucket stats and the derived records. Returns the
 * clock mark stored in meta and the floor for the store's clock: that mark,
 * or the largest stored timestamp when the mark or the stats were missing.
 */
export async function loadStore(db: Level<Buffer, Buffer>, subs: Subs, stats: BucketStats): Promise<{ persistedClock: bigint; clockFloor: bigint }> {
  const marker = await subs.meta.get(META_STATS_MARKER);
  const clockRec = await subs.meta.get(META_CLOCK);
  const scanned = marker === undefined || clockRec === undefined ? await scanCells(subs, {}) : undefined;
  if (marker === undefined) {
    // Stats lost (or a new store): rebuild them exactly from the cells, replacing any partial records.
    const ops: BatchOp[] = [];
    for await (const key of metaKeysIn(subs.meta, bucketStatsBounds())) ops.push({ type: 'del', sublevel: subs.meta, key });
    for (const [b, [rows, bytes]] of scanned!.buckets) {
      ops.push({ type: 'put', sublevel: subs.meta, key: bucketStatsKey(b), value: encodeStats(rows, bytes) });
    }
    ops.push({ type: 'put', sublevel: subs.meta, key: META_STATS_MARKER, value: Buffer.from('1') });
    await db.batch<Buffer | string, Buffer>(ops, { sync: true });
    for (const [b, [rows, bytes]] of scanned!.buckets) stats.set(b, rows, bytes);
  } else {
    await stats.load(subs.meta);
  }
  // A store from before the row-key index has its counts keyed by row prefix (`rc`): built once, here.
  if ((await subs.meta.get(META_ROWINDEX_MARKER)) === undefined || (await subs.meta.get(META_LATEST_MARKER)) === undefined) await rebuildDerived(db, subs);
  const persistedClock = decodeClockMark(clockRec);
  let floor = persistedClock;
  if (scanned && scanned.maxTs > floor) floor = scanned.maxTs;
  return { persistedClock, clockFloor: floor };
}

/**
 * Writes the derived per-row records (the row-key index with each row's cell
 * count, newest-version pointers) from the cells: a store from before they
 * existed, or one whose records were lost. In batches; the markers go last,
 * so a crash part-way makes the next open start over. The cell counts of
 * stores from before the index (`rc`, by row prefix) are dropped.
 */
async function rebuildDerived(db: Level<Buffer, Buffer>, subs: Subs): Promise<void> {
  await subs.rowindex.clear();
  await subs.latest.clear();
  await subs.oldRowcells.clear();
  await subs.meta.del(META_ROWCELLS_MARKER);
  let ops: BatchOp[] = [];
  let prefix: Buffer | null = null;
  let colKey: Buffer | null = null;
  let n = 0;
  const flushRow = (): void => {
    if (prefix) ops.push({ type: 'put', sublevel: subs.rowindex, key: rowIndexKey(prefix), value: encodeCount(n) });
  };
  for await (const key of keysIn(subs.cells, {})) {
    // Keys come column by column, newest version first: the first of each column is its newest.
    const c = cellColumnKey(key);
    if (!colKey || !colKey.equals(c)) {
      colKey = Buffer.from(c);
      ops.push({ type: 'put', sublevel: subs.latest, key: colKey, value: Buffer.from(cellTimestampTail(key)) });
    }
    const p = rowPrefixOf(key);
    if (prefix && prefix.equals(p)) {
      n++;
      continue;
    }
    flushRow();
    if (ops.length >= 10_000) {
      await db.batch<Buffer | string, Buffer>(ops, { sync: false });
      ops = [];
    }
    prefix = Buffer.from(p);
    n = 1;
  }
  flushRow();
  ops.push({ type: 'put', sublevel: subs.meta, key: META_ROWINDEX_MARKER, value: Buffer.from('1') });
  ops.push({ type: 'put', sublevel: subs.meta, key: META_LATEST_MARKER, value: Buffer.from('1') });
  await db.batch<Buffer | string, Buffer>(ops, { sync: true });
}

/**
 * After a full disk: closes and opens LevelDB again, reloads the stats
 * records (a batch whose sync failed may turn out applied after all: its
 * stats ride in it) and the clock mark.
 */
export async function reopenStore(db: Level<Buffer, Buffer>, subs: Subs, writer: GroupWriter, clock: () => HybridClock): Promise<void> {
  await writer.flushing; // every queued write was refused; let the loop end
  if (db.status !== 'closed') await db.close();
  await db.open();
  // Sublevels close with their database and do not reopen with it.
  for (const sub of Object.values(subs)) await sub.open();
  await writer.stats.load(subs.meta);
  const rec = await subs.meta.get(META_CLOCK);
  const stored = decodeClockMark(rec);
  clock().observe(stored);
  if (stored > writer.persistedClock) writer.persistedClock = stored;
}

/** Reads every cell in bounds: rows and bytes per bucket, and the largest timestamp. */
async function scanCells(subs: Subs, bounds: { gte?: Buffer; lt?: Buffer }): Promise<{ buckets: Map<number, [number, number]>; maxTs: bigint }> {
  const buckets = new Map<number, [number, number]>();
  let maxTs = 0n;
  let lastPrefix: Buffer | null = null;
  for await (const [key, value] of entries(subs.cells, bounds)) {
    const prefix = rowPrefixOf(key);
    const b = bucketOf(hashOfKey(prefix));
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

/** Counts rows and bytes in a range by reading every cell: slow, for checks and tests. */
export async function recountStats(subs: Subs, range: HashRange = { start: 0n, end: HASH_SPACE_END }): Promise<RangeStats> {
  const { buckets } = await scanCells(subs, hashRangeBounds(range));
  let rows = 0;
  let bytes = 0;
  for (const [r, b] of buckets.values()) {
    rows += r;
    bytes += b;
  }
  return { rows, bytes };
}

/**
 * Compares the derived records (cell counts, newest-version pointers, row-key index) with
 * the cells, reading everything: slow, for checks and tests. Returns the
 * differences (empty when exact). Run it with no writes in flight.
 */
export async function verifyDerived(subs: Subs): Promise<string[]> {
  const counts = new Map<string, number>();
  const newest = new Map<string, string>();
  for await (const key of keysIn(subs.cells, {})) {
    const p = hex(rowIndexKey(rowPrefixOf(key)));
    counts.set(p, (counts.get(p) ?? 0) + 1);
    const c = hex(cellColumnKey(key));
    if (!newest.has(c)) newest.set(c, hex(cellTimestampTail(key)));
  }
  const out: string[] = [];
  const show = (k: string): string => Buffer.from(k, 'latin1').toString('hex');
  for await (const [k, v] of entries(subs.rowindex, {})) {
    const want = counts.get(hex(k));
    if (want !== decodeCount(v)) out.push(`row ${show(hex(k))}: count record ${decodeCount(v)}, cells ${want ?? 0}`);
    counts.delete(hex(k));
  }
  for (const [k, n] of counts) out.push(`row ${show(k)}: no count record, cells ${n}`);
  for await (const [k, v] of entries(subs.latest, {})) {
    const want = newest.get(hex(k));
    if (want !== hex(v)) out.push(`column ${show(hex(k))}: pointer ${v.toString('hex')}, newest cell ${want === undefined ? 'none' : show(want)}`);
    newest.delete(hex(k));
  }
  for (const [k, t] of newest) out.push(`column ${show(k)}: no pointer, newest cell ${show(t)}`);
  return out;
}
