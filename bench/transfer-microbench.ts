/**
 * The range transfer's store side in one process, by stage, against raw
 * classic-level batch ingestion of 1,000-row batches (what bench:peers'
 * `transfer_vs_level` compares with):
 *
 *   export   store.exportRange of a quarter of the hash space (1 MiB chunks)
 *   wire     per chunk: checksum + toWireOps + protobuf encode, then decode + fromWireOps + checksum (both sides)
 *   apply    the destination: deleteRange, then every chunk as the pull applies a COPY chunk
 *   level    the same number of rows as 1,000-row batches into a fresh classic-level, 4 in flight
 *   delete   the destination deletes the range again (what the source does after a commit)
 *
 * Rows are as bench:peers writes them (one 100-byte cell, a request id per
 * call). Usage: node dist/bench/transfer-microbench.js [--rows N] [--runs N] [--mode exact|ingest]
 * Nothing here asserts a time.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { ClassicLevel } from 'classic-level';
import { TransferPhase, TransferRangeResponse } from '../proto/gen/cairn/v1/control.js';
import { ShardStore, type RawOp } from '../services/shard/store.js';
import { fromWireOps, toWireOps, TransferDigest } from '../services/shard/transfer-wire.js';
import { KeyGen, median, nextValue } from './lib/common.js';

const args = process.argv.slice(2);
const arg = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const ROWS = Number(arg('rows', '200000'));
const RUNS = Number(arg('runs', '3'));
const MODE = arg('mode', 'exact');
/** --profile FILE: a CPU profile of the apply stage alone (every run's), written to FILE. */
const PROFILE = arg('profile', '');
const CHUNK = 1 << 20;
const RANGE = { start: 0n, end: 1n << 62n }; // a quarter of the space

const cpu = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

async function timed<T>(f: () => Promise<T>): Promise<{ s: number; cpu: number; v: T }> {
  const c0 = cpu();
  const t0 = performance.now();
  const v = await f();
  return { s: (performance.now() - t0) / 1000, cpu: cpu() - c0, v };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-txbench-'));
  try {
    const src = await ShardStore.open(join(dir, 'src'));
    const keys = new KeyGen(42);
    let id = 0;
    for (let i = 0; i < ROWS; i += 1000) {
      const rows = [];
      for (let j = i; j < Math.min(ROWS, i + 1000); j++) rows.push({ row: keys.next('k'), cells: [{ column: 'v', timestampUs: 0n, value: Buffer.from(nextValue(100)) }], replace: false });
      await src.writeRows(rows, { requestId: (id++).toString(16).padStart(32, '0'), sync: false });
    }
    const moved = src.rangeStats(RANGE).rows;
    console.log(`source: ${ROWS} rows, ${moved} in the moved range; mode ${MODE}`);
    const out: Record<string, number[]> = {};
    const add = (k: string, v: number) => (out[k] ??= []).push(v);
    for (let run = 1; run <= RUNS; run++) {
      const ex = await timed(async () => {
        const chunks: RawOp[][] = [];
        for await (const c of src.exportRange(RANGE, CHUNK)) chunks.push(c);
        return chunks;
      });
      const chunks = ex.v;
      const wire = await timed(async () => {
        const sent = new TransferDigest();
        const got = new TransferDigest();
        const received: RawOp[][] = [];
        for (const ops of chunks) {
          const seq = sent.update(ops);
          const bytes = TransferRangeResponse.encode({ header: { nodeId: 'source', epoch: 1n }, chunk: { seq: BigInt(seq), phase: TransferPhase.TRANSFER_PHASE_COPY, ops: toWireOps(ops) } }).finish();
          const msg = TransferRangeResponse.decode(bytes);
          const r = fromWireOps(msg.chunk!.ops, RANGE);
          got.update(r);
          received.push(r);
        }
        return received;
      });
      const dst = await ShardStore.open(join(dir, `dst${run}`));
      const session = PROFILE ? new Session() : null;
      if (session) {
        session.connect();
        await new Promise((r) => session.post('Profiler.enable', () => session.post('Profiler.start', r)));
      }
      const ap = await timed(async () => {
        await dst.deleteRange(RANGE);
        if (MODE === 'ingest') {
          const ingest = await dst.beginIngest(RANGE);
          for (const ops of wire.v) await ingest.apply(ops, { sync: false });
          ingest.close();
          if (ingest.counts.exact > 0) throw new Error(`ingest went the exact way: ${ingest.taintedBy}`);
        } else {
          for (const ops of wire.v) await dst.applyRaw(ops, { sync: false });
        }
      });
      if (session) {
        await new Promise<void>((r) =>
          session.post('Profiler.stop', (err, res) => {
            if (!err) writeFileSync(`${PROFILE}.${run}.cpuprofile`, JSON.stringify(res.profile));
            r();
          }),
        );
        session.disconnect();
      }
      const lv = new ClassicLevel<string, Buffer>(join(dir, `level${run}`), { valueEncoding: 'buffer' });
      const lkeys = new KeyGen(7);
      const le = await timed(async () => {
        let next = 0;
        const worker = async () => {
          while (next < moved) {
            const n = Math.min(1000, moved - next);
            next += n;
            const ops = [];
            for (let j = 0; j < n; j++) ops.push({ type: 'put' as const, key: lkeys.next('k'), value: nextValue(100) });
            await lv.batch(ops);
          }
        };
        await Promise.all([worker(), worker(), worker(), worker()]);
      });
      await lv.close();
      if (dst.rangeStats(RANGE).rows !== moved) throw new Error(`the destination holds ${dst.rangeStats(RANGE).rows} rows of the range, not ${moved}`);
      if ((await dst.verifyDerived()).length) throw new Error('derived records are wrong after the copy');
      // The source's side after a commit: deleting the range (bulk deleteRange; in exact mode as before it: applyRaw of 1,000 deletes at a time).
      const del = await timed(async () => {
        if (MODE === 'ingest') return dst.deleteRange(RANGE);
        const keys = (await (async () => { const all: RawOp[] = []; for await (const c of dst.exportRange(RANGE, CHUNK)) all.push(...c); return all; })());
        for (let i = 0; i < keys.length; i += 1000) await dst.applyRaw(keys.slice(i, i + 1000).map((op) => ({ sublevel: op.sublevel, key: op.key })), { sync: false });
        return keys.length;
      });
      if (dst.rangeStats(RANGE).rows !== 0) throw new Error('the range was not deleted');
      add('delete', moved / del.s);
      console.log(`  delete ${(moved / del.s / 1e3).toFixed(1)}k rows/s (${((del.cpu / moved) * 1e6).toFixed(1)} µs cpu/row)`);
      const derived = await dst.verifyDerived();
      const stats = dst.rangeStats(RANGE);
      const recount = await dst.recountStats(RANGE);
      if (derived.length || stats.rows !== recount.rows || stats.bytes !== recount.bytes) {
        throw new Error(`destination is wrong: ${derived.slice(0, 3).join('; ')} stats ${JSON.stringify(stats)} recount ${JSON.stringify(recount)} moved ${moved}`);
      }
      await dst.close();
      const keysMoved = chunks.reduce((n, c) => n + c.length, 0);
      console.log(
        `run ${run}: ${chunks.length} chunks, ${keysMoved} keys; export ${(moved / ex.s / 1e3).toFixed(1)}k rows/s (${((ex.cpu / moved) * 1e6).toFixed(1)} µs cpu/row), ` +
          `wire ${(moved / wire.s / 1e3).toFixed(1)}k (${((wire.cpu / moved) * 1e6).toFixed(1)}), apply ${(moved / ap.s / 1e3).toFixed(1)}k (${((ap.cpu / moved) * 1e6).toFixed(1)}), ` +
          `level ${(moved / le.s / 1e3).toFixed(1)}k (${((le.cpu / moved) * 1e6).toFixed(1)}); apply ÷ level ${(le.s / ap.s).toFixed(2)}`,
      );
      add('export', moved / ex.s);
      add('wire', moved / wire.s);
      add('apply', moved / ap.s);
      add('level', moved / le.s);
      add('ratio', le.s / ap.s);
      add('pipeline', moved / (ex.s + wire.s + ap.s));
      add('pipelineRatio', le.s / (ex.s + wire.s + ap.s));
    }
    console.log(
      'medians: ' +
        Object.entries(out)
          .map(([k, v]) => `${k} ${k.endsWith('atio') ? median(v).toFixed(2) : (median(v) / 1e3).toFixed(1) + 'k'}`)
          .join(', '),
    );
    await src.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
