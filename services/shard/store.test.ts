import { afterAll, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { DataDirError } from '../common/datadir.js';
import { CairnError } from '../common/errors.js';
import { HASH_SPACE_END, rowHash } from '../common/hash.js';
import { BUCKET_SIZE, bucketOf, bucketStart, type HashRange } from '../common/ranges.js';
import { cellKey, decodeCellKey, requestIdKey, rowIndexKey, rowPrefix, rowPrefixOfIndexKey } from './keys.js';
import { ShardStore, type CellFilterIn, type RawOp, type RowWriteIn, type WriteOpts } from './store.js';

const dirs: string[] = [];
const open: ShardStore[] = [];

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cairn-store-'));
  dirs.push(d);
  return d;
}

async function openStore(dir?: string, opts?: Parameters<typeof ShardStore.open>[1]): Promise<ShardStore> {
  const s = await ShardStore.open(dir ?? (await tempDir()), opts);
  open.push(s);
  return s;
}

afterAll(async () => {
  for (const s of open) await s.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const ALL_SPACE: HashRange = { start: 0n, end: HASH_SPACE_END };
const W: WriteOpts = { requestId: '', sync: false };
const f = (x: Partial<CellFilterIn> = {}): CellFilterIn => ({ columns: [], columnPrefix: '', allVersions: false, limit: 0, ...x });
const ALL: CellFilterIn = f({ allVersions: true });
const v = (s: string): Buffer => Buffer.from(s);
const cells = (pairs: [string, string, bigint?][]) => pairs.map(([column, value, ts]) => ({ column, value: v(value), timestampUs: ts ?? 0n }));
const put = (store: ShardStore, row: string, pairs: [string, string, bigint?][], o: Partial<WriteOpts> & { replace?: boolean } = {}) =>
  store.writeRows([{ row, cells: cells(pairs), replace: o.replace ?? false }], { ...W, ...o }).then((t) => t[0]!);
const shape = (cs: { column: string; timestampUs: bigint; value: Buffer }[]) => cs.map((c) => [c.column, c.value.toString(), c.timestampUs]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Counts rows and bytes from what readRow returns, with key sizes from keys.ts: independent of the store's own bookkeeping. */
async function countByReading(store: ShardStore, rows: Iterable<string>): Promise<{ rows: number; bytes: number }> {
  let n = 0;
  let bytes = 0;
  for (const r of new Set(rows)) {
    const cs = await store.readRow(r, ALL);
    if (cs.length > 0) n++;
    for (const c of cs) bytes += cellKey(rowPrefix(r), c.column, c.timestampUs).length + c.value.length;
  }
  return { rows: n, bytes };
}

/** Every per-row key and value of a store, as comparable strings. */
async function dump(store: ShardStore, range: HashRange = ALL_SPACE): Promise<string[]> {
  const out: string[] = [];
  for await (const chunk of store.exportRange(range, 1 << 20)) {
    for (const op of chunk) out.push(`${op.sublevel} ${op.key.toString('hex')} ${op.value!.toString('hex')}`);
  }
  return out.sort();
}

/** Rows whose hash falls in the first or second half of the space. */
function rowsInHalf(half: 0 | 1, n: number, tag: string): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) {
    const r = `${tag}-${i}`;
    if (Number(rowHash(r) >> 63n) === half) out.push(r);
  }
  return out;
}

describe('write and read', () => {
  test('reads return columns in order, newest version first, with the assigned timestamp', async () => {
    const s = await openStore();
    const t1 = await put(s, 'row1', [
      ['b', 'b1'],
      ['a', 'a1'],
    ]);
    const t2 = await put(s, 'row1', [['a', 'a2']]);
    expect(t2).toBeGreaterThan(t1);
    expect(t1).toBeGreaterThanOrEqual(BigInt(Date.now() - 60_000) * 1000n);
    expect(shape(await s.readRow('row1', f()))).toEqual([
      ['a', 'a2', t2],
      ['b', 'b1', t1],
    ]);
    expect(shape(await s.readRow('row1', ALL))).toEqual([
      ['a', 'a2', t2],
      ['a', 'a1', t1],
      ['b', 'b1', t1],
    ]);
    expect(await s.readRow('nope', ALL)).toEqual([]);
  });

  test('a row write without timestamp-0 cells returns 0 and keeps the explicit timestamps', async () => {
    const s = await openStore();
    expect(await put(s, 'r', [['c', 'x', 77n]])).toBe(0n);
    expect(shape(await s.readRow('r', ALL))).toEqual([['c', 'x', 77n]]);
  });

  test('exact columns, column prefixes (including 0x00 bytes) and limits', async () => {
    const s = await openStore();
    await put(s, 'r', [
      ['attr:a', '1', 10n],
      ['attr:b', '2', 10n],
      ['attr\u0000x', '3', 10n],
      ['attr', '4', 10n],
      ['attrs', '5', 10n],
      ['other', '6', 10n],
    ]);
    await put(s, 'r', [['attr:a', '1b', 20n]]);
    const cols = async (x: Partial<CellFilterIn>) => (await s.readRow('r', f(x))).map((c) => `${c.column}=${c.value}`);
    expect(await cols({ columnPrefix: 'attr:' })).toEqual(['attr:a=1b', 'attr:b=2']);
    expect(await cols({ columnPrefix: 'attr:', allVersions: true })).toEqual(['attr:a=1b', 'attr:a=1', 'attr:b=2']);
    expect(await cols({ columnPrefix: 'attr' })).toEqual(['attr=4', 'attr\u0000x=3', 'attr:a=1b', 'attr:b=2', 'attrs=5']);
    expect(await cols({ columnPrefix: 'attr\u0000' })).toEqual(['attr\u0000x=3']);
    expect(await cols({ columns: ['other', 'attr:a', 'missing'] })).toEqual(['attr:a=1b', 'other=6']);
    expect(await cols({ columns: ['other', 'attr:a'], allVersions: true })).toEqual(['attr:a=1b', 'attr:a=1', 'other=6']);
    expect(await cols({ columnPrefix: 'attr', limit: 2 })).toEqual(['attr=4', 'attr\u0000x=3']);
    expect(await cols({ columns: ['attr:a', 'other'], allVersions: true, limit: 2 })).toEqual(['attr:a=1b', 'attr:a=1']);
  });

  test('time ranges select start <= ts < end, newest in range per column', async () => {
    const s = await openStore();
    for (const ts of [100n, 200n, 300n]) await put(s, 'r', [['c', `v${ts}`, ts], ['d', `w${ts}`, ts]]);
    const read = async (x: Partial<CellFilterIn>) => shape(await s.readRow('r', f(x)));
    expect(await read({ columns: ['c'], timeRange: { startUs: 150n, endUs: 300n } })).toEqual([['c', 'v200', 200n]]);
    expect(await read({ columns: ['c'], timeRange: { startUs: 0n, endUs: 300n }, allVersions: true })).toEqual([
      ['c', 'v200', 200n],
      ['c', 'v100', 100n],
    ]);
    expect(await read({ timeRange: { startUs: 200n, endUs: 0n } })).toEqual([
      ['c', 'v300', 300n],
      ['d', 'w300', 300n],
    ]);
    expect(await read({ timeRange: { startUs: 100n, endUs: 201n }, allVersions: true, columnPrefix: 'd' })).toEqual([
      ['d', 'w200', 200n],
      ['d', 'w100', 100n],
    ]);
    expect(await read({ columns: ['c'], timeRange: { startUs: 301n, endUs: 0n } })).toEqual([]);
  });

  test('replace deletes every earlier version of the written columns only', async () => {
    const s = await openStore();
    await put(s, 'r', [['a', '1', 10n], ['b', '1', 10n]]);
    await put(s, 'r', [['a', '2', 20n], ['b', '2', 20n]]);
    const t = await put(s, 'r', [['a', '3']], { replace: true });
    expect(shape(await s.readRow('r', ALL))).toEqual([
      ['a', '3', t],
      ['b', '2', 20n],
      ['b', '1', 10n],
    ]);
    expect(s.totalStats()).toEqual(await countByReading(s, ['r']));
    // Replace with an explicit older timestamp still removes the newer versions.
    await put(s, 'r', [['b', 'old', 5n]], { replace: true });
    expect(shape(await s.readRow('r', f({ columns: ['b'], allVersions: true })))).toEqual([['b', 'old', 5n]]);
    expect(s.totalStats()).toEqual(await countByReading(s, ['r']));
  });

  test('the same row twice in one call is written as one row, with one timestamp', async () => {
    const s = await openStore();
    await put(s, 'r', [['a', 'old', 1n]]);
    const ts = await s.writeRows(
      [
        { row: 'r', cells: cells([['a', 'x'], ['c', 'planned', 7n]]), replace: false },
        { row: 'other', cells: cells([['a', 'y']]), replace: false },
        { row: 'r', cells: cells([['b', 'z']]), replace: true },
        // Applied in order: this replace also drops the version of c written by the first entry.
        { row: 'r', cells: cells([['c', 'final']]), replace: true },
      ],
      { requestId: 'dup-1', sync: false },
    );
    expect(ts[0]).toBe(ts[2]);
    expect(ts[0]).toBe(ts[3]);
    expect(shape(await s.readRow('r', ALL))).toEqual([
      ['a', 'x', ts[0]],
      ['a', 'old', 1n],
      ['b', 'z', ts[0]],
      ['c', 'final', ts[0]],
    ]);
    expect(s.totalStats()).toEqual(await countByReading(s, ['r', 'other']));
  });

  test('readRows omits rows with no matching cells and keeps request order', async () => {
    const s = await openStore();
    await put(s, 'x', [['c', '1']]);
    await put(s, 'y', [['d', '2']]);
    await put(s, 'z', [['c', '3']]);
    const got = await s.readRows(['z', 'missing', 'y', 'x'], f({ columns: ['c'] }));
    expect(got.map((r) => [r.row, r.cells.map((c) => c.value.toString())])).toEqual([
      ['z', ['3']],
      ['x', ['1']],
    ]);
  });
});

describe('deletes', () => {
  test('deleteRow removes every cell and the lease, and counts the cells', async () => {
    const s = await openStore();
    await put(s, 'r', [['a', '1', 1n], ['a', '2', 2n], ['b', '3', 3n]]);
    await put(s, 'keep', [['a', '1']]);
    await s.lockRow('r', 60_000, '');
    expect(await s.deleteRow('r', W)).toBe(3);
    expect(await s.readRow('r', ALL)).toEqual([]);
    await expect(s.unlockRow('r', 'whatever')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(s.totalStats()).toEqual(await countByReading(s, ['r', 'keep']));
    expect(s.totalStats().rows).toBe(1);
    expect(await s.deleteRow('r', W)).toBe(0);
  });

  test('deleteCells deletes columns, optionally only versions in a time range', async () => {
    const s = await openStore();
    await put(s, 'r', [['a', '1', 100n], ['a', '2', 200n], ['a', '3', 300n], ['b', '1', 100n], ['c', '1', 100n]]);
    expect(await s.deleteCells('r', ['a'], { startUs: 150n, endUs: 300n }, W)).toBe(1);
    expect(shape(await s.readRow('r', f({ columns: ['a'], allVersions: true })))).toEqual([
      ['a', '3', 300n],
      ['a', '1', 100n],
    ]);
    expect(await s.deleteCells('r', ['a', 'b', 'missing'], undefined, W)).toBe(3);
    expect(shape(await s.readRow('r', ALL))).toEqual([['c', '1', 100n]]);
    expect(s.totalStats()).toEqual(await countByReading(s, ['r']));
    expect(await s.deleteCells('r', ['c'], { startUs: 0n, endUs: 0n }, W)).toBe(1);
    expect(s.totalStats()).toEqual({ rows: 0, bytes: 0 });
  });
});

describe('checkAndMutate', () => {
  test('writes only when the newest version matches, or when absent is expected', async () => {
    const s = await openStore();
    const cas = (expected: string | null, value: string, requestId = '') =>
      s.checkAndMutate(
        { row: 'r', checkColumn: 'state', expectedValue: v(expected ?? ''), expectAbsent: expected === null, cells: cells([['state', value]]), replace: true },
        { requestId, sync: false },
      );
    const first = await cas(null, 'one');
    expect(first.succeeded).toBe(true);
    expect(first.timestampUs).toBeGreaterThan(0n);
    expect(await cas(null, 'again')).toEqual({ succeeded: false, timestampUs: 0n });
    expect((await cas('wrong', 'x')).succeeded).toBe(false);
    const second = await cas('one', 'two');
    expect(second.succeeded).toBe(true);
    expect(shape(await s.readRow('r', ALL))).toEqual([['state', 'two', second.timestampUs]]);
    expect(s.totalStats()).toEqual(await countByReading(s, ['r']));
  });

  test('concurrent check-and-set on a counter loses no update', async () => {
    const s = await openStore();
    await put(s, 'counter', [['n', '0']]);
    const increment = async (): Promise<void> => {
      for (;;) {
        const cur = (await s.readRow('counter', f({ columns: ['n'] })))[0]!.value.toString();
        const r = await s.checkAndMutate(
          { row: 'counter', checkColumn: 'n', expectedValue: v(cur), expectAbsent: false, cells: cells([['n', String(Number(cur) + 1)]]), replace: true },
          W,
        );
        if (r.succeeded) return;
      }
    };
    await Promise.all(Array.from({ length: 40 }, increment));
    expect((await s.readRow('counter', ALL)).map((c) => c.value.toString())).toEqual(['40']);
  });
});

describe('request ids', () => {
  test('request-id records in the older JSON form (moved in from an older shard) still dedupe', async () => {
    const s = await openStore();
    const record = Buffer.from(JSON.stringify({ k: 'write', t: Date.now(), ts: '123' }));
    await s.applyRaw([{ sublevel: 'reqids', key: requestIdKey(rowPrefix('legacy'), 'old-id'), value: record }], { sync: false });
    expect(await s.writeRows([{ row: 'legacy', cells: cells([['c', 'v']]), replace: false }], { requestId: 'old-id', sync: false })).toEqual([123n]);
    expect(await s.readRow('legacy', ALL)).toEqual([]);
    await expect(s.deleteRow('legacy', { requestId: 'old-id', sync: false })).rejects.toThrow(/already used for a write/);
  });

  test('a retried writeRows is applied once and returns the first timestamps', async () => {
    const s = await openStore();
    const rows: RowWriteIn[] = [
      { row: 'a', cells: cells([['c', 'first']]), replace: false },
      { row: 'b', cells: cells([['c', 'first']]), replace: false },
    ];
    const o = { requestId: 'req-1', sync: false };
    const t1 = await s.writeRows(rows, o);
    const stats = s.totalStats();
    // A retry sends the same request (fresh objects: it came over the wire again).
    expect(await s.writeRows(rows.map((r) => ({ ...r, cells: cells([['c', 'first']]) })), o)).toEqual(t1);
    expect(s.totalStats()).toEqual(stats);
    expect(shape(await s.readRow('a', ALL))).toEqual([['c', 'first', t1[0]]]);
    // Another id is another write.
    const other = rows.map((r) => ({ ...r, cells: cells([['c', 'second']]) }));
    await s.writeRows(other, { requestId: 'req-2', sync: false });
    expect((await s.readRow('a', ALL)).length).toBe(2);
  });

  test('a request id reused for different cells is refused with CONFLICT, and nothing of that call is written', async () => {
    const s = await openStore();
    const o = { requestId: 'reused', sync: false };
    const t1 = await s.writeRows(
      [
        { row: 'a', cells: cells([['c', 'first']]), replace: false },
        { row: 'b', cells: cells([['c', 'first']]), replace: false },
      ],
      o,
    );
    const before = { stats: s.totalStats(), data: await dump(s) };
    // Row a is the same as before, b differs, c is new: the whole call is refused, c included.
    const reuse = s.writeRows(
      [
        { row: 'a', cells: cells([['c', 'first']]), replace: false },
        { row: 'b', cells: cells([['c', 'second']]), replace: false },
        { row: 'c', cells: cells([['c', 'first']]), replace: false },
      ],
      o,
    );
    await expect(reuse).rejects.toMatchObject({ code: 'CONFLICT', message: expect.stringMatching(/^requestId: "reused" was already used for a different write on row "b"/) });
    expect({ stats: s.totalStats(), data: await dump(s) }).toEqual(before);
    // Each difference counts: value, column, explicit timestamp, replace, an extra cell.
    const variants: RowWriteIn[] = [
      { row: 'a', cells: cells([['c', 'First']]), replace: false },
      { row: 'a', cells: cells([['d', 'first']]), replace: false },
      { row: 'a', cells: cells([['c', 'first', 5n]]), replace: false },
      { row: 'a', cells: cells([['c', 'first']]), replace: true },
      { row: 'a', cells: cells([['c', 'first'], ['c', 'first']]), replace: false },
    ];
    for (const variant of variants) await expect(s.writeRows([variant], o)).rejects.toMatchObject({ code: 'CONFLICT' });
    expect({ stats: s.totalStats(), data: await dump(s) }).toEqual(before);
    // The same request, rows regrouped into one call per row (as a client does after a move), still answers as before.
    expect(await s.writeRows([{ row: 'b', cells: cells([['c', 'first']]), replace: false }], o)).toEqual([t1[1]]);
    expect(await s.writeRows([{ row: 'a', cells: cells([['c', 'first']]), replace: false }], o)).toEqual([t1[0]]);
    expect({ stats: s.totalStats(), data: await dump(s) }).toEqual(before);
  });

  test('a row given twice in one call is one request for the digest: the same entries in the same order retry, others conflict', async () => {
    const s = await openStore();
    const o = { requestId: 'twice', sync: false };
    const entries = (x: string, y: string): RowWriteIn[] => [
      { row: 'r', cells: cells([['c', x]]), replace: false },
      { row: 'q', cells: cells([['c', 'q']]), replace: false },
      { row: 'r', cells: cells([['d', y]]), replace: false },
    ];
    const t1 = await s.writeRows(entries('1', '2'), o);
    expect(await s.writeRows(entries('1', '2'), o)).toEqual(t1);
    await expect(s.writeRows(entries('1', '3'), o)).rejects.toMatchObject({ code: 'CONFLICT' });
    // Only the first entry of r, alone: not the request that was recorded.
    await expect(s.writeRows([entries('1', '2')[0]!], o)).rejects.toMatchObject({ code: 'CONFLICT' });
    expect((await s.readRow('r', ALL)).length).toBe(2);
  });

  test('checkAndMutate, deleteCells and lockRow refuse an id reused for a different request, and answer a retry as before', async () => {
    const s = await openStore();
    const cas = { row: 'r', checkColumn: 'state', expectedValue: v(''), expectAbsent: true, cells: cells([['state', 'busy']]), replace: false };
    const first = await s.checkAndMutate(cas, { requestId: 'cas', sync: false });
    expect(first.succeeded).toBe(true);
    expect(await s.checkAndMutate({ ...cas, cells: cells([['state', 'busy']]) }, { requestId: 'cas', sync: false })).toEqual(first);
    // expectedValue is ignored when expectAbsent: not a different request.
    expect(await s.checkAndMutate({ ...cas, expectedValue: v('ignored') }, { requestId: 'cas', sync: false })).toEqual(first);
    for (const other of [{ ...cas, cells: cells([['state', 'idle']]) }, { ...cas, checkColumn: 'other' }, { ...cas, expectAbsent: false }, { ...cas, replace: true }]) {
      await expect(s.checkAndMutate(other, { requestId: 'cas', sync: false })).rejects.toMatchObject({
        code: 'CONFLICT',
        message: expect.stringMatching(/^requestId: "cas" was already used for a different checkAndMutate on row "r"/),
      });
    }

    await put(s, 'r', [['a', '1'], ['b', '1']]);
    expect(await s.deleteCells('r', ['a', 'b'], undefined, { requestId: 'del', sync: false })).toBe(2);
    // The same set of columns, in another order or repeated, is the same request.
    expect(await s.deleteCells('r', ['b', 'a', 'b'], undefined, { requestId: 'del', sync: false })).toBe(2);
    await expect(s.deleteCells('r', ['a'], undefined, { requestId: 'del', sync: false })).rejects.toMatchObject({ code: 'CONFLICT' });
    await expect(s.deleteCells('r', ['a', 'b'], { startUs: 1n, endUs: 0n }, { requestId: 'del', sync: false })).rejects.toMatchObject({ code: 'CONFLICT' });

    const lease = await s.lockRow('r', 60_000, 'lock');
    expect(await s.lockRow('r', 60_000, 'lock')).toEqual(lease);
    await expect(s.lockRow('r', 1000, 'lock')).rejects.toMatchObject({ code: 'CONFLICT', message: expect.stringMatching(/different lockRow/) });

    // deleteRow carries nothing but the row, which is in the record's key: a retry is always the same request.
    expect(await s.deleteRow('r', { requestId: 'dr', sync: false })).toBe(1);
    expect(await s.deleteRow('r', { requestId: 'dr', sync: false })).toBe(1);
  });

  test('records without a digest (written by older code, or moved in from an older shard) are honoured with no conflict check', async () => {
    const s = await openStore();
    // Version 1 binary: version, kind (write), recorded at (u48), ts (u64).
    const v1 = Buffer.alloc(16);
    v1[0] = 1;
    v1.writeUIntBE(Date.now(), 2, 6);
    v1.writeBigUInt64BE(456n, 8);
    const json = Buffer.from(JSON.stringify({ k: 'cas', t: Date.now(), ok: true, ts: '789' }));
    await s.applyRaw(
      [
        { sublevel: 'reqids', key: requestIdKey(rowPrefix('v1'), 'old'), value: v1 },
        { sublevel: 'reqids', key: requestIdKey(rowPrefix('json'), 'old'), value: json },
      ],
      { sync: false },
    );
    expect(await s.writeRows([{ row: 'v1', cells: cells([['c', 'anything']]), replace: true }], { requestId: 'old', sync: false })).toEqual([456n]);
    const cas = { row: 'json', checkColumn: 'x', expectedValue: v('y'), expectAbsent: false, cells: cells([['c', 'anything']]), replace: false };
    expect(await s.checkAndMutate(cas, { requestId: 'old', sync: false })).toEqual({ succeeded: true, timestampUs: 789n });
    expect(await s.readRow('v1', ALL)).toEqual([]);
    expect(await s.readRow('json', ALL)).toEqual([]);
  });

  test('a write record holds a 16-byte digest: 32 bytes in all', async () => {
    const s = await openStore();
    await put(s, 'r', [['c', 'x'.repeat(1000)]], { requestId: 'compact' });
    const records = (await dump(s)).filter((k) => k.startsWith('reqids'));
    expect(records.map((r) => Buffer.from(r.split(' ')[2]!, 'hex').length)).toEqual([32]);
  });

  test('a retry that reaches a row not yet written applies there only', async () => {
    const s = await openStore();
    const o = { requestId: 'partial', sync: false };
    const [ta] = await s.writeRows([{ row: 'a', cells: cells([['c', '1']]), replace: false }], o);
    const [ta2, tb] = await s.writeRows(
      [
        { row: 'a', cells: cells([['c', '1']]), replace: false },
        { row: 'b', cells: cells([['c', '1']]), replace: false },
      ],
      o,
    );
    expect(ta2).toBe(ta);
    expect(tb).not.toBe(ta);
    expect((await s.readRow('a', ALL)).length).toBe(1);
    expect((await s.readRow('b', ALL)).length).toBe(1);
  });

  test('a retried checkAndMutate returns the first outcome, even after the state changed', async () => {
    const s = await openStore();
    const req = { row: 'r', checkColumn: 'c', expectedValue: v(''), expectAbsent: true, cells: cells([['c', 'mine']]), replace: false };
    const first = await s.checkAndMutate(req, { requestId: 'cas-1', sync: false });
    expect(first.succeeded).toBe(true);
    // Re-running the same request id would fail the check if it were evaluated again.
    expect(await s.checkAndMutate(req, { requestId: 'cas-1', sync: false })).toEqual(first);
    expect((await s.readRow('r', ALL)).length).toBe(1);
    const failed = await s.checkAndMutate(req, { requestId: 'cas-2', sync: false });
    expect(failed.succeeded).toBe(false);
    await s.deleteRow('r', W);
    // The failed outcome is remembered too: the retry does not write into the now-empty row.
    expect(await s.checkAndMutate(req, { requestId: 'cas-2', sync: false })).toEqual(failed);
    expect(await s.readRow('r', ALL)).toEqual([]);
  });

  test('deletes and lockRow are deduplicated; an id reused for another operation is refused', async () => {
    const s = await openStore();
    await put(s, 'r', [['a', '1'], ['b', '1']]);
    expect(await s.deleteCells('r', ['a'], undefined, { requestId: 'd1', sync: false })).toBe(1);
    await put(s, 'r', [['a', '2']]);
    expect(await s.deleteCells('r', ['a'], undefined, { requestId: 'd1', sync: false })).toBe(1);
    expect((await s.readRow('r', f({ columns: ['a'] }))).length).toBe(1);
    const l1 = await s.lockRow('r', 60_000, 'l1');
    expect(await s.lockRow('r', 60_000, 'l1')).toEqual(l1);
    await expect(s.lockRow('r', 60_000, 'l2')).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(await s.deleteRow('r', { requestId: 'dr', sync: false })).toBe(2);
    await put(s, 'r', [['z', '1']]);
    expect(await s.deleteRow('r', { requestId: 'dr', sync: false })).toBe(2);
    expect((await s.readRow('r', ALL)).length).toBe(1);
    await expect(put(s, 'r', [['a', '1']], { requestId: 'dr' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  test('the sweep forgets ids older than the TTL, after which a retry applies again', async () => {
    const s = await openStore(undefined, { requestIdTtlMs: 1000 });
    await put(s, 'r', [['c', '1']], { requestId: 'old' });
    await put(s, 'q', [['c', '1']], { requestId: 'old' });
    expect(await s.sweepRequestIds(Date.now())).toBe(0);
    await put(s, 'r', [['c', '1']], { requestId: 'old' });
    await expect(put(s, 'r', [['c', '2']], { requestId: 'old' })).rejects.toMatchObject({ code: 'CONFLICT' });
    expect((await s.readRow('r', ALL)).length).toBe(1);
    expect(await s.sweepRequestIds(Date.now() + 1001)).toBe(2);
    expect((await dump(s)).filter((k) => k.startsWith('reqids')).length).toBe(0);
    await put(s, 'r', [['c', '2']], { requestId: 'old' });
    expect((await s.readRow('r', ALL)).length).toBe(2);
  });

  test('the periodic sweep runs on its own', async () => {
    const s = await openStore(undefined, { requestIdTtlMs: 20, sweepIntervalMs: 25 });
    await put(s, 'r', [['c', '1']], { requestId: 'x' });
    for (let i = 0; i < 100 && (await dump(s)).some((k) => k.startsWith('reqids')); i++) await sleep(20);
    expect((await dump(s)).filter((k) => k.startsWith('reqids'))).toEqual([]);
  });
});

describe('leases', () => {
  test('lock, conflict, extend, unlock', async () => {
    const s = await openStore();
    const l = await s.lockRow('r', 60_000, '');
    expect(l.expiresAtMs).toBeGreaterThan(Date.now() + 59_000);
    const err = await s.lockRow('r', 1000, '').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).code).toBe('CONFLICT');
    expect((err as CairnError).message).toMatch(/^row "r" is leased by another holder until /);
    await expect(s.extendLease('r', 'not-mine', 1000)).rejects.toMatchObject({ code: 'CONFLICT' });
    await expect(s.unlockRow('r', 'not-mine')).rejects.toMatchObject({ code: 'CONFLICT' });
    await expect(s.extendLease('other', l.leaseId, 1000)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const e = await s.extendLease('r', l.leaseId, 120_000);
    expect(e.expiresAtMs).toBeGreaterThan(l.expiresAtMs);
    await s.unlockRow('r', l.leaseId);
    await expect(s.unlockRow('r', l.leaseId)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const again = await s.lockRow('r', 1000, '');
    expect(again.leaseId).not.toBe(l.leaseId);
  });

  test('an expired lease can be taken by another, and cannot be extended', async () => {
    const s = await openStore();
    const l = await s.lockRow('r', 30, '');
    await sleep(60);
    await expect(s.extendLease('r', l.leaseId, 1000)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const next = await s.lockRow('r', 60_000, '');
    expect(next.leaseId).not.toBe(l.leaseId);
    await expect(s.unlockRow('r', l.leaseId)).rejects.toMatchObject({ code: 'CONFLICT' });
  });

  test('leases do not count as rows or bytes', async () => {
    const s = await openStore();
    await s.lockRow('r', 60_000, 'req');
    expect(s.totalStats()).toEqual({ rows: 0, bytes: 0 });
  });
});

describe('scan', () => {
  test('prefix paging with tokens visits every matching row exactly once, in row-key order', async () => {
    const s = await openStore();
    const rows = Array.from({ length: 120 }, (_, i) => `user:${i}`);
    const others = Array.from({ length: 40 }, (_, i) => `group:${i}`);
    await Promise.all([...rows, ...others].map((r, i) => put(s, r, [['c', `v${i}`], ['d', 'x']])));
    for (const limit of [1, 7, 50, 1000]) {
      const seen: string[] = [];
      let token: Buffer | undefined;
      let pages = 0;
      for (;;) {
        const page = await s.scan({ rowPrefix: 'user:', filter: f({ columns: ['c'] }), limit, resumeToken: token, hashStart: 0n, hashEnd: HASH_SPACE_END });
        expect(page.rows.length).toBeLessThanOrEqual(limit);
        for (const r of page.rows) {
          expect(r.cells.map((c) => c.column)).toEqual(['c']);
          seen.push(r.row);
        }
        pages++;
        if (!page.nextToken) break;
        token = page.nextToken;
      }
      expect(seen.length).toBe(rows.length);
      expect(new Set(seen)).toEqual(new Set(rows));
      const order = seen.map((r) => Buffer.from(r));
      expect([...order].sort(Buffer.compare)).toEqual(order); // one window, so one range: key order by the row-key index
      expect(pages).toBeGreaterThanOrEqual(Math.ceil(rows.length / limit));
    }
  });

  test('scans only the hash window, and windows that tile the space see every row once', async () => {
    const s = await openStore();
    const rows = Array.from({ length: 200 }, (_, i) => `k${i}`);
    await Promise.all(rows.map((r) => put(s, r, [['c', r]])));
    const cuts = [0n, 1n << 62n, 1n << 63n, (1n << 63n) + 12345n, HASH_SPACE_END];
    const seen: string[] = [];
    for (let i = 0; i + 1 < cuts.length; i++) {
      let token: Buffer | undefined;
      do {
        const page = await s.scan({ rowPrefix: '', filter: f(), limit: 13, resumeToken: token, hashStart: cuts[i]!, hashEnd: cuts[i + 1]! });
        for (const r of page.rows) {
          const h = rowHash(r.row);
          expect(h >= cuts[i]! && h < cuts[i + 1]!).toBe(true);
          seen.push(r.row);
        }
        token = page.nextToken ?? undefined;
      } while (token);
    }
    expect(seen.sort()).toEqual([...rows].sort());
  });

  test('rows with no cell matching the filter are skipped but paging continues', async () => {
    const s = await openStore();
    for (let i = 0; i < 30; i++) await put(s, `r${i}`, [[i % 3 === 0 ? 'keep' : 'drop', 'x']]);
    const seen: string[] = [];
    let token: Buffer | undefined;
    do {
      const page = await s.scan({ rowPrefix: '', filter: f({ columnPrefix: 'ke' }), limit: 2, resumeToken: token, hashStart: 0n, hashEnd: HASH_SPACE_END });
      seen.push(...page.rows.map((r) => r.row));
      token = page.nextToken ?? undefined;
    } while (token);
    expect(seen.sort()).toEqual(Array.from({ length: 10 }, (_, i) => `r${i * 3}`).sort());
  });

  test('a per-row cell limit applies inside a scan', async () => {
    const s = await openStore();
    await put(s, 'wide', Array.from({ length: 600 }, (_, i) => [`c${String(i).padStart(4, '0')}`, 'x'] as [string, string]));
    await put(s, 'narrow', [['a', 'y']]);
    const page = await s.scan({ rowPrefix: '', filter: f({ limit: 3 }), limit: 10, hashStart: 0n, hashEnd: HASH_SPACE_END });
    const byRow = new Map(page.rows.map((r) => [r.row, r.cells.map((c) => c.column)]));
    expect(byRow.get('wide')).toEqual(['c0000', 'c0001', 'c0002']);
    expect(byRow.get('narrow')).toEqual(['a']);
    expect(page.nextToken).toBeNull();
  });
});

describe('stats', () => {
  test('500 concurrent writes, overwrites and deletes keep exact stats', async () => {
    const s = await openStore();
    const rows = Array.from({ length: 25 }, (_, i) => `row-${i}`);
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 500; i++) {
      const row = rows[rnd(rows.length)]!;
      const kind = rnd(10);
      const col = `c${rnd(4)}`;
      if (kind < 5) ops.push(put(s, row, [[col, 'x'.repeat(rnd(50))]]));
      else if (kind < 7) ops.push(put(s, row, [[col, 'y'.repeat(rnd(50)), BigInt(1 + rnd(3))]])); // identical keys: overwrites
      else if (kind < 8) ops.push(put(s, row, [[col, 'z']], { replace: true }));
      else if (kind < 9) ops.push(s.deleteCells(row, [col], undefined, W));
      else ops.push(s.deleteRow(row, W));
    }
    ops.push(...rows.slice(0, 5).map((r) => put(s, r, [['same', 'v', 42n]])));
    await Promise.all(ops);
    const expected = await countByReading(s, rows);
    expect(s.totalStats()).toEqual(expected);
    expect(await s.recountStats()).toEqual(expected);
    expect(expected.rows).toBeGreaterThan(0);
    // Per range as well: both halves.
    const half: HashRange = { start: 0n, end: 1n << 63n };
    expect(s.rangeStats(half)).toEqual(await s.recountStats(half));
    expect(s.rangeStats(half).bytes + s.rangeStats({ start: 1n << 63n, end: HASH_SPACE_END }).bytes).toBe(expected.bytes);
  });

  test('concurrent writes to one row all land and are grouped into few batches', async () => {
    const s = await openStore();
    let batches = 0;
    const off = s.onCommit(() => batches++);
    const ts = await Promise.all(Array.from({ length: 300 }, (_, i) => put(s, i % 2 ? 'hot' : `cold-${i}`, [['c', `v${i}`]])));
    off();
    expect(new Set(ts).size).toBe(300); // never two writes with one timestamp
    expect((await s.readRow('hot', ALL)).length).toBe(150);
    expect(batches).toBeLessThan(300);
    expect(s.totalStats()).toEqual(await countByReading(s, ['hot', ...Array.from({ length: 300 }, (_, i) => `cold-${i}`)]));
  });

  test('overwriting an identical key does not double count', async () => {
    const s = await openStore();
    await put(s, 'r', [['c', 'abc', 5n]]);
    const once = s.totalStats();
    await put(s, 'r', [['c', 'abc', 5n]]);
    expect(s.totalStats()).toEqual(once);
    await put(s, 'r', [['c', 'abcdef', 5n]]);
    expect(s.totalStats()).toEqual({ rows: 1, bytes: once.bytes + 3 });
  });

  test('rangeStats sums buckets and refuses unaligned ranges', async () => {
    const s = await openStore();
    const r = 'bucket-test';
    await put(s, r, [['c', 'v']]);
    const b = bucketOf(rowHash(r));
    const bytes = cellKey(rowPrefix(r), 'c', 1n).length + 1;
    expect(s.rangeStats({ start: bucketStart(b), end: bucketStart(b + 1) })).toEqual({ rows: 1, bytes });
    expect(s.bucketStats(ALL_SPACE)).toEqual([{ bucket: b, rows: 1, bytes }]);
    expect(() => s.rangeStats({ start: 1n, end: BUCKET_SIZE })).toThrow(/not bucket-aligned/);
  });
});

describe('derived records', () => {
  /** Every record of the derived sublevels, and what they must be, recomputed from the cells; read from the closed store's LevelDB. */
  async function derivedOf(dir: string) {
    const raw = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const bin = { keyEncoding: 'buffer', valueEncoding: 'buffer' } as const;
    try {
      const hex = (b: Buffer) => b.toString('hex');
      const counts = new Map<string, number>();
      const newest = new Map<string, string>();
      for await (const key of raw.sublevel<Buffer, Buffer>('cells', bin).keys()) {
        const prefix = key.subarray(0, 10 + key.readUInt16BE(8));
        counts.set(hex(prefix), (counts.get(hex(prefix)) ?? 0) + 1);
        const col = hex(key.subarray(0, key.length - 8));
        if (!newest.has(col)) newest.set(col, hex(key.subarray(key.length - 8)));
      }
      const storedCounts = new Map<string, number>();
      // Cell counts are kept in the row-key index, keyed by row key first (keys.ts rowIndexKey).
      for await (const [k, v] of raw.sublevel<Buffer, Buffer>('rk', bin).iterator()) storedCounts.set(hex(rowPrefixOfIndexKey(k)), v.readUIntBE(0, v.length));
      const storedNewest = new Map<string, string>();
      for await (const [k, v] of raw.sublevel<Buffer, Buffer>('lv', bin).iterator()) storedNewest.set(hex(k), hex(v));
      return { counts, storedCounts, newest, storedNewest };
    } finally {
      await raw.close();
    }
  }

  test('cell counts and newest-version pointers stay exact through every kind of mutation, and are rebuilt when lost', async () => {
    const dir = await tempDir();
    const s = await ShardStore.open(dir);
    const rows = [...rowsInHalf(0, 6, 'd'), ...rowsInHalf(1, 6, 'd')];
    let seed = 11;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let round = 0; round < 8; round++) {
      const ops: Promise<unknown>[] = [];
      for (let i = 0; i < 150; i++) {
        const row = rows[rnd(rows.length)]!;
        const col = `c${rnd(3)}`;
        const ts = BigInt(1 + rnd(6));
        const kind = rnd(17);
        if (kind >= 14) {
          // A multi-row write with a request id (rows may repeat, some replace, fresh and explicit timestamps),
          // sometimes retried at once with the same id: the retry changes nothing and gets the same timestamps.
          const batch: RowWriteIn[] = Array.from({ length: 2 + rnd(11) }, () => ({
            row: rows[rnd(rows.length)]!,
            cells: cells([[`c${rnd(3)}`, 'm'.repeat(rnd(5)), rnd(2) ? 0n : BigInt(1 + rnd(6))]]),
            replace: rnd(4) === 0,
          }));
          const o = { requestId: `mix-${round}-${i}`, sync: false };
          const first = s.writeRows(batch, o);
          ops.push(first);
          if (kind === 16) ops.push(Promise.all([first, s.writeRows(batch, o)]).then(([a, b]) => expect(b).toEqual(a)));
          continue;
        }
        if (kind < 2) ops.push(put(s, row, [[col, 'x'.repeat(rnd(9))]]));
        else if (kind < 5) ops.push(put(s, row, [[col, 'e'.repeat(rnd(9)), ts], [`c${rnd(3)}`, 'f', BigInt(1 + rnd(6))]]));
        else if (kind < 6) ops.push(put(s, row, [[col, 'r', rnd(2) ? ts : 0n]], { replace: true }));
        else if (kind < 7) ops.push(s.deleteCells(row, [col], undefined, W));
        else if (kind < 8) ops.push(s.deleteCells(row, [col], { startUs: ts, endUs: ts + BigInt(rnd(3)) }, W));
        else if (kind < 9) ops.push(s.deleteRow(row, W));
        else if (kind < 11) {
          // Delete exactly the newest stored version of a column (its older ones stay).
          ops.push(
            s.readRow(row, f({ columns: [col], allVersions: true })).then((cs) =>
              cs.length ? s.deleteCells(row, [col], { startUs: cs[0]!.timestampUs, endUs: cs[0]!.timestampUs + 1n }, W) : 0,
            ),
          );
        } else {
          // Raw ops as a move applies them: puts of any version, deletes of any (the newest included).
          const p = rowPrefix(row);
          const key = cellKey(p, col, ts);
          ops.push(s.applyRaw([rnd(2) ? { sublevel: 'cells', key, value: v('raw') } : { sublevel: 'cells', key }], { sync: false }));
        }
      }
      await Promise.all(ops);
      // The pointer path agrees with reading every version.
      for (const row of rows) {
        const all = await s.readRow(row, ALL);
        for (const col of ['c0', 'c1', 'c2']) {
          const first = all.find((c) => c.column === col);
          expect(shape(await s.readRow(row, f({ columns: [col] })))).toEqual(first ? shape([first]) : []);
        }
        expect(shape(await s.readRow(row, f({ columns: ['c2', 'c0', 'nope'] })))).toEqual(shape(await s.readRow(row, f({ columnPrefix: 'c' })).then((cs) => cs.filter((c) => c.column !== 'c1'))));
      }
      expect(await s.verifyDerived()).toEqual([]);
      if (round === 3) await s.deleteRange({ start: 0n, end: 1n << 63n });
    }
    expect(await s.verifyDerived()).toEqual([]);
    const stats = s.totalStats();
    expect(stats).toEqual(await s.recountStats());
    await s.close();
    const d = await derivedOf(dir);
    expect(d.counts.size).toBeGreaterThan(0);
    expect(d.storedCounts).toEqual(d.counts);
    expect(d.storedNewest).toEqual(d.newest);

    // Lost records (or a store from before they existed) are rebuilt from the cells at open.
    const raw = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const bin = { keyEncoding: 'buffer', valueEncoding: 'buffer' } as const;
    await raw.sublevel<Buffer, Buffer>('lv', bin).clear();
    await raw.sublevel<Buffer, Buffer>('rk', bin).put(rowIndexKey(rowPrefix('stale')), Buffer.from([0, 0, 0, 0, 0, 9]));
    await raw.sublevel<string, Buffer>('meta', { keyEncoding: 'utf8', valueEncoding: 'buffer' }).del('lv/v1');
    await raw.close();
    const again = await ShardStore.open(dir);
    expect(again.totalStats()).toEqual(stats);
    await again.close();
    const e = await derivedOf(dir);
    expect(e.storedCounts).toEqual(e.counts);
    expect(e.storedNewest).toEqual(e.newest);
  });
});

describe('persistence', () => {
  test('reopen keeps data, stats and the clock (also past explicit future timestamps)', async () => {
    const dir = await tempDir();
    const a = await ShardStore.open(dir);
    const future = BigInt(Date.now() + 3_600_000) * 1000n;
    await put(a, 'r1', [['c', '1']]);
    await put(a, 'r2', [['c', '2', future]]);
    const t3 = await put(a, 'r3', [['c', '3']], { sync: true });
    expect(t3).toBeGreaterThan(future);
    await a.lockRow('r1', 60_000, 'lock-req');
    const stats = a.totalStats();
    const before = await dump(a);
    await a.close();
    await expect(a.readRow('r1', ALL)).rejects.toThrow();
    await expect(put(a, 'r1', [['c', 'x']])).rejects.toMatchObject({ code: 'NOT_READY' });

    const b = await openStore(dir);
    expect(await dump(b)).toEqual(before);
    expect(b.totalStats()).toEqual(stats);
    expect(b.clockHigh()).toBeGreaterThanOrEqual(t3);
    const t4 = await put(b, 'r4', [['c', '4']]);
    expect(t4).toBeGreaterThan(t3);
    await expect(b.lockRow('r1', 1000, '')).rejects.toMatchObject({ code: 'CONFLICT' });
  });

  test('the clock mark survives a restart even when the newest cell was deleted', async () => {
    const dir = await tempDir();
    const a = await ShardStore.open(dir);
    const future = BigInt(Date.now() + 3_600_000) * 1000n;
    await put(a, 'r', [['c', 'gone', future]]);
    await a.deleteRow('r', W);
    await a.close();
    const b = await openStore(dir);
    // No stored cell holds `future` any more: only the persisted mark keeps the clock above it.
    expect(await put(b, 'r', [['c', 'new']])).toBeGreaterThan(future);
  });

  test('stats and the clock mark are rebuilt from the cells when their records are lost', async () => {
    const dir = await tempDir();
    const a = await ShardStore.open(dir);
    const rows = Array.from({ length: 50 }, (_, i) => `r${i}`);
    await Promise.all(rows.map((r, i) => put(a, r, [['c', 'x'.repeat(i)], ['d', 'y', BigInt(i + 1)]])));
    const far = BigInt(Date.now() + 7_200_000) * 1000n;
    await put(a, 'r0', [['late', 'z', far]]);
    const stats = a.totalStats();
    await a.close();

    const raw = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const meta = raw.sublevel<string, Buffer>('meta', { keyEncoding: 'utf8', valueEncoding: 'buffer' });
    const metaKeys = await meta.keys().all();
    expect(metaKeys.some((k) => k.startsWith('stats/'))).toBe(true);
    await meta.batch(metaKeys.filter((k) => k.startsWith('stats/') || k === 'clock').map((key) => ({ type: 'del' as const, key })));
    await raw.close();

    const b = await openStore(dir);
    expect(b.totalStats()).toEqual(stats);
    expect(b.totalStats()).toEqual(await countByReading(b, rows));
    expect(await put(b, 'r1', [['c', 'new']])).toBeGreaterThan(far);
  });

  test('meta records survive a restart', async () => {
    const dir = await tempDir();
    const a = await ShardStore.open(dir);
    await a.putMeta('shardId', 'shard-7');
    await a.putMeta('map', { epoch: '3', ranges: [{ start: '0', end: '18446744073709551616', shardId: 'shard-7' }] });
    expect(await a.getMeta('missing')).toBeUndefined();
    await a.close();
    const b = await openStore(dir);
    expect(await b.getMeta('shardId')).toBe('shard-7');
    expect(await b.getMeta<{ epoch: string }>('map')).toEqual({ epoch: '3', ranges: [{ start: '0', end: '18446744073709551616', shardId: 'shard-7' }] });
    await b.delMeta('shardId');
    expect(await b.getMeta('shardId')).toBeUndefined();
  });

  test('a second process on the same directory gets a clear error', async () => {
    const dir = await tempDir();
    const holder = spawn(
      process.execPath,
      ['--input-type=module', '-e', "import { ClassicLevel } from 'classic-level'; const db = new ClassicLevel(process.argv[1]); await db.open(); console.log('open'); setInterval(() => {}, 1000);", dir],
      { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout!.on('data', (d: Buffer) => d.toString().includes('open') && resolve());
        holder.on('exit', (code) => reject(new Error(`lock holder exited with ${code}`)));
      });
      const err = await ShardStore.open(dir).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DataDirError);
      expect(err).toMatchObject({ code: 'LOCKED', dir, hint: expect.stringMatching(/another process is using it/) });
      expect((err as DataDirError).message).toMatch(new RegExp(`^the shard cannot open its data directory ${dir}: it is in use by another process \\(IO error: lock .*LOCK: .+\\)$`));
    } finally {
      holder.kill();
    }
  });
});

describe('moving ranges', () => {
  const LOW: HashRange = { start: 0n, end: 1n << 63n };
  const HIGH: HashRange = { start: 1n << 63n, end: HASH_SPACE_END };
  const FUTURE = BigInt(Date.now() + 3_600_000) * 1000n; // a source clock an hour ahead of the destination's

  async function populated(): Promise<{ s: ShardStore; low: string[]; high: string[]; lowLease: string }> {
    const s = await openStore();
    const low = rowsInHalf(0, 40, 'm');
    const high = rowsInHalf(1, 40, 'm');
    await Promise.all(
      [...low, ...high].map((r, i) => put(s, r, [['a', `v${i}`], ['b', 'x'.repeat(i), BigInt(i + 1)]], { requestId: `req-${i}` })),
    );
    await put(s, low[2]!, [['future', 'f', FUTURE]]);
    const lowLease = (await s.lockRow(low[0]!, 60_000, 'lease-req')).leaseId;
    await s.lockRow(high[0]!, 60_000, 'lease-req');
    return { s, low, high, lowLease };
  }

  test('an exported range applied to another store matches exactly, contents and stats', async () => {
    const { s, low, lowLease } = await populated();
    const d = await openStore();
    await put(d, rowsInHalf(1, 1, 'dest')[0]!, [['c', 'mine']]);
    const destOwn = d.totalStats();
    let chunks = 0;
    for await (const chunk of s.exportRange(LOW, 2048)) {
      const size = chunk.reduce((n, op) => n + op.key.length + op.value!.length, 0);
      expect(size).toBeLessThan(2048 + 1024);
      await d.applyRaw(chunk, { sync: false });
      chunks++;
    }
    expect(chunks).toBeGreaterThan(1);
    const exported = await dump(s, LOW);
    expect(exported.some((k) => k.startsWith('leases'))).toBe(true);
    expect(exported.some((k) => k.startsWith('reqids'))).toBe(true);
    expect(exported.some((k) => k.startsWith('cells'))).toBe(true);
    expect(await dump(d, LOW)).toEqual(exported);
    expect(d.rangeStats(LOW)).toEqual(s.rangeStats(LOW));
    expect(d.totalStats()).toEqual({ rows: destOwn.rows + s.rangeStats(LOW).rows, bytes: destOwn.bytes + s.rangeStats(LOW).bytes });
    expect(await d.recountStats()).toEqual(d.totalStats());
    // The moved request ids still deduplicate on the new owner, digest included, and the lease still holds.
    const i = 0;
    const before = await d.readRow(low[i]!, ALL);
    const t = (await s.writeRows([{ row: low[i]!, cells: cells([['a', `v${i}`], ['b', 'x'.repeat(i), BigInt(i + 1)]]), replace: false }], { requestId: `req-${i}`, sync: false }))[0];
    expect(await put(d, low[i]!, [['a', `v${i}`], ['b', 'x'.repeat(i), BigInt(i + 1)]], { requestId: `req-${i}` })).toBe(t);
    await expect(put(d, low[i]!, [['a', 'retry']], { requestId: `req-${i}` })).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(await d.readRow(low[i]!, ALL)).toEqual(before);
    await expect(d.lockRow(low[0]!, 1000, 'lease-req')).rejects.toMatchObject({ code: 'CONFLICT', message: expect.stringMatching(/different lockRow/) });
    expect((await d.lockRow(low[0]!, 60_000, 'lease-req')).leaseId).toBe(lowLease);
    await expect(d.lockRow(low[0]!, 1000, '')).rejects.toMatchObject({ code: 'CONFLICT' });
    // The destination's clock is past every moved timestamp, including one ahead of its own wall clock.
    const moved = (await dump(s, LOW)).filter((k) => k.startsWith('cells')).map((k) => decodeCellKey(Buffer.from(k.split(' ')[1]!, 'hex')).timestampUs);
    const newest = moved.reduce((m, t) => (t > m ? t : m), 0n);
    expect(newest).toBe(FUTURE);
    expect(await put(d, low[1]!, [['a', 'later']])).toBeGreaterThan(newest);
  });

  test('replaying an export twice changes nothing', async () => {
    const { s } = await populated();
    const d = await openStore();
    const chunks: RawOp[][] = [];
    for await (const c of s.exportRange(HIGH, 4096)) chunks.push(c);
    for (const c of chunks) await d.applyRaw(c, { sync: false });
    const once = { stats: d.totalStats(), data: await dump(d) };
    for (const c of chunks) await d.applyRaw(c, { sync: true });
    expect(d.totalStats()).toEqual(once.stats);
    expect(await dump(d)).toEqual(once.data);
    expect(d.totalStats()).toEqual(s.rangeStats(HIGH));
    expect(await dump(d)).toEqual(await dump(s, HIGH));
    expect(await d.recountStats()).toEqual(d.totalStats());
  });

  test('the commit log, replayed after a snapshot, brings the copy up to date', async () => {
    const { s, low, lowLease } = await populated();
    const d = await openStore();
    const log: RawOp[][] = [];
    const stop = s.onCommit((ops) => log.push(ops.filter((op) => op.key.readBigUInt64BE(0) < LOW.end)));
    // Writes racing with the start of the move: some land before the snapshot, some after.
    const racing = Promise.all(low.slice(0, 10).map((r, i) => put(s, r, [['a', `race${i}`]], { replace: true })));
    await s.drain();
    for await (const c of s.exportRange(LOW, 4096)) await d.applyRaw(c, { sync: false });
    await racing;
    await s.deleteRow(low[5]!, W);
    await s.deleteCells(low[6]!, ['b'], undefined, W);
    await s.unlockRow(low[0]!, lowLease);
    await put(s, low[7]!, [['new', 'n']], { requestId: 'late' });
    stop();
    await put(s, low[8]!, [['after', 'stop']]); // not logged, so the copy must differ by exactly this
    for (const ops of log) if (ops.length) await d.applyRaw(ops, { sync: false });
    await s.deleteCells(low[8]!, ['after'], undefined, W);
    expect(await dump(d)).toEqual(await dump(s, LOW));
    expect(d.totalStats()).toEqual(s.rangeStats(LOW));
  });

  test('deleteRange zeroes the range and leaves the rest alone', async () => {
    const { s, low, high } = await populated();
    const highBefore = { stats: s.rangeStats(HIGH), data: await dump(s, HIGH) };
    const lowKeys = (await dump(s, LOW)).length;
    expect(s.rangeStats(LOW).rows).toBe(40);
    expect(await s.deleteRange(LOW, 7)).toBe(lowKeys);
    expect(s.rangeStats(LOW)).toEqual({ rows: 0, bytes: 0 });
    expect(await dump(s, LOW)).toEqual([]);
    expect(s.rangeStats(HIGH)).toEqual(highBefore.stats);
    expect(await dump(s, HIGH)).toEqual(highBefore.data);
    expect(await s.recountStats()).toEqual(s.totalStats());
    for (const r of low.slice(0, 3)) expect(await s.readRow(r, ALL)).toEqual([]);
    expect((await s.readRow(high[0]!, ALL)).length).toBe(2);
  });

  test('an export is a point-in-time snapshot: later writes do not appear in it', async () => {
    const { s, low } = await populated();
    const before = await dump(s, LOW);
    const it = s.exportRange(LOW, 256);
    const seen: RawOp[] = [...((await it.next()).value as RawOp[])];
    // Change the range while the export is under way: new rows, deletes, a lease.
    await Promise.all(rowsInHalf(0, 20, 'late').map((r) => put(s, r, [['c', 'late']])));
    await s.deleteRow(low[39]!, W);
    await s.lockRow(low[38]!, 60_000, 'late-lease');
    for (let r = await it.next(); !r.done; r = await it.next()) seen.push(...r.value);
    const exported = seen.map((op) => `${op.sublevel} ${op.key.toString('hex')} ${op.value!.toString('hex')}`).sort();
    expect(exported).toEqual(before);
    expect(await dump(s, LOW)).not.toEqual(before);
  });

  test('deleteRange counts what it deleted', async () => {
    const { s } = await populated();
    const n = (await dump(s, LOW)).length;
    expect(await s.deleteRange(LOW, 5)).toBe(n);
    expect(await s.deleteRange(LOW)).toBe(0);
  });

  test('drain waits for writes that are queued behind a row lock', async () => {
    const s = await openStore();
    const writes = Array.from({ length: 50 }, (_, i) => put(s, 'hot', [['c', String(i)]]));
    await s.drain();
    // Everything started before drain() is committed and visible, without awaiting the writes themselves.
    expect((await s.readRow('hot', ALL)).length).toBe(50);
    expect(s.totalStats().rows).toBe(1);
    await Promise.all(writes);
  });
});

