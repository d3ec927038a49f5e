/**
 * rebuildState (services/master/rebuild.ts): a lost master's state from what
 * the shards hold (docs/design.md "Membership": cluster identity). Pure,
 * so unit cases and fast-check properties over random clusters.
 */
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { mapError, type ClusterMap } from '../common/map.js';
import { bucketStart, BUCKET_COUNT, evenSplit, type OwnedRange } from '../common/ranges.js';
import { rebuildState, RebuildError, type ShardDescription } from './rebuild.js';

// ------------------------------------------------------------------ helpers

const CID = 'c-0123456789abcdef';
const addr = (id: string) => `10.0.0.${id.replace(/\D/g, '') || '99'}:7000`;

/** A valid map: the space split evenly over `owners`, naming `owners` plus `idle` shards. */
function mapOf(epoch: bigint, owners: string[], idle: string[] = [], clusterId = CID): ClusterMap {
  return {
    epoch,
    ranges: evenSplit(owners.length).map((r, i) => ({ ...r, shardId: owners[i]! })),
    shards: [...owners, ...idle].map((id) => ({ id, address: addr(id) })),
    clusterId,
  };
}

function shard(shardId: string, map: ClusterMap, o: Partial<ShardDescription> = {}): ShardDescription {
  return { address: addr(shardId), clusterId: CID, shardId, generation: 1, map, ...o };
}

/** The RebuildError rebuildState throws for `shards`, or a failure if it returns. */
function refusal(shards: ShardDescription[], opts?: { allowMissing?: boolean }): RebuildError {
  try {
    rebuildState(shards, opts);
  } catch (err) {
    expect(err).toBeInstanceOf(RebuildError);
    return err as RebuildError;
  }
  throw new Error('rebuildState did not refuse');
}

// ------------------------------------------------------------------ unit cases

describe('rebuildState: unit cases', () => {
  const m3 = mapOf(3n, ['s1', 's2']);
  const m5 = mapOf(5n, ['s1', 's2', 's3']);
  const m4 = mapOf(4n, ['s1', 's2'], ['s3']);

  it('starts from the newest map any shard holds, whatever the order of the answers', () => {
    const shards = [shard('s1', m3), shard('s2', m5), shard('s3', m4)];
    for (const order of [shards, [...shards].reverse(), [shards[2]!, shards[0]!, shards[1]!]]) {
      const st = rebuildState(order, { now: 1 });
      expect(st.map).toEqual(m5);
      expect(st.clusterId).toBe(CID);
      expect(st.missing).toEqual([]);
    }
  });

  it('gives the rebuilt map the shards\' cluster id even when the newest map came without one', () => {
    const st = rebuildState([shard('s1', { ...m5, clusterId: '' }), shard('s2', m3), shard('s3', m4)]);
    expect(st.map.clusterId).toBe(CID);
    expect(st.clusterId).toBe(CID);
    expect({ ...st.map, clusterId: CID }).toEqual(m5);
  });

  it('refuses a shard with no cluster id beside shards that have one, naming it', () => {
    const e = refusal([shard('s1', m5), shard('s2', m5, { clusterId: '', map: { ...m5, epoch: 9n, clusterId: '' } }), shard('s3', m5)]);
    expect(e.message).toContain(`${addr('s2')} (s2) holds no cluster id`);
  });

  it('never hands out again an id an answering shard still holds, though the newest map no longer names it', () => {
    const st = rebuildState([shard('s1', m3), shard('s2', m3), shard('s7', m3)]);
    expect(st.nextShardNumber).toBe(8);
    expect(st.removed).toContain('s7');
  });

  it('refuses shards of different clusters, naming both cluster ids and the shards', () => {
    const other = 'c-fedcba9876543210';
    const err = refusal([shard('s1', m5), shard('s2', m5, { clusterId: other }), shard('s3', m5)]);
    expect(err.message).toContain(CID);
    expect(err.message).toContain(other);
    expect(err.message).toContain(addr('s2'));
    expect(err.message).toMatch(/different clusters/);
    // allowMissing does not lift it: it is about who answered, not who is missing.
    expect(() => rebuildState([shard('s1', m5), shard('s2', m5, { clusterId: other })], { allowMissing: true })).toThrow(RebuildError);
  });

  it('refuses when a shard the newest map names did not answer, naming it', () => {
    const err = refusal([shard('s1', m5), shard('s2', m3)]);
    expect(err.message).toContain(`s3 (${addr('s3')})`);
    expect(err.message).toContain('epoch 5');
    expect(err.message).toMatch(/--allow-missing/);
  });

  it('a shard the newest map names as idle (no ranges) must answer too', () => {
    const err = refusal([shard('s1', m4), shard('s2', m4)]);
    expect(err.message).toContain(`s3 (${addr('s3')})`);
  });

  it('with allowMissing, rebuilds and lists the shards that did not answer; they keep their record but no generation', () => {
    const st = rebuildState([shard('s1', m5, { generation: 7 }), shard('s2', m3, { generation: 2 })], { allowMissing: true, now: 1234 });
    expect(st.map).toEqual(m5);
    expect(st.missing).toEqual([`s3 (${addr('s3')})`]);
    expect(st.shards).toEqual([
      { id: 's1', address: addr('s1'), registeredAtMs: 1234, generation: 7 },
      { id: 's2', address: addr('s2'), registeredAtMs: 1234, generation: 2 },
      { id: 's3', address: addr('s3'), registeredAtMs: 1234 },
    ]);
  });

  it('refuses when no shard answered', () => {
    expect(refusal([]).message).toMatch(/no shard answered/);
  });

  it('refuses when no shard holds a map (the cluster never formed)', () => {
    const empty: ClusterMap = { epoch: 0n, ranges: [], shards: [], clusterId: '' };
    expect(refusal([shard('', empty, { clusterId: '' }), shard('', empty, { clusterId: '' })]).message).toMatch(/no shard holds a map/);
    expect(refusal([shard('s1', empty), shard('s2', empty)]).message).toMatch(/no shard holds a map/);
  });

  it('refuses when the shards hold no cluster id (written before ids, not met a master since)', () => {
    const old = { ...m5, clusterId: '' };
    const err = refusal([shard('s1', old, { clusterId: '' }), shard('s2', old, { clusterId: '' }), shard('s3', old, { clusterId: '' })], { allowMissing: true });
    expect(err.message).toMatch(/no cluster id/);
  });

  it('refuses an invalid newest map, naming its epoch and who holds it', () => {
    const bad: ClusterMap = { ...m5, epoch: 6n, ranges: m5.ranges.slice(1) }; // a hole at the start of the space
    expect(mapError(bad)).not.toBeNull();
    const err = refusal([shard('s1', m5), shard('s2', bad), shard('s3', m5)]);
    expect(err.message).toContain('epoch 6');
    expect(err.message).toContain(addr('s2'));
  });

  it('hands out ids after the highest in the map, and never again those below it that the map does not name', () => {
    const m = mapOf(9n, ['s1', 's5'], ['s3']);
    const st = rebuildState([shard('s1', m), shard('s3', m), shard('s5', m)]);
    expect(st.nextShardNumber).toBe(6);
    expect(st.removed).toEqual(['s2', 's4']);
    expect(st.shards.map((s) => s.id)).toEqual(['s1', 's5', 's3']);
  });

  it('a map naming s1 only: next is s2, nothing removed', () => {
    const m = mapOf(1n, ['s1']);
    const st = rebuildState([shard('s1', m)]);
    expect(st.nextShardNumber).toBe(2);
    expect(st.removed).toEqual([]);
  });

  it('carries each answering shard\'s generation into its record, and the address the map names', () => {
    const st = rebuildState(
      [shard('s1', m5, { generation: 3 }), shard('s2', m5, { generation: 11, address: 'elsewhere:1' }), shard('s3', m4, { generation: 1 })],
      { now: 42 },
    );
    expect(st.shards).toEqual([
      { id: 's1', address: addr('s1'), registeredAtMs: 42, generation: 3 },
      { id: 's2', address: addr('s2'), registeredAtMs: 42, generation: 11 },
      { id: 's3', address: addr('s3'), registeredAtMs: 42, generation: 1 },
    ]);
  });

  it('does not change what it was given', () => {
    const shards = [shard('s1', m3), shard('s2', m5), shard('s3', m4)];
    const before = structuredClone(shards);
    rebuildState(shards);
    expect(shards).toEqual(before);
  });
});

// ------------------------------------------------------------------ properties

interface RandomCluster {
  clusterId: string;
  newest: ClusterMap;
  /** Every shard the newest map names, with the map it holds (the newest for at least one) and its generation. */
  all: ShardDescription[];
}

/**
 * A random cluster: shard ids s1..sN with some numbers skipped (removed), the
 * newest map over a random tiling owned by some of them (others idle), and
 * each shard holding that map or an older one.
 */
const clusterArb: fc.Arbitrary<RandomCluster> = fc
  .record({
    clusterId: fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: 16, maxLength: 16 }).map((h) => `c-${h}`),
    numbers: fc.uniqueArray(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 10 }),
    splits: fc.uniqueArray(fc.integer({ min: 1, max: BUCKET_COUNT - 1 }), { maxLength: 12 }),
    ownerPicks: fc.array(fc.nat(), { minLength: 13, maxLength: 13 }),
    epoch: fc.bigInt({ min: 1n, max: 1000n }),
    lags: fc.array(fc.bigInt({ min: 0n, max: 5n }), { minLength: 10, maxLength: 10 }),
    holder: fc.nat(),
    generations: fc.array(fc.integer({ min: 1, max: 1_000_000 }), { minLength: 10, maxLength: 10 }),
  })
  .map(({ clusterId, numbers, splits, ownerPicks, epoch, lags, holder, generations }) => {
    const ids = numbers.map((n) => `s${n}`);
    const points = [0, ...[...splits].sort((a, b) => a - b), BUCKET_COUNT];
    const ranges: OwnedRange[] = [];
    for (let i = 0; i + 1 < points.length; i++) {
      ranges.push({ start: bucketStart(points[i]!), end: bucketStart(points[i + 1]!), shardId: ids[ownerPicks[i]! % ids.length]! });
    }
    const newest: ClusterMap = { epoch, ranges, shards: ids.map((id) => ({ id, address: addr(id) })), clusterId };
    const h = holder % ids.length;
    const all = ids.map((id, i): ShardDescription => {
      const e = i === h ? epoch : epoch - lags[i]!;
      // An older map: one range over the whole space, owned by the first shard (valid, just not the newest).
      const map: ClusterMap = e === epoch ? newest : e <= 0n ? { epoch: 0n, ranges: [], shards: [], clusterId: '' } : { ...newest, epoch: e, ranges: [{ ...evenSplit(1)[0]!, shardId: ids[0]! }] };
      return { address: addr(id), clusterId, shardId: id, generation: generations[i]!, map };
    });
    return { clusterId, newest, all };
  });

const permuted = <T>(xs: T[], picks: number[]): T[] => {
  const rest = [...xs];
  const out: T[] = [];
  for (let i = 0; rest.length; i++) out.push(rest.splice((picks[i] ?? 0) % rest.length, 1)[0]!);
  return out;
};

describe('rebuildState: properties on random clusters', () => {
  const runs = { numRuns: 300 };

  it('rebuilds the newest map, valid, with the cluster id, whatever the order of the answers', () => {
    fc.assert(
      fc.property(clusterArb, fc.array(fc.nat(), { maxLength: 10 }), ({ clusterId, newest, all }, picks) => {
        const st = rebuildState(permuted(all, picks), { now: 5 });
        expect(st.map).toEqual(newest);
        expect(mapError(st.map)).toBeNull();
        expect(st.clusterId).toBe(clusterId);
        expect(st.map.clusterId).toBe(clusterId);
        expect(st.missing).toEqual([]);
      }),
      runs,
    );
  });

  it('one record per shard the map names, each with that shard\'s generation', () => {
    fc.assert(
      fc.property(clusterArb, ({ newest, all }) => {
        const st = rebuildState(all, { now: 5 });
        expect(st.shards.map((s) => s.id)).toEqual(newest.shards.map((s) => s.id));
        for (const rec of st.shards) {
          const d = all.find((s) => s.shardId === rec.id)!;
          expect(rec).toEqual({ id: rec.id, address: addr(rec.id), registeredAtMs: 5, generation: d.generation });
        }
      }),
      runs,
    );
  });

  it('nextShardNumber is above every id in the map; removed is exactly the ids below it the map does not name', () => {
    fc.assert(
      fc.property(clusterArb, ({ newest, all }) => {
        const st = rebuildState(all);
        const numbers = newest.shards.map((s) => Number(s.id.slice(1)));
        expect(st.nextShardNumber).toBe(Math.max(...numbers) + 1);
        const named = new Set(newest.shards.map((s) => s.id));
        const below = Array.from({ length: st.nextShardNumber - 1 }, (_, i) => `s${i + 1}`);
        expect(st.removed).toEqual(below.filter((id) => !named.has(id)));
        for (const id of st.removed) expect(named.has(id)).toBe(false);
      }),
      runs,
    );
  });

  it('refuses when shards the newest map names did not answer; with allowMissing lists exactly those', () => {
    fc.assert(
      fc.property(clusterArb, fc.array(fc.boolean(), { minLength: 10, maxLength: 10 }), ({ newest, all }, drop) => {
        const holder = all.find((s) => s.map === newest)!;
        const answered = all.filter((s, i) => s === holder || !drop[i]);
        const gone = all.filter((s) => !answered.includes(s));
        if (gone.length === 0) return;
        const err = refusal(answered);
        for (const g of gone) expect(err.message).toContain(`${g.shardId} (${addr(g.shardId)})`);
        const st = rebuildState(answered, { allowMissing: true });
        expect(st.map).toEqual(newest);
        expect(st.missing).toEqual(newest.shards.filter((s) => gone.some((g) => g.shardId === s.id)).map((s) => `${s.id} (${s.address})`));
        for (const rec of st.shards) {
          if (gone.some((g) => g.shardId === rec.id)) expect(rec.generation).toBeUndefined();
        }
      }),
      runs,
    );
  });

  it('refuses any mix of two cluster ids, naming both', () => {
    fc.assert(
      fc.property(clusterArb, fc.nat(), fc.boolean(), ({ clusterId, all }, pick, allowMissing) => {
        if (all.length < 2) return;
        const i = pick % all.length;
        const other = `c-other-${clusterId.slice(2)}`; // contains no `c-<hex>` of the first id
        const mixed = all.map((s, j) => (j === i ? { ...s, clusterId: other } : s));
        const err = refusal(mixed, { allowMissing });
        expect(err.message).toContain(clusterId);
        expect(err.message).toContain(other);
      }),
      runs,
    );
  });
});
