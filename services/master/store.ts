/**
 * The master's durable state in its own LevelDB: the map and the shard
 * registry. Every write is synced: an acknowledged map change survives a
 * crash. (The move journal joins this store with the rebalancing work.)
 */
import { Level } from 'level';
import type { ClusterMap } from '../common/map.js';

export interface ShardRecord {
  id: string;
  address: string;
  registeredAtMs: number;
}

interface MapJson {
  epoch: string;
  ranges: Array<{ start: string; end: string; shardId: string }>;
  shards: Array<{ id: string; address: string }>;
}

const toJson = (m: ClusterMap): MapJson => ({
  epoch: m.epoch.toString(),
  ranges: m.ranges.map((r) => ({ start: r.start.toString(), end: r.end.toString(), shardId: r.shardId })),
  shards: m.shards.map((s) => ({ ...s })),
});

const fromJson = (j: MapJson): ClusterMap => ({
  epoch: BigInt(j.epoch),
  ranges: j.ranges.map((r) => ({ start: BigInt(r.start), end: BigInt(r.end), shardId: r.shardId })),
  shards: j.shards,
});

export class MasterStore {
  private constructor(private readonly db: Level<string, string>) {}

  static async open(dir: string): Promise<MasterStore> {
    const db = new Level<string, string>(dir, { valueEncoding: 'utf8' });
    try {
      await db.open();
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') throw new Error(`data directory ${dir} is in use by another process`);
      throw err;
    }
    return new MasterStore(db);
  }

  async load(): Promise<{ map: ClusterMap | undefined; shards: ShardRecord[]; nextShardNumber: number }> {
    const [map, shards, next] = await this.db.getMany(['map', 'shards', 'nextShardNumber']);
    return {
      map: map ? fromJson(JSON.parse(map) as MapJson) : undefined,
      shards: shards ? (JSON.parse(shards) as ShardRecord[]) : [],
      nextShardNumber: next ? Number(next) : 1,
    };
  }

  /** Writes the registry and (optionally) a new map in one synced batch. */
  async save(state: { map?: ClusterMap; shards: ShardRecord[]; nextShardNumber: number }): Promise<void> {
    const ops: Array<{ type: 'put'; key: string; value: string }> = [
      { type: 'put', key: 'shards', value: JSON.stringify(state.shards) },
      { type: 'put', key: 'nextShardNumber', value: String(state.nextShardNumber) },
    ];
    if (state.map) ops.push({ type: 'put', key: 'map', value: JSON.stringify(toJson(state.map)) });
    await this.db.batch(ops, { sync: true });
  }

  close(): Promise<void> {
    return this.db.close();
  }
}
