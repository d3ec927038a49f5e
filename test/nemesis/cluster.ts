/**
 * The nemesis's cluster: real `cairn master` and `cairn shard` processes
 * (the built CLI in dist/), each with its own LevelDB under one run
 * directory, that the nemesis kills (SIGKILL), pauses (SIGSTOP / SIGCONT),
 * restarts on the same address and data dir, and — with a NetnsLab — cuts
 * off from each other. Every process's log goes to <dir>/logs/<name>.log.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import { hashPassword } from '../../services/common/auth.js';
import { CAIRN_BIN } from '../harness/cluster.js';
import { TEST_CREDENTIAL, USERS } from '../harness/inproc.js';
import type { NetnsLab } from './netns.js';

export interface Node {
  name: string;
  role: 'master' | 'shard';
  /** The IP the process listens on: 127.0.0.1, or its namespace's address. */
  ip: string;
  /** Known once the process first reported "listening"; kept across restarts. */
  port: number;
  address: string;
  args: string[];
  child?: ChildProcess;
  exited?: Promise<void>;
  /** True while SIGSTOPped. */
  paused: boolean;
  /** How many times the process was started. */
  starts: number;
  /** Extra environment for the next start only (e.g. CAIRN_FAILPOINTS); a restart runs without it. */
  nextEnv?: NodeJS.ProcessEnv;
}

export interface ClusterOptions {
  dir: string;
  shards: number;
  /** Network namespaces for partitions; loopback without. */
  net?: NetnsLab;
  /** Extra environment for every process. */
  env?: NodeJS.ProcessEnv;
  /** Extra environment for the first start of one process, by name (master, shard1, …). */
  firstEnv?: Record<string, NodeJS.ProcessEnv>;
}

const log_ = (w: WriteStream, line: string) => w.write(line + '\n');

export class NemesisCluster {
  readonly master: Node;
  readonly shards: Node[] = [];
  private readonly logs = new Map<string, WriteStream>();
  private readonly credFile: string;
  private shardCount = 0;

  private constructor(private readonly o: ClusterOptions) {
    this.credFile = join(o.dir, 'credential');
    this.master = { name: 'master', role: 'master', ip: '127.0.0.1', port: 0, address: '', args: [], paused: false, starts: 0 };
  }

  get masterAddress(): string {
    return this.master.address;
  }

  get all(): Node[] {
    return [this.master, ...this.shards];
  }

  static async start(o: ClusterOptions): Promise<NemesisCluster> {
    mkdirSync(join(o.dir, 'logs'), { recursive: true });
    const c = new NemesisCluster(o);
    await writeFile(c.credFile, TEST_CREDENTIAL + '\n', { mode: 0o600 });
    const masterYaml = join(o.dir, 'master.yaml');
    await writeFile(
      masterYaml,
      stringify({
        dataDir: join(o.dir, 'master'),
        expectShards: o.shards,
        serverCredentialFile: c.credFile,
        heartbeatIntervalMs: 250,
        shardDownAfterMs: 2000,
        clients: USERS.map((u) => ({ user: u.user, passwordHash: hashPassword(u.password), role: u.role })),
      }),
    );
    if (o.net) c.master.ip = (await o.net.addNode('master')).ip;
    c.master.args = ['master', '--config', masterYaml, '--listen', `${c.master.ip}:0`];
    c.master.nextEnv = o.firstEnv?.master;
    try {
      await c.launch(c.master);
      // Settle every start before judging, so a failure leaves nothing running behind.
      const started = await Promise.allSettled(Array.from({ length: o.shards }, () => c.addShard()));
      const failed = started.find((x) => x.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
    } catch (err) {
      await c.stopAll();
      throw err;
    }
    return c;
  }

  /** Starts one more shard (it joins with no range until a rebalance); `env` is for its first start only. */
  async addShard(env?: NodeJS.ProcessEnv): Promise<Node> {
    // Named before any await, so shards started together get distinct names.
    const name = `shard${++this.shardCount}`;
    const ip = this.o.net ? (await this.o.net.addNode(name)).ip : '127.0.0.1';
    const n: Node = {
      name,
      role: 'shard',
      ip,
      port: 0,
      address: '',
      paused: false,
      starts: 0,
      nextEnv: env ?? this.o.firstEnv?.[name],
      args: ['shard', '--listen', `${ip}:0`, '--data-dir', join(this.o.dir, name), '--master', this.masterAddress, '--server-credential-file', this.credFile, '--heartbeat-interval-ms', '250'],
    };
    this.shards.push(n);
    await this.launch(n);
    return n;
  }

  private log(name: string): WriteStream {
    let w = this.logs.get(name);
    if (!w) {
      w = createWriteStream(join(this.o.dir, 'logs', `${name}.log`), { flags: 'a' });
      this.logs.set(name, w);
    }
    return w;
  }

  /** Starts the process (again, on its known port) and waits for its "listening" line. */
  private launch(n: Node): Promise<void> {
    const args = n.port ? n.args.map((a, i) => (n.args[i - 1] === '--listen' ? `${n.ip}:${n.port}` : a)) : n.args;
    const argv = [process.execPath, CAIRN_BIN, ...args];
    const [cmd, ...rest] = this.o.net ? this.o.net.wrap(n.name, argv) : argv;
    const child = spawn(cmd!, rest, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CAIRN_CONFIG: '', ...this.o.env, ...n.nextEnv } });
    if (n.nextEnv) log_(this.log(n.name), `--- extra environment for this start: ${JSON.stringify(n.nextEnv)}`);
    n.nextEnv = undefined;
    n.child = child;
    n.paused = false;
    n.starts++;
    const log = this.log(n.name);
    log.write(`--- start #${n.starts} pid ${child.pid} ${new Date().toISOString()}\n`);
    n.exited = new Promise<void>((done) =>
      child.once('exit', (code, signal) => {
        log.write(`--- exit code=${code} signal=${signal} ${new Date().toISOString()}\n`);
        done();
      }),
    );
    child.stdout!.resume();
    const tail: string[] = [];
    const why = () => `(last lines: ${tail.join(' | ').slice(-1500)})`;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${n.name} did not report "listening" within 30 s ${why()}`)), 30_000);
      let listening = false;
      createInterface({ input: child.stderr! }).on('line', (line) => {
        log.write(line + '\n');
        if (!listening) tail.push(line.slice(0, 300)), tail.length > 8 && tail.shift();
        if (listening) return;
        let rec: { message?: string; address?: string };
        try {
          rec = JSON.parse(line);
        } catch {
          return;
        }
        if (rec.message === 'listening' && rec.address) {
          listening = true;
          clearTimeout(timer);
          n.address = rec.address;
          n.port = Number(rec.address.slice(rec.address.lastIndexOf(':') + 1));
          resolve();
        }
      });
      void n.exited!.then(() => {
        clearTimeout(timer);
        if (!listening) reject(new Error(`${n.name} exited before listening ${why()}`));
      });
    });
  }

  /** Resolves when the process exits (for a failpoint that kills it). */
  async exited(n: Node): Promise<void> {
    await n.exited;
  }

  isRunning(n: Node): boolean {
    return !!n.child && n.child.exitCode === null && n.child.signalCode === null;
  }

  /** SIGKILL: no cleanup, no flush. Resolves once the process is gone. */
  async kill(n: Node): Promise<void> {
    if (!this.isRunning(n)) return;
    n.child!.kill('SIGKILL');
    await n.exited;
    n.paused = false;
  }

  async restart(n: Node): Promise<void> {
    if (this.isRunning(n)) return;
    // The port may linger for a moment after a kill; retry the start a few times.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.launch(n);
        return;
      } catch (err) {
        if (attempt >= 4) throw err;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  pause(n: Node): void {
    if (!this.isRunning(n) || n.paused) return;
    n.child!.kill('SIGSTOP');
    n.paused = true;
  }

  resume(n: Node): void {
    if (!this.isRunning(n) || !n.paused) return;
    n.child!.kill('SIGCONT');
    n.paused = false;
  }

  /** Resumes what is paused and starts what is down. */
  async reviveAll(): Promise<void> {
    for (const n of this.all) this.resume(n);
    for (const n of this.all) if (!this.isRunning(n)) await this.restart(n);
  }

  async stopAll(): Promise<void> {
    for (const n of this.all) this.resume(n);
    await Promise.all(this.all.map((n) => this.kill(n)));
    await Promise.all([...this.logs.values()].map((w) => new Promise((r) => w.end(r))));
    this.logs.clear();
  }
}
