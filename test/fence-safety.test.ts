/**
 * Fences that cannot strand a range (issue 10, items 4a–4c), with real
 * processes: a master, shards on their own LevelDB, a throttled rebalance,
 * and a destination that stops answering (SIGSTOP: its connections stay
 * open, nothing is read, nothing is acknowledged).
 *
 * 1. The destination is stopped mid-copy. The source counts what the
 *    destination acknowledged, not what it handed to gRPC, so it never
 *    reaches the fence: writes to the moving range keep succeeding for the
 *    whole stop, and after SIGCONT the move commits with every row.
 *    (Before: the source "sent" the rest into gRPC's buffers, fenced, and the
 *    range refused writes until the destination came back.)
 * 2. The destination stops right after it applied the fenced tail, before it
 *    confirms it (failpoint dest-after-fenced-tail=pause). The source lifts
 *    its fence once maxFenceMs (1000 ms, the default) has passed: writes to
 *    the range succeed again while the destination is still stopped; the
 *    master, whose pull reported FENCED and then no READY within maxFenceMs
 *    plus a margin, cancels it and journals the move `aborted` (still with
 *    the destination stopped); nothing acknowledged is lost
 *    (`ctl verify`, and every write the test saw acknowledged reads back),
 *    and the source's fence histogram holds the time the range really
 *    refused writes (as the writer saw it), not a figure from the master.
 *    (Before: the fence stayed up for as long as the destination was stopped.)
 *
 * Writes go straight to the source with a raw client and no epoch, so the
 * SDK's retries cannot hide a fenced range: every FENCED answer is seen.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { status } from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import type { ShardServiceClient } from '../proto/gen/cairn/v1/shard.js';
import { CairnClient } from '../services/client/index.js';
import { rowHash } from '../services/common/hash.js';
import { startProcCluster, waitUntil, type Proc, type ProcCluster } from './harness/cluster.js';
import { login, rawCall, rowsIn, shardClient } from './harness/raw.js';

const ROWS = 2000;
const VALUE_BYTES = 300;
/** Destinations take a 128 KiB message limit, so pulls ask for 32 KiB chunks: a move has many. */
const DEST_ENV = { CAIRN_MAX_MESSAGE_BYTES: String(128 * 1024) };
const MAX_FENCE_MS = 1000; // the shard default

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Range {
  start: bigint;
  end: bigint;
}

/** The moveId and range of the first 'transfer started' a shard logged after log line `from`. */
function transferStarted(p: Proc, from: number): { moveId: string; range: Range } | undefined {
  const rec = p.logs.slice(from).find((l) => l.message === 'transfer started');
  if (!rec) return undefined;
  const m = /^\[(\d+), (\d+)\)$/.exec(String(rec.range));
  if (!m) throw new Error(`unparsable range in ${JSON.stringify(rec)}`);
  return { moveId: String(rec.moveId), range: { start: BigInt(m[1]!), end: BigInt(m[2]!) } };
}

/**
 * Writes to rows of one range through one shard, as fast as answers come
 * (one call at a time, a short pause between), recording every answer.
 */
class RangeWriter {
  readonly acked = new Map<string, string>();
  readonly answers: Array<{ at: number; ok: boolean; code?: string; domain?: string }> = [];
  private stopped = false;
  private readonly loop: Promise<void>;
  private readonly client: ShardServiceClient;

  constructor(address: string, token: string, rows: string[], tag: string) {
    const client = (this.client = shardClient(address));
    this.loop = (async () => {
      for (let n = 0; !this.stopped; n++) {
        const row = rows[n % rows.length]!;
        const value = `${tag}-${n}`;
        const r = await rawCall(
          client,
          client.writeRows,
          { epoch: 0n, requestId: `${tag}-${n}`, sync: false, rows: [{ row, replace: false, cells: [{ column: 'w:v', timestampUs: 0n, value: Buffer.from(value) }] }] },
          token,
        );
        if (r.res) this.acked.set(row, value);
        this.answers.push({
          at: Date.now(),
          ok: !r.err,
          code: r.err ? status[r.err.code] : undefined,
          domain: r.err ? String(r.err.metadata.get('cairn-error-code')[0] ?? '') : undefined,
        });
        await sleep(20);
      }
    })();
  }

  failures(since = 0) {
    return this.answers.filter((a) => !a.ok && a.at >= since);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    this.client.close();
  }

  /** Acknowledged writes that do not read back (through the SDK, any shard). */
  async lost(sdk: CairnClient): Promise<string[]> {
    const rows = [...this.acked.keys()];
    const got = await sdk.getRows(rows, { columns: ['w:v'], timeoutMs: 20_000 });
    return rows.filter((r) => got.get(r)?.[0]?.value.toString() !== this.acked.get(r));
  }
}

function metricsAddress(p: Proc): string {
  const rec = p.logs.find((l) => l.message === 'metrics listening');
  if (!rec) throw new Error(`${p.name} logged no "metrics listening"`);
  return String(rec.address);
}

async function scrape(p: Proc): Promise<string> {
  const res = await fetch(`http://${metricsAddress(p)}/metrics`);
  if (res.status !== 200) throw new Error(`GET /metrics of ${p.name}: ${res.status}`);
  return res.text();
}

function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const l = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => l[k] === v)) return Number(m[3]);
  }
  return undefined;
}

/** True while the process is stopped (SIGSTOP): state T in /proc/PID/stat. */
function isPaused(p: Proc): boolean {
  const stat = readFileSync(`/proc/${p.child.pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
}

interface MoveJson {
  id: string;
  from: string;
  to: string;
  state: string;
  error?: string;
}

describe('fences that cannot strand a range (real processes)', () => {
  let cluster: ProcCluster;
  let token: string;
  let sdk: CairnClient;

  const moves = async (): Promise<MoveJson[]> => (await cluster.ctl(['moves', '--all', '--json'])).json.moves;

  beforeAll(async () => {
    cluster = await startProcCluster({
      shards: 1,
      // One move at a time, so the stopped destination holds up exactly one move.
      masterArgs: ['--max-concurrent-moves', '1'],
      env: { CAIRN_METRICS_LISTEN: '127.0.0.1:0' },
    });
    const load = await cluster.ctl(['load', '--rows', String(ROWS), '--value-size', String(VALUE_BYTES), '--json'], { timeoutMs: 120_000 });
    expect(load.code).toBe(0);
    token = await login(cluster.masterAddress, 'writer', 'writer-pass');
    sdk = await CairnClient.connect({ master: cluster.masterAddress, user: 'writer', password: 'writer-pass' });
  }, 120_000);

  afterAll(async () => {
    sdk?.close();
    for (const s of cluster?.shards ?? []) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGCONT');
    await cluster?.cleanup();
  });

  it('a destination stopped mid-copy never gets the source to fence: writes to the moving range keep succeeding, and the move commits after SIGCONT', async () => {
    const source = cluster.shards[0]!;
    const dest = await cluster.addShard({ env: DEST_ENV });
    await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers.length === 2, 20_000, 'the second shard');
    const mark = source.logs.length;
    // Throttled to 0.1 MB/s: copying half of ~0.7 MB takes seconds, so the stop lands mid-copy.
    const rebalance = cluster.ctl(['rebalance', '--yes', '--json', '--max-mbps', '0.1'], { timeoutMs: 120_000 });
    let started: ReturnType<typeof transferStarted>;
    await waitUntil(() => !!(started = transferStarted(source, mark)), 20_000, 'the transfer to start');
    const admin = await CairnClient.connect({ master: cluster.masterAddress, user: 'admin', password: 'admin-pass' });
    try {
      await waitUntil(async () => (await admin.admin((x) => x.listMoves, { all: false })).moves.some((m) => m.id === started!.moveId && m.copiedBytes > 0n), 20_000, 'the copy under way');
    } finally {
      admin.close();
    }
    dest.child.kill('SIGSTOP');
    const stoppedAt = Date.now();
    await waitUntil(() => isPaused(dest), 5000, 'the destination to stop');
    const writer = new RangeWriter(source.address, token, rowsIn(started!.range, 'stopped-mid-copy', 50), 'a');
    try {
      // Longer than the whole copy would take if the source did not wait for acknowledgements.
      await sleep(8000);
    } finally {
      await writer.stop();
    }
    const during = writer.answers.filter((a) => a.at >= stoppedAt);
    expect(during.length).toBeGreaterThan(50);
    expect(writer.failures(stoppedAt)).toEqual([]);
    expect(source.logs.slice(mark).filter((l) => l.message === 'range fenced')).toEqual([]);
    expect(sample(await scrape(source), 'cairn_shard_fenced_ranges')).toBe(0);

    dest.child.kill('SIGCONT');
    const r = await rebalance;
    expect({ code: r.code, stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stderr: '' });
    expect((await moves()).find((m) => m.id === started!.moveId)?.state).toBe('cleaned');
    expect(await writer.lost(sdk)).toEqual([]);
    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--value-size', String(VALUE_BYTES), '--json'], { timeoutMs: 120_000 });
    expect(verify.json).toEqual({ checked: ROWS, missing: 0, wrong: 0 });
  }, 120_000);

  it('a destination stopped after the fenced tail: the source lifts its fence after maxFenceMs, the move aborts, nothing acknowledged is lost, and the fence metric holds the real refusal time', async () => {
    const dest = await cluster.addShard({ env: { ...DEST_ENV, CAIRN_FAILPOINTS: 'dest-after-fenced-tail=pause' } });
    await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers.length === 3, 20_000, 'the third shard');
    const sources = cluster.shards.slice(0, 2);
    const marks = sources.map((s) => s.logs.length);
    const rebalance = cluster.ctl(['rebalance', '--yes', '--json', '--max-mbps', '0.1'], { timeoutMs: 180_000 });
    let source!: Proc;
    let started: ReturnType<typeof transferStarted>;
    await waitUntil(
      () =>
        sources.some((s, i) => {
          started = transferStarted(s, marks[i]!);
          if (started) source = s;
          return !!started;
        }),
      20_000,
      'the first transfer to start',
    );
    const writer = new RangeWriter(source.address, token, rowsIn(started!.range, 'stopped-fenced', 50), 'b');
    let paused = 0;
    let firstOkAfterFence = 0;
    try {
      await waitUntil(() => dest.logs.some((l) => l.message === 'failpoint: pausing'), 30_000, 'the destination to stop after the fenced tail');
      paused = Date.now();
      // The fence went up (writes were refused with FENCED); then, with the destination still stopped, writes succeed again.
      await waitUntil(() => writer.failures().length > 0 && writer.answers.at(-1)!.ok, 15_000, 'writes to the range to succeed again');
      firstOkAfterFence = Date.now();
      expect(isPaused(dest)).toBe(true);
      // The master ends the move: it is journaled aborted while the destination is still stopped.
      await waitUntil(async () => (await moves()).find((m) => m.id === started!.moveId)?.state === 'aborted', 20_000, 'the move to be journaled aborted');
      expect(isPaused(dest)).toBe(true);
    } finally {
      await writer.stop();
    }
    const refused = writer.failures();
    for (const f of refused) expect(f).toMatchObject({ code: 'UNAVAILABLE', domain: 'FENCED' });
    expect(writer.failures(firstOkAfterFence)).toEqual([]); // lifted for good
    const fencedFor = (refused.at(-1)!.at - refused[0]!.at) / 1000;
    expect(source.logs.some((l) => l.message === 'fence lifted: the destination did not confirm the fenced tail' && /maxFenceMs/.test(String(l.why)))).toBe(true);
    const aborted = (await moves()).find((m) => m.id === started!.moveId)!;
    // The destination is stopped, so the source's error cannot reach the master: the master's own bound on FENCED → READY ended the pull.
    expect(aborted.error).toMatch(/did not report READY within \d+ ms of reporting the fence \(the source's maxFenceMs 1000 ms plus a margin\)/);

    // Measured on the source, from the fence going up to its lift: about the bound, and what the writer saw.
    const text = await scrape(source);
    expect(sample(text, 'cairn_shard_fence_duration_seconds_count', { outcome: 'aborted' })).toBe(1);
    const seconds = sample(text, 'cairn_shard_fence_duration_seconds_sum', { outcome: 'aborted' })!;
    expect(seconds).toBeGreaterThanOrEqual(MAX_FENCE_MS / 1000);
    expect(seconds).toBeLessThan(MAX_FENCE_MS / 1000 + 1);
    expect(Math.abs(seconds - fencedFor)).toBeLessThan(0.5);
    expect(sample(text, 'cairn_shard_fenced_ranges')).toBe(0);
    expect(firstOkAfterFence).toBeGreaterThan(paused);

    dest.child.kill('SIGCONT');
    await rebalance; // exits non-zero: one move aborted
    // The point fires once: a fresh rebalance completes with the destination back.
    const again = await cluster.ctl(['rebalance', '--yes', '--json'], { timeoutMs: 120_000 });
    expect({ code: again.code, stderr: again.code === 0 ? '' : again.stderr }).toEqual({ code: 0, stderr: '' });
    expect((await cluster.ctl(['moves', '--json'])).json.moves).toEqual([]);
    expect(await writer.lost(sdk)).toEqual([]);
    const verify = await cluster.ctl(['verify', '--rows', String(ROWS), '--value-size', String(VALUE_BYTES), '--json'], { timeoutMs: 120_000 });
    expect(verify.json).toEqual({ checked: ROWS, missing: 0, wrong: 0 });
    for (const s of cluster.shards) expect(sample(await scrape(s), 'cairn_shard_fenced_ranges')).toBe(0);
  }, 150_000);
});
