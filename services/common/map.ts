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

export interface ClusterMap {
  /** 0 means "no map yet" (the master waits for expectShards). */
  epoch: bigint;
  /** Sorted, tiling [0, 2^64) whenever epoch > 0. */
  ranges: OwnedRange[];
  /** Every registered shard, including those that own nothing. */
  shards: ShardRef[];
  /** The cluster this map belongs to; '' only in the empty epoch-0 map. */
  clusterId: string;
}

export const EMPTY_MAP: ClusterMap = { epoch: 0n, ranges: [], shards: [], clusterId: '' };

export function mapFromProto(m: ClusterMapProto | undefined): ClusterMap {
  if (!m) return EMPTY_MAP;
  return {
    epoch: m.epoch,
    ranges: m.ranges.map((r) => ({ start: r.start, end: endFromProto(r.end), shardId: r.shardId })),
    shards: m.shards.map((s) => ({ id: s.shardId, address: s.address })),
    clusterId: m.clusterId,
  };
}

export function mapToProto(m: ClusterMap): ClusterMapProto {
  return {
    epoch: m.epoch,
    ranges: m.ranges.map((r) => ({ start: r.start, end: endToProto(r.end), shardId: r.shardId })),
    shards: m.shards.map((s) => ({ shardId: s.id, address: s.address })),
    clusterId: m.clusterId,
  };
}

/** The map as the master persists it (JSON: bigints as decimal strings). */
export interface MapJson {
  epoch: string;
  ranges: Array<{ start: string; end: string; shardId: string }>;
  shards: Array<{ id: string; address: string }>;
  /** Absent in maps written before cluster ids. */
  clusterId?: string;
}

export function mapToJson(m: ClusterMap): MapJson {
  return {
    epoch: m.epoch.toString(),
    ranges: m.ranges.map((r) => ({ start: r.start.toString(), end: r.end.toString(), shardId: r.shardId })),
    shards: m.shards.map((s) => ({ ...s })),
    clusterId: m.clusterId,
  };
}

export function mapFromJson(j: MapJson): ClusterMap {
  return {
    epoch: BigInt(j.epoch),
    ranges: j.ranges.map((r) => ({ start: BigInt(r.start), end: BigInt(r.end), shardId: r.shardId })),
    shards: j.shards,
    clusterId: j.clusterId ?? '',
  };
}

/** Describes why a map with epoch > 0 is not valid, or null. */
export function mapError(m: ClusterMap): string | null {
  if (m.epoch === 0n) return m.ranges.length === 0 ? null : 'epoch 0 map must have no ranges';
  const layout = mapLayoutError(m.ranges);
  if (layout) return layout;
  const known = new Set(m.shards.map((s) => s.id));
  const unknown = m.ranges.find((r) => !known.has(r.shardId));
  return unknown ? `range [${unknown.start}, ${unknown.end}) is owned by unknown shard ${unknown.shardId}` : null;
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

export function shareOfShard(m: ClusterMap, shardId: string): number {
  return shareOf(rangesOf(m, shardId));
}
