/**
 * The one error table. Domain code throws CairnError with a stable `code`;
 * code branches on `code`, never on the message. gRPC handlers translate with
 * `toServiceError`, clients translate back with `fromServiceError`.
 *
 * Routing details travel as trailing metadata so any gRPC client can read
 * them: `cairn-epoch`, `cairn-owner`, `cairn-owner-address`,
 * `cairn-retry-after-ms`, and `cairn-error-code` (the domain code).
 */
import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';

export type ErrorCode =
  | 'WRONG_SHARD' // the key is owned by another shard, or the epoch is stale
  | 'FENCED' // the range is fenced for a move; retry shortly
  | 'NOT_READY' // no map yet, shard not registered, a peer is unreachable, or a replicated range cannot serve now (below minInSync, no lease, primary changing)
  | 'UNREACHABLE' // (client side) the transport failed: no process answered at the address
  | 'INVALID_ARGUMENT' // bad input; the message names the field
  | 'LIMIT_EXCEEDED' // a per-call limit; the message names the limit and the value
  | 'DISK_FULL' // the shard's disk is full: nothing was applied; the message names the directory; it resumes by itself once space is freed
  | 'PRECONDITION' // the cluster's state forbids it now (e.g. removing a shard that owns ranges)
  | 'CONFLICT' // lease held by another, move already running, …
  | 'NOT_LEADER' // this master does not lead (a standby, or deposed): it changed nothing; ask the leader
  | 'NOT_FOUND' // unknown lease, move, shard or user
  | 'UNAUTHENTICATED' // missing, malformed, expired or badly signed token
  | 'PERMISSION_DENIED' // role too low
  | 'CANCELLED' // the caller went away
  | 'DEADLINE_EXCEEDED' // the caller's deadline passed
  | 'INTERNAL'; // anything unexpected

const TO_STATUS: Record<ErrorCode, Status> = {
  WRONG_SHARD: Status.FAILED_PRECONDITION,
  FENCED: Status.UNAVAILABLE,
  NOT_READY: Status.UNAVAILABLE,
  UNREACHABLE: Status.UNAVAILABLE,
  INVALID_ARGUMENT: Status.INVALID_ARGUMENT,
  LIMIT_EXCEEDED: Status.RESOURCE_EXHAUSTED,
  DISK_FULL: Status.RESOURCE_EXHAUSTED,
  PRECONDITION: Status.FAILED_PRECONDITION,
  CONFLICT: Status.ABORTED,
  NOT_LEADER: Status.UNAVAILABLE,
  NOT_FOUND: Status.NOT_FOUND,
  UNAUTHENTICATED: Status.UNAUTHENTICATED,
  PERMISSION_DENIED: Status.PERMISSION_DENIED,
  CANCELLED: Status.CANCELLED,
  DEADLINE_EXCEEDED: Status.DEADLINE_EXCEEDED,
  INTERNAL: Status.INTERNAL,
};

const FROM_STATUS: Partial<Record<Status, ErrorCode>> = {
  [Status.FAILED_PRECONDITION]: 'WRONG_SHARD',
  [Status.UNAVAILABLE]: 'NOT_READY',
  [Status.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [Status.RESOURCE_EXHAUSTED]: 'LIMIT_EXCEEDED',
  [Status.ABORTED]: 'CONFLICT',
  [Status.NOT_FOUND]: 'NOT_FOUND',
  [Status.UNAUTHENTICATED]: 'UNAUTHENTICATED',
  [Status.PERMISSION_DENIED]: 'PERMISSION_DENIED',
  [Status.CANCELLED]: 'CANCELLED',
  [Status.DEADLINE_EXCEEDED]: 'DEADLINE_EXCEEDED',
};

export interface ErrorDetails {
  /** The answering process's current map epoch (WRONG_SHARD). */
  epoch?: bigint;
  /** Current owner of the key (WRONG_SHARD). */
  owner?: string;
  ownerAddress?: string;
  /** Suggested pause before a retry (FENCED, NOT_READY). */
  retryAfterMs?: number;
  /** A finer cause than the code, for clients to act on (TOKEN_EXPIRED: log in again). */
  reason?: ErrorReason;
  /** NOT_LEADER: the address of the master that leads, when known (clients follow it). */
  leaderAddress?: string;
}

/**
 * - TOKEN_EXPIRED: log in again.
 * - TOKEN_REVOKED: the token no longer holds (its user was changed or removed
 *   in the master's client list, or it was issued before the cluster formed);
 *   log in again, which gives the user's current role or is refused.
 * - CLUSTER_MISMATCH: the two processes belong to different clusters (or one
 *   has no cluster state); nothing was changed. Retrying helps only once the
 *   right master is back.
 * - SHARD_REMOVED: the shard id was removed with remserver; it never returns.
 * - SESSION_CONFLICT: another process holds this shard id and is heartbeating
 *   (a copy of a live data directory?); retry only once it has been silent.
 * - SESSION_SUPERSEDED: a newer process took this shard id over; stop.
 * - STALE_TERM: a master's call under a term lower than one the shard has
 *   seen: a newer leader exists, and the caller was deposed; it must stop acting.
 */
export const ERROR_REASONS = ['TOKEN_EXPIRED', 'TOKEN_REVOKED', 'CLUSTER_MISMATCH', 'SHARD_REMOVED', 'SESSION_CONFLICT', 'SESSION_SUPERSEDED', 'STALE_TERM'] as const;
export type ErrorReason = (typeof ERROR_REASONS)[number];
const isErrorReason = (s: string | undefined): s is ErrorReason => (ERROR_REASONS as readonly string[]).includes(s ?? '');

export class CairnError extends Error {
  readonly code: ErrorCode;
  readonly details: ErrorDetails;
  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message);
    this.name = 'CairnError';
    this.code = code;
    this.details = details;
  }

  /** Safe to retry whatever the call: nothing was applied, or it is idempotent by request id. */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}

/** The one set of codes a client retries (with a refreshed map for WRONG_SHARD). */
export const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['WRONG_SHARD', 'FENCED', 'NOT_READY', 'UNREACHABLE', 'NOT_LEADER']);

export const invalidArgument = (msg: string): CairnError => new CairnError('INVALID_ARGUMENT', msg);
export const limitExceeded = (msg: string): CairnError => new CairnError('LIMIT_EXCEEDED', msg);

/**
 * True for a storage error that means the file system is out of space (or
 * over a quota): ENOSPC/EDQUOT from Node's fs, and LevelDB's IO errors, which
 * classic-level passes on as LEVEL_IO_ERROR with the OS's text ("IO error:
 * <dir>/000003.log: No space left on device"), possibly as a cause.
 */
export function isNoSpaceError(err: unknown): boolean {
  for (let e = err as { code?: unknown; message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 4; e = e.cause as typeof e, depth++) {
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return true;
    if (typeof e.message === 'string' && /no space left on device|disk quota exceeded/i.test(e.message)) return true;
  }
  return false;
}

export function grpcStatusOf(code: ErrorCode): Status {
  return TO_STATUS[code];
}

/**
 * Messages often quote the caller's input, which can be megabytes. The status
 * message travels in an HTTP/2 trailer: a huge one stalled the server's event
 * loop (found by the fuzz), and no reader needs more than the start of it.
 */
export const MAX_STATUS_MESSAGE_CHARS = 1024;

export function boundedMessage(message: string): string {
  if (message.length <= MAX_STATUS_MESSAGE_CHARS) return message;
  return `${message.slice(0, MAX_STATUS_MESSAGE_CHARS)}… (${message.length - MAX_STATUS_MESSAGE_CHARS} more characters)`;
}

/**
 * What a Cairn error tells its caller, as a gRPC status plus the cairn-*
 * details: the one form both the unary trailers and a Batch stream's
 * per-call status (shard.proto CallStatus) are made from.
 */
export interface StatusFields {
  code: Status;
  message: string;
  /** The domain code (cairn-error-code). */
  errorCode: ErrorCode;
  details: ErrorDetails;
}

export function statusFieldsOf(err: unknown): StatusFields {
  if (err instanceof CairnError) return { code: TO_STATUS[err.code], message: boundedMessage(err.message), errorCode: err.code, details: err.details };
  return { code: Status.INTERNAL, message: 'internal error (see the server log)', errorCode: 'INTERNAL', details: {} };
}

/** Domain error → the object a grpc-js callback or `call.destroy` takes. Unknown errors become a generic INTERNAL. */
export function toServiceError(err: unknown): Partial<ServiceError> & { code: Status; details: string; metadata: Metadata } {
  const f = statusFieldsOf(err);
  const metadata = new Metadata();
  metadata.set('cairn-error-code', f.errorCode);
  const d = f.details;
  if (d.epoch !== undefined) metadata.set('cairn-epoch', d.epoch.toString());
  if (d.owner !== undefined) metadata.set('cairn-owner', d.owner);
  if (d.ownerAddress !== undefined) metadata.set('cairn-owner-address', d.ownerAddress);
  if (d.retryAfterMs !== undefined) metadata.set('cairn-retry-after-ms', String(d.retryAfterMs));
  if (d.reason !== undefined) metadata.set('cairn-error-reason', d.reason);
  if (d.leaderAddress !== undefined) metadata.set('cairn-leader-address', d.leaderAddress);
  return { code: f.code, details: f.message, message: err instanceof CairnError ? f.message : 'internal error', metadata };
}

/**
 * A per-call status as a Batch stream carries it (shard.proto CallStatus): a
 * detail the trailers would not carry is 0 or empty (the proto has no
 * `optional`, for old protoc versions).
 */
export interface CallStatusWire {
  code: number;
  message: string;
  errorCode: string;
  epoch: bigint;
  owner: string;
  ownerAddress: string;
  retryAfterMs: number;
  reason: string;
  leaderAddress: string;
}

/** A failed call → its per-call status on a Batch stream: the same code, message and details as the unary trailers. */
export function toCallStatus(err: unknown): CallStatusWire {
  const f = statusFieldsOf(err);
  const d = f.details;
  return {
    code: f.code,
    message: f.message,
    errorCode: f.errorCode,
    epoch: d.epoch ?? 0n,
    owner: d.owner ?? '',
    ownerAddress: d.ownerAddress ?? '',
    retryAfterMs: d.retryAfterMs ?? 0,
    reason: d.reason ?? '',
    leaderAddress: d.leaderAddress ?? '',
  };
}

/** A per-call status from a Batch stream → the CairnError the same call's unary RPC would have given. */
export function fromCallStatus(s: CallStatusWire): CairnError {
  const code: ErrorCode = s.errorCode in TO_STATUS ? (s.errorCode as ErrorCode) : FROM_STATUS[s.code as Status] ?? 'INTERNAL';
  const details: ErrorDetails = {
    ...(s.epoch !== 0n ? { epoch: s.epoch } : {}),
    ...(s.owner !== '' ? { owner: s.owner } : {}),
    ...(s.ownerAddress !== '' ? { ownerAddress: s.ownerAddress } : {}),
    ...(s.retryAfterMs !== 0 ? { retryAfterMs: s.retryAfterMs } : {}),
    ...(isErrorReason(s.reason) ? { reason: s.reason } : {}),
    ...(s.leaderAddress !== '' ? { leaderAddress: s.leaderAddress } : {}),
  };
  return new CairnError(code, s.message || 'unknown error', details);
}

function meta(md: Metadata | undefined, key: string): string | undefined {
  const v = md?.get(key)[0];
  return v === undefined ? undefined : String(v);
}

/** A grpc-js client error → CairnError, reading the domain code and details from trailers. */
export function fromServiceError(err: unknown): CairnError {
  if (err instanceof CairnError) return err;
  const e = err as Partial<ServiceError>;
  if (typeof e?.code !== 'number') return new CairnError('INTERNAL', String((err as Error)?.message ?? err));
  const md = e.metadata;
  const named = meta(md, 'cairn-error-code') as ErrorCode | undefined;
  // An UNAVAILABLE that no Cairn process sent (no cairn-error-code) is the transport: nobody answered.
  const transport = e.code === Status.UNAVAILABLE && !named;
  const code: ErrorCode = named && named in TO_STATUS ? named : transport ? 'UNREACHABLE' : FROM_STATUS[e.code as Status] ?? 'INTERNAL';
  const epoch = meta(md, 'cairn-epoch');
  const retry = meta(md, 'cairn-retry-after-ms');
  const reason = meta(md, 'cairn-error-reason');
  const details: ErrorDetails = {
    ...(epoch !== undefined ? { epoch: BigInt(epoch) } : {}),
    ...(meta(md, 'cairn-owner') !== undefined ? { owner: meta(md, 'cairn-owner') } : {}),
    ...(meta(md, 'cairn-owner-address') !== undefined ? { ownerAddress: meta(md, 'cairn-owner-address') } : {}),
    ...(retry !== undefined ? { retryAfterMs: Number(retry) } : {}),
    ...(isErrorReason(reason) ? { reason } : {}),
    ...(meta(md, 'cairn-leader-address') !== undefined ? { leaderAddress: meta(md, 'cairn-leader-address') } : {}),
  };
  return new CairnError(code, e.details || e.message || 'unknown error', details);
}
