/**
 * The test cluster: one interface (`Cluster`) with two drivers — real
 * processes (procs.ts: `ProcessCluster`, the built CLI in dist/) and
 * in-process servers (inproc.ts: `InProcDriver`). `startProcCluster` is the
 * process driver behind the interface most process tests use (a `Proc` per
 * start, `ctl` as the admin); `runCtl`, `waitUntil` and `freeBasePort` are
 * the helpers around it.
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { launchCairn } from '../../cli/launch.js';
import { CairnClient } from '../../services/client/index.js';
import type { ClientTls } from '../../services/common/grpc.js';
import { USERS, type TestUser } from './inproc.js';
import { CAIRN_BIN, ProcessCluster, type Proc } from './procs.js';

export { CAIRN_BIN, ProcessCluster, type Proc, type Server } from './procs.js';

/** A server of a cluster, whichever the driver. */
export interface ClusterServer {
  readonly name: string;
  readonly role: 'master' | 'shard';
  readonly address: string;
  readonly dataDir: string;
}

/**
 * What both drivers offer. An in-process server cannot be paused, and its
 * `kill` is a stop with no grace (not a SIGKILL: the process is the test's).
 */
export interface Cluster<S extends ClusterServer = ClusterServer> {
  readonly dir: string;
  readonly masterAddress: string;
  readonly master: S;
  readonly shards: readonly S[];
  addShard(): Promise<S>;
  isRunning(s: S): boolean;
  /** A clean shutdown; resolves once the server is down. */
  stop(s: S): Promise<unknown>;
  kill(s: S): Promise<void>;
  pause(s: S): void;
  resume(s: S): void;
  /** Starts a stopped server again on its address and data dir. */
  restart(s: S): Promise<unknown>;
  /** The server's log records so far (its current start). */
  logs(s: S): ReadonlyArray<Record<string, unknown>>;
  /** Until every shard is up and the cluster has a map. */
  waitReady(timeoutMs?: number): Promise<void>;
  /** Stops everything and removes what the cluster made. */
  cleanup(): Promise<void>;
}

export const ADMIN = USERS.find((u) => u.role === 'admin')!;

/** Until `shards` shards are registered and up, and the map has an epoch. */
export function waitReady(masterAddress: string, shards: number, timeoutMs = 30_000, tls?: ClientTls): Promise<void> {
  return waitUntil(async () => {
    const c = await CairnClient.connect({ master: masterAddress, user: ADMIN.user, password: ADMIN.password, timeoutMs: 2000, tls });
    try {
      const servers = await c.listServers();
      return servers.length === shards && servers.every((s) => s.status === 'up') && c.map.epoch > 0n;
    } finally {
      c.close();
    }
  }, timeoutMs, `${shards} shards up`);
}

/** One range of `cairn ctl ranges --json`: its primary (`shard`, `address`) and its replica group. */
export interface RangeJson {
  start: string;
  end: string;
  shard: string;
  address: string;
  replicas: string[];
  inSync: string[];
}

export interface CtlResult {
  code: number | null;
  stdout: string;
  stderr: string;
  json: any;
}

/** Starts one `cairn` process outside any cluster; resolves once it is listening. */
export async function spawnCairn(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Proc> {
  const logs: Proc['logs'] = [];
  const l = launchCairn({ name, args, bin: CAIRN_BIN, env: { ...process.env, ...env }, readyTimeoutMs: 20_000, onLine: (line) => logs.push(parseLine(line)) });
  const address = await l.listening;
  return { name, args, child: l.child, port: Number(address.slice(address.lastIndexOf(':') + 1)), address, logs, exited: l.exited.then((x) => x.code) };
}

export const parseLine = (line: string): Record<string, unknown> => {
  try {
    return JSON.parse(line);
  } catch {
    return { message: line };
  }
};

export interface ProcCluster {
  dir: string;
  /** The current start of each server. */
  master: Proc;
  shards: Proc[];
  masterAddress: string;
  /** The driver underneath, for what this view does not offer (pause, logs by server, …). */
  driver: ProcessCluster;
  /** Environment for `cairn ctl` as the admin user. */
  ctlEnv: NodeJS.ProcessEnv;
  ctl(args: string[], opts?: { env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<CtlResult>;
  /** Starts one more shard; `env` is added to the cluster's environment for this process only. */
  addShard(opts?: { env?: NodeJS.ProcessEnv }): Promise<Proc>;
  /** The master's config file (YAML), its credential file, and the cluster's environment. */
  masterYaml: string;
  credFile: string;
  env: NodeJS.ProcessEnv;
  /** Stops a process (of the cluster or not) with a signal and waits for it to exit; returns the exit code. */
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
  const firstEnv: Record<string, NodeJS.ProcessEnv | undefined> = { master: o.masterEnv };
  o.shardEnv?.forEach((e, i) => (firstEnv[`shard${i + 1}`] = e));
  const driver = await ProcessCluster.start({ ...o, shards: n, firstEnv, readyTimeoutMs: 20_000 });
  const ctlEnv = { CAIRN_USER: ADMIN.user, CAIRN_PASSWORD: ADMIN.password, CAIRN_MASTER: driver.masterAddress };
  const serverOf = (p: Proc) => driver.all.find((s) => s.proc === p);
  const cluster: ProcCluster = {
    dir: driver.dir,
    master: driver.master.proc!,
    shards: driver.shards.map((s) => s.proc!),
    masterAddress: driver.masterAddress,
    driver,
    ctlEnv,
    masterYaml: driver.masterYaml,
    credFile: driver.credFile,
    env: driver.env,
    ctl: (args, opts = {}) => runCtl(args, { ...ctlEnv, ...opts.env }, opts.timeoutMs),
    async addShard(opts = {}) {
      const s = await driver.addShard(opts.env);
      cluster.shards.push(s.proc!);
      return s.proc!;
    },
    async stop(p, signal = 'SIGTERM') {
      const s = serverOf(p);
      if (s) return driver.stop(s, signal);
      if (p.child.exitCode !== null || p.child.signalCode !== null) return p.child.exitCode;
      p.child.kill(signal);
      return p.exited;
    },
    async restart(p, opts = {}) {
      const s = driver.all.find((x) => x.name === p.name);
      if (!s) throw new Error(`${p.name} is not a server of this cluster`);
      const fresh = await driver.restart(s, opts.env);
      // In its place: a test may have taken a shard out of `shards`.
      if (p === cluster.master) cluster.master = fresh;
      const i = cluster.shards.indexOf(p);
      if (i >= 0) cluster.shards[i] = fresh;
      return fresh;
    },
    stopAll: (signal = 'SIGTERM') => driver.stopAll(signal),
    cleanup: () => driver.cleanup(),
  };
  if (o.waitForMap !== false) await driver.waitReady().catch(async (err) => {
    await driver.cleanup();
    throw err;
  });
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
