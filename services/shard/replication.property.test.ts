/**
 * A replica group of three shards (one primary, two followers) driven by
 * random schedules through replication.ts, the way the shard and the master
 * will drive it: client writes, batches sent on in-order links that drop
 * messages, acks and rejections, heartbeats, time passing, crashes and
 * restarts (logs and the applied prefix are durable), failover by the master
 * (chooseNewPrimary among the in-sync members, version + 1) with or without
 * the map reaching the old primary and the other followers, the primary
 * truncating its log below retainFrom (a follower behind it gets a snapshot),
 * map steps that reach the followers before the primary, overdue followers
 * taken out of the in-sync set, and learners rejoining (the simulation is
 * fake-replica-group.ts). After every step it checks the invariants of
 * DESIGN.md "Replication and failover": versions only grow; one primary per
 * version; every write acknowledged to a client is, with its term, on every
 * in-sync member and every later primary; nobody outside the in-sync set is
 * promoted; no follower accepts an older version; applied prefixes agree;
 * at most one primary holds a lease at any time; and a primary that may
 * serve reads has applied every acknowledged write.
 */
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { Group, seen, type Action } from './fake-replica-group.js';

const shardIdx = fc.integer({ min: 0, max: 2 });
const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant('write' as const), n: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('send' as const), from: shardIdx, to: shardIdx, max: fc.integer({ min: 1, max: 4 }), heartbeat: fc.boolean() }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('deliver' as const), link: fc.nat(5), drop: fc.nat(4).map((n) => n === 0) }) },
  { weight: 3, arbitrary: fc.constant({ t: 'pump' as const }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 1600 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('crash' as const), shard: fc.integer({ min: 0, max: 4 }) }) /* 3, 4: the primary */ },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('restart' as const), shard: shardIdx }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('failover' as const), tellOld: fc.boolean(), tellOthers: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('removeOverdue' as const), primaryLate: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('addLearner' as const), shard: shardIdx, compact: fc.boolean(), primaryLate: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('proposeJoin' as const), shard: shardIdx }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('applyJoin' as const), primaryLate: fc.boolean() }) },
  { weight: 2, arbitrary: fc.constant({ t: 'primaryTakesMap' as const }) },
  { weight: 2, arbitrary: fc.constant({ t: 'compact' as const }) },
);


describe('replication: a group of three', () => {
  const play = (minInSync: number, actions: readonly Action[]): Group => {
    const g = new Group(minInSync);
    for (const a of actions) {
      g.run(a);
      g.settle();
    }
    return g;
  };

  it('keeps the invariants after every step of random schedules', () => {
    const before = { ...seen };
    fc.assert(
      fc.property(fc.constantFrom(1, 2), fc.array(actionArb, { minLength: 30, maxLength: 100, size: 'max' }), (minInSync, actions) => {
        play(minInSync, actions);
      }),
      { numRuns: Number(process.env.CAIRN_FUZZ_RUNS) || 400 },
    );
    // The schedules reached the paths that matter (each dozens of times in 400 runs; truncations and snapshots are rarer, see below).
    for (const k of ['acked', 'failovers', 'removals', 'joins', 'staleRefusals', 'resumed'] as const) expect([k, seen[k] > before[k]]).toEqual([k, true]);
  });

  it('drops a rejoining old primary\'s unacknowledged suffix and catches it up from a snapshot', () => {
    const before = { ...seen };
    const g = play(1, [
      { t: 'pump' }, // the followers answer: the lease holds
      { t: 'write', n: 2 },
      { t: 'pump' }, // lsn 1-2 committed everywhere
      { t: 'write', n: 2 }, // lsn 3-4 only on a, never sent
      { t: 'crash', shard: 3 }, // the primary
      { t: 'failover', tellOld: false, tellOthers: true }, // b (tie at lsn 2, by id), version 2
      { t: 'pump' },
      { t: 'write', n: 1 }, // lsn 3 at term 2
      { t: 'pump' },
      { t: 'restart', shard: 0 }, // a, with lsn 3-4 at term 1
      { t: 'addLearner', shard: 0, compact: true, primaryLate: false }, // b truncates its log below lsn 4
      { t: 'pump' }, // a drops lsn 3-4 (term 1), asks for lsn 3: gone, so a snapshot
      { t: 'pump' },
      { t: 'pump' },
    ]);
    expect(g.map).toMatchObject({ version: 3n, primary: 'b', inSync: ['c'], learners: ['a'] });
    expect(seen.truncations).toBeGreaterThan(before.truncations);
    expect(seen.snapshots).toBeGreaterThan(before.snapshots);
    expect(g.shard('a').log).toEqual([1n, 1n, 2n]);
    expect(g.shard('a').applied).toBe(3n);
    expect([...g.acked]).toEqual([[1n, 1n], [2n, 1n], [3n, 2n]]);
  });
});
