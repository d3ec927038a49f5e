/**
 * `cairn ctl` refuses before it shows what it will not do (issue: hardening,
 * item 9), with real processes:
 * - `dropserver` while another operation runs printed its plan, then was
 *   refused: the master now refuses the plan itself, so nothing is shown;
 * - a master that answers but has no map yet was reported with the hint "is
 *   the master running", which sends the operator the wrong way.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';

describe('an operation already running', () => {
  let cluster: ProcCluster;
  beforeAll(async () => {
    cluster = await startProcCluster({ shards: 2 });
    const load = await cluster.ctl(['load', '--rows', '3000', '--json']);
    expect(load.json).toEqual({ written: 3000, errors: 0 });
    await cluster.addShard();
    await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers.length === 3, 20_000, 'a third shard');
  }, 120_000);
  afterAll(() => cluster?.cleanup());

  it('dropserver is refused before any plan is printed, and plan says why', async () => {
    // Throttled to 10 KB/s, so the rebalance runs for several seconds and is still running when dropserver asks, even on a loaded machine (at 50 KB/s it could end first).
    const rebalance = cluster.ctl(['rebalance', '--yes', '--max-mbps', '0.01', '--json'], { timeoutMs: 150_000 });
    await waitUntil(async () => (await cluster.ctl(['moves', '--json'])).json.moves.length > 0, 20_000, 'the rebalance to start');
    const drop = await cluster.ctl(['dropserver', 's1', '--yes']);
    expect(drop.code).toBe(1);
    expect(drop.stdout).toBe('');
    expect(drop.stderr).toContain('another rebalance or drain is still running');
    const plan = await cluster.ctl(['plan']);
    expect(plan.code).toBe(1);
    expect(plan.stderr).toContain('another rebalance or drain is still running');
    expect((await rebalance).code).toBe(0);
    expect((await cluster.ctl(['plan', '--json'])).code).toBe(0); // once it ended, plans are back
  }, 180_000);
});

describe('a master with no map yet', () => {
  let cluster: ProcCluster;
  beforeAll(async () => {
    cluster = await startProcCluster({ shards: 0, expectShards: 2, waitForMap: false });
  }, 60_000);
  afterAll(() => cluster?.cleanup());

  it('ctl says the master answered with no map, not "is the master running"', async () => {
    const r = await cluster.ctl(['servers']);
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('no map yet');
    expect(r.stderr).not.toContain('is the master running');
    expect(r.stderr).toContain('shard refused');
  });
});
