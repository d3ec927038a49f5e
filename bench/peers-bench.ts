/**
 * bench:peers — Cairn beside its peers and floors, in one run on one machine,
 * interleaved so that noise hits every side of a comparison alike:
 *
 * - cairn: a master and 3 shards (real child processes, test/harness/cluster.ts)
 *   driven through the SDK;
 * - etcd: `etcd` (Debian's etcd-server) as one local member, driven through its
 *   gRPC API (bench/proto/etcdserverpb) with the same grpc-js client code;
 * - cairn3: a second Cairn cluster like the first at replication factor 3
 *   (put and batch1000 only: the rf3 targets);
 * - etcd3: a 3-member etcd cluster (three local processes), driven by the same
 *   KV client code as the 1-member etcd (put and batch1000 only);
 * - redis: `redis-server`, in memory (no RDB/AOF), over a pipelined RESP client;
 * - level: raw classic-level in this process (the storage floor);
 * - echo: a no-op grpc-js server (bench/echo-server.ts) built like Cairn's (the
 *   transport floor).
 *
 * Workloads: single-row put and point get (64 in flight), batched writes of 100
 * and 1,000 rows (4 in flight; etcd: a Txn of as many puts, up to its 128-op
 * limit), and scans of 1,000-row pages from a random start (4 in flight); then,
 * Cairn alone, a selective prefix scan (1 row in 1,000 matches, at least 200k
 * rows in the cluster) timed against a full scan of the same rows, and a
 * rebalance transfer (a 4th shard joins; rows moved per second). Every line is
 * the median over runs: ops/s, rows/s, p50/p99 per call, server CPU per op from
 * /proc/<pid>/stat, ratios to each peer and floor, and issue 15's targets.
 *
 *   npm run build && npm run bench:peers            # 3 runs x 4 s: about 10 minutes
 *   npm run bench:peers -- --tiny                  # smoke: checks it works, says nothing about speed
 *
 * Missing etcd or redis is reported with how to install it, and the run goes
 * on without it. Nothing here asserts a time. See bench/README.md.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { credentials } from '@grpc/grpc-js';
import { ClassicLevel } from 'classic-level';
import { CairnClient } from '../services/client/index.js';
import { encodeScanToken } from '../services/client/router.js';
import { call, channelOptions } from '../services/common/grpc.js';
import { renderChart, seriesLabel, type ResultsFile } from './chart.js';
import { EchoServiceClient } from './gen/cairnbench/echo/v1/echo.js';
import { KVClient } from './gen/etcdserverpb/rpc.js';
import {
  CLK_TCK,
  childPids,
  fmtFix,
  fmtInt,
  fmtK,
  fmtMs,
  fmtRatio,
  freePort,
  freePorts,
  KeyGen,
  machineBusyTicks,
  median,
  nextValue,
  percentile,
  procSeconds,
  settle,
  table,
} from './lib/common.js';
import { RespConnection } from './lib/resp.js';

// ---------------------------------------------------------------------------
// Options

interface Options {
  seconds: number;
  warmupSeconds: number;
  /** Seconds of each workload on each system in an unmeasured pass before run 1 (JIT, heaps and LevelDB reach a steady state). */
  warmupPassSeconds: number;
  runs: number;
  settleSeconds: number;
  preloadRows: number;
  concurrency: number;
  batchConcurrency: number;
  scanConcurrency: number;
  scanPage: number;
  /** Rows the cluster holds at least for the selective prefix scan (filler is written up to it). */
  prefixRows: number;
  transfer: boolean;
  /** The SDK's Batch stream (the default); false sends every call as its own unary RPC. */
  batchStream: boolean;
  systems: Set<SeriesId>;
  workloads: Set<string> | null;
  out: string | null;
  chart: string | null;
  tiny: boolean;
}

/** A results row's `system`. */
type SystemName = 'cairn' | 'etcd' | 'redis' | 'level' | 'echo';
/**
 * What `--systems` names, and what a results row is looked up by: a system, or
 * its factor-3 / 3-member variant (system `cairn` with `replicationFactor: 3`,
 * system `etcd` with `members: 3`). Rows are keyed by this, never by system
 * alone, so the variants never shadow the factor-1 rows.
 */
type SeriesId = SystemName | 'cairn3' | 'etcd3';
/** Also the order systems are measured in (rotated run by run): each side of a comparison next to the other. */
const ALL_SERIES: SeriesId[] = ['cairn', 'etcd', 'cairn3', 'etcd3', 'redis', 'level', 'echo'];
/** The only workloads of cairn3 and etcd3: those of the rf3 targets (a full run stays about as long as it was). */
const RF3_WORKLOADS: ReadonlySet<string> = new Set(['put', 'batch1000']);

const USAGE = `usage: node dist/bench/peers-bench.js [--tiny] [--seconds N] [--runs N] [--warmup S] [--settle S]
         [--warmup-pass S] [--preload ROWS] [--concurrency N] [--batch-concurrency N] [--scan-concurrency N]
         [--prefix-rows N] [--systems cairn,etcd,cairn3,etcd3,redis,level,echo]
         [--workloads put,get,batch100,batch1000,scan,prefix]
         [--no-transfer] [--unary] [--out FILE.json] [--chart FILE.svg]
  --tiny                smoke check: 1 run x 0.3 s, 2,000 preloaded rows, no settling; writes no
                        results unless --out/--chart are given
  --seconds N           measured time per workload and system (default 4)
  --runs N              repeat everything N times; every number is the median (default 3)
  --warmup S            unmeasured warm-up before each measurement (default 0.5)
  --warmup-pass S       before run 1, run every workload on every system for S s, unmeasured,
                        so JIT, heaps and LevelDB reach a steady state (default 2; tiny: 0)
  --settle S            wait up to S s for the machine to go quiet before each measurement (default 3)
  --preload ROWS        rows written to every system first, read by get and scan (default 50000)
  --concurrency N       calls in flight for put and get (default 64)
  --batch-concurrency N batch calls in flight (default 4)
  --scan-concurrency N  scan calls in flight (default 4)
  --prefix-rows N       rows in the cluster for the selective prefix scan, at least (default 200000;
                        tiny: 5000); 1 in 1,000 of them matches the prefix
  --systems LIST        which systems to run (default all that are installed): cairn (replication
                        factor 1), etcd (1 member), cairn3 (a second Cairn cluster at replication
                        factor 3), etcd3 (a 3-member etcd cluster), redis, level, echo; cairn3 and
                        etcd3 run put and batch1000 only (the rf3 targets)
  --workloads LIST      which workloads to run (default all)
  --no-transfer         skip the rebalance transfer at the end
  --unary               the SDK sends each call as its own unary RPC (batch: false) instead of
                        coalescing them on its Batch streams: the before/after of that change
  --out FILE            results JSON (default bench/results/<date>.json)
  --chart FILE          chart SVG drawn from the results (default docs/bench-peers.svg)`;

function parseOptions(argv: string[]): Options {
  const tiny = argv.includes('--tiny');
  const o: Options = {
    seconds: tiny ? 0.3 : 4,
    warmupSeconds: tiny ? 0.05 : 0.5,
    warmupPassSeconds: tiny ? 0 : 2,
    runs: tiny ? 1 : 3,
    settleSeconds: tiny ? 0 : 3,
    preloadRows: tiny ? 2000 : 50_000,
    concurrency: 64,
    batchConcurrency: 4,
    scanConcurrency: 4,
    scanPage: 1000,
    prefixRows: tiny ? 5000 : 200_000,
    transfer: true,
    batchStream: true,
    systems: new Set(ALL_SERIES),
    workloads: null,
    out: tiny ? null : 'default',
    chart: tiny ? null : 'default',
    tiny,
  };
  const num = (flag: string, v: string | undefined, min: number, integer: boolean): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
      throw new Error(`${flag}: expected ${integer ? 'an integer' : 'a number'} >= ${min}, got ${v === undefined ? 'nothing' : JSON.stringify(v)}`);
    }
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--tiny':
        break;
      case '--seconds':
        o.seconds = num(flag, value(), 0.05, false);
        break;
      case '--warmup':
        o.warmupSeconds = num(flag, value(), 0, false);
        break;
      case '--warmup-pass':
        o.warmupPassSeconds = num(flag, value(), 0, false);
        break;
      case '--settle':
        o.settleSeconds = num(flag, value(), 0, false);
        break;
      case '--runs':
        o.runs = num(flag, value(), 1, true);
        break;
      case '--preload':
        o.preloadRows = num(flag, value(), 100, true);
        break;
      case '--concurrency':
        o.concurrency = num(flag, value(), 1, true);
        break;
      case '--batch-concurrency':
        o.batchConcurrency = num(flag, value(), 1, true);
        break;
      case '--scan-concurrency':
        o.scanConcurrency = num(flag, value(), 1, true);
        break;
      case '--prefix-rows':
        o.prefixRows = num(flag, value(), 1000, true);
        break;
      case '--systems': {
        const list = (value() ?? '').split(',').filter(Boolean);
        for (const s of list) if (!ALL_SERIES.includes(s as SeriesId)) throw new Error(`--systems: unknown system ${JSON.stringify(s)} (known: ${ALL_SERIES.join(', ')})`);
        o.systems = new Set(list as SeriesId[]);
        break;
      }
      case '--workloads':
        o.workloads = new Set((value() ?? '').split(',').filter(Boolean));
        break;
      case '--unary':
        o.batchStream = false;
        break;
      case '--no-transfer':
        o.transfer = false;
        break;
      case '--out':
        o.out = value() ?? null;
        break;
      case '--chart':
        o.chart = value() ?? null;
        break;
      case '--help':
      case '-h':
        console.log(USAGE);
        process.exit(0);
      default:
        throw new Error(`unknown argument ${JSON.stringify(a)}\n${USAGE}`);
    }
  }
  return o;
}

// ---------------------------------------------------------------------------
// Rows: 16-byte keys ("k" + 15 hex digits, random order), one 100-byte value

const VALUE_BYTES = 100;
const KEY_PREFIX = 'k';
const COLUMN = 'v';
/** etcd refuses a Txn of more operations than this (its --max-txn-ops, default 128). */
const ETCD_MAX_TXN_OPS = 128;

type OpName = 'put' | 'get' | 'batch' | 'scan';

interface Workload {
  id: string;
  op: OpName;
  rows: number;
  inflight: number;
  label: string;
}

/** Who a results row is of: the system, and which cluster of it. */
interface Series {
  id: SeriesId;
  /** The results row's `system`. */
  name: SystemName;
  /** Its name in the printed tables and the chart (seriesLabel: cairn, cairn rf3, etcd, etcd 3-member, …). */
  label: string;
  /** Cairn's replication factor (cairn rows only). */
  replicationFactor?: number;
  /** etcd's cluster size (etcd rows only). */
  members?: number;
  /** The workloads it runs, when not all it can. */
  workloads?: ReadonlySet<string>;
}

const series = (id: SeriesId, name: SystemName, extra: Omit<Series, 'id' | 'name' | 'label'> = {}): Series => ({
  id,
  name,
  label: seriesLabel({ system: name, ...extra }),
  ...extra,
});
const SERIES: Record<SeriesId, Series> = {
  cairn: series('cairn', 'cairn', { replicationFactor: 1 }),
  etcd: series('etcd', 'etcd', { members: 1 }),
  cairn3: series('cairn3', 'cairn', { replicationFactor: 3, workloads: RF3_WORKLOADS }),
  etcd3: series('etcd3', 'etcd', { members: 3, workloads: RF3_WORKLOADS }),
  redis: series('redis', 'redis'),
  level: series('level', 'level'),
  echo: series('echo', 'echo'),
};

/** What one system does for each kind of call. Each returns the rows it did. */
interface System extends Series {
  /** Server processes whose CPU counts as the system's; empty for in-process level. */
  pids: number[];
  /** Fresh keys for writes; the same sequence for every system. */
  keys: KeyGen;
  put?(key: string, value: Buffer): Promise<void>;
  get?(key: string): Promise<Buffer | undefined>;
  /** Rows per batch call this system can take (etcd: its Txn limit). */
  maxBatch?: number;
  batch?(rows: Array<[string, Buffer]>): Promise<void>;
  /** One page of up to `limit` rows from a random start; returns rows read. */
  scan?(limit: number, rand: KeyGen): Promise<number>;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------
// The systems

function levelSystem(db: ClassicLevel<string, Buffer>): System {
  const end = String.fromCharCode(KEY_PREFIX.charCodeAt(0) + 1);
  return {
    ...SERIES.level,
    pids: [],
    keys: new KeyGen(42),
    put: (key, value) => db.put(key, value),
    get: (key) => db.get(key),
    batch: (rows) => db.batch(rows.map(([key, value]) => ({ type: 'put' as const, key, value }))),
    async scan(limit, rand) {
      const it = db.iterator({ gte: rand.next(KEY_PREFIX), lt: end });
      try {
        return (await it.nextv(limit)).length;
      } finally {
        await it.close();
      }
    },
    close: () => db.close(),
  };
}

const GET_ONE = { columns: [COLUMN] };

function cairnSystem(id: 'cairn' | 'cairn3', db: CairnClient, pids: number[]): System {
  return {
    ...SERIES[id],
    pids,
    keys: new KeyGen(42),
    async put(key, value) {
      await db.put(key, { [COLUMN]: value });
    },
    async get(key) {
      // A point get: the newest value of one column of one row (as etcd's get is of one key).
      const cells = await db.get(key, GET_ONE);
      return cells[0]?.value;
    },
    async batch(rows) {
      await db.writeRows(rows.map(([row, value]) => ({ row, cells: { [COLUMN]: value } })));
    },
    async scan(limit, rand) {
      // Rows are placed by hash: start at a random hash, as the others start at a random key. Every row
      // here starts with KEY_PREFIX (the prefix workload, which adds others, runs after the runs), so this
      // is a full scan, sent as one (no prefix): a prefix would seek the row-key index row by row, which
      // costs ~10x a walk per row when the prefix matches everything (see NOTES, issue 15 item 3).
      const hash = (BigInt(rand.u32()) << 32n) | BigInt(rand.u32());
      const page = await db.scanPage('', { limit, resumeToken: encodeScanToken({ hash }) });
      return page.rows.length;
    },
    close: async () => db.close(),
  };
}

/**
 * etcd through its KV API, one member or several. The client talks to one
 * member, `address`: with 3 members, the leader (startEtcd finds it). A
 * follower would forward each write to the leader (one more hop, more CPU), so
 * this is etcd's fastest setup for writes; the leader does the work either way,
 * and `pids` (every member) is the server CPU counted.
 */
function etcdSystem(id: 'etcd' | 'etcd3', address: string, pids: number[]): System {
  const kv = new KVClient(address, credentials.createInsecure(), channelOptions(16 * 1024 * 1024));
  const opts = () => ({ timeoutMs: 30_000 });
  const prefixEnd = Buffer.from(String.fromCharCode(KEY_PREFIX.charCodeAt(0) + 1));
  return {
    ...SERIES[id],
    pids,
    keys: new KeyGen(42),
    maxBatch: ETCD_MAX_TXN_OPS,
    async put(key, value) {
      await call(kv, kv.put, { key: Buffer.from(key), value, lease: 0n, prevKv: false }, opts());
    },
    async get(key) {
      // Linearizable (the default), as Cairn's reads are.
      const res = await call(kv, kv.range, rangeReq(Buffer.from(key), Buffer.alloc(0), 0n), opts());
      return res.kvs[0]?.value;
    },
    async batch(rows) {
      const success = rows.map(([key, value]) => ({ requestPut: { key: Buffer.from(key), value, lease: 0n, prevKv: false } }));
      await call(kv, kv.txn, { success, failure: [] }, opts());
    },
    async scan(limit, rand) {
      const res = await call(kv, kv.range, rangeReq(Buffer.from(rand.next(KEY_PREFIX)), prefixEnd, BigInt(limit)), opts());
      return res.kvs.length;
    },
    close: async () => kv.close(),
  };
}

const rangeReq = (key: Buffer, rangeEnd: Buffer, limit: bigint) => ({
  key,
  rangeEnd,
  limit,
  revision: 0n,
  sortOrder: 0,
  sortTarget: 0,
  serializable: false,
  keysOnly: false,
  countOnly: false,
});

function redisSystem(conns: RespConnection[], pid: number): System {
  let rr = 0;
  const conn = () => conns[rr++ % conns.length]!;
  return {
    ...SERIES.redis,
    pids: [pid],
    keys: new KeyGen(42),
    async put(key, value) {
      await conn().send(['SET', key, value]);
    },
    async get(key) {
      return (await conn().send(['GET', key])) as Buffer | undefined;
    },
    async batch(rows) {
      const args: Array<string | Buffer> = ['MSET'];
      for (const [k, v] of rows) args.push(k, v);
      await conn().send(args);
    },
    // No scan: Redis keeps no key order (SCAN visits the whole table by hash bucket).
    close: async () => conns.forEach((c) => c.close()),
  };
}

function echoSystem(address: string, pid: number): System {
  const client = new EchoServiceClient(address, credentials.createInsecure(), channelOptions(16 * 1024 * 1024));
  return {
    ...SERIES.echo,
    pids: [pid],
    keys: new KeyGen(42),
    // A put-sized request (key + value) with a small answer, and a get-sized exchange (key in, key + value out).
    async put(key, value) {
      await call(client, client.echo, { payload: Buffer.concat([Buffer.from(key), value]), replyBytes: 8 }, { timeoutMs: 30_000 });
    },
    async get(key) {
      const res = await call(client, client.echo, { payload: Buffer.from(key), replyBytes: VALUE_BYTES }, { timeoutMs: 30_000 });
      return res.payload;
    },
    close: async () => client.close(),
  };
}

// ---------------------------------------------------------------------------
// Starting the servers

function installed(cmd: string): boolean {
  const r = spawnSync(cmd, ['--version'], { stdio: 'ignore' });
  return !r.error;
}

async function waitFor(what: string, timeoutMs: number, f: () => Promise<unknown>): Promise<void> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      await f();
      return;
    } catch (err) {
      last = err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${what} did not come up within ${timeoutMs} ms: ${(last as Error)?.message ?? last}`);
}

function exitedEarly(child: ChildProcess, name: string, log: string[]): Promise<never> {
  return new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`${name} exited with ${code}: ${log.slice(-5).join(' | ')}`))));
}

function captureLog(child: ChildProcess): string[] {
  const log: string[] = [];
  for (const s of [child.stdout, child.stderr]) if (s) createInterface({ input: s }).on('line', (l) => log.push(l) > 200 && log.shift());
  return log;
}

/**
 * Starts etcd: one member, or a cluster of `members` local processes on
 * 127.0.0.1 (free ports, one `--initial-cluster`, a data dir each under `dir`,
 * which main removes at the end), and waits until every member answers a
 * linearizable read. Returns every member's client address and pid, and the
 * leader's address (from the gRPC gateway's maintenance status). A member
 * that exits at once lost a port to another process between our pick and its
 * bind: the whole cluster is started again on new ports, once.
 */
async function startEtcd(dir: string, children: ChildProcess[], members = 1): Promise<{ addresses: string[]; pids: number[]; leader: string }> {
  for (let attempt = 1; ; attempt++) {
    const ports = await freePorts(2 * members);
    const tag = members === 1 ? 'etcd' : `etcd${members}-${attempt}`;
    const names = Array.from({ length: members }, (_, i) => (members === 1 ? 'bench' : `bench${i}`));
    const peerUrl = (i: number) => `http://127.0.0.1:${ports[2 * i + 1]}`;
    const initialCluster = names.map((n, i) => `${n}=${peerUrl(i)}`).join(',');
    const started = names.map((name, i) => {
      const client = ports[2 * i]!;
      const child = spawn(
        'etcd',
        [
          '--name', name,
          '--data-dir', join(dir, members === 1 ? tag : `${tag}/${name}`),
          '--listen-client-urls', `http://127.0.0.1:${client}`,
          '--advertise-client-urls', `http://127.0.0.1:${client}`,
          '--listen-peer-urls', peerUrl(i),
          '--initial-advertise-peer-urls', peerUrl(i),
          '--initial-cluster', initialCluster,
          '--initial-cluster-state', 'new',
          '--initial-cluster-token', `${tag}-${process.pid}`,
          '--max-txn-ops', String(ETCD_MAX_TXN_OPS),
          '--logger', 'zap',
          '--log-level', 'error',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      children.push(child);
      return { child, log: captureLog(child), address: `127.0.0.1:${client}` };
    });
    try {
      await Promise.all(
        started.map(async ({ child, log, address }, i) => {
          const kv = new KVClient(address, credentials.createInsecure());
          try {
            await Promise.race([
              waitFor(`etcd member ${names[i]}`, 30_000, () => call(kv, kv.range, rangeReq(Buffer.from('probe'), Buffer.alloc(0), 0n), { timeoutMs: 1000 })),
              exitedEarly(child, `etcd member ${names[i]}`, log),
            ]);
          } finally {
            kv.close();
          }
        }),
      );
      const addresses = started.map((m) => m.address);
      let leader = addresses[0]!;
      if (members > 1) {
        const status = await Promise.all(addresses.map((a) => etcdStatus(a)));
        const i = status.findIndex((st) => st.memberId !== '' && st.memberId === st.leader);
        if (i < 0) throw new Error(`no etcd member says it leads: ${JSON.stringify(status)}`);
        leader = addresses[i]!;
      }
      return { addresses, pids: started.map((m) => m.child.pid!), leader };
    } catch (err) {
      for (const m of started) if (m.child.exitCode === null) m.child.kill('SIGKILL');
      await Promise.all(started.map((m) => (m.child.exitCode === null && m.child.signalCode === null ? new Promise((r) => m.child.once('exit', r)) : undefined)));
      if (attempt >= 2 || !/exited with/.test((err as Error).message)) throw err;
    }
  }
}

/** A member's id and its leader's, from etcd's gRPC gateway (POST /v3/maintenance/status; 64-bit ids as decimal strings). */
async function etcdStatus(address: string): Promise<{ memberId: string; leader: string }> {
  const r = await fetch(`http://${address}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(5000) });
  if (!r.ok) throw new Error(`etcd ${address}: maintenance status answered ${r.status}`);
  const j = (await r.json()) as { header?: { member_id?: string }; leader?: string };
  return { memberId: String(j.header?.member_id ?? ''), leader: String(j.leader ?? '') };
}

async function startRedis(dir: string, children: ChildProcess[]): Promise<{ conns: RespConnection[]; pid: number }> {
  const port = await freePort();
  mkdirSync(join(dir, 'redis'), { recursive: true });
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', join(dir, 'redis'), '--protected-mode', 'no'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.push(child);
  const log = captureLog(child);
  const probe = async () => {
    const c = await RespConnection.open(port);
    try {
      await c.send(['PING']);
    } finally {
      c.close();
    }
  };
  await Promise.race([waitFor('redis-server', 20_000, probe), exitedEarly(child, 'redis-server', log)]);
  // 8 connections, pipelined: 64 calls in flight are 8 per connection.
  const conns = await Promise.all(Array.from({ length: 8 }, () => RespConnection.open(port)));
  return { conns, pid: child.pid! };
}

async function startEcho(root: string, children: ChildProcess[]): Promise<{ address: string; pid: number }> {
  const child = spawn(process.execPath, [join(root, 'dist/bench/echo-server.js')], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const log: string[] = [];
  const port = await Promise.race([
    new Promise<number>((resolvePort) =>
      createInterface({ input: child.stdout! }).on('line', (l) => {
        log.push(l);
        const m = /^listening (\d+)$/.exec(l);
        if (m) resolvePort(Number(m[1]));
      }),
    ),
    exitedEarly(child, 'echo-server', log),
  ]);
  createInterface({ input: child.stderr! }).on('line', (l) => log.push(l));
  return { address: `127.0.0.1:${port}`, pid: child.pid! };
}

// ---------------------------------------------------------------------------
// Driving one workload on one system

interface Sample {
  rows: number;
  calls: number;
  seconds: number;
  p50: number;
  p99: number;
  serverUs: number;
  clientUs: number;
  otherCores: number;
  misses: number;
}

async function drive(sys: System, w: Workload, durationMs: number, readKeys: string[], rand: KeyGen): Promise<{ rows: number; calls: number; seconds: number; lat: Float64Array; misses: number }> {
  let lat = new Float64Array(1 << 14);
  let calls = 0;
  let rows = 0;
  let misses = 0;
  const record = (ms: number): void => {
    if (calls === lat.length) {
      const bigger = new Float64Array(lat.length * 2);
      bigger.set(lat);
      lat = bigger;
    }
    lat[calls++] = ms;
  };
  const per = Math.min(w.rows, sys.maxBatch ?? Infinity);
  const start = performance.now();
  const end = start + durationMs;
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      const t0 = performance.now();
      if (w.op === 'put') {
        const key = sys.keys.next(KEY_PREFIX);
        const value = nextValue(VALUE_BYTES);
        await sys.put!(key, value);
        rows += 1;
      } else if (w.op === 'get') {
        const v = await sys.get!(readKeys[rand.u32() % readKeys.length]!);
        if (v === undefined || v.length !== VALUE_BYTES) misses += 1;
        rows += 1;
      } else if (w.op === 'batch') {
        const batch: Array<[string, Buffer]> = new Array(per);
        for (let i = 0; i < per; i++) batch[i] = [sys.keys.next(KEY_PREFIX), nextValue(VALUE_BYTES)];
        await sys.batch!(batch);
        rows += per;
      } else {
        const n = await sys.scan!(w.rows, rand); // not `rows += await …`: that reads `rows` before the await and loses the other workers' rows
        rows += n;
      }
      record(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: w.inflight }, worker));
  return { rows, calls, seconds: (performance.now() - start) / 1000, lat: lat.subarray(0, calls), misses };
}

async function measure(sys: System, w: Workload, o: Options, readKeys: string[], allPids: number[], settled: { seconds: number; busy: number }): Promise<Sample> {
  const s = await settle(allPids, o.settleSeconds);
  settled.seconds += s.seconds;
  if (!s.quiet) settled.busy += 1;
  const rand = new KeyGen(1234 + w.rows);
  if (o.warmupSeconds > 0) await drive(sys, w, o.warmupSeconds * 1000, readKeys, rand);
  const m0 = machineBusyTicks();
  const all0 = procSeconds(allPids);
  const srv0 = procSeconds(sys.pids);
  const c0 = process.cpuUsage();
  const r = await drive(sys, w, o.seconds * 1000, readKeys, rand);
  const c = process.cpuUsage(c0);
  const srv = procSeconds(sys.pids) - srv0;
  const all = procSeconds(allPids) - all0;
  const machine = (machineBusyTicks() - m0) / CLK_TCK;
  const self = (c.user + c.system) / 1e6;
  const sorted = Float64Array.from(r.lat).sort();
  const inProcess = sys.pids.length === 0;
  return {
    rows: r.rows,
    calls: r.calls,
    seconds: r.seconds,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    // In-process level has no server: its whole cost is this process (LevelDB's threads included).
    serverUs: inProcess ? self * 1e6 : srv * 1e6,
    clientUs: inProcess ? NaN : self * 1e6,
    otherCores: Math.max(0, (machine - self - all) / r.seconds),
    misses: r.misses,
  };
}

// ---------------------------------------------------------------------------
// Results

interface Line {
  /** Whose row (also its `system` and, for cairn and etcd, `replicationFactor` or `members` in the file). */
  series: Series;
  system: SystemName;
  op: OpName | 'transfer';
  workload: string;
  rowsPerCall: number;
  opsPerSec: number;
  rowsPerSec: number;
  p50Ms: number | null;
  p99Ms: number | null;
  serverCpuUsPerOp: number;
  serverCpuUsPerRow: number;
  clientCpuUsPerOp: number | null;
  otherCores: number;
  runs: Array<{ opsPerSec: number; rowsPerSec: number; serverCpuUsPerOp: number; otherCores: number }>;
}

const nn = (x: number): number | null => (Number.isFinite(x) ? Math.round(x * 1000) / 1000 : null);

function summarize(sys: Series, w: Workload, rowsPerCall: number, ss: Sample[]): Line {
  const per = (s: Sample) => ({
    opsPerSec: s.calls / s.seconds,
    rowsPerSec: s.rows / s.seconds,
    serverCpuUsPerOp: s.calls ? s.serverUs / s.calls : NaN,
    otherCores: s.otherCores,
  });
  const runs = ss.map(per);
  const med = (f: (s: Sample) => number) => median(ss.map(f));
  return {
    series: sys,
    system: sys.name,
    op: w.op,
    workload: w.id,
    rowsPerCall,
    opsPerSec: median(runs.map((r) => r.opsPerSec)),
    rowsPerSec: median(runs.map((r) => r.rowsPerSec)),
    p50Ms: med((s) => s.p50),
    p99Ms: med((s) => s.p99),
    serverCpuUsPerOp: median(runs.map((r) => r.serverCpuUsPerOp)),
    serverCpuUsPerRow: med((s) => (s.rows ? s.serverUs / s.rows : NaN)),
    clientCpuUsPerOp: med((s) => (s.calls ? s.clientUs / s.calls : NaN)),
    otherCores: Math.max(...ss.map((s) => s.otherCores)),
    runs,
  };
}

function toJson(l: Line): Record<string, unknown> {
  return {
    system: l.system,
    ...(l.series.replicationFactor !== undefined ? { replicationFactor: l.series.replicationFactor } : {}),
    ...(l.series.members !== undefined ? { members: l.series.members } : {}),
    op: l.op,
    workload: l.workload,
    rowsPerCall: l.rowsPerCall,
    opsPerSec: nn(l.opsPerSec),
    rowsPerSec: nn(l.rowsPerSec),
    p50Ms: l.p50Ms === null ? null : nn(l.p50Ms),
    p99Ms: l.p99Ms === null ? null : nn(l.p99Ms),
    serverCpuUsPerOp: nn(l.serverCpuUsPerOp),
    serverCpuUsPerRow: nn(l.serverCpuUsPerRow),
    clientCpuUsPerOp: l.clientCpuUsPerOp === null ? null : nn(l.clientCpuUsPerOp),
    otherCores: nn(l.otherCores),
    runs: l.runs.map((r) => ({ opsPerSec: nn(r.opsPerSec), rowsPerSec: nn(r.rowsPerSec), serverCpuUsPerOp: nn(r.serverCpuUsPerOp), otherCores: nn(r.otherCores) })),
  };
}

interface Target {
  target: string;
  value: number;
  goal: string;
  met: boolean | null;
}

/**
 * Issue 15's targets, exactly the rows of its table and in its order. Each
 * side is looked up by series (system and replication factor or members), so
 * the factor-1 targets compare cairn (factor 1) with the 1-member etcd, and
 * the rf3 ones cairn at factor 3 with the 3-member etcd. `met` is null when a
 * side was not measured (skipped, or not installed).
 */
function evaluateTargets(lines: Line[]): Array<Target & { figure: string }> {
  const get = (id: SeriesId, w: string): Line | undefined => lines.find((l) => l.series.id === id && l.workload === w);
  const ratio = (a: number | undefined, b: number | undefined) => (a ?? NaN) / (b ?? NaN);
  const atLeast = (x: number, goal: string) => ({ goal, ok: (v: number) => v >= x });
  const atMost = (x: number, goal: string) => ({ goal, ok: (v: number) => v <= x });
  const rows: Array<{ target: string; figure: string; value: number; goal: string; ok: (v: number) => boolean }> = [
    { target: 'put_ops_vs_etcd', figure: 'put ops/s, cairn ÷ etcd', value: ratio(get('cairn', 'put')?.opsPerSec, get('etcd', 'put')?.opsPerSec), ...atLeast(3, '≥ 3.0') },
    { target: 'put_cpu_vs_etcd', figure: 'put server CPU/op, cairn ÷ etcd', value: ratio(get('cairn', 'put')?.serverCpuUsPerOp, get('etcd', 'put')?.serverCpuUsPerOp), ...atMost(1, '≤ 1.0') },
    { target: 'get_ops_vs_etcd', figure: 'point get ops/s, cairn ÷ etcd', value: ratio(get('cairn', 'get')?.opsPerSec, get('etcd', 'get')?.opsPerSec), ...atLeast(5, '≥ 5.0') },
    { target: 'batch100_vs_level', figure: 'batch100 rows/s, cairn ÷ level batch', value: ratio(get('cairn', 'batch100')?.rowsPerSec, get('level', 'batch100')?.rowsPerSec), ...atLeast(0.4, '≥ 0.40') },
    { target: 'batch1000_vs_level', figure: 'batch1000 rows/s, cairn ÷ level batch', value: ratio(get('cairn', 'batch1000')?.rowsPerSec, get('level', 'batch1000')?.rowsPerSec), ...atLeast(0.4, '≥ 0.40') },
    { target: 'batch100_vs_etcd', figure: 'batch100 rows/s, cairn ÷ etcd Txn', value: ratio(get('cairn', 'batch100')?.rowsPerSec, get('etcd', 'batch100')?.rowsPerSec), ...atLeast(3, '≥ 3.0') },
    { target: 'batch1000_vs_etcd', figure: 'batch1000 rows/s, cairn ÷ etcd Txn', value: ratio(get('cairn', 'batch1000')?.rowsPerSec, get('etcd', 'batch1000')?.rowsPerSec), ...atLeast(3, '≥ 3.0') },
    { target: 'scan_vs_level', figure: 'scan rows/s, cairn ÷ level nextv', value: ratio(get('cairn', 'scan')?.rowsPerSec, get('level', 'scan')?.rowsPerSec), ...atLeast(0.5, '≥ 0.50') },
    // The time of a selective prefix scan ÷ the time of a full scan of the same rows (each line's ops/s is whole scans per second).
    { target: 'prefix_scan_vs_full', figure: 'selective prefix scan time ÷ full scan time', value: ratio(get('cairn', 'scan_all')?.opsPerSec, get('cairn', 'prefix_scan')?.opsPerSec), ...atMost(0.02, '≤ 0.02') },
    // Raw classic-level batch ingestion: level's 1,000-row batches.
    { target: 'transfer_vs_level', figure: 'transfer rows/s ÷ level batch1000 rows/s', value: ratio(get('cairn', 'transfer')?.rowsPerSec, get('level', 'batch1000')?.rowsPerSec), ...atLeast(0.5, '≥ 0.50') },
    { target: 'rf3_put_vs_etcd3', figure: 'put ops/s, cairn rf3 ÷ etcd 3-member', value: ratio(get('cairn3', 'put')?.opsPerSec, get('etcd3', 'put')?.opsPerSec), ...atLeast(1, '≥ 1.0') },
    { target: 'rf3_batch1000_vs_etcd3', figure: 'batch1000 rows/s, cairn rf3 ÷ etcd 3-member Txn', value: ratio(get('cairn3', 'batch1000')?.rowsPerSec, get('etcd3', 'batch1000')?.rowsPerSec), ...atLeast(1, '≥ 1.0') },
  ];
  return rows.map(({ target, figure, value, goal, ok }) => ({ target, figure, value, goal, met: Number.isFinite(value) ? ok(value) : null }));
}

/** A target's value in the file: 4 significant digits (a ratio like 0.0004 must not round to 0), null when not measured. */
const sig = (x: number): number | null => (Number.isFinite(x) ? Number(x.toPrecision(4)) : null);

// ---------------------------------------------------------------------------
// The selective prefix scan: GRR listing one client's files among every client's

const PREFIX_TREE = 'aff4:/C.';
const SELECTIVE_PREFIX = 'aff4:/C.1234/';

/**
 * Fills the cluster up to `o.prefixRows` rows (filler under other clients'
 * prefixes, sharing `aff4:/C.` with the matches so they are key-order
 * neighbours), with 1 row in 1,000 under SELECTIVE_PREFIX, then times, run by
 * run, a full scan (no prefix: every row in the cluster, pages of 1,000) and
 * the selective prefix scan (every match), alternating which goes first. One
 * "call" of each line is one whole scan: ops/s is scans per second, and their
 * ratio is the target prefix_scan_vs_full.
 */
async function measurePrefixScan(db: CairnClient, pids: number[], allPids: number[], o: Options, settled: { seconds: number; busy: number }): Promise<Line[]> {
  const scanAll = async (prefix: string): Promise<number> => {
    let n = 0;
    for await (const row of db.scan(prefix, { pageSize: 1000, columns: [COLUMN] })) if (row.cells.length > 0) n++;
    return n;
  };
  const p0 = performance.now();
  const before = await scanAll(''); // also warms the full-scan path
  const matches = Math.max(1, Math.round(Math.max(before, o.prefixRows) / 1000));
  const filler = Math.max(0, o.prefixRows - before - matches);
  const total = before + filler + matches;
  const gen = new KeyGen(99);
  const names: string[] = [];
  // Matches spread among the filler, so batches (and the shards' write paths) see them as the rest.
  for (let i = 0, m = 0; i < filler + matches; i++) {
    const match = m < matches && (i + 1) * matches >= (m + 1) * (filler + matches);
    names.push(match ? `${SELECTIVE_PREFIX}fs/os/${m++}` : `${PREFIX_TREE}${2000 + (i % 5000)}/fs/os/${gen.next('')}`);
  }
  for (let i = 0; i < names.length; i += 1000) {
    await db.writeRows(names.slice(i, i + 1000).map((row) => ({ row, cells: { [COLUMN]: Buffer.from(nextValue(VALUE_BYTES)) } })));
  }
  console.log(`prefix scan: ${fmtInt(total)} rows in the cluster (${fmtInt(filler)} written as filler), ${fmtInt(matches)} under ${SELECTIVE_PREFIX} (1 in ${fmtInt(total / Math.max(1, matches))}); set up in ${((performance.now() - p0) / 1000).toFixed(1)} s`);
  const full: Sample[] = [];
  const sel: Sample[] = [];
  const timeOne = async (prefix: string, expect: number): Promise<Sample> => {
    const s = await settle(allPids, o.settleSeconds);
    settled.seconds += s.seconds;
    if (!s.quiet) settled.busy += 1;
    const m0 = machineBusyTicks();
    const all0 = procSeconds(allPids);
    const srv0 = procSeconds(pids);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const n = await scanAll(prefix);
    const seconds = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const self = (c.user + c.system) / 1e6;
    const all = procSeconds(allPids) - all0;
    const machine = (machineBusyTicks() - m0) / CLK_TCK;
    if (n !== expect) console.log(`WARNING: the scan of ${JSON.stringify(prefix)} returned ${n} rows, expected ${expect}`);
    return {
      rows: n,
      calls: 1,
      seconds,
      p50: seconds * 1000,
      p99: seconds * 1000,
      serverUs: (procSeconds(pids) - srv0) * 1e6,
      clientUs: self * 1e6,
      otherCores: Math.max(0, (machine - self - all) / seconds),
      misses: n === expect ? 0 : 1,
    };
  };
  await scanAll(SELECTIVE_PREFIX); // warm
  for (let run = 1; run <= o.runs; run++) {
    if (run % 2) {
      full.push(await timeOne('', total));
      sel.push(await timeOne(SELECTIVE_PREFIX, matches));
    } else {
      sel.push(await timeOne(SELECTIVE_PREFIX, matches));
      full.push(await timeOne('', total));
    }
    console.log(`prefix scan run ${run}/${o.runs}: full scan ${full.at(-1)!.seconds.toFixed(3)} s, selective prefix ${(sel.at(-1)!.seconds * 1000).toFixed(1)} ms`);
  }
  return [
    summarize(SERIES.cairn, { id: 'scan_all', op: 'scan', rows: total, inflight: 1, label: '' }, total, full),
    summarize(SERIES.cairn, { id: 'prefix_scan', op: 'scan', rows: matches, inflight: 1, label: '' }, matches, sel),
  ];
}

// ---------------------------------------------------------------------------
// The rebalance transfer: a 4th shard joins, the planner moves about a quarter of the rows

async function measureTransfer(
  cluster: { addShard(): Promise<{ child: ChildProcess }>; masterAddress: string; master: { child: ChildProcess }; shards: Array<{ child: ChildProcess }> },
  admin: CairnClient,
): Promise<Line | null> {
  await cluster.addShard();
  const deadline = Date.now() + 30_000;
  while ((await admin.listServers()).length < 4) {
    if (Date.now() > deadline) throw new Error('the 4th shard did not register within 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  // Heartbeats carry the exact counts the planner balances: wait until the new shard is in them.
  await new Promise((r) => setTimeout(r, 1000));
  const pids = [cluster.master.child.pid!, ...cluster.shards.map((s) => s.child.pid!)];
  const cpu0 = procSeconds(pids);
  const t0 = performance.now();
  const started = await admin.startRebalance();
  if (!started.operationId) return null;
  const planned = started.plan?.moves ?? [];
  let moves: Array<{ state: string; rows?: bigint; bytes: bigint }> = [];
  for await (const msg of admin.watchOperation(started.operationId)) {
    moves = msg.moves as typeof moves;
    if (msg.done) break;
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = procSeconds(pids) - cpu0;
  const committed = moves.filter((m) => m.state === 'committed' || m.state === 'cleaned').length;
  const rows = planned.reduce((n, m) => n + Number(m.rows), 0);
  const bytes = planned.reduce((n, m) => n + Number(m.bytes), 0);
  console.log(`transfer: ${planned.length} move(s), ${committed} committed, ${fmtInt(rows)} rows (${(bytes / 1e6).toFixed(1)} MB) in ${seconds.toFixed(2)} s`);
  return {
    series: SERIES.cairn,
    system: 'cairn',
    op: 'transfer',
    workload: 'transfer',
    rowsPerCall: rows,
    opsPerSec: 1 / seconds,
    rowsPerSec: rows / seconds,
    p50Ms: null,
    p99Ms: null,
    serverCpuUsPerOp: cpu * 1e6,
    serverCpuUsPerRow: rows ? (cpu * 1e6) / rows : NaN,
    clientCpuUsPerOp: null,
    otherCores: NaN,
    runs: [{ opsPerSec: 1 / seconds, rowsPerSec: rows / seconds, serverCpuUsPerOp: cpu * 1e6, otherCores: NaN }],
  };
}

/** Waits until every range of the cluster has `factor` in-sync copies (a factor-3 cluster starts with one and adds the others). */
async function allInSync(master: string, admin: { user: string; password: string }, factor: number, timeoutMs: number): Promise<void> {
  const db = await CairnClient.connect({ master, user: admin.user, password: admin.password });
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ranges = await db.getRanges();
      if (ranges.length > 0 && ranges.every((r) => r.inSync.length >= factor)) return;
      if (Date.now() > deadline) throw new Error(`not every range had ${factor} in-sync copies within ${timeoutMs} ms: ${ranges.map((r) => r.inSync.length).join(', ')}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
  // The cluster harness resolves bin/cairn.js against the working directory.
  process.chdir(root);
  const { startProcCluster } = await import('../test/harness/cluster.js');
  const { USERS } = await import('../test/harness/inproc.js');

  const benchDir = await mkdtemp(join(tmpdir(), 'cairn-peers-'));
  process.env.TMPDIR = benchDir;
  const children: ChildProcess[] = [];
  const systems: System[] = [];
  let cluster: Awaited<ReturnType<typeof startProcCluster>> | undefined;
  /** The factor-3 cluster (cairn3). */
  let cluster3: Awaited<ReturnType<typeof startProcCluster>> | undefined;
  let admin: CairnClient | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      for (const s of systems) await s.close().catch(() => undefined);
      admin?.close();
      await cluster?.cleanup().catch(() => undefined);
      await cluster3?.cleanup().catch(() => undefined);
      for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
      for (const pid of childPids()) {
        try {
          // Only what we started: cairn processes of this checkout, etcd, redis, the echo server.
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      await rm(benchDir, { recursive: true, force: true }).catch(() => undefined);
    })());
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`\n${sig}: stopping the servers and removing ${benchDir}\n`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const started = performance.now();
  /** The run's time, in the results file. */
  const date = new Date().toISOString();
  try {
    const machine = `${cpus().length} cores (${cpus()[0]?.model ?? 'unknown CPU'}), Node ${process.version}`;
    console.log(`Cairn bench:peers — ${machine}, CLK_TCK ${CLK_TCK}`);
    console.log(o.batchStream ? "SDK: single-row calls coalesced on Batch streams (the default)" : "SDK: every call its own unary RPC (--unary)");
    console.log(
      `${o.tiny ? 'TINY mode (checks that it works; the numbers mean nothing): ' : ''}${o.runs} run(s) x ${o.seconds} s per workload and system, ` +
        `${o.warmupSeconds} s warm-up; rows: 16-byte key, 100-byte value; ${o.preloadRows.toLocaleString('en-US')} rows preloaded for get and scan`,
    );

    // ---- start what is there
    const notes: string[] = [];
    /** What makes some figures of this run suspect (printed at the end, and in the results file when any). */
    const warnings: string[] = [];
    if ((o.systems.has('etcd') || o.systems.has('etcd3')) && !installed('etcd')) {
      o.systems.delete('etcd');
      o.systems.delete('etcd3');
      notes.push('etcd is not installed: skipping it (1 and 3 members). Install it with `sudo apt-get install -y etcd-server` (Debian/Ubuntu; any etcd 3.4+ on PATH works).');
    }
    if (o.systems.has('redis') && !installed('redis-server')) {
      o.systems.delete('redis');
      notes.push('redis-server is not installed: skipping it. Install it with `sudo apt-get install -y redis-server` (Debian/Ubuntu; any Redis 6+ on PATH works).');
    }
    if (o.workloads && ![...RF3_WORKLOADS].some((w) => o.workloads!.has(w))) {
      for (const id of ['cairn3', 'etcd3'] as const) {
        if (o.systems.delete(id)) console.log(`${id}: not started (it runs only ${[...RF3_WORKLOADS].join(', ')}, and --workloads has neither)`);
      }
    }
    for (const n of notes) console.log(`NOTE: ${n}`);

    const writer = USERS.find((u) => u.role === 'rw')!;
    if (o.systems.has('cairn')) {
      cluster = await startProcCluster({ shards: 3 });
      const db = await CairnClient.connect({ master: cluster.masterAddress, user: writer.user, password: writer.password, batch: o.batchStream });
      const pids = [cluster.master, ...cluster.shards].map((p) => p.child.pid!);
      systems.push(cairnSystem('cairn', db, pids));
      console.log(`cairn: master ${cluster.masterAddress}, shards ${cluster.shards.map((s) => s.address).join(', ')}`);
    }
    if (o.systems.has('etcd')) {
      const e = await startEtcd(benchDir, children);
      systems.push(etcdSystem('etcd', e.leader, e.pids));
      console.log(`etcd: ${e.leader} (${spawnSync('etcd', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]})`);
    }
    if (o.systems.has('cairn3')) {
      // The same harness cluster at replication factor 3: 3 shards, so every range has a copy on each
      // (the shard's default lease and ack timeout, whatever this shell has set, as bench:replication does).
      delete process.env.CAIRN_REPLICA_LEASE_MS;
      delete process.env.CAIRN_REPLICA_ACK_TIMEOUT_MS;
      const p0 = performance.now();
      cluster3 = await startProcCluster({ shards: 3, masterArgs: ['--replication-factor', '3'] });
      await allInSync(cluster3.masterAddress, USERS.find((u) => u.role === 'admin')!, 3, 60_000);
      const db = await CairnClient.connect({ master: cluster3.masterAddress, user: writer.user, password: writer.password, batch: o.batchStream });
      const pids = [cluster3.master, ...cluster3.shards].map((p) => p.child.pid!);
      systems.push(cairnSystem('cairn3', db, pids));
      console.log(
        `cairn rf3: master ${cluster3.masterAddress}, shards ${cluster3.shards.map((s) => s.address).join(', ')}; ` +
          `every range with 3 in-sync copies after ${((performance.now() - p0) / 1000).toFixed(1)} s`,
      );
    }
    let etcd3Leader: string | undefined;
    if (o.systems.has('etcd3')) {
      const e = await startEtcd(benchDir, children, 3);
      etcd3Leader = e.leader;
      systems.push(etcdSystem('etcd3', e.leader, e.pids));
      console.log(`etcd 3-member: ${e.addresses.join(', ')}; the client talks to the leader, ${e.leader}`);
    }
    if (o.systems.has('redis')) {
      const r = await startRedis(benchDir, children);
      systems.push(redisSystem(r.conns, r.pid));
      console.log(`redis: pid ${r.pid} (${spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout.trim().split(' ').slice(0, 3).join(' ')}), no persistence`);
    }
    if (o.systems.has('level')) {
      const db = new ClassicLevel<string, Buffer>(join(benchDir, 'level'), { keyEncoding: 'utf8', valueEncoding: 'buffer' });
      await db.open();
      systems.push(levelSystem(db));
    }
    if (o.systems.has('echo')) {
      const e = await startEcho(root, children);
      systems.push(echoSystem(e.address, e.pid));
    }
    // Measured in ALL_SERIES order (rotated run by run), whatever order they started in.
    systems.sort((a, b) => ALL_SERIES.indexOf(a.id) - ALL_SERIES.indexOf(b.id));
    const allPids = systems.flatMap((s) => s.pids);

    // ---- preload the rows get and scan read: same keys and values everywhere
    const preloadGen = new KeyGen(7);
    const readKeys = Array.from({ length: o.preloadRows }, () => preloadGen.next(KEY_PREFIX));
    const preloadValues = readKeys.map(() => Buffer.from(nextValue(VALUE_BYTES)));
    for (const sys of systems) {
      if (!sys.batch || (sys.workloads && !sys.workloads.has('get') && !sys.workloads.has('scan'))) continue;
      const p0 = performance.now();
      const per = Math.min(1000, sys.maxBatch ?? Infinity);
      let next = 0;
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          while (next < readKeys.length) {
            const from = next;
            next = Math.min(readKeys.length, next + per);
            const rows: Array<[string, Buffer]> = [];
            for (let i = from; i < next; i++) rows.push([readKeys[i]!, preloadValues[i]!]);
            await sys.batch!(rows);
          }
        }),
      );
      console.log(`preloaded ${readKeys.length.toLocaleString('en-US')} rows into ${sys.label} in ${((performance.now() - p0) / 1000).toFixed(1)} s`);
    }

    const workloads: Workload[] = [
      { id: 'put', op: 'put', rows: 1, inflight: o.concurrency, label: `put 1 row, ${o.concurrency} in flight` },
      { id: 'get', op: 'get', rows: 1, inflight: o.concurrency, label: `point get, ${o.concurrency} in flight` },
      { id: 'batch100', op: 'batch', rows: 100, inflight: o.batchConcurrency, label: `batch of 100, ${o.batchConcurrency} in flight` },
      { id: 'batch1000', op: 'batch', rows: 1000, inflight: o.batchConcurrency, label: `batch of 1,000, ${o.batchConcurrency} in flight` },
      { id: 'scan', op: 'scan', rows: o.scanPage, inflight: o.scanConcurrency, label: `scan ${o.scanPage.toLocaleString('en-US')}-row pages, ${o.scanConcurrency} in flight` },
    ];
    if (o.workloads) {
      const unknown = [...o.workloads].filter((id) => id !== 'prefix' && !workloads.some((w) => w.id === id));
      if (unknown.length) throw new Error(`--workloads: unknown ${unknown.join(', ')} (known: ${workloads.map((w) => w.id).join(', ')}, prefix)`);
      workloads.splice(0, workloads.length, ...workloads.filter((w) => o.workloads!.has(w.id)));
    }
    const can = (s: System, w: Workload) => (s.workloads && !s.workloads.has(w.id) ? false : w.op === 'put' ? !!s.put : w.op === 'get' ? !!s.get : w.op === 'batch' ? !!s.batch : !!s.scan);

    // ---- an unmeasured pass: a process's first seconds on a code path (JIT, heap growth, page faults) cost several times its steady state
    if (o.warmupPassSeconds > 0) {
      const p0 = performance.now();
      for (const w of workloads) for (const sys of systems) if (can(sys, w)) await drive(sys, w, o.warmupPassSeconds * 1000, readKeys, new KeyGen(5));
      console.log(`warm-up pass: ${((performance.now() - p0) / 1000).toFixed(0)} s, unmeasured`);
    }

    // ---- the runs: every workload, every system, in an order that rotates
    const samples = new Map<string, Sample[]>();
    const settled = { seconds: 0, busy: 0 };
    for (let run = 1; run <= o.runs; run++) {
      const line: string[] = [];
      for (const [wi, w] of workloads.entries()) {
        const these = systems.filter((s) => can(s, w));
        const shift = (run + wi) % Math.max(1, these.length);
        const order = [...these.slice(shift), ...these.slice(0, shift)];
        for (const sys of order) {
          const s = await measure(sys, w, o, readKeys, allPids, settled);
          if (s.misses > 0) console.log(`WARNING: ${sys.label} ${w.id}: ${s.misses} of ${s.calls} reads did not return the ${VALUE_BYTES}-byte value`);
          const k = `${w.id}/${sys.id}`;
          samples.set(k, [...(samples.get(k) ?? []), s]);
          line.push(`${w.id}/${sys.id} ${fmtK(s.rows / s.seconds)}`);
        }
      }
      console.log(`run ${run}/${o.runs} rows/s: ${line.join(', ')}`);
    }

    if (etcd3Leader) {
      // A new leader mid-run would have made every write one hop longer (the follower forwards it): say so.
      const st = await etcdStatus(etcd3Leader).catch(() => undefined);
      if (!st || st.memberId !== st.leader) {
        warnings.push(`the 3-member etcd's leader changed during the runs (the client kept talking to ${etcd3Leader}, since then a follower): its figures include the forwarding hop.`);
      }
    }

    const lines: Line[] = [];
    for (const w of workloads) {
      for (const sys of systems) {
        const ss = samples.get(`${w.id}/${sys.id}`);
        if (ss) lines.push(summarize(sys, w, w.op === 'batch' ? Math.min(w.rows, sys.maxBatch ?? Infinity) : w.rows, ss));
      }
    }

    // ---- the selective prefix scan against a full scan (Cairn alone: the peers have no such index to compare)
    const cairnSys = systems.find((s) => s.id === 'cairn');
    if (cairnSys && cluster && (!o.workloads || o.workloads.has('prefix'))) {
      const w = USERS.find((u) => u.role === 'rw')!;
      const db = await CairnClient.connect({ master: cluster.masterAddress, user: w.user, password: w.password });
      try {
        lines.push(...(await measurePrefixScan(db, cairnSys.pids, allPids, o, settled)));
      } finally {
        db.close();
      }
    }

    // ---- the transfer (last: it changes the cluster)
    if (o.transfer && cluster) {
      const a = USERS.find((u) => u.role === 'admin')!;
      admin = await CairnClient.connect({ master: cluster.masterAddress, user: a.user, password: a.password });
      const t = await measureTransfer(cluster, admin);
      if (t) lines.push(t);
    }

    // ---- the table
    const header = ['workload', 'system', 'rows/call', 'ops/s', 'rows/s', 'p50 ms', 'p99 ms', 'srv µs/op', 'srv µs/row', 'client µs/op', 'others', 'rows/s per run'];
    const rows: string[][] = [];
    const labelOf = new Map(workloads.map((w) => [w.id, w.label]));
    labelOf.set('transfer', 'rebalance transfer (+1 shard)');
    labelOf.set('scan_all', 'full scan, every row (1 call = 1 scan)');
    labelOf.set('prefix_scan', 'selective prefix scan, 1 in 1,000');
    let last = '';
    for (const l of lines) {
      rows.push([
        l.workload === last ? '' : labelOf.get(l.workload)!,
        l.series.label,
        fmtInt(l.rowsPerCall),
        fmtInt(l.opsPerSec),
        fmtInt(l.rowsPerSec),
        fmtMs(l.p50Ms ?? NaN),
        fmtMs(l.p99Ms ?? NaN),
        fmtFix(l.serverCpuUsPerOp, 1),
        fmtFix(l.serverCpuUsPerRow, 1),
        fmtFix(l.clientCpuUsPerOp ?? NaN, 1),
        fmtFix(l.otherCores, 2),
        l.runs.map((r) => fmtK(r.rowsPerSec)).join(' / '),
      ]);
      last = l.workload;
    }
    console.log('');
    console.log(`Results (median of ${o.runs} run${o.runs > 1 ? 's' : ''}; latency per call; srv = server processes' CPU from /proc; level: its whole process)`);
    console.log(table(header, rows, header.map((_, i) => i > 1 && i < 11)));

    // ---- ratios: cairn (factor 1) against each peer and floor (etcd: 1 member); then factor 3 against the 3-member etcd
    const find = (id: SeriesId, w: string) => lines.find((l) => l.series.id === id && l.workload === w);
    const peers: SeriesId[] = ['etcd', 'redis', 'level', 'echo'];
    const ratioHeader = ['workload', ...peers.flatMap((s) => [`÷${s} rows/s`, `÷${s} srv/op`])];
    const ratioRows: string[][] = [];
    for (const w of workloads) {
      const c = find('cairn', w.id);
      if (!c) continue;
      const cells = [w.id];
      for (const s of peers) {
        const p = find(s, w.id);
        cells.push(p ? fmtRatio(c.rowsPerSec / p.rowsPerSec) : '-', p ? fmtRatio(c.serverCpuUsPerRow / p.serverCpuUsPerRow) : '-');
      }
      ratioRows.push(cells);
    }
    if (ratioRows.length) {
      console.log('');
      console.log('Cairn ÷ each peer (rows/s: above 1 is faster; srv/op: server CPU per row, below 1 is cheaper)');
      console.log(table(ratioHeader, ratioRows, ratioHeader.map((_, i) => i > 0)));
    }
    const rf3Header = ['workload', '÷etcd 3-member rows/s', '÷etcd 3-member srv/op', 'cairn rf3 ÷ rf1 rows/s', 'etcd 3-member ÷ 1 rows/s'];
    const rf3Rows: string[][] = [];
    for (const w of workloads) {
      const [c3, e3, c1, e1] = (['cairn3', 'etcd3', 'cairn', 'etcd'] as const).map((id) => find(id, w.id));
      if (!c3 && !e3) continue;
      rf3Rows.push([
        w.id,
        c3 && e3 ? fmtRatio(c3.rowsPerSec / e3.rowsPerSec) : '-',
        c3 && e3 ? fmtRatio(c3.serverCpuUsPerRow / e3.serverCpuUsPerRow) : '-',
        c3 && c1 ? fmtRatio(c3.rowsPerSec / c1.rowsPerSec) : '-',
        e3 && e1 ? fmtRatio(e3.rowsPerSec / e1.rowsPerSec) : '-',
      ]);
    }
    if (rf3Rows.length) {
      console.log('');
      console.log('Cairn at replication factor 3 ÷ the 3-member etcd (every member\'s CPU counted), and what 3 copies cost each');
      console.log(table(rf3Header, rf3Rows, rf3Header.map((_, i) => i > 0)));
    }

    const targets = evaluateTargets(lines);
    console.log('');
    console.log('Issue 15 targets (ratios from this run; cairn at factor 1 against the 1-member etcd, rf3 against the 3-member one):');
    const idWidth = Math.max(...targets.map((t) => t.target.length));
    for (const t of targets) {
      const goal = `(goal ${t.goal})`.padEnd(13);
      console.log(`  ${t.met === null ? 'n/a ' : t.met ? 'MET ' : 'MISS'}  ${t.target.padEnd(idWidth)} = ${fmtRatio(t.value).padStart(6)}  ${goal}  ${t.figure}${t.met === null ? ': not measured' : ''}`);
    }

    const noisiest = Math.max(0, ...lines.map((l) => l.otherCores).filter(Number.isFinite));
    console.log('');
    console.log(
      `others = cores used by every other process on the machine during a measurement (worst run); should be ~0. ` +
        `Waited ${settled.seconds.toFixed(0)} s in all for quiet before measurements` +
        (settled.busy ? ` (${settled.busy} still busy after ${o.settleSeconds} s)` : '') +
        '.',
    );
    if (noisiest >= 0.25) console.log(`NOTE: other processes kept up to ${noisiest.toFixed(2)} of ${cpus().length} cores busy: those lines are noisy; rerun on a quiet machine.`);
    for (const n of [...notes, ...warnings]) console.log(`NOTE: ${n}`);

    // ---- results file and chart
    const day = date.slice(0, 10);
    const file: ResultsFile = {
      date,
      machine,
      options: { seconds: o.seconds, runs: o.runs, warmupSeconds: o.warmupSeconds, preloadRows: o.preloadRows, concurrency: o.concurrency, batchConcurrency: o.batchConcurrency, scanConcurrency: o.scanConcurrency, batchStream: o.batchStream, tiny: o.tiny },
      skipped: notes,
      ...(warnings.length ? { warnings } : {}),
      results: lines.map(toJson) as unknown as ResultsFile['results'],
      targets: targets.map((t) => ({ target: t.target, value: sig(t.value), goal: t.goal, met: t.met })),
    };
    let out = o.out;
    if (out === 'default') {
      mkdirSync(join(root, 'bench/results'), { recursive: true });
      out = join(root, 'bench/results', `${day}.json`);
      for (let n = 2; existsSync(out); n++) out = join(root, 'bench/results', `${day}-${n}.json`);
    }
    if (out) {
      writeFileSync(out, JSON.stringify(file, null, 2) + '\n');
      console.log(`results: ${out}`);
    }
    const chart = o.chart === 'default' ? join(root, 'docs/bench-peers.svg') : o.chart;
    if (chart) {
      mkdirSync(dirname(chart), { recursive: true });
      writeFileSync(chart, renderChart(file));
      console.log(`chart: ${chart}`);
    }
    console.log(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await cleanup();
  }
}

main().then(
  () => setTimeout(() => process.exit(process.exitCode ?? 0), 300).unref(),
  (err) => {
    process.stderr.write(`peers-bench failed: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
