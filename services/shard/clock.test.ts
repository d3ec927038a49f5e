import { describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { HybridClock, wallClockUs } from './clock.js';

describe('HybridClock', () => {
  test('follows the wall clock and is never below Date.now()*1000', () => {
    const c = new HybridClock();
    for (let i = 0; i < 1000; i++) {
      const before = BigInt(Date.now()) * 1000n;
      const t = c.now();
      expect(t).toBeGreaterThanOrEqual(before);
    }
  });

  test('is strictly increasing even when the wall clock stands still or goes back', () => {
    let wall = 1_000_000n;
    const c = new HybridClock(0n, () => wall);
    expect(c.now()).toBe(1_000_000n);
    expect(c.now()).toBe(1_000_001n);
    wall = 500n; // a step back
    expect(c.now()).toBe(1_000_002n);
    wall = 2_000_000n;
    expect(c.now()).toBe(2_000_000n);
    expect(c.high()).toBe(2_000_000n);
  });

  test('starts above the persisted floor', () => {
    const floor = wallClockUs() + 60_000_000n; // a mark one minute ahead of this machine's clock
    const c = new HybridClock(floor);
    expect(c.high()).toBe(floor);
    expect(c.now()).toBe(floor + 1n);
  });

  test('observe moves it past a received timestamp, and an older one changes nothing', () => {
    const c = new HybridClock(0n, () => 10n);
    c.observe(1000n);
    expect(c.high()).toBe(1000n);
    expect(c.now()).toBe(1001n);
    c.observe(5n);
    expect(c.now()).toBe(1002n);
  });

  test('property: any interleaving of observe and now never repeats and never goes back', () => {
    const step = fc.oneof(
      fc.record({ kind: fc.constant('now' as const), wall: fc.bigInt({ min: 0n, max: 1_000_000n }) }),
      fc.record({ kind: fc.constant('observe' as const), ts: fc.bigInt({ min: 0n, max: 2_000_000n }) }),
    );
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 1_000_000n }), fc.array(step, { maxLength: 200 }), (floor, steps) => {
        let wall = 0n;
        const c = new HybridClock(floor, () => wall);
        let maxSeen = floor; // largest value given out or observed
        const given = new Set<bigint>();
        for (const s of steps) {
          if (s.kind === 'observe') {
            c.observe(s.ts);
            if (s.ts > maxSeen) maxSeen = s.ts;
          } else {
            wall = s.wall;
            const t = c.now();
            expect(t).toBeGreaterThan(maxSeen);
            expect(t).toBeGreaterThanOrEqual(wall);
            expect(given.has(t)).toBe(false);
            given.add(t);
            maxSeen = t;
          }
          expect(c.high()).toBe(maxSeen);
        }
      }),
    );
  });
});
