/**
 * A primary cut off from its followers but not from the master (network
 * namespaces: as root, with `ip netns`; elsewhere the suite says why it
 * skips, and in CI it must run). The master still hears the primary, so it
 * is not "down"; but the primary's lease runs out with no follower answering,
 * so it serves nothing. PacificA's answer: each follower that has not heard
 * its primary for longer than the lease says so in its heartbeat, and when
 * every in-sync follower does, the master promotes one of them
 * (primary-silence.ts, failover.ts). Writes to the range are acknowledged
 * again while the partition lasts; after it heals the old primary catches up
 * as a follower and rejoins; every acknowledged write is there.
 *
 * Before followers reported their silence, the master took both followers
 * out of the in-sync set on the primary's word, the range fell below
 * minInSync, and writes were refused until the partition healed.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { CairnClient } from '../services/client/index.js';
import { rowHash } from '../services/common/hash.js';
import { ProcessCluster } from './harness/procs.js';
import { NetnsLab, probeNetns } from './nemesis/netns.js';
import { connectClient } from './nemesis/workload.js';
import { waitUntil } from './harness/cluster.js';

const probe = await probeNetns();
if (!probe.ok) {
  if (process.env.CI === 'true') throw new Error(`network namespaces are needed in CI: ${probe.reason}`);
  console.warn(`SKIPPED test/replication-partition.test.ts: ${probe.reason}`);
}
const describeNet = probe.ok ? describe : describe.skip;

describeNet('a primary cut off from its followers, not from the master', () => {
  let net: NetnsLab;
  let cluster: ProcessCluster;
  let client: CairnClient;
  let admin: CairnClient;

  beforeAll(async () => {
    net = await NetnsLab.create();
    cluster = await ProcessCluster.start({
      shards: 3,
      net,
      masterArgs: ['--replication-factor', '3', '--replica-down-timeout-ms', '600000'],
      env: { CAIRN_REPLICA_LEASE_MS: '1000', CAIRN_REPLICA_ACK_TIMEOUT_MS: '1500' },
    });
    await cluster.waitReady();
    client = await connectClient(cluster.masterAddress, 20_000);
    admin = await connectClient(cluster.masterAddress, 20_000, 'admin');
    await waitUntil(async () => (await admin.getRanges()).every((r) => r.inSync.length === 3), 30_000, 'every range with 3 in-sync copies');
  }, 90_000);

  afterAll(async () => {
    client?.close();
    admin?.close();
    await cluster?.cleanup();
    await net?.destroy();
  });

  it('a follower is promoted while the partition lasts; writes resume; after it heals the old primary rejoins; nothing acknowledged is lost', async () => {
    const before = await admin.getRanges();
    const range = before[0]!;
    const rows = Array.from({ length: 2000 }, (_, i) => `cut-${i}`).filter((r) => range.start <= rowHash(r) && rowHash(r) < range.end);
    const node = (id: string) => cluster.shards.find((s) => s.address === before.flatMap((r) => (r.shardId === id ? [r.address] : []))[0])!;
    const primary = node(range.shardId);
    const followers = range.inSync.filter((s) => s !== range.shardId).map(node);
    expect(followers).toHaveLength(2);

    const acked: string[] = [];
    let next = 0;
    const write = async () => {
      const row = rows[next++ % rows.length]!;
      await client.put(row, { v: row });
      acked.push(row);
    };
    for (let i = 0; i < 20; i++) await write();

    for (const f of followers) await net.partition(primary.name, f.name);
    const cutAt = Date.now();
    try {
      await waitUntil(async () => (await admin.getRanges()).find((r) => r.start === range.start)!.shardId !== range.shardId, 30_000, 'a follower promoted');
      const promotedAt = Date.now();
      const ackedBefore = acked.length;
      for (let i = 0; i < 20; i++) await write();
      expect(acked.length).toBe(ackedBefore + 20);
      const after = (await admin.getRanges()).find((r) => r.start === range.start)!;
      expect(followers.map((f) => f.address)).toContain(after.address);
      expect(after.inSync).not.toContain(range.shardId);
      process.stdout.write(`partition: a follower was promoted ${promotedAt - cutAt} ms after the cut; 20 writes acknowledged by it during the partition\n`);
    } finally {
      for (const f of followers) await net.heal(primary.name, f.name);
    }
    await waitUntil(async () => (await admin.getRanges()).every((r) => r.inSync.length === 3), 60_000, 'the old primary back in sync');
    for (const row of new Set(acked)) expect((await client.getValue(row, 'v'))?.toString()).toBe(row);
  }, 150_000);
});
