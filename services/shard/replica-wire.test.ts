/** The packed form of a replicated entry's ops (replica-wire.ts): what goes in comes out, and nothing malformed is taken. */
import { describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { HASH_SPACE_END } from '../common/hash.js';
import { cellKey, hashOfKey, rowPrefix } from './keys.js';
import { packOps, unpackOps } from './replica-wire.js';
import type { RawOp } from './store-db.js';

const ALL = { start: 0n, end: HASH_SPACE_END };
const SUBLEVELS = ['cells', 'leases', 'reqids'] as const;

function someOps(n: number, seed: number): RawOp[] {
  const ops: RawOp[] = [];
  for (let i = 0; i < n; i++) {
    const key = cellKey(rowPrefix(`row-${seed}-${i}`), `col${i % 3}`, BigInt(1000 + i));
    const sublevel = SUBLEVELS[i % 3]!;
    // Values around the varint's 1-, 2- and 3-byte lengths, and deletes.
    const size = [0, 1, 127, 128, 16_383, 16_384, 70_000][i % 7]!;
    ops.push(i % 5 === 4 ? { sublevel, key } : { sublevel, key, value: randomBytes(size) });
  }
  return ops;
}

const plain = (ops: RawOp[]) => ops.map((o) => ({ sublevel: o.sublevel, key: Buffer.from(o.key).toString('hex'), value: o.value === undefined ? undefined : Buffer.from(o.value).toString('hex') }));

describe('packed ops', () => {
  it('come back as they went in: sublevels, deletes, empty and long values', () => {
    for (const n of [0, 1, 7, 50]) {
      const ops = someOps(n, n);
      const packed = packOps(ops);
      expect(plain(unpackOps(packed, ALL))).toEqual(plain(ops));
      // A Uint8Array that is not a Buffer (as a decoder may hand over) reads the same.
      expect(plain(unpackOps(new Uint8Array(packed), ALL))).toEqual(plain(ops));
    }
  });

  it('are read as views of the buffer, not copies', () => {
    const packed = packOps(someOps(3, 1));
    const [first] = unpackOps(packed, ALL);
    expect(first!.key.buffer).toBe(packed.buffer);
  });

  it('refuse a truncated buffer, an unknown tag, a malformed key and a key outside the range', () => {
    const ops = someOps(4, 2);
    const packed = packOps(ops);
    for (const cut of [1, 2, 10, packed.length - 1]) expect(() => unpackOps(packed.subarray(0, cut), ALL)).toThrow(/malformed packed ops/);
    const badTag = Buffer.from(packed);
    badTag[0] = 3;
    expect(() => unpackOps(badTag, ALL)).toThrow(/tag 3/);
    expect(() => unpackOps(packOps([{ sublevel: 'cells', key: Buffer.from([1, 2]), value: Buffer.alloc(1) }]), ALL)).toThrow(/malformed key/);
    const h = hashOfKey(ops[0]!.key);
    const outside = h < 1n << 63n ? { start: 1n << 63n, end: HASH_SPACE_END } : { start: 0n, end: 1n << 63n };
    expect(() => unpackOps(packOps([ops[0]!]), outside)).toThrow(/outside the range/);
  });
});
