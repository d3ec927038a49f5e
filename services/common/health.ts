/**
 * Health, reflection and draining, the same on every process:
 *
 * - the standard gRPC health service (`grpc.health.v1.Health`, from
 *   grpc-health-check), with the overall status under the empty service name
 *   and one status per Cairn service (`cairn.v1.ShardService`, …);
 * - server reflection, v1 and v1alpha (services/common/reflection.ts), serving
 *   the real cairn/v1/*.proto descriptors with their comments, so `grpcurl`
 *   works without the files and shows the documented API;
 * - the call gate the handler wrappers go through (services/common/grpc.ts):
 *   on shutdown the process reports NOT_SERVING first, then refuses new calls
 *   with a retryable UNAVAILABLE and waits for the calls in flight.
 *
 * `checkHealth` is the client side, used by `cairn health`.
 */
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation, service as HEALTH_SERVICE } from 'grpc-health-check';
import { CairnError } from './errors.js';
import { clientCredentials, type CallGate, type ClientTls } from './grpc.js';
import { addReflection } from './reflection.js';

export type HealthStatus = 'SERVING' | 'NOT_SERVING';

export const HEALTH_SERVICE_NAME = 'grpc.health.v1.Health';

/** The overall status is kept under the empty service name, as the health protocol defines. */
export const OVERALL = '';

/**
 * Serving status plus the call gate. Starts NOT_SERVING (or as told); `drain`
 * flips it to NOT_SERVING for good, refuses new calls and waits for those in
 * flight.
 */
export class ServingState implements CallGate {
  private readonly health: HealthImplementation;
  private current: HealthStatus;
  private inFlight = 0;
  private draining = false;
  private idleWaiters: Array<() => void> = [];
  /** Services reported NOT_SERVING whatever the process's status, with why (see holdService). */
  private readonly held = new Map<string, string>();

  constructor(
    /** Fully-qualified service names that get a status of their own (`cairn.v1.MasterService`). */
    readonly services: readonly string[],
    initial: HealthStatus = 'NOT_SERVING',
  ) {
    this.current = initial;
    this.health = new HealthImplementation(Object.fromEntries([OVERALL, ...services].map((s) => [s, initial])));
  }

  get status(): HealthStatus {
    return this.current;
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Calls admitted and not finished yet. */
  get inFlightCalls(): number {
    return this.inFlight;
  }

  /** Sets every status; once draining, the process stays NOT_SERVING. */
  setServing(serving: boolean): void {
    const next: HealthStatus = serving && !this.draining ? 'SERVING' : 'NOT_SERVING';
    this.current = next;
    this.health.setStatus(OVERALL, next);
    for (const s of this.services) this.health.setStatus(s, this.held.has(s) ? 'NOT_SERVING' : next);
  }

  /**
   * Reports one service NOT_SERVING while the process itself keeps its status
   * (a shard whose disk is full cannot take writes, but it is alive and
   * answers reads, and a restart would not free its disk: a liveness probe
   * on the overall status must not restart it). `reason` null lifts the hold.
   */
  holdService(service: string, reason: string | null): void {
    if (reason === null) this.held.delete(service);
    else this.held.set(service, reason);
    this.setServing(this.current === 'SERVING');
  }

  /** Why a service is held NOT_SERVING, or undefined. */
  heldReason(service: string): string | undefined {
    return this.held.get(service);
  }

  enter(method: string): () => void {
    if (this.draining) {
      throw new CairnError('NOT_READY', `${method}: this process is shutting down; retry shortly`, { retryAfterMs: 500 });
    }
    this.inFlight += 1;
    let left = false;
    return () => {
      if (left) return;
      left = true;
      this.inFlight -= 1;
      if (this.inFlight === 0) this.wake();
    };
  }

  private drainListeners: Array<() => void> = [];

  /**
   * Calls `listener` once when draining starts (at once if it has): a
   * long-lived stream (the shard's Batch) ends itself then, so a shutdown
   * does not wait out its grace period for a stream with nothing in flight.
   * Returns the function that stops listening.
   */
  onDrain(listener: () => void): () => void {
    if (this.draining) {
      listener();
      return () => undefined;
    }
    this.drainListeners.push(listener);
    return () => {
      const i = this.drainListeners.indexOf(listener);
      if (i >= 0) this.drainListeners.splice(i, 1);
    };
  }

  private wake(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * Reports NOT_SERVING, refuses new calls, and resolves once the calls in
   * flight have finished (true) or when `timeoutMs` has passed (false).
   */
  async drain(timeoutMs: number): Promise<boolean> {
    this.draining = true;
    for (const listener of this.drainListeners.splice(0)) listener();
    this.setServing(false);
    if (this.inFlight === 0) return true;
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<boolean>((done) => this.idleWaiters.push(() => done(true)));
    const late = new Promise<boolean>((done) => (timer = setTimeout(() => done(false), Math.max(0, timeoutMs))));
    try {
      return await Promise.race([idle, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Adds the health service, and reflection describing this process's services and health, to a server (call before it binds). */
  addToServer(server: grpc.Server): void {
    this.health.addToServer(server);
    addReflection(server, [...this.services, HEALTH_SERVICE_NAME]);
  }
}

// ---------------------------------------------------------------------------
// Client side

export interface CheckHealthOptions {
  /** The service to ask about; the empty name (default) is the whole process. */
  service?: string;
  tls?: ClientTls;
  timeoutMs?: number;
}

type HealthClient = grpc.Client & {
  check(req: { service: string }, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: { status: string }) => void): void;
};

const HealthClientCtor = grpc.makeClientConstructor(HEALTH_SERVICE as unknown as grpc.ServiceDefinition, 'grpc.health.v1.Health') as unknown as new (
  address: string,
  creds: grpc.ChannelCredentials,
  options?: grpc.ClientOptions,
) => HealthClient;

/**
 * Asks a process's health service once. Resolves with the status it reports
 * (`SERVING`, `NOT_SERVING`, `UNKNOWN`, …); rejects with the gRPC error when
 * there is no answer (refused, TLS mismatch, deadline, unknown service).
 */
export function checkHealth(address: string, o: CheckHealthOptions = {}): Promise<string> {
  const client = new HealthClientCtor(address, clientCredentials(o.tls));
  return new Promise<string>((done, fail) => {
    client.check({ service: o.service ?? OVERALL }, new grpc.Metadata(), { deadline: Date.now() + (o.timeoutMs ?? 5000) }, (err, res) => {
      client.close();
      if (err) fail(err);
      else done(String(res.status));
    });
  });
}
