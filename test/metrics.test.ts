/**
 * Prometheus metrics from real processes (CAIRN_METRICS_LISTEN): a scrape of
 * /metrics during `ctl load` shows cairn_requests_total rising and the
 * cairn_request_duration_seconds buckets filled for the operations used;
 * per-shard bytes/rows/ranges, the map epoch, process metrics; moves in
 * flight, bytes transferred and fence durations around a rebalance; and
 * `cairn dev` serves metrics from every process it starts.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { CAIRN_BIN, freeBasePort, runCtl, startProcCluster, waitUntil, type Proc, type ProcCluster } from './harness/cluster.js';

type Labels = Record<string, string>;

/** Every sample of `name` whose labels include `labels`. */
function samples(text: string, name: string, labels: Labels = {}): Array<{ labels: Labels; value: number }> {
  const out: Array<{ labels: Labels; value: number }> = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const l: Labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => l[k] === v)) out.push({ labels: l, value: Number(m[3]) });
  }
  return out;
}
const sum = (text: string, name: string, labels: Labels = {}) => samples(text, name, labels).reduce((n, s) => n + s.value, 0);

function metricsAddress(p: Proc): string {
  const rec = p.logs.find((l) => l.message === 'metrics listening');
  if (!rec) throw new Error(`${p.name} logged no "metrics listening"`);
  return String(rec.address);
}

async function scrape(address: string): Promise<string> {
  const res = await fetch(`http://${address}/metrics`);
  if (res.status !== 200) throw new Error(`GET ${address}/metrics: ${res.status}`);
  return res.text();
}

/** The histogram's buckets are cumulative, end at +Inf = count, and some finite bucket holds calls. */
function expectFilledHistogram(text: string, service: string, method: string): void {
  const buckets = samples(text, 'cairn_request_duration_seconds_bucket', { service, method });
  const count = sum(text, 'cairn_request_duration_seconds_count', { service, method });
  expect([service, method, count > 0]).toEqual([service, method, true]);
  const values = buckets.map((b) => b.value);
  expect(values).toEqual([...values].sort((a, b) => a - b));
  expect(buckets.find((b) => b.labels.le === '+Inf')!.value).toBe(count);
  expect(buckets.some((b) => b.labels.le !== '+Inf' && b.value > 0)).toBe(true);
  expect(sum(text, 'cairn_request_duration_seconds_sum', { service, method })).toBeGreaterThan(0);
}

describe('metrics from a cluster of processes', () => {
  let cluster: ProcCluster;
  const ROWS = 60_000;

  beforeAll(async () => {
    cluster = await startProcCluster({ shards: 2, env: { CAIRN_METRICS_LISTEN: '127.0.0.1:0' } });
  }, 90_000);
  afterAll(() => cluster?.cleanup());

  it('a scrape during `ctl load` shows cairn_requests_total rising and duration buckets filled for the operations used', async () => {
    const shardMetrics = cluster.shards.map(metricsAddress);
    const writes = async () => {
      let n = 0;
      for (const a of shardMetrics) n += sum(await scrape(a), 'cairn_requests_total', { service: 'shard', method: 'WriteRows', code: 'OK' });
      return n;
    };
    expect(await writes()).toBe(0);
    let loading = true;
    const load = runCtl(['load', '--rows', String(ROWS), '--concurrency', '1', '--json'], cluster.ctlEnv, 300_000).finally(() => (loading = false));
    const during: number[] = [];
    let duringText = '';
    while (loading) {
      const n = await writes();
      if (loading && n > 0 && (during.length === 0 || n > during.at(-1)!)) {
        during.push(n);
        duringText = await scrape(shardMetrics[0]!);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const result = await load;
    expect(result.json).toEqual({ written: ROWS, errors: 0 });
    // Rising while the load ran, and still higher once it finished.
    expect(during.length).toBeGreaterThanOrEqual(2);
    expect(during[1]!).toBeGreaterThan(during[0]!);
    const after = await writes();
    expect(after).toBeGreaterThanOrEqual(during.at(-1)!);
    expect(after).toBeGreaterThanOrEqual(ROWS / 500); // at least one call per 500-row batch
    expectFilledHistogram(duringText, 'shard', 'WriteRows');
    const master = await scrape(metricsAddress(cluster.master));
    expect(sum(master, 'cairn_requests_total', { service: 'master', method: 'Login', code: 'OK' })).toBeGreaterThanOrEqual(1);
    expectFilledHistogram(master, 'master', 'Login');
    expectFilledHistogram(master, 'master', 'GetMap');
    expectFilledHistogram(master, 'master', 'Heartbeat');
    for (const a of shardMetrics) expectFilledHistogram(await scrape(a), 'shard', 'WriteRows');
  }, 300_000);

  it('per-shard bytes, rows and ranges, the map epoch, and process metrics', async () => {
    const epoch = (await cluster.ctl(['ranges', '--json'])).json.epoch as string;
    let rows = 0;
    for (const p of cluster.shards) {
      const t = await scrape(metricsAddress(p));
      const [r] = samples(t, 'cairn_shard_rows');
      expect(r!.labels.shard).toMatch(/^s\d+$/);
      rows += r!.value;
      expect(sum(t, 'cairn_shard_bytes')).toBeGreaterThan(r!.value * 100);
      expect(sum(t, 'cairn_shard_ranges')).toBe(1);
      expect(sum(t, 'cairn_map_epoch')).toBe(Number(epoch));
      for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_seconds']) {
        expect([name, samples(t, name).length > 0]).toEqual([name, true]);
      }
    }
    expect(rows).toBe(ROWS);
    const masterAddr = metricsAddress(cluster.master);
    await waitUntil(async () => sum(await scrape(masterAddr), 'cairn_shard_rows') === ROWS, 20_000, 'heartbeats to carry the counts');
    const m = await scrape(masterAddr);
    expect(samples(m, 'cairn_shard_rows')).toHaveLength(2);
    expect(sum(m, 'cairn_shard_up')).toBe(2);
    expect(sum(m, 'cairn_shard_ranges')).toBe(2);
    expect(sum(m, 'cairn_map_epoch')).toBe(Number(epoch));
    expect(sum(m, 'cairn_moves_in_flight')).toBe(0);
    expect(m).toContain('process_cpu_user_seconds_total');
  }, 60_000);

  it('moves in flight, bytes transferred and fence durations follow a rebalance', async () => {
    const joined = await cluster.addShard();
    await waitUntil(async () => (await cluster.ctl(['servers', '--json'])).json.servers.length === 3, 20_000, 'the third shard');
    const masterAddr = metricsAddress(cluster.master);
    expect(sum(await scrape(masterAddr), 'cairn_move_bytes_transferred_total')).toBe(0);
    let running = true;
    // Throttled, so the moves are in flight for a while.
    const reb = cluster.ctl(['rebalance', '--yes', '--json', '--max-mbps', '1'], { timeoutMs: 300_000 }).finally(() => (running = false));
    let maxInFlight = 0;
    while (running) {
      maxInFlight = Math.max(maxInFlight, sum(await scrape(masterAddr), 'cairn_moves_in_flight'));
      await new Promise((r) => setTimeout(r, 100));
    }
    const r = await reb;
    expect(r.code).toBe(0);
    const moves = r.json.moves.length as number;
    expect(moves).toBeGreaterThan(0);
    expect(maxInFlight).toBeGreaterThanOrEqual(1);
    await waitUntil(async () => sum(await scrape(masterAddr), 'cairn_moves_in_flight') === 0, 20_000, 'no move in flight');
    const m = await scrape(masterAddr);
    expect(sum(m, 'cairn_move_bytes_transferred_total')).toBeGreaterThanOrEqual(r.json.movedBytes * 0.5);
    expect(sum(m, 'cairn_moves_finished_total', { state: 'cleaned' })).toBe(moves);
    expect(sum(m, 'cairn_move_fence_duration_seconds_count')).toBe(moves);
    expect(samples(m, 'cairn_move_fence_duration_seconds_bucket', { le: '+Inf' })[0]!.value).toBe(moves);
    expect(sum(m, 'cairn_shard_ranges')).toBe((await cluster.ctl(['ranges', '--json'])).json.ranges.length);
    const t = await scrape(metricsAddress(joined));
    expect(sum(t, 'cairn_shard_ranges')).toBeGreaterThan(0);
    let pulls = 0;
    for (const p of cluster.shards) pulls += sum(await scrape(metricsAddress(p)), 'cairn_requests_total', { service: 'shard', method: 'PullRange', code: 'OK' });
    expect(pulls).toBe(moves);
  }, 300_000);

  it('a process without metricsListen serves no metrics endpoint', async () => {
    const plain = await startProcCluster({ shards: 1 });
    try {
      for (const p of [plain.master, ...plain.shards]) expect(p.logs.some((l) => l.message === 'metrics listening')).toBe(false);
    } finally {
      await plain.cleanup();
    }
  }, 90_000);
});

describe('cairn dev', () => {
  let dev: ChildProcess | undefined;
  let dir: string | undefined;
  afterAll(async () => {
    if (dev && dev.exitCode === null) {
      dev.kill('SIGINT');
      await new Promise((r) => dev!.once('exit', r));
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });



  it('serves metrics from the master and every shard, on base port + 100 onwards', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-dev-metrics-'));
    const base = await freeBasePort([0, 1, 2, 3, 100, 101, 102, 103]) /* shards' gRPC and metrics ports */;
    dev = spawn(process.execPath, [CAIRN_BIN, 'dev', '--data-dir', dir, '--base-port', String(base)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    const errors: string[] = [];
    createInterface({ input: dev.stderr! }).on('line', (l) => errors.push(l));
    await new Promise<void>((done, fail) => {
      const t = setTimeout(() => fail(new Error(`dev did not come up: ${[...lines, ...errors].join('\n')}`)), 90_000);
      createInterface({ input: dev!.stdout! }).on('line', (l) => {
        lines.push(l);
        if (l.startsWith('Logs:')) {
          clearTimeout(t);
          done();
        }
      });
    });
    expect(lines.join('\n')).toContain(`Metrics: http://127.0.0.1:${base + 100}/metrics`);
    const master = await scrape(`127.0.0.1:${base + 100}`);
    expect(sum(master, 'cairn_requests_total', { service: 'master', method: 'RegisterShard', code: 'OK' })).toBeGreaterThanOrEqual(3);
    for (let i = 1; i <= 3; i++) {
      const t = await scrape(`127.0.0.1:${base + 100 + i}`);
      expect(sum(t, 'cairn_shard_ranges')).toBe(1);
    }
    dev.kill('SIGINT');
    expect(await new Promise((r) => dev!.once('exit', r))).toBe(0);
  }, 120_000);
});
