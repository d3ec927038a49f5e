/**
 * The cluster interface (cluster.ts) behaves the same on both drivers: a
 * server stopped or killed and started again comes back on its address and
 * data dir with its rows, and its logs are there to read.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { CairnClient } from '../../services/client/index.js';
import type { Cluster, ClusterServer } from './cluster.js';
import { InProcDriver, USERS } from './inproc.js';
import { ProcessCluster } from './procs.js';

const writer = USERS.find((u) => u.role === 'rw')!;
let cluster: Cluster | undefined;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = undefined;
});

async function rowsSurvive<S extends ClusterServer>(c: Cluster<S>): Promise<void> {
  await c.waitReady();
  const rows = Array.from({ length: 40 }, (_, i) => ({ row: `drv/${i}`, cells: { 'd:v': String(i) } }));
  const client = await CairnClient.connect({ master: c.masterAddress, user: writer.user, password: writer.password, timeoutMs: 20_000 });
  try {
    await client.writeRows(rows);
    const shard = c.shards[0]!;
    const { address, dataDir } = shard;
    await c.stop(shard);
    expect(c.isRunning(shard)).toBe(false);
    await c.restart(shard);
    expect({ running: c.isRunning(shard), address: shard.address, dataDir: shard.dataDir }).toEqual({ running: true, address, dataDir });
    await c.kill(c.master);
    await c.restart(c.master);
    await c.waitReady();
    const got = await client.getRows(rows.map((r) => r.row), { columns: ['d:v'] });
    expect(rows.filter((r) => got.get(r.row)?.[0]?.value.toString() !== r.cells['d:v'])).toEqual([]);
  } finally {
    client.close();
  }
  for (const s of [c.master, ...c.shards]) expect(c.logs(s).length).toBeGreaterThan(0);
}

describe('the cluster interface', () => {
  it('in-process driver', async () => {
    const c = await InProcDriver.start({ shards: 2 });
    cluster = c;
    await rowsSurvive(c);
    expect(() => c.pause(c.shards[0]!)).toThrow(/cannot pause/);
  }, 60_000);

  it('process driver', async () => {
    const c = await ProcessCluster.start({ shards: 2 });
    cluster = c;
    await rowsSurvive(c);
    const s = c.shards[1]!;
    c.pause(s);
    expect({ running: c.isRunning(s), paused: s.paused }).toEqual({ running: true, paused: true });
    c.resume(s);
    await c.waitReady();
  }, 90_000);
});
