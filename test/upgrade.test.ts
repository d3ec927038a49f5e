/**
 * Upgrade: today's code on data directories written before cluster ids and
 * shard sessions existed (test/fixtures/v0-cluster: a master and three shards,
 * 300 rows of `ctl load --seed 7`, map epoch 4, no cluster id, no generation).
 * Real processes and real LevelDB on copies of the fixture.
 *
 * The master mints the cluster id when it opens its own pre-id state, every
 * shard adopts it when the master admits it, nothing is refused, every row is
 * still there, the id survives a restart of every process, and data moves
 * between the upgraded shards (internal calls now carry the cluster id).
 *
 * The master is configured with replicationFactor 3, as a new cluster is: the
 * upgraded cluster keeps its one copy until `ctl factor 3`, which then makes
 * the copies by itself.
 *
 * This is an upgrade check: the code before the cluster-id change has no ids,
 * so it cannot "fail before" in the usual sense (it would fail the id checks
 * and pass the verify).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { credentials } from '@grpc/grpc-js';
import { MasterServiceClient } from '../proto/gen/cairn/v1/master.js';
import { deriveTokenKey, ServerTokenSource } from '../services/common/auth.js';
import { call } from '../services/common/grpc.js';
import { mapFromProto } from '../services/common/map.js';
import { startProcCluster, waitUntil, type Proc, type ProcCluster } from './harness/cluster.js';
import { TEST_CREDENTIAL } from './harness/inproc.js';
import { describeShard } from './harness/raw.js';

const token = new ServerTokenSource(deriveTokenKey(TEST_CREDENTIAL), 'test');

const ROWS = 300;
const SEED = 7;
const CLUSTER_ID_RE = /^c-[0-9a-f]{16}$/;

async function masterMap(address: string) {
  const c = new MasterServiceClient(address, credentials.createInsecure());
  try {
    return mapFromProto((await call(c, c.getMap, {}, { token: token.get(), timeoutMs: 5000 })).map);
  } finally {
    c.close();
  }
}

/** Log lines of a process that say something was refused (by the master, or by a shard of a caller). */
const refusals = (p: Proc) =>
  p.logs.filter((l) => ['shard refused', 'refused a process of another cluster', 'the master will not admit this shard'].includes(String(l.message)) || /refused this shard/.test(String(l.message)));

async function verify(cluster: ProcCluster): Promise<void> {
  const r = await cluster.ctl(['verify', '--rows', String(ROWS), '--seed', String(SEED), '--json']);
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  expect(r.json).toEqual({ checked: ROWS, missing: 0, wrong: 0 });
}

async function allUp(cluster: ProcCluster, n: number, what: string): Promise<void> {
  await waitUntil(async () => {
    const r = await cluster.ctl(['servers', '--json']);
    return r.code === 0 && r.json.servers.length === n && r.json.servers.every((s: { status: string }) => s.status === 'up');
  }, 30_000, what);
}

/** Every shard holds the master's current map and its cluster id, is admitted, and was refused nothing. */
async function expectAdopted(cluster: ProcCluster, clusterId: string, generation: bigint): Promise<void> {
  const epoch = (await masterMap(cluster.masterAddress)).epoch;
  await waitUntil(async () => {
    for (const s of cluster.shards) if ((await describeShard(s.address)).map?.epoch !== epoch) return false;
    return true;
  }, 20_000, `every shard to hold map epoch ${epoch}`);
  const ids: string[] = [];
  for (const s of cluster.shards) {
    const d = await describeShard(s.address);
    expect({ address: s.address, clusterId: d.clusterId, registered: d.registered, refusal: d.refusal, mapClusterId: d.map?.clusterId }).toEqual({
      address: s.address,
      clusterId,
      registered: true,
      refusal: '',
      mapClusterId: clusterId,
    });
    if (generation > 0n) expect(d.generation).toBe(generation);
    ids.push(d.shardId);
  }
  return void expect(ids.sort()).toEqual(cluster.shards.map((_, i) => `s${i + 1}`));
}

describe('upgrade from data directories written before cluster ids', () => {
  let cluster: ProcCluster;
  let clusterId: string;

  beforeAll(async () => {
    // Waits until all three shards are up and the master has a map.
    // The master is configured as a new cluster would be (replicationFactor 3): a cluster formed before
    // replication keeps its one copy until an operator raises the factor (issue 13).
    cluster = await startProcCluster({ shards: 3, expectShards: 2, dataFrom: 'test/fixtures/v0-cluster', masterArgs: ['--replication-factor', '3'] });
  }, 60_000);
  afterAll(() => cluster?.cleanup());

  it('every row of the fixture is still there', async () => {
    await verify(cluster);
  }, 30_000);

  it('the master minted a cluster id, and every shard adopted it; nothing was refused', async () => {
    const map = await masterMap(cluster.masterAddress);
    clusterId = map.clusterId;
    expect(clusterId).toMatch(CLUSTER_ID_RE);
    expect(map.epoch).toBeGreaterThanOrEqual(4n); // the fixture's epoch 4, plus a map for each shard's new address
    expect(map.shards.map((s) => s.id).sort()).toEqual(['s1', 's2', 's3']);
    expect(map.replicationFactor ?? 1).toBe(1);
    expect(map.ranges.every((r) => r.replicas === undefined && r.inSync === undefined)).toBe(true);
    expect(cluster.master.logs.find((l) => l.message === 'cluster id minted for a cluster formed before cluster ids')).toMatchObject({ clusterId, epoch: '4' });
    // The fixture's directories hold no generation: this start is each one's first.
    await expectAdopted(cluster, clusterId, 1n);
    expect(refusals(cluster.master)).toEqual([]);
    for (const s of cluster.shards) expect(refusals(s)).toEqual([]);
  }, 30_000);

  it('a restart of every process keeps the id; every row is still there', async () => {
    expect(clusterId).toMatch(CLUSTER_ID_RE);
    await cluster.stopAll();
    await cluster.restart(cluster.master);
    for (const s of [...cluster.shards]) await cluster.restart(s);
    // The restarted master holds each shard's previous session for shardDownAfterMs before a new one takes over.
    await allUp(cluster, 3, 'the shards to register again after the restart');
    expect((await masterMap(cluster.masterAddress)).clusterId).toBe(clusterId);
    expect(cluster.master.logs.some((l) => l.message === 'cluster id minted for a cluster formed before cluster ids')).toBe(false);
    await expectAdopted(cluster, clusterId, 2n);
    // Only the restart window's session conflicts; never another cluster.
    for (const p of [cluster.master, ...cluster.shards]) {
      for (const l of refusals(p)) expect(l.reason).toBe('SESSION_CONFLICT');
    }
    await verify(cluster);
  }, 60_000);

  it('a rebalance after the upgrade moves data between upgraded shards and a new one; every row is still there', async () => {
    expect(clusterId).toMatch(CLUSTER_ID_RE);
    await cluster.addShard();
    await allUp(cluster, 4, 'a fourth shard');
    const r = await cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 60_000 });
    // stderr carries the moves' progress; shown only if it failed.
    expect({ code: r.code, stderr: r.code === 0 ? undefined : r.stderr }).toEqual({ code: 0 });
    expect(r.json).toMatchObject({ aborted: 0 });
    expect(r.json.committed).toBeGreaterThan(0);
    const map = await masterMap(cluster.masterAddress);
    expect(map.clusterId).toBe(clusterId);
    expect(map.ranges.some((x) => x.shardId === 's4')).toBe(true);
    await expectAdopted(cluster, clusterId, 0n);
    await verify(cluster);
  }, 90_000);

  it('ctl factor 3 re-replicates the upgraded cluster by itself: every range on 3 shards, in sync; verify is clean', async () => {
    const set = await cluster.ctl(['factor', '3', '--json']);
    expect({ code: set.code, stderr: set.stderr }).toEqual({ code: 0, stderr: '' });
    await waitUntil(
      async () => {
        const r = await cluster.ctl(['ranges', '--json']);
        const ranges: Array<{ replicas: string[]; inSync: string[]; learners?: string[] }> = r.json?.ranges ?? [];
        return r.code === 0 && ranges.length > 0 && ranges.every((x) => new Set(x.replicas).size === 3 && x.inSync.length === 3 && !x.learners?.length);
      },
      90_000,
      'every range with 3 in-sync copies',
    );
    expect((await masterMap(cluster.masterAddress)).replicationFactor).toBe(3);
    await verify(cluster);
  }, 120_000);
});
