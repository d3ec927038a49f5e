/**
 * Online rebalancing under load, with real processes. A cluster of 2 shards
 * holds some loaded rows; a third shard joins. While 8 SDK clients (the one
 * workload, nemesis/workload.ts: each its own CairnClient, user `writer`)
 * hammer a mix of puts (half of them replacing: `replace: true` drops the
 * column's older versions), batched writes,
 * reads, batched reads and check-and-mutates on 128 shared keys,
 * `ctl rebalance --yes`, then `ctl dropserver <new shard> --yes`, then
 * `ctl remserver <new shard> --yes` run one after another. Then the clients
 * stop and we check docs/design.md's "Moving data" rules:
 *
 *  - no client saw an error (the SDK must hide FENCED / WRONG_SHARD);
 *  - the checker (nemesis/checker.ts) finds the history linearizable per key
 *    — no stale read, no lost update, no read of a write whose CAS said "not
 *    applied" — and every acknowledged write in the final state, once, with
 *    timestamps in real-time order, unless a replacing put applied after it
 *    dropped it;
 *  - `ctl verify` of the loaded rows is clean;
 *  - a 9th client that took its map after the rebalance and then sat idle
 *    through the drain and the removal can still read every test row (its map
 *    names the removed shard; the SDK must find the new owner in the deadline).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { CairnClient } from '../services/client/client.js';
import { fromServiceError } from '../services/common/errors.js';
import { endFromProto, rowHash } from '../services/common/hash.js';
import { routeRow } from '../services/client/router.js';
import { startProcCluster, waitUntil, type CtlResult, type ProcCluster } from './harness/cluster.js';
import { USERS } from './harness/inproc.js';
import { HistoryRecorder, showOp } from './nemesis/history.js';
import { checkHistory, COLUMN, startWorkload } from './nemesis/workload.js';

const ROWS = 20_000;
const CLIENTS = 8;
const KEYS = Array.from({ length: 128 }, (_, k) => `ul/k/${String(k).padStart(3, '0')}`);
/** Throttle moves so that copy and catch-up last long enough to overlap plenty of traffic. */
const MAX_MBPS = '0.2';
/** Operations the clients complete before the first move and after the last step. */
const LEAD_OPS = 300;
const TAIL_OPS = 300;

const writer = USERS.find((u) => u.user === 'writer')!;
const admin = USERS.find((u) => u.role === 'admin')!;

let cluster: ProcCluster;
let T0 = 0;
const rel = (t: number) => `+${((t - T0) / 1000).toFixed(3)}s`;

beforeAll(async () => {
  cluster = await startProcCluster({ shards: 2 });
  const load = await cluster.ctl(['load', '--rows', String(ROWS), '--json']);
  expect(load.json).toEqual({ written: ROWS, errors: 0 });
}, 120_000);
/** Every SDK client the test opens, closed in afterAll even when an assertion fails midway. */
const opened: CairnClient[] = [];
async function connectWriter(): Promise<CairnClient> {
  const c = await CairnClient.connect({ master: cluster.masterAddress, user: writer.user, password: writer.password });
  opened.push(c);
  return c;
}
afterAll(async () => {
  for (const c of opened) c.close();
  await cluster?.cleanup();
});

type TimedCtl = CtlResult & { args: string[]; t0: number; t1: number };
async function timedCtl(args: string[]): Promise<TimedCtl> {
  const t0 = Date.now();
  const r = await cluster.ctl(args, { timeoutMs: 120_000 });
  return { ...r, args, t0, t1: Date.now() };
}

/** How many of this test's keys lie in a moved range. */
function testRowsIn(m: { start: bigint; end: bigint }): number {
  return KEYS.filter((row) => rowHash(row) >= m.start && rowHash(row) < m.end).length;
}

/** Move history from the master: every state with its time. */
async function moveHistory(adminClient: CairnClient) {
  const r = await adminClient.admin((a) => a.listMoves, { all: true });
  return r.moves.map((m) => ({
    id: m.id,
    operationId: m.operationId,
    start: m.start,
    end: endFromProto(m.end),
    from: m.from,
    to: m.to,
    state: m.state,
    bytes: Number(m.bytes),
    fenceMs: m.fenceMs,
    error: m.error || undefined,
    history: m.history.map((h) => ({ state: h.state, at: Number(h.atMs) })),
  }));
}

// ---------------------------------------------------------------------------

describe('online rebalancing under load', () => {
  it('rebalance, dropserver and remserver under 8 busy clients: no error, no lost write, no stale read', async () => {
    const history = new HistoryRecorder();
    T0 = Date.now();
    const workload = await startWorkload(
      {
        master: cluster.masterAddress,
        keys: KEYS,
        clients: CLIENTS,
        opTimeoutMs: 15_000,
        mix: { put: 20, writeRows: 8, get: 30, getRows: 5, cas: 25 },
        replaceFraction: 0.5,
      },
      history,
    );
    const phases: Array<{ name: string; t0: number; t1: number }> = [];
    /** Until the clients have completed `n` more operations: traffic before and after the steps. */
    const traffic = async (n: number, what: string) => {
      const t0 = Date.now();
      const until = workload.completed() + n;
      await waitUntil(() => workload.completed() >= until, 60_000, `${n} operations ${what}`);
      phases.push({ name: `${n} operations ${what}`, t0, t1: Date.now() });
    };

    const steps: TimedCtl[] = [];
    let newShardId = '';
    let removedExit: number | null | string = 'not reached';
    let shardAddrs: Array<{ id: string; address: string; status: string }> = [];
    let late: CairnClient | undefined;
    let lateEpoch = 0n;
    let lateRoutedToNew = 0;
    try {
      await traffic(LEAD_OPS, 'before the first step');

      // A third shard joins at 0%, with nothing restarted.
      const ta = Date.now();
      const proc = await cluster.addShard();
      const adminClient = await CairnClient.connect({ master: cluster.masterAddress, user: admin.user, password: admin.password });
      opened.push(adminClient);
      await waitUntil(async () => {
        shardAddrs = await adminClient.listServers();
        const mine = shardAddrs.find((x) => x.address === proc.address && x.status === 'up');
        if (mine) newShardId = mine.id;
        return shardAddrs.length === 3 && !!mine;
      }, 15_000, 'the third shard');
      phases.push({ name: `addShard (${newShardId})`, t0: ta, t1: Date.now() });

      const rebalance = await timedCtl(['rebalance', '--yes', '--json', '--max-mbps', MAX_MBPS]);
      steps.push(rebalance);
      phases.push({ name: 'rebalance', t0: rebalance.t0, t1: rebalance.t1 });
      // A 9th client takes the map now (the new shard owns ranges) and then sits idle
      // through the drain and the removal, like a service that was quiet for a while.
      late = await connectWriter();
      lateEpoch = late.map.epoch;
      lateRoutedToNew = KEYS.filter((row) => routeRow(late!.map, row).shardId === newShardId).length;
      const drain = await timedCtl(['dropserver', newShardId, '--yes', '--json', '--max-mbps', MAX_MBPS]);
      steps.push(drain);
      phases.push({ name: `dropserver ${newShardId}`, t0: drain.t0, t1: drain.t1 });
      const rem = await timedCtl(['remserver', newShardId, '--yes', '--json']);
      steps.push(rem);
      phases.push({ name: `remserver ${newShardId}`, t0: rem.t0, t1: rem.t1 });
      let timer: NodeJS.Timeout | undefined;
      const exitCode = await Promise.race([proc.exited, new Promise<string>((r) => (timer = setTimeout(() => r('still running after 10 s'), 10_000)))]);
      clearTimeout(timer);
      removedExit = exitCode;
      phases.push({ name: `removed shard's process exited (${exitCode})`, t0: rem.t1, t1: Date.now() });

      await traffic(TAIL_OPS, 'after the last step');
    } finally {
      await workload.stop();
    }
    const tEnd = Date.now();
    const clientOps = [...history.ops];

    // Final reads and the checker, after every client has stopped.
    const checked = await checkHistory(cluster.masterAddress, history, CLIENTS);

    // The idle client, whose map still names the removed shard for some rows, reads every test row.
    const lateProblems: string[] = [];
    const tLate = Date.now();
    try {
      await Promise.all(
        KEYS.map(async (row) => {
          const t0 = Date.now();
          try {
            const got = (await late!.getValue(row, COLUMN))?.toString('utf8');
            if (got !== checked.finals.get(row)) lateProblems.push(`${row}: read ${got ?? '(absent)'}, the final value is ${checked.finals.get(row) ?? '(absent)'}`);
          } catch (err) {
            const e = fromServiceError(err);
            lateProblems.push(`${row} (${rel(t0)} .. ${rel(Date.now())}): ${e.code}: ${e.message}`);
          }
        }),
      );
    } finally {
      late?.close();
    }

    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--json'], { timeoutMs: 60_000 });

    // -- report ---------------------------------------------------------------
    const adminClient = await CairnClient.connect({ master: cluster.masterAddress, user: admin.user, password: admin.password });
    let moves: Awaited<ReturnType<typeof moveHistory>> = [];
    try {
      moves = await moveHistory(adminClient);
    } finally {
      adminClient.close();
    }
    const failures = clientOps.filter((op) => op.outcome !== 'ok');
    const kinds = new Map<string, { n: number; maxMs: number }>();
    for (const op of clientOps) {
      const k = `${op.f}${op.replace ? ' (replace)' : ''}${op.f === 'cas' && op.outcome === 'ok' ? (op.result ? ' (applied)' : ' (lost race)') : ''}`;
      const x = kinds.get(k) ?? { n: 0, maxMs: 0 };
      x.n++;
      x.maxMs = Math.max(x.maxMs, (op.retMs ?? 0) - (op.callMs ?? 0));
      kinds.set(k, x);
    }
    const anomalies = checked.anomalies.map((a) => [`${a.kind}: ${a.message}`, ...(a.ops ?? []).slice(0, 20).map(showOp)].join('\n    '));
    const report = [
      `under load: ${CLIENTS} clients, ${((tEnd - T0) / 1000).toFixed(1)} s of traffic, ${clientOps.length} key operations (${Math.round(clientOps.length / ((tEnd - T0) / 1000))}/s), ${failures.length} errors`,
      ...[...kinds.entries()].sort().map(([k, v]) => `  ${k.padEnd(20)} ${String(v.n).padStart(7)}   max latency ${v.maxMs} ms`),
      `processes: master ${cluster.masterAddress}; ${shardAddrs.map((x) => `${x.id} ${x.address}`).join(', ')}`,
      'phases:',
      ...phases.map((p) => `  ${rel(p.t0)} .. ${rel(p.t1)}  ${p.name}`),
      'moves (master journal):',
      ...moves.map(
        (m) =>
          `  ${m.id} ${m.from} -> ${m.to} ${m.state} ${m.bytes} B, ${testRowsIn(m)} keys of this test, fence ${m.fenceMs.toFixed(0)} ms${m.error ? ` error: ${m.error}` : ''}: ` +
          m.history.map((h) => `${h.state}@${rel(h.at)}`).join(' '),
      ),
      ...steps.map((s) => `ctl ${s.args.join(' ')} (${rel(s.t0)} .. ${rel(s.t1)}): exit ${s.code}, ${JSON.stringify(s.json && { committed: s.json.committed, aborted: s.json.aborted, movedBytes: s.json.movedBytes, stopped: s.json.stopped })}`),
      `verify: ${verify.stdout.trim()}`,
      `checker: ${checked.results.length} keys, ${checked.results.filter((r) => r.linearizable).length} linearizable, ${checked.results.reduce((n, r) => n + r.steps, 0)} search steps`,
      `idle client (map epoch ${lateEpoch} taken after the rebalance, ${lateRoutedToNew} of ${KEYS.length} test rows routed to ${newShardId}; ` +
        `reads from ${rel(tLate)}): ${lateProblems.length} failed or wrong`,
      ...lateProblems.slice(0, 5).map((s) => `  ${s}`),
      `errors (${failures.length}):`,
      ...failures.slice(0, 30).map((op) => `  ${showOp(op)}`),
      `anomalies (${anomalies.length}):`,
      ...anomalies.slice(0, 10).map((s) => `  ${s}`),
    ];
    console.log(report.join('\n'));

    // -- the rules ------------------------------------------------------------
    for (const s of steps.slice(0, 2)) {
      expect({ step: s.args[0], code: s.code, aborted: s.json?.aborted }).toEqual({ step: s.args[0], code: 0, aborted: 0 });
      expect(s.json.committed).toBeGreaterThan(0);
    }
    expect({ step: 'remserver', code: steps[2]?.code, stopped: steps[2]?.json?.stopped }).toEqual({ step: 'remserver', code: 0, stopped: true });
    expect(removedExit).toBe(0);
    expect(moves.every((m) => m.state === 'cleaned')).toBe(true);
    // The moves really overlapped the traffic.
    expect(moves.length).toBeGreaterThan(0);
    expect(Math.min(...moves.map((m) => m.history[0]!.at))).toBeGreaterThan(T0);
    expect(Math.max(...moves.map((m) => m.history[m.history.length - 1]!.at))).toBeLessThan(tEnd);
    expect(kinds.get('cas (applied)')?.n ?? 0).toBeGreaterThan(0);
    expect(kinds.get('put (replace)')?.n ?? 0).toBeGreaterThan(0);
    // Both operations moved some of the rows the clients were busy with.
    for (const s of steps.slice(0, 2)) {
      const mine = moves.filter((m) => m.operationId === s.json.id);
      expect(mine.reduce((n, m) => n + testRowsIn(m), 0)).toBeGreaterThan(0);
    }

    expect(failures.map(showOp)).toEqual([]);
    expect(anomalies).toEqual([]);
    expect(verify.json).toEqual({ checked: ROWS, missing: 0, wrong: 0 });
    // A client that was idle while its map went stale must still be served once the shard it
    // remembers is gone (the SDK has to find the new owner inside the call's deadline).
    expect(lateRoutedToNew).toBeGreaterThan(0);
    expect(lateProblems).toEqual([]);
  }, 180_000);
});
