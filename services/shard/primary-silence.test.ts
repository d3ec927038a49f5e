/** The follower's record of how long each primary it follows in sync has been silent (primary-silence.ts). */
import { describe, expect, it } from '@jest/globals';
import type { ClusterMap, MapRange } from '../common/map.js';
import { PrimarySilence } from './primary-silence.js';

const A = { start: 0n, end: 100n };
const B = { start: 100n, end: 1n << 64n };
const group = (r: typeof A, primary: string, inSync: string[], version: bigint, replicas = ['s1', 's2', 's3']): MapRange => ({ ...r, shardId: primary, replicas, inSync, version });
const mapOf = (...ranges: MapRange[]) => ({ epoch: 1n, clusterId: 'c', replicationFactor: 3, ranges, shards: [] }) as unknown as ClusterMap;

describe('PrimarySilence', () => {
  it('reports a primary this shard follows in sync once it has been silent for longer than the grace, and only then', () => {
    const s = new PrimarySilence(1500);
    s.onMap(mapOf(group(A, 's1', ['s1', 's2', 's3'], 4n), group(B, 's2', ['s2', 's3'], 7n)), 's2', 0);
    expect(s.unheard(1500)).toEqual([]);
    s.heard(A, 4n, 1000);
    expect(s.unheard(2400)).toEqual([]);
    expect(s.unheard(2501)).toEqual([{ range: A, version: 4n }]);
    // Hearing it again clears it; a message under another version does not.
    s.heard(A, 5n, 2600);
    expect(s.unheard(2700)).toEqual([{ range: A, version: 4n }]);
    s.heard(A, 4n, 2700);
    expect(s.unheard(2800)).toEqual([]);
  });

  it('follows only ranges where it is an in-sync follower: not its own, not out of sync, not a single copy', () => {
    const s = new PrimarySilence(100);
    s.onMap(mapOf(group(A, 's2', ['s2', 's1'], 1n), group(B, 's1', ['s1', 's3'], 1n)), 's2', 0);
    expect(s.unheard(1000)).toEqual([]);
    s.onMap(mapOf({ ...A, shardId: 's1' }, group(B, 's1', ['s1', 's2'], 2n)), 's2', 0);
    expect(s.unheard(1000)).toEqual([{ range: B, version: 2n }]);
  });

  it('starts the silence again at a new version, and forgets a range it no longer follows', () => {
    const s = new PrimarySilence(100);
    s.onMap(mapOf(group(A, 's1', ['s1', 's2'], 1n)), 's2', 0);
    expect(s.unheard(500)).toEqual([{ range: A, version: 1n }]);
    s.onMap(mapOf(group(A, 's3', ['s3', 's2'], 2n)), 's2', 500); // a new primary: give it time to speak
    expect(s.unheard(550)).toEqual([]);
    expect(s.unheard(601)).toEqual([{ range: A, version: 2n }]);
    s.onMap(mapOf(group(A, 's3', ['s3'], 3n)), 's2', 700);
    expect(s.unheard(5000)).toEqual([]);
  });

  it('after a stall of this process, silence starts again: a paused follower does not accuse a primary that spoke meanwhile', () => {
    const s = new PrimarySilence(100);
    s.onMap(mapOf(group(A, 's1', ['s1', 's2'], 1n)), 's2', 0);
    s.resumed(10_000);
    expect(s.unheard(10_050)).toEqual([]);
    expect(s.unheard(10_101)).toEqual([{ range: A, version: 1n }]);
  });
});
