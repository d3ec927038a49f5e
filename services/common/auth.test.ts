import { describe, expect, it } from '@jest/globals';
import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import {
  authorize,
  deriveTokenKey,
  hashPassword,
  hashPasswordAsync,
  isPasswordHash,
  mintToken,
  parseRole,
  roleAtLeast,
  ROLES,
  ServerTokenSource,
  tokenFromMetadataValue,
  verifyPassword,
  verifyPasswordAsync,
  verifyToken,
  type Role,
} from './auth.js';
import { CairnError } from './errors.js';

const KEY = deriveTokenKey('a-cluster-server-credential');
const T0 = Date.UTC(2025, 0, 1);

/** Runs `fn` and returns the CairnError it throws (fails the test if it does not throw one). */
function caught(fn: () => unknown): CairnError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CairnError);
    return e as CairnError;
  }
  throw new Error('expected a CairnError');
}

/** Signs an arbitrary payload the way tokens are signed, to build well-signed but bad tokens. */
function signRaw(payloadB64url: string, version = 'v1', key = KEY): string {
  const signed = `${version}.${payloadB64url}`;
  return `${signed}.${createHmac('sha256', key).update(signed).digest('base64url')}`;
}

describe('roles', () => {
  it('orders r < rw < admin < server, each including the ones before it', () => {
    for (const [i, have] of ROLES.entries()) {
      for (const [j, need] of ROLES.entries()) {
        expect(roleAtLeast(have, need)).toBe(i >= j);
      }
    }
    expect(ROLES).toEqual(['r', 'rw', 'admin', 'server']);
  });

  it('parses known roles and rejects others with INVALID_ARGUMENT', () => {
    for (const r of ROLES) expect(parseRole(r)).toBe(r);
    const e = caught(() => parseRole('root'));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toContain('"root"');
    expect(e.message).toContain('r, rw, admin, server');
  });

  it('authorize allows enough and denies too little with PERMISSION_DENIED', () => {
    expect(() => authorize({ role: 'rw' }, 'rw', 'WriteRows')).not.toThrow();
    expect(() => authorize({ role: 'server' }, 'admin', 'Rebalance')).not.toThrow();
    const e = caught(() => authorize({ role: 'r' }, 'rw', 'WriteRows'));
    expect(e.code).toBe('PERMISSION_DENIED');
    expect(e.message).toBe('role r may not call WriteRows (needs rw)');
    expect(caught(() => authorize({ role: 'admin' }, 'server', 'TransferRange')).message).toBe(
      'role admin may not call TransferRange (needs server)',
    );
  });
});

describe('passwords', () => {
  const hash = hashPassword('correct horse battery staple');

  it('produces a PHC scrypt string with a 16-byte salt', () => {
    expect(hash).toMatch(/^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
    expect(isPasswordHash(hash)).toBe(true);
    expect(Buffer.from(hash.split('$')[3]!, 'base64')).toHaveLength(16);
  });

  it('verifies the right password and rejects a wrong one', () => {
    expect(verifyPassword('correct horse battery staple', hash)).toBe(true);
    expect(verifyPassword('correct horse battery stapl', hash)).toBe(false);
    expect(verifyPassword('', hash)).toBe(false);
  });

  it('salts: the same password hashes differently each time, and both verify', () => {
    const again = hashPassword('correct horse battery staple');
    expect(again).not.toBe(hash);
    expect(verifyPassword('correct horse battery staple', again)).toBe(true);
  });

  it('handles non-ASCII passwords', () => {
    const h = hashPassword('pässwörd-🔑');
    expect(verifyPassword('pässwörd-🔑', h)).toBe(true);
    expect(verifyPassword('passwörd-🔑', h)).toBe(false);
  });

  it('recognizes only well-formed hashes; a malformed hash never verifies', () => {
    const bad = [
      '',
      'thepassword',
      '$scrypt$',
      hash.replace('$scrypt$', '$argon2id$'),
      hash.replace('ln=15', 'ln=30'), // absurd memory
      hash.replace('ln=15', 'ln=x'),
      hash.slice(0, -5),
      `${hash}=`,
      hash.replace(/\$[^$]+$/, '$!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'),
    ];
    for (const s of bad) {
      expect(isPasswordHash(s)).toBe(false);
      expect(verifyPassword('correct horse battery staple', s)).toBe(false);
    }
    expect(isPasswordHash(42)).toBe(false);
  });

  it('refuses to hash an empty password', () => {
    expect(caught(() => hashPassword('')).code).toBe('INVALID_ARGUMENT');
  });
});

describe('passwords, off the event loop', () => {
  const hash = hashPassword('correct horse battery staple');

  it('verifies as verifyPassword does, and agrees with it on hashes either one made', async () => {
    expect(await verifyPasswordAsync('correct horse battery staple', hash)).toBe(true);
    expect(await verifyPasswordAsync('correct horse battery stapl', hash)).toBe(false);
    expect(await verifyPasswordAsync('', hash)).toBe(false);
    const h = await hashPasswordAsync('pässwörd-🔑');
    expect(h).toMatch(/^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
    expect(h).not.toBe(await hashPasswordAsync('pässwörd-🔑'));
    expect(verifyPassword('pässwörd-🔑', h)).toBe(true);
    // NFC and NFD spellings are one password, as in the synchronous form.
    expect(await verifyPasswordAsync('pa\u0308sswo\u0308rd-🔑', h)).toBe(true);
    expect(await verifyPasswordAsync('passwörd-🔑', h)).toBe(false);
  });

  it('never verifies against a malformed hash, and refuses to hash an empty password', async () => {
    for (const s of ['', '$scrypt$', hash.replace('ln=15', 'ln=30'), hash.slice(0, -5), `${hash}=`]) {
      expect(await verifyPasswordAsync('correct horse battery staple', s)).toBe(false);
    }
    await expect(hashPasswordAsync('')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('hashes on the thread pool: the event loop turns while a check runs', async () => {
    // A check done on the calling thread (scryptSync inside an async function) settles before the loop turns.
    const order: string[] = [];
    setImmediate(() => order.push('event loop turned'));
    await verifyPasswordAsync('correct horse battery staple', hash).then(() => order.push('checked'));
    expect(order).toEqual(['event loop turned', 'checked']);
  });
});

describe('tokens', () => {
  it('round-trips claims', () => {
    const { token, expiresAtMs } = mintToken(KEY, 'alice', 'rw', 60_000, T0);
    expect(expiresAtMs).toBe(T0 + 60_000);
    expect(token.split('.')).toHaveLength(3);
    expect(token.startsWith('v1.')).toBe(true);
    expect(verifyToken(KEY, token, T0 + 1)).toEqual({ sub: 'alice', role: 'rw', iat: T0, exp: T0 + 60_000 });
  });

  it('round-trips any subject and role (property)', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1 }), fc.constantFrom<Role>(...ROLES), fc.integer({ min: 1, max: 1e9 }), (sub, role, ttl) => {
        const { token } = mintToken(KEY, sub, role, ttl, T0);
        const c = verifyToken(KEY, token, T0);
        return c.sub === sub && c.role === role && c.exp === T0 + ttl;
      }),
    );
  });

  it('derives the same key from the same credential, a different one otherwise', () => {
    expect(deriveTokenKey('a-cluster-server-credential').equals(KEY)).toBe(true);
    expect(deriveTokenKey('another-server-credential').equals(KEY)).toBe(false);
    expect(KEY).toHaveLength(32);
  });

  it('rejects a token signed with a different key', () => {
    const { token } = mintToken(deriveTokenKey('another-server-credential'), 'alice', 'admin', 60_000, T0);
    const e = caught(() => verifyToken(KEY, token, T0));
    expect(e.code).toBe('UNAUTHENTICATED');
    expect(e.message).toContain('bad signature');
  });

  it('rejects a tampered payload (role escalation) and a tampered signature', () => {
    const { token } = mintToken(KEY, 'alice', 'r', 60_000, T0);
    const [v, payload, sig] = token.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
    const forged = Buffer.from(JSON.stringify({ ...claims, role: 'admin' })).toString('base64url');
    const e1 = caught(() => verifyToken(KEY, `${v}.${forged}.${sig}`, T0));
    expect(e1.code).toBe('UNAUTHENTICATED');
    expect(e1.message).toContain('bad signature');

    const flipped = Buffer.from(sig, 'base64url');
    flipped[0] ^= 1;
    const e2 = caught(() => verifyToken(KEY, `${v}.${payload}.${flipped.toString('base64url')}`, T0));
    expect(e2.message).toContain('bad signature');
    const e3 = caught(() => verifyToken(KEY, `${v}.${payload}.${sig.slice(0, -4)}`, T0));
    expect(e3.message).toContain('bad signature');
  });

  it('rejects an expired token and says when it expired', () => {
    const { token, expiresAtMs } = mintToken(KEY, 'alice', 'rw', 60_000, T0);
    expect(verifyToken(KEY, token, expiresAtMs - 1).sub).toBe('alice');
    const e = caught(() => verifyToken(KEY, token, expiresAtMs + 90_000));
    expect(e.code).toBe('UNAUTHENTICATED');
    expect(e.message).toContain('expired');
    expect(e.message).toContain(new Date(expiresAtMs).toISOString());
    expect(e.message).toContain('90s ago');
    expect(e.details.reason).toBe('TOKEN_EXPIRED'); // what the SDK acts on, not the message
    expect(caught(() => verifyToken(KEY, token, expiresAtMs)).message).toContain('expired');
    expect(caught(() => verifyToken(KEY, `${token}x`, expiresAtMs - 1)).details.reason).toBeUndefined();
  });

  it('gives distinct messages for missing and malformed tokens', () => {
    const cases: Array<[string | undefined, string]> = [
      [undefined, 'missing token'],
      ['', 'missing token'],
      ['abc', 'malformed token'],
      ['v1.abc', 'malformed token'],
      ['v1.a.b.c', 'malformed token'],
      ['v1.a+b.c', 'base64url'],
      ['v1.abc.!!', 'base64url'],
      ['v1..abc', 'base64url'],
      [signRaw(Buffer.from('{"sub":"alice"').toString('base64url')), 'not JSON'],
      [signRaw(Buffer.from('not json at all').toString('base64url')), 'not JSON'],
      [signRaw(Buffer.from('null').toString('base64url')), 'claims need'],
      [signRaw(Buffer.from('{"sub":"a","role":"root","iat":1,"exp":9e15}').toString('base64url')), 'claims need'],
      [signRaw(Buffer.from('{"sub":"","role":"r","iat":1,"exp":9e15}').toString('base64url')), 'claims need'],
      [signRaw(Buffer.from('{"sub":"a","role":"r","iat":1,"exp":"never"}').toString('base64url')), 'claims need'],
      [signRaw(Buffer.from('{"sub":"a","role":"r","iat":1,"exp":9e15}').toString('base64url'), 'v2'), 'unsupported version "v2"'],
    ];
    const messages = new Set<string>();
    for (const [token, want] of cases) {
      const e = caught(() => verifyToken(KEY, token as string, T0));
      expect(e.code).toBe('UNAUTHENTICATED');
      expect(e.message).toContain(want);
      messages.add(e.message.split(':')[0]!);
    }
    expect(messages.has('missing token')).toBe(true);
    expect(messages.has('malformed token')).toBe(true);
    // A well-signed, well-formed payload still verifies through the same path.
    const ok = signRaw(Buffer.from(JSON.stringify({ sub: 'a', role: 'r', iat: T0, exp: T0 + 5 })).toString('base64url'));
    expect(verifyToken(KEY, ok, T0).role).toBe('r');
  });

  it('refuses to mint with a non-positive ttl or an empty subject', () => {
    expect(caught(() => mintToken(KEY, 'alice', 'r', 0, T0)).code).toBe('INVALID_ARGUMENT');
    expect(caught(() => mintToken(KEY, '', 'r', 1000, T0)).code).toBe('INVALID_ARGUMENT');
  });
});

describe('tokenFromMetadataValue', () => {
  it('extracts a bearer token', () => {
    expect(tokenFromMetadataValue('Bearer v1.abc.def')).toBe('v1.abc.def');
    expect(tokenFromMetadataValue('bearer   v1.abc.def ')).toBe('v1.abc.def');
    expect(tokenFromMetadataValue(Buffer.from('Bearer t'))).toBe('t');
  });

  it('rejects a missing or malformed header with UNAUTHENTICATED', () => {
    for (const v of [undefined, null, '', '   ']) {
      const e = caught(() => tokenFromMetadataValue(v));
      expect(e.code).toBe('UNAUTHENTICATED');
      expect(e.message).toBe('missing token: send "authorization: Bearer <token>" from MasterService.Login');
    }
    for (const v of ['v1.abc.def', 'Basic abc', 'Bearer', 'Bearer a b']) {
      const e = caught(() => tokenFromMetadataValue(v));
      expect(e.code).toBe('UNAUTHENTICATED');
      expect(e.message).toContain('Bearer <token>');
    }
  });
});

describe('ServerTokenSource', () => {
  it('mints a server token that verifies with the same key', () => {
    const src = new ServerTokenSource(KEY, 'shard-1');
    const c = verifyToken(KEY, src.get());
    expect(c.role).toBe('server');
    expect(c.sub).toBe('shard-1');
    expect(() => verifyToken(deriveTokenKey('another-server-credential'), src.get())).toThrow(CairnError);
  });

  it('caches the token and re-mints before it expires', () => {
    let now = T0;
    const src = new ServerTokenSource(KEY, 'shard-1', { ttlMs: 10_000, now: () => now });
    const first = src.get();
    now += 5_000;
    expect(src.get()).toBe(first);
    now = T0 + 8_500; // less than a fifth of the lifetime left
    const second = src.get();
    expect(second).not.toBe(first);
    expect(verifyToken(KEY, second, now).exp).toBe(T0 + 18_500);
    // Every token handed out is still valid when handed out.
    for (let t = T0; t < T0 + 60_000; t += 777) {
      now = t;
      expect(verifyToken(KEY, src.get(), now).exp - now).toBeGreaterThanOrEqual(2_000);
    }
  });
});
