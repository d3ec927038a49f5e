/**
 * Cairn cluster benchmark: a real master and 3 shards as child processes
 * (test/harness/cluster.ts), driven through the SDK, next to raw classic-level
 * in this process on the same rows, in the same run.
 *
 *   npm run build && npm run bench                 # 3 runs x 5 s per workload
 *   npm run bench -- --quick                       # smoke check: 1 run x 1 s
 *   npm run bench -- --seconds 10 --runs 5
 *
 * Rows: 16-byte keys (16 hex characters), one column, 100-byte random values.
 * Workloads, each measured for a fixed time after a short warm-up, cairn and
 * level interleaved: put (64 in flight), get of preloaded rows (64 in
 * flight), batch of 100 and of 1,000 rows (4 calls in flight). Every line
 * is the median over the runs. Nothing here asserts a time. See bench/README.md.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { ClassicLevel } from 'classic-level';
import { CairnClient } from '../services/client/index.js';
import { busyCores, childPids, CLK_TCK, machineBusyTicks, median, nextValue, percentile, procTicks, settle, table } from './lib/common.js';

// ---------------------------------------------------------------------------
// Options

interface Options {
  seconds: number;
  warmupSeconds: number;
  runs: number;
  /** Rows written to each system before the runs, for the get workload. */
  preloadRows: number;
  /** In flight for put and get. */
  concurrency: number;
  /** Batch calls in flight. */
  batchConcurrency: number;
  /** Longest wait, before each measurement, for leftover background work (LevelDB compaction) to die down. */
  settleSeconds: number;
  quick: boolean;
}

const USAGE = `usage: node dist/bench/cluster-bench.js [--quick] [--seconds N] [--runs N] [--warmup S] [--settle S]
                                         [--preload ROWS] [--concurrency N] [--batch-concurrency N]
  --quick               smoke check: 1 run, 1 s per workload, 0.2 s warm-up, 10,000 preloaded rows
  --seconds N           measured time per workload and system (default 5)
  --runs N              repeat the whole set N times and report the median (default 3)
  --warmup S            unmeasured warm-up before each measurement (default 0.5)
  --settle S            before each warm-up, wait up to S seconds for the machine to go quiet
                        (compaction left over from the previous workload); 0 = don't wait (default 5)
  --preload ROWS        rows written before the runs and read by "get" (default 100000)
  --concurrency N       calls in flight for put and get (default 64)
  --batch-concurrency N batch calls in flight (default 4)`;

function parseOptions(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = quick
    ? { seconds: 1, warmupSeconds: 0.2, runs: 1, preloadRows: 10_000, concurrency: 64, batchConcurrency: 4, settleSeconds: 1, quick }
    : { seconds: 5, warmupSeconds: 0.5, runs: 3, preloadRows: 100_000, concurrency: 64, batchConcurrency: 4, settleSeconds: 5, quick };
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
      case '--quick':
        break;
      case '--seconds':
        o.seconds = num(flag, value(), 0.1, false);
        break;
      case '--warmup':
        o.warmupSeconds = num(flag, value(), 0, false);
        break;
      case '--settle':
        o.settleSeconds = num(flag, value(), 0, false);
        break;
      case '--runs':
        o.runs = num(flag, value(), 1, true);
        break;
      case '--preload':
        o.preloadRows = num(flag, value(), 1000, true);
        break;
      case '--concurrency':
        o.concurrency = num(flag, value(), 1, true);
        break;
      case '--batch-concurrency':
        o.batchConcurrency = num(flag, value(), 1, true);
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
// Rows: 16-byte keys in random order, 100-byte incompressible values

const KEY_BYTES = 16;
const VALUE_BYTES = 100;
const COLUMN = 'v';

/** xoshiro128** — a fast seeded PRNG, so cairn and level get the very same key sequence. */
class KeyGen {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    let x = seed >>> 0 || 1;
    for (let i = 0; i < 4; i++) {
      // splitmix32 to spread the seed
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  private u32(): number {
    const s = this.s;
    const m = Math.imul(s[1], 5) >>> 0;
    const r = Math.imul(((m << 7) | (m >>> 25)) >>> 0, 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ((s[3] << 11) | (s[3] >>> 21)) >>> 0;
    return r;
  }
  /** 16 hex characters = 16 bytes. */
  next(): string {
    return this.u32().toString(16).padStart(8, '0') + this.u32().toString(16).padStart(8, '0');
  }
}

/** 1 MiB of random bytes; value i is a 100-byte window of it (so LevelDB's compression gets nothing). */
// ---------------------------------------------------------------------------
// The two systems under test, behind one interface

interface System {
  name: 'cairn' | 'level';
  put(key: string, value: Buffer): Promise<void>;
  get(key: string): Promise<Buffer | undefined>;
  batch(rows: Array<[string, Buffer]>): Promise<void>;
  /** Fresh keys for writes; the same sequence for both systems. */
  keys: KeyGen;
}

function cairnSystem(db: CairnClient): System {
  return {
    name: 'cairn',
    keys: new KeyGen(42),
    async put(key, value) {
      await db.put(key, { [COLUMN]: value });
    },
    async get(key) {
      const cells = await db.get(key);
      return cells.find((c) => c.column === COLUMN)?.value;
    },
    async batch(rows) {
      await db.writeRows(rows.map(([row, value]) => ({ row, cells: { [COLUMN]: value } })));
    },
  };
}

function levelSystem(db: ClassicLevel<string, Buffer>): System {
  return {
    name: 'level',
    keys: new KeyGen(42),
    put: (key, value) => db.put(key, value),
    get: (key) => db.get(key),
    batch: (rows) => db.batch(rows.map(([key, value]) => ({ type: 'put' as const, key, value }))),
  };
}

// ---------------------------------------------------------------------------
// CPU accounting: /proc/<pid>/stat utime + stime (fields 14 and 15, clock ticks)




// ---------------------------------------------------------------------------
// The driver: `inflight` loops issuing calls until the time is up

interface Workload {
  id: string;
  label: string;
  kind: 'put' | 'get' | 'batch';
  rowsPerCall: number;
  inflight: number;
}

interface Sample {
  rows: number;
  calls: number;
  seconds: number;
  rowsPerSec: number;
  p50: number;
  p99: number;
  /** Server CPU (master + shards) per row, µs; cairn only. */
  serverUsPerRow: number;
  /** Cores the servers kept busy on average; cairn only. */
  serverCores: number;
  /** Per server process (master, shard1..3) µs per row; cairn only. */
  perProcUsPerRow: number[];
  /** CPU of this process (SDK or in-process LevelDB, all threads) per row, µs. */
  benchUsPerRow: number;
  benchCores: number;
  /** Cores kept busy by everything else on the machine during the measurement (noise). */
  otherCores: number;
  misses: number;
}

const settleStats = { seconds: 0, notQuiet: 0 };


interface DriveResult {
  rows: number;
  calls: number;
  seconds: number;
  latencies: Float64Array;
  misses: number;
}

async function drive(sys: System, w: Workload, durationMs: number, readKeys: string[]): Promise<DriveResult> {
  let lat = new Float64Array(1 << 16);
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
  const start = performance.now();
  const end = start + durationMs;
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      if (w.kind === 'put') {
        const key = sys.keys.next();
        const value = nextValue(VALUE_BYTES);
        const t0 = performance.now();
        await sys.put(key, value);
        record(performance.now() - t0);
        rows += 1;
      } else if (w.kind === 'get') {
        const key = readKeys[Math.floor(Math.random() * readKeys.length)]!;
        const t0 = performance.now();
        const v = await sys.get(key);
        record(performance.now() - t0);
        if (v === undefined || v.length !== VALUE_BYTES) misses += 1;
        rows += 1;
      } else {
        const batch: Array<[string, Buffer]> = new Array(w.rowsPerCall);
        for (let i = 0; i < w.rowsPerCall; i++) batch[i] = [sys.keys.next(), nextValue(VALUE_BYTES)];
        const t0 = performance.now();
        await sys.batch(batch);
        record(performance.now() - t0);
        rows += w.rowsPerCall;
      }
    }
  };
  await Promise.all(Array.from({ length: w.inflight }, worker));
  return { rows, calls, seconds: (performance.now() - start) / 1000, latencies: lat.subarray(0, calls), misses };
}

async function measure(sys: System, w: Workload, o: Options, readKeys: string[], allServerPids: number[]): Promise<Sample> {
  const settled = await settle(allServerPids, o.settleSeconds);
  settleStats.seconds += settled.seconds;
  if (!settled.quiet) settleStats.notQuiet += 1;
  if (o.warmupSeconds > 0) await drive(sys, w, o.warmupSeconds * 1000, readKeys);
  const machine0 = machineBusyTicks();
  const ticks0 = allServerPids.map(procTicks);
  const cpu0 = process.cpuUsage();
  const r = await drive(sys, w, o.seconds * 1000, readKeys);
  const cpu = process.cpuUsage(cpu0);
  const ticks1 = allServerPids.map(procTicks);
  const machine1 = machineBusyTicks();
  const procUs = ticks1.map((t, i) => ((t - ticks0[i]!) / CLK_TCK) * 1e6);
  const serverUs = procUs.reduce((a, b) => a + b, 0);
  const benchUs = cpu.user + cpu.system;
  const machineUs = ((machine1 - machine0) / CLK_TCK) * 1e6;
  const sorted = Float64Array.from(r.latencies).sort();
  const isCairn = sys.name === 'cairn';
  return {
    rows: r.rows,
    calls: r.calls,
    seconds: r.seconds,
    rowsPerSec: r.rows / r.seconds,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    serverUsPerRow: isCairn ? serverUs / r.rows : NaN,
    serverCores: isCairn ? serverUs / 1e6 / r.seconds : NaN,
    perProcUsPerRow: isCairn ? procUs.map((u) => u / r.rows) : [],
    benchUsPerRow: benchUs / r.rows,
    benchCores: benchUs / 1e6 / r.seconds,
    otherCores: Math.max(0, (machineUs - benchUs - serverUs) / 1e6 / r.seconds),
    misses: r.misses,
  };
}

// ---------------------------------------------------------------------------
// Reporting


const fmtInt = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
const fmtMs = (n: number): string => (!Number.isFinite(n) ? '-' : n < 1 ? n.toFixed(3) : n < 100 ? n.toFixed(2) : n.toFixed(0));
const fmtFix = (n: number, d: number): string => (Number.isFinite(n) ? n.toFixed(d) : '-');
const fmtK = (n: number): string => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0));
const fmtRatio = (n: number): string => (!Number.isFinite(n) ? '-' : n >= 0.1 ? `${n.toFixed(2)}x` : `${n.toFixed(3)}x`);


function median0(samples: Sample[], f: (s: Sample) => number): number {
  return median(samples.map(f));
}

// ---------------------------------------------------------------------------
// Child-process hygiene: the harness does not clean up after a failed start

function killOurCairnChildren(bin: string): void {
  for (const pid of childPids()) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (cmd.includes(bin)) process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  // The harness resolves bin/cairn.js against the working directory: run from the repo root.
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
  process.chdir(root);
  const { startProcCluster, CAIRN_BIN } = await import('../test/harness/cluster.js');
  const { USERS } = await import('../test/harness/inproc.js');

  // Everything on disk lives under one temp dir; the cluster's mkdtemp lands inside it too (TMPDIR).
  const benchDir = await mkdtemp(join(tmpdir(), 'cairn-bench-'));
  process.env.TMPDIR = benchDir;

  let cluster: Awaited<ReturnType<typeof startProcCluster>> | undefined;
  let client: CairnClient | undefined;
  let level: ClassicLevel<string, Buffer> | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      try {
        client?.close();
      } catch {
        /* closing anyway */
      }
      await level?.close().catch(() => undefined);
      await cluster?.cleanup().catch(() => undefined);
      killOurCairnChildren(CAIRN_BIN);
      await rm(benchDir, { recursive: true, force: true }).catch(() => undefined);
    })());
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`\n${sig}: stopping the cluster and removing ${benchDir}\n`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const t0 = performance.now();
  try {
    const cpuModel = cpus()[0]?.model ?? 'unknown CPU';
    console.log(`Cairn cluster benchmark — ${cpus().length} cores (${cpuModel}), Node ${process.version}, CLK_TCK ${CLK_TCK}`);
    console.log(
      `${o.quick ? 'QUICK mode: ' : ''}${o.runs} run(s) x ${o.seconds} s per workload and system (after ${o.warmupSeconds} s warm-up); ` +
        `rows: ${KEY_BYTES}-byte key, 1 column, ${VALUE_BYTES}-byte value; get reads ${o.preloadRows.toLocaleString('en-US')} preloaded rows`,
    );

    cluster = await startProcCluster({ shards: 3 });
    const writer = USERS.find((u) => u.role === 'rw')!;
    client = await CairnClient.connect({ master: cluster.masterAddress, user: writer.user, password: writer.password });
    level = new ClassicLevel<string, Buffer>(join(benchDir, 'level'), { keyEncoding: 'utf8', valueEncoding: 'buffer' });
    await level.open();
    const serverProcs = [cluster.master, ...[...cluster.shards].sort((a, b) => a.name.localeCompare(b.name))];
    const serverPids = serverProcs.map((p) => p.child.pid!);
    const serverNames = serverProcs.map((p) => p.name);
    console.log(
      `cluster: master ${cluster.masterAddress} (pid ${serverPids[0]}), shards ${cluster.shards.map((s) => `${s.address} (pid ${s.child.pid})`).join(', ')}`,
    );
    console.log(`data under ${benchDir} (removed at the end)`);

    const cairn = cairnSystem(client);
    const lvl = levelSystem(level);
    const systems = [cairn, lvl];

    // Preload the rows "get" reads: the same keys and values in both systems, batches of 1,000.
    const preloadGen = new KeyGen(7);
    const readKeys = Array.from({ length: o.preloadRows }, () => preloadGen.next());
    const preloadValues = readKeys.map(() => nextValue(VALUE_BYTES));
    for (const sys of systems) {
      const p0 = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          while (next < readKeys.length) {
            const from = next;
            next = Math.min(readKeys.length, next + 1000);
            const rows: Array<[string, Buffer]> = [];
            for (let i = from; i < next; i++) rows.push([readKeys[i]!, preloadValues[i]!]);
            await sys.batch(rows);
          }
        }),
      );
      const s = (performance.now() - p0) / 1000;
      console.log(`preloaded ${readKeys.length.toLocaleString('en-US')} rows into ${sys.name} in ${s.toFixed(1)} s`);
    }

    const workloads: Workload[] = [
      { id: 'put', label: `put 1 row, ${o.concurrency} in flight`, kind: 'put', rowsPerCall: 1, inflight: o.concurrency },
      { id: 'get', label: `get 1 row, ${o.concurrency} in flight`, kind: 'get', rowsPerCall: 1, inflight: o.concurrency },
      { id: 'batch100', label: `batch 100 rows, ${o.batchConcurrency} in flight`, kind: 'batch', rowsPerCall: 100, inflight: o.batchConcurrency },
      { id: 'batch1000', label: `batch 1,000 rows, ${o.batchConcurrency} in flight`, kind: 'batch', rowsPerCall: 1000, inflight: o.batchConcurrency },
    ];

    const samples = new Map<string, Sample[]>(); // `${workload}/${system}` -> one per run
    for (let run = 1; run <= o.runs; run++) {
      const line: string[] = [];
      for (const w of workloads) {
        // Alternate which system goes first, so neither always inherits the other's compaction debt.
        const order = (run + workloads.indexOf(w)) % 2 === 1 ? systems : [...systems].reverse();
        for (const sys of order) {
          const s = await measure(sys, w, o, readKeys, serverPids);
          if (s.misses > 0) console.log(`WARNING: ${sys.name} ${w.id}: ${s.misses} of ${s.rows} reads found no ${VALUE_BYTES}-byte value`);
          const k = `${w.id}/${sys.name}`;
          samples.set(k, [...(samples.get(k) ?? []), s]);
          line.push(`${w.id}/${sys.name} ${fmtK(s.rowsPerSec)}`);
        }
      }
      console.log(`run ${run}/${o.runs} rows/s: ${line.join(', ')}`);
    }

    // ---- the table
    const header = ['workload', 'system', 'rows/s', 'p50 ms', 'p99 ms', 'cairn/level', 'srv µs/row', 'srv cores', 'bench µs/row', 'bench cores', 'others', 'rows/s per run'];
    const right = [false, false, true, true, true, true, true, true, true, true, true, false];
    const rows: string[][] = [];
    for (const w of workloads) {
      const c = samples.get(`${w.id}/cairn`)!;
      const l = samples.get(`${w.id}/level`)!;
      const ratio = median0(c, (s) => s.rowsPerSec) / median0(l, (s) => s.rowsPerSec);
      for (const [name, ss] of [['cairn', c], ['level', l]] as const) {
        rows.push([
          name === 'cairn' ? w.label : '',
          name,
          fmtInt(median0(ss, (s) => s.rowsPerSec)),
          fmtMs(median0(ss, (s) => s.p50)),
          fmtMs(median0(ss, (s) => s.p99)),
          name === 'cairn' ? fmtRatio(ratio) : '',
          fmtFix(median0(ss, (s) => s.serverUsPerRow), 1),
          fmtFix(median0(ss, (s) => s.serverCores), 2),
          fmtFix(median0(ss, (s) => s.benchUsPerRow), 1),
          fmtFix(median0(ss, (s) => s.benchCores), 2),
          fmtFix(Math.max(...ss.map((s) => s.otherCores)), 2),
          ss.map((s) => fmtK(s.rowsPerSec)).join(' / '),
        ]);
      }
    }
    console.log('');
    console.log(`Results (median of ${o.runs} run${o.runs > 1 ? 's' : ''}; latency is per call; cairn/level = rows/s ratio)`);
    console.log(table(header, rows, right));

    // ---- server CPU by process
    const cpuHeader = ['workload', ...serverNames.map((n) => `${n} µs/row`), 'total µs/row'];
    const cpuRows = workloads.map((w) => {
      const c = samples.get(`${w.id}/cairn`)!;
      return [w.id, ...serverNames.map((_, i) => fmtFix(median0(c, (s) => s.perProcUsPerRow[i]!), 1)), fmtFix(median0(c, (s) => s.serverUsPerRow), 1)];
    });
    console.log('');
    console.log(`Cairn server CPU by process (utime+stime from /proc/<pid>/stat, ${CLK_TCK} ticks/s, median)`);
    console.log(table(cpuHeader, cpuRows, cpuHeader.map((_, i) => i > 0)));
    console.log('');
    console.log(
      'srv = master + 3 shard processes; bench = this process (the SDK for cairn; the whole of LevelDB for level). ' +
        `cores = CPU seconds per wall second (this machine has ${cpus().length}); ` +
        'others = cores used by every other process on the machine during the measurement (worst run): noise, should be ~0.',
    );
    if (o.settleSeconds > 0) {
      const n = o.runs * workloads.length * systems.length;
      console.log(
        `waited ${settleStats.seconds.toFixed(0)} s in all for background work to settle before the ${n} measurements` +
          (settleStats.notQuiet > 0 ? ` (${settleStats.notQuiet} still busy after ${o.settleSeconds} s)` : ''),
      );
    }
    const noisiest = Math.max(...[...samples.values()].flat().map((x) => x.otherCores));
    if (noisiest >= 0.25) {
      console.log(`NOTE: other processes kept up to ${noisiest.toFixed(2)} of ${cpus().length} cores busy during a measurement: those lines are noisy; rerun on a quiet machine.`);
    }
    console.log(`done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  } finally {
    await cleanup();
  }
}

main().then(
  () => {
    // gRPC may hold a handle briefly after close; nothing else should keep us alive.
    setTimeout(() => process.exit(process.exitCode ?? 0), 500).unref();
  },
  (err) => {
    process.stderr.write(`cluster-bench failed: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
