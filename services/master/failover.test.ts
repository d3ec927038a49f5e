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

function view(o: { down?: string[]; positions?: Record<string, bigint>; overdue?: FollowerNote[]; caughtUp?: FollowerNote[] } = {}): FailoverView {
  return {
    isUp: (id) => !(o.down ?? []).includes(id),
    positionOf: (id) => ({ lastLsn: o.positions?.[id] ?? 0n, lastTerm: 1n }),
    overdue: o.overdue ?? [],
    caughtUp: o.caughtUp ?? [],
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
});
