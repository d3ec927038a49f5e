/**
 * An in-process cluster for tests: a real master and real shards, each with
 * its own LevelDB in a temp dir and its own gRPC server on 127.0.0.1:0, all
 * in the Jest process. Tests that kill processes use cluster.ts instead.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import winston from 'winston';
import { hashPassword } from '../../services/common/auth.js';
import type { MasterOptions } from '../../services/master/master.js';
import { startMasterServer, type RunningMaster } from '../../services/master/server.js';
import { startShardServer, type RunningShard } from '../../services/shard/server.js';
import { DEFAULT_LIMITS, type Limits } from '../../services/shard/validate.js';
import type { Cluster, ClusterServer } from './cluster.js';

export const TEST_CREDENTIAL = 'test-server-credential-0123456789';

export interface TestUser {
  user: string;
  password: string;
  role: 'r' | 'rw' | 'admin';
}

export const USERS: TestUser[] = [
  { user: 'admin', password: 'admin-pass', role: 'admin' },
  { user: 'writer', password: 'writer-pass', role: 'rw' },
  { user: 'reader', password: 'reader-pass', role: 'r' },
];

let hashedUsers: Array<{ user: string; passwordHash: string; role: 'r' | 'rw' | 'admin' }> | undefined;
const clients = () => (hashedUsers ??= USERS.map((u) => ({ user: u.user, passwordHash: hashPassword(u.password), role: u.role })));

export const quietLogger = () => winston.createLogger({ silent: true, transports: [new winston.transports.Console()] });

/** A logger that keeps its records (parsed) in `into`. */
export const recordingLogger = (into: Array<Record<string, unknown>>) =>
  winston.createLogger({
    format: winston.format.json(),
    transports: [
      new winston.transports.Stream({
        stream: new Writable({
          write(chunk: Buffer, _enc, done) {
            into.push(JSON.parse(chunk.toString()));
            done();
          },
        }),
      }),
    ],
  });

export interface InProcCluster {
  dir: string;
  master: RunningMaster;
  shards: RunningShard[];
  masterAddress: string;
  limits: Limits;
  addShard(listen?: string): Promise<RunningShard>;
  /** Starts a stopped shard again on its data directory, in its place in `shards` (not waiting for it to register). */
  restartShard(stopped: RunningShard): Promise<RunningShard>;
  /** Starts the (stopped) master again on its address and data directory. */
  restartMaster(): Promise<RunningMaster>;
  stop(): Promise<void>;
}

export async function startInProcCluster(
  o: {
    shards?: number;
    expectShards?: number;
    limits?: Partial<Limits>;
    requireApproval?: boolean;
    /** Each server's logger, by name (master, shard1, …); default silent. */
    logger?: (name: string) => winston.Logger;
    /** Opens the master's durable state at each (re)start; default: LevelDB in its data directory. */
    openMasterState?: MasterOptions['openState'];
  } = {},
): Promise<InProcCluster> {
  const n = o.shards ?? 2;
  const dir = await mkdtemp(join(tmpdir(), 'cairn-test-'));
  const logger = o.logger ?? quietLogger;
  const limits = { ...DEFAULT_LIMITS, ...o.limits };
  const startMaster = (listen: string) => startMasterServer({
    listen,
    dataDir: join(dir, 'master'),
    serverCredential: TEST_CREDENTIAL,
    clients: clients(),
    expectShards: o.expectShards ?? n,
    tokenTtlSeconds: 900,
    heartbeatIntervalMs: 200,
    shardDownAfterMs: 1500,
    maxMessageBytes: limits.maxMessageBytes,
    requireApproval: o.requireApproval,
    log: logger('master'),
    openState: o.openMasterState,
  });
  const master = await startMaster('127.0.0.1:0');
  const shards: RunningShard[] = [];
  let count = 0;
  const startShard = (dataDir: string, listen = '127.0.0.1:0') =>
    startShardServer({ listen, dataDir, master: master.address, serverCredential: TEST_CREDENTIAL, heartbeatIntervalMs: 200, limits, log: logger(dataDir.slice(dataDir.lastIndexOf('/') + 1)) });
  const addShard = async (listen = '127.0.0.1:0') => {
    count += 1;
    const s = await startShard(join(dir, `shard${count}`), listen);
    shards.push(s);
    await s.registered;
    return s;
  };
  // Start the first shards together: the master splits the space once all have registered.
  await Promise.all(Array.from({ length: n }, () => addShard()));
  await waitFor(() => shards.every((s) => s.node.map.epoch > 0n), 10_000, 'shards to receive the first map');
  const cluster: InProcCluster = {
    dir,
    master,
    shards,
    masterAddress: master.address,
    limits,
    addShard,
    async restartShard(stopped) {
      const s = await startShard(stopped.node.store.dir);
      shards[shards.indexOf(stopped)] = s;
      return s;
    },
    async restartMaster() {
      return (cluster.master = await startMaster(master.address));
    },
    async stop() {
      for (const s of shards) await s.stop(1000).catch(() => undefined);
      await cluster.master.stop(1000).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
  return cluster;
}

/** A server of the in-process driver: its current RunningMaster / RunningShard, and its log records. */
export interface InProcServer extends ClusterServer {
  running?: RunningMaster | RunningShard;
  logs: Array<Record<string, unknown>>;
}

/**
 * The in-process driver of the cluster interface (cluster.ts): the servers
 * of startInProcCluster, by name, with their logs recorded. It cannot pause
 * a server, and its kill is a stop with no grace.
 */
export class InProcDriver implements Cluster<InProcServer> {
  readonly master: InProcServer;
  readonly shards: InProcServer[];

  private constructor(
    readonly inner: InProcCluster,
    private readonly logsOf: Map<string, Array<Record<string, unknown>>>,
  ) {
    this.master = this.server('master', 'master', inner.master.address, join(inner.dir, 'master'), inner.master);
    this.shards = inner.shards.map((s, i) => this.server(`shard${i + 1}`, 'shard', s.address, s.node.store.dir, s));
  }

  static async start(o: Omit<Parameters<typeof startInProcCluster>[0] & object, 'logger'> = {}): Promise<InProcDriver> {
    const logsOf = new Map<string, Array<Record<string, unknown>>>();
    const logger = (name: string) => {
      if (!logsOf.has(name)) logsOf.set(name, []);
      return recordingLogger(logsOf.get(name)!);
    };
    return new InProcDriver(await startInProcCluster({ ...o, logger }), logsOf);
  }

  private server(name: string, role: 'master' | 'shard', address: string, dataDir: string, running: RunningMaster | RunningShard): InProcServer {
    if (!this.logsOf.has(name)) this.logsOf.set(name, []);
    return { name, role, address, dataDir, running, logs: this.logsOf.get(name)! };
  }

  get dir(): string {
    return this.inner.dir;
  }

  get masterAddress(): string {
    return this.inner.masterAddress;
  }

  async addShard(): Promise<InProcServer> {
    const s = await this.inner.addShard();
    const server = this.server(`shard${this.inner.shards.length}`, 'shard', s.address, s.node.store.dir, s);
    this.shards.push(server);
    return server;
  }

  isRunning(s: InProcServer): boolean {
    return !!s.running;
  }

  async stop(s: InProcServer, graceMs = 1000): Promise<void> {
    const r = s.running;
    s.running = undefined;
    await r?.stop(graceMs);
  }

  kill(s: InProcServer): Promise<void> {
    return this.stop(s, 0);
  }

  pause(s: InProcServer): void {
    throw new Error(`the in-process driver cannot pause a server (${s.name})`);
  }

  resume(s: InProcServer): void {
    this.pause(s);
  }

  async restart(s: InProcServer): Promise<void> {
    if (s.running) return;
    if (s.role === 'master') {
      s.running = await this.inner.restartMaster();
      return;
    }
    // restartShard puts the new shard in the place of the stopped one.
    const i = this.shards.indexOf(s);
    s.running = await this.inner.restartShard(this.inner.shards[i]!);
  }

  logs(s: InProcServer): ReadonlyArray<Record<string, unknown>> {
    return s.logs;
  }

  async waitReady(timeoutMs = 10_000): Promise<void> {
    await waitFor(() => this.inner.shards.every((s) => s.node.map.epoch > 0n) && this.shards.every((s) => s.running), timeoutMs, 'every shard to hold a map');
  }

  async cleanup(): Promise<void> {
    await this.inner.stop();
  }
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
