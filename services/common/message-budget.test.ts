import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { takeUnderBudget } from './message-budget.js';

describe('takeUnderBudget', () => {
  it('takes the leading items under the budget, at least one, and leaves the rest in order', () => {
    const q = [10, 20, 30, 40].map((bytes, i) => ({ item: `c${i}`, bytes }));
    expect(takeUnderBudget(q, 60)).toEqual({ taken: ['c0', 'c1', 'c2'], rest: [q[3]], bytes: 60 });
    expect(takeUnderBudget(q, 5)).toEqual({ taken: ['c0'], rest: q.slice(1), bytes: 10 });
    expect(takeUnderBudget([], 5)).toEqual({ taken: [], rest: [], bytes: 0 });
  });

  it('sends every item once, in order, each message under the budget unless it holds one item (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(100)), fc.integer({ min: 1, max: 300 }), (sizes, budget) => {
        let queue = sizes.map((bytes, i) => ({ item: i, bytes }));
        const sent: number[] = [];
        while (queue.length) {
          const { taken, rest, bytes } = takeUnderBudget(queue, budget);
          expect(taken.length).toBeGreaterThan(0);
          if (taken.length > 1) expect(bytes).toBeLessThanOrEqual(budget);
          sent.push(...taken);
          queue = rest;
        }
        expect(sent).toEqual(sizes.map((_, i) => i));
      }),
    );
  });
});
