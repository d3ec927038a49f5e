/**
 * The row-key index (sublevel `rk`) on real LevelDB in temp directories: it
 * names exactly the stored rows, each with its cell count, after every kind of mutation (writes,
 * deletes, replaces, a range moved out and in, a follower's snapshot), after
 * a reopen, and after an open of a store that never had it; and a prefix scan
 * by it returns exactly the rows a full scan filtered by the prefix returns,
 * each range's rows in row-key order, through resume tokens, also when the
 * range is split or merged between pages.
 */
import { afterAll, describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { hashFromBytes, HASH_SPACE_END, rowHash } from '../common/hash.js';
import type { HashRange } from '../common/ranges.js';
import { decodeKeyOrderToken, decodeRowPrefix, encodeKeyOrderToken, encodeScanToken, isKeyOrderToken, rowPrefix, rowPrefixOfIndexKey } from './keys.js';
import { SCAN_EXAMINE_BUDGET, ShardStore, WALK_MIN_ROWS, type CellFilterIn, type WriteOpts } from './store.js';

const dirs: string[] = [];
const opened: ShardStore[] = [];
afterAll(async () => {
  for (const s of opened) await s.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cairn-rowindex-'));
  dirs.push(d);
  return d;
}
async function openStore(dir?: string): Promise<ShardStore> {
  const s = await ShardStore.open(dir ?? (await tempDir()));
  opened.push(s);
  return s;
}

const W: WriteOpts = { requestId: '', sync: false };
const f = (x: Partial<CellFilterIn> = {}): CellFilterIn => ({ columns: [], columnPrefix: '', allVersions: false, limit: 0, ...x });
const LOW: HashRange = { start: 0n, end: 1n << 63n };
const HIGH: HashRange = { start: 1n << 63n, end: HASH_SPACE_END };
const put = (s: ShardStore, row: string, column = 'c', value = row, timestampUs = 0n, replace = false) =>
  s.writeRows([{ row, replace, cells: [{ column, value: Buffer.from(value), timestampUs }] }], W);
const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));
const inRange = (row: string, r: HashRange): boolean => rowHash(row) >= r.start && rowHash(row) < r.end;

/** Every row with a cell, by a full scan (hash order, no prefix): what the index must name. */
async function fullScanRows(s: ShardStore, range: HashRange = { start: 0n, end: HASH_SPACE_END }): Promise<string[]> {
  const out: string[] = [];
  let token: Buffer | undefined;
  do {
    const page = await s.scan({ rowPrefix: '', filter: f(), limit: 1000, resumeToken: token, hashStart: range.start, hashEnd: range.end });
    out.push(...page.rows.map((r) => r.row));
    token = page.nextToken ?? undefined;
  } while (token);
  return out;
}

/** A prefix scan of one window in pages of `limit`, as one list. */
async function prefixScan(s: ShardStore, prefix: string, limit: number, range: HashRange = { start: 0n, end: HASH_SPACE_END }): Promise<string[]> {
  const out: string[] = [];
  let token: Buffer | undefined;
  let hashStart = range.start;
  for (let pages = 0; ; pages++) {
    if (pages > 100_000) throw new Error('scan does not end');
    const page = await s.scan({ rowPrefix: prefix, filter: f(), limit, resumeToken: token, hashStart, hashEnd: range.end });
    expect(page.rows.length).toBeLessThanOrEqual(limit);
    out.push(...page.rows.map((r) => r.row));
    if (!page.nextToken) return out;
    token = page.nextToken;
    hashStart = hashFromBytes(token); // the token's first 8 bytes: where the scan continues
  }
}

/** The rows the index names, read from the closed store's LevelDB. */
async function indexedRows(dir: string): Promise<string[]> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  try {
    const out: string[] = [];
    for await (const key of db.sublevel<Buffer, Buffer>('rk', { keyEncoding: 'buffer', valueEncoding: 'buffer' }).keys()) out.push(decodeRowPrefix(rowPrefixOfIndexKey(key)).row);
    return out;
  } finally {
    await db.close();
  }
}

const sorted = (rows: string[]): string[] => [...rows].sort(byteOrder);

async function expectIndexExact(s: ShardStore): Promise<void> {
  expect(await s.verifyDerived()).toEqual([]);
}

describe('the row-key index', () => {
  test('names exactly the stored rows after writes, deletes and replaces, and after a reopen', async () => {
    const dir = await tempDir();
    const s = await ShardStore.open(dir);
    const rows = ['a', 'a\u0000', 'a\u0000b', 'ab', 'a/b/c', 'é', '\u{1F600}x', 'z'];
    for (const r of rows) await put(s, r);
    await put(s, 'a', 'd', 'more'); // a second cell: still one row
    await put(s, 'ab', 'c', 'replaced', 0n, true); // a replace keeps the row
    await expectIndexExact(s);
    expect(await prefixScan(s, 'a', 2)).toEqual(['a', 'a\u0000', 'a\u0000b', 'a/b/c', 'ab']); // one window: key order

    await s.deleteRow('a\u0000', W);
    await s.deleteCells('z', ['c'], undefined, W); // its only column: the row is gone
    await s.deleteCells('a', ['c'], undefined, W); // one of two columns: the row stays
    const t = (await put(s, 'tr', 'c', 'old', 5n))[0];
    expect(t).toBe(0n);
    await put(s, 'tr', 'c', 'new', 9n);
    await s.deleteCells('tr', ['c'], { startUs: 5n, endUs: 6n }, W); // one version of two: stays
    await expectIndexExact(s);
    const live = ['a', 'a\u0000b', 'ab', 'a/b/c', 'é', '\u{1F600}x', 'tr'];
    expect(sorted(await fullScanRows(s))).toEqual(sorted(live));
    expect(await prefixScan(s, 'a\u0000', 10)).toEqual(['a\u0000b']);
    await s.deleteCells('tr', ['c'], { startUs: 9n, endUs: 10n }, W); // the last version
    await expectIndexExact(s);
    await s.close();
    expect(sorted(await indexedRows(dir))).toEqual(sorted(live.filter((r) => r !== 'tr')));

    const again = await openStore(dir);
    await expectIndexExact(again);
    expect(await prefixScan(again, 'a', 1)).toEqual(['a', 'a\u0000b', 'a/b/c', 'ab']);
  });

  test('follows a range moving out (deleteRange) and in (applyRaw), and a follower taking a snapshot', async () => {
    const src = await openStore();
    const dstDir = await tempDir();
    const dst = await ShardStore.open(dstDir);
    const rows = Array.from({ length: 120 }, (_, i) => `m/${i}`);
    await src.writeRows(rows.map((row) => ({ row, replace: false, cells: [{ column: 'c', value: Buffer.from(row), timestampUs: 0n }, { column: 'd', value: Buffer.from('x'), timestampUs: 0n }] })), W);
    // Move LOW from src to dst as a transfer does: a snapshot copy applied raw, then the source drops its copy.
    for await (const chunk of src.exportRange(LOW, 512)) await dst.applyRaw(chunk, { sync: false });
    await src.deleteRange(LOW);
    const low = rows.filter((r) => inRange(r, LOW));
    const high = rows.filter((r) => inRange(r, HIGH));
    expect(low.length).toBeGreaterThan(20);
    expect(high.length).toBeGreaterThan(20);
    await expectIndexExact(src);
    await expectIndexExact(dst);
    expect(await prefixScan(src, 'm/', 7)).toEqual(sorted(high));
    expect(await prefixScan(dst, 'm/', 7)).toEqual(sorted(low));

    // A follower that held a stale copy of HIGH takes a snapshot: it drops the range, then applies the primary's copy.
    await dst.writeRows(['m/stale-1', 'm/stale-2', ...high.slice(0, 5)].map((row) => ({ row, replace: false, cells: [{ column: 'old', value: Buffer.from('x'), timestampUs: 0n }] })), W);
    await dst.deleteRange(HIGH);
    for await (const chunk of src.exportRange(HIGH, 512)) await dst.applyReplicated(chunk, [], { sync: false });
    await expectIndexExact(dst);
    expect(await prefixScan(dst, 'm/', 1000)).toEqual(sorted(rows)); // one window: every row, in key order
    expect(await prefixScan(dst, 'm/stale', 1000)).toEqual(sorted(['m/stale-1', 'm/stale-2'].filter((r) => inRange(r, LOW))));
    await dst.close();
    expect(sorted(await indexedRows(dstDir))).toEqual(sorted([...rows, ...['m/stale-1', 'm/stale-2'].filter((r) => inRange(r, LOW))]));
  });

  test('a store without the index (made before it, or with it lost part-way) gets it rebuilt once at open', async () => {
    const dir = await tempDir();
    const s = await ShardStore.open(dir);
    const rows = Array.from({ length: 300 }, (_, i) => `u/${i % 7}/${i}`);
    await s.writeRows(rows.map((row) => ({ row, replace: false, cells: [{ column: 'c', value: Buffer.from(row), timestampUs: 0n }] })), W);
    await s.close();
    // As a store from before the index: no `rk` records and no marker, its cell counts under `rc` by row
    // prefix (marker rc/v1); plus a stale entry from a partial build.
    const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const bin = { keyEncoding: 'buffer', valueEncoding: 'buffer' } as const;
    const rk = db.sublevel<Buffer, Buffer>('rk', bin);
    const rc = db.sublevel<Buffer, Buffer>('rc', bin);
    const first = (await rk.keys({ limit: 1 }).all())[0]!;
    for await (const [k, v] of rk.iterator()) await rc.put(rowPrefixOfIndexKey(k), v);
    await rk.clear();
    await rk.put(Buffer.concat([Buffer.from('gone'), first.subarray(first.length - 10)]), Buffer.from([1]));
    const meta = db.sublevel<string, Buffer>('meta', { keyEncoding: 'utf8', valueEncoding: 'buffer' });
    await meta.del('rk/v2');
    await meta.put('rc/v1', Buffer.from('1'));
    await db.close();
    expect(await indexedRows(dir)).toEqual(['gone']);

    const again = await ShardStore.open(dir);
    await expectIndexExact(again);
    expect(await prefixScan(again, 'u/3/', 10)).toEqual(sorted(rows.filter((r) => r.startsWith('u/3/'))));
    await again.close();
    expect(sorted(await indexedRows(dir))).toEqual(sorted(rows));
    // Built once: the marker is there, and the old counts are gone.
    const after = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const afterMeta = after.sublevel<string, Buffer>('meta', { keyEncoding: 'utf8', valueEncoding: 'buffer' });
    expect(await afterMeta.get('rk/v2')).toBeDefined();
    expect(await afterMeta.get('rc/v1')).toBeUndefined();
    expect(await after.sublevel<Buffer, Buffer>('rc', { keyEncoding: 'buffer', valueEncoding: 'buffer' }).keys().all()).toEqual([]);
    await after.close();
  });
});

describe('prefix scans by the index', () => {
  // Keys chosen to share prefixes at every byte, with NULs, multi-byte characters and a long run.
  const ROWS = [
    ...Array.from({ length: 150 }, (_, i) => `aff4:/C.${i % 5}/fs/${i}`),
    ...Array.from({ length: 40 }, (_, i) => `aff4:/C.1${'\u0000'.repeat(i % 3)}/${i}`),
    ...Array.from({ length: 30 }, (_, i) => `é/${i}`),
    'a',
    'aff4',
    'aff4:',
    '\u{1F600}',
  ];
  let store: ShardStore;
  const ready = (async () => {
    store = await openStore();
    await store.writeRows(ROWS.map((row) => ({ row, replace: false, cells: [{ column: 'c', value: Buffer.from(row), timestampUs: 0n }] })), W);
  })();

  test('returns exactly the rows a full scan filtered by the prefix returns, in key order per window, through any page size', async () => {
    await ready;
    const all = await fullScanRows(store);
    expect(sorted(all)).toEqual(sorted(ROWS));
    const prefixes = fc.oneof(
      fc.constantFrom(...ROWS).chain((r) => fc.integer({ min: 1, max: Buffer.byteLength(r) }).map((n) => Buffer.from(r).subarray(0, n).toString('utf8'))),
      fc.constantFrom('aff4:/C.1', 'aff4:/C.1\u0000', 'b', '\u0000', 'é', 'aff4:/C.9'),
    );
    const cuts = fc.uniqueArray(fc.bigInt({ min: 1n, max: HASH_SPACE_END - 1n }), { maxLength: 3 }).map((c) => [0n, ...c.sort((a, b) => (a < b ? -1 : 1)), HASH_SPACE_END]);
    await fc.assert(
      fc.asyncProperty(prefixes, cuts, fc.integer({ min: 1, max: 60 }), async (prefix, cut, limit) => {
        fc.pre(prefix.length > 0);
        const seen: string[] = [];
        for (let i = 0; i + 1 < cut.length; i++) {
          const window = { start: cut[i]!, end: cut[i + 1]! };
          const got = await prefixScan(store, prefix, limit, window);
          expect(got).toEqual(sorted(all.filter((r) => r.startsWith(prefix) && inRange(r, window))));
          seen.push(...got);
        }
        expect(sorted(seen)).toEqual(sorted(all.filter((r) => r.startsWith(prefix))));
      }),
      { numRuns: 60 },
    );
  });

  test('a resume token survives a split or a merge of the range between pages: every row once', async () => {
    await ready;
    const want = sorted(ROWS.filter((r) => r.startsWith('aff4:/C.')));
    const mid = 1n << 63n;
    // Walk as the SDK does: each page in the segment of the range that holds the position, by the map of that moment.
    const walk = async (cutsAt: (page: number) => bigint[]): Promise<string[]> => {
      const out: string[] = [];
      let hash = 0n;
      let token: Buffer | undefined;
      for (let page = 0; hash < HASH_SPACE_END; page++) {
        const cuts = cutsAt(page);
        const end = cuts.find((c) => c > hash)!;
        const res = await store.scan({ rowPrefix: 'aff4:/C.', filter: f(), limit: 9, resumeToken: token, hashStart: hash, hashEnd: end });
        out.push(...res.rows.map((r) => r.row));
        if (res.nextToken) {
          expect(isKeyOrderToken(res.nextToken)).toBe(true);
          token = res.nextToken;
          hash = hashFromBytes(token);
        } else {
          token = undefined;
          hash = end;
        }
      }
      return out;
    };
    const split = await walk((page) => (page < 2 ? [HASH_SPACE_END] : [mid >> 1n, mid, HASH_SPACE_END]));
    expect(sorted(split)).toEqual(want);
    expect(new Set(split).size).toBe(split.length);
    const merged = await walk((page) => (page < 2 ? [mid >> 2n, mid, HASH_SPACE_END] : [HASH_SPACE_END]));
    expect(sorted(merged)).toEqual(want);
    expect(new Set(merged).size).toBe(merged.length);
    // Any map per page (ranges split and merged at random between pages): still every row once.
    const cutSets = fc.array(fc.uniqueArray(fc.bigInt({ min: 1n, max: HASH_SPACE_END - 1n }), { maxLength: 4 }).map((c) => [...c.sort((a, b) => (a < b ? -1 : 1)), HASH_SPACE_END]), { minLength: 1, maxLength: 6 });
    await fc.assert(
      fc.asyncProperty(cutSets, async (maps) => {
        const got = await walk((page) => maps[page % maps.length]!);
        expect(sorted(got)).toEqual(want);
        expect(new Set(got).size).toBe(got.length);
      }),
      { numRuns: 40 },
    );
    // A token carried past a split names the rest of the old range from the new range's start.
    const first = await store.scan({ rowPrefix: 'aff4:/C.', filter: f(), limit: 3, hashStart: 0n, hashEnd: HASH_SPACE_END });
    const carried = await store.scan({ rowPrefix: 'aff4:/C.', filter: f(), limit: 1000, resumeToken: first.nextToken!, hashStart: 0n, hashEnd: mid });
    expect(carried.nextToken).not.toBeNull();
    expect(decodeKeyOrderToken(carried.nextToken!)).toEqual({ start: mid, parts: [{ end: HASH_SPACE_END, afterKey: Buffer.from(first.rows[2]!.row) }] });
  });

  test('a hash-order token from before the index finishes its window walking in hash order, then the next window seeks', async () => {
    await ready;
    const prefix = 'aff4:/C.';
    const mid = 1n << 63n;
    const all = await fullScanRows(store);
    const low = all.filter((r) => r.startsWith(prefix) && rowHash(r) < mid); // full scan order: by hash
    const old = encodeScanToken(rowPrefix(low[4]!)); // as an older shard answered a page of this prefix scan
    const seen: string[] = [];
    let token: Buffer | undefined = old;
    do {
      const page = await store.scan({ rowPrefix: prefix, filter: f(), limit: 5, resumeToken: token, hashStart: 0n, hashEnd: mid });
      seen.push(...page.rows.map((r) => r.row));
      if (page.nextToken) expect(isKeyOrderToken(page.nextToken)).toBe(false);
      token = page.nextToken ?? undefined;
    } while (token);
    expect(seen).toEqual(low.slice(5));
    expect(await prefixScan(store, prefix, 7, { start: mid, end: HASH_SPACE_END })).toEqual(sorted(all.filter((r) => r.startsWith(prefix) && rowHash(r) >= mid)));
  });

  test('rows of other ranges count against the examine budget, and the scan still ends with every row', async () => {
    const s = await openStore();
    const many = Array.from({ length: SCAN_EXAMINE_BUDGET + 500 }, (_, i) => `p/${i}`);
    for (let i = 0; i < many.length; i += 2000) {
      await s.writeRows(many.slice(i, i + 2000).map((row) => ({ row, replace: false, cells: [{ column: 'c', value: Buffer.from('v'), timestampUs: 0n }] })), W);
    }
    // A narrow window holds few of them: the first page stops at the budget rather than reading the whole index.
    const window = { start: 0n, end: 1n << 56n };
    const want = sorted(many.filter((r) => inRange(r, window)));
    expect(want.length).toBeLessThan(200);
    const first = await s.scan({ rowPrefix: 'p/', filter: f(), limit: 1000, hashStart: window.start, hashEnd: window.end });
    expect(first.nextToken).not.toBeNull();
    expect(first.rows.length).toBeLessThan(want.length);
    expect(await prefixScan(s, 'p/', 1000, window)).toEqual(want);
  });

  test('a prefix matching most rows of a big shard walks each window in storage order; a selective one seeks', async () => {
    const s = await openStore();
    const rows = WALK_MIN_ROWS + 2000;
    const small = Math.floor(rows / 50); // 2%: the index wins; 98% in a window of half the rows: the walk does (walkThreshold)
    const names = Array.from({ length: rows }, (_, i) => (i < small ? `small/${i}` : `big/${i}`));
    for (let i = 0; i < names.length; i += 2000) {
      await s.writeRows(names.slice(i, i + 2000).map((row) => ({ row, replace: false, cells: [{ column: 'c', value: Buffer.from('v'), timestampUs: 0n }] })), W);
    }
    const all = await fullScanRows(s); // storage (hash) order
    for (const window of [LOW, HIGH]) {
      // Broad: the first page already answers with a hash-order token, and the window's rows come in storage order.
      const first = await s.scan({ rowPrefix: 'big/', filter: f(), limit: 500, hashStart: window.start, hashEnd: window.end });
      expect(first.nextToken).not.toBeNull();
      expect(isKeyOrderToken(first.nextToken!)).toBe(false);
      expect(await prefixScan(s, 'big/', 500, window)).toEqual(all.filter((r) => r.startsWith('big/') && inRange(r, window)));
      // Selective: by the index, in row-key order.
      expect(await prefixScan(s, 'small/', 100, window)).toEqual(sorted(all.filter((r) => r.startsWith('small/') && inRange(r, window))));
    }
    // A key-order token that only says where the window's rest starts (as an epoch-0 page ending at a range's end answers) walks too, from there.
    const from = 1n << 62n;
    const atStart = await s.scan({ rowPrefix: 'big/', filter: f(), limit: 100_000, resumeToken: encodeKeyOrderToken({ start: from, parts: [] }), hashStart: 0n, hashEnd: LOW.end });
    expect(atStart.rows.map((r) => r.row)).toEqual(all.filter((r) => r.startsWith('big/') && rowHash(r) >= from && rowHash(r) < LOW.end));
  });

  test('the cell filter applies per row, and a row with no matching cell is skipped', async () => {
    const s = await openStore();
    await s.writeRows(
      [
        { row: 'q/1', replace: false, cells: [{ column: 'keep', value: Buffer.from('1'), timestampUs: 5n }, { column: 'keep', value: Buffer.from('0'), timestampUs: 4n }, { column: 'x', value: Buffer.from('x'), timestampUs: 5n }] },
        { row: 'q/2', replace: false, cells: [{ column: 'x', value: Buffer.from('x'), timestampUs: 5n }] },
        { row: 'q/3', replace: false, cells: Array.from({ length: 100 }, (_, i) => ({ column: `keep${String(i).padStart(3, '0')}`, value: Buffer.from('v'), timestampUs: 5n })) },
      ],
      W,
    );
    const page = await s.scan({ rowPrefix: 'q/', filter: f({ columnPrefix: 'keep', limit: 50 }), limit: 10, hashStart: 0n, hashEnd: HASH_SPACE_END });
    expect(page.nextToken).toBeNull();
    expect(page.rows.map((r) => [r.row, r.cells.length])).toEqual([
      ['q/1', 1],
      ['q/3', 50],
    ]);
    expect(page.rows[0]!.cells[0]!.value.toString()).toBe('1');
    // Exact columns, newest only: read by the newest-version pointers.
    const exact = await s.scan({ rowPrefix: 'q/', filter: f({ columns: ['x', 'keep', 'keep001'] }), limit: 10, hashStart: 0n, hashEnd: HASH_SPACE_END });
    expect(exact.rows.map((r) => [r.row, r.cells.map((c) => `${c.column}=${c.value.toString()}@${c.timestampUs}`)])).toEqual([
      ['q/1', ['keep=1@5', 'x=x@5']],
      ['q/2', ['x=x@5']],
      ['q/3', ['keep001=v@5']],
    ]);
    const full = await s.scan({ rowPrefix: '', filter: f({ columns: ['x', 'keep', 'keep001'] }), limit: 10, hashStart: 0n, hashEnd: HASH_SPACE_END });
    expect([...full.rows].sort((a, b) => byteOrder(a.row, b.row))).toEqual(exact.rows);
  });
});
