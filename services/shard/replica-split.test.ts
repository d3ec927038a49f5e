import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { hashOfKey } from './keys.js';
import { coveringPosition, positionKey, positionToJson, projectEntry, RangeLog, RangeLogs, strictlyContains, type LogEntry } from './replica-log.js';
import type { RawOp } from './store-db.js';

/** A per-row key: the row's 8-byte hash, then the rest. */
const op = (hash: bigint | string): RawOp => {
  const key = Buffer.alloc(9);
  key.writeBigUInt64BE(typeof hash === 'bigint' ? hash : BigInt(hash.charCodeAt(0)) << 56n);
  return { sublevel: 'cells', key, value: Buffer.from('v') };
};
const HASH = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });

describe('a split range continues its log (projection)', () => {
  it('each piece keeps every lsn and term, with only its own ops; entries of the other piece stay, empty', () => {
    fc.assert(
      fc.property(fc.array(fc.array(HASH, { maxLength: 4 }), { minLength: 1, maxLength: 20 }), HASH, (batches, cut) => {
        const log = new RangeLog();
        batches.forEach((keys, i) => log.append({ lsn: BigInt(i + 1), term: BigInt(1 + (i >> 2)), ops: keys.map(op), sync: false, bytes: keys.length * 10 }));
        const inLow = (o: RawOp) => hashOfKey(o.key) < cut;
        const low = log.projectedOnto(inLow);
        const high = log.projectedOnto((o) => !inLow(o));
        for (const part of [low, high]) {
          expect(part.position()).toEqual(log.position());
          for (let l = 0n; l <= log.lastLsn; l++) expect(part.termAt(l)).toEqual(log.termAt(l));
        }
        const all = log.entriesFrom(1n, Infinity)!;
        const lo = low.entriesFrom(1n, Infinity)!;
        const hi = high.entriesFrom(1n, Infinity)!;
        expect(lo.map((e) => e.lsn)).toEqual(all.map((e) => e.lsn));
        all.forEach((e, i) => {
          // Together the pieces hold exactly the whole entry's ops.
          expect([...lo[i]!.ops, ...hi[i]!.ops].map((o) => o.key.toString('hex')).sort()).toEqual(e.ops.map((o) => o.key.toString('hex')).sort());
          expect(lo[i]!.ops.every(inLow)).toBe(true);
          expect(hi[i]!.ops.some(inLow)).toBe(false);
        });
        // A piece takes appends after the whole log's end.
        low.append({ lsn: log.lastLsn + 1n, term: log.lastTerm, ops: [], sync: false, bytes: 0 });
        expect(low.lastLsn).toBe(log.lastLsn + 1n);
      }),
    );
  });

  it('projectEntry keeps an entry whose ops are all in the piece as it is', () => {
    const e: LogEntry = { lsn: 3n, term: 2n, ops: [op('a')], sync: true, bytes: 5 };
    expect(projectEntry(e, () => true)).toBe(e);
    expect(projectEntry(e, () => false)).toEqual({ lsn: 3n, term: 2n, ops: [], sync: true, bytes: 0 });
  });
});

describe('a piece with no record of its own takes the whole range\'s position', () => {
  const records = new Map<string, unknown>([
    [positionKey({ start: 0n, end: 1000n }), positionToJson({ lastLsn: 7n, lastTerm: 2n, terms: [[1n, 1n], [2n, 5n]] })],
    [positionKey({ start: 0n, end: 500n }), positionToJson({ lastLsn: 9n, lastTerm: 3n, terms: [[1n, 1n], [2n, 5n], [3n, 8n]] })],
    [positionKey({ start: 600n, end: 700n }), positionToJson({ lastLsn: 1n, lastTerm: 1n, terms: [[1n, 1n]] })],
  ]);
  const store = {
    metaNamesStartingWith: async (prefix: string) => [...records.keys(), 'map', 'shardId'].filter((k) => k.startsWith(prefix)),
    getMeta: async <T>(key: string) => records.get(key) as T | undefined,
  };

  it('the smallest range holding it (the latest: replicated ranges are split, never merged)', async () => {
    expect((await coveringPosition(store, { start: 100n, end: 200n }))?.lastLsn).toBe(9n);
    expect((await coveringPosition(store, { start: 500n, end: 600n }))?.lastLsn).toBe(7n);
    expect(await coveringPosition(store, { start: 900n, end: 1100n })).toBeUndefined();
    expect(strictlyContains({ start: 0n, end: 10n }, { start: 0n, end: 10n })).toBe(false);
  });

  it('RangeLogs: its own record first, else the covering one, else empty', async () => {
    const logs = new RangeLogs(async (key) => {
      const j = records.get(key) as Parameters<typeof positionToJson>[0] | undefined;
      return j ? (await import('./replica-log.js')).positionFromJson(j as never) : undefined;
    }, (r) => coveringPosition(store, r));
    expect((await logs.get({ start: 600n, end: 700n })).lastLsn).toBe(1n);
    expect((await logs.get({ start: 0n, end: 250n })).lastLsn).toBe(9n);
    expect((await logs.get({ start: 2000n, end: 3000n })).lastLsn).toBe(0n);
  });
});
