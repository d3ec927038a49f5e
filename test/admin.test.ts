/**
 * Admin commands against a real in-process cluster: `sync` reports the
 * shards that did not take the map; `addserver` lets a shard join a cluster
 * that requires approval.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { createServer } from 'node:net';
import { CairnClient } from '../services/client/index.js';
import { startInProcCluster, waitFor, type InProcCluster } from './harness/inproc.js';

let cluster: InProcCluster | undefined;
afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

const admin = (c: InProcCluster) => CairnClient.connect({ master: c.masterAddress, user: 'admin', password: 'admin-pass' });

function freePort(): Promise<number> {
  return new Promise((done) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => done(port));
    });
  });
}

describe('sync', () => {
  it('pushes the map to every shard and names the ones that did not answer', async () => {
    cluster = await startInProcCluster({ shards: 2 });
    const client = await admin(cluster);
    try {
      const ok = await client.admin((a) => a.syncMap, {});
      expect(ok.failed).toEqual([]);
      expect(ok.synced).toBe(2);
      const gone = cluster.shards[1]!;
      await gone.stop(500);
      const partial = await client.admin((a) => a.syncMap, {});
      expect(partial.failed.map((f) => f.shardId)).toEqual([gone.node.id]);
      expect(partial.synced).toBe(1);
    } finally {
      client.close();
    }
  });
});

describe('addserver with requireApproval', () => {
  it('refuses an unapproved shard, then admits it at 0% once approved', async () => {
    // The first expectShards shards form the cluster without approval; later ones need addserver.
    cluster = await startInProcCluster({ shards: 1, expectShards: 1, requireApproval: true });
    const client = await admin(cluster);
    try {
      const port = await freePort();
      const address = `127.0.0.1:${port}`;
      const pending = cluster.addShard(address);
      await new Promise((r) => setTimeout(r, 800));
      expect((await client.listServers()).map((s) => s.address)).not.toContain(address);
      const r = await client.admin((a) => a.addServer, { address });
      expect(r.approvalRequired).toBe(true);
      await pending;
      await waitFor(async () => (await client.listServers()).some((s) => s.address === address && s.status === 'up'), 10_000, 'the approved shard');
      const joined = (await client.listServers()).find((s) => s.address === address)!;
      expect(joined).toMatchObject({ share: 0, ranges: 0 });
      const bad = await client.admin((a) => a.addServer, { address: 'no-port' }).catch((e) => e);
      expect(bad.code).toBe('INVALID_ARGUMENT');
      expect(bad.message).toMatch(/address: expected host:port/);
    } finally {
      client.close();
    }
  });
});
