/**
 * The move throttle, end to end (issue 11 item 8): real processes, real
 * LevelDB. A shard holding several MB is drained with `cairn ctl dropserver
 * --max-mbps 1`, one move at a time, while the test samples, every 200 ms,
 * what the master reports: the bytes the destination has received
 * (cairn_move_bytes_transferred_total on /metrics, the wire's key and value
 * bytes) and each move's copied bytes and rate (ListMoves).
 *
 * `--max-mbps X` is MB/s, 10^6 bytes per second, per move. Over every window
 * of at least 5 s, the bytes received and the bytes the move reports as
 * copied stay at or under X * 1.1, and so does the move's own average (its
 * journaled copy start to its fence). Only upper bounds: a slow machine makes
 * a move slower, never faster.
 *
 * Before the fix the first 1 MiB chunk went out at once and the rest was paced
 * from there, so a 5 s window held 1 MiB more than 5 MB (about 1.2x).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { CairnClient } from '../services/client/index.js';
import { startProcCluster, type Proc, type ProcCluster } from './harness/cluster.js';

const LIMIT_MBPS = 1;
const LIMIT = LIMIT_MBPS * 1e6; // bytes per second: MB as the help states it
const WINDOW_MS = 5000;
const SLACK = 1.1;

function metricsAddress(p: Proc): string {
  const rec = p.logs.find((l) => l.message === 'metrics listening');
  if (!rec) throw new Error(`${p.name} logged no "metrics listening"`);
  return String(rec.address);
}

async function transferredBytes(address: string): Promise<number> {
  const text = await (await fetch(`http://${address}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('cairn_move_bytes_transferred_total '));
  return line ? Number(line.split(' ')[1]) : 0;
}

interface Sample {
  at: number;
  transferred: number;
  moves: Array<{ id: string; state: string; copiedBytes: number; bytesPerSec: number }>;
}

/** The highest rate (bytes/s) between two samples at least WINDOW_MS apart, with the window it was seen over. */
function worstWindow(points: Array<{ at: number; bytes: number }>): { rate: number; from: number; ms: number; bytes: number } {
  let worst = { rate: 0, from: 0, ms: 0, bytes: 0 };
  for (let i = 0; i < points.length; i++) {
    for (let j = i + 1; j < points.length; j++) {
      const ms = points[j]!.at - points[i]!.at;
      if (ms < WINDOW_MS) continue;
      const bytes = points[j]!.bytes - points[i]!.bytes;
      const rate = (bytes * 1000) / ms;
      if (rate > worst.rate) worst = { rate, from: points[i]!.at - points[0]!.at, ms, bytes };
    }
  }
  return worst;
}

describe('a move throttled to 1 MB/s', () => {
  let cluster: ProcCluster;
  let client: CairnClient;

  beforeAll(async () => {
    cluster = await startProcCluster({ shards: 2, masterArgs: ['--metrics-listen', '127.0.0.1:0', '--max-concurrent-moves', '1'] });
    // About 7 MB on each shard: a drain of one is a move of several MB, over 5 s at 1 MB/s.
    const load = await cluster.ctl(['load', '--rows', '7000', '--value-size', '2000', '--seed', '3', '--json'], { timeoutMs: 120_000 });
    expect({ code: load.code, stderr: load.stderr }).toEqual({ code: 0, stderr: '' });
    client = await CairnClient.connect({ master: cluster.masterAddress, user: cluster.ctlEnv.CAIRN_USER!, password: cluster.ctlEnv.CAIRN_PASSWORD!, timeoutMs: 10_000 });
  }, 180_000);

  afterAll(async () => {
    client?.close();
    await cluster?.cleanup();
  });

  it('stays at or under 1 MB/s plus 10% over every window of 5 s, as received and as reported', async () => {
    const metrics = metricsAddress(cluster.master);
    const victim = (await cluster.ctl(['servers', '--json'])).json.servers[1].id as string;
    let done = false;
    const drain = cluster.ctl(['dropserver', victim, '--yes', '--json', '--max-mbps', String(LIMIT_MBPS)], { timeoutMs: 240_000 }).finally(() => (done = true));
    const samples: Sample[] = [];
    while (!done) {
      const [transferred, listed] = await Promise.all([transferredBytes(metrics), client.admin((a) => a.listMoves, { all: false })]);
      samples.push({
        at: Date.now(),
        transferred,
        moves: listed.moves.map((m) => ({ id: m.id, state: m.state, copiedBytes: Number(m.copiedBytes), bytesPerSec: m.bytesPerSec })),
      });
      await new Promise((r) => setTimeout(r, 200));
    }
    const r = await drain;
    expect({ code: r.code, aborted: r.json?.aborted }).toEqual({ code: 0, aborted: 0 });
    const movedBytes = r.json.movedBytes as number;
    expect(movedBytes).toBeGreaterThan(5e6);

    // What the destination received, over wall time.
    const received = worstWindow(samples.map((s) => ({ at: s.at, bytes: s.transferred })));
    // What each move reports: its copied bytes over wall time, and its rate figure averaged over the copy.
    const reported: Array<{ id: string; worst: ReturnType<typeof worstWindow>; meanRate: number; maxRate: number }> = [];
    for (const id of new Set(samples.flatMap((s) => s.moves.map((m) => m.id)))) {
      const seen = samples.flatMap((s) => s.moves.filter((m) => m.id === id).map((m) => ({ at: s.at, ...m })));
      const copying = seen.filter((m) => m.state === 'copying' && m.bytesPerSec > 0);
      reported.push({
        id,
        worst: worstWindow(seen.map((m) => ({ at: m.at, bytes: m.copiedBytes }))),
        meanRate: copying.reduce((n, m) => n + m.bytesPerSec, 0) / Math.max(1, copying.length),
        maxRate: Math.max(0, ...copying.map((m) => m.bytesPerSec)),
      });
    }
    // Each move's journaled average: its planned bytes from `copying` to `fenced`.
    const journal = (await client.admin((a) => a.listMoves, { all: true })).moves.filter((m) => r.json.moves.some((x: { start: string }) => x.start === String(m.start)));
    const averages = journal.map((m) => {
      const at = (s: string) => Number(m.history.find((h) => h.state === s)?.atMs ?? 0);
      const ms = at('fenced') - at('copying');
      return { id: m.id, bytes: Number(m.bytes), ms, rate: (Number(m.bytes) * 1000) / ms };
    });
    const report = { received, reported, averages, samples: samples.length };
    console.log(`throttle at ${LIMIT_MBPS} MB/s: ${JSON.stringify(report)}`);

    expect(received.ms).toBeGreaterThanOrEqual(WINDOW_MS); // the move lasted long enough to measure a window
    const over: string[] = [];
    const check = (what: string, rate: number) => rate > LIMIT * SLACK && over.push(`${what}: ${(rate / 1e6).toFixed(3)} MB/s`);
    check('received, worst 5 s window', received.rate);
    for (const m of reported) {
      check(`${m.id} copied bytes, worst 5 s window`, m.worst.rate);
      check(`${m.id} reported rate, mean while copying`, m.meanRate);
    }
    for (const a of averages.filter((x) => x.ms >= WINDOW_MS)) check(`${a.id} journaled average`, a.rate);
    expect(over).toEqual([]);
  }, 300_000);
});
