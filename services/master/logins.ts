/**
 * Login admission: which password checks the master runs, when, and how many
 * at once. A check is a scrypt hash (32 MiB, tens to hundreds of ms of CPU),
 * so the master never runs one on its event loop and never runs many:
 *
 * - At most `concurrency` checks run at once (on the libuv pool, see
 *   auth.ts `verifyPasswordAsync`); the others wait in one queue, bounded
 *   in all, per user name, and in how many names one host has waiting. A
 *   full queue refuses at once with UNAVAILABLE (NOT_READY) and a
 *   retry-after: that is the master's capacity, transient and nobody's
 *   fault, so clients back off and retry (the SDK does). It is not
 *   LIMIT_EXCEEDED: a burst of correct logins (many clients starting at
 *   once) must get through on retry, not fail.
 * - Failed checks are counted per user name and per peer host in a sliding
 *   window. A user name with `userFailures` failures in `windowMs` is refused
 *   without a check until the oldest leaves the window; so is a host with
 *   `peerFailures`. Those refusals are LIMIT_EXCEEDED (RESOURCE_EXHAUSTED),
 *   a quota the caller spent: the message names the limit and when to retry,
 *   and the `cairn-retry-after-ms` trailer says the same. Checks still
 *   running count against the limits, so a burst cannot slip extra guesses
 *   past them: the attempts beyond wait until the running ones are decided.
 * - Refusals are not failures: a flood of refused attempts keeps nothing
 *   locked longer and costs no hash.
 * - A host where a user logged in successfully within `familiarMs` is
 *   familiar for that user: there the user has a counter of their own, and
 *   the host's counter does not apply. Failures elsewhere (or a host
 *   spraying many names) then do not lock that user out of that host.
 *   Another user on a host that is flooding one user keeps logging in: that
 *   user's name has its own counter and queue credit, and one user's
 *   failures charge the host at most `userFailures`.
 * - Unknown user names are counted exactly like known ones (the caller checks
 *   them against a dummy hash), so the answers and their timing do not tell
 *   which users exist. Only a successful login makes a host familiar.
 *
 * Pure apart from the injected clock: no timers, no I/O. The queue moves on
 * when a check finishes (a waiting attempt only ever waits for running ones).
 */
import { createHash } from 'node:crypto';
import { CairnError } from '../common/errors.js';

export interface LoginLimits {
  /** Password checks running at once (each holds a libuv pool thread and 32 MiB). */
  concurrency: number;
  /** Attempts waiting for a check, all together; beyond it UNAVAILABLE. */
  maxWaiting: number;
  /** Attempts waiting for one user name (for a familiar user: from that host); beyond it UNAVAILABLE. */
  maxWaitingPerUser: number;
  /**
   * Distinct user names with attempts waiting from one host (users not
   * familiar there); an attempt for one more name is UNAVAILABLE. A flood of
   * one name leaves room for the other names on that host; a host spraying
   * names cannot fill the queue.
   */
  maxWaitingNamesPerHost: number;
  /** Failed checks for one user name within windowMs before it is refused. */
  userFailures: number;
  /** Failed checks from one host (of users not familiar there) within windowMs before it is refused. */
  peerFailures: number;
  windowMs: number;
  /** How long a successful login keeps the host familiar for that user. */
  familiarMs: number;
  /** Counters and familiar pairs kept at most (each); the least recently touched go first. */
  maxTracked: number;
}

export const DEFAULT_LOGIN_LIMITS: LoginLimits = {
  concurrency: 2,
  maxWaiting: 512,
  maxWaitingPerUser: 32,
  maxWaitingNamesPerHost: 8,
  userFailures: 5,
  peerFailures: 30,
  windowMs: 60_000,
  familiarMs: 24 * 3_600_000,
  maxTracked: 10_000,
};

/** Who is logging in, as the master's Login handler knows it. */
export interface LoginCaller {
  /** The caller's transport address as grpc-js reports it (`host:port`), or 'unknown'. */
  peer: string;
  /** The caller's deadline, ms on the gate's clock; Infinity for none. */
  deadline?: number;
  /** True once the caller has gone away. */
  cancelled?: () => boolean;
}

export interface LoginAttempt extends LoginCaller {
  user: string;
}

/** A counter that has just reached its limit: from now on its attempts are refused until `untilMs`. */
export interface LoginLockout {
  kind: 'user' | 'host';
  /** The user name (cut short) for 'user'; the host for 'host'. */
  name: string;
  /** For a user familiar there: the host whose count it is. */
  host?: string;
  failures: number;
  untilMs: number;
}

/** The host part of a grpc-js peer string, as the key of its counter: an IPv4 address, an IPv6 /64, or the string itself. */
export function peerKey(peer: string): string {
  let host = peer.trim();
  if (host === '') return 'unknown';
  const bracket = /^\[([^\]]+)\](?::\d+)?$/.exec(host);
  if (bracket) host = bracket[1]!;
  else {
    // grpc-js: `${remoteAddress}:${remotePort}`, the address unbracketed even for IPv6.
    const i = host.lastIndexOf(':');
    if (i > 0 && /^\d{1,5}$/.test(host.slice(i + 1)) && (host.includes('.') || host.indexOf(':') < i)) host = host.slice(0, i);
  }
  host = host.replace(/%.*$/, '').toLowerCase();
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(host);
  if (mapped) return mapped[1]!;
  if (!host.includes(':')) return host;
  const groups = expandIpv6(host);
  // One IPv6 host usually holds a whole /64: count the /64.
  return groups ? `${groups.slice(0, 4).join(':')}::/64` : host;
}

function expandIpv6(s: string): string[] | undefined {
  const parts = s.split('::');
  if (parts.length > 2) return undefined;
  const side = (x: string) => (x === '' ? [] : x.split(':'));
  const head = side(parts[0]!);
  const tail = parts.length === 2 ? side(parts[1]!) : [];
  const last = tail.length ? tail : head;
  // An embedded IPv4 tail (::1.2.3.4) is two groups.
  const v4 = last.length ? /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(last[last.length - 1]!) : null;
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    last.splice(last.length - 1, 1, ((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
  }
  const missing = 8 - head.length - tail.length;
  if (parts.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const groups = [...head, ...Array<string>(parts.length === 2 ? missing : 0).fill('0'), ...tail];
  if (!groups.every((g) => /^[0-9a-f]{1,4}$/.test(g))) return undefined;
  return groups.map((g) => Number.parseInt(g, 16).toString(16));
}

/** A user name as a counter key: short names as they are, long ones by digest (names are the caller's input). */
function nameKey(user: string): string {
  return user.length <= 128 ? `n:${user}` : `h:${createHash('sha256').update(user).digest('hex')}`;
}

/** The key of a user's count on a host where it is familiar, and of the familiar pair: unambiguous whatever the name holds. */
const pairKey = (name: string, host: string) => JSON.stringify([name, host]);

/** A user name for a message: quoted, and cut short. */
function quoted(user: string): string {
  return JSON.stringify(user.length > 64 ? `${user.slice(0, 64)}…` : user);
}

function seconds(ms: number): string {
  return `${Math.max(1, Math.ceil(ms / 1000))} s`;
}

/** Per-key timestamps of failures within the window, least recently touched first. */
class FailureWindow {
  private readonly m = new Map<string, number[]>();
  constructor(
    private readonly windowMs: number,
    private readonly keep: number,
    private readonly maxKeys: number,
  ) {}

  private live(key: string, now: number): number[] {
    const all = this.m.get(key);
    if (!all) return [];
    const live = all.filter((t) => now - t < this.windowMs);
    if (live.length === 0) this.m.delete(key);
    else if (live.length !== all.length) this.m.set(key, live);
    return live;
  }

  count(key: string, now: number): number {
    return this.live(key, now).length;
  }

  /** When the count drops below `limit` again (ms on the clock), given it is at least `limit` now. */
  freeAt(key: string, limit: number, now: number): number {
    const live = this.live(key, now);
    return (live[live.length - limit] ?? now) + this.windowMs;
  }

  add(key: string, now: number): void {
    const live = [...this.live(key, now), now].slice(-this.keep);
    this.m.delete(key);
    this.m.set(key, live);
    while (this.m.size > this.maxKeys) this.m.delete(this.m.keys().next().value!);
  }

  get size(): number {
    return this.m.size;
  }
}

interface Waiter {
  /** The user's counter: the name, or name and host where the host is familiar for it. */
  userKey: string;
  /** The host's counter; undefined where the host is familiar for the user (its counter does not apply). */
  peer: string | undefined;
  /** The name, host and user key as written in messages. */
  user: string;
  host: string;
  familiar: boolean;
  caller: LoginCaller;
  verify: () => Promise<boolean>;
  resolve: (ok: boolean) => void;
  reject: (err: unknown) => void;
}

export class LoginGate {
  readonly limits: LoginLimits;
  private readonly users: FailureWindow;
  private readonly peers: FailureWindow;
  /** pairKey(name, host) → when the user last logged in from there. */
  private readonly familiar = new Map<string, number>();
  /** Checks running, by user key and by host. */
  private readonly inflightUsers = new Map<string, number>();
  private readonly inflightPeers = new Map<string, number>();
  private readonly waiting: Waiter[] = [];
  private running = 0;
  /** A running average of a check's duration, for retry-after hints. */
  private checkMs = 100;

  constructor(
    limits: Partial<LoginLimits> = {},
    private readonly now: () => number = Date.now,
    /** Told once each time a user's or a host's failures reach the limit (the master logs it). */
    private readonly onLockout?: (l: LoginLockout) => void,
  ) {
    this.limits = { ...DEFAULT_LOGIN_LIMITS, ...limits };
    const l = this.limits;
    for (const k of ['concurrency', 'maxWaiting', 'maxWaitingPerUser', 'maxWaitingNamesPerHost', 'userFailures', 'peerFailures', 'windowMs', 'maxTracked'] as const) {
      if (!(Number.isInteger(l[k]) && l[k] > 0)) throw new CairnError('INVALID_ARGUMENT', `login limits: ${k} must be a positive integer, got ${l[k]}`);
    }
    this.users = new FailureWindow(l.windowMs, l.userFailures, l.maxTracked);
    this.peers = new FailureWindow(l.windowMs, l.peerFailures, l.maxTracked);
  }

  /** Checks running and attempts waiting (for tests and metrics). */
  get load(): { running: number; waiting: number; trackedUsers: number; trackedPeers: number; familiar: number } {
    return { running: this.running, waiting: this.waiting.length, trackedUsers: this.users.size, trackedPeers: this.peers.size, familiar: this.familiar.size };
  }

  /**
   * Runs `verify` (true: the password is right for an existing user) when the
   * limits allow, and resolves with its answer; or refuses without running
   * it: LIMIT_EXCEEDED for a user or host over its failure limit,
   * NOT_READY when too many attempts wait, CANCELLED / DEADLINE_EXCEEDED
   * when the caller went away while it waited. An error `verify` throws
   * comes back as it is and counts as no failure.
   */
  attempt(a: LoginAttempt, verify: () => Promise<boolean>): Promise<boolean> {
    const now = this.now();
    const host = peerKey(a.peer);
    const name = nameKey(a.user);
    const familiar = this.isFamiliar(name, host, now);
    const w: Omit<Waiter, 'resolve' | 'reject'> = {
      userKey: familiar ? pairKey(name, host) : name,
      peer: familiar ? undefined : host,
      user: a.user,
      host,
      familiar,
      caller: a,
      verify,
    };
    const refusal = this.locked(w, now) ?? this.full(w);
    if (refusal) return Promise.reject(refusal);
    return new Promise<boolean>((resolve, reject) => {
      this.waiting.push({ ...w, resolve, reject });
      this.pump();
    });
  }

  private isFamiliar(name: string, host: string, now: number): boolean {
    const at = this.familiar.get(pairKey(name, host));
    return at !== undefined && now - at < this.limits.familiarMs;
  }

  /** LIMIT_EXCEEDED when the user's or the host's failures reached the limit. */
  private locked(w: Omit<Waiter, 'resolve' | 'reject'>, now: number): CairnError | undefined {
    const l = this.limits;
    const win = `${l.windowMs / 1000} s`;
    if (this.users.count(w.userKey, now) >= l.userFailures) {
      const retry = this.users.freeAt(w.userKey, l.userFailures, now) - now;
      const where = w.familiar ? ` from ${w.host}` : '';
      return new CairnError(
        'LIMIT_EXCEEDED',
        `login refused: ${l.userFailures} failed logins for user ${quoted(w.user)}${where} within ${win} (the limit is ${l.userFailures} per ${win} per user); retry in ${seconds(retry)}`,
        { retryAfterMs: retry },
      );
    }
    if (w.peer !== undefined && this.peers.count(w.peer, now) >= l.peerFailures) {
      const retry = this.peers.freeAt(w.peer, l.peerFailures, now) - now;
      return new CairnError(
        'LIMIT_EXCEEDED',
        `login refused: ${l.peerFailures} failed logins from ${w.peer} within ${win} (the limit is ${l.peerFailures} per ${win} per host); retry in ${seconds(retry)}`,
        { retryAfterMs: retry },
      );
    }
    return undefined;
  }

  /** NOT_READY when the queue, or the user's or host's share of it, is full. */
  private full(w: Omit<Waiter, 'resolve' | 'reject'>): CairnError | undefined {
    const l = this.limits;
    const retryAfterMs = Math.max(100, Math.ceil(((this.waiting.length + this.running) / l.concurrency) * this.checkMs));
    const busy = (what: string) => new CairnError('NOT_READY', `login busy: ${what}; retry in ${retryAfterMs} ms`, { retryAfterMs });
    if (this.waiting.length >= l.maxWaiting) return busy(`${this.waiting.length} logins are waiting for a password check (the limit is ${l.maxWaiting})`);
    let forUser = 0;
    const names = new Set<string>();
    for (const x of this.waiting) {
      if (x.userKey === w.userKey) forUser++;
      if (w.peer !== undefined && x.peer === w.peer) names.add(x.userKey);
    }
    if (forUser >= l.maxWaitingPerUser) {
      return busy(`${forUser} logins for user ${quoted(w.user)} are waiting for a password check (the limit is ${l.maxWaitingPerUser} per user)`);
    }
    if (w.peer !== undefined && !names.has(w.userKey) && names.size >= l.maxWaitingNamesPerHost) {
      return busy(`logins for ${names.size} user names from ${w.host} are waiting for a password check (the limit is ${l.maxWaitingNamesPerHost} names per host)`);
    }
    return undefined;
  }

  /** True when a check for `w` may start: running checks counted as failures-to-be. */
  private hasCredit(w: Waiter, now: number): boolean {
    const l = this.limits;
    if (this.users.count(w.userKey, now) + (this.inflightUsers.get(w.userKey) ?? 0) >= l.userFailures) return false;
    if (w.peer !== undefined && this.peers.count(w.peer, now) + (this.inflightPeers.get(w.peer) ?? 0) >= l.peerFailures) return false;
    return true;
  }

  /** Starts what may start, refuses what waits in vain; first come, first served, skipping attempts that must wait for running ones. */
  private pump(): void {
    const now = this.now();
    for (let i = 0; i < this.waiting.length && this.running < this.limits.concurrency; ) {
      const w = this.waiting[i]!;
      const refusal = this.gone(w, now) ?? this.locked(w, now);
      if (refusal) {
        this.waiting.splice(i, 1);
        w.reject(refusal);
      } else if (this.hasCredit(w, now)) {
        this.waiting.splice(i, 1);
        this.start(w);
      } else {
        i++;
      }
    }
  }

  private gone(w: Waiter, now: number): CairnError | undefined {
    if (w.caller.cancelled?.()) return new CairnError('CANCELLED', 'the caller went away before its password was checked');
    if (now >= (w.caller.deadline ?? Infinity)) return new CairnError('DEADLINE_EXCEEDED', 'the deadline passed before the password was checked');
    return undefined;
  }

  private count(w: Waiter, by: 1 | -1): void {
    const bump = (m: Map<string, number>, key: string) => {
      const n = (m.get(key) ?? 0) + by;
      if (n === 0) m.delete(key);
      else m.set(key, n);
    };
    this.running += by;
    bump(this.inflightUsers, w.userKey);
    if (w.peer !== undefined) bump(this.inflightPeers, w.peer);
  }

  private start(w: Waiter): void {
    this.count(w, 1);
    const started = this.now();
    let result: Promise<boolean>;
    try {
      result = w.verify();
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(
      (ok) => {
        const now = this.now();
        this.finish(w, now - started);
        if (ok) this.remember(w, now);
        else this.failed(w, now);
        w.resolve(ok);
        this.pump();
      },
      (err: unknown) => {
        this.finish(w, this.now() - started);
        w.reject(err);
        this.pump();
      },
    );
  }

  private finish(w: Waiter, tookMs: number): void {
    this.count(w, -1);
    if (tookMs >= 0) this.checkMs = 0.8 * this.checkMs + 0.2 * tookMs;
  }

  private tell(l: LoginLockout): void {
    try {
      this.onLockout?.(l);
    } catch {
      // Telling is best effort: the attempt's answer must not depend on it.
    }
  }

  private failed(w: Waiter, now: number): void {
    const l = this.limits;
    this.users.add(w.userKey, now);
    if (this.users.count(w.userKey, now) === l.userFailures) {
      this.tell({
        kind: 'user',
        name: w.user.length > 64 ? `${w.user.slice(0, 64)}…` : w.user,
        ...(w.familiar ? { host: w.host } : {}),
        failures: l.userFailures,
        untilMs: this.users.freeAt(w.userKey, l.userFailures, now),
      });
    }
    if (w.peer === undefined) return;
    this.peers.add(w.peer, now);
    if (this.peers.count(w.peer, now) === l.peerFailures) {
      this.tell({ kind: 'host', name: w.peer, failures: l.peerFailures, untilMs: this.peers.freeAt(w.peer, l.peerFailures, now) });
    }
  }

  private remember(w: Waiter, now: number): void {
    const key = pairKey(nameKey(w.user), w.host);
    this.familiar.delete(key);
    this.familiar.set(key, now);
    while (this.familiar.size > this.limits.maxTracked) this.familiar.delete(this.familiar.keys().next().value!);
  }
}
