import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { inSyncOf, mapError, replicasOf, type ClusterMap } from '../common/map.js';
import { evenSplit } from '../common/ranges.js';
import { planFailover, type FailoverView, type FollowerNote } from './failover.js';
import { initialGroups } from './replica-steps.js';

const IDS = ['s1', 's2', 's3'];
const cluster = (): ClusterMap => ({
  epoch: 5n,
  ranges: initialGroups(evenSplit(3), IDS, 3),
  shards: IDS.map((id) => ({ id, address: `a-${id}` })),
  clusterId: 'c',
  replicationFactor: 3,
});

function view(o: { down?: string[]; givenUp?: string[]; positions?: Record<string, bigint>; overdue?: FollowerNote[]; caughtUp?: FollowerNote[]; primaryUnheard?: FollowerNote[]; maxLearners?: number } = {}): FailoverView {
  return {
    isUp: (id) => !(o.down ?? []).includes(id) && !(o.givenUp ?? []).includes(id),
    givenUp: (id) => (o.givenUp ?? []).includes(id),
    maxLearners: o.maxLearners ?? 2,
    positionOf: (id) => ({ lastLsn: o.positions?.[id] ?? 0n, lastTerm: 1n }),
    overdue: o.overdue ?? [],
    caughtUp: o.caughtUp ?? [],
    primaryUnheard: o.primaryUnheard ?? [],
  };
}

describe('planFailover', () => {
  it('changes nothing while every member is up and nobody was reported', () => {
    expect(planFailover(cluster(), view())).toBeUndefined();
  });

  it('promotes the in-sync follower with the most writes when the primary is down, and takes the dead shard out of every in-sync set, in one epoch', () => {
    const map = cluster(); // range 0: s1 primary, s2 and s3 followers
    const out = planFailover(map, view({ down: ['s1'], positions: { s2: 10n, s3: 12n } }))!;
    expect(out.map.epoch).toBe(6n);
    expect(mapError(out.map)).toBeNull();
    expect(out.map.ranges[0]!.shardId).toBe('s3');
    for (const r of out.map.ranges) expect(inSyncOf(r)).not.toContain('s1');
    for (const r of out.map.ranges) expect(replicasOf(r)).toContain('s1'); // it keeps its copy, to catch up when back
    expect(out.changes.join('\n')).toMatch(/primary s1 is down; s3 promoted/);
  });

  it('never promotes a replica outside the in-sync set: with none up, the range waits', () => {
    const map = cluster();
    map.ranges[0] = { ...map.ranges[0]!, inSync: ['s1', 's2'] };
    const out = planFailover(map, view({ down: ['s1', 's2'], positions: { s3: 99n } }));
    expect(out?.map.ranges[0]!.shardId ?? 's1').toBe('s1');
  });

  it('keeps a down follower in sync while its primary is down too, so whichever comes back first can take the range', () => {
    // Every shard down at once (a power loss): taking the followers out of sync would leave the range to its primary alone.
    const map = cluster();
    expect(planFailover(map, view({ down: ['s1', 's2', 's3'] }))).toBeUndefined();
    // A primary and one follower down: the other follower is promoted and the down one leaves the in-sync set.
    const out = planFailover(map, view({ down: ['s1', 's2'], positions: { s3: 5n } }))!;
    expect(out.map.ranges[0]!.shardId).toBe('s3');
    expect(inSyncOf(out.map.ranges[0]!)).toEqual(['s3']);
    // A follower back before its primary is promoted: it was kept in sync.
    const back = planFailover(map, view({ down: ['s1', 's3'], positions: { s2: 5n } }))!;
    expect(back.map.ranges[0]!.shardId).toBe('s2');
  });

  it('promotes a follower when every in-sync follower that is up has not heard from the primary, though the master hears it', () => {
    const map = cluster(); // range 0 at version 1: s1 primary, s2 and s3 followers
    const r = map.ranges[0]!;
    const unheard = (follower: string, version = 1n) => ({ range: r, version, follower });
    // The cut-off primary also reports both followers overdue: its reports no longer count once it is replaced.
    const overdue = [unheard('s2'), unheard('s3')];
    const out = planFailover(map, view({ positions: { s2: 7n, s3: 9n }, primaryUnheard: [unheard('s2'), unheard('s3')], overdue }))!;
    expect(mapError(out.map)).toBeNull();
    expect(out.map.ranges[0]!.shardId).toBe('s3');
    expect(inSyncOf(out.map.ranges[0]!)).toEqual(['s3', 's2']);
    expect(replicasOf(out.map.ranges[0]!)).toContain('s1'); // out of sync, it catches up once it hears the new primary
    expect(out.changes.join('\n')).toMatch(/no in-sync follower has heard primary s1 for longer than its lease; s3 promoted/);
    // A follower that is down does not hold the others back.
    const oneDown = planFailover(map, view({ down: ['s2'], positions: { s3: 9n }, primaryUnheard: [unheard('s3')] }))!;
    expect(oneDown.map.ranges[0]!.shardId).toBe('s3');
  });

  it('does not promote on one follower\'s word while another hears the primary, nor on a complaint about an older version', () => {
    const map = cluster();
    const r = map.ranges[0]!;
    // s3 alone cannot hear s1: its link is the trouble; s1 reports it overdue and it leaves the in-sync set.
    const one = planFailover(map, view({ primaryUnheard: [{ range: r, version: 1n, follower: 's3' }], overdue: [{ range: r, version: 1n, follower: 's3' }] }))!;
    expect(one.map.ranges[0]!.shardId).toBe('s1');
    expect(inSyncOf(one.map.ranges[0]!)).toEqual(['s1', 's2']);
    const old = planFailover(map, view({ primaryUnheard: [{ range: r, version: 0n, follower: 's2' }, { range: r, version: 0n, follower: 's3' }] }));
    expect(old).toBeUndefined();
  });

  it('takes an overdue follower out of the in-sync set only at the version its primary saw', () => {
    const map = cluster();
    const r = map.ranges[1]!;
    const stale = planFailover(map, view({ overdue: [{ range: r, version: 0n, follower: 's3' }] }));
    expect(stale).toBeUndefined();
    const out = planFailover(map, view({ overdue: [{ range: r, version: 1n, follower: 's3' }] }))!;
    expect(inSyncOf(out.map.ranges[1]!)).toEqual(['s2', 's1']);
  });

  it('lets a caught-up follower rejoin; one about to rejoin that went silent gets a new version, so its primary stops counting it', () => {
    const map = cluster();
    map.ranges[2] = { ...map.ranges[2]!, inSync: ['s3', 's1'], version: 2n };
    const r = map.ranges[2]!;
    const back = planFailover(map, view({ caughtUp: [{ range: r, version: 2n, follower: 's2' }] }))!;
    expect(inSyncOf(back.map.ranges[2]!)).toEqual(['s3', 's1', 's2']);
    const silent = planFailover(map, view({ overdue: [{ range: r, version: 2n, follower: 's2' }] }))!;
    expect(silent.map.ranges[2]!.version).toBe(3n);
    expect(inSyncOf(silent.map.ranges[2]!)).toEqual(['s3', 's1']);
  });

  it('any set of down shards: the next map is valid, one epoch on, and every new primary was in sync and is up (property)', () => {
    fc.assert(
      fc.property(fc.subarray(IDS), fc.array(fc.bigInt({ min: 0n, max: 100n }), { minLength: 3, maxLength: 3 }), (down, lsns) => {
        const map = cluster();
        const out = planFailover(map, view({ down, positions: Object.fromEntries(IDS.map((id, i) => [id, lsns[i]!])) }));
        if (!out) return;
        expect(out.map.epoch).toBe(map.epoch + 1n);
        expect(mapError(out.map)).toBeNull();
        out.map.ranges.forEach((r, i) => {
          if (r.shardId !== map.ranges[i]!.shardId) {
            expect(inSyncOf(map.ranges[i]!)).toContain(r.shardId);
            expect(down).not.toContain(r.shardId);
          }
        });
      }),
      { numRuns: 100 },
    );
  });

  it('re-replication: a copy on a given-up shard is made again on a shard holding none, then the extra replica is dropped', () => {
    const map = cluster();
    map.shards.push({ id: 's4', address: 'a-s4' });
    const first = planFailover(map, view({ givenUp: ['s1'] }))!;
    // s1's copies leave the in-sync sets, its primacy moves, and new copies start on s4 (at most two learners at once).
    const learning = first.map.ranges.filter((r) => (r.learners ?? []).includes('s4'));
    expect(learning).toHaveLength(2);
    for (const r of first.map.ranges) expect(r.shardId).not.toBe('s1');
    // s4 catches up on one range: it joins, and the range drops the given-up copy.
    const r = learning[0]!;
    const joined = planFailover(first.map, view({ givenUp: ['s1'], caughtUp: [{ range: r, version: r.version!, follower: 's4' }] }))!;
    const after = joined.map.ranges.find((x) => x.start === r.start)!;
    expect(replicasOf(after)).toContain('s4');
    expect(inSyncOf(after)).toContain('s4');
    expect(replicasOf(after)).not.toContain('s1');
    expect(replicasOf(after)).toHaveLength(3);
  });

  it('a raised factor gets new copies on single-copy ranges; a lowered one drops copies, never the primary', () => {
    const single: ClusterMap = { ...cluster(), ranges: evenSplit(3).map((r, i) => ({ ...r, shardId: IDS[i]! })), replicationFactor: 2 };
    const raised = planFailover(single, view())!;
    expect(raised.map.ranges.filter((r) => (r.learners ?? []).length === 1)).toHaveLength(2);
    const lowered = planFailover({ ...cluster(), replicationFactor: 2 }, view())!;
    for (const [i, r] of lowered.map.ranges.entries()) {
      expect(replicasOf(r)).toHaveLength(2);
      expect(r.shardId).toBe(cluster().ranges[i]!.shardId);
    }
  });

  it('a learner whose shard went down is dropped, so another can start', () => {
    const map = cluster();
    map.shards.push({ id: 's4', address: 'a-s4' });
    map.ranges[0] = { ...map.ranges[0]!, learners: ['s4'], version: 2n };
    const out = planFailover(map, view({ down: ['s4'] }))!;
    expect(out.map.ranges[0]!.learners ?? []).toEqual([]);
  });
});
