/**
 * `cairn admin` end to end, in a real pseudo-terminal: a cluster of real
 * processes (2 shards and rows), the console run in tmux (160x50), keys sent
 * with send-keys and the screen read with capture-pane. It types `servers`
 * and `ranges`, then `rebalance` and `y` after a third shard joined, and
 * reads from the screen that the three shards appear, that the progress bars
 * reached done, and that `ranges` then shows three shares summing to 100%.
 *
 * A second cluster, 3 shards with replicationFactor 3, shows the
 * replication view: each shard's primaries/followers/learners, a failover
 * logged as it happens when a primary is killed, the ranges it leaves
 * under-replicated, and the shard rejoining the in-sync sets once restarted.
 *
 * Without tmux on the machine the terminal tests are skipped, saying so.
 * Waits poll the screen (up to a minute or two); nothing here asserts a time.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CAIRN_BIN, startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';

const HAS_TMUX = spawnSync('tmux', ['-V'], { encoding: 'utf8' }).status === 0;
if (!HAS_TMUX) {
  // Said out loud, never skipped silently.
  console.warn('test/admin-tui.test.ts: SKIPPING the tmux end-to-end tests of `cairn admin`: tmux is not installed (apt-get install tmux)');
}
const tmuxIt = HAS_TMUX ? it : it.skip;

const ROWS = 20_000;
const SOCKET = `cairn-admin-tui-${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), 'cairn-admin-tui-'));
const HISTORY = join(dir, 'history');

function tmux(...args: string[]): string {
  const r = spawnSync('tmux', ['-u', '-L', SOCKET, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tmux ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * Runs `cairn admin` in a detached tmux session of 160x50. The shell around
 * it prints the exit code and keeps the pane open, so the screen can still be
 * read after the console has left.
 */
function startAdmin(session: string, env: NodeJS.ProcessEnv, args: string[] = []): void {
  const vars = Object.entries({ LANG: 'C.UTF-8', CAIRN_HISTORY_FILE: HISTORY, ...env })
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${k}=${quote(v)}`)
    .join(' ');
  const cmd = `env -u NODE_OPTIONS ${vars} ${quote(process.execPath)} ${quote(CAIRN_BIN)} admin ${args.map(quote).join(' ')}; echo "[cairn admin exited $?]"; sleep 3600`;
  tmux('new-session', '-d', '-s', session, '-x', '160', '-y', '50', '-c', process.cwd(), cmd);
}

/** The visible screen. */
const screen = (session: string) => tmux('capture-pane', '-p', '-t', session);
/** The screen and everything scrolled above it. */
const scrollback = (session: string) => tmux('capture-pane', '-p', '-J', '-S', '-', '-t', session);

/** Types text and presses Enter, as separate keys (tmux sends the text in one write). */
function type(session: string, text: string, enter = true): void {
  tmux('send-keys', '-t', session, '-l', text);
  if (enter) tmux('send-keys', '-t', session, 'Enter');
}

async function waitForScreen(session: string, what: string | RegExp | ((all: string) => boolean), timeoutMs = 60_000): Promise<string> {
  const test = (all: string) => (typeof what === 'function' ? what(all) : typeof what === 'string' ? all.includes(what) : what.test(all));
  const until = Date.now() + timeoutMs;
  for (;;) {
    const all = scrollback(session);
    if (test(all)) return all;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${String(what)} in tmux session ${session}; screen:\n${screen(session)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The `Shares of the hash space: …` lines on screen, each as its shares in percent. */
function sharesLines(all: string): number[][] {
  return [...all.matchAll(/^Shares of the hash space: (.*) \(total [\d.]+%\)$/gm)].map((m) => [...m[1]!.matchAll(/ ([\d.]+)%/g)].map((x) => Number(x[1])));
}

let cluster: ProcCluster | undefined;

afterAll(async () => {
  if (HAS_TMUX) {
    spawnSync('tmux', ['-L', SOCKET, 'kill-server']);
    rmSync(join(process.env.TMUX_TMPDIR || '/tmp', `tmux-${process.getuid?.() ?? 0}`, SOCKET), { force: true });
  }
  await cluster?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

describe('cairn admin in a terminal', () => {
  beforeAll(async () => {
    if (!HAS_TMUX) return;
    cluster = await startProcCluster({ shards: 2 });
    const load = await cluster.ctl(['load', '--rows', String(ROWS), '--json']);
    expect(load.json).toEqual({ written: ROWS, errors: 0 });
    // The planner works from the shards' heartbeat counts: wait until they tell every row.
    await waitUntil(async () => {
      const r = await cluster!.ctl(['servers', '--json']);
      return r.json.servers.reduce((n: number, s: { rows: number }) => n + s.rows, 0) === ROWS;
    }, 60_000, 'heartbeats that count every row');
  }, 180_000);

  tmuxIt('types servers and ranges, then rebalance and y after a third shard joined', async () => {
    const c = cluster!;
    const s = 'walk';
    startAdmin(s, c.ctlEnv);
    await waitForScreen(s, 'Manager(2 servers)>');
    expect(screen(s)).toMatch(/Cairn admin · master 127\.0\.0\.1:\d+ · user admin · map epoch \d+/);

    type(s, 'servers');
    await waitForScreen(s, /Manager\(2 servers\)> servers\nMap epoch \d+: 2 servers, 2 up\n/);
    type(s, 'ranges');
    await waitForScreen(s, (all) => sharesLines(all).length === 1);
    expect(sharesLines(scrollback(s))[0]).toEqual([50, 50]);

    // A third shard joins; the dashboard sees it without anything being typed.
    await c.addShard();
    await waitForScreen(s, 'Manager(3 servers)>');
    type(s, 'servers');
    const all = await waitForScreen(s, /Manager\(3 servers\)> servers\nMap epoch \d+: 3 servers, 3 up\n/);
    const listed = all.slice(all.lastIndexOf('Manager(3 servers)> servers'));
    for (let i = 0; i < 3; i++) expect(listed).toMatch(new RegExp(`^Server ${i} s\\d+ 127\\.0\\.0\\.1:\\d+ up \\(Size: `, 'm'));
    // The dashboard's table too: three rows, up.
    expect(screen(s).match(/^│ \d\s+s\d+\s+127\.0\.0\.1:\d+\s+up\s/gm)).toHaveLength(3);

    type(s, 'rebalance');
    await waitForScreen(s, '? Proceed with re-sharding? (y/n)');
    const plan = scrollback(s);
    expect(plan).toContain('The following moves will be made:');
    expect(plan).toMatch(/The new shares will be:\n\s+SHARD\s+BEFORE\s+AFTER\s+SHARE\n(\s+s\d+\s+\S+\s+\S+\s+\d+%\n){3}/);

    type(s, 'y', false);
    const done = await waitForScreen(s, /Rebalance op-\S+: \d+ moves committed, 0 aborted, \S+ moved\./, 120_000);
    // Every move's bar and the total bar reached done.
    const titles = [...done.matchAll(/^Rebalance op-\S+$/gm)];
    expect(titles.length).toBeGreaterThan(0);
    const result = done.slice(titles[titles.length - 1]!.index);
    const bars = result.match(/^#\d+\s+s\d+ -> s\d+\s+(\S+) +(\d+)%.*$/gm) ?? [];
    expect(bars.length).toBeGreaterThan(0);
    for (const b of bars) expect(b).toMatch(/█{20} 100%.* done$/);
    expect(result).toMatch(/^Total\s+(\d+) moves\s+█{20} 100%.* (\d+)\/\1 done$/m);

    type(s, 'ranges');
    const after = await waitForScreen(s, (x) => sharesLines(x).length === 2);
    const shares = sharesLines(after)[1]!;
    expect(shares).toHaveLength(3);
    expect(shares.reduce((a, b) => a + b, 0)).toBeCloseTo(100, 5);
    for (const x of shares) expect(x).toBeGreaterThan(0);

    type(s, 'exit');
    await waitForScreen(s, '[cairn admin exited 0]');
    expect(readFileSync(HISTORY, 'utf8').split('\n')).toEqual(expect.arrayContaining(['servers', 'ranges', 'rebalance', 'exit']));
  }, 300_000);

  tmuxIt('a wrong password is one line, the password is asked again, and history is kept across runs', async () => {
    const c = cluster!;
    const s = 'password';
    startAdmin(s, { ...c.ctlEnv, CAIRN_PASSWORD: 'not-the-password' });
    await waitForScreen(s, '✗ error: login failed: unknown user or wrong password');
    await waitForScreen(s, 'Password for admin@');
    expect(scrollback(s)).not.toMatch(/^\s+at /m);
    type(s, c.ctlEnv.CAIRN_PASSWORD!);
    await waitForScreen(s, 'Manager(3 servers)>');
    // Up brings back the last command of the previous run.
    const last = readFileSync(HISTORY, 'utf8').trim().split('\n').pop()!;
    tmux('send-keys', '-t', s, 'Up');
    await waitForScreen(s, `Manager(3 servers)> ${last}`);
    tmux('send-keys', '-t', s, 'C-u');
    type(s, 'frobnicate');
    await waitForScreen(s, '✗ error: unknown command "frobnicate": type help for the list');
    type(s, 'exit');
    await waitForScreen(s, '[cairn admin exited 0]');
  }, 120_000);

  tmuxIt('Ctrl-C during a move leaves it running on the master, and the next start shows it', async () => {
    const c = cluster!;
    const s = 'detach';
    startAdmin(s, c.ctlEnv);
    await waitForScreen(s, /Manager\(\d+ servers\)>/);
    const servers = (await c.ctl(['servers', '--json'])).json.servers as Array<{ id: string; ranges: number }>;
    const victim = servers.filter((x) => x.ranges > 0).pop()!.id;
    // Throttled hard (10 KB/s after the first 1 MB chunk), so the drain is
    // still running when the console starts again.
    type(s, `dropserver ${victim} --max-mbps 0.01`);
    await waitForScreen(s, `? Drain ${victim}? (y/n)`, 90_000);
    type(s, 'y', false);
    await waitForScreen(s, 'Ctrl-C stops following; the moves keep running on the master.', 90_000);
    tmux('send-keys', '-t', s, 'C-c');
    await waitForScreen(s, /Stopped following op-\S+: its moves keep running on the master\./, 90_000);
    type(s, 'exit');
    await waitForScreen(s, '[cairn admin exited 0]');
    const inFlight = (await c.ctl(['moves', '--json'])).json.moves as Array<{ from: string; state: string }>;
    expect(inFlight.length).toBeGreaterThan(0);
    expect(inFlight.every((m) => m.from === victim)).toBe(true);

    const s2 = 'detach-again';
    startAdmin(s2, c.ctlEnv);
    const again = await waitForScreen(s2, /Moves in flight: [1-9]/, 90_000);
    expect(again).toMatch(new RegExp(`^│ mv-\\S+\\s+${victim} -> s\\d+\\s+[█░]+\\s+\\d+%`, 'm'));
    type(s2, 'exit');
    await waitForScreen(s2, '[cairn admin exited 0]');
  }, 300_000);
});

describe('cairn admin on a replicated cluster', () => {
  let replicated: ProcCluster | undefined;
  const inSyncEverywhere = async () => {
    const r = await replicated!.ctl(['ranges', '--json']);
    return (r.json.ranges as Array<{ inSync: string[] }>).every((x) => x.inSync.length === 3);
  };

  beforeAll(async () => {
    if (!HAS_TMUX) return;
    replicated = await startProcCluster({ shards: 3, masterArgs: ['--replication-factor', '3'], env: { CAIRN_REPLICA_LEASE_MS: '1000', CAIRN_REPLICA_ACK_TIMEOUT_MS: '1500' } });
    await waitUntil(inSyncEverywhere, 30_000, 'every range in sync on three shards');
  }, 120_000);

  afterAll(async () => {
    await replicated?.cleanup();
  });

  tmuxIt('shows copies per shard, logs a failover as it happens, and the shard rejoining once back', async () => {
    const c = replicated!;
    const s = 'replicas';
    startAdmin(s, c.ctlEnv);
    await waitForScreen(s, 'Replication: 3 copies wanted · all 3 ranges in sync');
    expect(screen(s)).toMatch(/P\/F\/L/);
    expect(screen(s).match(/^│ \d\s+s\d+\s+127\.0\.0\.1:\d+\s+up\s.*\s1\/2\/0\s/gm)).toHaveLength(3);

    const victim = c.shards[0]!;
    await c.stop(victim, 'SIGKILL');
    const failed = await waitForScreen(s, /^\d\d:\d\d:\d\d range \[\d+, \d+\): primary (s\d+) → s\d+ \(failover\)$/m, 60_000);
    const gone = /primary (s\d+) → s\d+ \(failover\)/.exec(failed)![1]!;
    await waitForScreen(s, /Replication: 3 copies wanted · [1-3] of 3 ranges under-replicated/, 30_000);
    await waitForScreen(s, `${gone} left the in-sync set of`, 30_000);

    await c.restart(victim);
    await waitForScreen(s, `${gone} rejoined the in-sync set of`, 90_000);
    await waitForScreen(s, (all) => screen(s).includes('Replication: 3 copies wanted · all 3 ranges in sync') && all.includes('rejoined'), 90_000);
    type(s, 'exit');
    await waitForScreen(s, '[cairn admin exited 0]');
  }, 300_000);
});

describe('cairn admin without a terminal', () => {
  it('exits at once, non-zero, pointing to cairn ctl … --json', async () => {
    const child = spawn(process.execPath, [CAIRN_BIN, 'admin', '--master', '127.0.0.1:1'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, CAIRN_USER: 'admin', CAIRN_PASSWORD: 'x' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((done) => child.on('exit', done));
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('error: cairn admin needs a terminal');
    expect(stderr).toMatch(/hint: for scripts use "cairn ctl <command> --json"/);
    expect(stderr).not.toMatch(/^\s+at /m);
  });
});
