/**
 * The cluster map as the rest of the code sees it, and its proto conversions.
 * Pure: no I/O. Lookups are O(log ranges) by binary search.
 */
import type { ClusterMap as ClusterMapProto } from '../../proto/gen/cairn/v1/common.js';
import { endFromProto, endToProto, rowHash } from './hash.js';
import { findRangeIndex, mapLayoutError, shareOf, type OwnedRange } from './ranges.js';

export interface ShardRef {
  id: string;
  address: string;
}

/**
 * One range of the map with its replica group (docs/design.md "Replication").
 * `shardId` is the primary. The group fields are absent for a range held by
 * its primary alone, as in every map written before replication: read them
 * through replicasOf, inSyncOf, learnersOf and groupVersionOf.
 */
export interface MapRange extends OwnedRange {
  /** Every shard holding a full copy, the primary first. */
  replicas?: readonly string[];
  /** The replicas with every acknowledged write, the primary included: only these may be promoted. */
  inSync?: readonly string[];
  /** Shards receiving a copy that counts for nothing until it joins inSync. */
  learners?: readonly string[];
  /** Bumped by every change of the group; a replica refuses anything older. */
  version?: bigint;
}

export interface ClusterMap {
  /** 0 means "no map yet" (the master waits for expectShards). */
  epoch: bigint;
  /** Sorted, tiling [0, 2^64) whenever epoch > 0. */
  ranges: MapRange[];
  /** Every registered shard, including those that own nothing. */
  shards: ShardRef[];
  /** The cluster this map belongs to; '' only in the empty epoch-0 map. */
  clusterId: string;
  /** How many shards hold each range where there are that many; absent = 1 (maps from before replication). */
  replicationFactor?: number;
}

export const replicasOf = (r: MapRange): readonly string[] => r.replicas ?? [r.shardId];
export const inSyncOf = (r: MapRange): readonly string[] => r.inSync ?? [r.shardId];
export const learnersOf = (r: MapRange): readonly string[] => r.learners ?? [];
export const groupVersionOf = (r: MapRange): bigint => r.version ?? 0n;
export const factorOf = (m: ClusterMap): number => m.replicationFactor ?? 1;

/** True when some range has more than one copy (or a copy being made), or the factor asks for more. */
export function isReplicated(m: ClusterMap): boolean {
  return factorOf(m) > 1 || m.ranges.some((r) => !isSingleCopy(r));
}

/** True when the range is held by its primary alone, with no learner: the map carries no group fields for it. */
export function isSingleCopy(r: MapRange): boolean {
  const replicas = replicasOf(r);
  return replicas.length === 1 && replicas[0] === r.shardId && learnersOf(r).length === 0;
}

/** The group fields a range carries on the wire and on disk: none for a single copy, so such maps are byte for byte as before. */
function groupFields(r: MapRange): { replicas: string[]; inSync: string[]; learners: string[]; version: bigint } | undefined {
  if (isSingleCopy(r) && groupVersionOf(r) === 0n) return undefined;
  return { replicas: [...replicasOf(r)], inSync: [...inSyncOf(r)], learners: [...learnersOf(r)], version: groupVersionOf(r) };
}

/** A range from its wire or JSON fields: empty group fields mean a single copy. */
function rangeWithGroup(start: bigint, end: bigint, shardId: string, g: { replicas?: readonly string[]; inSync?: readonly string[]; learners?: readonly string[]; version?: bigint }): MapRange {
  const r: MapRange = { start, end, shardId };
  if (g.replicas?.length) r.replicas = [...g.replicas];
  if (g.inSync?.length) r.inSync = [...g.inSync];
  if (g.learners?.length) r.learners = [...g.learners];
  if (g.version) r.version = g.version;
  return r;
}

export const EMPTY_MAP: ClusterMap = { epoch: 0n, ranges: [], shards: [], clusterId: '' };

export function mapFromProto(m: ClusterMapProto | undefined): ClusterMap {
  if (!m) return EMPTY_MAP;
  return {
    epoch: m.epoch,
    ranges: m.ranges.map((r) => rangeWithGroup(r.start, endFromProto(r.end), r.shardId, r)),
    shards: m.shards.map((s) => ({ id: s.shardId, address: s.address })),
    clusterId: m.clusterId,
    ...(m.replicationFactor > 1 ? { replicationFactor: m.replicationFactor } : {}),
  };
}

export function mapToProto(m: ClusterMap): ClusterMapProto {
  return {
    epoch: m.epoch,
    ranges: m.ranges.map((r) => ({ start: r.start, end: endToProto(r.end), shardId: r.shardId, replicas: [], inSync: [], learners: [], version: 0n, ...groupFields(r) })),
    shards: m.shards.map((s) => ({ shardId: s.id, address: s.address })),
    clusterId: m.clusterId,
    replicationFactor: factorOf(m) > 1 ? factorOf(m) : 0,
  };
}

/** The map as the master persists it (JSON: bigints as decimal strings). */
export interface MapJson {
  epoch: string;
  ranges: Array<{ start: string; end: string; shardId: string; replicas?: string[]; inSync?: string[]; learners?: string[]; version?: string }>;
  shards: Array<{ id: string; address: string }>;
  /** Absent in maps written before cluster ids. */
  clusterId?: string;
  /** Absent in maps written before replication (factor 1). */
  replicationFactor?: number;
}

export function mapToJson(m: ClusterMap): MapJson {
  return {
    epoch: m.epoch.toString(),
    ranges: m.ranges.map((r) => {
      const g = groupFields(r);
      const base = { start: r.start.toString(), end: r.end.toString(), shardId: r.shardId };
      return g ? { ...base, replicas: g.replicas, inSync: g.inSync, learners: g.learners, version: g.version.toString() } : base;
    }),
    shards: m.shards.map((s) => ({ ...s })),
    clusterId: m.clusterId,
    ...(factorOf(m) > 1 ? { replicationFactor: factorOf(m) } : {}),
  };
}

export function mapFromJson(j: MapJson): ClusterMap {
  return {
    epoch: BigInt(j.epoch),
    ranges: j.ranges.map((r) => rangeWithGroup(BigInt(r.start), BigInt(r.end), r.shardId, { ...r, version: r.version ? BigInt(r.version) : undefined })),
    shards: j.shards,
    clusterId: j.clusterId ?? '',
    ...(j.replicationFactor && j.replicationFactor > 1 ? { replicationFactor: j.replicationFactor } : {}),
  };
}

/** Describes why a map with epoch > 0 is not valid, or null. */
export function mapError(m: ClusterMap): string | null {
  if (m.epoch === 0n) return m.ranges.length === 0 ? null : 'epoch 0 map must have no ranges';
  const layout = mapLayoutError(m.ranges);
  if (layout) return layout;
  const known = new Set(m.shards.map((s) => s.id));
  const unknown = m.ranges.find((r) => !known.has(r.shardId));
  if (unknown) return `range [${unknown.start}, ${unknown.end}) is owned by unknown shard ${unknown.shardId}`;
  for (const r of m.ranges) {
    const err = groupError(r, known);
    if (err) return `range [${r.start}, ${r.end}): ${err}`;
  }
  return null;
}

/**
 * Why a range's replica group breaks the invariants, or null: the primary is
 * in sync, the in-sync set is among the replicas, learners are not replicas,
 * nobody holds two copies, and every member is a known shard.
 */
export function groupError(r: MapRange, known: ReadonlySet<string>): string | null {
  const replicas = replicasOf(r);
  const inSync = inSyncOf(r);
  const learners = learnersOf(r);
  if (replicas[0] !== r.shardId) return `the primary ${r.shardId} must be the first replica, not ${replicas[0] ?? 'missing'}`;
  if (!inSync.includes(r.shardId)) return `the primary ${r.shardId} is not in the in-sync set`;
  const all = [...replicas, ...learners];
  const twice = all.find((s, i) => all.indexOf(s) !== i);
  if (twice) return `shard ${twice} holds two copies`;
  const outside = inSync.find((s) => !replicas.includes(s));
  if (outside) return `in-sync member ${outside} is not a replica`;
  const stranger = all.find((s) => !known.has(s));
  return stranger ? `replica ${stranger} is an unknown shard` : null;
}

export function rangeOwnerIndex(m: ClusterMap, hash: bigint): number {
  return findRangeIndex(m.ranges, hash);
}

/** The owning range of a hash, or undefined when the map has none yet. */
export function ownerOfHash(m: ClusterMap, hash: bigint): OwnedRange | undefined {
  const i = findRangeIndex(m.ranges, hash);
  return i < 0 ? undefined : m.ranges[i];
}

export function ownerOfRow(m: ClusterMap, row: string): OwnedRange | undefined {
  return ownerOfHash(m, rowHash(row));
}

export function addressOf(m: ClusterMap, shardId: string): string | undefined {
  return m.shards.find((s) => s.id === shardId)?.address;
}

export function rangesOf(m: ClusterMap, shardId: string): OwnedRange[] {
  return m.ranges.filter((r) => r.shardId === shardId);
}

/** The ranges a shard keeps a copy of: as primary, follower or learner. */
export function copiesOf(m: ClusterMap, shardId: string): MapRange[] {
  return m.ranges.filter((r) => r.shardId === shardId || replicasOf(r).includes(shardId) || learnersOf(r).includes(shardId));
}

/** How many ranges a shard holds in each role: primary, follower (a full copy), learner. */
export function roleCounts(m: ClusterMap, shardId: string): { primaries: number; followers: number; learners: number } {
  const counts = { primaries: 0, followers: 0, learners: 0 };
  for (const r of m.ranges) {
    if (r.shardId === shardId) counts.primaries++;
    else if (replicasOf(r).includes(shardId)) counts.followers++;
    else if (learnersOf(r).includes(shardId)) counts.learners++;
  }
  return counts;
}

export function shareOfShard(m: ClusterMap, shardId: string): number {
  return shareOf(rangesOf(m, shardId));
}
