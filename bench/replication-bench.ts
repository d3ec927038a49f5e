/**
 * bench:replication — what replication (issue 13) costs and how long a
 * failover takes, on one machine in one run.
 *
 *   npm run build && npm run bench:replication          # 3 runs x 5 s per workload and factor, then 5 failovers
 *   npm run bench:replication -- --quick                # smoke: 1 run x 1 s, 1 failover
 *   npm run bench:replication -- --runs 5 --seconds 10 --failovers 7
 *
 * Two 3-shard process clusters (test/harness/cluster.ts, heartbeats 250 ms,
 * shardDownAfterMs 2000), one with replicationFactor 1 and one with 3, both up
 * for the throughput part; each run measures both, in alternating order: single-row
 * puts (64 in flight) and 1,000-row writeRows (4 in flight), rows/s and server
 * CPU (master + shards, from /proc) per row. Then failovers, each on a fresh
 * factor-3 cluster (--reuse-cluster: all on the throughput's, the killed shard
 * restarted and every range back in sync before the next kill): with writes
 * running, kill -9 the primary of a range and time the first acknowledged
 * write on that range, split into its parts from the servers' logs. The
 * shard's default replica lease and ack timeout (no env override). Nothing
 * here asserts a time. See bench/README.md.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { CairnClient } from '../services/client/index.js';
import { rowHash } from '../services/common/hash.js';
import { showRange } from '../services/common/ranges.js';
import type { ProcCluster, RangeJson } from '../test/harness/cluster.js';
import { CLK_TCK, KeyGen, fmtFix, fmtInt, fmtK, fmtMs, fmtRatio, machineBusyTicks, median, nextValue, percentile, procTicks, settle, table } from './lib/common.js';

interface Options {
  seconds: number;
  runs: number;
  warmupSeconds: number;
  settleSeconds: number;
  failovers: number;
  quick: boolean;
  /** Results file; 'default' = bench/results/replication-<date>.json, '' = none. */
  out: string;
  /** Copy the clusters' server logs here before removing them. */
  keepLogs: string;
  /** All failovers on the throughput's factor-3 cluster (restart, resync, next kill) instead of a fresh cluster each. */
  reuse: boolean;
}

const USAGE = `usage: node dist/bench/replication-bench.js [--quick] [--runs N] [--seconds S] [--failovers N] [--out FILE.json]
  --quick         smoke: 1 run x 1 s, 1 failover, no results file unless --out
  --runs N        throughput runs; every figure is the median over runs (default 3)
  --seconds S     measured time per workload and factor (default 5)
  --failovers N   kill -9s of a primary, timed; the median is quoted (default 5)
  --out FILE      results JSON (default bench/results/replication-<date>.json)
  --keep-logs DIR copy the servers' logs there (DIR/factor-1, …) before removing each cluster
  --reuse-cluster every failover on the throughput's factor-3 cluster: the killed shard is restarted and
                  every range back in sync before the next kill (default: a fresh cluster per failover)`;

function parseOptions(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = quick
    ? { seconds: 1, runs: 1, warmupSeconds: 0.2, settleSeconds: 1, failovers: 1, quick, out: '', keepLogs: '', reuse: false }
    : { seconds: 5, runs: 3, warmupSeconds: 0.5, settleSeconds: 5, failovers: 5, quick, out: 'default', keepLogs: '', reuse: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const num = (min: number): number => {
      const v = argv[++i];
      const n = Number(v);
      if (v === undefined || !Number.isFinite(n) || n < min) throw new Error(`${a}: expected a number >= ${min}, got ${v ?? 'nothing'}\n${USAGE}`);
      return n;
    };
    if (a === '--quick') continue;
    else if (a === '--runs') o.runs = Math.round(num(1));
    else if (a === '--seconds') o.seconds = num(0.1);
    else if (a === '--failovers') o.failovers = Math.round(num(0));
    else if (a === '--out') o.out = argv[++i] ?? '';
    else if (a === '--keep-logs') o.keepLogs = argv[++i] ?? '';
    else if (a === '--reuse-cluster') o.reuse = true;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${JSON.stringify(a)}\n${USAGE}`);
  }
  return o;
}

const VALUE_BYTES = 100;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// Throughput: `inflight` loops issuing calls back to back for a fixed time

interface Workload {
  id: 'put' | 'batch1000';
  label: string;
  rowsPerCall: number;
  inflight: number;
}
const WORKLOADS: Workload[] = [
  { id: 'put', label: 'put 1 row, 64 in flight', rowsPerCall: 1, inflight: 64 },
  { id: 'batch1000', label: 'batch 1,000 rows, 4 in flight', rowsPerCall: 1000, inflight: 4 },
];

interface Sample {
  rowsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  serverUsPerRow: number;
  clientUsPerRow: number;
  otherCores: number;
}

async function drive(db: CairnClient, keys: KeyGen, w: Workload, ms: number): Promise<{ rows: number; seconds: number; latencies: number[] }> {
  const latencies: number[] = [];
  let rows = 0;
  const start = performance.now();
  const end = start + ms;
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      const t0 = performance.now();
      if (w.rowsPerCall === 1) await db.put(keys.next('p'), { v: nextValue(VALUE_BYTES) });
      else await db.writeRows(Array.from({ length: w.rowsPerCall }, () => ({ row: keys.next('b'), cells: { v: nextValue(VALUE_BYTES) } })));
      latencies.push(performance.now() - t0);
      rows += w.rowsPerCall;
    }
  };
  await Promise.all(Array.from({ length: w.inflight }, worker));
  return { rows, seconds: (performance.now() - start) / 1000, latencies };
}

async function measure(db: CairnClient, keys: KeyGen, w: Workload, pids: number[], o: Options): Promise<Sample> {
  await settle(pids, o.settleSeconds);
  await drive(db, keys, w, o.warmupSeconds * 1000);
  const m0 = machineBusyTicks();
  const t0 = pids.map(procTicks);
  const c0 = process.cpuUsage();
  const r = await drive(db, keys, w, o.seconds * 1000);
  const c = process.cpuUsage(c0);
  const serverUs = (pids.map(procTicks).reduce((a, t, i) => a + t - t0[i]!, 0) / CLK_TCK) * 1e6;
  const machineUs = ((machineBusyTicks() - m0) / CLK_TCK) * 1e6;
  const clientUs = c.user + c.system;
  const sorted = Float64Array.from(r.latencies).sort();
  return {
    rowsPerSec: r.rows / r.seconds,
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    serverUsPerRow: serverUs / r.rows,
    clientUsPerRow: clientUs / r.rows,
    otherCores: Math.max(0, (machineUs - serverUs - clientUs) / 1e6 / r.seconds),
  };
}

// ---------------------------------------------------------------------------
// Failover

interface Failover {
  victim: string;
  promoted: string;
  /** kill -9 → first acknowledged write on the victim's range. */
  totalMs: number;
  /** kill → the master's map step promoting a follower (down detection + the failover pass + the map commit). */
  promotedMs: number;
  /** promotion → the new primary takes the range (the map pushed to it). */
  mapToPrimaryMs: number;
  /** the new primary taking the range → its first acknowledged write (the lease wait, then the SDK's next retry). */
  primaryToAckMs: number;
  /** restart of the killed shard → every range with 3 in-sync copies again (--reuse-cluster only). */
  rejoinMs: number;
  /** snapshots the new primary sent its followers of the range between taking it and the first ack (a follower being sent one is not answering). */
  followerSnapshots: number;
  /** writes acknowledged by the background load during the trial, and how many failed (timed out) meanwhile. */
  backgroundAcked: number;
  backgroundFailed: number;
}

const rangesOf = async (c: ProcCluster): Promise<RangeJson[]> => (await c.ctl(['ranges', '--json'])).json.ranges;
const inRange = (r: RangeJson, row: string) => BigInt(r.start) <= rowHash(row) && rowHash(row) < BigInt(r.end);
const logMs = (l: Record<string, unknown>) => Date.parse(String(l.timestamp));

async function allInSync(c: ProcCluster, timeoutMs: number): Promise<void> {
  const { waitUntil } = await import('../test/harness/cluster.js');
  await waitUntil(async () => (await rangesOf(c)).every((r) => r.inSync.length === 3), timeoutMs, 'every range with 3 in-sync copies');
}

/** Kills the primary of range `trial % ranges` under load and times the first acknowledged write there; restarts it when asked. */
async function failoverOnce(c: ProcCluster, db: CairnClient, trial: number, restart: boolean): Promise<Failover> {
  await allInSync(c, 60_000);
  const before = await rangesOf(c);
  const range = before[trial % before.length]!;
  let n = 0;
  while (!inRange(range, `fo-${trial}-${n}`)) n++;
  const probe = `fo-${trial}-${n}`;
  const victim = c.shards.find((p) => p.address === range.address)!;

  // Background writes over every range, 8 in flight, short deadlines (they retry through the failover).
  let stop = false;
  let backgroundAcked = 0;
  let backgroundFailed = 0;
  const keys = new KeyGen(1000 + trial);
  const background = Promise.all(
    Array.from({ length: 8 }, async () => {
      while (!stop) {
        try {
          await db.put(keys.next('f'), { v: nextValue(VALUE_BYTES) }, { timeoutMs: 1000 });
          backgroundAcked++;
        } catch {
          backgroundFailed++;
        }
      }
    }),
  );
  await sleep(500);
  const killedAt = Date.now();
  await c.stop(victim, 'SIGKILL');
  let ackedAt = 0;
  for (let attempt = 0; ackedAt === 0; attempt++) {
    try {
      await db.put(probe, { v: `after-kill-${attempt}` }, { timeoutMs: 500 });
      ackedAt = Date.now();
    } catch (err) {
      if (Date.now() - killedAt > 60_000) throw new Error(`no write acknowledged on the killed primary's range within 60 s: ${(err as Error).message}`);
    }
  }
  stop = true;
  await background;

  // Where the time went, from the servers' logs (JSON lines with a timestamp).
  const after = await rangesOf(c);
  const promoted = after.find((r) => r.start === range.start && r.end === range.end)?.shard ?? '?';
  const shown = showRange({ start: BigInt(range.start), end: BigInt(range.end) });
  const promotedLog = c.master.logs.find((l) => logMs(l) >= killedAt && String(l.change) === `${shown}: primary ${range.shard} is down; ${promoted} promoted`);
  const newPrimary = c.shards.find((p) => p.address === after.find((r) => r.shard === promoted)?.address);
  const ofRange = (message: string) => (newPrimary?.logs ?? []).filter((l) => logMs(l) >= killedAt && logMs(l) <= ackedAt && l.message === message && l.range === shown);
  const primaryLog = ofRange('primary of a replicated range')[0];
  const promotedAt = promotedLog ? logMs(promotedLog) : NaN;
  const primaryAt = primaryLog ? logMs(primaryLog) : NaN;
  const followerSnapshots = ofRange('sending a snapshot to a follower').length;

  const r0 = Date.now();
  if (restart) {
    await c.restart(victim);
    await allInSync(c, 120_000);
  }
  return {
    victim: range.shard,
    promoted,
    totalMs: ackedAt - killedAt,
    promotedMs: promotedAt - killedAt,
    mapToPrimaryMs: primaryAt - promotedAt,
    primaryToAckMs: ackedAt - primaryAt,
    rejoinMs: restart ? Date.now() - r0 : NaN,
    followerSnapshots,
    backgroundAcked,
    backgroundFailed,
  };
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  // The shard's default lease and ack timeout, whatever this shell has set.
  delete process.env.CAIRN_REPLICA_LEASE_MS;
  delete process.env.CAIRN_REPLICA_ACK_TIMEOUT_MS;
  // The harness resolves bin/cairn.js against the working directory: run from the repo root.
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
  process.chdir(root);
  const { startProcCluster } = await import('../test/harness/cluster.js');
  const { USERS } = await import('../test/harness/inproc.js');
  const writer = USERS.find((u) => u.role === 'rw')!;

  const benchDir = await mkdtemp(join(tmpdir(), 'cairn-bench-repl-'));
  process.env.TMPDIR = benchDir; // the clusters' dirs land inside it
  const clusters = new Map<ProcCluster, { name: string; db?: CairnClient }>(); // running; the name is for --keep-logs
  const startCluster = async (factor: number, name: string) => {
    const c = await startProcCluster({ shards: 3, masterArgs: ['--replication-factor', String(factor)] });
    const entry: { name: string; db?: CairnClient } = { name };
    clusters.set(c, entry);
    const db = (entry.db = await CairnClient.connect({ master: c.masterAddress, user: writer.user, password: writer.password, timeoutMs: 20_000 }));
    if (factor > 1) await allInSync(c, 60_000);
    return { factor, cluster: c, db };
  };
  const stopCluster = async (c: ProcCluster): Promise<void> => {
    const { name, db } = clusters.get(c)!;
    db?.close();
    if (o.keepLogs) await cp(join(c.dir, 'logs'), join(o.keepLogs, name), { recursive: true }).catch(() => undefined);
    clusters.delete(c);
    await c.cleanup().catch(() => undefined);
  };
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      for (const c of [...clusters.keys()]) await stopCluster(c);
      await rm(benchDir, { recursive: true, force: true }).catch(() => undefined);
    })());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143)));
  }

  const started = performance.now();
  try {
    const machine = `${cpus().length} cores (${cpus()[0]?.model ?? 'unknown CPU'}), Node ${process.version}`;
    console.log(`Cairn bench:replication — ${machine}, CLK_TCK ${CLK_TCK}`);
    console.log(
      `${o.quick ? 'QUICK mode: ' : ''}${o.runs} run(s) x ${o.seconds} s per workload and factor (after ${o.warmupSeconds} s warm-up), then ${o.failovers} failover(s); ` +
        `rows: 16-byte key, 1 column, ${VALUE_BYTES}-byte value`,
    );
    const factors = [1, 3] as const;
    const setups = [];
    for (const f of factors) {
      const { cluster: c, db } = await startCluster(f, `factor-${f}`);
      setups.push({ factor: f, cluster: c, db, keys: new KeyGen(f * 7919), pids: () => [c.master, ...c.shards].map((p) => p.child.pid!) });
      console.log(`factor ${f}: master ${c.masterAddress}, shards ${c.shards.map((s) => s.address).join(', ')}`);
    }

    // ---- throughput, both factors in every run, which one goes first alternating
    const samples = new Map<string, Sample[]>(); // `${workload}/${factor}`
    for (let run = 1; run <= o.runs; run++) {
      const line: string[] = [];
      for (const [wi, w] of WORKLOADS.entries()) {
        const order = (run + wi) % 2 === 1 ? setups : [...setups].reverse();
        for (const s of order) {
          const x = await measure(s.db, s.keys, w, s.pids(), o);
          samples.set(`${w.id}/${s.factor}`, [...(samples.get(`${w.id}/${s.factor}`) ?? []), x]);
          line.push(`${w.id}/f${s.factor} ${fmtK(x.rowsPerSec)}`);
        }
      }
      console.log(`run ${run}/${o.runs} rows/s: ${line.join(', ')}`);
    }
    const med = (w: Workload, f: number, get: (s: Sample) => number) => median(samples.get(`${w.id}/${f}`)!.map(get));
    const results = WORKLOADS.flatMap((w) =>
      factors.map((f) => {
        const runs = samples.get(`${w.id}/${f}`)!;
        const [rowsPerSec, p50Ms, p99Ms, serverCpuUsPerRow, clientCpuUsPerRow] = (['rowsPerSec', 'p50Ms', 'p99Ms', 'serverUsPerRow', 'clientUsPerRow'] as const).map((k) => med(w, f, (s) => s[k]));
        return { workload: w.id, label: w.label, factor: f, rowsPerCall: w.rowsPerCall, inflight: w.inflight, rowsPerSec, p50Ms, p99Ms, serverCpuUsPerRow, clientCpuUsPerRow, otherCores: Math.max(...runs.map((s) => s.otherCores)), runs };
      }),
    );
    const header = ['workload', 'factor', 'rows/s', 'p50 ms', 'p99 ms', 'srv µs/row', 'client µs/row', 'others', 'rows/s per run'];
    const rows = results.map((r) => [
      r.factor === 1 ? r.label : '',
      String(r.factor),
      fmtInt(r.rowsPerSec),
      fmtMs(r.p50Ms),
      fmtMs(r.p99Ms),
      fmtFix(r.serverCpuUsPerRow, 1),
      fmtFix(r.clientCpuUsPerRow, 1),
      fmtFix(r.otherCores, 2),
      r.runs.map((s) => fmtK(s.rowsPerSec)).join(' / '),
    ]);
    console.log(`\nThroughput (median of ${o.runs} run${o.runs > 1 ? 's' : ''}; srv = master + 3 shards, CPU from /proc; latency per call)`);
    console.log(table(header, rows, header.map((_, i) => i > 1 && i < 8)));
    const ratioHeader = ['workload', 'rows/s f3/f1', 'srv µs/row f3/f1', 'p50 f3/f1'];
    const ratios = WORKLOADS.map((w) => {
      const r = (get: (s: Sample) => number) => med(w, 3, get) / med(w, 1, get);
      return { workload: w.id, rowsPerSec: r((s) => s.rowsPerSec), serverUsPerRow: r((s) => s.serverUsPerRow), p50Ms: r((s) => s.p50Ms) };
    });
    console.log('\nFactor 3 ÷ factor 1 (medians)');
    console.log(table(ratioHeader, ratios.map((x) => [x.workload, fmtRatio(x.rowsPerSec), fmtRatio(x.serverUsPerRow), fmtRatio(x.p50Ms)]), ratioHeader.map((_, i) => i > 0)));
    const noisiest = Math.max(...[...samples.values()].flat().map((x) => x.otherCores));
    console.log(`others = cores used by every other process on the machine (worst run); should be ~0. The idle cluster of the other factor counts in it.`);
    if (noisiest >= 0.25) console.log(`NOTE: other processes kept up to ${noisiest.toFixed(2)} of ${cpus().length} cores busy during a measurement: those lines are noisy.`);

    // ---- failovers: only the failover's cluster on the machine
    const f3 = setups.find((s) => s.factor === 3)!;
    await stopCluster(setups.find((s) => s.factor === 1)!.cluster);
    if (!o.reuse) await stopCluster(f3.cluster);
    const trials: Failover[] = [];
    if (o.failovers > 0) {
      console.log(
        `\nFailover (factor 3, 3 shards, ${o.reuse ? "all on the throughput's cluster: the killed shard restarted and every range back in sync before the next kill" : 'a fresh cluster each'}): ` +
          `kill -9 of a range's primary with 8 writes in flight; shardDownAfterMs 2000 and heartbeats 250 ms (the test harness's), ` +
          `replica lease 2000 ms and ack timeout 3000 ms (the shard's defaults), the master's failover pass every 250 ms`,
      );
    }
    for (let i = 0; i < o.failovers; i++) {
      const fresh = o.reuse ? undefined : await startCluster(3, `failover-${i + 1}`);
      const t = await failoverOnce(fresh?.cluster ?? f3.cluster, fresh?.db ?? f3.db, i, o.reuse);
      if (fresh) await stopCluster(fresh.cluster);
      trials.push(t);
      console.log(
        `failover ${i + 1}/${o.failovers}: ${t.victim} killed, ${t.promoted} promoted; first ack on its range after ${fmtInt(t.totalMs)} ms ` +
          `(promoted at +${fmtInt(t.promotedMs)}, new primary took it +${fmtInt(t.mapToPrimaryMs)} later, first ack +${fmtInt(t.primaryToAckMs)} after that` +
          `${t.followerSnapshots ? `; meanwhile it sent its followers ${t.followerSnapshots} snapshot(s) of the range` : ''}); ` +
          `${o.reuse ? `restarted shard back in sync in ${fmtInt(t.rejoinMs)} ms; ` : ''}background writes ${t.backgroundAcked} acked, ${t.backgroundFailed} timed out`,
      );
    }
    if (trials.length) {
      const part = (label: string, get: (t: Failover) => number) => [label, fmtInt(median(trials.map(get))), trials.map((t) => fmtInt(get(t))).join(' / ')];
      const parts = [
        part('kill -9 → first acknowledged write on the range', (t) => t.totalMs),
        part('  kill → follower promoted (down detection + pass)', (t) => t.promotedMs),
        part('  promoted → new primary takes the range', (t) => t.mapToPrimaryMs),
        part('  new primary → first ack (lease wait + retry)', (t) => t.primaryToAckMs),
        ...(o.reuse ? [part('restart → every range 3 in sync again', (t) => t.rejoinMs)] : []),
      ];
      console.log(`\nFailover time (median of ${trials.length})`);
      console.log(table(['', 'median ms', 'per trial ms'], parts, [false, true, false]));
      console.log(
        'The new primary serves only once a deposed primary\'s lease (2000 ms) has run out after it took the range; down detection is ' +
          '2000 ms after the last heartbeat (≤ 250 ms before the kill). A part that reads "-" was not found in the logs.',
      );
    }

    // ---- results file
    const date = new Date().toISOString().slice(0, 10);
    let out = o.out;
    if (out === 'default') {
      mkdirSync(join(root, 'bench/results'), { recursive: true });
      out = join(root, 'bench/results', `replication-${date}.json`);
      for (let n = 2; existsSync(out); n++) out = join(root, 'bench/results', `replication-${date}-${n}.json`);
    }
    if (out) {
      const file = {
        date,
        machine,
        options: { seconds: o.seconds, runs: o.runs, warmupSeconds: o.warmupSeconds, failovers: o.failovers, reuseCluster: o.reuse, quick: o.quick },
        settings: { shards: 3, heartbeatIntervalMs: 250, shardDownAfterMs: 2000, replicaLeaseMs: 2000, replicaAckTimeoutMs: 3000 },
        results: results.map(({ label: _, ...r }) => r),
        ratios,
        failover: { medianMs: median(trials.map((t) => t.totalMs)), trials },
      };
      // NaN (a part not found in the logs) is written as null.
      writeFileSync(out, JSON.stringify(file, (_, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
      console.log(`results: ${out}`);
    }
    console.log(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await cleanup();
  }
}

main().then(
  () => setTimeout(() => process.exit(process.exitCode ?? 0), 500).unref(),
  (err) => {
    process.stderr.write(`replication-bench failed: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
