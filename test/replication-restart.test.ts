/**
 * A replicated cluster whose shards all restart at once (a power loss), with
 * real processes. A restarted shard's log holds its position and no entries,
 * so a primary must continue each follower from where their logs meet, not
 * from lsn 1.
 *
 * Defect (10-minute replicated chaos run): every new stream from a primary
 * rewound a follower whose position it did not know yet to lsn 1. A primary
 * whose log no longer held lsn 1 (any restarted shard, or one built by a
 * snapshot) could then bring its in-sync followers up to date only by a
 * snapshot, so it had the master take them all out of the in-sync set: the
 * range refused writes until the copies were made again, and lost its copies
 * if the primary died meanwhile.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { CairnClient } from '../services/client/index.js';
import { startProcCluster, waitUntil, type ProcCluster, type RangeJson } from './harness/cluster.js';
import { USERS } from './harness/inproc.js';

const WRITER = USERS.find((u) => u.role === 'rw')!;
let cluster: ProcCluster;

const ranges = async (): Promise<RangeJson[]> => (await cluster.ctl(['ranges', '--json'])).json.ranges;

beforeAll(async () => {
  cluster = await startProcCluster({ shards: 3, masterArgs: ['--replication-factor', '3'], env: { CAIRN_REPLICA_LEASE_MS: '1000', CAIRN_REPLICA_ACK_TIMEOUT_MS: '1500' } });
}, 60_000);

afterAll(async () => {
  await cluster?.cleanup();
});

async function writeRows(client: CairnClient, from: number, to: number, value: string): Promise<void> {
  for (let i = from; i < to; i++) await client.put(`pl-${i}`, { v: `${value}-${i}` });
}

describe('every shard of a replicated cluster restarts at once', () => {
  it('brings every follower up to date from the logs: no copy of any range is made again', async () => {
    await waitUntil(async () => (await ranges()).every((r) => r.inSync.length === 3), 20_000, 'every range in sync');
    let client = await CairnClient.connect({ master: cluster.masterAddress, user: WRITER.user, password: WRITER.password, timeoutMs: 20_000 });
    await writeRows(client, 0, 150, 'a');
    client.close();

    // kill -9 every shard, then start them all again.
    await Promise.all(cluster.shards.map((s) => cluster.stop(s, 'SIGKILL')));
    const restarted = await Promise.all(cluster.shards.map((s) => cluster.restart(s)));

    client = await CairnClient.connect({ master: cluster.masterAddress, user: WRITER.user, password: WRITER.password, timeoutMs: 20_000 });
    try {
      await writeRows(client, 150, 300, 'b');
      await waitUntil(async () => (await ranges()).every((r) => r.inSync.length === 3), 20_000, 'every range in sync after the restart');
      for (let i = 0; i < 300; i += 7) expect((await client.getValue(`pl-${i}`, 'v'))?.toString()).toBe(`${i < 150 ? 'a' : 'b'}-${i}`);
    } finally {
      client.close();
    }
    // No range was copied again: every follower, in sync or back from down, was continued from the logs.
    const snapshots = restarted.flatMap((p) => p.logs.filter((l) => l.message === 'sending a snapshot to a follower').map((l) => `${p.name}: ${l.range} to ${l.follower} (${l.why})`));
    expect(snapshots).toEqual([]);
  }, 120_000);
});
