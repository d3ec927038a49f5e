/**
 * Moving replicas with real processes (issue 13, item 7): on a factor-3
 * cluster with data and writers that never stop, `rebalance` spreads the
 * copies onto a new shard, `dropserver` empties a shard of its copies (then
 * `remserver` retires it), and a master killed mid-rebalance leaves every
 * range fully replicated. Each time: no two copies of a range on one shard,
 * every range three in sync, and every acknowledged write is there.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { CairnClient } from '../services/client/index.js';
import { startProcCluster, waitUntil, type ProcCluster, type RangeJson } from './harness/cluster.js';
import { USERS } from './harness/inproc.js';

const WRITER = USERS.find((u) => u.role === 'rw')!;
const PAD = 'x'.repeat(400);
let cluster: ProcCluster;
let client: CairnClient;
/** Every acknowledged write: row -> the value acknowledged last. */
const acked = new Map<string, string>();
let writing = true;
let writers: Promise<void>[] = [];

type RangeView = RangeJson & { learners?: string[] };
const ranges = async (): Promise<RangeView[]> => (await cluster.ctl(['ranges', '--json'])).json.ranges;
const servers = async () => (await cluster.ctl(['servers', '--json'])).json.servers as Array<{ id: string; status: string; bytes: number; primaries: number; followers: number; learners: number }>;

/** A writer: puts rows of its own, again and again, recording what was acknowledged. */
async function writer(w: number): Promise<void> {
  for (let i = 0; writing; i++) {
    const row = `w${w}-${i % 150}`;
    const value = `${i}`;
    try {
      await client.put(row, { v: value, pad: PAD });
      acked.set(row, value);
    } catch {
      // Refused or unknown: not acknowledged, so not checked; the row is written again later.
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Every range has three copies on three shards, all in sync, no learner. */
function fullyReplicated(all: RangeView[]): boolean {
  return all.every((r) => r.replicas.length === 3 && new Set(r.replicas).size === 3 && r.inSync.length === 3 && !(r.learners?.length ?? 0));
}

async function checkAcknowledged(): Promise<void> {
  for (const [row, value] of [...acked]) {
    const got = (await client.getValue(row, 'v'))?.toString();
    // A writer may have had a later write to the row acknowledged meanwhile.
    expect(Number(got)).toBeGreaterThanOrEqual(Number(value));
  }
}

beforeAll(async () => {
  cluster = await startProcCluster({ shards: 3, masterArgs: ['--replication-factor', '3', '--replica-down-timeout-ms', '4000'], env: { CAIRN_REPLICA_LEASE_MS: '1000', CAIRN_REPLICA_ACK_TIMEOUT_MS: '1500' } });
  client = await CairnClient.connect({ master: cluster.masterAddress, user: WRITER.user, password: WRITER.password, timeoutMs: 30_000 });
  await waitUntil(async () => fullyReplicated(await ranges()), 30_000, 'every range in sync');
  for (let i = 0; i < 600; i++) {
    await client.put(`base-${i}`, { v: `${i}`, pad: PAD });
    acked.set(`base-${i}`, `${i}`);
  }
  writers = [0, 1, 2, 3].map(writer);
}, 120_000);

afterAll(async () => {
  writing = false;
  await Promise.allSettled(writers);
  client?.close();
  if (process.env.KEEP_LOGS) await import('node:fs/promises').then((fs) => fs.cp(`${cluster.dir}/logs`, process.env.KEEP_LOGS!, { recursive: true }));
  await cluster?.cleanup();
});

describe('moving replicas on a factor-3 cluster under writes', () => {
  it('rebalance onto a 4th shard spreads the copies: no two on one shard, primaries within one of even, every range 3 in sync', async () => {
    await cluster.addShard();
    await waitUntil(async () => (await servers()).filter((s) => s.status === 'up').length === 4, 30_000, 'four shards up');
    const r = await cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 120_000 });
    expect(r.code).toBe(0);
    await waitUntil(async () => fullyReplicated(await ranges()), 30_000, 'every range 3 in sync after the rebalance');
    const all = await ranges();
    const list = await servers();
    expect(list).toHaveLength(4);
    // Every shard holds copies (the new one too), and the bytes are spread.
    for (const s of list) expect(s.primaries + s.followers).toBeGreaterThan(0);
    await waitUntil(async () => (await servers()).every((s) => s.bytes > 0), 10_000, 'heartbeats with the new byte counts');
    const bytes = (await servers()).map((s) => s.bytes);
    expect(Math.min(...bytes)).toBeGreaterThan(Math.max(...bytes) / 3);
    const primaries = list.map((s) => all.filter((x) => x.shard === s.id).length);
    expect(Math.max(...primaries) - Math.min(...primaries)).toBeLessThanOrEqual(1);
    // Planning again finds nothing to do.
    expect((await cluster.ctl(['plan', '--json'])).json.moves).toEqual([]);
    await checkAcknowledged();
  }, 180_000);

  it('dropserver empties a shard of its copies while writes go on; then remserver retires it', async () => {
    const victim = (await servers())[0]!.id;
    const r = await cluster.ctl(['dropserver', victim, '--yes', '--json'], { timeoutMs: 120_000 });
    expect(r.code).toBe(0);
    await waitUntil(async () => fullyReplicated(await ranges()), 30_000, 'every range 3 in sync after the drain');
    for (const x of await ranges()) {
      expect(x.replicas).not.toContain(victim);
      expect(x.learners ?? []).not.toContain(victim);
    }
    const rem = await cluster.ctl(['remserver', victim, '--yes', '--json']);
    expect(rem.code).toBe(0);
    expect((await servers()).map((s) => s.id)).not.toContain(victim);
    await checkAcknowledged();
  }, 180_000);

  it('a master killed mid-rebalance: restarted, every range ends with 3 in-sync copies, and a second rebalance finishes the job', async () => {
    await cluster.addShard();
    await waitUntil(async () => (await servers()).filter((s) => s.status === 'up').length === 4, 30_000, 'four shards up');
    const following = cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 120_000 });
    // Killed once a copy is under way (a learner in the map).
    await waitUntil(async () => (await ranges()).some((x) => (x.learners?.length ?? 0) > 0), 30_000, 'a learner in the map');
    await cluster.stop(cluster.master, 'SIGKILL');
    await following.catch(() => undefined);
    await cluster.restart(cluster.master);
    await waitUntil(async () => fullyReplicated(await ranges()), 60_000, 'every range 3 in sync after the restart');
    const again = await cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 120_000 });
    expect(again.code).toBe(0);
    await waitUntil(async () => fullyReplicated(await ranges()), 30_000, 'every range 3 in sync after the second rebalance');
    expect((await cluster.ctl(['plan', '--json'])).json.moves).toEqual([]);
    writing = false;
    await Promise.allSettled(writers);
    await checkAcknowledged();
  }, 240_000);
});
