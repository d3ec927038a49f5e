/**
 * The process driver of the test cluster (the interface is in cluster.ts):
 * real `cairn master` and `cairn shard` processes (the built CLI, started by
 * cli/launch.ts, the code `cairn dev` uses too), each with its own LevelDB
 * under one run directory, on 127.0.0.1 — or, with a NetnsLab, each in a
 * network namespace of its own so that it can be cut off. A server can be
 * stopped (SIGTERM), killed (SIGKILL), paused (SIGSTOP / SIGCONT) and
 * restarted on the same address and data dir. Every start is one `Proc`
 * (child, parsed log lines, exit); every server's log also goes to
 * <dir>/logs/<name>.log.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { launchCairn } from '../../cli/launch.js';
import { hashPassword } from '../../services/common/auth.js';
import { leadsAt } from '../../services/client/master-status.js';
import { waitReady, waitUntil, type Cluster } from './cluster.js';
import { TEST_CREDENTIAL, USERS, type TestUser } from './inproc.js';
import type { NetnsLab } from '../nemesis/netns.js';

export const CAIRN_BIN = resolve('bin/cairn.js');

/** One start of a server process. */
export interface Proc {
  name: string;
  args: string[];
  child: ChildProcess;
  /** The bound port, learnt from the "listening" log line. */
  port: number;
  address: string;
  /** Log lines (parsed JSON; `{ message: line }` for others) seen so far. */
  logs: Array<Record<string, unknown>>;
  /** Resolves with the exit code (null when killed by a signal). */
  exited: Promise<number | null>;
}

/** One server of the cluster, across its restarts. */
export interface Server {
  name: string;
  role: 'master' | 'shard';
  /** The IP the process listens on: 127.0.0.1, or its namespace's address. */
  ip: string;
  /** Known once the process first reported "listening"; kept across restarts. */
  port: number;
  address: string;
  dataDir: string;
  args: string[];
  /** The current (or last) start. */
  proc?: Proc;
  /** True while SIGSTOPped. */
  paused: boolean;
  /** How many times the process was started. */
  starts: number;
  /** Extra environment for the next start only (e.g. CAIRN_FAILPOINTS); a restart runs without it. */
  nextEnv?: NodeJS.ProcessEnv;
}

export interface ProcessClusterOptions {
  /** The run directory (default: a fresh temp dir, removed by cleanup()). */
  dir?: string;
  shards?: number;
  expectShards?: number;
  masterArgs?: string[];
  /** Extra environment for every process. */
  env?: NodeJS.ProcessEnv;
  /** Extra environment for the first start of one process, by name (master, shard1, …). */
  firstEnv?: Record<string, NodeJS.ProcessEnv | undefined>;
  /** Data directories for the first shards, by index (default DIR/shard1, …): e.g. one on a small tmpfs. */
  shardDataDirs?: string[];
  /** Start on copies of existing data directories: DIR/master, DIR/shard1, … (a fixture). */
  dataFrom?: string;
  /** Users in the master's client list besides USERS. */
  extraUsers?: TestUser[];
  /** Network namespaces for partitions; loopback without. */
  net?: NetnsLab;
  /** How long a start waits for "listening", ms. */
  readyTimeoutMs?: number;
  /**
   * The master's state in etcd (metaStore etcd) rather than in its dataDir:
   * `masters` processes then run against it, one leading and the others
   * standing by, and every shard and client is given all their addresses.
   */
  etcd?: { endpoints: string[]; prefix?: string; leaseSeconds?: number; masters?: number };
}

export class ProcessCluster implements Cluster<Server> {
  /** The first master (with etcd, the one started first; any of `masters` may lead later). */
  readonly master: Server;
  /** Every master: the first alone, unless the state is in etcd (options.etcd.masters). */
  readonly masters: Server[];
  readonly shards: Server[] = [];
  readonly credFile: string;
  readonly masterYaml: string;
  /** The environment every process gets (besides process.env). */
  readonly env: NodeJS.ProcessEnv;
  private shardCount = 0;

  private constructor(
    readonly dir: string,
    private readonly o: ProcessClusterOptions,
    private readonly ownDir: boolean,
  ) {
    this.credFile = join(dir, 'credential');
    this.masterYaml = join(dir, 'master.yaml');
    this.env = { CAIRN_CONFIG: '', ...o.env };
    const count = o.etcd ? (o.etcd.masters ?? 2) : 1;
    this.masters = Array.from({ length: count }, (_, i) => {
      const name = i === 0 ? 'master' : `master${i + 1}`;
      return { name, role: 'master' as const, ip: '127.0.0.1', port: 0, address: '', dataDir: join(dir, name), args: [], paused: false, starts: 0 };
    });
    this.master = this.masters[0]!;
  }

  /** The master's address, or with several masters their list (a,b), as shards and clients take it. */
  get masterAddress(): string {
    return this.masters.map((m) => m.address).join(',');
  }

  get all(): Server[] {
    return [...this.masters, ...this.shards];
  }

  /** The master that leads now (its Admin service is SERVING; a standby's is not), if one answers. */
  async leader(): Promise<Server | undefined> {
    if (this.masters.length === 1) return this.master;
    for (const m of this.masters) {
      if (!this.isRunning(m) || m.paused) continue;
      if (await leadsAt(m.address)) return m;
    }
    return undefined;
  }

  /** Starts the master and the shards (not waiting for a map: see waitReady). */
  static async start(o: ProcessClusterOptions = {}): Promise<ProcessCluster> {
    const dir = o.dir ?? (await mkdtemp(join(tmpdir(), 'cairn-proc-')));
    const c = new ProcessCluster(dir, o, !o.dir);
    await mkdir(join(dir, 'logs'), { recursive: true });
    if (o.dataFrom) await cp(o.dataFrom, dir, { recursive: true });
    await writeFile(c.credFile, TEST_CREDENTIAL + '\n', { mode: 0o600 });
    const n = o.shards ?? 2;
    await writeFile(
      c.masterYaml,
      stringify({
        dataDir: c.master.dataDir,
        expectShards: o.expectShards ?? n,
        serverCredentialFile: c.credFile,
        heartbeatIntervalMs: 250,
        shardDownAfterMs: 2000,
        // Tests written for one copy keep it (issue 13); a test of replication passes --replication-factor.
        replicationFactor: 1,
        ...(o.etcd
          ? { metaStore: 'etcd', etcdEndpoints: o.etcd.endpoints, etcdPrefix: o.etcd.prefix ?? `/cairn-${Date.now().toString(36)}`, etcdLeaseSeconds: o.etcd.leaseSeconds ?? 2 }
          : {}),
        clients: [...USERS, ...(o.extraUsers ?? [])].map((u) => ({ user: u.user, passwordHash: hashPassword(u.password), role: u.role })),
      }),
    );
    for (const m of c.masters) {
      if (o.net) m.ip = (await o.net.addNode(m.name)).ip;
      m.args = ['master', '--config', c.masterYaml, '--listen', `${m.ip}:0`, '--data-dir', m.dataDir, ...(o.masterArgs ?? [])];
      m.nextEnv = o.firstEnv?.[m.name];
    }
    try {
      // The first leads (the others start once it does, as standbys); shards get every address.
      await c.launch(c.master);
      if (c.masters.length > 1) {
        await waitUntil(async () => (await c.leader()) === c.master, 30_000, 'the first master to lead');
        for (const m of c.masters.slice(1)) await c.launch(m);
      }
      // Settle every start before judging, so a failure leaves nothing running behind.
      const started = await Promise.allSettled(Array.from({ length: n }, () => c.addShard()));
      const failed = started.find((x) => x.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
    } catch (err) {
      await c.cleanup();
      throw err;
    }
    return c;
  }

  /** Starts one more shard (it joins with no range until a rebalance); `env` is for its first start only. */
  async addShard(env?: NodeJS.ProcessEnv): Promise<Server> {
    // Named before any await, so shards started together get distinct names.
    const i = ++this.shardCount;
    const name = `shard${i}`;
    const ip = this.o.net ? (await this.o.net.addNode(name)).ip : '127.0.0.1';
    const dataDir = this.o.shardDataDirs?.[i - 1] ?? join(this.dir, name);
    const s: Server = {
      name,
      role: 'shard',
      ip,
      port: 0,
      address: '',
      dataDir,
      paused: false,
      starts: 0,
      nextEnv: { ...this.o.firstEnv?.[name], ...env },
      args: ['shard', '--listen', `${ip}:0`, '--data-dir', dataDir, '--master', this.masterAddress, '--server-credential-file', this.credFile, '--heartbeat-interval-ms', '250'],
    };
    this.shards.push(s);
    await this.launch(s);
    return s;
  }

  /** Starts the server (again, on its known port) and waits for its "listening" line. */
  private async launch(s: Server): Promise<Proc> {
    const args = s.port ? s.args.map((a, i) => (s.args[i - 1] === '--listen' ? `${s.ip}:${s.port}` : a)) : s.args;
    const extra = s.nextEnv && Object.keys(s.nextEnv).length ? s.nextEnv : undefined;
    s.nextEnv = undefined;
    s.paused = false;
    s.starts++;
    const logs: Proc['logs'] = [];
    const net = this.o.net;
    const l = launchCairn({
      name: s.name,
      args,
      bin: CAIRN_BIN,
      env: { ...process.env, ...this.env, ...extra },
      logFile: join(this.dir, 'logs', `${s.name}.log`),
      note: `--- start #${s.starts}${extra ? `, extra environment: ${JSON.stringify(extra)}` : ''}`,
      wrap: net ? (argv) => net.wrap(s.name, argv) : undefined,
      readyTimeoutMs: this.o.readyTimeoutMs,
      onLine: (line) => {
        try {
          logs.push(JSON.parse(line));
        } catch {
          logs.push({ message: line });
        }
      },
    });
    const proc: Proc = { name: s.name, args, child: l.child, port: 0, address: '', logs, exited: l.exited.then((x) => x.code) };
    s.proc = proc;
    const address = await l.listening;
    proc.address = s.address = address;
    proc.port = s.port = Number(address.slice(address.lastIndexOf(':') + 1));
    return proc;
  }

  isRunning(s: Server): boolean {
    const c = s.proc?.child;
    return !!c && c.exitCode === null && c.signalCode === null;
  }

  /** Resolves when the current process exits (for a failpoint that kills it). */
  async exited(s: Server): Promise<void> {
    await s.proc?.exited;
  }

  /** Stops the process with a signal (SIGTERM: a clean shutdown) and waits for it; returns the exit code. */
  async stop(s: Server, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (!this.isRunning(s)) return s.proc?.child.exitCode ?? null;
    if (s.paused && signal !== 'SIGKILL') this.resume(s);
    s.proc!.child.kill(signal);
    const code = await s.proc!.exited;
    s.paused = false;
    return code;
  }

  /** SIGKILL: no cleanup, no flush. Resolves once the process is gone. */
  async kill(s: Server): Promise<void> {
    await this.stop(s, 'SIGKILL');
  }

  /**
   * Starts a stopped server again on the same address and data dir, with the
   * cluster's environment plus `env`. A port that lingers after a kill
   * (EADDRINUSE) is tried again a few times.
   */
  async restart(s: Server, env?: NodeJS.ProcessEnv): Promise<Proc> {
    if (this.isRunning(s)) return s.proc!;
    for (let attempt = 0; ; attempt++) {
      s.nextEnv = env;
      try {
        return await this.launch(s);
      } catch (err) {
        if (attempt >= 4 || !/EADDRINUSE/.test((err as Error).message)) throw err;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  pause(s: Server): void {
    if (!this.isRunning(s) || s.paused) return;
    s.proc!.child.kill('SIGSTOP');
    s.paused = true;
  }

  resume(s: Server): void {
    if (!this.isRunning(s) || !s.paused) return;
    s.proc!.child.kill('SIGCONT');
    s.paused = false;
  }

  /** Log lines (parsed) of the server's current start. */
  logs(s: Server): Array<Record<string, unknown>> {
    return s.proc?.logs ?? [];
  }

  /** Until every shard started is up and the cluster has a map. */
  waitReady(timeoutMs = 30_000): Promise<void> {
    // A cluster on TLS is asked over TLS, trusting the CA its processes (and ctl) trust.
    const ca = this.env.CAIRN_TLS_CA || process.env.CAIRN_TLS_CA;
    return waitReady(this.masterAddress, this.shards.length, timeoutMs, ca ? { ca: readFileSync(ca) } : undefined);
  }

  /** Resumes what is paused and starts what is down. */
  async reviveAll(): Promise<void> {
    for (const s of this.all) this.resume(s);
    for (const s of this.all) if (!this.isRunning(s)) await this.restart(s);
  }

  /** Stops every process, shards first. */
  async stopAll(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    for (const s of this.all) this.resume(s);
    await Promise.all(this.shards.map((s) => this.stop(s, signal)));
    await Promise.all(this.masters.map((m) => this.stop(m, signal)));
  }

  /** Kills everything, and removes the run directory when the cluster made it. */
  async cleanup(): Promise<void> {
    await this.stopAll('SIGKILL');
    if (this.ownDir) await rm(this.dir, { recursive: true, force: true });
  }
}
