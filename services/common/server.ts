/**
 * The server assembly every Cairn process shares (docs/design.md, "Processes"):
 * the gRPC server with the process's services, the standard health service
 * and reflection (ServingState, services/common/health.ts), the call gate,
 * the call observer (the caller's and, with `metricsListen`, the Prometheus
 * endpoint's), and an ordered stop.
 *
 * The master and shard modules (services/master/server.ts,
 * services/shard/server.ts) open their own state, register their metrics and
 * handlers, and wire them here; they decide when the process is SERVING.
 *
 * stop(): NOT_SERVING at once; new calls are refused (retryable UNAVAILABLE)
 * while those in flight get `graceMs` to finish; then the gRPC server closes
 * (forced once the rest of the grace has passed), the process's state is
 * closed (`close`), and last the metrics endpoint.
 */
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'winston';
import { startServer, withPort, type CallObserver, type HandlerEnv, type TlsFiles } from './grpc.js';
import { ServingState } from './health.js';
import { Metrics, serveMetrics, type MetricsServer } from './metrics.js';

/** The part of every handler environment the assembly owns. */
export type AssembledEnv = Pick<HandlerEnv, 'log' | 'observe' | 'gate' | 'requirePeerCert'>;

export type ServiceList = Array<[grpc.ServiceDefinition, grpc.UntypedServiceImplementation]>;

/** What every server process is told about its gRPC server, its metrics endpoint and its stop. */
export interface ServerOptions {
  listen: string;
  tls?: TlsFiles;
  /**
   * Mutual TLS between servers (needs `tls` with a CA): internal calls must
   * come with a client certificate the CA signed; clients need only trust the CA.
   */
  mutualTls?: boolean;
  observe?: CallObserver;
  /** host:port for Prometheus `/metrics`; no metrics endpoint when unset. */
  metricsListen?: string;
  /** Default grace for stop(). */
  shutdownGraceMs?: number;
}

/** The ServerOptions fields of a process's options (and nothing else). */
export function serverOptionsOf(o: ServerOptions): ServerOptions {
  const { listen, tls, mutualTls, observe, metricsListen, shutdownGraceMs } = o;
  return { listen, tls, mutualTls, observe, metricsListen, shutdownGraceMs };
}

export interface ProcessServerOptions extends ServerOptions {
  /** 'master' or 'shard': the `role` field of the "listening" logs. */
  role: string;
  log: Logger;
  /** Fully-qualified service names that get a health status of their own. */
  healthServices: readonly string[];
  maxMessageBytes: number;
  /** Fail the TLS handshake of any client without a CA-signed certificate. */
  requireClientCert?: boolean;
  /** Registers the process's own gauges and counters (only when `metricsListen` is set). */
  registerMetrics(metrics: Metrics): void;
  /** The process's services, built on the assembled handler environment. */
  services(env: AssembledEnv): ServiceList;
  /** Report SERVING as soon as the server is bound (the master); otherwise the process decides (the shard, once admitted). */
  servingOnceBound?: boolean;
  /** Called with the bound port before "listening" is logged; returns extra fields for that log (after `address`). */
  onBound?(port: number): Record<string, unknown>;
  /** Called first in stop(), before draining. */
  onStop?(): void;
  /** Closes the process's state: after the server on stop(), and when start-up fails. */
  close(): Promise<void>;
}

export interface ProcessServer {
  server: grpc.Server;
  /** host:port the server is bound to (the port resolved when listen used :0). */
  address: string;
  port: number;
  /** host:port of the metrics endpoint, when metricsListen was set. */
  metricsAddress?: string;
  /** Health status and the call gate. */
  serving: ServingState;
  metrics?: Metrics;
  stop(graceMs?: number): Promise<void>;
}

export async function startProcessServer(opts: ProcessServerOptions): Promise<ProcessServer> {
  const serving = new ServingState(opts.healthServices);
  const mutualTls = !!(opts.mutualTls && opts.tls?.ca);
  let metrics: Metrics | undefined;
  let metricsServer: MetricsServer | undefined;
  let started;
  try {
    if (opts.metricsListen) {
      metrics = new Metrics();
      opts.registerMetrics(metrics);
      metricsServer = await serveMetrics(metrics, opts.metricsListen, opts.log);
      opts.log.info('metrics listening', { address: metricsServer.address, role: opts.role });
    }
    const env: AssembledEnv = { log: opts.log, observe: combineObservers(opts.observe, metrics?.observe), gate: serving, requirePeerCert: mutualTls };
    started = await startServer(opts.listen, opts.services(env), {
      maxMessageBytes: opts.maxMessageBytes,
      tls: opts.tls,
      requireClientCert: opts.requireClientCert,
      requestClientCert: mutualTls,
      register: (s) => serving.addToServer(s),
    });
  } catch (err) {
    await metricsServer?.close();
    await opts.close();
    throw err;
  }
  const { server, port } = started;
  const address = withPort(opts.listen, port);
  if (opts.servingOnceBound) serving.setServing(true);
  const extra = opts.onBound?.(port) ?? {};
  opts.log.info('listening', { address, ...extra, role: opts.role, tls: !!opts.tls, mutualTls });
  let stopping: Promise<void> | undefined;
  return {
    server,
    address,
    port,
    metricsAddress: metricsServer?.address,
    serving,
    metrics,
    stop(graceMs = opts.shutdownGraceMs ?? 5000) {
      stopping ??= (async () => {
        const started = Date.now();
        opts.onStop?.();
        const drained = await serving.drain(graceMs);
        if (!drained) opts.log.warn('calls still in flight after the grace period; cancelling them', { graceMs, inFlight: serving.inFlightCalls });
        await shutdownServer(server, Math.max(1000, graceMs - (Date.now() - started)));
        await opts.close();
        await metricsServer?.close();
      })();
      return stopping;
    },
  };
}

/** One observer that calls each given one (undefined when none is given). */
export function combineObservers(...fns: Array<CallObserver | undefined>): CallObserver | undefined {
  const list = fns.filter((f): f is CallObserver => !!f);
  if (list.length === 0) return undefined;
  if (list.length === 1) return list[0];
  return (...args) => list.forEach((f) => f(...args));
}

/** Stops accepting calls, lets those in flight finish within graceMs, then forces the rest. */
export function shutdownServer(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const force = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(force);
      resolve();
    });
  });
}
