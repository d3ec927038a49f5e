/**
 * Unit tests of the pure parts of range moves: range-set arithmetic, the
 * wire codec, the checksum and stream verifier, the source's ack tracker, the
 * throttle, the write log, the move registry, the fence table and janitor
 * over a real store, and the orphan-fence decision and reconciler.
 * The whole protocol over real gRPC is in test/transfer.test.ts,
 * test/fence-safety.test.ts and test/fence-orphans.test.ts.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CairnError } from '../common/errors.js';
import { HASH_SPACE_END, rowHash } from '../common/hash.js';
import { BUCKET_SIZE, type HashRange } from '../common/ranges.js';
import winston from 'winston';
import {
  coveredBy,
  FenceReconciler,
  FenceTable,
  normalizeRanges,
  orphanFenceAction,
  overlapsAny,
  RangeJanitor,
  subtractRanges,
  type FenceOutcome,
  type MetaStore,
} from './fence.js';
import { cellKey, leaseKey, requestIdKey, rowPrefix } from './keys.js';
import { ShardStore, type RawOp } from './store.js';
import { MoveRegistry } from './move-tasks.js';
import { chunkBytesFor, Throttle, THROTTLED_CHUNK_SECONDS, WriteLog } from './transfer-source.js';
import {
  AckTracker,
  checksumMismatch,
  DEFAULT_CHUNK_BYTES,
  MIN_CHUNK_BYTES,
  fromWireOps,
  rangeFromRequest,
  StreamVerifier,
  toWireOps,
  TransferDigest,
  TransferPhase,
  transferParams,
} from './transfer-wire.js';
import { TransferRangeRequest, type TransferRangeResponse } from '../../proto/gen/cairn/v1/control.js';

const ALL: HashRange = { start: 0n, end: HASH_SPACE_END };
const quietLogger = () => winston.createLogger({ silent: true, transports: [new winston.transports.Console()] });
const r = (a: number, b: number): HashRange => ({ start: BigInt(a), end: BigInt(b) });

describe('range sets', () => {
  it('subtracts, covers and overlaps', () => {
    expect(subtractRanges([r(0, 100)], [r(10, 20), r(50, 60)])).toEqual([r(0, 10), r(20, 50), r(60, 100)]);
    expect(subtractRanges([r(0, 100)], [r(0, 100)])).toEqual([]);
    expect(subtractRanges([r(0, 10), r(10, 20)], [r(5, 15)])).toEqual([r(0, 5), r(15, 20)]);
    expect(subtractRanges([r(0, 10)], [])).toEqual([r(0, 10)]);
    expect(normalizeRanges([r(5, 10), r(0, 5), r(20, 30), r(25, 26)])).toEqual([r(0, 10), r(20, 30)]);
    expect(coveredBy(r(10, 30), [r(0, 20), r(20, 40)])).toBe(true);
    expect(coveredBy(r(10, 30), [r(0, 20), r(21, 40)])).toBe(false);
    expect(overlapsAny(r(10, 20), [r(20, 30)])).toBe(false);
    expect(overlapsAny(r(10, 21), [r(20, 30)])).toBe(true);
  });

  it('a minus b is exactly the points of a that are not in b (property)', () => {
    const rangeArb = fc.tuple(fc.integer({ min: 0, max: 60 }), fc.integer({ min: 1, max: 20 })).map(([s, n]) => r(s, s + n));
    fc.assert(
      fc.property(fc.array(rangeArb, { maxLength: 5 }), fc.array(rangeArb, { maxLength: 5 }), (a, b) => {
        const out = subtractRanges(a, b);
        const inAny = (x: number, rs: HashRange[]) => rs.some((q) => BigInt(x) >= q.start && BigInt(x) < q.end);
        for (let x = 0; x < 90; x++) expect(inAny(x, out)).toBe(inAny(x, a) && !inAny(x, b));
        for (let i = 1; i < out.length; i++) expect(out[i]!.start > out[i - 1]!.end).toBe(true); // sorted, merged
      }),
    );
  });
});

describe('transfer parameters', () => {
  it('takes bucket-aligned ranges (end 0 = 2^64) and bounds chunk_bytes', () => {
    expect(rangeFromRequest(0n, 0n)).toEqual(ALL);
    expect(() => rangeFromRequest(1n, 0n)).toThrow(/bucket-aligned/);
    expect(() => rangeFromRequest(BUCKET_SIZE, BUCKET_SIZE)).toThrow(/below end/);
    const base = { moveId: 'm', start: 0n, end: BUCKET_SIZE, epoch: 1n, chunkBytes: 0, maxBytesPerSec: 0n };
    expect(transferParams(base, 16 << 20).chunkBytes).toBe(1 << 20);
    expect(() => transferParams({ ...base, chunkBytes: 10 }, 16 << 20)).toThrow(/chunk_bytes: 10 is outside the limits \[1024, 4194304\]/);
    expect(() => transferParams({ ...base, moveId: '' }, 16 << 20)).toThrow(/move_id/);
  });
});

function sampleOps(): RawOp[] {
  const p = rowPrefix('row-1');
  return [
    { sublevel: 'cells', key: cellKey(p, 'c', 5n), value: Buffer.from('v') },
    { sublevel: 'cells', key: cellKey(p, 'd', 6n), value: Buffer.alloc(0) }, // an empty value is a put, not a delete
    { sublevel: 'cells', key: cellKey(p, 'e', 7n) },
    { sublevel: 'leases', key: leaseKey(p), value: Buffer.from('{}') },
    { sublevel: 'reqids', key: requestIdKey(p, 'req-1'), value: Buffer.from('{}') },
  ];
}

describe('wire codec', () => {
  it('round-trips puts, empty values and deletes', () => {
    const ops = sampleOps();
    expect(fromWireOps(toWireOps(ops), ALL)).toEqual(ops);
  });

  it('refuses keys outside the range and malformed keys', () => {
    const ops = sampleOps();
    const h = rowHash('row-1');
    const outside = h < HASH_SPACE_END / 2n ? { start: HASH_SPACE_END / 2n, end: HASH_SPACE_END } : { start: 0n, end: HASH_SPACE_END / 2n };
    expect(() => fromWireOps(toWireOps(ops), outside)).toThrow(/outside the range/);
    expect(() => fromWireOps([{ keySpace: 1, key: Buffer.from([1, 2, 3]), value: Buffer.alloc(0), isDelete: false }], ALL)).toThrow(/malformed key/);
    expect(() => fromWireOps([{ ...toWireOps(ops)[0]!, keySpace: 0 }], ALL)).toThrow(/unknown key space/);
  });
});

/** A well-formed stream for some chunks: begin, COPY…, snapshot_done, CATCH_UP…, FENCED…, end, sealed. */
function stream(copy: RawOp[][], catchUp: RawOp[][], fenced: RawOp[][]): TransferRangeResponse[] {
  const d = new TransferDigest();
  const out: TransferRangeResponse[] = [{ header: { nodeId: 's1', epoch: 3n }, begin: { rows: 1n, bytes: 10n, maxFenceMs: 1000 } }];
  const chunk = (ops: RawOp[], phase: TransferPhase) => out.push({ header: undefined, chunk: { seq: BigInt(d.update(ops)), phase, ops: toWireOps(ops) } });
  for (const c of copy) chunk(c, TransferPhase.TRANSFER_PHASE_COPY);
  out.push({ header: undefined, snapshotDone: d.totals() });
  for (const c of catchUp) chunk(c, TransferPhase.TRANSFER_PHASE_CATCH_UP);
  for (const c of fenced) chunk(c, TransferPhase.TRANSFER_PHASE_FENCED);
  out.push({ header: undefined, end: d.totals() });
  out.push({ header: undefined, sealed: {} });
  return out;
}

describe('transfer checksum', () => {
  /** The layout the proto documents, field by field: what any implementation must hash. */
  function referenceDigest(chunks: RawOp[][]): Buffer {
    const h = createHash('sha256');
    const u32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(n);
      return b;
    };
    chunks.forEach((ops, i) => {
      const head = Buffer.alloc(8);
      head.writeBigUInt64BE(BigInt(i + 1));
      h.update(head).update(u32(ops.length));
      for (const op of ops) {
        const space = { cells: 1, leases: 2, reqids: 3 }[op.sublevel as 'cells' | 'leases' | 'reqids'];
        h.update(Buffer.from([space, op.value === undefined ? 1 : 0])).update(u32(op.key.length)).update(op.key);
        h.update(u32(op.value?.length ?? 0)).update(op.value ?? Buffer.alloc(0));
      }
    });
    return h.digest();
  }

  it('hashes chunk numbers, op counts, key spaces, deletes, keys and values as documented', () => {
    const op = fc.record({
      sublevel: fc.constantFrom('cells' as const, 'leases' as const, 'reqids' as const),
      key: fc.uint8Array({ minLength: 8, maxLength: 40 }).map((b) => Buffer.from(b)),
      value: fc.option(fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)), { nil: undefined }),
    });
    fc.assert(
      fc.property(fc.array(fc.array(op, { maxLength: 20 }), { maxLength: 6 }), (chunks) => {
        const d = new TransferDigest();
        for (const c of chunks) d.update(c as RawOp[]);
        const t = d.totals();
        expect(Buffer.from(t.sha256).equals(referenceDigest(chunks as RawOp[][]))).toBe(true);
        expect(t.keys).toBe(BigInt(chunks.flat().length));
        expect(t.bytes).toBe(BigInt(chunks.flat().reduce((n, o) => n + o.key.length + (o.value?.length ?? 0), 0)));
      }),
    );
  });
});

describe('stream verifier', () => {
  const ops = sampleOps();

  it('accepts a well-formed stream and counts rows, keys and bytes', () => {
    const v = new StreamVerifier(ALL);
    const kinds = stream([ops.slice(0, 2), ops.slice(2)], [ops.slice(0, 1)], [[]]).map((m) => v.accept(m).kind);
    expect(kinds).toEqual(['begin', 'chunk', 'chunk', 'snapshotDone', 'chunk', 'chunk', 'end', 'sealed']);
    expect(v.ended).toBe(true);
    expect(v.sealed).toBe(true);
    expect(v.rows).toBe(1);
    expect(v.keys).toBe(ops.length + 1);
    expect(v.chunks).toBe(4);
  });

  it('detects a flipped byte through the checksum', () => {
    const msgs = stream([ops], [], [[]]);
    const c = msgs[1]!.chunk!;
    const bad = Buffer.from(c.ops[0]!.value);
    bad[0] = bad[0]! ^ 1;
    c.ops[0] = { ...c.ops[0]!, value: bad };
    const v = new StreamVerifier(ALL);
    v.accept(msgs[0]!);
    v.accept(msgs[1]!);
    expect(() => v.accept(msgs[2]!)).toThrow(/snapshot checksum mismatch \(received vs sent: sha256 differs\)/);
  });

  it('detects lost or repeated chunks, bad phase order and a missing fenced tail', () => {
    const msgs = stream([ops, ops], [], [[]]);
    const lost = new StreamVerifier(ALL);
    lost.accept(msgs[0]!);
    expect(() => lost.accept(msgs[2]!)).toThrow(/chunk 2 arrived where chunk 1 was due/);

    const noBegin = new StreamVerifier(ALL);
    expect(() => noBegin.accept(msgs[1]!)).toThrow(/first message is not begin/);

    const early = new StreamVerifier(ALL);
    const noTail = stream([ops], [], []);
    for (const m of noTail.slice(0, -2)) early.accept(m);
    expect(() => early.accept(noTail[noTail.length - 2]!)).toThrow(/before the fenced tail/);

    const mismatch = checksumMismatch({ chunks: 1n, keys: 2n, bytes: 3n, sha256: Buffer.alloc(32) }, { chunks: 1n, keys: 3n, bytes: 3n, sha256: Buffer.alloc(32) });
    expect(mismatch).toBe('keys 3 != 2');
  });
});

describe('the seal', () => {
  const ops = sampleOps();

  it('is accepted only after the end marker, and nothing after it', () => {
    const msgs = stream([ops], [], [[]]);
    const sealed = msgs.at(-1)!;
    const v = new StreamVerifier(ALL);
    for (const m of msgs.slice(0, -2)) v.accept(m); // through the fenced tail
    expect(() => v.accept(sealed)).toThrow(/sealed arrived in state fenced, before the end marker/);
    v.accept(msgs.at(-2)!);
    expect([v.ended, v.sealed]).toEqual([true, false]);
    expect(v.accept(sealed).kind).toBe('sealed');
    expect(() => v.accept(sealed)).toThrow(/after the seal/);
    const early = new StreamVerifier(ALL);
    early.accept(msgs[0]!);
    expect(() => early.accept(sealed)).toThrow(/sealed arrived in state copy/);
  });
});

describe('ack tracker (source side)', () => {
  const ack = (appliedSeq: number, endVerified = false) => ({ appliedSeq: BigInt(appliedSeq), endVerified });

  it('counts what the destination applied, and refuses acknowledgements that do not fit what was sent', () => {
    const a = new AckTracker('m1');
    a.accept(ack(2), 4, false);
    a.accept(ack(2), 4, false); // a repeat is harmless
    expect(a.applied).toBe(2);
    expect(() => a.accept(ack(5), 4, false)).toThrow(/applied_seq 5 is beyond the last chunk sent, 4 \(move m1\)/);
    expect(() => a.accept(ack(1), 4, false)).toThrow(/applied_seq 1 is below 2/);
    expect(() => a.accept(ack(4, true), 4, false)).toThrow(/end_verified before the source sent the end/);
    expect(() => a.accept(ack(3, true), 4, true)).toThrow(/end_verified with applied_seq 3, not the last chunk 4/);
    expect(a.endVerified).toBe(false);
    a.accept(ack(4, true), 4, true);
    expect([a.applied, a.endVerified]).toEqual([4, true]);
    expect(() => a.accept({ appliedSeq: 2n ** 64n - 1n, endVerified: false }, 4, true)).toThrow(/beyond the last chunk sent/);
  });

  it('wakes a waiter at the next acknowledgement or failure, and otherwise after the timeout', async () => {
    const a = new AckTracker('m1');
    const t0 = Date.now();
    await a.changed(30);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(25);
    const woken = a.changed(10_000);
    a.accept(ack(1), 1, false);
    await woken;
    const nudged = a.changed(10_000);
    a.nudge(); // an abort: the waiter checks its task again at once
    await nudged;
    expect(a.failure).toBeUndefined();
    const failed = a.changed(10_000);
    a.close(new CairnError('CANCELLED', 'gone'));
    a.close(new CairnError('CANCELLED', 'second reason'));
    await failed;
    expect(a.failure?.message).toBe('gone');
  });
});

describe('throttle', () => {
  /** A throttle on a fake clock whose sleeps advance the clock. */
  function fakeThrottle(rate: number, start = 1000) {
    const clock = { now: start, slept: [] as number[] };
    const t = new Throttle(rate, () => clock.now, async (ms) => {
      clock.slept.push(ms);
      clock.now += ms;
    });
    return { t, clock };
  }

  it('lets n bytes go only once n / rate has passed, the first chunk included, and banks no idle time', async () => {
    const { t, clock } = fakeThrottle(1000);
    await t.take(500); // reserved 1000..1500: the first chunk is not free
    expect(clock.now).toBe(1500);
    clock.now += 200; // the sender was idle: that time is not credited
    await t.take(100); // reserved 1700..1800
    expect(clock.now).toBe(1800);
    await t.take(1000); // 1800..2800
    expect(clock.now).toBe(2800);
    expect(clock.slept.every((ms) => ms <= 100)).toBe(true);
    expect(new Throttle(0).delayFor(1e9)).toBe(0);
  });

  it('over any window of 5 s or more, lets through at most the rate plus 1% (property, fake clock)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 20_480, max: 20_000_000 }), // bytes/s where a chunk is 50 ms of the rate (MIN_CHUNK_BYTES below, 1 MiB above)
        fc.array(
          fc.tuple(
            fc.double({ min: 0.05, max: 1, noNaN: true }),
            // Mostly back to back, now and then a pause (up to 5 s) that must not turn into a burst afterwards.
            fc.oneof({ arbitrary: fc.constant(0), weight: 150 }, { arbitrary: fc.integer({ min: 1, max: 5000 }), weight: 1 }),
          ),
          { minLength: 100, maxLength: 400, size: 'max' }, // 2.5 to 20 s of chunks: several 5 s windows
        ),
        async (rate, steps) => {
          const { t, clock } = fakeThrottle(rate);
          const maxChunk = chunkBytesFor(DEFAULT_CHUNK_BYTES, rate);
          const first = clock.now;
          const granted: Array<{ at: number; bytes: number }> = [];
          for (const [fraction, idleMs] of steps) {
            const bytes = Math.max(1, Math.round(fraction * maxChunk)); // a chunk the transfer may cut
            await t.take(bytes);
            granted.push({ at: clock.now, bytes });
            clock.now += idleMs; // the sender busy elsewhere, or waiting for acknowledgements
          }
          // From the first request: at most rate * t, with no burst at all (the worst excess over that, in bytes).
          let total = 0;
          let overFromStart = 0;
          for (const g of granted) {
            total += g.bytes;
            overFromStart = Math.max(overFromStart, total - (rate * (g.at - first)) / 1000);
          }
          // Any window [a, a + W], W >= 5 s (the worst ones start at a grant): the most it held, as a multiple of rate * W.
          let worstWindow = 0;
          for (const W of [5000, 7500, 20_000]) {
            for (let i = 0, j = 0, inWindow = 0; i < granted.length; inWindow -= granted[i]!.bytes, i++) {
              for (; j < granted.length && granted[j]!.at <= granted[i]!.at + W; j++) inWindow += granted[j]!.bytes;
              worstWindow = Math.max(worstWindow, inWindow / ((rate * W) / 1000));
            }
          }
          expect(overFromStart).toBeLessThanOrEqual(1e-6 * total); // float rounding only
          expect(worstWindow).toBeLessThanOrEqual(1.01 + 1e-9);
        },
      ),
      { numRuns: 200, endOnFailure: true }, // a counterexample is a long schedule: shrinking it takes minutes
    );
  });

  it('cuts a throttled transfer\'s chunks to 50 ms of its rate, never under the minimum, and leaves an unthrottled one alone', () => {
    expect(THROTTLED_CHUNK_SECONDS).toBe(0.05);
    expect(chunkBytesFor(DEFAULT_CHUNK_BYTES, 0)).toBe(DEFAULT_CHUNK_BYTES);
    expect(chunkBytesFor(DEFAULT_CHUNK_BYTES, 1e6)).toBe(50_000); // 1 MB/s: 10^6 bytes per second
    expect(chunkBytesFor(DEFAULT_CHUNK_BYTES, 10_000)).toBe(MIN_CHUNK_BYTES);
    expect(chunkBytesFor(DEFAULT_CHUNK_BYTES, 1e9)).toBe(DEFAULT_CHUNK_BYTES);
    expect(chunkBytesFor(4096, 1e6)).toBe(4096);
  });

  it('stops waiting when the waiter throws', async () => {
    let now = 0;
    const t = new Throttle(1, () => now, async (ms) => void (now += ms));
    let checks = 0;
    const w = {
      check() {
        if (++checks > 2) throw new CairnError('CANCELLED', 'stop');
      },
    };
    await expect(t.take(1000, w)).rejects.toMatchObject({ code: 'CANCELLED' });
  });
});

describe('write log', () => {
  it('keeps only ops in its range, in commit order, and hands them out in bounded chunks', () => {
    const ops = sampleOps();
    const h = rowHash('row-1');
    const log = new WriteLog({ start: h, end: h + 1n });
    const other: RawOp = { sublevel: 'cells', key: cellKey(rowPrefix('zzz-other'), 'c', 1n), value: Buffer.from('x') };
    log.listener([other, ...ops.slice(0, 3)]);
    log.listener(ops.slice(3));
    expect(log.length).toBe(5);
    const first = log.take(1);
    expect(first).toEqual([ops[0]]); // at least one op even when it is over the limit
    expect(log.take(1 << 20)).toEqual(ops.slice(1));
    expect(log.bytes).toBe(0);
    expect(log.take(100)).toEqual([]);
  });

  it('overflows instead of growing without bound', () => {
    const log = new WriteLog(ALL, 10);
    log.listener(sampleOps());
    expect(log.overflowed).toBe(true);
    expect(log.length).toBe(0);
  });
});

describe('move registry', () => {
  it('refuses overlapping work on one side, allows a source and a destination side together, and remembers aborts', () => {
    const m = new MoveRegistry();
    const t = m.begin('transfer', 'm1', r(0, 10));
    expect(() => m.begin('transfer', 'm2', r(5, 15))).toThrow(/already running/);
    const p = m.begin('pull', 'm3', r(5, 15)); // a different side
    expect(() => m.begin('drop', 'm4', r(0, 6))).toThrow(/pull of move m3/);
    expect(m.abort('m1')).toBe(true);
    expect(() => t.check()).toThrow(/move m1 was aborted/);
    expect(m.wasAborted('m1')).toBe(true);
    m.finish(t);
    m.finish(p);
    m.markReady('m3', r(5, 15));
    expect(m.phaseOf('m3').pull).toBe(TransferPhase.TRANSFER_PHASE_READY);
    m.forgetReadyOwned([r(0, 6)]);
    expect(m.phaseOf('m3').pull).toBe(TransferPhase.TRANSFER_PHASE_UNSPECIFIED);
  });

  it('abortAndWait answers once the aborted task has stopped (so the range is free for the next move), or after the bound', async () => {
    const m = new MoveRegistry();
    const t = m.begin('transfer', 'm1', r(0, 10));
    // The task stops a little after its abort, as a transfer waiting for an acknowledgement does.
    t.whenAborted(() => void setTimeout(() => m.finish(t), 50));
    expect(await m.abortAndWait('m1', 10_000)).toBe(true);
    expect(m.find('transfer', 'm1')).toBeUndefined();
    expect(() => m.begin('transfer', 'm2', r(0, 10))).not.toThrow();
    // A task that does not stop holds the answer for the bound only.
    const stuck = m.begin('pull', 'm3', r(20, 30));
    expect(await m.abortAndWait('m3', 60)).toBe(true);
    expect(m.find('pull', 'm3')).toBe(stuck);
    expect(await m.abortAndWait('nothing', 10_000)).toBe(false);
  });
});

describe('fences and pending drops over a real store', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('persists fences, checks hashes and ranges, and drops the ones no longer owned', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-fence-'));
    dirs.push(dir);
    let store = await ShardStore.open(dir);
    const R = { start: BUCKET_SIZE, end: 3n * BUCKET_SIZE };
    let t = await FenceTable.load(store);
    const p = t.add('m1', R);
    expect(() => t.checkHash(BUCKET_SIZE)).toThrow(expect.objectContaining({ code: 'FENCED', details: { retryAfterMs: 100 } }) as unknown as Error);
    await p;
    expect(() => t.checkHash(3n * BUCKET_SIZE)).not.toThrow();
    expect(() => t.checkRange({ start: 0n, end: BUCKET_SIZE + 1n })).toThrow(/fenced while move m1/);
    await expect(t.add('m1', { start: 0n, end: BUCKET_SIZE })).rejects.toMatchObject({ code: 'CONFLICT' });
    await store.close();

    store = await ShardStore.open(dir);
    t = await FenceTable.load(store);
    expect(t.get('m1')?.range).toEqual(R); // survived the restart
    expect(await t.dropUnowned([{ start: 0n, end: 2n * BUCKET_SIZE }])).toEqual([]); // still partly owned: kept
    expect((await t.dropUnowned([{ start: 0n, end: BUCKET_SIZE }])).map((f) => f.moveId)).toEqual(['m1']);
    await store.close();
    store = await ShardStore.open(dir);
    expect((await FenceTable.load(store)).size).toBe(0);
    await store.close();
  });

  it('reports how long each fence stood and how it ended', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-fence-end-'));
    dirs.push(dir);
    const store = await ShardStore.open(dir);
    const t = await FenceTable.load(store);
    const ended: Array<[string, FenceOutcome, number]> = [];
    t.onEnded((f, outcome, seconds) => ended.push([f.moveId, outcome, seconds]));
    await t.add('lifted', { start: 0n, end: BUCKET_SIZE });
    await t.add('dropped', { start: BUCKET_SIZE, end: 2n * BUCKET_SIZE });
    await new Promise((r) => setTimeout(r, 60));
    const lifting = t.lift('lifted');
    expect(t.get('lifted')).toBeUndefined(); // lifted at once, before it is on disk
    await lifting;
    await t.dropUnowned([{ start: 0n, end: BUCKET_SIZE }]);
    expect(await t.lift('never-there')).toBeUndefined();
    expect(ended.map(([id, how]) => [id, how])).toEqual([
      ['lifted', 'aborted'],
      ['dropped', 'committed'],
    ]);
    for (const [, , seconds] of ended) expect(seconds).toBeGreaterThanOrEqual(0.05);
    await store.close();
  });

  it('deletes only what is neither owned nor busy, and resumes after a restart', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-janitor-'));
    dirs.push(dir);
    let store = await ShardStore.open(dir);
    const rows = Array.from({ length: 200 }, (_, i) => `j-${i}`);
    await store.writeRows(rows.map((row) => ({ row, cells: [{ column: 'c', timestampUs: 0n, value: Buffer.from(row) }], replace: false })), { requestId: '', sync: false });
    const half = HASH_SPACE_END / 2n;
    const owned: HashRange[] = [{ start: 0n, end: half / 2n }]; // a quarter stays owned
    const busy: HashRange[] = [{ start: half, end: half + half / 2n }]; // a quarter is being received
    const j = await RangeJanitor.load(store, () => owned, () => busy, quietLogger());
    await j.record([ALL]);
    await store.close(); // a crash before the deletion ran

    store = await ShardStore.open(dir);
    const j2 = await RangeJanitor.load(store, () => owned, () => busy, quietLogger());
    expect(j2.pending()).toEqual([ALL]);
    j2.start();
    await j2.settled();
    expect(j2.pending()).toEqual([]);
    const left = rows.filter((row) => {
      const h = rowHash(row);
      return h < half / 2n || (h >= half && h < half + half / 2n);
    });
    expect(store.totalStats().rows).toBe(left.length);
    expect(left.length).toBeGreaterThan(0);
    await store.close();
  });
});

describe('orphan fences', () => {
  it('decides each fence by the master\'s answer (table)', () => {
    const table: Array<[boolean, string | undefined, string]> = [
      // a running transfer owns its fence, whatever the master says
      [true, 'unknown', 'skip'],
      [true, 'aborted', 'skip'],
      [true, undefined, 'skip'],
      // the move will never commit: lift (after fetching the map)
      [false, 'unknown', 'lift'],
      [false, 'aborted', 'lift'],
      // it committed: the current map drops the fence
      [false, 'committed', 'refresh-map'],
      [false, 'cleaned', 'refresh-map'],
      // it may still commit, or nobody could say: only the move's outcome lifts it
      [false, 'planned', 'keep'],
      [false, 'copying', 'keep'],
      [false, 'catching_up', 'keep'],
      [false, 'fenced', 'keep'],
      [false, undefined, 'keep'],
      [false, '', 'keep'],
      [false, 'a-state-from-a-newer-master', 'keep'],
    ];
    for (const [running, answer, want] of table) expect([running, answer, orphanFenceAction(running, answer)]).toEqual([running, answer, want]);
  });

  /** A fence table over an in-memory meta store, and a reconciler whose master and map are scripted. */
  async function setup(answers: Record<string, string | Error>, o: { running?: string[]; mapDrops?: string[]; mapFails?: boolean } = {}) {
    const meta = new Map<string, unknown>();
    const store: MetaStore = {
      getMeta: async <T>(k: string) => meta.get(k) as T | undefined,
      putMeta: async (k, v) => void meta.set(k, v),
      deleteRange: async () => 0,
    };
    const fences = await FenceTable.load(store);
    for (const [i, id] of Object.keys(answers).entries()) await fences.add(id, { start: BigInt(i) * BUCKET_SIZE, end: BigInt(i + 1) * BUCKET_SIZE });
    const asked: string[] = [];
    const forgotten: string[] = [];
    let refreshes = 0;
    const r = new FenceReconciler({
      fences: () => fences,
      transferRunning: (id) => (o.running ?? []).includes(id),
      admitted: () => true,
      askMaster: async (id) => {
        asked.push(id);
        const a = answers[id]!;
        if (a instanceof Error) throw a;
        return a;
      },
      refreshMap: async () => {
        refreshes++;
        if (o.mapFails) throw new Error('master gone');
        // The current map no longer gives these ranges to this shard: installing it drops their fences.
        for (const id of o.mapDrops ?? []) {
          const f = fences.get(id);
          if (f) await fences.dropUnowned(fences.all().filter((x) => x.moveId !== id).map((x) => x.range));
        }
      },
      forgetMove: (id) => void forgotten.push(id),
      log: quietLogger(),
    });
    return { fences, r, asked, forgotten, refreshes: () => refreshes };
  }

  it('lifts fences of moves the master does not know or aborted, lets the map drop committed ones, and keeps the rest', async () => {
    const s = await setup(
      { orphan: 'unknown', aborted: 'aborted', committed: 'committed', 'given-back': 'cleaned', inFlight: 'fenced', running: 'unknown', unreachable: new Error('UNAVAILABLE') },
      { running: ['running'], mapDrops: ['committed'] },
    );
    await s.r.checkAll();
    expect(s.fences.all().map((f) => f.moveId).sort()).toEqual(['inFlight', 'running', 'unreachable']);
    expect(s.asked).not.toContain('running'); // its transfer owns it: not even asked
    expect(s.forgotten.sort()).toEqual(['aborted', 'given-back', 'orphan']); // no transfer of a lifted fence's move may fence again
  });

  it('keeps every fence when the map cannot be fetched first', async () => {
    const s = await setup({ orphan: 'unknown', aborted: 'aborted' }, { mapFails: true });
    await s.r.checkAll();
    expect(s.fences.size).toBe(2);
    expect(s.refreshes()).toBe(2);
    expect(s.forgotten).toEqual([]);
  });
});
