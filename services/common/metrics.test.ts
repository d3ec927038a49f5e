/**
 * The metrics registry and its HTTP endpoint (services/common/metrics.ts):
 * request counts by status name, duration histograms, scrape-time gauges and
 * counters, process metrics, and `/metrics` over HTTP.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { status } from '@grpc/grpc-js';
import { createServer, type Server } from 'node:net';
import { Metrics, serveMetrics, type MetricsServer } from './metrics.js';

/** The value of one sample line, e.g. `cairn_requests_total{service="shard",...}`. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[3] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v) && Object.keys(got).length === Object.keys(labels).length) return Number(m[4]);
  }
  return undefined;
}

describe('Metrics', () => {
  it('counts calls by service, method and status name, and times them in a histogram', async () => {
    const m = new Metrics({ processMetrics: false });
    m.observe('shard', 'WriteRows', status.OK, 0.003);
    m.observe('shard', 'WriteRows', status.OK, 0.2);
    m.observe('shard', 'WriteRows', status.UNAVAILABLE, 0.001);
    const t = await m.text();
    expect(sample(t, 'cairn_requests_total', { service: 'shard', method: 'WriteRows', code: 'OK' })).toBe(2);
    expect(sample(t, 'cairn_requests_total', { service: 'shard', method: 'WriteRows', code: 'UNAVAILABLE' })).toBe(1);
    expect(sample(t, 'cairn_request_duration_seconds_count', { service: 'shard', method: 'WriteRows' })).toBe(3);
    expect(sample(t, 'cairn_request_duration_seconds_bucket', { service: 'shard', method: 'WriteRows', le: '0.005' })).toBe(2);
    expect(sample(t, 'cairn_request_duration_seconds_bucket', { service: 'shard', method: 'WriteRows', le: '+Inf' })).toBe(3);
    expect(t).toContain('# TYPE cairn_request_duration_seconds histogram');
    expect(t).not.toContain('process_cpu');
  });

  it('gauges, counters and histograms are read at scrape time', async () => {
    const m = new Metrics({ processMetrics: false });
    let shards: Record<string, number> = { s1: 10, s2: 20 };
    m.gauge('cairn_test_bytes', 'bytes', ['shard'], (set) => Object.entries(shards).forEach(([shard, v]) => set({ shard }, v)));
    let total = 0;
    let counted = 0;
    m.counter('cairn_test_total', 'total', [], (c) => {
      c.inc(total - counted);
      counted = total;
    });
    const pending: number[] = [];
    m.histogram('cairn_test_seconds', 'seconds', [], [1, 10], (h) => pending.splice(0).forEach((v) => h.observe(v)));
    total = 5;
    pending.push(0.5, 20);
    let t = await m.text();
    expect(sample(t, 'cairn_test_bytes', { shard: 's1' })).toBe(10);
    expect(sample(t, 'cairn_test_bytes', { shard: 's2' })).toBe(20);
    expect(sample(t, 'cairn_test_total')).toBe(5);
    expect(sample(t, 'cairn_test_seconds_count')).toBe(2);
    expect(sample(t, 'cairn_test_seconds_bucket', { le: '1' })).toBe(1);

    shards = { s1: 11 };
    total = 7;
    t = await m.text();
    expect(sample(t, 'cairn_test_bytes', { shard: 's1' })).toBe(11);
    expect(sample(t, 'cairn_test_bytes', { shard: 's2' })).toBeUndefined(); // a vanished shard disappears
    expect(sample(t, 'cairn_test_total')).toBe(7);
    expect(sample(t, 'cairn_test_seconds_count')).toBe(2);
  });

  it('includes the process metrics by default', async () => {
    const t = await new Metrics().text();
    expect(t).toContain('process_cpu_user_seconds_total');
    expect(t).toContain('nodejs_heap_size_total_bytes');
    expect(t).toContain('process_resident_memory_bytes');
  });
});

describe('serveMetrics', () => {
  let srv: MetricsServer | undefined;
  let blocker: Server | undefined;
  afterAll(async () => {
    await srv?.close();
    blocker?.close();
  });

  it('serves GET /metrics on the given address (port 0 picks one) and nothing else', async () => {
    const m = new Metrics({ processMetrics: false });
    m.observe('master', 'Login', status.OK, 0.01);
    srv = await serveMetrics(m, '127.0.0.1:0');
    expect(srv.address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(srv.address).not.toMatch(/:0$/);
    const res = await fetch(`http://${srv.address}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    expect(sample(await res.text(), 'cairn_requests_total', { service: 'master', method: 'Login', code: 'OK' })).toBe(1);
    expect((await fetch(`http://${srv.address}/nope`)).status).toBe(404);
    expect((await fetch(`http://${srv.address}/metrics`, { method: 'POST' })).status).toBe(405);
    await srv.close();
    await expect(fetch(`http://${srv.address}/metrics`)).rejects.toThrow();
    srv = undefined;
  });

  it('names the address when it cannot listen', async () => {
    blocker = createServer();
    await new Promise<void>((r) => blocker!.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as { port: number }).port;
    await expect(serveMetrics(new Metrics({ processMetrics: false }), `127.0.0.1:${port}`)).rejects.toThrow(`cannot serve metrics on 127.0.0.1:${port}`);
  });
});
