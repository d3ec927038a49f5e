/** The planner's input and output (planner.ts plans; master.ts and the coordinator carry plans). */
import type { ClusterMap } from '../common/map.js';
import type { BucketStats } from './bucket-sums.js';

export interface PlanShard {
  id: string;
  /** Down shards are neither sources nor destinations; their ranges stay put. */
  up: boolean;
  /** A draining shard (dropserver) must end with no range. */
  draining?: boolean;
  /**
   * Live bytes the shard may still receive before its disk passes the
   * high-water mark (diskRoomBytes); absent = unlimited (a shard that does
   * not report its disk).
   */
  roomBytes?: number;
}

export interface PlanInput {
  map: ClusterMap;
  /** Every shard that may take part; a shard owning ranges but missing here is treated as down. */
  shards: readonly PlanShard[];
  /** Exact live bytes and rows per stats bucket across the cluster; missing buckets are empty. */
  buckets: ReadonlyMap<number, BucketStats>;
}

export interface PlanOptions {
  /** Hysteresis: no moves while every eligible shard is within ±tolerance of the mean. Default 0.05. */
  tolerance?: number;
}

export interface PlannedMove {
  start: bigint;
  /** Exclusive; at most 2^64. */
  end: bigint;
  from: string;
  to: string;
  bytes: number;
  rows: number;
}

export interface Plan {
  /** Ordered by start; each range is owned by `from` now and by `to` in `targetMap`. */
  moves: PlannedMove[];
  /** The map after every move: tiles [0, 2^64), bucket-aligned, neighbours with one owner merged. */
  targetMap: ClusterMap['ranges'];
  /** Live bytes in the whole cluster (down shards included). */
  totalBytes: number;
  /** Sum of the moves' bytes. */
  movedBytes: number;
  /**
   * A lower bound on bytes any full rebalance must move: every byte of a
   * draining shard, plus every eligible shard's bytes above the mean.
   */
  minimumBytes: number;
  /** What was balanced: live bytes, or key space when the shards taking part hold no bytes. */
  basis: 'bytes' | 'keyspace';
}

export const DEFAULT_TOLERANCE = 0.05;
