/**
 * The store alone, in one process: ShardStore.writeRows of single rows (64 in
 * flight) and of 100- and 1,000-row batches (4 in flight), against raw
 * classic-level writes of the same rows (one put per row; one array batch
 * per call) measured in the same run, alternating. Prints rows/s, the
 * process's CPU per row (process.cpuUsage: LevelDB's threads are in it) and
 * the ratio of Cairn's rows/s to raw level's.
 *
 *   node dist/bench/store-bench.js [--seconds 2] [--runs 3] [--workloads put,batch100,batch1000] [--no-request-id]
 *
 * Rows are as bench:peers writes them: a random key `k<16 hex>`, one column
 * `v`, a 100-byte value, timestamp from the clock, and (unless
 * --no-request-id) a request id per call, as the SDK sends.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClassicLevel } from 'classic-level';
import { ShardStore } from '../services/shard/store.js';

interface Opts {
  seconds: number;
  runs: number;
  workloads: string[];
  requestId: boolean;
}

function parse(argv: string[]): Opts {
  const o: Opts = { seconds: 2, runs: 3, workloads: ['put', 'batch100', 'batch1000'], requestId: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--seconds') o.seconds = Number(argv[++i]);
    else if (a === '--runs') o.runs = Number(argv[++i]);
    else if (a === '--workloads') o.workloads = argv[++i]!.split(',');
    else if (a === '--no-request-id') o.requestId = false;
    else throw new Error(`unknown option ${a}`);
  }
  return o;
}

const VALUE_BYTES = 100;
let seq = 0;
// Cheap inputs, so the bench measures the writes: keys from a 64-bit xorshift, values cut from a random pool.
let x = BigInt.asUintN(64, BigInt('0x' + randomBytes(8).toString('hex')) | 1n);
const rowKey = (): string => {
  x ^= BigInt.asUintN(64, x << 13n);
  x ^= x >> 7n;
  x ^= BigInt.asUintN(64, x << 17n);
  return 'k' + x.toString(16).padStart(16, '0');
};
const POOL = randomBytes(1 << 20);
let at = 0;
const value = (): Buffer => {
  if (at + VALUE_BYTES > POOL.length) at = (at + 1) % 64;
  const v = POOL.subarray(at, at + VALUE_BYTES);
  at += VALUE_BYTES;
  return v;
};
const requestId = (): string => (++seq).toString(16).padStart(32, '0');

interface Result {
  rowsPerSec: number;
  cpuUsPerRow: number;
}

/** Runs `call` (which writes `rows` rows) with `inflight` callers for `seconds`. */
async function drive(seconds: number, inflight: number, rows: number, call: () => Promise<unknown>): Promise<Result> {
  const end = performance.now() + seconds * 1000;
  let done = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inflight }, async () => {
      while (performance.now() < end) {
        await call();
        done += rows;
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { rowsPerSec: done / elapsed, cpuUsPerRow: (cpu.user + cpu.system) / done };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const root = mkdtempSync(join(tmpdir(), 'cairn-store-bench-'));
  const store = await ShardStore.open(join(root, 'store'));
  const level = new ClassicLevel<string, Buffer>(join(root, 'level'), { keyEncoding: 'utf8', valueEncoding: 'buffer' });
  await level.open();
  const shapes: Record<string, { rows: number; inflight: number }> = { put: { rows: 1, inflight: 64 }, batch100: { rows: 100, inflight: 4 }, batch1000: { rows: 1000, inflight: 4 } };
  const out: Record<string, { cairn: Result[]; level: Result[] }> = {};
  try {
    for (let run = 0; run <= o.runs; run++) {
      for (const w of o.workloads) {
        const { rows, inflight } = shapes[w]!;
        const cairnCall = () => {
          const batch = Array.from({ length: rows }, () => ({ row: rowKey(), cells: [{ column: 'v', timestampUs: 0n, value: value() }], replace: false }));
          return store.writeRows(batch, { requestId: o.requestId ? requestId() : '', sync: false });
        };
        const levelCall = () => {
          if (rows === 1) return level.put(rowKey(), value());
          return level.batch(Array.from({ length: rows }, () => ({ type: 'put' as const, key: rowKey(), value: value() })));
        };
        // Run 0 is a warm-up; then alternate which goes first.
        const secs = run === 0 ? Math.min(1, o.seconds) : o.seconds;
        const order: ['cairn' | 'level', () => Promise<unknown>][] = run % 2 ? [['level', levelCall], ['cairn', cairnCall]] : [['cairn', cairnCall], ['level', levelCall]];
        for (const [name, call] of order) {
          const r = await drive(secs, inflight, rows, call);
          if (run === 0) continue;
          ((out[w] ??= { cairn: [], level: [] })[name]).push(r);
          console.log(`run ${run} ${w.padEnd(9)} ${name.padEnd(5)} ${Math.round(r.rowsPerSec).toLocaleString('en-US').padStart(9)} rows/s  ${r.cpuUsPerRow.toFixed(1).padStart(6)} µs/row CPU`);
        }
      }
    }
    console.log('\nmedians');
    for (const [w, r] of Object.entries(out)) {
      const c = median(r.cairn.map((x) => x.rowsPerSec));
      const l = median(r.level.map((x) => x.rowsPerSec));
      const ratios = r.cairn.map((x, i) => (x.rowsPerSec / r.level[i]!.rowsPerSec).toFixed(2)).join(' / ');
      console.log(
        `${w.padEnd(9)} cairn ${Math.round(c).toLocaleString('en-US').padStart(9)} rows/s ${median(r.cairn.map((x) => x.cpuUsPerRow)).toFixed(1).padStart(6)} µs/row | level ${Math.round(l).toLocaleString('en-US').padStart(9)} rows/s ${median(r.level.map((x) => x.cpuUsPerRow)).toFixed(1).padStart(6)} µs/row | cairn ÷ level ${(c / l).toFixed(2)} (per run ${ratios})`,
      );
    }
  } finally {
    await store.close();
    await level.close();
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
