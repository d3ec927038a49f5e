/**
 * Prometheus metrics (prom-client), one registry per process, served over
 * HTTP at `/metrics` only where `metricsListen` is set.
 *
 * Every process has:
 *   cairn_requests_total{service,method,code}           gRPC calls handled, by status code name
 *   cairn_request_duration_seconds{service,method}      histogram of handling time
 *   process_* and nodejs_*                              prom-client's default process metrics
 * Masters and shards add their own gauges and counters through `gauge`,
 * `counter` and `histogram` (services/master/server.ts, services/shard/server.ts);
 * those are read when Prometheus scrapes, so nothing is counted twice.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as prom from 'prom-client';
import type { Logger } from 'winston';
import { parseHostPort } from './config.js';
import type { CallObserver } from './grpc.js';

/** Seconds: from sub-millisecond reads to minute-long streams. */
export const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

type Labels<L extends string> = Partial<Record<L, string | number>>;

export class Metrics {
  readonly registry = new prom.Registry();
  private readonly requests: prom.Counter<'service' | 'method' | 'code'>;
  private readonly duration: prom.Histogram<'service' | 'method'>;

  constructor(o: { processMetrics?: boolean } = {}) {
    if (o.processMetrics !== false) prom.collectDefaultMetrics({ register: this.registry });
    this.requests = new prom.Counter({
      name: 'cairn_requests_total',
      help: 'gRPC calls handled, by service, method and status code.',
      labelNames: ['service', 'method', 'code'],
      registers: [this.registry],
    });
    this.duration = new prom.Histogram({
      name: 'cairn_request_duration_seconds',
      help: 'Time to handle a gRPC call (a stream: until it ended), by service and method.',
      labelNames: ['service', 'method'],
      buckets: DURATION_BUCKETS,
      registers: [this.registry],
    });
  }

  /** The hook the gRPC handler wrappers call for every finished call. */
  readonly observe: CallObserver = (service, method, code, seconds) => {
    this.requests.inc({ service, method, code: GrpcStatus[code] ?? String(code) });
    this.duration.observe({ service, method }, seconds);
  };

  /** A gauge whose values `collect` sets at scrape time (it is reset first, so vanished label sets disappear). */
  gauge<L extends string = never>(name: string, help: string, labelNames: readonly L[], collect: (set: (labels: Labels<L>, value: number) => void) => void): prom.Gauge<L> {
    const g: prom.Gauge<L> = new prom.Gauge<L>({
      name,
      help,
      labelNames: labelNames as L[],
      registers: [this.registry],
      collect() {
        g.reset();
        collect((labels, value) => g.set(labels, value));
      },
    });
    return g;
  }

  /** A counter; `collect` (optional) may add to it at scrape time. */
  counter<L extends string = never>(name: string, help: string, labelNames: readonly L[], collect?: (c: prom.Counter<L>) => void): prom.Counter<L> {
    const c: prom.Counter<L> = new prom.Counter<L>({
      name,
      help,
      labelNames: labelNames as L[],
      registers: [this.registry],
      ...(collect ? { collect: () => collect(c) } : {}),
    });
    return c;
  }

  /** A histogram; `collect` (optional) may observe into it at scrape time. */
  histogram<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[],
    buckets: number[],
    collect?: (h: prom.Histogram<L>) => void,
  ): prom.Histogram<L> {
    const h: prom.Histogram<L> = new prom.Histogram<L>({
      name,
      help,
      labelNames: labelNames as L[],
      buckets,
      registers: [this.registry],
      ...(collect ? { collect: () => collect(h) } : {}),
    });
    return h;
  }

  /** The exposition text Prometheus scrapes. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

export interface MetricsServer {
  /** host:port bound (the port resolved when `listen` used :0). */
  address: string;
  close(): Promise<void>;
}

/** Serves `GET /metrics` on `listen` (host:port; port 0 picks a free port). */
export async function serveMetrics(metrics: Metrics, listen: string, log?: Logger): Promise<MetricsServer> {
  const { host, port } = parseHostPort(listen);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      metrics.text().then(
        (body) => res.writeHead(200, { 'content-type': metrics.contentType }).end(req.method === 'HEAD' ? undefined : body),
        (err: Error) => {
          log?.warn('metrics collection failed', { error: err.message });
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics collection failed: ${err.message}\n`);
        },
      );
      return;
    }
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('Cairn metrics: GET /metrics\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((done, fail) => {
    server.once('error', (err) => fail(new Error(`cannot serve metrics on ${listen}: ${err.message}`)));
    server.listen(port, host, () => done());
  });
  const bound = (server.address() as AddressInfo).port;
  const address = `${host.includes(':') ? `[${host}]` : host}:${bound}`;
  return {
    address,
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
      }),
  };
}
