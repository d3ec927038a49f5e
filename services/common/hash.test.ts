import { describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { endFromProto, endToProto, hashFromBytes, hashToBytes, HASH_SPACE_END, rowHash } from './hash.js';

describe('rowHash', () => {
  it('is the first 8 bytes of SHA-1, big-endian (as GRR)', () => {
    const sha = createHash('sha1').update('aff4:/C.1234').digest();
    expect(rowHash('aff4:/C.1234')).toBe(sha.readBigUInt64BE(0));
  });

  it('is always inside [0, 2^64)', () => {
    fc.assert(fc.property(fc.string(), (s) => rowHash(s) >= 0n && rowHash(s) < HASH_SPACE_END));
  });
});

describe('hash bytes', () => {
  const h = fc.bigInt({ min: 0n, max: HASH_SPACE_END - 1n });
  it('round-trips and preserves order as bytes', () => {
    fc.assert(
      fc.property(h, h, (a, b) => {
        expect(hashFromBytes(hashToBytes(a))).toBe(a);
        const cmp = Buffer.compare(hashToBytes(a), hashToBytes(b));
        expect(Math.sign(cmp)).toBe(a < b ? -1 : a > b ? 1 : 0);
      }),
    );
  });

  it('refuses hashes outside the space', () => {
    expect(() => hashToBytes(HASH_SPACE_END)).toThrow(RangeError);
    expect(() => hashToBytes(-1n)).toThrow(RangeError);
  });

  it('carries 2^64 as 0 in proto', () => {
    expect(endToProto(HASH_SPACE_END)).toBe(0n);
    expect(endFromProto(0n)).toBe(HASH_SPACE_END);
    expect(endFromProto(5n)).toBe(5n);
  });
});
