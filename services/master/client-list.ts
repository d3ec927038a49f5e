/**
 * The client list as the master last applied it, and what a new list changes.
 *
 * Tokens are signed claims that every server checks on its own, so taking a
 * right away needs a record the servers can check against: for a user who was
 * removed, lowered, or given a new password, "tokens issued before T no longer
 * hold". The master keeps these revocations with its state and hands them to
 * every shard with each heartbeat; a record is dropped once every token it
 * could refuse has expired anyway. Pure: no I/O, no clock.
 */
import { createHash } from 'node:crypto';
import { roleAtLeast, type Role } from '../common/auth.js';

export type ClientRole = Exclude<Role, 'server'>;

/** A user of the client list as applied: the password only as a digest of its hash, to notice a change. */
export interface AppliedClient {
  user: string;
  role: ClientRole;
  passwordDigest: string;
}

/** Tokens of `user` issued before notBeforeMs no longer hold; the record is kept until untilMs. */
export interface Revocation {
  user: string;
  notBeforeMs: number;
  untilMs: number;
}

export interface ClientListChange {
  added: string[];
  removed: string[];
  lowered: string[];
  raised: string[];
  passwordChanged: string[];
  /** Users whose earlier tokens no longer hold: removed, lowered, or with a new password. */
  revoked: string[];
}

/**
 * How long a revocation is kept after it is made: at least a token's life, so
 * no token it refuses outlives it, and at least a day, because tokens issued
 * under a longer tokenTtlSeconds (before a restart lowered it) live longer.
 */
export const MIN_REVOCATION_KEEP_MS = 24 * 3600 * 1000;

export function applied(clients: ReadonlyArray<{ user: string; role: ClientRole; passwordHash: string }>): AppliedClient[] {
  return clients.map((c) => ({ user: c.user, role: c.role, passwordDigest: createHash('sha256').update(c.passwordHash).digest('hex').slice(0, 32) }));
}

/** What changes from `prev` to `next`. A raised role revokes nothing: the old tokens carry less than the user may now do. */
export function diffClients(prev: readonly AppliedClient[], next: readonly AppliedClient[]): ClientListChange {
  const before = new Map(prev.map((c) => [c.user, c]));
  const after = new Map(next.map((c) => [c.user, c]));
  const change: ClientListChange = { added: [], removed: [], lowered: [], raised: [], passwordChanged: [], revoked: [] };
  for (const [user, a] of after) {
    const b = before.get(user);
    if (!b) change.added.push(user);
    else {
      if (a.role !== b.role) (roleAtLeast(a.role, b.role) ? change.raised : change.lowered).push(user);
      if (a.passwordDigest !== b.passwordDigest) change.passwordChanged.push(user);
    }
  }
  for (const user of before.keys()) if (!after.has(user)) change.removed.push(user);
  change.revoked = [...new Set([...change.removed, ...change.lowered, ...change.passwordChanged])].sort();
  for (const k of ['added', 'removed', 'lowered', 'raised', 'passwordChanged'] as const) change[k].sort();
  return change;
}

/** The revocations after revoking `users` at `nowMs`, without records whose time has passed. */
export function revoke(current: readonly Revocation[], users: readonly string[], nowMs: number, tokenTtlMs: number): Revocation[] {
  const untilMs = nowMs + Math.max(tokenTtlMs, MIN_REVOCATION_KEEP_MS);
  const byUser = new Map(current.filter((r) => r.untilMs > nowMs).map((r) => [r.user, r]));
  for (const user of users) byUser.set(user, { user, notBeforeMs: nowMs, untilMs });
  return [...byUser.values()].sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0));
}

/** The time before which `user`'s tokens are revoked, or undefined. */
export function revokedBefore(revocations: readonly Revocation[], user: string): number | undefined {
  return revocations.find((r) => r.user === user)?.notBeforeMs;
}
