/**
 * The one key/value form of the master's state, which both stores write: the
 * LevelDB store under these keys (its on-disk format), the etcd store under
 * its prefix. Values are JSON, except the counter and the cluster id. Pure:
 * no I/O.
 */
import { mapFromJson, mapToJson, type MapJson } from '../common/map.js';
import type { AppliedClient, Revocation } from './client-list.js';
import type { AdminOpRecord, ClientState, ShardRecord, StateSave, StoredState } from './meta-store.js';

/** The keys `load` reads, in the order `decodeState` takes their values. */
export const STATE_KEYS = ['map', 'shards', 'nextShardNumber', 'removedShards', 'clusterId'] as const;
export const CLIENT_KEYS = ['appliedClients', 'revocations'] as const;
export const APPROVALS_KEY = 'approvals';
/** Journal keys sort as their ids do, and ids sort by creation time: a range read is oldest first. */
export const MOVE_PREFIX = 'move/';
export const moveKey = (id: string): string => `${MOVE_PREFIX}${id}`;
export const adminOpKey = (id: string): string => `adminOp/${id}`;

export function decodeState([map, shards, next, removed, clusterId]: Array<string | undefined>): StoredState {
  return {
    clusterId: clusterId ?? '',
    map: map ? mapFromJson(JSON.parse(map) as MapJson) : undefined,
    shards: shards ? (JSON.parse(shards) as ShardRecord[]) : [],
    nextShardNumber: next ? Number(next) : 1,
    removed: removed ? (JSON.parse(removed) as string[]) : [],
  };
}

/** The puts of one `save`, in the order the LevelDB store always wrote them. */
export function saveEntries(state: StateSave): Array<[key: string, value: string]> {
  const puts: Array<[string, string]> = [
    ['shards', JSON.stringify(state.shards)],
    ['nextShardNumber', String(state.nextShardNumber)],
    ['removedShards', JSON.stringify(state.removed)],
    ['clusterId', state.clusterId],
  ];
  if (state.map) puts.push(['map', JSON.stringify(mapToJson(state.map))]);
  for (const m of state.moves ?? []) puts.push([moveKey(m.id), JSON.stringify(m.json)]);
  for (const o of state.adminOps ?? []) puts.push([adminOpKey(o.id), JSON.stringify(o.json)]);
  return puts;
}

export function decodeClientState([clients, revocations]: Array<string | undefined>): ClientState {
  return {
    clients: clients ? (JSON.parse(clients) as AppliedClient[]) : undefined,
    revocations: revocations ? (JSON.parse(revocations) as Revocation[]) : [],
  };
}

export const clientEntries = (clients: AppliedClient[], revocations: Revocation[]): Array<[string, string]> => [
  ['appliedClients', JSON.stringify(clients)],
  ['revocations', JSON.stringify(revocations)],
];

export const decodeApprovals = (v: string | undefined): string[] => (v ? (JSON.parse(v) as string[]) : []);
export const decodeAdminOp = (v: string | undefined): AdminOpRecord | undefined => (v ? (JSON.parse(v) as AdminOpRecord) : undefined);
