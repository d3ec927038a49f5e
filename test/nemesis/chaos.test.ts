/**
 * The bounded nemesis run CI makes (docs/design.md "Moving data": an acknowledged
 * write is never lost, a read never returns data older than an acknowledged
 * write, no range is ever served by two shards or by none).
 *
 * Real processes (a master and 3 shards), 16 SDK clients on 8 hot keys, and
 * about a minute of faults: kill -9 and restart of shards, SIGSTOP/SIGCONT,
 * kill -9 of the master during a move, rebalances and drains, and — where
 * the machine allows (root, `ip netns`) — partitions between a shard and the
 * master; otherwise the reason is printed. Then the checker: per-key
 * linearizability, every acknowledged write present at the end, every range
 * served by exactly one shard. The long run is `npm run chaos -- --duration 10m`.
 *
 * The replicated case (issue 13): the same with replicationFactor 3, where
 * rebalances and drains move replicas, and the nemesis also loses machines (kill -9, data directory wiped, a fresh
 * shard in its place, the lost copies rebuilt by the master), pauses
 * primaries past the lease, and cuts primaries off from their followers or
 * from the master; the checker also fails the run when two replicas of one
 * range acknowledged writes at the same version, or when a range is left
 * without its in-sync copies.
 *
 * It runs with two masters keeping their state in a 3-member etcd (issue 14):
 * kill-master kills the leader, and the leader is also paused past its etcd
 * lease; a standby takes over each time.
 *
 * The crash at each named failpoint of the move state machine, per role, is
 * test/crash.test.ts.
 */
import { describe, expect, it } from '@jest/globals';
import { etcdSkipReason } from '../harness/etcd.js';
import { showOp } from './history.js';
import { runChaos, type ChaosOptions, type ChaosResult } from './run.js';

const DURATION_MS = Number(process.env.CAIRN_CHAOS_MS ?? 45_000);
const REPLICATED_MS = Number(process.env.CAIRN_CHAOS_REPLICATED_MS ?? 60_000);
const REPLICATED_KINDS = ['kill-shard', 'pause-shard', 'pause-long', 'lose-machine', 'kill-master', 'partition', 'partition-followers', 'pause-master'] as const;
// The replicated case runs two masters on etcd (issue 14) wherever etcd runs: always in CI.
const noEtcd = etcdSkipReason();
if (noEtcd) console.warn(`test/nemesis/chaos.test.ts: the replicated case runs with one embedded master, not two on etcd: ${noEtcd}`);

/**
 * Runs one bounded chaos run, prints its own report (visible in CI logs),
 * and checks what every run must show: no anomaly, real work, and
 * partitions wherever CI can make them.
 */
async function runReported(o: Omit<ChaosOptions, 'log'>): Promise<ChaosResult> {
  const lines: string[] = [];
  const r = await runChaos({ ...o, log: (l) => lines.push(l) });
  process.stdout.write(lines.join('\n') + '\n' + r.summary + '\n');
  if (!r.partitions.enabled) process.stdout.write(`nemesis: partitions were not injected: ${r.partitions.reason}\n`);
  const anomalies = r.anomalies.map((a) => [`${a.kind}: ${a.message}`, ...(a.ops ?? []).map(showOp)].join('\n    '));
  expect(anomalies).toEqual([]);
  expect(r.summary).toMatch(/^chaos: ops=\d+ faults=\d+ anomalies=0$/);
  // The run did real work.
  expect(r.ops).toBeGreaterThan(1000);
  // CI runs as root on a machine that can build network namespaces: a run there without partitions proves less than it claims.
  if (process.env.CI === 'true') expect({ partitions: r.partitions.enabled, reason: r.partitions.reason }).toEqual({ partitions: true, reason: undefined });
  return r;
}

describe('nemesis', () => {
  it(
    'finds no anomaly under kills, pauses, master crashes during moves, rebalances, drains and partitions',
    async () => {
      const r = await runReported({ durationMs: DURATION_MS, shards: 3, clients: 16, keys: 8, faultIntervalMs: [500, 2000] });
      // The run did real damage.
      for (const kind of ['kill-shard', 'pause-shard', 'kill-master'] as const) expect(r.faultsByKind[kind] ?? 0).toBeGreaterThan(0);
      expect((r.faultsByKind.rebalance ?? 0) + (r.faultsByKind.drain ?? 0) + (r.moves.cleaned ?? 0)).toBeGreaterThan(0);
      if (r.partitions.enabled) expect(r.faultsByKind.partition ?? 0).toBeGreaterThan(0);
    },
    DURATION_MS + 300_000,
  );

  it(
    'replicationFactor 3, two masters on etcd: finds no anomaly under machine loss, pauses past the lease, primary/follower and primary/master partitions, kills, leader kills and pauses, and replica moves',
    async () => {
      const masters = noEtcd ? 1 : 2;
      const r = await runReported({ durationMs: REPLICATED_MS, shards: 3, clients: 12, keys: 8, replicationFactor: 3, masters, fillerRows: 500, faultIntervalMs: [300, 1000] });
      // Every replicated fault kind ran (a drain only where some shard can take its copies: not always) (the partitions wherever namespaces can be made).
      const missing = REPLICATED_KINDS.filter((k) => (r.partitions.enabled || !k.startsWith('partition')) && (masters > 1 || k !== 'pause-master') && !((r.faultsByKind[k] ?? 0) > 0));
      expect({ missing, skipped: r.skipped }).toEqual({ missing: [], skipped: r.skipped });
      // Rebalances were asked for: on three shards holding every range there is often nothing to move (a skip).
      expect((r.faultsByKind.rebalance ?? 0) + (r.skipped.rebalance ?? 0)).toBeGreaterThan(0);
      // The acknowledgements were placed in a (range, version): the two-primaries check judged them.
      expect(r.acks?.placed ?? 0).toBeGreaterThan(0);
    },
    REPLICATED_MS + 300_000,
  );
});
