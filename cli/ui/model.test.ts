import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { HASH_SPACE_END } from '../../services/common/hash.js';
import { ago, capLines, etaSeconds, formatDuration, hashShares, isReplicated, mapStrip, moveFraction, phaseOf, replicaEvents, replicationSummary, sharesLine, totalProgress, underReplicated, wantedCopies, type GroupRow, type MoveView } from './model.js';

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

describe('replication', () => {
  const ids = (n: number) => Array.from({ length: n }, (_, i) => ({ id: `s${i + 1}` }));
  /** A range [start, end) with its group: `primary`, then the followers (`s2` in sync, `s3?` catching up), `+s4` learners. */
  const group = (start: bigint, end: bigint, ...copies: string[]): GroupRow => {
    const [primary, ...rest] = copies as [string, ...string[]];
    const followers = rest.filter((c) => !c.startsWith('+')).map((c) => c.replace('?', ''));
    return {
      start,
      end,
      shard: primary,
      replicas: [primary, ...followers],
      inSync: [primary, ...rest.filter((c) => !c.startsWith('+') && !c.endsWith('?'))],
      learners: rest.filter((c) => c.startsWith('+')).map((c) => c.slice(1)),
    };
  };
  const single: GroupRow[] = [
    { start: 0n, end: 10n, shard: 's1' },
    { start: 10n, end: 20n, shard: 's2' },
  ];

  it('wants min(factor, shards) copies, the most copies any range has standing in for an unknown factor', () => {
    const ranges = [group(0n, 10n, 's1', 's2', 's3'), group(10n, 20n, 's2', 's3?')];
    expect(wantedCopies({ servers: ids(3), ranges })).toBe(3);
    expect(wantedCopies({ servers: ids(2), ranges })).toBe(2);
    expect(wantedCopies({ servers: ids(5), ranges, replicationFactor: 2 })).toBe(2);
    expect(wantedCopies({ servers: ids(2), ranges: single })).toBe(1);
    expect(wantedCopies({ servers: [], ranges: [] })).toBe(1);
  });

  it('calls a cluster replicated when a range has a second copy or a learner, or the factor asks for more than one', () => {
    expect(isReplicated({ servers: ids(2), ranges: single })).toBe(false);
    expect(isReplicated({ servers: ids(2), ranges: single, replicationFactor: 1 })).toBe(false);
    expect(isReplicated({ servers: ids(1), ranges: single, replicationFactor: 3 })).toBe(false);
    expect(isReplicated({ servers: ids(2), ranges: single, replicationFactor: 2 })).toBe(true);
    expect(isReplicated({ servers: ids(2), ranges: [group(0n, 10n, 's1', '+s2')] })).toBe(true);
    expect(replicationSummary({ servers: ids(2), ranges: single })).toBeUndefined();
  });

  it('counts and names the ranges with fewer in-sync copies than wanted', () => {
    const ranges = [group(0n, 10n, 's1', 's2', 's3'), group(10n, 20n, 's2', 's3?', 's1'), group(20n, 30n, 's3', 's1?', 's2?'), group(30n, 40n, 's1', '+s2')];
    expect(underReplicated({ servers: ids(3), ranges }).map((u) => [u.range.start, u.inSync])).toEqual([
      [10n, 2],
      [20n, 1],
      [30n, 1],
    ]);
    expect(replicationSummary({ servers: ids(3), ranges })).toEqual({
      summary: 'Replication: 3 copies wanted · 3 of 4 ranges under-replicated · 1 learner copying',
      short: 'Under-replicated: [10, 20) 2/3 in sync, [20, 30) 1/3 in sync, and 1 more',
    });
    expect(replicationSummary({ servers: ids(3), ranges: ranges.slice(0, 1) })).toEqual({ summary: 'Replication: 3 copies wanted · all 1 ranges in sync' });
    // A factor-2 cluster whose ranges have no second copy yet: every range is short.
    expect(replicationSummary({ servers: ids(2), ranges: single, replicationFactor: 2 })?.short).toBe('Under-replicated: [0, 10) 1/2 in sync, [10, 20) 1/2 in sync');
  });

  it('says nothing for an unchanged map, nor for a single-copy one whose ranges moved', () => {
    const ranges = [group(0n, 10n, 's1', 's2', 's3?', '+s4'), group(10n, 20n, 's2', 's1')];
    expect(replicaEvents(ranges, ranges.map((r) => ({ ...r })))).toEqual([]);
    expect(replicaEvents(single, [{ ...single[0]!, shard: 's3' }, single[1]!])).toEqual([]);
    expect(replicaEvents([], ranges)).toEqual([]);
  });

  it('tells a failover from a hand-over by whether the old primary stayed in sync', () => {
    const before = [group(0n, 10n, 's1', 's2', 's3'), group(10n, 20n, 's2', 's1')];
    const after = [group(0n, 10n, 's2', 's3', 's1?'), group(10n, 20n, 's1', 's2')];
    expect(replicaEvents(before, after)).toEqual(['range [0, 10): primary s1 → s2 (failover)', 'range [10, 20): primary s2 → s1 (hand-over)']);
  });

  it('follows re-replication: a learner added, caught up, the copy it replaces dropped', () => {
    const start = [group(0n, 10n, 's1', 's2?')];
    const learning = [group(0n, 10n, 's1', 's2?', '+s3')];
    const joined = [group(0n, 10n, 's1', 's2?', 's3')];
    const dropped = [group(0n, 10n, 's1', 's3')];
    expect(replicaEvents(start, learning)).toEqual(['s3 started copying [0, 10) as a learner (re-replication)']);
    expect(replicaEvents(learning, joined)).toEqual(['s3 caught up and joined the in-sync set of [0, 10)']);
    expect(replicaEvents(joined, dropped)).toEqual(['s2 no longer holds a copy of [0, 10)']);
    // A single copy gaining its first learner is re-replication too.
    expect(replicaEvents(single, [group(0n, 10n, 's1', '+s2'), single[1]!])).toEqual(['s2 started copying [0, 10) as a learner (re-replication)']);
  });

  it('tells followers leaving and rejoining the in-sync set', () => {
    const inSync = [group(0n, 10n, 's1', 's2', 's3')];
    const behind = [group(0n, 10n, 's1', 's2?', 's3')];
    expect(replicaEvents(inSync, behind)).toEqual(['s2 left the in-sync set of [0, 10) (catching up)']);
    expect(replicaEvents(behind, inSync)).toEqual(['s2 rejoined the in-sync set of [0, 10)']);
  });

  it('caps a burst of changes, saying how many more there were', () => {
    expect(capLines(['a', 'b', 'c'], 3, (n) => `${n} more`)).toEqual(['a', 'b', 'c']);
    expect(capLines(['a', 'b', 'c'], 2, (n) => `${n} more`)).toEqual(['a', 'b', '1 more']);
  });
});
