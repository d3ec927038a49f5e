/**
 * Authentication and authorization: roles, password hashes and signed tokens.
 *
 * - Passwords are stored as PHC-style scrypt strings
 *   (`$scrypt$ln=15,r=8,p=1$<salt>$<hash>`, unpadded standard base64), never
 *   in plaintext. `cairn hash-password` prints one.
 * - A client logs in to the master (MasterService.Login) and gets a short-lived
 *   token `v1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>`. The HMAC key
 *   is derived from the cluster's server credential, so every server checks
 *   tokens locally with no round trip.
 * - A process that holds the server credential mints its own `server` tokens
 *   for internal calls (`ServerTokenSource`); presenting one proves it holds
 *   the credential.
 *
 * Pure apart from reading the clock and the random salt. No I/O. A server
 * hashes with the async forms (`verifyPasswordAsync`, `hashPasswordAsync`):
 * they run scrypt on the libuv thread pool, never on the event loop.
 */
import { createHmac, randomBytes, scrypt as scryptCallback, scryptSync, timingSafeEqual } from 'node:crypto';
import { CairnError } from './errors.js';

// ---------------------------------------------------------------------------
// Roles

/** Each role includes every role before it; `server` is the internal role, above `admin`. */
export type Role = 'r' | 'rw' | 'admin' | 'server';

/** All roles, lowest first. */
export const ROLES: readonly Role[] = ['r', 'rw', 'admin', 'server'];

/** The roles a client credential may have (`server` is reserved for processes holding the server credential). */
export const CLIENT_ROLES: readonly Role[] = ['r', 'rw', 'admin'];

export function isRole(s: unknown): s is Role {
  return typeof s === 'string' && (ROLES as readonly string[]).includes(s);
}

/** True when `have` grants at least what `need` requires. */
export function roleAtLeast(have: Role, need: Role): boolean {
  return ROLES.indexOf(have) >= ROLES.indexOf(need);
}

/** Parses a role name; throws INVALID_ARGUMENT naming the accepted ones. */
export function parseRole(s: string): Role {
  if (isRole(s)) return s;
  throw new CairnError('INVALID_ARGUMENT', `unknown role ${JSON.stringify(s)}: expected one of ${ROLES.join(', ')}`);
}

// ---------------------------------------------------------------------------
// Passwords

/** scrypt cost: N = 2^15, r = 8, p = 1 (32 MiB, roughly 40–100 ms per hash on a current server core). */
const SCRYPT_LN = 15;
const SCRYPT_R = 8;
const SCRYPT_P = 1;
const SALT_BYTES = 16;
const HASH_BYTES = 32;
/** Refuse parameters that would make one verification eat more than this (a hostile or corrupt hash). */
const MAX_SCRYPT_MEMORY = 256 * 1024 * 1024;

const PHC_RE = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{22,86})\$([A-Za-z0-9+/]{43})$/;

interface ParsedHash {
  ln: number;
  r: number;
  p: number;
  salt: Buffer;
  hash: Buffer;
}

function b64(buf: Buffer): string {
  return buf.toString('base64').replace(/=+$/, '');
}

function scryptMem(ln: number, r: number): number {
  return 128 * 2 ** ln * r;
}

function parseHash(s: string): ParsedHash | undefined {
  const m = PHC_RE.exec(s);
  if (!m) return undefined;
  const ln = Number(m[1]);
  const r = Number(m[2]);
  const p = Number(m[3]);
  if (ln < 1 || r < 1 || p < 1 || p > 16 || scryptMem(ln, r) > MAX_SCRYPT_MEMORY) return undefined;
  const salt = Buffer.from(m[4]!, 'base64');
  const hash = Buffer.from(m[5]!, 'base64');
  if (salt.length < 16 || hash.length !== HASH_BYTES) return undefined;
  // Reject non-canonical encodings (trailing bits set), so one hash has one spelling.
  if (b64(salt) !== m[4] || b64(hash) !== m[5]) return undefined;
  return { ln, r, p, salt, hash };
}

function scryptOptions(ln: number, r: number, p: number) {
  return { N: 2 ** ln, r, p, maxmem: 2 * scryptMem(ln, r) };
}

function scrypt(pw: string, salt: Buffer, len: number, ln: number, r: number, p: number): Buffer {
  return scryptSync(pw.normalize('NFC'), salt, len, scryptOptions(ln, r, p));
}

/** scrypt on the libuv thread pool: the event loop goes on serving while it runs. */
function scryptAsync(pw: string, salt: Buffer, len: number, ln: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCallback(pw.normalize('NFC'), salt, len, scryptOptions(ln, r, p), (err, key) => (err ? reject(err) : resolve(key))),
  );
}

function phc(salt: Buffer, hash: Buffer): string {
  return `$scrypt$ln=${SCRYPT_LN},r=${SCRYPT_R},p=${SCRYPT_P}$${b64(salt)}$${b64(hash)}`;
}

/**
 * Hashes a password with a fresh random salt: `$scrypt$ln=15,r=8,p=1$<salt b64>$<hash b64>`.
 * Blocks the calling thread for the whole hash: for the CLI and tests; a server uses `hashPasswordAsync`.
 */
export function hashPassword(pw: string): string {
  if (pw.length === 0) throw new CairnError('INVALID_ARGUMENT', 'password must not be empty');
  const salt = randomBytes(SALT_BYTES);
  return phc(salt, scrypt(pw, salt, HASH_BYTES, SCRYPT_LN, SCRYPT_R, SCRYPT_P));
}

/** `hashPassword` with scrypt on the libuv thread pool. */
export async function hashPasswordAsync(pw: string): Promise<string> {
  if (pw.length === 0) throw new CairnError('INVALID_ARGUMENT', 'password must not be empty');
  const salt = randomBytes(SALT_BYTES);
  return phc(salt, await scryptAsync(pw, salt, HASH_BYTES, SCRYPT_LN, SCRYPT_R, SCRYPT_P));
}

/** True when `s` is a well-formed hash of the kind `hashPassword` produces (with sane parameters). */
export function isPasswordHash(s: unknown): s is string {
  return typeof s === 'string' && parseHash(s) !== undefined;
}

/**
 * Checks a password against a stored hash in constant time. A malformed hash
 * never verifies. Blocks the calling thread for the whole hash (tens to
 * hundreds of ms): for tools and tests; a server uses `verifyPasswordAsync`.
 */
export function verifyPassword(pw: string, stored: string): boolean {
  const h = parseHash(stored);
  if (!h) return false;
  const got = scrypt(pw, h.salt, h.hash.length, h.ln, h.r, h.p);
  return timingSafeEqual(got, h.hash);
}

/**
 * `verifyPassword` with scrypt on the libuv thread pool, so the event loop
 * keeps serving while it runs. Each call holds a pool thread and the hash's
 * memory (32 MiB at the default cost) until it ends: callers bound how many
 * run at once (services/master/logins.ts).
 */
export async function verifyPasswordAsync(pw: string, stored: string): Promise<boolean> {
  const h = parseHash(stored);
  if (!h) return false;
  const got = await scryptAsync(pw, h.salt, h.hash.length, h.ln, h.r, h.p);
  return timingSafeEqual(got, h.hash);
}

// ---------------------------------------------------------------------------
// Tokens

export interface Claims {
  /** The user name, or the process id for `server` tokens. */
  sub: string;
  role: Role;
  /** Issued at, ms since the epoch. */
  iat: number;
  /** Expires at, ms since the epoch (exclusive). */
  exp: number;
  /**
   * `server` tokens: the cluster id of the process that minted it ('' for a
   * process that belongs to no cluster yet). A shard refuses internal calls
   * from another cluster, so a master on the wrong state, or a peer of another
   * cluster that shares the credential, can change nothing on it.
   */
  cid?: string;
  /**
   * `server` tokens a master mints: the term it leads under (its leadership
   * key's create revision in etcd; "0" for an embedded master), as decimal
   * text. A shard refuses a master's call under a lower term than the highest
   * it has seen, so a deposed leader cannot act on shards.
   */
  term?: string;
}

const TOKEN_VERSION = 'v1';
const B64URL_RE = /^[A-Za-z0-9_-]+$/;

export const MISSING_TOKEN_MESSAGE = 'missing token: send "authorization: Bearer <token>" from MasterService.Login';

/** The token signing key: HMAC-SHA256(serverCredential, 'cairn-token-key-v1'). Same credential, same key, on every server. */
export function deriveTokenKey(serverCredential: string): Buffer {
  return createHmac('sha256', serverCredential).update('cairn-token-key-v1').digest();
}

function sign(key: Buffer, signedPart: string): Buffer {
  return createHmac('sha256', key).update(signedPart).digest();
}

/** Mints a token for `sub` with `role`, valid for `ttlMs` from `now`. */
export function mintToken(
  key: Buffer,
  sub: string,
  role: Role,
  ttlMs: number,
  now: number = Date.now(),
  clusterId?: string,
  term?: string,
): { token: string; expiresAtMs: number } {
  if (!(Number.isFinite(ttlMs) && ttlMs > 0)) throw new CairnError('INVALID_ARGUMENT', `token ttl must be a positive number of ms, got ${ttlMs}`);
  if (sub.length === 0) throw new CairnError('INVALID_ARGUMENT', 'token subject must not be empty');
  const claims: Claims = { sub, role, iat: now, exp: now + ttlMs, ...(clusterId !== undefined ? { cid: clusterId } : {}), ...(term !== undefined ? { term } : {}) };
  const payload = Buffer.from(JSON.stringify(claims), 'utf8').toString('base64url');
  const signedPart = `${TOKEN_VERSION}.${payload}`;
  return { token: `${signedPart}.${sign(key, signedPart).toString('base64url')}`, expiresAtMs: claims.exp };
}

function unauthenticated(msg: string): CairnError {
  return new CairnError('UNAUTHENTICATED', msg);
}

function formatAgo(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)}s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)}m`;
  return `${Math.round(ms / 3_600_000)}h`;
}

/**
 * Checks a token's signature and expiry and returns its claims. Throws
 * UNAUTHENTICATED with a message that says which check failed.
 */
/**
 * Tokens already verified, per key object: a token string cannot change, so a
 * second sight of it needs only the expiry check, not the HMAC and JSON parse
 * again (a client sends the same token with every call). Bounded: cleared when full.
 */
const verified = new WeakMap<Buffer, Map<string, Claims>>();
const VERIFIED_MAX = 1024;

export function verifyToken(key: Buffer, token: string | undefined, now: number = Date.now()): Claims {
  if (token) {
    const hit = verified.get(key)?.get(token);
    if (hit && now < hit.exp) return { ...hit };
  }
  const claims = verifyTokenFully(key, token, now);
  let m = verified.get(key);
  if (!m) verified.set(key, (m = new Map()));
  if (m.size >= VERIFIED_MAX) m.clear();
  m.set(token!, claims);
  return { ...claims };
}

function verifyTokenFully(key: Buffer, token: string | undefined, now: number): Claims {
  if (token === undefined || token === '') throw unauthenticated(MISSING_TOKEN_MESSAGE);
  const parts = token.split('.');
  if (parts.length !== 3) throw unauthenticated('malformed token: expected v1.<claims>.<signature>');
  const [version, payload, sig] = parts as [string, string, string];
  if (version !== TOKEN_VERSION) {
    throw unauthenticated(`malformed token: unsupported version ${JSON.stringify(version.slice(0, 16))} (expected ${TOKEN_VERSION})`);
  }
  if (!B64URL_RE.test(payload) || !B64URL_RE.test(sig)) throw unauthenticated('malformed token: claims and signature must be base64url');
  const want = sign(key, `${version}.${payload}`);
  const got = Buffer.from(sig, 'base64url');
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw unauthenticated('invalid token: bad signature (issued by another cluster or altered); log in again');
  }
  let claims: unknown;
  try {
    claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    throw unauthenticated('malformed token: claims are not JSON');
  }
  const c = claims as Partial<Claims> | null;
  if (
    typeof c !== 'object' ||
    c === null ||
    typeof c.sub !== 'string' ||
    c.sub === '' ||
    !isRole(c.role) ||
    typeof c.iat !== 'number' ||
    !Number.isFinite(c.iat) ||
    typeof c.exp !== 'number' ||
    !Number.isFinite(c.exp) ||
    (c.cid !== undefined && typeof c.cid !== 'string') ||
    (c.term !== undefined && (typeof c.term !== 'string' || !/^\d{1,20}$/.test(c.term)))
  ) {
    throw unauthenticated('malformed token: claims need sub, role, iat and exp');
  }
  if (now >= c.exp) {
    throw new CairnError(
      'UNAUTHENTICATED',
      `token expired at ${new Date(c.exp).toISOString()} (${formatAgo(now - c.exp)} ago); log in again with MasterService.Login`,
      { reason: 'TOKEN_EXPIRED' },
    );
  }
  return { sub: c.sub, role: c.role, iat: c.iat, exp: c.exp, ...(c.cid !== undefined ? { cid: c.cid } : {}), ...(c.term !== undefined ? { term: c.term } : {}) };
}

/**
 * What a server knows, beyond the signing key, to judge a client's token:
 * the cluster it belongs to, and for each user the master changed or removed
 * in its client list, the time before which that user's tokens no longer hold.
 */
export interface ClientTokenPolicy {
  clusterId: string;
  /** Tokens of `user` issued before this (ms since the epoch, the master's clock) are revoked; undefined: none. */
  revokedBefore(user: string): number | undefined;
}

/**
 * Checks a client token's claims after its signature. Two clusters that share
 * a server credential share the signing key, so the cluster id in the token
 * is what keeps one cluster's tokens out of the other (CLUSTER_MISMATCH). A
 * token issued before its user was changed or removed, or before the cluster
 * had an id, is TOKEN_REVOKED: a fresh login gives the user's current role.
 */
export function checkClientClaims(claims: Claims, policy: ClientTokenPolicy): void {
  const cid = claims.cid ?? '';
  if (cid !== policy.clusterId) {
    if (cid === '') {
      throw new CairnError('UNAUTHENTICATED', `token was issued before cluster ${policy.clusterId} had an id (by a master with no cluster yet, or an older one); log in again`, {
        reason: 'TOKEN_REVOKED',
      });
    }
    throw new CairnError(
      'UNAUTHENTICATED',
      `token was issued by cluster ${cid}, and this server belongs to ${policy.clusterId ? `cluster ${policy.clusterId}` : 'no cluster yet'}: log in to this cluster's master`,
      { reason: 'CLUSTER_MISMATCH' },
    );
  }
  const before = policy.revokedBefore(claims.sub);
  if (before !== undefined && claims.iat < before) {
    throw new CairnError(
      'UNAUTHENTICATED',
      `token of user ${JSON.stringify(claims.sub)} was revoked at ${new Date(before).toISOString()}: the user was changed or removed in the master's client list; log in again`,
      { reason: 'TOKEN_REVOKED' },
    );
  }
}

/** Throws PERMISSION_DENIED unless the caller's role is at least `need`. */
export function authorize(claims: Pick<Claims, 'role'>, need: Role, method: string): void {
  if (!roleAtLeast(claims.role, need)) {
    throw new CairnError('PERMISSION_DENIED', `role ${claims.role} may not call ${method} (needs ${need})`);
  }
}

/** The token from an `authorization` metadata value (`Bearer <token>`, scheme case-insensitive). */
export function tokenFromMetadataValue(value: string | Buffer | undefined | null): string {
  const v = (value === undefined || value === null ? '' : String(value)).trim();
  if (v === '') throw unauthenticated(MISSING_TOKEN_MESSAGE);
  const m = /^bearer\s+(\S+)$/i.exec(v);
  if (!m) throw unauthenticated('malformed authorization header: expected "Bearer <token>"');
  return m[1]!;
}

// ---------------------------------------------------------------------------
// Internal calls

export interface ServerTokenSourceOptions {
  /** Lifetime of each minted token (default 10 minutes). */
  ttlMs?: number;
  /** Clock, ms since the epoch (default Date.now). */
  now?: () => number;
  /** The minting process's cluster id, read at each mint ('' before it has one). */
  clusterId?: () => string;
  /** A master's term, carried by every call it makes to a shard (Claims.term); unset for shards. */
  term?: string;
}

/**
 * Mints and caches `server` tokens for a process that holds the server
 * credential. `get()` re-mints once less than a fifth of the lifetime is left,
 * so a token handed out always has time to reach its destination.
 */
export class ServerTokenSource {
  private readonly ttlMs: number;
  private readonly now: () => number;
  private token = '';
  private refreshAtMs = -Infinity;
  private mintedFor = '';

  constructor(
    private readonly key: Buffer,
    private readonly sub: string,
    private readonly opts: ServerTokenSourceOptions = {},
  ) {
    this.ttlMs = opts.ttlMs ?? 10 * 60_000;
    this.now = opts.now ?? Date.now;
    if (!(this.ttlMs > 0)) throw new CairnError('INVALID_ARGUMENT', `server token ttl must be positive, got ${this.ttlMs}`);
  }

  get(): string {
    const now = this.now();
    const cid = this.opts.clusterId?.() ?? '';
    // A process that just joined (or formed) a cluster re-mints at once, so its calls carry the id.
    if (now >= this.refreshAtMs || cid !== this.mintedFor) {
      this.mintedFor = cid;
      const { token, expiresAtMs } = mintToken(this.key, this.sub, 'server', this.ttlMs, now, cid, this.opts.term);
      this.token = token;
      this.refreshAtMs = expiresAtMs - this.ttlMs / 5;
    }
    return this.token;
  }
}
