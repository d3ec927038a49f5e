/**
 * gRPC plumbing shared by every process: the handler wrapper (authenticate,
 * delegate, translate errors through the one table, time the call), server
 * start-up, and a promise-based client call with a deadline on every call.
 */
import { BinaryReader } from '@bufbuild/protobuf/wire';
import * as grpc from '@grpc/grpc-js';
import { once } from 'node:events';
import type { ServerSurfaceCall as SurfaceCall } from '@grpc/grpc-js/build/src/server-call.js';
import type { Logger } from 'winston';
import { authorize, tokenFromMetadataValue, verifyToken, type Claims, type Role } from './auth.js';
import { CairnError, fromServiceError, toServiceError } from './errors.js';

export interface RpcContext {
  method: string;
  /** Verified token claims; null for calls that need no token (Login). */
  claims: Claims | null;
  /** The caller's raw bearer token, passed on when a call is forwarded. */
  token: string | undefined;
  /** The caller's deadline in ms since the epoch; Infinity when none. */
  deadline: number;
  /** The caller's transport address as grpc-js reports it (`host:port`), or 'unknown' (Login counts failures per host). */
  peer: string;
  /** True once the caller has gone away. */
  cancelled(): boolean;
}

/** Observes every finished call (metrics hang off this). */
export type CallObserver = (service: string, method: string, code: grpc.status, seconds: number) => void;

/**
 * Admits calls while a process serves and refuses new ones once it drains
 * (services/common/health.ts). `enter` throws a retryable NOT_READY when the
 * process is shutting down, else returns the function that ends the call.
 */
export interface CallGate {
  enter(method: string): () => void;
  /** Calls `listener` once when the process starts draining; returns the function that stops listening. */
  onDrain?(listener: () => void): () => void;
}

export interface HandlerEnv {
  service: string;
  log: Logger;
  tokenKey: Buffer;
  observe?: CallObserver;
  gate?: CallGate;
  /**
   * Mutual TLS between servers: a call carrying a server token must come over
   * a connection whose client certificate the cluster CA signed.
   */
  requirePeerCert?: boolean;
  /**
   * Checks the claims of every call made with a server token, after the
   * signature (a shard refuses internal calls from another cluster here).
   */
  checkServerCall?: (claims: Claims, method: string) => void;
  /**
   * Checks the claims of every call made with a client token, after the
   * signature and role: its cluster, and whether its user's tokens were
   * revoked (auth.ts checkClientClaims).
   */
  checkClientCall?: (claims: Claims, method: string) => void;
}

function deadlineOf(call: SurfaceCall): number {
  const d = call.getDeadline();
  if (d instanceof Date) return d.getTime();
  return typeof d === 'number' && Number.isFinite(d) ? d : Infinity;
}

function authenticate(env: HandlerEnv, call: SurfaceCall, method: string, need: Role | null): RpcContext {
  let cancelled = false;
  call.on('cancelled', () => (cancelled = true));
  const base = { method, deadline: deadlineOf(call), peer: peerOf(call), cancelled: () => cancelled || call.cancelled };
  if (need === null) return { ...base, claims: null, token: undefined };
  return { ...base, ...authorizeCaller(env, call, method, need) };
}

/**
 * The caller's token checked for one call: signature and expiry, mutual TLS
 * for server tokens, the client-token policy, then the role `method` needs.
 * A Batch stream runs it for every call it carries, as a unary call does once.
 */
export function authorizeCaller(env: HandlerEnv, call: SurfaceCall, method: string, need: Role): { claims: Claims; token: string } {
  const token = tokenFromMetadataValue(call.metadata.get('authorization')[0]?.toString());
  const claims = verifyToken(env.tokenKey, token);
  if (env.requirePeerCert && claims.role === 'server' && !hasVerifiedPeerCert(call)) {
    throw new CairnError(
      'UNAUTHENTICATED',
      `${method}: mutual TLS is on, and internal calls need a client certificate signed by the cluster CA (tlsCa); the caller presented none that verifies`,
    );
  }
  // A revoked or foreign client token says so (log in again) before any role check.
  if (claims.role !== 'server') env.checkClientCall?.(claims, method);
  authorize(claims, need, method);
  if (claims.role === 'server') env.checkServerCall?.(claims, method);
  return { claims, token };
}

export function peerOf(call: SurfaceCall): string {
  try {
    return call.getPeer();
  } catch {
    return 'unknown';
  }
}

/** True when the call came over TLS with a client certificate that verified against the server's CA. */
function hasVerifiedPeerCert(call: SurfaceCall): boolean {
  const ctx = (call as { getAuthContext?: () => { sslPeerCertificate?: unknown } }).getAuthContext?.();
  return !!ctx?.sslPeerCertificate;
}

export function reportError(env: HandlerEnv, method: string, err: unknown) {
  const se = toServiceError(err);
  if (!(err instanceof CairnError)) env.log.error('unexpected error in handler', { method, error: (err as Error)?.stack ?? String(err) });
  return se;
}

/**
 * A request whose bytes did not parse as its message. grpc-js would answer a
 * throwing deserializer with a bare INTERNAL; the handler wrappers answer
 * INVALID_ARGUMENT naming the message instead (after authentication).
 */
export class UndecodableRequest {
  /** `message`, when set, is the whole refusal (a string field that is not UTF-8). */
  constructor(
    readonly reason: string,
    readonly message?: string,
    /**
     * For strings that are not UTF-8 in a message that otherwise decoded: the
     * message (such strings replaced by markers) and the refusal of every such
     * field by its path. A Batch stream refuses only the calls holding one.
     */
    readonly partial?: { message: unknown; refusals: Array<{ field: string; message: string }> },
  ) {}
}

function decoded<Req>(request: Req | UndecodableRequest, method: string): Req {
  if (request instanceof UndecodableRequest) {
    throw new CairnError('INVALID_ARGUMENT', request.message ?? `request: the bytes are not a valid ${method} request message (${request.reason})`);
  }
  return request;
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A proto3 string must be UTF-8, but the generated decoders turn bytes that
 * are not into U+FFFD (`ff fe 41` would become the row key U+FFFD U+FFFD A,
 * another key). So requests are decoded with a reader that puts a marker
 * (never valid text: it starts with a lone surrogate) in place of each such
 * string, and a request holding one is refused naming the field. The ts-proto
 * decoders take a BinaryReader as well as bytes; a deserializer that does not
 * use it (nothing read) is called again with the bytes.
 */
function deserializeUtf8Checked(m: grpc.MethodDefinition<unknown, unknown>, bytes: Buffer): unknown {
  if (bytes.length === 0) return m.requestDeserialize(bytes);
  let bad: Map<string, Uint8Array> | undefined;
  const reader = new BinaryReader(bytes, (b) => {
    try {
      return STRICT_UTF8.decode(b);
    } catch {
      bad ??= new Map();
      const mark = `\uDFFF${bad.size}`;
      bad.set(mark, b);
      return mark;
    }
  });
  let msg: unknown;
  try {
    msg = m.requestDeserialize(reader as unknown as Buffer);
  } catch {
    msg = undefined;
  }
  if (msg === undefined || reader.pos === 0) return m.requestDeserialize(bytes);
  if (!bad) return msg;
  const found = fieldHolding(msg, bad, '');
  const sent = found ? bad.get(found.mark)! : bad.values().next().value!;
  // Not found: a field sent twice, the later value kept (the wire still carried bytes that are not UTF-8).
  const field = found ? `${found.field}:` : 'request: a string field';
  const refusals: Array<{ field: string; message: string }> = [];
  everyFieldHolding(msg, bad, '', (f, mark) => refusals.push({ field: f, message: notUtf8(`${f}:`, bad!.get(mark)!) }));
  return new UndecodableRequest('', notUtf8(field, sent), { message: msg, refusals });
}

function notUtf8(field: string, sent: Uint8Array): string {
  const hex = [...sent.subarray(0, 32)].map((x) => x.toString(16).padStart(2, '0')).join(' ');
  return `${field} is not valid UTF-8 (${sent.length} bytes: ${hex}${sent.length > 32 ? ' …' : ''})`;
}

/** Calls `found` with the path of every string in a decoded message that is one of the markers. */
function everyFieldHolding(v: unknown, marks: Map<string, Uint8Array>, path: string, found: (field: string, mark: string) => void): void {
  if (typeof v === 'string') {
    if (marks.has(v)) found(path, v);
  } else if (Array.isArray(v)) {
    v.forEach((x, i) => everyFieldHolding(x, marks, `${path}[${i}]`, found));
  } else if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
    for (const [k, x] of Object.entries(v)) everyFieldHolding(x, marks, path ? `${path}.${k}` : k, found);
  }
}

/** The path (`rows[1].row`, as validation names fields) of the first string in a decoded message that is one of the markers. */
function fieldHolding(v: unknown, marks: Map<string, Uint8Array>, path: string): { field: string; mark: string } | undefined {
  if (typeof v === 'string') return marks.has(v) ? { field: path, mark: v } : undefined;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const f = fieldHolding(v[i], marks, `${path}[${i}]`);
      if (f) return f;
    }
  } else if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
    for (const [k, x] of Object.entries(v)) {
      const f = fieldHolding(x, marks, path ? `${path}.${k}` : k);
      if (f) return f;
    }
  }
  return undefined;
}

/** The service definition with deserializers that never throw (see UndecodableRequest). */
function tolerantDefinition(def: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(def as Record<string, grpc.MethodDefinition<unknown, unknown>>)) {
    out[name] = {
      ...m,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return deserializeUtf8Checked(m, bytes);
        } catch (err) {
          return new UndecodableRequest((err as Error).message);
        }
      },
    };
  }
  return out as grpc.ServiceDefinition;
}

/** Enters the call gate, and when the call ends leaves it and tells the observer its status and duration. */
export function meter(env: HandlerEnv, method: string): { enter(): void; done(code: grpc.status): void } {
  const started = process.hrtime.bigint();
  let leave: (() => void) | undefined;
  return {
    enter: () => void (leave = env.gate?.enter(method)),
    done: (code) => {
      leave?.();
      env.observe?.(env.service, method, code, Number(process.hrtime.bigint() - started) / 1e9);
    },
  };
}

/** Wraps an async unary handler: auth by role (null = none), errors through the table. */
export function unary<Req, Res>(
  env: HandlerEnv,
  method: string,
  need: Role | null,
  fn: (req: Req, ctx: RpcContext) => Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const { enter, done } = meter(env, method);
    let result: Promise<Res>;
    try {
      enter();
      const ctx = authenticate(env, call, method, need);
      result = fn(decoded(call.request, method), ctx);
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(
      (res) => {
        done(grpc.status.OK);
        callback(null, res);
      },
      (err) => {
        const se = reportError(env, method, err);
        done(se.code);
        callback(se as grpc.ServiceError);
      },
    );
  };
}

/** Wraps an async server-streaming handler; `send` waits for 'drain' when the socket is full. */
export function serverStream<Req, Res>(
  env: HandlerEnv,
  method: string,
  need: Role | null,
  fn: (req: Req, ctx: RpcContext, send: (msg: Res) => Promise<void>) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => serveStream(env, method, need, call, (ctx, send) => fn(decoded(call.request, method), ctx, send));
}

/**
 * Wraps an async bidirectional-streaming handler: auth by role once, then
 * `fn` reads the caller's messages (`requests`, each decoded as a unary
 * request is) and answers with `send`; errors through the table.
 */
export function duplexStream<Req, Res>(
  env: HandlerEnv,
  method: string,
  need: Role | null,
  fn: (requests: AsyncIterable<Req>, ctx: RpcContext, send: (msg: Res) => Promise<void>) => Promise<void>,
): grpc.handleBidiStreamingCall<Req, Res> {
  return (call) => {
    // Not for-await over the call: leaving that loop early (a message that does not decode) destroys the
    // stream, and the caller then never hears the status.
    async function* requests(): AsyncIterable<Req> {
      const messages = (call as AsyncIterable<Req>)[Symbol.asyncIterator]();
      for (;;) {
        let next: IteratorResult<Req>;
        try {
          next = await messages.next();
        } catch (err) {
          // The caller went away mid-stream (Node reports it as a premature close): not the server's fault.
          if (call.cancelled || (err as { code?: string }).code === 'ERR_STREAM_PREMATURE_CLOSE') throw new CairnError('CANCELLED', 'the caller cancelled the stream');
          throw err;
        }
        if (next.done) return;
        yield decoded(next.value, method);
      }
    }
    serveStream(env, method, need, call, (ctx, send) => fn(requests(), ctx, send));
  };
}

/** The part both stream wrappers share: meter, auth, a `send` that waits for 'drain', the end or the error. */
function serveStream<Res>(
  env: HandlerEnv,
  method: string,
  need: Role | null,
  call: grpc.ServerWritableStream<unknown, Res> | grpc.ServerDuplexStream<unknown, Res>,
  run: (ctx: RpcContext, send: (msg: Res) => Promise<void>) => Promise<void>,
): void {
  const { enter, done } = meter(env, method);
  const send = async (msg: Res) => {
    if (call.cancelled) throw new CairnError('CANCELLED', 'the caller cancelled the stream');
    if (!call.write(msg)) await Promise.race([once(call, 'drain'), once(call, 'cancelled')]);
  };
  let result: Promise<void>;
  try {
    enter();
    result = run(authenticate(env, call, method, need), send);
  } catch (err) {
    result = Promise.reject(err);
  }
  result.then(
    () => {
      done(grpc.status.OK);
      call.end();
    },
    (err) => {
      const se = reportError(env, method, err);
      done(se.code);
      if (!call.cancelled) call.emit('error', se);
    },
  );
}

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
  /** When set on a server: require and verify client certificates (mutual TLS). On a client: the CA to trust. */
  ca?: Buffer;
}

/**
 * A client interceptor that shows `onRefusal` every call's error as the
 * CairnError it decodes to (unary and streaming calls alike), before the
 * caller sees it: for a reaction that must not depend on each caller
 * remembering it (a master deposed by a shard's STALE_TERM refusal).
 */
export function watchRefusals(onRefusal: (err: CairnError) => void): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        // A partial listener, as grpc-js's ListenerBuilder makes: its other events pass through untouched.
        next(
          metadata,
          new grpc.ListenerBuilder()
            .withOnReceiveStatus((status, nextStatus) => {
              if (status.code !== grpc.status.OK) {
                try {
                  onRefusal(fromServiceError(Object.assign(new Error(status.details), status)));
                } catch {
                  // a watcher's mistake never changes the call's outcome
                }
              }
              nextStatus(status);
            })
            .build(),
        );
      },
    });
}

export function channelOptions(maxMessageBytes: number): grpc.ChannelOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.keepalive_time_ms': 30_000,
    // A restarted master or shard must be found again within a heartbeat or two. grpc-js backs off reconnects
    // up to 120 s by default (1 s × 1.6 per attempt): after ten seconds down, a shard could take ten more to
    // notice its master was back (seen as a flaky rejoin under load).
    'grpc.initial_reconnect_backoff_ms': 250,
    'grpc.max_reconnect_backoff_ms': 2000,
    // channelz (per-call bookkeeping for a debugging service we do not serve) was ~7% of a shard's busy time under point reads.
    'grpc.enable_channelz': 0,
  };
}

/**
 * TLS that asks every client for a certificate but admits those without one:
 * the handshake never fails for a missing or unknown client certificate, and
 * the handler wrapper refuses internal (server-token) calls unless the
 * certificate verified against `ca` (HandlerEnv.requirePeerCert). Clients and
 * probes that only trust the CA are served.
 */
class RequestClientCertCredentials extends grpc.ServerCredentials {
  constructor(tls: TlsFiles & { ca: Buffer }) {
    super({ requestCert: true, rejectUnauthorized: false }, { ca: tls.ca, cert: [tls.cert], key: [tls.key] });
  }
  _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

export function serverCredentials(opts: { tls?: TlsFiles; requireClientCert?: boolean; requestClientCert?: boolean }): grpc.ServerCredentials {
  const tls = opts.tls;
  if (!tls) return grpc.ServerCredentials.createInsecure();
  if (tls.ca && opts.requestClientCert && !opts.requireClientCert) return new RequestClientCertCredentials({ ...tls, ca: tls.ca });
  return grpc.ServerCredentials.createSsl(tls.ca ?? null, [{ cert_chain: tls.cert, private_key: tls.key }], !!opts.requireClientCert);
}

/** Starts a server on `listen` (port 0 picks a free port) and resolves with the bound port. */
export async function startServer(
  listen: string,
  services: Array<[grpc.ServiceDefinition, grpc.UntypedServiceImplementation]>,
  opts: {
    maxMessageBytes: number;
    tls?: TlsFiles;
    /** Fail the TLS handshake of a client without a certificate the CA signed. */
    requireClientCert?: boolean;
    /** Ask clients for a certificate (mutual TLS between servers) without failing the handshake of those with none. */
    requestClientCert?: boolean;
    /** Adds more services (health, reflection) before the server binds. */
    register?: (server: grpc.Server) => void;
  },
): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server(channelOptions(opts.maxMessageBytes));
  for (const [def, impl] of services) server.addService(tolerantDefinition(def), impl);
  opts.register?.(server);
  const creds = serverCredentials(opts);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(listen, creds, (err, p) => (err ? reject(new Error(`cannot listen on ${listen}: ${err.message}`)) : resolve(p))),
  );
  return { server, port };
}

/** Replaces the port of host:port (for listen addresses ending in :0). */
export function withPort(hostPort: string, port: number): string {
  const i = hostPort.lastIndexOf(':');
  return `${hostPort.slice(0, i)}:${port}`;
}

export interface ClientTls {
  ca?: Buffer;
  /** Client certificate for mutual TLS between servers. */
  cert?: Buffer;
  key?: Buffer;
}

export function clientCredentials(tls?: ClientTls): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
}

type ClientCtor<C> = new (address: string, creds: grpc.ChannelCredentials, options?: grpc.ClientOptions) => C;

/** One client (one channel) per address, reused for every call. */
export class ClientPool<C extends grpc.Client> {
  private readonly clients = new Map<string, C>();
  constructor(
    private readonly ctor: ClientCtor<C>,
    private readonly opts: { tls?: ClientTls; maxMessageBytes: number; interceptors?: grpc.Interceptor[] },
  ) {}

  get(address: string): C {
    let c = this.clients.get(address);
    if (!c) {
      const options = { ...channelOptions(this.opts.maxMessageBytes), ...(this.opts.interceptors ? { interceptors: this.opts.interceptors } : {}) };
      c = new this.ctor(address, clientCredentials(this.opts.tls), options);
      this.clients.set(address, c);
    }
    return c;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}

export interface CallOpts {
  token?: string;
  /** Absolute deadline, ms since the epoch. */
  deadline?: number;
  /** Used when no deadline is given. */
  timeoutMs?: number;
}

type UnaryMethod<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  cb: (err: grpc.ServiceError | null, res: Res) => void,
) => grpc.ClientUnaryCall;

export function metadataFor(token?: string): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return md;
}

export function deadlineFrom(o: CallOpts): number {
  return o.deadline ?? Date.now() + (o.timeoutMs ?? 10_000);
}

/** A unary call as a promise; every call has a deadline; errors come back as CairnError. */
export function call<Req, Res>(client: grpc.Client, method: UnaryMethod<Req, Res>, req: Req, o: CallOpts = {}): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    method.call(client, req, metadataFor(o.token), { deadline: deadlineFrom(o) }, (err, res) =>
      err ? reject(fromServiceError(err)) : resolve(res),
    );
  });
}
