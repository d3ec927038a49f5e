/**
 * The master's durable state in its own LevelDB: the map, the shard registry,
 * approvals, and the move journal. Every write is synced: an acknowledged map
 * change or journal step survives a crash. A move's commit writes the new map
 * and the move's `committed` state in ONE batch, so there is no moment where
 * one is durable without the other.
 */
import { Level } from 'level';
import { openDataDir } from '../common/datadir.js';
import { mapFromJson, mapToJson, type MapJson } from '../common/map.js';
import type { AppliedClient, Revocation } from './client-list.js';
import type { AdminOpRecord, ClientState, MasterState, ShardRecord, StateSave, StoredState } from './meta-store.js';

/** The embedded implementation of MasterState (meta-store.ts): the default, needing nothing but a directory. */
export class MasterStore implements MasterState {
  private constructor(private readonly db: Level<string, string>) {}

  static async open(dir: string): Promise<MasterStore> {
    // Refuses a file, unrelated files, a shard's directory or a damaged LevelDB, naming what it found (DataDirError).
    const db = await openDataDir(dir, 'master', () => new Level<string, string>(dir, { valueEncoding: 'utf8' }));
    return new MasterStore(db);
  }

  async load(): Promise<StoredState> {
    const [map, shards, next, removed, clusterId] = await this.db.getMany(['map', 'shards', 'nextShardNumber', 'removedShards', 'clusterId']);
    return {
      clusterId: clusterId ?? '',
      map: map ? mapFromJson(JSON.parse(map) as MapJson) : undefined,
      shards: shards ? (JSON.parse(shards) as ShardRecord[]) : [],
      nextShardNumber: next ? Number(next) : 1,
      removed: removed ? (JSON.parse(removed) as string[]) : [],
    };
  }

  /** Writes the registry, and optionally a new map and journal records, in one synced batch. */
  async save(state: StateSave): Promise<void> {
    const ops: Array<{ type: 'put'; key: string; value: string }> = [
      { type: 'put', key: 'shards', value: JSON.stringify(state.shards) },
      { type: 'put', key: 'nextShardNumber', value: String(state.nextShardNumber) },
      { type: 'put', key: 'removedShards', value: JSON.stringify(state.removed) },
      { type: 'put', key: 'clusterId', value: state.clusterId },
    ];
    if (state.map) ops.push({ type: 'put', key: 'map', value: JSON.stringify(mapToJson(state.map)) });
    for (const m of state.moves ?? []) ops.push({ type: 'put', key: `move/${m.id}`, value: JSON.stringify(m.json) });
    for (const o of state.adminOps ?? []) ops.push({ type: 'put', key: `adminOp/${o.id}`, value: JSON.stringify(o.json) });
    await this.db.batch(ops, { sync: true });
  }

  /** What an admin call recorded under its operation id, or undefined. */
  async loadAdminOp(id: string): Promise<AdminOpRecord | undefined> {
    const v = await this.db.get(`adminOp/${id}`);
    return v ? (JSON.parse(v) as AdminOpRecord) : undefined;
  }

  /** Journals one move record (synced) before the step it describes is acted on. */
  async saveMove(id: string, json: unknown): Promise<void> {
    await this.db.put(`move/${id}`, JSON.stringify(json), { sync: true });
  }

  /** Every journaled move, oldest first (ids sort by creation time). */
  async loadMoves(): Promise<unknown[]> {
    const out: unknown[] = [];
    for await (const v of this.db.values({ gte: 'move/', lt: 'move0' })) out.push(JSON.parse(v));
    return out;
  }

  /** The client list as last applied (undefined before the first) and the revocations in force. */
  async loadClientState(): Promise<ClientState> {
    const [clients, revocations] = await this.db.getMany(['appliedClients', 'revocations']);
    return {
      clients: clients ? (JSON.parse(clients) as AppliedClient[]) : undefined,
      revocations: revocations ? (JSON.parse(revocations) as Revocation[]) : [],
    };
  }

  /** Writes the applied client list and the revocations in one synced batch: a revocation never outlives a crash unsaved. */
  async saveClientState(clients: AppliedClient[], revocations: Revocation[]): Promise<void> {
    await this.db.batch(
      [
        { type: 'put', key: 'appliedClients', value: JSON.stringify(clients) },
        { type: 'put', key: 'revocations', value: JSON.stringify(revocations) },
      ],
      { sync: true },
    );
  }

  async loadApprovals(): Promise<string[]> {
    const v = await this.db.get('approvals');
    return v ? (JSON.parse(v) as string[]) : [];
  }

  async saveApprovals(addresses: string[]): Promise<void> {
    await this.db.put('approvals', JSON.stringify(addresses), { sync: true });
  }

  close(): Promise<void> {
    return this.db.close();
  }
}
