/**
 * A move's commit whose outcome is unknown is never aborted (issue: data
 * safety first, item 3). The commit is one synced batch on the master; a
 * write can fail after it reached the disk (an fsync error). The coordinator
 * used to abort on any error from that step: the source lifted its fence and
 * the destination dropped its copy while the durable map named the
 * destination, so the restarted master served the range from an empty copy.
 *
 * The failpoint `master-after-commit-write=error` makes the commit batch
 * durable and then report a failure. The master must stop (exit non-zero)
 * instead of guessing; restarted, it reads the committed journal record and
 * finishes the move; every row is still there.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';

const ROWS = 2000;
let cluster: ProcCluster;

beforeAll(async () => {
  cluster = await startProcCluster({ shards: 2, masterEnv: { CAIRN_FAILPOINTS: 'master-after-commit-write=error' } });
  const load = await cluster.ctl(['load', '--rows', String(ROWS), '--seed', '5', '--json']);
  expect(load.json).toEqual({ written: ROWS, errors: 0 });
  await cluster.addShard();
  await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers.length === 3, 20_000, 'a third shard');
}, 120_000);
afterAll(() => cluster?.cleanup());

it('a commit that fails after it is durable stops the master; the restarted master finishes the move and nothing is lost', async () => {
  const master = cluster.master;
  const rebalance = cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 90_000 }).catch(() => undefined);
  const code = await Promise.race([master.exited, new Promise((r) => setTimeout(() => r('still running'), 60_000))]);
  expect(code).toBe(1);
  const failed = master.logs.find((l) => l.message === 'a durable write of the master state failed; its outcome is unknown, so the master stops: restart it to carry on from what is on disk');
  expect(failed).toMatchObject({ write: expect.stringMatching(/^commit of move mv-/) });
  const moveId = String(failed!.write).replace('commit of move ', '');
  expect(master.logs.some((l) => l.message === 'move aborted and cleaned up' || (l.message === 'commit refused; aborting the move'))).toBe(false);
  await rebalance;

  // Restarted without the failpoint (the harness keeps per-process environment only for the first start).
  await cluster.restart(master);
  await waitUntil(async () => {
    const r = await cluster.ctl(['moves', '--json']);
    return r.code === 0 && r.json.moves.length === 0;
  }, 60_000, 'every move to end');
  const all = (await cluster.ctl(['moves', '--all', '--json'])).json.moves as Array<{ id: string; state: string }>;
  expect(all.find((m) => m.id === moveId)?.state).toBe('cleaned');
  const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--seed', '5', '--json']);
  expect(verify.json).toMatchObject({ checked: ROWS, missing: 0, wrong: 0 });
}, 180_000);
