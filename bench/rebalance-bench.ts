/**
 * Rebalance benchmark (issue 3): a real master and 2 shards as child
 * processes, N rows loaded, then a third shard joins and a rebalance runs
 * while a client keeps writing and reading. It prints, from one run:
 *
 * - moved / minimum bytes (the planner's overhead over the least any plan must move);
 * - the transfer rate in MB/s and rows/s, beside raw classic-level batch
 *   ingestion of the same rows in the same run;
 * - throttle accuracy: a drain throttled to --throttle-mbps, achieved vs limit;
 * - client p50/p99 during the move against idle;
 * - the longest fence, in ms.
 *
 *   npm run build && npm run bench:rebalance [-- --rows 100000 --throttle-mbps 2]
 *
 * Nothing here asserts a time.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ClassicLevel } from 'classic-level';
import type { MoveInfo } from '../proto/gen/cairn/v1/admin.js';
import { CairnClient } from '../services/client/index.js';
import { LOAD_COLUMN, loadRowKey, loadValue } from '../cli/loadgen.js';
import { startProcCluster, waitUntil } from '../test/harness/cluster.js';

function flag(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

const ROWS = flag('rows', 100_000);
const VALUE_BYTES = flag('value-size', 100);
const THROTTLE_MBPS = flag('throttle-mbps', 2);
const CLIENT_SECONDS = flag('idle-seconds', 5);

interface Latencies {
  ops: number;
  p50: number;
  p99: number;
}

/** A client writing and reading its own rows, 8 calls in flight, until `stop()`. */
function clientLoad(db: CairnClient): { stop(): Promise<Latencies>; errors: string[] } {
  const lat: number[] = [];
  const errors: string[] = [];
  let running = true;
  let seq = 0;
  const worker = async (w: number) => {
    while (running) {
      const row = `bench-client/${w}/${seq++ % 500}`;
      const t = performance.now();
      try {
        if (seq % 2) await db.put(row, { v: randomBytes(50) });
        else await db.get(row);
        lat.push(performance.now() - t);
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
  };
  const workers = Array.from({ length: 8 }, (_, w) => worker(w));
  return {
    errors,
    async stop() {
      running = false;
      await Promise.all(workers);
      const s = Float64Array.from(lat).sort();
      const q = (x: number) => (s.length ? s[Math.min(s.length - 1, Math.floor(x * s.length))]! : NaN);
      return { ops: s.length, p50: q(0.5), p99: q(0.99) };
    },
  };
}

async function rebalance(db: CairnClient, how: { drain?: string; maxMbps: number }): Promise<{ moves: MoveInfo[]; seconds: number; minimumBytes: number; totalBytes: number }> {
  const started = performance.now();
  const res = how.drain
    ? await db.dropServer(how.drain, { maxMbps: how.maxMbps })
    : await db.startRebalance({ maxMbps: how.maxMbps });
  let moves: MoveInfo[] = [];
  if (res.operationId) for await (const snap of db.watchOperation(res.operationId)) moves = snap.moves;
  return {
    moves,
    seconds: (performance.now() - started) / 1000,
    minimumBytes: Number(res.plan?.minimumBytes ?? 0),
    totalBytes: Number(res.plan?.totalBytes ?? 0),
  };
}

/** Seconds each move spent in copy and catch-up (from its journal), summed over moves that overlap: wall time of the transfer. */
function transferWindow(moves: MoveInfo[]): number {
  let first = Infinity;
  let last = 0;
  for (const m of moves) {
    for (const h of m.history) {
      const at = Number(h.atMs);
      if (h.state === 'copying') first = Math.min(first, at);
      if (h.state === 'committed') last = Math.max(last, at);
    }
  }
  return Math.max(0.001, (last - first) / 1000);
}

async function levelIngest(rows: number): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-rebench-level-'));
  const db = new ClassicLevel<string, Buffer>(dir, { valueEncoding: 'buffer' });
  await db.open();
  const t = performance.now();
  for (let i = 0; i < rows; i += 1000) {
    const ops = [];
    for (let j = i; j < Math.min(rows, i + 1000); j++) ops.push({ type: 'put' as const, key: loadRowKey(1, j), value: loadValue(1, j, VALUE_BYTES) });
    await db.batch(ops);
  }
  const seconds = (performance.now() - t) / 1000;
  await db.close();
  await rm(dir, { recursive: true, force: true });
  return rows / seconds;
}

const fmt = (n: number, d = 1) => n.toLocaleString('en-US', { maximumFractionDigits: d });

async function main(): Promise<void> {
  console.log(`Cairn rebalance benchmark — ${ROWS.toLocaleString()} rows of ${VALUE_BYTES} B, 2 shards + 1 joining; throttle test at ${THROTTLE_MBPS} MB/s`);
  const cluster = await startProcCluster({ shards: 2 });
  const db = await CairnClient.connect({ master: cluster.masterAddress, user: 'admin', password: 'admin-pass', timeoutMs: 30_000 });
  try {
    const t0 = performance.now();
    for (let i = 0; i < ROWS; i += 1000) {
      const batch = [];
      for (let j = i; j < Math.min(ROWS, i + 1000); j++) batch.push({ row: loadRowKey(0, j), cells: [{ column: LOAD_COLUMN, value: loadValue(0, j, VALUE_BYTES) }] });
      await db.writeRows(batch);
    }
    console.log(`loaded ${ROWS.toLocaleString()} rows in ${fmt((performance.now() - t0) / 1000)} s`);

    const idle = clientLoad(db);
    await new Promise((r) => setTimeout(r, CLIENT_SECONDS * 1000));
    const idleLat = await idle.stop();

    await cluster.addShard();
    await waitUntil(async () => (await db.listServers()).filter((s) => s.status === 'up').length === 3, 20_000, 'the third shard');
    await waitUntil(async () => (await db.listServers()).reduce((n, s) => n + s.rows, 0) >= ROWS, 20_000, 'exact counts');

    const busy = clientLoad(db);
    const r = await rebalance(db, { maxMbps: 0 });
    const busyLat = await busy.stop();
    const movedBytes = r.moves.filter((m) => m.state === 'cleaned' || m.state === 'committed').reduce((n, m) => n + Number(m.bytes), 0);
    const movedRows = Math.round((movedBytes / Math.max(1, r.totalBytes)) * ROWS);
    const window = transferWindow(r.moves);
    const longestFence = Math.max(0, ...r.moves.map((m) => m.fenceMs));
    const levelRowsPerSec = await levelIngest(movedRows || ROWS);

    // Throttle: drain the new shard at a low rate and compare the achieved rate to the limit.
    const t = await rebalance(db, { drain: r.moves[0]!.to, maxMbps: THROTTLE_MBPS });
    const tBytes = t.moves.reduce((n, m) => n + Number(m.copiedBytes), 0);
    const tRate = tBytes / transferWindow(t.moves) / 1e6;

    const rows: Array<[string, string]> = [
      ['moves', `${r.moves.length} (${r.moves.filter((m) => m.state === 'aborted').length} aborted)`],
      ['moved / total bytes', `${fmt(movedBytes / 1e6, 2)} MB / ${fmt(r.totalBytes / 1e6, 2)} MB = ${fmt((100 * movedBytes) / Math.max(1, r.totalBytes))}%`],
      ['moved / minimum', `${fmt(movedBytes / Math.max(1, r.minimumBytes), 3)}x (minimum ${fmt(r.minimumBytes / 1e6, 2)} MB)`],
      ['transfer', `${fmt(movedBytes / 1e6 / window, 2)} MB/s, ${fmt(movedRows / window, 0)} rows/s over ${fmt(window, 2)} s (copy start to last commit)`],
      ['raw classic-level batch ingest, same rows', `${fmt(levelRowsPerSec, 0)} rows/s → transfer is ${fmt((100 * movedRows) / window / levelRowsPerSec)}% of it`],
      ['throttle', `limit ${THROTTLE_MBPS} MB/s, achieved ${fmt(tRate, 2)} MB/s (${fmt((100 * tRate) / THROTTLE_MBPS)}% of the limit) over ${fmt(tBytes / 1e6, 2)} MB`],
      ['client idle', `p50 ${fmt(idleLat.p50, 2)} ms, p99 ${fmt(idleLat.p99, 2)} ms (${idleLat.ops} ops)`],
      ['client during the move', `p50 ${fmt(busyLat.p50, 2)} ms, p99 ${fmt(busyLat.p99, 2)} ms (${busyLat.ops} ops, ${busy.errors.length} errors)`],
      ['longest fence', `${fmt(longestFence, 1)} ms`],
    ];
    const w = Math.max(...rows.map(([k]) => k.length));
    for (const [k, v] of rows) console.log(`${k.padEnd(w)}  ${v}`);
    if (busy.errors.length) console.log(`client errors (first): ${busy.errors[0]}`);
  } finally {
    db.close();
    await cluster.cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
