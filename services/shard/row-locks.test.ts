import { describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { RowLocks } from './store-plan.js';

describe('RowLocks', () => {
  test('exclusive per key, FIFO per key, and every caller gets its locks (random key sets with repeats, random hold times)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ keys: fc.array(fc.constantFrom('a', 'b', 'c', 'd', 'e'), { minLength: 1, maxLength: 6 }), hold: fc.nat(3) }), { minLength: 1, maxLength: 25 }),
        async (callers) => {
          const locks = new RowLocks();
          const holding = new Map<string, number>();
          const order = new Map<string, number[]>(); // per key: callers in the order they got it
          const started: Promise<void>[] = [];
          for (let i = 0; i < callers.length; i++) {
            const c = callers[i]!;
            const got = locks.acquire(c.keys);
            started.push(
              got.then(async (release) => {
                for (const k of new Set(c.keys)) {
                  expect(holding.get(k)).toBeUndefined();
                  holding.set(k, i);
                  (order.get(k) ?? order.set(k, []).get(k)!).push(i);
                }
                for (let t = 0; t < c.hold; t++) await new Promise((r) => setImmediate(r));
                for (const k of new Set(c.keys)) holding.delete(k);
                release();
                release(); // a second release changes nothing
              }),
            );
          }
          await Promise.all(started);
          for (const [k, got] of order) {
            const want = callers.flatMap((c, i) => ((c.keys as string[]).includes(k) ? [i] : []));
            expect(got).toEqual(want);
          }
          // Nothing is left held: the same keys are free at once.
          const again = await Promise.race([locks.acquire(['a', 'b', 'c', 'd', 'e']), new Promise((r) => setTimeout(() => r('stuck'), 100))]);
          expect(typeof again).toBe('function');
        },
      ),
      { numRuns: 150 },
    );
  });
});
