import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { HASH_SPACE_END } from '../../services/common/hash.js';
import { ago, etaSeconds, formatDuration, hashShares, mapStrip, moveFraction, phaseOf, sharesLine, totalProgress, type MoveView } from './model.js';

const move = (o: Partial<MoveView>): MoveView => ({ id: 'mv-1', operationId: 'op-1', from: 's1', to: 's3', state: 'copying', bytes: 1000, copiedBytes: 0, bytesPerSec: 0, ...o });

describe('moves', () => {
  it('names the phases copy, catch-up and cutover, then done', () => {
    expect(['planned', 'copying', 'catching_up', 'fenced', 'committed', 'cleaned', 'aborted'].map(phaseOf)).toEqual(['waiting', 'copy', 'catch-up', 'cutover', 'done', 'done', 'aborted']);
  });

  it('reaches 100% only when the move has committed', () => {
    expect(moveFraction(move({ state: 'planned', copiedBytes: 0 }))).toBe(0);
    expect(moveFraction(move({ copiedBytes: 500 }))).toBe(0.5);
    expect(moveFraction(move({ copiedBytes: 5000 }))).toBe(0.99);
    expect(moveFraction(move({ state: 'catching_up', copiedBytes: 1000 }))).toBe(0.99);
    expect(moveFraction(move({ state: 'committed', copiedBytes: 10 }))).toBe(1);
    expect(moveFraction(move({ state: 'cleaned', bytes: 0 }))).toBe(1);
  });

  it('tells the ETA from the rate while copying, and nothing without a rate', () => {
    expect(etaSeconds(move({ copiedBytes: 400, bytesPerSec: 100 }))).toBe(6);
    expect(etaSeconds(move({ copiedBytes: 400 }))).toBeUndefined();
    expect(etaSeconds(move({ state: 'fenced', bytesPerSec: 100 }))).toBeUndefined();
    expect(etaSeconds(move({ state: 'cleaned' }))).toBe(0);
    expect([formatDuration(undefined), formatDuration(4.4), formatDuration(184), formatDuration(7300)]).toEqual(['-', '4s', '3m04s', '2h01m']);
  });

  it('weighs the total bar by bytes and counts moves done and aborted', () => {
    const t = totalProgress([move({ state: 'cleaned', bytes: 3000, copiedBytes: 3000 }), move({ id: 'b', copiedBytes: 500, bytesPerSec: 250 })]);
    expect(t.fraction).toBeCloseTo((3000 + 500) / 4000);
    expect(t).toMatchObject({ done: 1, aborted: 0, count: 2, bytes: 4000, copiedBytes: 3500, etaSeconds: 2 });
    const over = totalProgress([move({ state: 'committed' }), move({ id: 'b', state: 'aborted', error: 'x' })]);
    expect(over).toMatchObject({ done: 1, aborted: 1, etaSeconds: 0 });
  });
});

describe('shares of the hash space', () => {
  const servers = [{ id: 's1' }, { id: 's2' }, { id: 's3' }];
  const third = HASH_SPACE_END / 3n;
  const ranges = [
    { start: 0n, end: third, shard: 's1' },
    { start: third, end: 2n * third, shard: 's3' },
    { start: 2n * third, end: HASH_SPACE_END, shard: 's2' },
  ];

  it('prints shares that add up to exactly 100.0%', () => {
    expect(sharesLine(servers, ranges)).toBe('Shares of the hash space: s1 33.3%, s2 33.4%, s3 33.3% (total 100.0%)');
    expect(hashShares([{ id: 'a' }, { id: 'b' }], [{ start: 0n, end: HASH_SPACE_END, shard: 'a' }])).toEqual([
      { id: 'a', permille: 1000 },
      { id: 'b', permille: 0 },
    ]);
  });

  it('sums to 1000 permille for any tiling', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.bigInt({ min: 1n, max: HASH_SPACE_END - 1n }), { maxLength: 20 }), fc.integer({ min: 1, max: 7 }), (cuts, n) => {
        const bounds = [0n, ...cuts.sort((a, b) => (a < b ? -1 : 1)), HASH_SPACE_END];
        const ids = Array.from({ length: n }, (_, i) => `s${i}`);
        const rs = bounds.slice(1).map((end, i) => ({ start: bounds[i]!, end, shard: ids[i % n]! }));
        const shares = hashShares(ids.map((id) => ({ id })), rs);
        expect(shares.reduce((a, s) => a + s.permille, 0)).toBe(1000);
        for (const s of shares) expect(s.permille).toBeGreaterThanOrEqual(0);
      }),
    );
  });

  it('draws the map strip by owner index', () => {
    expect(mapStrip(servers, ranges, 9)).toBe('000222111');
    expect(mapStrip(servers, [], 4)).toBe('    ');
  });
});

describe('ago', () => {
  it('says how long ago, or never', () => {
    expect([ago(0, 5000), ago(4500, 5000), ago(1000, 31_000), ago(1000, 601_000)]).toEqual(['never', '0.5s ago', '30s ago', '10m ago']);
  });
});
