/**
 * When a prefix scan walks a window instead of seeking the row-key index
 * (store-reads.ts walkThreshold), and the per-prefix match counts that
 * decide it (PrefixMatchCounts). The scans themselves are checked in
 * row-index.test.ts.
 */
import { afterAll, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { rowIndexKey, rowPrefix } from './keys.js';
import { sublevels } from './store-db.js';
import { PrefixMatchCounts, WALK_MIN_ROWS, WALK_VS_INDEX_ENTRY, walkThreshold } from './store-reads.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test('a small shard, or an empty window, always seeks', () => {
  expect(walkThreshold(WALK_MIN_ROWS - 1, WALK_MIN_ROWS - 1)).toBe(Infinity);
  expect(walkThreshold(1_000_000, 0)).toBe(Infinity);
});

test('the walk wins at fewer matches the more windows the shard holds, and only when walking is cheaper by the cost model', () => {
  fc.assert(
    fc.property(fc.integer({ min: WALK_MIN_ROWS, max: 10_000_000 }), fc.integer({ min: 1, max: 256 }), (rows, windows) => {
      const windowRows = Math.max(1, Math.floor(rows / windows));
      const t = walkThreshold(rows, windowRows);
      const fewer = walkThreshold(rows, Math.max(1, Math.floor(rows / (windows * 2))));
      if (t !== Infinity) expect(fewer).toBeLessThanOrEqual(t);
      if (t === Infinity) return;
      expect(t).toBeLessThanOrEqual(rows);
      // At the threshold the index's cost (every match's entry, a seek per match in the window) reaches the walk's.
      const k = WALK_VS_INDEX_ENTRY;
      const cost = (m: number) => ({ index: m + (k * m * windowRows) / rows, walk: k * windowRows });
      expect(cost(t).index).toBeGreaterThanOrEqual(cost(t).walk * 0.999);
      if (t > 1) expect(cost(t - 1).index).toBeLessThan(cost(t - 1).walk * 1.001);
    }),
  );
  // One range per shard: only a prefix matching nearly every row walks; 32 ranges: about 1 row in 3.
  expect(walkThreshold(1_000_000, 1_000_000) / 1_000_000).toBeGreaterThan(0.9);
  expect(walkThreshold(1_000_000, 1_000_000 / 32) / 1_000_000).toBeLessThan(0.4);
});

test('match counts stop at what is asked, and are kept a few seconds per prefix', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-prefixwalk-'));
  dirs.push(dir);
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  try {
    const subs = sublevels(db);
    const put = (rows: string[]) => subs.rowindex.batch(rows.map((row) => ({ type: 'put' as const, key: rowIndexKey(rowPrefix(row)), value: Buffer.from([1]) })));
    await put(Array.from({ length: 3000 }, (_, i) => `a/${i}`));
    await put(Array.from({ length: 10 }, (_, i) => `b/${i}`));
    const counts = new PrefixMatchCounts(5000);
    const snapshot = () => db.snapshot();
    expect(await counts.reaches(subs, 'a/', 2500, snapshot(), 0)).toBe(true);
    expect(await counts.reaches(subs, 'b/', 11, snapshot(), 0)).toBe(false);
    expect(await counts.reaches(subs, 'b/', 10, snapshot(), 0)).toBe(true); // complete count kept: 10 matches
    // Kept: more rows written under b/ do not change the answer until the count expires.
    await put(Array.from({ length: 100 }, (_, i) => `b/x${i}`));
    expect(await counts.reaches(subs, 'b/', 50, snapshot(), 4999)).toBe(false);
    expect(await counts.reaches(subs, 'b/', 50, snapshot(), 5000)).toBe(true);
    // A count that stopped short is counted again when more is asked.
    expect(await counts.reaches(subs, 'a/', 3001, snapshot(), 1)).toBe(false);
  } finally {
    await db.close();
  }
});
