import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { ClusterMap as ClusterMapProto } from '../../proto/gen/cairn/v1/common.js';
import {
  factorOf,
  groupError,
  inSyncOf,
  learnersOf,
  mapError,
  mapFromJson,
  mapFromProto,
  mapToJson,
  mapToProto,
  replicasOf,
  type ClusterMap,
  type MapRange,
} from './map.js';
import { evenSplit } from './ranges.js';

const SHARDS = ['s1', 's2', 's3', 's4'].map((id) => ({ id, address: `127.0.0.1:${id.slice(1)}000` }));

function singleCopyMap(): ClusterMap {
  return { epoch: 3n, ranges: evenSplit(4).map((r, i) => ({ ...r, shardId: SHARDS[i]!.id })), shards: SHARDS, clusterId: 'c-1' };
}

function replicatedMap(): ClusterMap {
  const ranges: MapRange[] = evenSplit(4).map((r, i) => {
    const ids = [0, 1, 2].map((k) => SHARDS[(i + k) % 4]!.id);
    return { ...r, shardId: ids[0]!, replicas: ids, inSync: ids.slice(0, 2), learners: [SHARDS[(i + 3) % 4]!.id], version: BigInt(i + 1) };
  });
  return { epoch: 9n, ranges, shards: SHARDS, clusterId: 'c-1', replicationFactor: 3 };
}

/** Proto bytes and back, as a map crosses the wire. */
const viaWire = (m: ClusterMap): ClusterMap => mapFromProto(ClusterMapProto.decode(ClusterMapProto.encode(mapToProto(m)).finish()));
const viaJson = (m: ClusterMap): ClusterMap => mapFromJson(JSON.parse(JSON.stringify(mapToJson(m))));

describe('the map with replica groups', () => {
  it('a single-copy map carries no group fields: its JSON is as before replication and its wire form has none', () => {
    const m = singleCopyMap();
    expect(mapToJson(m)).toEqual({
      epoch: '3',
      ranges: m.ranges.map((r) => ({ start: r.start.toString(), end: r.end.toString(), shardId: r.shardId })),
      shards: SHARDS,
      clusterId: 'c-1',
    });
    const wire = mapToProto(m);
    expect(wire.replicationFactor).toBe(0);
    for (const r of wire.ranges) expect([r.replicas, r.inSync, r.learners, r.version]).toEqual([[], [], [], 0n]);
    expect(viaWire(m)).toEqual(m);
    expect(viaJson(m)).toEqual(m);
  });

  it('a map written before replication reads as factor 1 with each range on its owner alone', () => {
    const old = mapFromJson({ epoch: '2', ranges: [{ start: '0', end: (1n << 64n).toString(), shardId: 's1' }], shards: SHARDS, clusterId: 'c-1' });
    expect(factorOf(old)).toBe(1);
    expect(replicasOf(old.ranges[0]!)).toEqual(['s1']);
    expect(inSyncOf(old.ranges[0]!)).toEqual(['s1']);
    expect(learnersOf(old.ranges[0]!)).toEqual([]);
    expect(mapError(old)).toBeNull();
  });

  it('replica groups and the factor survive the wire and the JSON form', () => {
    const m = replicatedMap();
    expect(mapError(m)).toBeNull();
    expect(viaWire(m)).toEqual(m);
    expect(viaJson(m)).toEqual(m);
  });

  it('any valid group survives both forms (property)', () => {
    const ids = SHARDS.map((s) => s.id);
    const group = fc
      .shuffledSubarray(ids, { minLength: 1 })
      .chain((replicas) =>
        fc.record({
          replicas: fc.constant(replicas),
          inSyncCount: fc.integer({ min: 1, max: replicas.length }),
          learners: fc.shuffledSubarray(ids.filter((s) => !replicas.includes(s))),
          version: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        }),
      );
    fc.assert(
      fc.property(fc.array(group, { minLength: 4, maxLength: 4 }), fc.integer({ min: 1, max: 5 }), (groups, factor) => {
        const ranges = evenSplit(4).map((r, i) => {
          const g = groups[i]!;
          return { ...r, shardId: g.replicas[0]!, replicas: g.replicas, inSync: g.replicas.slice(0, g.inSyncCount), learners: g.learners, version: g.version };
        });
        const m: ClusterMap = { epoch: 1n, ranges, shards: SHARDS, clusterId: 'c', replicationFactor: factor };
        expect(mapError(m)).toBeNull();
        for (const back of [viaWire(m), viaJson(m)]) {
          expect(factorOf(back)).toBe(factor);
          back.ranges.forEach((r, i) => {
            expect([r.shardId, replicasOf(r), inSyncOf(r), learnersOf(r)]).toEqual([m.ranges[i]!.shardId, m.ranges[i]!.replicas, m.ranges[i]!.inSync, m.ranges[i]!.learners]);
          });
        }
      }),
      { numRuns: 200 },
    );
  });
});

describe('groupError: the invariants of one replica group', () => {
  const known = new Set(SHARDS.map((s) => s.id));
  const base = { start: 0n, end: 1n << 64n, shardId: 's1' };
  it.each<[string, Partial<MapRange>, string | null]>([
    ['a single copy', {}, null],
    ['a full group', { replicas: ['s1', 's2', 's3'], inSync: ['s1', 's3'], learners: ['s4'] }, null],
    ['a primary that is not the first replica', { replicas: ['s2', 's1'], inSync: ['s1', 's2'] }, 'the primary s1 must be the first replica, not s2'],
    ['a primary out of sync', { replicas: ['s1', 's2'], inSync: ['s2'] }, 'the primary s1 is not in the in-sync set'],
    ['an in-sync member that is no replica', { replicas: ['s1', 's2'], inSync: ['s1', 's3'] }, 'in-sync member s3 is not a replica'],
    ['a shard with two copies', { replicas: ['s1', 's2', 's2'], inSync: ['s1'] }, 'shard s2 holds two copies'],
    ['a learner that is also a replica', { replicas: ['s1', 's2'], inSync: ['s1'], learners: ['s2'] }, 'shard s2 holds two copies'],
    ['an unknown shard', { replicas: ['s1', 's9'], inSync: ['s1'] }, 'replica s9 is an unknown shard'],
  ])('%s', (_, group, expected) => {
    expect(groupError({ ...base, ...group }, known)).toBe(expected);
  });

  it('mapError names the range whose group is broken', () => {
    const m = replicatedMap();
    m.ranges[2] = { ...m.ranges[2]!, inSync: ['s9'] };
    expect(mapError(m)).toMatch(/^range \[\d+, \d+\): the primary s3 is not in the in-sync set$/);
  });
});
