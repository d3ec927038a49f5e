/**
 * Bulk ingestion of a snapshot (store-ingest.ts) against the exact path, on
 * real LevelDB: a range exported from a source in chunks of any size
 * (rows and columns cut between chunks), ingested into an emptied range of one
 * destination and applied with applyRaw into the same range of another, must
 * leave byte-identical databases (cells, request ids, leases, the row-key
 * index, newest-version pointers, bucket stats records; only the clock's mark
 * may differ), exact derived records (verifyDerived) and stats equal to a
 * recount. A mutation of the range during the session, a range that is not
 * empty, and chunks not shaped like a snapshot make it fall back to the exact
 * path, still exact; a copy cut short (a crash, an abort) is removed exactly
 * by deleteRange.
 */
import { afterAll, describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { HASH_SPACE_END, rowHash } from '../common/hash.js';
import type { HashRange } from '../common/ranges.js';
import { ShardStore, type RawOp, type WriteOpts } from './store.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cairn-ingest-'));
  dirs.push(d);
  return d;
}

const ALL: HashRange = { start: 0n, end: HASH_SPACE_END };
const RANGES: HashRange[] = [
  { start: 0n, end: 1n << 62n },
  { start: 1n << 62n, end: 3n << 62n },
  { start: 3n << 62n, end: HASH_SPACE_END },
  ALL,
];
const inRange = (row: string, r: HashRange): boolean => rowHash(row) >= r.start && rowHash(row) < r.end;

interface Cell {
  column: string;
  ts: number; // 0 = the clock's
  value: string;
}
interface Row {
  row: string;
  cells: Cell[];
  lease: boolean;
}

const rowArb: fc.Arbitrary<Row> = fc.record({
  row: fc.oneof(fc.string({ minLength: 1, maxLength: 12 }), fc.constantFrom('a', 'b\u0000c', 'row\u0000', 'x'.repeat(40))),
  cells: fc.array(
    fc.record({
      column: fc.oneof(fc.constantFrom('v', 'w', 'col\u0000z', ''), fc.string({ maxLength: 6 })),
      ts: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 5_000 })),
      value: fc.string({ maxLength: 40 }),
    }),
    { minLength: 1, maxLength: 12 },
  ),
  lease: fc.boolean(),
});

/**
 * Writes the rows, each call with a request id (so request-id records move too), and leases on some; with
 * `same`, the same bytes on every store (explicit timestamps, no request ids or leases, which hold times and ids).
 */
async function fill(s: ShardStore, rows: Row[], tag: string, same = false): Promise<void> {
  let n = 0;
  for (const r of rows) {
    const o: WriteOpts = { requestId: same ? '' : `${tag}-${n++}`, sync: false };
    const cells = r.cells.map((c) => ({ column: c.column, timestampUs: BigInt(c.ts || (same ? 1 : 0)), value: Buffer.from(c.value) }));
    await s.writeRows([{ row: r.row, replace: false, cells }], o);
    if (r.lease && !same) await s.lockRow(r.row, 60_000, `${tag}-lock-${n}`).catch(() => undefined);
  }
}

async function exportChunks(s: ShardStore, range: HashRange, chunkBytes: number): Promise<RawOp[][]> {
  const chunks: RawOp[][] = [];
  for await (const c of s.exportRange(range, chunkBytes)) chunks.push(c);
  return chunks;
}

/** Every key and value of a closed store's LevelDB but the clock's mark, as hex. */
async function dump(dir: string): Promise<string[]> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  const out: string[] = [];
  try {
    for await (const [k, v] of db.iterator()) {
      if (k.toString('latin1').endsWith('!clock')) continue;
      out.push(`${k.toString('hex')}=${v.toString('hex')}`);
    }
  } finally {
    await db.close();
  }
  return out;
}

async function checkExact(s: ShardStore): Promise<void> {
  expect(await s.verifyDerived()).toEqual([]);
  expect(await s.recountStats(ALL)).toEqual(s.totalStats());
  for (const r of RANGES) expect(await s.recountStats(r)).toEqual(s.rangeStats(r));
}

describe('snapshot ingestion', () => {
  test('gives the same database as applyRaw of the same chunks (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(rowArb, { minLength: 1, maxLength: 25 }),
        fc.array(rowArb, { maxLength: 10 }),
        fc.constantFrom(...RANGES),
        fc.integer({ min: 1, max: 3000 }),
        async (rows, before, range, chunkBytes) => {
          const [srcDir, aDir, bDir] = [await tempDir(), await tempDir(), await tempDir()];
          const src = await ShardStore.open(srcDir);
          await fill(src, rows, 'src');
          const chunks = await exportChunks(src, range, chunkBytes);
          await src.close();
          const a = await ShardStore.open(aDir);
          const b = await ShardStore.open(bDir);
          try {
            // The same earlier contents on both (in the range and out of it), removed from the range before the copy.
            for (const d of [a, b]) {
              await fill(d, before, 'dst', true);
              await d.deleteRange(range);
            }
            const session = await a.beginIngest(range);
            for (const c of chunks) expect(await session.apply(c, { sync: false })).toBe('bulk');
            session.close();
            expect(session.taintedBy).toBeNull();
            for (const c of chunks) await b.applyRaw(c, { sync: false });
            await checkExact(a);
            expect(a.rangeStats(range)).toEqual(b.rangeStats(range));
            expect(a.totalStats()).toEqual(b.totalStats());
            expect(a.clockHigh() >= BigInt(Math.max(0, ...rows.filter((r) => inRange(r.row, range)).flatMap((r) => r.cells.map((c) => c.ts))))).toBe(true);
            for (const row of new Set(rows.map((r) => r.row).filter((r) => inRange(r, range)))) {
              const f = { columns: [], columnPrefix: '', allVersions: true, limit: 0 };
              expect(await a.readRow(row, f)).toEqual(await b.readRow(row, f));
            }
          } finally {
            await a.close();
            await b.close();
          }
          expect(await dump(aDir)).toEqual(await dump(bDir));
        },
      ),
      { numRuns: 40 },
    );
  }, 120_000);

  /** A source with rows in every range, its chunks for `range`, and an emptied destination. */
  async function setup(range: HashRange, chunkBytes = 200) {
    const src = await ShardStore.open(await tempDir());
    const rows: Row[] = [];
    for (let i = 0; i < 300; i++) rows.push({ row: `r${i}`, lease: i % 7 === 0, cells: [{ column: 'v', ts: 0, value: `value ${i}` }, { column: `c${i % 3}`, ts: 100 + i, value: 'x'.repeat(i % 50) }] });
    await fill(src, rows, 'src');
    const chunks = await exportChunks(src, range, chunkBytes);
    await src.close();
    const dst = await ShardStore.open(await tempDir());
    return { chunks, dst, rows };
  }
  const R = RANGES[0]!;

  test('a write into the range during the session sends later chunks the exact way, and all stays exact', async () => {
    const { chunks, dst, rows } = await setup(R);
    expect(chunks.length).toBeGreaterThan(4);
    const session = await dst.beginIngest(R);
    const half = chunks.length >> 1;
    for (const c of chunks.slice(0, half)) expect(await session.apply(c, { sync: false })).toBe('bulk');
    // A row of the range that a later chunk also holds, and a new one.
    const inR = rows.map((r) => r.row).filter((r) => inRange(r, R));
    const writes = dst.writeRows(
      [
        { row: inR[inR.length - 1]!, replace: false, cells: [{ column: 'v', timestampUs: 1n, value: Buffer.from('late') }] },
        { row: 'a new row', replace: false, cells: [{ column: 'v', timestampUs: 0n, value: Buffer.from('n') }] },
      ],
      { requestId: '', sync: false },
    );
    const rest = Promise.all(chunks.slice(half).map((c) => session.apply(c, { sync: false })));
    await writes;
    expect(new Set(await rest)).toEqual(new Set(['exact']));
    expect(session.taintedBy).toMatch(/another mutation/);
    session.close();
    await checkExact(dst);
    await dst.close();
  });

  test('a mutation of another range does not taint the session', async () => {
    const { chunks, dst } = await setup(R);
    const outside = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'].find((r) => !inRange(r, R))!;
    const session = await dst.beginIngest(R);
    await dst.writeRows([{ row: outside, replace: false, cells: [{ column: 'v', timestampUs: 0n, value: Buffer.from('o') }] }], { requestId: '', sync: false });
    for (const c of chunks) expect(await session.apply(c, { sync: false })).toBe('bulk');
    session.close();
    await checkExact(dst);
    await dst.close();
  });

  test('a range that is not empty, a closed session and chunks not shaped like a snapshot go the exact way', async () => {
    const { chunks, dst, rows } = await setup(R);
    const inR = rows.find((r) => inRange(r.row, R))!;
    await fill(dst, [inR], 'dst');
    const s1 = await dst.beginIngest(R);
    expect(s1.taintedBy).toMatch(/not empty/);
    expect(await s1.apply(chunks[0]!, { sync: false })).toBe('exact');
    s1.close();
    await expect(s1.apply(chunks[1]!, { sync: false })).rejects.toThrow(/closed/);
    await dst.deleteRange(R);
    // The same chunk twice: its keys are not above the last one ingested.
    const s2 = await dst.beginIngest(R);
    expect(s2.taintedBy).toBeNull();
    expect(await s2.apply(chunks[0]!, { sync: false })).toBe('bulk');
    expect(await s2.apply(chunks[0]!, { sync: false })).toBe('exact');
    expect(s2.taintedBy).toMatch(/order/);
    for (const c of chunks.slice(1)) expect(await s2.apply(c, { sync: false })).toBe('exact');
    s2.close();
    await checkExact(dst);
    // A delete in a chunk.
    await dst.deleteRange(R);
    const s3 = await dst.beginIngest(R);
    const cell = chunks[0]!.find((op) => op.sublevel === 'cells')!;
    expect(await s3.apply([{ sublevel: 'cells', key: cell.key }], { sync: false })).toBe('exact');
    expect(s3.taintedBy).toMatch(/delete/);
    s3.close();
    await checkExact(dst);
    await dst.close();
  });

  test('a copy cut short is removed exactly by deleteRange, and a retry ingests again', async () => {
    const { chunks, dst } = await setup(R, 150);
    const s1 = await dst.beginIngest(R);
    for (const c of chunks.slice(0, 3)) await s1.apply(c, { sync: false });
    s1.close(); // the pull failed here
    await checkExact(dst);
    // The retry (or DropRange) deletes what is there first.
    expect(await dst.deleteRange(R)).toBeGreaterThan(0);
    expect(dst.rangeStats(R)).toEqual({ rows: 0, bytes: 0 });
    await checkExact(dst);
    const s2 = await dst.beginIngest(R);
    for (const c of chunks) expect(await s2.apply(c, { sync: false })).toBe('bulk');
    s2.close();
    await checkExact(dst);
    // After a reopen (as after a crash) the records are the same.
    const dir = dst.dir;
    const stats = dst.totalStats();
    await dst.close();
    const again = await ShardStore.open(dir);
    expect(again.totalStats()).toEqual(stats);
    await checkExact(again);
    await again.close();
  });
});

describe('bulk deleteRange', () => {
  test('leaves the same database as deleting every key with applyRaw (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(rowArb, { minLength: 1, maxLength: 25 }), fc.constantFrom(...RANGES), fc.integer({ min: 1, max: 20 }), async (rows, range, batchSize) => {
        const [aDir, bDir] = [await tempDir(), await tempDir()];
        const a = await ShardStore.open(aDir);
        const b = await ShardStore.open(bDir);
        try {
          for (const d of [a, b]) await fill(d, rows, 'x', true);
          const keys = (await exportChunks(b, range, 1 << 20)).flat();
          expect(await a.deleteRange(range, batchSize)).toBe(keys.length);
          await b.applyRaw(
            keys.map((op) => ({ sublevel: op.sublevel, key: op.key })),
            { sync: false },
          );
          await checkExact(a);
          expect(a.rangeStats(range)).toEqual({ rows: 0, bytes: 0 });
          expect(a.totalStats()).toEqual(b.totalStats());
        } finally {
          await a.close();
          await b.close();
        }
        expect(await dump(aDir)).toEqual(await dump(bDir));
      }),
      { numRuns: 40 },
    );
  }, 120_000);

  test('writes into the range while it is deleted keep everything exact', async () => {
    const s = await ShardStore.open(await tempDir());
    const rows: Row[] = [];
    for (let i = 0; i < 400; i++) rows.push({ row: `r${i}`, lease: false, cells: [{ column: 'v', ts: 0, value: `v${i}` }, { column: 'w', ts: 7, value: 'w' }] });
    await fill(s, rows, 'x');
    const R = RANGES[0]!;
    const inR = rows.map((r) => r.row).filter((r) => inRange(r, R));
    const deleting = s.deleteRange(R, 10);
    const writes = inR.slice(0, 30).map((row, i) =>
      s.writeRows([{ row, replace: false, cells: [{ column: 'v', timestampUs: BigInt(10 + i), value: Buffer.from('late') }] }], { requestId: '', sync: false }),
    );
    await Promise.all([deleting, ...writes]);
    await checkExact(s);
    await s.deleteRange(R);
    expect(s.rangeStats(R)).toEqual({ rows: 0, bytes: 0 });
    await checkExact(s);
    await s.close();
  });
});
