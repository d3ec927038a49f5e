/**
 * Rebuilding a lost master's state from what the shards hold (docs/design.md
 * "Membership": cluster identity). Pure: the shards' descriptions in, the
 * master's state out, or an error that says what is missing.
 *
 * Every shard keeps the last map it was given and its cluster id. The newest
 * of those maps is the newest any shard may have served by, so it is the map
 * the rebuilt master starts from. Every shard that map names must answer:
 * one that did not may hold a newer map (the lost master pushed it there
 * first), and starting from an older one could then give a range to two
 * shards. The journal of moves is not rebuilt: a move the lost master had not
 * committed is unknown to the new one, so shards lift its fence and the copy
 * it left is garbage that the next pull of that range clears.
 */
import { mapError, type ClusterMap } from '../common/map.js';
import type { Registry } from './meta-store.js';

export interface ShardDescription {
  /** Where it was asked. */
  address: string;
  clusterId: string;
  shardId: string;
  generation: number;
  map: ClusterMap;
}

export interface RebuiltState extends Registry {
  map: ClusterMap;
  /** Shards the map names that were not asked or did not answer (only with allowMissing). */
  missing: string[];
}

export class RebuildError extends Error {
  override name = 'RebuildError';
}

export function rebuildState(shards: readonly ShardDescription[], opts: { allowMissing?: boolean; now?: number } = {}): RebuiltState {
  if (shards.length === 0) throw new RebuildError('no shard answered: name the shards with --from host:port,...');
  const ids = new Set(shards.map((s) => s.clusterId).filter(Boolean));
  const without = shards.filter((s) => !s.clusterId);
  if (ids.size === 1 && without.length) {
    throw new RebuildError(
      `${without.map((s) => `${s.address} (${s.shardId || 'no id'})`).join(', ')} hold${without.length === 1 ? 's' : ''} no cluster id while the others are in cluster ${[...ids][0]}: leave out shards that never joined this cluster`,
    );
  }
  if (ids.size > 1) {
    const by = shards.map((s) => `${s.address} (${s.shardId || 'no id'}) is in cluster ${s.clusterId || '(none)'}`).join('; ');
    throw new RebuildError(`the shards belong to different clusters: ${by}. Rebuild from the shards of one cluster only`);
  }
  const newest = shards.reduce((a, b) => (b.map.epoch > a.map.epoch ? b : a));
  if (newest.map.epoch === 0n) throw new RebuildError('no shard holds a map: the cluster never formed, so there is nothing to rebuild; start the master on an empty directory instead');
  const clusterId = [...ids][0] ?? '';
  if (!clusterId) {
    throw new RebuildError(
      'the shards hold no cluster id (they were written before cluster ids and have not met a master since): start the master on its own data directory first, which gives the cluster an id',
    );
  }
  const map: ClusterMap = { ...newest.map, clusterId };
  const err = mapError(map);
  if (err) throw new RebuildError(`the newest map (epoch ${map.epoch}, from ${newest.address}) is invalid: ${err}`);
  const answered = new Set(shards.map((s) => s.shardId));
  const missing = map.shards.filter((s) => !answered.has(s.id)).map((s) => `${s.id} (${s.address})`);
  if (missing.length && !opts.allowMissing) {
    throw new RebuildError(
      `the newest map (epoch ${map.epoch}) names shards that did not answer: ${missing.join(', ')}. ` +
        'Each may hold a newer map; start them and run rebuild again (or pass --allow-missing if their disks are lost too)',
    );
  }
  const now = opts.now ?? Date.now();
  const generationOf = new Map(shards.map((s) => [s.shardId, s.generation]));
  // Ids the answering shards hold count too: one removed from the newest map may still be running with its id.
  const numbers = [...map.shards.map((s) => s.id), ...shards.map((s) => s.shardId)].map((id) => /^s(\d+)$/.exec(id)).filter((m): m is RegExpExecArray => !!m).map((m) => Number(m[1]));
  const nextShardNumber = Math.max(0, ...numbers) + 1;
  const inMap = new Set(map.shards.map((s) => s.id));
  // Ids below the next number that the map does not name were removed (or never joined): never hand them out again.
  const removed = Array.from({ length: nextShardNumber - 1 }, (_, i) => `s${i + 1}`).filter((id) => !inMap.has(id));
  return {
    clusterId,
    map,
    shards: map.shards.map((s) => ({ id: s.id, address: s.address, registeredAtMs: now, ...(generationOf.has(s.id) ? { generation: generationOf.get(s.id)! } : {}) })),
    nextShardNumber,
    removed,
    missing,
  };
}
