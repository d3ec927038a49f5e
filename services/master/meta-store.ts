/**
 * The master's durable state behind one interface, so it can live in the
 * master's own LevelDB (embedded, store.ts, the default) or in etcd under one
 * key prefix (etcd-store.ts, where every write is fenced by the leader's term)
 * (docs/design.md "The control plane: embedded, or on etcd").
 *
 * The contract both implementations keep, and the conformance suite checks:
 * - a resolved write is durable (synced to disk, or committed by etcd's quorum);
 * - `save` is atomic: registry, map, moves and admin ops land together or not
 *   at all, so a move's `committed` record never exists without its map;
 * - `loadMoves` returns every journaled move oldest first (ids sort by time),
 *   the newest record of each;
 * - a write that fails rejects; the etcd store never leaves an ambiguous
 *   outcome unsettled (see etcd-store.ts).
 * Both write the same keys and values (state-form.ts).
 */
import type { ClusterMap } from '../common/map.js';
import type { AppliedClient, Revocation } from './client-list.js';

export interface ShardRecord {
  id: string;
  address: string;
  registeredAtMs: number;
  /**
   * The session the master last admitted for this id: the data directory's
   * start counter and the process's random session id. A second process on
   * a copy of the directory has another session id (docs/design.md "Membership": sessions).
   */
  generation?: number;
  sessionId?: string;
}

/** The shard registry as persisted: the cluster id, current shards, the next id to hand out, and ids removed for good. */
export interface Registry {
  /** '' until the cluster forms (or, for state written before cluster ids, until the master mints one). */
  clusterId: string;
  shards: ShardRecord[];
  nextShardNumber: number;
  removed: string[];
}

/** A removal recorded under the caller's operation id, so its retry answers as the first call did. */
export interface AdminOpRecord {
  what: string;
  shardId: string;
  address: string;
}

/** What `load` returns: the registry and the map (undefined before the cluster forms). */
export type StoredState = Registry & { map: ClusterMap | undefined };

/** One atomic `save`: the registry always, and optionally a new map and journal records. */
export type StateSave = Registry & {
  map?: ClusterMap;
  moves?: Array<{ id: string; json: unknown }>;
  adminOps?: Array<{ id: string; json: AdminOpRecord }>;
};

export interface ClientState {
  /** The client list as last applied; undefined before the first. */
  clients: AppliedClient[] | undefined;
  revocations: Revocation[];
}

export interface MasterState {
  load(): Promise<StoredState>;
  /** Writes the registry, and optionally a new map and journal records, atomically. */
  save(state: StateSave): Promise<void>;
  /** What an admin call recorded under its operation id, or undefined. */
  loadAdminOp(id: string): Promise<AdminOpRecord | undefined>;
  /** Journals one move record before the step it describes is acted on. */
  saveMove(id: string, json: unknown): Promise<void>;
  /** Every journaled move, oldest first (ids sort by creation time). */
  loadMoves(): Promise<unknown[]>;
  loadClientState(): Promise<ClientState>;
  /** The applied client list and the revocations together: a revocation is never lost while its list change holds. */
  saveClientState(clients: AppliedClient[], revocations: Revocation[]): Promise<void>;
  loadApprovals(): Promise<string[]>;
  saveApprovals(addresses: string[]): Promise<void>;
  close(): Promise<void>;
}
