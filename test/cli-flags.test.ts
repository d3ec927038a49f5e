/**
 * Issue 12: the CLI on commander, each subcommand declaring its options.
 * Real processes (`node bin/cairn.js …`), each in an empty working directory
 * and with every address it could reach pointing at a trap that counts
 * connections, so "nothing started or created" is checked, not assumed:
 * - `--help` on every subcommand: exit 0, help on stdout, nothing started;
 *   `dev --help` started a cluster, `hash-password --help` waited for stdin,
 *   `master --help` / `shard --help` left most config keys out;
 * - an unknown flag on every subcommand: exit 2 naming it, nothing started;
 *   `ctl servers --mastr …` talked to the default master, `rebalance --max-mbs 5`
 *   ran unthrottled;
 * - an unreachable master: exit 3 at once, in plain words (it took the whole
 *   deadline and leaked grpc's "Resolution note:");
 * - a server address that cannot be bound is a config error (exit 2, was 1);
 * - `cairn dev` with a busy port says the cause at once (it waited 30 s).
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashPassword } from '../services/common/auth.js';
import { configKeys, flagName, envName, loadConfig } from '../services/common/config.js';
import { CAIRN_BIN, freeBasePort } from './harness/cluster.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
  /** Entries the command left in its (empty) working directory. */
  created: string[];
  /** Connections made to the trap (the master, health and shard addresses the command was given). */
  trapHits: number;
}

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

/** A TCP server that counts connections and closes them. */
async function trap(): Promise<{ server: Server; address: string; hits: () => number }> {
  let hits = 0;
  const server = createServer((s) => {
    hits++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return { server, address: `127.0.0.1:${port}`, hits: () => hits };
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const t = await trap();
  const port = Number(t.address.split(':')[1]);
  await new Promise((r) => t.server.close(r));
  return port;
}

/**
 * Runs `cairn args` in a new empty directory, stdin left open (a command that
 * reads it waits), everything it could dial pointing at a trap; stops it
 * (SIGINT, so that `dev` stops its children) after `limitMs`.
 */
async function cairn(args: string[], opts: { env?: NodeJS.ProcessEnv; limitMs?: number } = {}): Promise<Run> {
  const cwd = await mkdtemp(join(tmpdir(), 'cairn-cli-'));
  dirs.push(cwd);
  const t = await trap();
  const t0 = Date.now();
  const env = {
    ...process.env,
    CAIRN_CONFIG: '',
    CAIRN_SERVER_CREDENTIAL: 'cli-flags-test-credential-0123456789',
    CAIRN_LISTEN: '127.0.0.1:0',
    CAIRN_MASTER: t.address,
    CAIRN_HEALTH_ADDR: t.address,
    CAIRN_USER: 'admin',
    CAIRN_PASSWORD: 'pw',
    ...opts.env,
  };
  const child = spawn(process.execPath, [CAIRN_BIN, ...args], { cwd, stdio: ['pipe', 'pipe', 'pipe'], env });
  let stdout = '';
  let stderr = '';
  let timedOut = false;
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGINT');
    setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
  }, opts.limitMs ?? 10_000);
  const code = await new Promise<number | null>((done) => child.on('close', (c) => done(c)));
  clearTimeout(timer);
  const ms = Date.now() - t0;
  await new Promise((r) => t.server.close(r));
  return { code, stdout, stderr, ms, timedOut, created: await readdir(cwd), trapHits: t.hits() };
}

/** Runs `fn` over `items`, `n` at a time (the machine is small and shared). */
async function pool<T, R>(items: T[], n: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

const CTL = ['servers', 'ranges', 'plan', 'rebalance', 'dropserver', 'remserver', 'addserver', 'sync', 'moves', 'recover', 'reload', 'put', 'get', 'scan', 'delete', 'load', 'verify'];

/** Every subcommand, with what keeps it off shared ports (dev: a free base port). */
async function everyCommand(): Promise<string[][]> {
  const base = await freeBasePort([0, 1, 2, 3, 100, 101, 102, 103]);
  return [
    [],
    ['master'],
    ['master', 'rebuild'],
    ['master', 'migrate-to-etcd'],
    ['shard'],
    ['dev', '--base-port', String(base)],
    ['health'],
    ['admin'],
    ['hash-password'],
    ['ctl'],
    ...CTL.map((c) => ['ctl', c]),
  ];
}

describe('every subcommand', () => {
  it('--help prints help on stdout, exits 0 and starts, creates and dials nothing', async () => {
    const commands = await everyCommand();
    const runs = await pool(commands, 3, (cmd) => cairn([...cmd, '--help']));
    const seen = runs.map((r, i) => ({
      cmd: commands[i]!.join(' '),
      code: r.code,
      timedOut: r.timedOut,
      created: r.created,
      trapHits: r.trapHits,
      stderr: r.stderr,
      usage: /Usage: cairn/.test(r.stdout),
    }));
    expect(seen).toEqual(seen.map((s) => ({ ...s, code: 0, timedOut: false, created: [], trapHits: 0, stderr: '', usage: true })));
  }, 240_000);

  it('an unknown flag exits 2 naming it, and starts, creates and dials nothing', async () => {
    const commands = await everyCommand();
    const runs = await pool(commands, 3, (cmd) => cairn([...cmd, '--bogus-flag', '1']));
    const seen = runs.map((r, i) => ({
      cmd: commands[i]!.join(' '),
      code: r.code,
      timedOut: r.timedOut,
      created: r.created,
      trapHits: r.trapHits,
      named: r.stderr.includes('--bogus-flag'),
    }));
    expect(seen).toEqual(seen.map((s) => ({ ...s, code: 2, timedOut: false, created: [], trapHits: 0, named: true })));
  }, 240_000);
});

describe('help as a command', () => {
  it('cairn help master and cairn ctl help put print help and exit 0', async () => {
    for (const args of [['help', 'master'], ['ctl', 'help', 'put'], ['help']]) {
      const r = await cairn(args);
      expect([args.join(' '), r.code, /Usage: cairn/.test(r.stdout), r.trapHits, r.created]).toEqual([args.join(' '), 0, true, 0, []]);
    }
  }, 30_000);
});

describe('server help', () => {
  it.each(['master', 'shard'] as const)('%s --help lists every config key with its env variable and default', async (role) => {
    const r = await cairn([role, '--help']);
    expect(r.code).toBe(0);
    const defaults = loadConfig(role, { flags: { 'server-credential': 'x'.repeat(20) }, env: {} });
    for (const key of configKeys(role)) {
      expect([key, r.stdout.includes(`--${flagName(key)}`), r.stdout.includes(envName(key))]).toEqual([key, true, true]);
      const v = (defaults as unknown as Record<string, unknown>)[key];
      if (defaults.sources[key] === 'default' && ['number', 'boolean'].includes(typeof v)) {
        expect([key, r.stdout.replace(/\s+/g, ' ')]).toEqual([key, expect.stringContaining(`default: ${v}`)]);
      }
    }
  }, 30_000);
});

describe('mistyped flags the issue names', () => {
  it('ctl servers --mastr talks to no cluster: exit 2, the flag named, --master suggested', async () => {
    const r = await cairn(['ctl', 'servers', '--mastr', '127.0.0.1:7200']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("'--mastr'");
    expect(r.stderr).toContain('--master');
    expect(r.trapHits).toBe(0);
  }, 30_000);

  it('ctl rebalance --max-mbs 5 --yes starts nothing: exit 2, --max-mbps suggested', async () => {
    const r = await cairn(['ctl', 'rebalance', '--max-mbs', '5', '--yes']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("'--max-mbs'");
    expect(r.stderr).toContain('--max-mbps');
    expect(r.trapHits).toBe(0);
  }, 30_000);

  it('global ctl flags still work before and after the subcommand', async () => {
    for (const args of [['--master', 'M', 'servers'], ['servers', '--master', 'M'], ['--json', 'scan', '--limit', '3', '--master', 'M']]) {
      const other = await trap();
      const r = await cairn(['ctl', ...args.map((a) => (a === 'M' ? other.address : a)), '--timeout', '2000']);
      await new Promise((done) => other.server.close(done));
      expect([args.join(' '), r.trapHits, other.hits() > 0, r.code === 2]).toEqual([args.join(' '), 0, true, false]);
    }
  }, 60_000);

  it('--clients is still repeatable on the master', async () => {
    const h = hashPassword('pw');
    const r = await cairn(['master', '--clients', `admin:${h}:admin`, '--clients', `admin:${h}:r`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('duplicate user "admin"');
  }, 30_000);
});

describe('an unreachable master', () => {
  it('ctl says plainly that nothing answered, exit 3, well before the deadline', async () => {
    const port = await closedPort();
    const r = await cairn(['ctl', 'servers', '--timeout', '10000'], { env: { CAIRN_MASTER: `127.0.0.1:${port}` }, limitMs: 30_000 });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain(`nothing answered at 127.0.0.1:${port}`);
    expect(r.stderr).not.toContain('Resolution note');
    expect(r.ms).toBeLessThan(10_000); // the --timeout: it did not wait for the deadline to say so
  }, 40_000);
});

describe('a server address this host cannot bind', () => {
  it('is a config error: exit 2, naming the key', async () => {
    const r = await cairn(['master', '--listen', '1.2.3.4.5:7123', '--data-dir', join(tmpdir(), `cairn-cli-unused-${process.pid}`)], { limitMs: 20_000 });
    await rm(join(tmpdir(), `cairn-cli-unused-${process.pid}`), { recursive: true, force: true });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('config: listen (from flag --listen)');
  }, 30_000);
});

describe('cairn dev with a busy port', () => {
  it('says which process failed and why, without waiting 30 s', async () => {
    const base = await freeBasePort([0, 1, 2, 3, 100, 101, 102, 103]);
    const busy = createServer();
    await new Promise<void>((r) => busy.listen(base + 100, '127.0.0.1', r));
    try {
      const r = await cairn(['dev', '--base-port', String(base), '--data-dir', 'data'], { limitMs: 60_000 });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('master exited');
      expect(r.stderr).toContain(`EADDRINUSE`);
      expect(r.stderr).toContain(`127.0.0.1:${base + 100}`);
      expect(r.ms).toBeLessThan(30_000); // the old wait before "did not come up"
    } finally {
      await new Promise((r) => busy.close(r));
    }
  }, 90_000);
});
