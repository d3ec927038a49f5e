/**
 * Routing against a real in-process cluster (real gRPC, real LevelDB):
 * forwarding for callers without an epoch, FAILED_PRECONDITION with the owner
 * and epoch for callers with a stale one, and the SDK riding over stale routes.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { status } from '@grpc/grpc-js';
import { CairnClient } from '../services/client/index.js';
import { ownerOfRow } from '../services/common/map.js';
import { login, rawCall, shardClient } from './harness/raw.js';
import { startInProcCluster, waitFor, type InProcCluster } from './harness/inproc.js';

let cluster: InProcCluster;
let token: string;

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2 });
  token = await login(cluster.masterAddress, 'writer', 'writer-pass');
});
afterAll(() => cluster.stop());

/** A row owned by the given shard under the current map. */
function rowOwnedBy(shardId: string, tag: string): string {
  const map = cluster.master.master.currentMap();
  for (let i = 0; ; i++) {
    const row = `${tag}-${i}`;
    if (ownerOfRow(map, row)!.shardId === shardId) return row;
  }
}

describe('a request without an epoch', () => {
  it('is forwarded to the owner, one hop, and reads back through either shard', async () => {
    const [a, b] = cluster.shards;
    const row = rowOwnedBy(b!.node.id, 'fwd');
    const ca = shardClient(a!.address);
    const cb = shardClient(b!.address);
    const w = await rawCall(ca, ca.writeRows, { epoch: 0n, requestId: 'fwd-1', sync: false, rows: [{ row, replace: false, cells: [{ column: 'c', timestampUs: 0n, value: Buffer.from('via A') }] }] }, token);
    expect(w.err).toBeUndefined();
    for (const c of [ca, cb]) {
      const r = await rawCall(c, c.readRow, { epoch: 0n, row, filter: undefined }, token);
      expect(r.err).toBeUndefined();
      expect(r.res!.header!.nodeId).toBe(b!.node.id); // the owner answered, directly or through A
      expect(r.res!.cells.map((x) => x.value.toString())).toEqual(['via A']);
    }
    // The row lives only on its owner.
    expect((await a!.node.store.readRow(row, { columns: [], columnPrefix: '', allVersions: true, limit: 0 })).length).toBe(0);
    expect((await b!.node.store.readRow(row, { columns: [], columnPrefix: '', allVersions: true, limit: 0 })).length).toBe(1);
    ca.close();
    cb.close();
  });

  it('splits a multi-row write across owners and keeps request order in the answer', async () => {
    const [a, b] = cluster.shards;
    const rows = [rowOwnedBy(a!.node.id, 'multi-a'), rowOwnedBy(b!.node.id, 'multi-b')];
    const ca = shardClient(a!.address);
    const w = await rawCall(ca, ca.writeRows, { epoch: 0n, requestId: 'multi-1', sync: false, rows: rows.map((row) => ({ row, replace: false, cells: [{ column: 'c', timestampUs: 0n, value: Buffer.from(row) }] })) }, token);
    expect(w.err).toBeUndefined();
    expect(w.res!.timestampsUs.every((t) => t > 0n)).toBe(true);
    const r = await rawCall(ca, ca.readRows, { epoch: 0n, rows: [...rows].reverse(), filter: undefined }, token);
    expect(r.res!.rows.map((x) => x.row)).toEqual([...rows].reverse());
    ca.close();
  });
});

describe('a request with a stale epoch to a non-owner', () => {
  it('gets FAILED_PRECONDITION carrying the owner and the current epoch', async () => {
    const before = cluster.master.master.epoch;
    await cluster.addShard(); // a join changes the map: the epoch grows
    await waitFor(() => cluster.shards.every((s) => s.node.map.epoch > before), 5000, 'the new map on every shard');
    const [a, b] = cluster.shards;
    const row = rowOwnedBy(b!.node.id, 'stale');
    const ca = shardClient(a!.address);
    const r = await rawCall(ca, ca.readRow, { epoch: before, row, filter: undefined }, token);
    expect(r.err?.code).toBe(status.FAILED_PRECONDITION);
    expect(r.err!.metadata.get('cairn-owner')).toEqual([b!.node.id]);
    expect(r.err!.metadata.get('cairn-owner-address')).toEqual([b!.address]);
    expect(BigInt(String(r.err!.metadata.get('cairn-epoch')[0]))).toBe(cluster.master.master.epoch);
    expect(r.err!.details).toContain(b!.node.id);
    ca.close();
  });

  it('is invisible to SDK callers: the SDK refreshes its map and retries', async () => {
    const client = await CairnClient.connect({ master: cluster.masterAddress, user: 'writer', password: 'writer-pass' });
    try {
      const [a, b] = cluster.shards;
      const row = rowOwnedBy(b!.node.id, 'sdk-stale');
      // Poison the SDK's cache: an old epoch that sends every key to shard A.
      const map = client.map;
      (client as unknown as { setMap(m: unknown): void }).setMap({
        epoch: 1n,
        shards: map.shards,
        ranges: map.ranges.map((r) => ({ ...r, shardId: a!.node.id })),
      });
      await client.put(row, { c: 'v1' });
      expect((await client.get(row)).map((c) => c.value.toString())).toEqual(['v1']);
      expect(client.map.epoch).toBe(cluster.master.master.epoch);
    } finally {
      client.close();
    }
  });
});
