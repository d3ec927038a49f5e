/**
 * Crash points of the move state machine that test/crash.test.ts does not
 * reach: the master's `master-after-copy-journaled`, `master-before-commit`
 * and `master-before-cleaned` failpoints, and a master crash while an abort
 * is still cleaning up (the abort path has no failpoint of its own: the
 * destination is made to die first, so the abort cannot finish, and then the
 * master is killed). test/crash.test.ts covers the other twelve
 * (source, destination and master × snapshot copy, catch-up, critical
 * section, after the commit).
 *
 * Each run: a master and two shards with 2,000 loaded rows, a third shard
 * joins, 4 SDK clients record a history on 4 hot keys, a throttled rebalance
 * starts and the victim dies at its point (SIGKILL from the failpoint, or
 * from the test); the victim restarts without the failpoint, as a supervisor
 * would. Then every move must end committed (`cleaned`) or `aborted` with its
 * clean-up done, `ctl verify` finds every loaded row, every range is served
 * by exactly one shard, and the history is linearizable with every
 * acknowledged write present.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { status } from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CairnClient } from '../../services/client/client.js';
import { runCtl, waitUntil } from '../harness/cluster.js';
import { login } from '../harness/raw.js';
import { USERS } from '../harness/inproc.js';
import { ProcessCluster, type Server } from '../harness/procs.js';
import { showOp } from './history.js';
import { invokeRaw, rawClient, rpc } from './rpc.js';
import { checkOwnership, settleMoves } from './run.js';
import { checkHistory, connectClient, startWorkload } from './workload.js';

const ROWS = 2000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const adminUser = USERS.find((u) => u.role === 'admin')!;
/** An admin token of the cluster at `master`: tokens carry the cluster id, so it comes from a real login. */
const adminHeader = async (master: string) => `Bearer ${await login(master, adminUser.user, adminUser.password)}`;

let cluster: ProcessCluster | undefined;
let dir: string | undefined;
const closers: Array<() => void> = [];

afterEach(async () => {
  for (const c of closers.splice(0)) c();
  await cluster?.stopAll();
  cluster = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

interface Scenario {
  masterFailpoint?: string;
  destFailpoint?: string;
  /** The end the move that hit the point must reach. */
  expect: 'aborted' | 'cleaned';
  /** After the victim died: anything more before everything restarts. */
  then?: (c: ProcessCluster, admin: CairnClient, dest: Server) => Promise<void>;
}

async function run(s: Scenario): Promise<void> {
  dir = mkdtempSync(join(tmpdir(), 'cairn-failpoints-'));
  const c = (cluster = await ProcessCluster.start({ dir, shards: 2, firstEnv: s.masterFailpoint ? { master: { CAIRN_FAILPOINTS: s.masterFailpoint } } : undefined }));
  const ctlEnv = () => ({ CAIRN_USER: adminUser.user, CAIRN_PASSWORD: adminUser.password, CAIRN_MASTER: c.masterAddress, CAIRN_CONFIG: '' });
  const load = await runCtl(['load', '--rows', String(ROWS), '--json'], ctlEnv());
  expect(load.code).toBe(0);
  const dest = await c.addShard(s.destFailpoint ? { CAIRN_FAILPOINTS: s.destFailpoint } : undefined);
  const admin = await connectClient(c.masterAddress, 30_000, 'admin');
  closers.push(() => admin.close());
  await c.waitReady();

  const keys = Array.from({ length: 4 }, (_, i) => `failpoints/${Date.now().toString(36)}/k${i}`);
  const workload = await startWorkload({ master: c.masterAddress, keys, clients: 4, opTimeoutMs: 10_000 });
  await waitUntil(() => workload.completed() >= 20, 10_000, 'the clients to get going');

  // One attempt, no retry: a StartRebalance retried after the master's crash would start a second one.
  const client = rawClient(c.masterAddress);
  closers.push(() => client.close());
  const started = await invokeRaw(client, rpc('AdminService', 'StartRebalance'), rpc('AdminService', 'StartRebalance').encode({ maxMbps: 0.1 }), await adminHeader(c.masterAddress));
  if (started.code !== status.OK) expect(s.masterFailpoint).toBeDefined(); // only a master crash may cut the answer off

  const victim = s.masterFailpoint ? c.master : dest;
  await within(c.exited(victim), 60_000, `${victim.name} to crash at its failpoint`);
  if (s.then) await s.then(c, admin, dest);
  await c.reviveAll();

  const settled = await settleMoves(admin, () => undefined, 120_000);
  expect(settled).toEqual({ anomalies: [] });
  await workload.stop();

  // Every move ended; the one that was hit ended the way the protocol says.
  const moves = (await admin.admin((a) => a.listMoves, { all: true })).moves;
  expect(moves.length).toBeGreaterThan(0);
  for (const m of moves) expect(['cleaned', 'aborted']).toContain(m.state);
  expect(moves.map((m) => m.state)).toContain(s.expect);

  const verify = await runCtl(['verify', '--rows', String(ROWS), '--json'], ctlEnv());
  expect({ code: verify.code, json: verify.json }).toEqual({ code: 0, json: { checked: ROWS, missing: 0, wrong: 0 } });
  expect(await checkOwnership(c, keys)).toEqual([]);

  const { anomalies } = await checkHistory(c.masterAddress, workload.recorder, 99);
  const history = workload.recorder.ops;
  expect(anomalies.map((a) => [a.message, ...(a.ops ?? []).map(showOp)].join('\n'))).toEqual([]);
  expect(history.filter((o) => o.outcome === 'ok').length).toBeGreaterThan(10);
}

describe('move crash points test/crash.test.ts does not reach', () => {
  it('master-after-copy-journaled: the master dies right after journaling `copying`; the restarted master aborts the move', async () => {
    await run({ masterFailpoint: 'master-after-copy-journaled', expect: 'aborted' });
  }, 240_000);

  it('master-before-commit: the master dies with the source fenced and the destination ready; the restarted master aborts and lifts the fence', async () => {
    await run({ masterFailpoint: 'master-before-commit', expect: 'aborted' });
  }, 240_000);

  it('master-before-cleaned: the master dies after both shards took the committed map; the restarted master finishes the move', async () => {
    await run({ masterFailpoint: 'master-before-cleaned', expect: 'cleaned' });
  }, 240_000);

  it('a master that dies while an abort is still cleaning up (the destination is down) finishes the clean-up after its restart', async () => {
    await run({
      destFailpoint: 'dest-during-copy',
      expect: 'aborted',
      then: async (c, admin) => {
        // The master journals `aborted` but cannot DropRange on the dead destination: the clean-up stays pending.
        for (const until = Date.now() + 60_000; ; await sleep(100)) {
          const moves = (await admin.admin((a) => a.listMoves, { all: false })).moves;
          if (moves.length > 0 && moves.every((m) => m.state === 'aborted')) break;
          if (Date.now() > until) throw new Error(`moves did not abort: ${JSON.stringify(moves.map((m) => m.state))}`);
        }
        await c.kill(c.master);
        await c.restart(c.master);
        // Still pending: the destination is still down.
        const pending = (await admin.admin((a) => a.listMoves, { all: false })).moves;
        expect(pending.map((m) => m.state)).toContain('aborted');
      },
    });
  }, 240_000);
});
