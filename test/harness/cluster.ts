/**
 * A cluster of real child processes — `cairn master` and `cairn shard`, each
 * with its own LevelDB in a temp dir, on 127.0.0.1 — for tests that stop,
 * kill and restart processes. Runs the built CLI (dist/, made by `pretest`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import { hashPassword } from '../../services/common/auth.js';
import { TEST_CREDENTIAL, USERS, type TestUser } from './inproc.js';

export const CAIRN_BIN = resolve('bin/cairn.js');

export interface Proc {
  name: string;
  args: string[];
  child: ChildProcess;
  /** The bound port, learnt from the "listening" log line. */
  port: number;
  address: string;
  /** Log lines (parsed JSON) seen so far. */
  logs: Array<Record<string, unknown>>;
  exited: Promise<number | null>;
}

export interface CtlResult {
  code: number | null;
  stdout: string;
  stderr: string;
  json: any;
}

export function spawnCairn(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Proc> {
  const child = spawn(process.execPath, [CAIRN_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const logs: Array<Record<string, unknown>> = [];
  const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
  return new Promise<Proc>((resolveProc, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not report "listening" within 20 s; logs: ${JSON.stringify(logs.slice(-5))}`)), 20_000);
    createInterface({ input: child.stderr! }).on('line', (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line);
      } catch {
        rec = { message: line };
      }
      logs.push(rec);
      if (rec.message === 'listening') {
        clearTimeout(timer);
        const address = String(rec.address);
        resolveProc({ name, args, child, port: Number(address.slice(address.lastIndexOf(':') + 1)), address, logs, exited });
      }
    });
    child.stdout!.resume();
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before listening; logs: ${JSON.stringify(logs.slice(-5))}`));
    });
  });
}

export interface ProcCluster {
  dir: string;
  master: Proc;
  shards: Proc[];
  masterAddress: string;
  /** Environment for `cairn ctl` as the admin user. */
  ctlEnv: NodeJS.ProcessEnv;
  ctl(args: string[], opts?: { env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<CtlResult>;
  /** Starts one more shard; `env` is added to the cluster's environment for this process only. */
  addShard(opts?: { env?: NodeJS.ProcessEnv }): Promise<Proc>;
  /** The master's config file (YAML), its credential file, and the cluster's environment. */
  masterYaml: string;
  credFile: string;
  env: NodeJS.ProcessEnv;
  /** Stops a process with a signal and waits for it to exit; returns the exit code. */
  stop(p: Proc, signal?: NodeJS.Signals): Promise<number | null>;
  /**
   * Starts a stopped process again on the same port and data dir, with the
   * cluster's environment (per-process env given at start is not kept), plus `env` if given.
   */
  restart(p: Proc, opts?: { env?: NodeJS.ProcessEnv }): Promise<Proc>;
  stopAll(signal?: NodeJS.Signals): Promise<void>;
  cleanup(): Promise<void>;
}

export async function startProcCluster(
  o: {
    shards?: number;
    expectShards?: number;
    masterArgs?: string[];
    env?: NodeJS.ProcessEnv;
    /** Extra environment for the master process only (e.g. CAIRN_FAILPOINTS). */
    masterEnv?: NodeJS.ProcessEnv;
    /** Extra environment for the first shards only, by index (shardEnv[0] for the first shard). */
    shardEnv?: NodeJS.ProcessEnv[];
    /** Data directories for the first shards, by index (default DIR/shard1, …): e.g. one on a small tmpfs. */
    shardDataDirs?: string[];
    /** Start on copies of existing data directories: DIR/master, DIR/shard1, … (a fixture). */
    dataFrom?: string;
    /** Wait until the shards are up and the cluster has a map (default true). */
    waitForMap?: boolean;
    /** Users in the master's client list besides USERS. */
    extraUsers?: TestUser[];
  } = {},
): Promise<ProcCluster> {
  const n = o.shards ?? 2;
  const dir = await mkdtemp(join(tmpdir(), 'cairn-proc-'));
  if (o.dataFrom) await cp(o.dataFrom, dir, { recursive: true });
  const credFile = join(dir, 'credential');
  await writeFile(credFile, TEST_CREDENTIAL + '\n', { mode: 0o600 });
  const masterYaml = join(dir, 'master.yaml');
  await writeFile(
    masterYaml,
    stringify({
      dataDir: join(dir, 'master'),
      expectShards: o.expectShards ?? n,
      serverCredentialFile: credFile,
      heartbeatIntervalMs: 250,
      shardDownAfterMs: 2000,
      clients: [...USERS, ...(o.extraUsers ?? [])].map((u) => ({ user: u.user, passwordHash: hashPassword(u.password), role: u.role })),
    }),
  );
  const env = { CAIRN_CONFIG: '', ...o.env };
  const master = await spawnCairn('master', ['master', '--config', masterYaml, '--listen', '127.0.0.1:0', ...(o.masterArgs ?? [])], { ...env, ...o.masterEnv });
  const masterAddress = master.address;
  let count = 0;
  const shardArgs = (i: number, listen: string) => [
    'shard',
    '--listen', listen,
    '--data-dir', o.shardDataDirs?.[i - 1] ?? join(dir, `shard${i}`),
    '--master', masterAddress,
    '--server-credential-file', credFile,
    '--heartbeat-interval-ms', '250',
  ];
  const shards: Proc[] = [];
  const addShard = async (opts: { env?: NodeJS.ProcessEnv } = {}) => {
    count += 1;
    const p = await spawnCairn(`shard${count}`, shardArgs(count, '127.0.0.1:0'), { ...env, ...o.shardEnv?.[count - 1], ...opts.env });
    shards.push(p);
    return p;
  };
  await Promise.all(Array.from({ length: n }, () => addShard()));
  const admin = USERS.find((u) => u.role === 'admin')!;
  const ctlEnv = { CAIRN_USER: admin.user, CAIRN_PASSWORD: admin.password, CAIRN_MASTER: masterAddress };

  const cluster: ProcCluster = {
    dir,
    master,
    shards,
    masterAddress,
    ctlEnv,
    masterYaml,
    credFile,
    env,
    ctl: (args, opts = {}) => runCtl(args, { ...ctlEnv, ...opts.env }, opts.timeoutMs),
    addShard,
    async stop(p, signal = 'SIGTERM') {
      if (p.child.exitCode !== null || p.child.signalCode !== null) return p.child.exitCode;
      p.child.kill(signal);
      return p.exited;
    },
    async restart(p, opts = {}) {
      // Same data dir and the same port, so addresses in the map stay valid.
      const args = p.args.map((a, i) => (p.args[i - 1] === '--listen' ? `127.0.0.1:${p.port}` : a));
      const fresh = await spawnCairn(p.name, args, { ...env, ...opts.env });
      if (p === cluster.master) cluster.master = fresh;
      const i = shards.indexOf(p);
      if (i >= 0) shards[i] = fresh;
      return fresh;
    },
    async stopAll(signal = 'SIGTERM') {
      await Promise.all(shards.map((s) => cluster.stop(s, signal)));
      await cluster.stop(cluster.master, signal);
    },
    async cleanup() {
      await cluster.stopAll('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    },
  };
  if (o.waitForMap === false) return cluster;
  await waitUntil(async () => {
    const r = await cluster.ctl(['servers', '--json']);
    return r.code === 0 && r.json.servers.length === n && r.json.servers.every((s: { status: string }) => s.status === 'up') && r.json.epoch !== '0';
  }, 30_000, `${n} shards up`);
  return cluster;
}

export function runCtl(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<CtlResult> {
  return new Promise((done, reject) => {
    const child = spawn(process.execPath, [CAIRN_BIN, 'ctl', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cairn ctl ${args.join(' ')} timed out; stderr: ${stderr}`));
    }, timeoutMs);
    // 'close', not 'exit': the process can exit before its stdout has been read to the end.
    child.on('close', (code) => {
      clearTimeout(timer);
      let json: unknown;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      done({ code, stdout, stderr, json });
    });
  });
}

export async function waitUntil(cond: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await cond()) return;
    } catch {
      /* keep waiting */
    }
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A random base port such that base + each offset is free on 127.0.0.1 (for `cairn dev --base-port`). */
export async function freeBasePort(offsets: number[]): Promise<number> {
  const free = (port: number) =>
    new Promise<boolean>((done) => {
      const s = createServer().once('error', () => done(false));
      s.listen(port, '127.0.0.1', () => s.close(() => done(true)));
    });
  for (;;) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    if ((await Promise.all(offsets.map((i) => free(base + i)))).every(Boolean)) return base;
  }
}
