/**
 * Crash points of replication (REPLICATION_FAILPOINTS in
 * services/master/failover.ts), each with real processes, 3 shards and
 * replicationFactor 3: the master crashes between deciding a group change
 * (here: promoting a follower after its primary was killed) and writing it,
 * or after writing it before pushing it; a follower crashes after applying
 * entries and before acknowledging them. After each, restarted, every range
 * has exactly one primary in its in-sync set, every acknowledged write is
 * read back, and writes go on. (`primary-before-replicate` is
 * test/replication.test.ts's.)
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { CairnClient } from '../services/client/index.js';
import { rowHash } from '../services/common/hash.js';
import { startProcCluster, waitUntil, type ProcCluster, type RangeJson } from './harness/cluster.js';
import { USERS } from './harness/inproc.js';

const WRITER = USERS.find((u) => u.role === 'rw')!;
const ENV = { CAIRN_REPLICA_LEASE_MS: '1000', CAIRN_REPLICA_ACK_TIMEOUT_MS: '1500' };


let cluster: ProcCluster | undefined;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = undefined;
});

const rangesOf = async (c: ProcCluster): Promise<RangeJson[]> => (await c.ctl(['ranges', '--json'])).json.ranges;

/** Writes rows with the SDK (which retries through failovers); returns the rows acknowledged. */
async function write(client: CairnClient, prefix: string, n: number): Promise<string[]> {
  const rows: string[] = [];
  for (let i = 0; i < n; i++) {
    await client.put(`${prefix}-${i}`, { v: `${prefix}-${i}` }, { timeoutMs: 60_000 });
    rows.push(`${prefix}-${i}`);
  }
  return rows;
}

async function expectWhole(c: ProcCluster, client: CairnClient, acked: string[]): Promise<void> {
  await waitUntil(async () => (await rangesOf(c)).every((r) => r.inSync.includes(r.shard) && r.replicas[0] === r.shard), 30_000, 'one primary, in sync, per range');
  for (const row of acked) expect((await client.getValue(row, 'v', { timeoutMs: 60_000 }))?.toString()).toBe(row);
  expect(await write(client, 'after', 20)).toHaveLength(20);
}

describe('replication crash points', () => {
  it.each(['master-before-replica-step', 'master-after-replica-step'])('the master crashes at %s during a failover: restarted, it finishes it; nothing acknowledged is lost', async (point) => {
    const c = (cluster = await startProcCluster({ shards: 3, masterArgs: ['--replication-factor', '3'], env: ENV }));
    await waitUntil(async () => (await rangesOf(c)).every((r) => r.inSync.length === 3), 30_000, 'in sync');
    const client = await CairnClient.connect({ master: c.masterAddress, user: WRITER.user, password: WRITER.password, timeoutMs: 60_000 });
    try {
      const acked = await write(client, 'before', 60);
      // Armed only now, so the step it stops at is the failover below (not a change while the cluster settled).
      await c.stop(c.master);
      await c.restart(c.master, { env: { CAIRN_FAILPOINTS: `${point}=crash` } });
      await waitUntil(async () => ((await c.ctl(['servers', '--json'])).json?.servers ?? []).filter((s: { status: string }) => s.status === 'up').length === 3, 30_000, 'three shards up at the restarted master');
      const victim = c.shards[1]!;
      await c.stop(victim, 'SIGKILL');
      // The master's pass promotes a follower of the victim's range, and crashes at the point.
      await c.master.exited;
      await c.restart(c.master);
      await waitUntil(async () => (await rangesOf(c)).every((r) => r.address !== victim.address), 30_000, 'a new primary for the victim\'s range');
      acked.push(...(await write(client, 'during', 30)));
      await expectWhole(c, client, acked);
    } finally {
      client.close();
    }
  }, 150_000);

  it('a follower crashes after applying entries, before acknowledging them: writes go on without it; restarted, it catches up and rejoins', async () => {
    const c = (cluster = await startProcCluster({ shards: 3, masterArgs: ['--replication-factor', '3'], env: ENV, shardEnv: [undefined as never, { CAIRN_FAILPOINTS: 'follower-before-ack=crash' }] }));
    await waitUntil(async () => (await rangesOf(c)).every((r) => r.inSync.length === 3), 20_000, 'in sync');
    const client = await CairnClient.connect({ master: c.masterAddress, user: WRITER.user, password: WRITER.password, timeoutMs: 60_000 });
    try {
      const follower = c.shards[1]!;
      const all = await rangesOf(c);
      const followerId = all.find((r) => r.address === follower.address)!.shard;
      // A row of a range shard2 follows: its first replicated entry crashes it.
      const row = Array.from({ length: 500 }, (_, i) => `f-${i}`).find((x) => {
        const r = all.find((y) => BigInt(y.start) <= rowHash(x) && rowHash(x) < BigInt(y.end))!;
        return r.shard !== followerId;
      })!;
      await client.put(row, { v: row }, { timeoutMs: 60_000 });
      await follower.exited;
      const acked = [row, ...(await write(client, 'without', 40))];
      await c.restart(follower);
      await waitUntil(async () => (await rangesOf(c)).every((r) => !r.replicas.includes(followerId) || r.inSync.includes(followerId)), 60_000, 'the follower back in sync');
      await expectWhole(c, client, acked);
    } finally {
      client.close();
    }
  }, 150_000);
});
