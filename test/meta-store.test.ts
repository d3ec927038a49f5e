/**
 * Issue 14, item 1: the master's durable state (MasterState, meta-store.ts)
 * has two implementations, and the same cases run against both: embedded
 * (LevelDB in a temp directory) and etcd (a real etcd process; the store
 * leads with a Leadership, so its writes are fenced ones). Each case opens
 * the state, writes, and where it matters reopens (a new LevelDB handle, or
 * a new etcd client that campaigns again) and reads back.
 *
 * The etcd half is skipped, saying why, when etcd is not installed (unless
 * CI=true, where it must run).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Etcd3 } from 'etcd3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClusterMap } from '../services/common/map.js';
import { evenSplit } from '../services/common/ranges.js';
import { Leadership } from '../services/master/etcd-leadership.js';
import { EtcdStore } from '../services/master/etcd-store.js';
import type { MasterState, StateSave } from '../services/master/meta-store.js';
import { MasterStore } from '../services/master/store.js';
import { EtcdCluster, etcdSkipReason } from './harness/etcd.js';

/** One place the state lives: `open` may be called again after `close`, and reads what was written before. */
interface Backend {
  open(): Promise<MasterState>;
  cleanup(): Promise<void>;
}

async function embedded(): Promise<Backend> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-meta-'));
  return { open: () => MasterStore.open(join(dir, 'master')), cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A real etcd; each open is a new client that leads (campaigns) before it writes. */
async function onEtcd(): Promise<Backend> {
  const etcd = await EtcdCluster.start();
  const prefix = '/cairn-test';
  return {
    open: async () => {
      const client = new Etcd3({ hosts: etcd.endpoints });
      const leadership = new Leadership(client, prefix, 'master-a', { ttlSeconds: 5, retryMs: 100 });
      await leadership.campaign();
      const store = new EtcdStore(client, prefix, { term: () => leadership.term });
      const close = store.close.bind(store);
      // The client and leadership belong to whoever opened the store: here, the store's close ends them.
      store.close = async () => {
        await close();
        await leadership.close();
        client.close();
      };
      return store;
    },
    cleanup: () => etcd.close(),
  };
}

const map = (epoch: bigint, owners: string[], clusterId = 'c-1'): ClusterMap => ({
  epoch,
  ranges: evenSplit(owners.length).map((r, i) => ({ ...r, shardId: owners[i]! })),
  shards: [...new Set(owners)].map((id) => ({ id, address: `127.0.0.1:${7000 + Number(id.slice(1))}` })),
  clusterId,
});

const registry = (n: number): StateSave => ({
  clusterId: `c-${n}`,
  shards: [{ id: `s${n}`, address: `127.0.0.1:${7000 + n}`, registeredAtMs: 1_700_000_000_000 + n, generation: n, sessionId: `sess-${n}` }],
  nextShardNumber: n + 1,
  removed: [`s${n - 1}`],
});

/** Move ids as the coordinator makes them (mv-<base36 Date.now()>-<hex>), `ms` after a fixed time: they sort by creation time. */
const moveId = (ms: number, tag: string): string => `mv-${(1_764_000_000_000 + ms).toString(36)}-${tag}`;

const skip = etcdSkipReason();
if (skip) console.warn(`SKIPPED the etcd half of test/meta-store.test.ts (MasterState on etcd): ${skip}`);

const backends: Array<[string, () => Promise<Backend>, boolean]> = [
  ['embedded (LevelDB)', embedded, true],
  ['etcd', onEtcd, !skip],
];

describe.each(backends)('MasterState: %s', (_name, make, runs) => {
  const maybe = runs ? it : it.skip;
  let backend: Backend;
  let state: MasterState;
  const reopen = async (): Promise<MasterState> => {
    await state.close();
    return (state = await backend.open());
  };

  beforeAll(async () => {
    if (!runs) return;
    backend = await make();
  });
  afterAll(async () => {
    if (!runs) return;
    await state?.close();
    await backend?.cleanup();
  });

  maybe('reads the defaults before anything is written', async () => {
    state = await backend.open();
    expect(await state.load()).toEqual({ clusterId: '', map: undefined, shards: [], nextShardNumber: 1, removed: [] });
    expect(await state.loadMoves()).toEqual([]);
    expect(await state.loadClientState()).toEqual({ clients: undefined, revocations: [] });
    expect(await state.loadApprovals()).toEqual([]);
    expect(await state.loadAdminOp('op-none')).toBeUndefined();
  });

  maybe('saves the registry, a map, moves and admin ops together, and reads them back after a reopen', async () => {
    const m = map(3n, ['s1', 's2']);
    const op = { what: 'remserver', shardId: 's0', address: '127.0.0.1:7000' };
    await state.save({ ...registry(1), map: m, moves: [{ id: moveId(1000, 'aa'), json: { id: moveId(1000, 'aa'), state: 'committed' } }], adminOps: [{ id: 'op-1', json: op }] });
    await reopen();
    expect(await state.load()).toEqual({ ...registry(1), map: m });
    expect(await state.loadMoves()).toEqual([{ id: moveId(1000, 'aa'), state: 'committed' }]);
    expect(await state.loadAdminOp('op-1')).toEqual(op);
  });

  maybe('a save without a map keeps the map; a later map replaces it', async () => {
    await state.save(registry(2));
    expect(await state.load()).toEqual({ ...registry(2), map: map(3n, ['s1', 's2']) });
    await state.save({ ...registry(3), map: map(4n, ['s2', 's3', 's3']) });
    expect((await state.load()).map).toEqual(map(4n, ['s2', 's3', 's3']));
  });

  maybe('replays the journal after a reopen: every move oldest first, the newest record of each, identical', async () => {
    const ids = [moveId(5000, 'b1'), moveId(2000, 'b2'), moveId(9000, 'b3'), moveId(2000, 'a0')];
    for (const id of ids) await state.saveMove(id, { id, state: 'started', bytes: 1n.toString() });
    await state.saveMove(ids[0]!, { id: ids[0], state: 'transferred', detail: { rows: 12, note: 'ünïcode ✓' } });
    await reopen();
    const expected = [
      { id: moveId(1000, 'aa'), state: 'committed' },
      { id: moveId(2000, 'a0'), state: 'started', bytes: '1' },
      { id: moveId(2000, 'b2'), state: 'started', bytes: '1' },
      { id: moveId(5000, 'b1'), state: 'transferred', detail: { rows: 12, note: 'ünïcode ✓' } },
      { id: moveId(9000, 'b3'), state: 'started', bytes: '1' },
    ];
    expect(await state.loadMoves()).toEqual(expected);
    await reopen();
    expect(await state.loadMoves()).toEqual(expected);
  });

  maybe('a save that names one move twice keeps the last record', async () => {
    const id = moveId(30_000, 'ee');
    await state.save({ ...registry(3), moves: [{ id, json: { v: 1 } }, { id, json: { v: 2 } }] });
    expect(await state.loadMoves()).toContainEqual({ v: 2 });
    expect(await state.loadMoves()).not.toContainEqual({ v: 1 });
  });

  maybe('keeps the client list with its revocations, and the approvals', async () => {
    const clients = [{ user: 'ada', role: 'admin' as const, passwordDigest: 'd1' }];
    const revocations = [{ user: 'bob', notBeforeMs: 10, untilMs: 20 }];
    await state.saveClientState(clients, revocations);
    await state.saveApprovals(['127.0.0.1:7001', '127.0.0.1:7002']);
    await reopen();
    expect(await state.loadClientState()).toEqual({ clients, revocations });
    expect(await state.loadApprovals()).toEqual(['127.0.0.1:7001', '127.0.0.1:7002']);
  });

  maybe('concurrent writes all land, and each save lands whole', async () => {
    const n = 12;
    const writes = Array.from({ length: n }, (_, i) => [
      state.save({ ...registry(100 + i), map: map(BigInt(10 + i), ['s1', `s${100 + i}`]), moves: [{ id: moveId(20_000 + i, 'cc'), json: { i } }] }),
      state.saveMove(moveId(40_000 + i, 'dd'), { i }),
      state.saveApprovals([`127.0.0.1:${8000 + i}`]),
    ]).flat();
    await Promise.all(writes);
    const loaded = await state.load();
    // Whichever save came last, its registry and map came together.
    const i = loaded.nextShardNumber - 101;
    expect(i).toBeGreaterThanOrEqual(0);
    expect(i).toBeLessThan(n);
    expect(loaded).toEqual({ ...registry(100 + i), map: map(BigInt(10 + i), ['s1', `s${100 + i}`]) });
    const moves = (await state.loadMoves()) as Array<{ i?: number }>;
    for (let k = 0; k < n; k++) {
      expect(moves).toContainEqual({ i: k });
    }
    expect(moves.filter((mv) => mv.i !== undefined)).toHaveLength(2 * n);
    expect((await state.loadApprovals())[0]).toMatch(/^127\.0\.0\.1:80\d\d$/);
  });
});
