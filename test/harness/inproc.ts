/**
 * An in-process cluster for tests: a real master and real shards, each with
 * its own LevelDB in a temp dir and its own gRPC server on 127.0.0.1:0, all
 * in the Jest process. Tests that kill processes use cluster.ts instead.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import winston from 'winston';
import { hashPassword } from '../../services/common/auth.js';
import { startMasterServer, type RunningMaster } from '../../services/master/server.js';
import { startShardServer, type RunningShard } from '../../services/shard/server.js';
import { DEFAULT_LIMITS, type Limits } from '../../services/shard/validate.js';

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

export interface InProcCluster {
  dir: string;
  master: RunningMaster;
  shards: RunningShard[];
  masterAddress: string;
  limits: Limits;
  addShard(listen?: string): Promise<RunningShard>;
  /** Starts a stopped shard again on its data directory, in its place in `shards` (not waiting for it to register). */
  restartShard(stopped: RunningShard): Promise<RunningShard>;
  stop(): Promise<void>;
}

export async function startInProcCluster(
  o: { shards?: number; expectShards?: number; limits?: Partial<Limits>; requireApproval?: boolean } = {},
): Promise<InProcCluster> {
  const n = o.shards ?? 2;
  const dir = await mkdtemp(join(tmpdir(), 'cairn-test-'));
  const log = quietLogger();
  const limits = { ...DEFAULT_LIMITS, ...o.limits };
  const master = await startMasterServer({
    listen: '127.0.0.1:0',
    dataDir: join(dir, 'master'),
    serverCredential: TEST_CREDENTIAL,
    clients: clients(),
    expectShards: o.expectShards ?? n,
    tokenTtlSeconds: 900,
    heartbeatIntervalMs: 200,
    shardDownAfterMs: 1500,
    maxMessageBytes: limits.maxMessageBytes,
    requireApproval: o.requireApproval,
    log,
  });
  const shards: RunningShard[] = [];
  let count = 0;
  const startShard = (dataDir: string, listen = '127.0.0.1:0') =>
    startShardServer({ listen, dataDir, master: master.address, serverCredential: TEST_CREDENTIAL, heartbeatIntervalMs: 200, limits, log });
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
  return {
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
    async stop() {
      for (const s of shards) await s.stop(1000).catch(() => undefined);
      await master.stop(1000).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
