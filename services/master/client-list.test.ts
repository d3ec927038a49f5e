import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { checkClientClaims, type Claims } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { applied, diffClients, MIN_REVOCATION_KEEP_MS, revoke, revokedBefore, type ClientRole } from './client-list.js';

const c = (user: string, role: ClientRole, passwordHash = `hash-of-${user}`) => ({ user, role, passwordHash });

describe('diffClients', () => {
  it('revokes a removed user, a lowered user and a new password, not an added or raised user', () => {
    const prev = applied([c('alice', 'rw'), c('bob', 'admin'), c('carol', 'r'), c('dave', 'r'), c('erin', 'rw')]);
    const next = applied([c('alice', 'r'), c('carol', 'rw'), c('dave', 'r', 'new-hash'), c('erin', 'rw'), c('frank', 'admin')]);
    expect(diffClients(prev, next)).toEqual({
      added: ['frank'],
      removed: ['bob'],
      lowered: ['alice'],
      raised: ['carol'],
      passwordChanged: ['dave'],
      revoked: ['alice', 'bob', 'dave'],
    });
  });

  it('the same list changes nothing', () => {
    const l = applied([c('alice', 'rw'), c('bob', 'admin')]);
    expect(diffClients(l, l).revoked).toEqual([]);
  });

  it('property: a user is revoked exactly when it lost something', () => {
    const roles: ClientRole[] = ['r', 'rw', 'admin'];
    const list = fc.uniqueArray(fc.record({ user: fc.constantFrom('a', 'b', 'c', 'd', 'e'), role: fc.constantFrom(...roles), pw: fc.constantFrom('x', 'y') }), {
      selector: (u) => u.user,
    });
    fc.assert(
      fc.property(list, list, (p, n) => {
        const prev = applied(p.map((u) => c(u.user, u.role, u.pw)));
        const next = applied(n.map((u) => c(u.user, u.role, u.pw)));
        const d = diffClients(prev, next);
        for (const u of new Set([...p, ...n].map((x) => x.user))) {
          const b = p.find((x) => x.user === u);
          const a = n.find((x) => x.user === u);
          const lost = !!b && (!a || roles.indexOf(a.role) < roles.indexOf(b.role) || a.pw !== b.pw);
          expect(d.revoked.includes(u)).toBe(lost);
        }
      }),
    );
  });
});

describe('revoke', () => {
  const ttl = 900_000;
  it('records the time and keeps it at least a day, replacing an older record of the same user', () => {
    const r1 = revoke([], ['alice'], 1000, ttl);
    expect(r1).toEqual([{ user: 'alice', notBeforeMs: 1000, untilMs: 1000 + MIN_REVOCATION_KEEP_MS }]);
    const r2 = revoke(r1, ['alice', 'bob'], 5000, ttl);
    expect(r2.map((r) => [r.user, r.notBeforeMs])).toEqual([
      ['alice', 5000],
      ['bob', 5000],
    ]);
    expect(revokedBefore(r2, 'bob')).toBe(5000);
    expect(revokedBefore(r2, 'carol')).toBeUndefined();
  });

  it('drops records once every token they could refuse has expired', () => {
    const r = revoke([], ['alice'], 0, ttl);
    expect(revoke(r, [], MIN_REVOCATION_KEEP_MS - 1, ttl)).toHaveLength(1);
    expect(revoke(r, [], MIN_REVOCATION_KEEP_MS, ttl)).toHaveLength(0);
    // A token life longer than a day keeps the record as long as a token lives.
    expect(revoke([], ['alice'], 0, 2 * MIN_REVOCATION_KEEP_MS)[0]!.untilMs).toBe(2 * MIN_REVOCATION_KEEP_MS);
  });
});

describe('checkClientClaims', () => {
  const claims = (o: Partial<Claims> = {}): Claims => ({ sub: 'alice', role: 'rw', iat: 1000, exp: 9_000_000, cid: 'c-1', ...o });
  const policy = (clusterId: string, revs: Array<[string, number]> = []) => ({ clusterId, revokedBefore: (u: string) => new Map(revs).get(u) });
  const reason = (f: () => void) => {
    try {
      f();
      return 'ok';
    } catch (err) {
      expect(err).toBeInstanceOf(CairnError);
      expect((err as CairnError).code).toBe('UNAUTHENTICATED');
      return (err as CairnError).details.reason;
    }
  };

  it('accepts a token of this cluster that was not revoked', () => {
    expect(reason(() => checkClientClaims(claims(), policy('c-1')))).toBe('ok');
    expect(reason(() => checkClientClaims(claims({ iat: 2000 }), policy('c-1', [['alice', 2000]])))).toBe('ok');
    expect(reason(() => checkClientClaims(claims(), policy('c-1', [['bob', 5000]])))).toBe('ok');
  });

  it('refuses a token of another cluster, and one issued before the cluster had an id', () => {
    expect(reason(() => checkClientClaims(claims({ cid: 'c-2' }), policy('c-1')))).toBe('CLUSTER_MISMATCH');
    expect(reason(() => checkClientClaims(claims({ cid: 'c-2' }), policy('')))).toBe('CLUSTER_MISMATCH');
    expect(reason(() => checkClientClaims(claims({ cid: undefined }), policy('c-1')))).toBe('TOKEN_REVOKED');
    expect(reason(() => checkClientClaims(claims({ cid: '' }), policy('c-1')))).toBe('TOKEN_REVOKED');
    expect(reason(() => checkClientClaims(claims({ cid: '' }), policy('')))).toBe('ok');
  });

  it('refuses a token issued before its user was revoked, naming the user', () => {
    expect(reason(() => checkClientClaims(claims({ iat: 1999 }), policy('c-1', [['alice', 2000]])))).toBe('TOKEN_REVOKED');
    expect(() => checkClientClaims(claims({ iat: 1999 }), policy('c-1', [['alice', 2000]]))).toThrow(/"alice" was revoked/);
  });
});
