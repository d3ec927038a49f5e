/**
 * The console as a whole, against a scripted Admin API: typing, completion,
 * history, every command, the plan → confirm → progress flow, cancelling,
 * and errors that leave the console usable.
 */
import { afterAll, afterEach, describe, expect, it } from '@jest/globals';
import { render, cleanup } from 'ink-testing-library';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CairnError } from '../../services/common/errors.js';
import { AdminApp, promptLabel } from './AdminApp.js';
import { FakeAdminApi, groupRange, moveOf, replicatedCluster, server } from './fake-admin-api.js';
import type { RangeRow } from './model.js';
import { openHistory } from './history.js';

const dir = mkdtempSync(join(tmpdir(), 'cairn-admin-app-'));
let files = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => cleanup());

const ENTER = '\r';
const UP = '\u001B[A';
const CTRL_C = '\u0003';

function start(o: { api?: FakeAdminApi; password?: string | null; history?: string[] } = {}) {
  const api = o.api ?? new FakeAdminApi();
  const file = join(dir, `history-${files++}`);
  if (o.history) writeFileSync(file, o.history.join('\n') + '\n');
  const exits: number[] = [];
  const app = render(<AdminApp api={api} password={o.password === null ? undefined : (o.password ?? 'secret')} history={openHistory(file)} onExit={(c) => exits.push(c)} refreshMs={20} />);
  const frame = () => app.lastFrame() ?? '';
  const waitFor = async (what: string | RegExp | (() => boolean), timeoutMs = 5000) => {
    // A string may be wrapped across lines on the 100-column test screen.
    const flat = () => frame().replace(/\s+/g, ' ');
    const ok = () => (typeof what === 'function' ? what() : typeof what === 'string' ? frame().includes(what) || flat().includes(what) : what.test(frame()));
    const until = Date.now() + timeoutMs;
    while (!ok()) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${String(what)}; screen:\n${frame()}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const type = async (text: string) => {
    app.stdin.write(text);
    await new Promise((r) => setTimeout(r, 20));
  };
  return { api, app, frame, waitFor, type, exits, file };
}

/** Starts connected, with the dashboard's first refresh on screen. */
async function ready(o: Parameters<typeof start>[0] = {}) {
  const t = start(o);
  await t.waitFor('Manager(2 servers)>');
  return t;
}

describe('start-up', () => {
  it('logs in, then shows the live dashboard and the seed\'s prompt', async () => {
    const t = await ready();
    expect(t.api.calls[0]).toBe('connect');
    expect(t.frame()).toContain('map epoch 3');
    expect(t.frame()).toMatch(/0\s+s1\s+10\.0\.0\.1:7001\s+up/);
    // The dashboard keeps polling.
    const polls = t.api.calls.filter((c) => c === 'snapshot').length;
    t.api.servers = [...t.api.servers, server('s3', 2, { share: 0, ranges: 0, bytes: 0, rows: 0 })];
    await t.waitFor('Manager(3 servers)>');
    expect(t.api.calls.filter((c) => c === 'snapshot').length).toBeGreaterThan(polls);
    expect(promptLabel(1)).toBe('Manager(1 server)>');
  });

  it('asks for a missing password, masked', async () => {
    const t = start({ password: null });
    await t.waitFor('Password for ops@127.0.0.1:7000:');
    await t.type('secr');
    expect(t.frame()).toContain('Password for ops@127.0.0.1:7000: ****');
    expect(t.frame()).not.toContain('secr');
    await t.type('et' + ENTER);
    await t.waitFor('Manager(2 servers)>');
  });

  it('a wrong password shows one line and asks again; the right one gets in', async () => {
    const t = start({ password: 'wrong' });
    await t.waitFor('✗ error: login failed: unknown user or wrong password');
    await t.waitFor('Password for ops@127.0.0.1:7000:');
    expect(t.frame()).not.toMatch(/\n\s+at /);
    await t.type('secret' + ENTER);
    await t.waitFor('Manager(2 servers)>');
  });

  it('a password typed for an unreachable master is kept for the next try', async () => {
    const api = new FakeAdminApi();
    api.reachable = false;
    const t = start({ api, password: null });
    await t.waitFor('Password for ops@127.0.0.1:7000:');
    await t.type('secret' + ENTER);
    await t.waitFor('cannot reach the master at 127.0.0.1:7000');
    await t.waitFor('Manager>');
    api.reachable = true;
    await t.type('servers' + ENTER);
    await t.waitFor('Map epoch 3: 2 servers, 2 up');
  });

  it('an unreachable master shows one line, and the console stays usable', async () => {
    const api = new FakeAdminApi();
    api.reachable = false;
    const t = start({ api });
    await t.waitFor('✗ error: cannot reach the master at 127.0.0.1:7000 (connect ECONNREFUSED 127.0.0.1:7000); hint: is the master running at 127.0.0.1:7000? (--master HOST:PORT)');
    await t.waitFor('Manager>');
    expect(t.frame()).toContain('Not connected: the next command tries again.');
    await t.type('help' + ENTER);
    await t.waitFor('Commands:');
    await t.type('servers' + ENTER);
    await t.waitFor(() => t.frame().split('cannot reach the master at').length === 3);
    api.reachable = true;
    await t.type('servers' + ENTER);
    await t.waitFor('Map epoch 3: 2 servers, 2 up');
    await t.waitFor('Manager(2 servers)>');
  });
});

describe('the command line', () => {
  it('submits `servers\\r` that arrives in one read', async () => {
    const t = await ready();
    await t.type('servers\r');
    await t.waitFor('Map epoch 3: 2 servers, 2 up');
    expect(t.frame()).toContain('Manager(2 servers)> servers');
    // The line is longer than the 100-column test terminal: it wraps at a space.
    expect(t.frame().replace(/\n/g, ' ')).toContain('Server 0 s1 10.0.0.1:7001 up (Size: 1.0MB, Rows: 5000, Ranges: 1, Share: 50%, Load: 12 ops/s, Disk free: 8.0GB of 16GB)');
  });

  it('ranges lists the ranges and shares that add up to 100%', async () => {
    const t = await ready();
    await t.type('ranges' + ENTER);
    await t.waitFor('Shares of the hash space: s1 50.0%, s2 50.0% (total 100.0%)');
    expect(t.frame()).toContain('Server 0 50% [00000000000000000000, 09223372036854775808[  5000 rows, 1.0MB');
  });

  it('completes command names with Tab and lists the candidates', async () => {
    const t = await ready();
    await t.type('reb');
    await t.type('\t');
    await t.waitFor('Manager(2 servers)> rebalance');
    await t.type('\u0015re\t');
    await t.waitFor('rebalance  remserver  recover');
    await t.type('\u0015dropserver ');
    await t.type('\t');
    await t.waitFor('s1  s2');
  });

  it('help lists every command; an unknown one is one error line and the prompt goes on', async () => {
    const t = await ready();
    await t.type('help' + ENTER);
    await t.waitFor('Commands:');
    for (const c of ['servers', 'ranges', 'plan', 'rebalance', 'recover <move-id>', 'addserver', 'dropserver', 'remserver', 'sync', 'moves', 'exit']) expect(t.frame()).toContain(`  ${c}`);
    await t.type('frobnicate' + ENTER);
    await t.waitFor('✗ error: unknown command "frobnicate": type help for the list');
    await t.type('sync' + ENTER);
    await t.waitFor('Sync done: 2 shards hold map epoch 3.');
  });

  it('keeps history across runs and walks it with Up', async () => {
    const t = await ready({ history: ['ranges', 'moves'] });
    await t.type(UP);
    await t.waitFor('Manager(2 servers)> moves');
    await t.type(UP);
    await t.waitFor('Manager(2 servers)> ranges');
    await t.type(ENTER);
    await t.waitFor('Shares of the hash space');
    await t.type('servers' + ENTER);
    await t.waitFor('Map epoch 3');
    expect(readFileSync(t.file, 'utf8')).toBe('ranges\nmoves\nranges\nservers\n');
    cleanup();
    const again = await ready({ history: readFileSync(t.file, 'utf8').trim().split('\n') });
    await again.type(UP);
    await again.waitFor('Manager(2 servers)> servers');
  });

  it('runs the other manager commands', async () => {
    const t = await ready();
    t.api.inFlight = [moveOf({ id: 'mv-9', copiedBytes: 250_000 })];
    await t.type('moves' + ENTER);
    await t.waitFor(/Moves in flight:\n.*mv-9\s+s1 -> s3/);
    await t.type('plan --drain s1' + ENTER);
    await t.waitFor('The following moves will be made:');
    expect(t.api.calls).toContain('plan:s1');
    await t.type('addserver 10.0.0.9:7001' + ENTER);
    await t.waitFor('Approved 10.0.0.9:7001');
    await t.type('recover mv-9' + ENTER);
    await t.waitFor('Now aborted (aborted): aborted: source fence lifted, destination copy dropped');
    await t.type('recover' + ENTER);
    await t.waitFor('✗ error: recover: missing argument; usage: recover <move-id>');
  });

  it('exit leaves with 0, and so does Ctrl-C twice at an empty prompt', async () => {
    const t = await ready();
    await t.type('exit' + ENTER);
    await t.waitFor(() => t.exits.length === 1);
    expect(t.exits).toEqual([0]);
    const u = await ready();
    await u.type(CTRL_C);
    await u.waitFor('Press Ctrl-C again (or type exit) to leave.');
    expect(u.exits).toEqual([]);
    await u.type(CTRL_C);
    await u.waitFor(() => u.exits.length === 1);
  });
});

describe('rebalance, dropserver and remserver', () => {
  it('shows the plan, asks, then draws a bar per move and a total bar to the end', async () => {
    const t = await ready();
    await t.type('rebalance' + ENTER);
    await t.waitFor('? Proceed with re-sharding? (y/n)');
    expect(t.frame()).toContain('The following moves will be made:');
    expect(t.frame()).toContain('The new shares will be:');
    expect(t.api.calls.some((c) => c.startsWith('start'))).toBe(false);
    await t.type('y');
    await t.waitFor('Ctrl-C stops following');
    expect(t.api.calls).toContain('start:rebalance::');
    const op = t.api.operations.get('op-1')!;
    op.push({ moves: [moveOf({ copiedBytes: 500_000, bytesPerSec: 100_000 }), moveOf({ id: 'mv-2', state: 'planned' })], done: false });
    await t.waitFor(/#1\s+s1 -> s3\s+█{10}░{10}  50%.*ETA 5s\s+copy/);
    await t.waitFor(/Total\s+2 moves\s+█{5}░{15}  25%/);
    op.push({ moves: [moveOf({ state: 'fenced', copiedBytes: 1_000_000 }), moveOf({ id: 'mv-2', state: 'catching_up', copiedBytes: 900_000 })], done: false });
    await t.waitFor(/#1.*cutover/);
    await t.waitFor(/#2.*catch-up/);
    op.push({ moves: [moveOf({ state: 'committed' }), moveOf({ id: 'mv-2', state: 'committed' })], done: true });
    await t.waitFor('Rebalance op-1: 2 moves committed, 0 aborted, 1.9MB moved.');
    expect(t.frame()).toMatch(/Total\s+2 moves\s+█{20} 100%.*2\/2 done/);
    await t.waitFor('Manager(2 servers)>');
  });

  it('passes --max-mbps on, and dropserver drains the named shard', async () => {
    const t = await ready();
    await t.type('dropserver s1 --max-mbps 2' + ENTER);
    await t.waitFor('? Drain s1? (y/n)');
    expect(t.api.calls).toContain('plan:s1');
    await t.type('y');
    await t.waitFor(() => t.api.calls.includes('start:dropserver:s1:2'));
    t.api.operations.get('op-1')!.push({ moves: [moveOf({ from: 's1', to: 's2', state: 'cleaned' })], done: true });
    await t.waitFor('Drain op-1: 1 moves committed, 0 aborted, 977KB moved.');
    await t.type('rebalance --max-mbps fast' + ENTER);
    await t.waitFor('✗ error: --max-mbps: expected a number >= 0, got "fast"');
  });

  it('n at the question changes nothing', async () => {
    const t = await ready();
    await t.type('rebalance' + ENTER);
    await t.waitFor('? Proceed with re-sharding? (y/n)');
    await t.type('n');
    await t.waitFor('Cancelled: nothing was changed.');
    await t.waitFor('Manager(2 servers)>');
    expect(t.api.calls.filter((c) => !['snapshot', 'connect'].includes(c))).toEqual(['plan:']);
  });

  it('Ctrl-C at the question changes nothing', async () => {
    const t = await ready();
    await t.type('dropserver s2' + ENTER);
    await t.waitFor('? Drain s2? (y/n)');
    await t.type(CTRL_C);
    await t.waitFor('Cancelled: nothing was changed.');
    expect(t.api.calls.filter((c) => !['snapshot', 'connect'].includes(c))).toEqual(['plan:s2']);
    expect(t.exits).toEqual([]);
  });

  it('Ctrl-C while the plan is on its way changes nothing and asks nothing', async () => {
    const t = await ready();
    let release = () => {};
    t.api.planGate = new Promise((r) => (release = r));
    await t.type('rebalance' + ENTER);
    await t.waitFor('… planning');
    await t.type(CTRL_C);
    await t.waitFor('Interrupted: no question will be asked and nothing will be changed.');
    release();
    await t.waitFor('Cancelled: nothing was changed.');
    expect(t.frame()).not.toContain('(y/n)');
    expect(t.api.calls.filter((c) => !['snapshot', 'connect'].includes(c))).toEqual(['plan:']);
    expect(t.exits).toEqual([]);
  });

  it('Ctrl-C during the moves stops following, leaves them running, and says so', async () => {
    const t = await ready();
    await t.type('rebalance' + ENTER);
    await t.waitFor('(y/n)');
    await t.type('y');
    await t.waitFor('Ctrl-C stops following');
    const op = t.api.operations.get('op-1')!;
    op.push({ moves: [moveOf({ copiedBytes: 300_000 })], done: false });
    await t.waitFor(/#1\s+s1 -> s3.*  30%/);
    t.api.inFlight = [moveOf({ copiedBytes: 300_000 })];
    await t.type(CTRL_C);
    await t.waitFor('Stopped following op-1: its moves keep running on the master.');
    expect(t.frame()).toContain('The dashboard shows them under "Moves in flight"');
    await t.waitFor('Manager(2 servers)>');
    await t.waitFor('Moves in flight: 1');
    expect(op.returned).toBe(true);
    expect(t.exits).toEqual([]);
    // Nothing but reads after the start: no call cancels or aborts a move.
    const after = t.api.calls.slice(t.api.calls.indexOf('start:rebalance::') + 1);
    expect(after.every((c) => c === 'snapshot' || c.startsWith('watch:'))).toBe(true);
  });

  it('says so when the progress stream ends before the moves do', async () => {
    const t = await ready();
    await t.type('rebalance' + ENTER);
    await t.waitFor('(y/n)');
    await t.type('y');
    await t.waitFor('Ctrl-C stops following');
    const op = t.api.operations.get('op-1')!;
    op.push({ moves: [moveOf({ state: 'committed' }), moveOf({ id: 'mv-2', copiedBytes: 10 })], done: false });
    await t.waitFor(/#2\s+s1 -> s3/);
    op.end();
    await t.waitFor('Rebalance op-1: 1 moves committed, 0 aborted, 977KB moved. The progress stream ended early: 1 still running on the master ("moves" shows them).');
    await t.waitFor('Manager(2 servers)>');
  });

  it('remserver shows the plan, asks, and a refused removal is one line', async () => {
    const t = await ready();
    t.api.planResult = { ...t.api.planResult, moves: [], movedBytes: 0 };
    t.api.refuse.set('removeServer', new CairnError('PRECONDITION', 's2 is the last shard up'));
    await t.type('remserver s2' + ENTER);
    await t.waitFor('s2 owns no range: nothing to move.');
    await t.waitFor('? Remove server s2 from the cluster and stop it? (y/n)');
    await t.type('y');
    await t.waitFor('✗ error: s2 is the last shard up');
    await t.waitFor('Manager(2 servers)>');
    t.api.refuse.clear();
    await t.type('remserver s2' + ENTER);
    await t.waitFor(() => t.frame().split('(y/n)').length === 2 && t.frame().includes('? Remove server'));
    await t.type('y');
    await t.waitFor('Removed s2; its process is stopping.');
  });

  it('remserver on a shard that owns ranges shows the drain it needs and asks nothing', async () => {
    const t = await ready();
    await t.type('remserver s1' + ENTER);
    await t.waitFor('✗ error: remserver: s1 still owns ranges (the moves above); drain it first with "dropserver s1"');
    expect(t.frame()).toContain('s1 still owns ranges; draining it ("dropserver s1") would make these moves:');
    expect(t.frame()).not.toContain('(y/n)');
  });

  it('a refused plan is one error line, and the prompt stays', async () => {
    const t = await ready();
    t.api.refuse.set('plan', new CairnError('NOT_FOUND', 'no shard "s9"'));
    await t.type('dropserver s9' + ENTER);
    await t.waitFor('✗ error: no shard "s9"');
    await t.waitFor('Manager(2 servers)>');
    expect(t.frame()).not.toContain('(y/n)');
  });
});

describe('replication on the dashboard', () => {
  /** Connected to a replicated cluster of three shards, its first refresh on screen. */
  async function replicated() {
    const api = new FakeAdminApi();
    Object.assign(api, replicatedCluster());
    const t = start({ api });
    await t.waitFor('Manager(3 servers)>');
    return t;
  }

  it('counts copies per shard and logs a failover, then the re-replication that follows, as they happen', async () => {
    const t = await replicated();
    await t.waitFor('Replication: 3 copies wanted · all 3 ranges in sync');
    expect(t.frame()).toMatch(/s1\s+10\.0\.0\.1:7001\s+up\s+1\.0MB\s+5000\s+1\/2\/0/);
    const [a, b, c] = t.api.ranges as [RangeRow, RangeRow, RangeRow];
    // s1 goes down: s2 takes over [a), s1 leaves the in-sync sets of the others.
    t.api.ranges = [groupRange(a.start, a.end, ['s2', 's3', 's1'], { inSync: ['s2', 's3'] }), groupRange(b.start, b.end, ['s2', 's3', 's1'], { inSync: ['s2', 's3'] }), c];
    await t.waitFor(`range [0, ${a.end}): primary s1 → s2 (failover)`);
    await t.waitFor(`s1 left the in-sync set of [${b.start}, ${b.end}) (catching up)`);
    await t.waitFor('2 of 3 ranges under-replicated');
    // s1 is replaced on [a) by a learner, s4, which catches up.
    t.api.ranges = [groupRange(a.start, a.end, ['s2', 's3'], { learners: ['s4'] }), ...t.api.ranges.slice(1)];
    await t.waitFor(`s4 started copying [0, ${a.end}) as a learner (re-replication)`);
    await t.waitFor(`s1 no longer holds a copy of [0, ${a.end})`);
    t.api.ranges = [groupRange(a.start, a.end, ['s2', 's3', 's4']), ...t.api.ranges.slice(1)];
    await t.waitFor(`s4 caught up and joined the in-sync set of [0, ${a.end})`);
    await t.waitFor('1 of 3 ranges under-replicated');
    // The counts follow the groups: s1 is the primary of nothing now, a follower of two ranges.
    expect(t.frame()).toMatch(/s1\s+10\.0\.0\.1:7001\s+up\s+1\.0MB\s+5000\s+0\/2\/0/);
    // Each change is logged once, however many refreshes follow.
    const polls = t.api.calls.filter((x) => x === 'snapshot').length;
    await t.waitFor(() => t.api.calls.filter((x) => x === 'snapshot').length > polls + 2);
    expect(t.frame().split('(failover)').length).toBe(2);
  });

  it('logs nothing for a single-copy cluster whose ranges move', async () => {
    const t = await ready();
    const [a, b] = t.api.ranges as [RangeRow, RangeRow];
    t.api.ranges = [{ ...a, shard: 's2', address: '10.0.0.2:7001' }, b];
    await t.waitFor(/Map: 2 ranges\s+\|1+\|/);
    const polls = t.api.calls.filter((x) => x === 'snapshot').length;
    await t.waitFor(() => t.api.calls.filter((x) => x === 'snapshot').length > polls + 2);
    expect(t.frame()).not.toMatch(/primary|in-sync|learner|Replication/);
    expect(t.frame()).not.toContain('P/F/L');
  });
});
