/**
 * cli/operations.ts, the flow `cairn ctl` and the console share, against a
 * real in-process cluster and the real SDK: nothing starts before yes; the
 * operation runs under the id its request was made with; progress names
 * each phase with the one phase map; remserver refuses a shard that still
 * owns ranges (previewing, as the console does) or lets the master refuse
 * (as ctl does); stopping a follow leaves the moves running.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { runCtl } from '../cli/ctl.js';
import { CliError } from '../cli/exit.js';
import { SdkOperations } from '../cli/operations-api.js';
import { followOperation, operationRequest, runOperation, TEXT, type OperationUi } from '../cli/operations.js';
import { PHASE_NAMES, phaseName } from '../services/master/move-steps.js';
import { CairnClient, CairnError } from '../services/client/index.js';
import { startInProcCluster, waitFor, type InProcCluster } from './harness/inproc.js';

let cluster: InProcCluster;
let client: CairnClient;
let ops: SdkOperations;

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2 });
  client = await CairnClient.connect({ master: cluster.masterAddress, user: 'admin', password: 'admin-pass' });
  ops = new SdkOperations(client);
  for (let i = 0; i < 6; i++) {
    await client.writeRows(Array.from({ length: 200 }, (_, j) => ({ row: `row-${i}-${j}`, cells: [{ column: 'c', value: 'v'.repeat(500) }] })));
  }
  await cluster.addShard();
  await waitFor(async () => (await client.listServers()).length === 3, 10_000, 'a third shard');
}, 60_000);

afterAll(async () => {
  client?.close();
  await cluster?.stop();
});

/** A frontend that records what the flow asked it to draw, answering the question with `yes`. */
function recorder(yes: boolean, previewRemoval = true) {
  const seen = { busy: [] as string[], plans: [] as Array<{ moves: number; heading?: string; emptyText?: string }>, questions: [] as string[], following: [] as string[], phases: new Set<string>(), lines: [] as string[] };
  const ui: OperationUi = {
    previewRemoval,
    busy: (w) => seen.busy.push(w),
    plan: (p, text) => seen.plans.push({ moves: p.moves.length, ...text }),
    confirm: async (q) => (seen.questions.push(q), yes),
    following: (o) => seen.following.push(o.title),
    progress: (u) => {
      for (const m of u.moves) seen.phases.add(phaseName(m.state));
      seen.lines.push(...u.changed);
    },
  };
  return { ui, seen };
}

const allMoves = async () => (await client.admin((a) => a.listMoves, { all: true })).moves;

describe('rebalance', () => {
  it('n at the question: the plan is shown, nothing starts', async () => {
    const { ui, seen } = recorder(false);
    const outcome = await runOperation(ops, operationRequest('rebalance', [], {}), ui);
    expect(outcome).toEqual({ kind: 'cancelled' });
    expect(seen.plans[0]!.moves).toBeGreaterThan(0);
    expect(seen.questions).toEqual(['Proceed with re-sharding?']);
    expect(await allMoves()).toEqual([]);
  });

  it('a refused --max-mbps stops before the master is asked anything', () => {
    expect(() => operationRequest('rebalance', [], { 'max-mbps': 'fast' })).toThrow(new CliError('--max-mbps: expected a number >= 0, got "fast"'));
  });

  it('yes: starts under the request\'s operation id and follows every move to its end', async () => {
    const { ui, seen } = recorder(true);
    const req = operationRequest('rebalance', [], {});
    const outcome = await runOperation(ops, req, ui);
    if (outcome.kind !== 'followed') throw new Error(`expected a followed operation, got ${outcome.kind}`);
    const r = outcome.result;
    expect(r.operationId).toBe(req.operationId);
    expect(seen.following).toEqual([`Rebalance ${req.operationId}`]);
    expect(r.committed).toBeGreaterThan(0);
    expect(r.aborted).toBe(0);
    expect(r.summary).toMatch(new RegExp(`^Rebalance ${req.operationId}: ${r.committed} moves committed, 0 aborted, \\S+ moved\\.$`));
    expect([...seen.phases].every((p) => (PHASE_NAMES as readonly string[]).includes(p))).toBe(true);
    expect(seen.lines.at(-1)).toMatch(/ (committed|done)$/);
    const moves = await allMoves();
    expect(new Set(moves.map((m) => m.operationId))).toEqual(new Set([req.operationId]));
  }, 60_000);

  it('a balanced cluster: nothing to move, nothing asked', async () => {
    const { ui, seen } = recorder(true);
    const outcome = await runOperation(ops, operationRequest('rebalance', [], {}), ui);
    expect(outcome).toMatchObject({ kind: 'nothing', started: false });
    expect(seen.plans).toEqual([{ moves: 0, emptyText: TEXT.balanced }]);
    expect(seen.questions).toEqual([]);
  });
});

describe('dropserver, then remserver', () => {
  it('remserver of a shard that owns ranges: refused after the preview, or by the master without it', async () => {
    const victim = cluster.shards[2]!.node.id;
    const { ui, seen } = recorder(true);
    await expect(runOperation(ops, operationRequest('remserver', [victim], {}), ui)).rejects.toThrow(TEXT.stillOwns(victim));
    expect(seen.plans[0]).toMatchObject({ heading: TEXT.wouldDrain(victim) });
    expect(seen.questions).toEqual([]);
    const bare = recorder(true, false);
    await expect(runOperation(ops, operationRequest('remserver', [victim], {}), bare.ui)).rejects.toThrow(CairnError);
    expect(bare.seen.plans).toEqual([]);
    expect((await client.listServers()).map((s) => s.id)).toContain(victim);
  });

  it('drains a shard, which can then be removed', async () => {
    const victim = cluster.shards[2]!.node.id;
    const drain = recorder(true);
    const outcome = await runOperation(ops, operationRequest('dropserver', [victim], { 'max-mbps': '50' }), drain.ui);
    expect(drain.seen.questions).toEqual([`Drain ${victim}?`]);
    expect(outcome).toMatchObject({ kind: 'followed', result: { aborted: 0 } });
    expect((await client.listServers()).find((s) => s.id === victim)).toMatchObject({ ranges: 0 });
    const rem = recorder(true);
    const removed = await runOperation(ops, operationRequest('remserver', [victim], {}), rem.ui);
    expect(rem.seen.plans).toEqual([{ moves: 0, emptyText: TEXT.ownsNothing(victim), heading: TEXT.wouldDrain(victim) }]);
    expect(removed).toEqual({ kind: 'removed', removed: { shardId: victim, stopped: true } });
    expect(TEXT.removed({ shardId: victim, stopped: true })).toBe(`Removed ${victim}; its process is stopping.`);
  }, 60_000);
});

describe('followOperation', () => {
  it('stop() ends the follow at once and leaves the moves running', async () => {
    const victim = cluster.shards[1]!.node.id;
    const started = await ops.start('dropserver', { server: victim, maxMbps: 0.05 });
    expect(started.operationId).not.toBe('');
    const f = followOperation(ops, started.operationId, () => {});
    f.stop();
    const followed = await f.done;
    expect(followed.detached).toBe(true);
    const running = (await client.admin((a) => a.listMoves, { all: false })).moves;
    expect(running.filter((m) => m.operationId === started.operationId).length).toBeGreaterThan(0);
    // Followed again, to its end: stopping did not stop the moves.
    const end = await followOperation(ops, started.operationId, () => {}).done;
    expect(end.detached).toBe(false);
  }, 120_000);
});

describe('ctl draws the same flow', () => {
  async function ctl(words: string[], flags: Record<string, string | boolean> = {}) {
    const out: string[] = [];
    const err: string[] = [];
    const login = { master: cluster.masterAddress, user: 'admin', password: 'admin-pass', yes: true };
    const code = await runCtl(words, { ...login, ...flags }, { out: (l) => out.push(l), err: (l) => err.push(l), env: {} });
    return { code, out, err };
  }

  it('rebalance --yes: the plan, the start, each phase change and the summary on stdout; then nothing to move', async () => {
    const added = await cluster.addShard();
    await waitFor(async () => (await client.listServers()).some((s) => s.id === added.node.id && s.status === 'up'), 10_000, 'the new shard up');
    const r = await ctl(['rebalance']);
    expect(r.err).toEqual([]);
    expect(r.code).toBe(0);
    expect(r.out[0]).toBe('The following moves will be made:');
    const started = r.out.find((l) => l.startsWith('Started '))!;
    const id = /^Started (\S+);/.exec(started)![1]!;
    expect(started).toBe(TEXT.started(id));
    expect(r.out.filter((l) => / -> \S+ (committed|done)$/.test(l)).length).toBeGreaterThan(0);
    expect(r.out.at(-1)).toMatch(new RegExp(`^Rebalance ${id}: \\d+ moves committed, 0 aborted, \\S+ moved\\.$`));
    const again = await ctl(['rebalance'], { json: true });
    expect([again.code, JSON.parse(again.out[0]!).moves]).toEqual([0, []]);
    expect((await ctl(['rebalance'])).out).toEqual([TEXT.balanced]);
  }, 60_000);
});
