/**
 * Range moves, shard side, against real in-process clusters (real master and
 * shards, real gRPC, real LevelDB). The test plays the master's part with a
 * server token: PullRange on the destination, AbortMove / DropRange to abort,
 * and a hand-made map pushed to both shards to commit. The master's journal
 * lookup (GetMoveStatus) is told that these hand-made moves are in flight
 * (`fenced`), as a master running them would say, so the shards' orphan-fence
 * reconciler keeps their fences; orphans are test/fence-orphans.test.ts's.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as grpc from '@grpc/grpc-js';
import { status, type ServiceError } from '@grpc/grpc-js';
import {
  ShardControlServiceService,
  TransferPhase,
  type AckTransferRequest,
  type AckTransferResponse,
  type PullRangeRequest,
  type PullRangeResponse,
  type TransferRangeRequest,
  type TransferRangeResponse,
} from '../proto/gen/cairn/v1/control.js';
import { deriveTokenKey, ServerTokenSource } from '../services/common/auth.js';
import { endToProto, rowHash } from '../services/common/hash.js';
import { mapToProto, rangesOf, type ClusterMap } from '../services/common/map.js';
import { BUCKET_SIZE, reassign, type HashRange } from '../services/common/ranges.js';
import type { RunningShard } from '../services/shard/server.js';
import { controlClient, login, rawCall, shardClient } from './harness/raw.js';
import { startInProcCluster, TEST_CREDENTIAL, waitFor, type InProcCluster } from './harness/inproc.js';

/** The cluster the test plays the master of: shards refuse internal calls from another cluster (the token's cid). */
let clusterId = '';
const serverToken = () => new ServerTokenSource(deriveTokenKey(TEST_CREDENTIAL), 'test-master', { clusterId: () => clusterId }).get();
const ALL_VERSIONS = { columns: [], columnPrefix: '', timeRange: undefined, allVersions: true, limit: 0 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The first quarter (bucket-aligned) of the first range a shard owns. */
function quarterOf(s: RunningShard): HashRange {
  const own = rangesOf(s.node.map, s.node.id)[0]!;
  const size = (((own.end - own.start) / 4n) / BUCKET_SIZE) * BUCKET_SIZE;
  return { start: own.start, end: own.start + size };
}

/** The next quarter after quarterOf, for a second, independent move. */
function secondQuarterOf(s: RunningShard): HashRange {
  const q = quarterOf(s);
  return { start: q.end, end: q.end + (q.end - q.start) };
}

function rowsIn(range: HashRange, tag: string, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) {
    const row = `${tag}-${i}`;
    const h = rowHash(row);
    if (h >= range.start && h < range.end) out.push(row);
  }
  return out;
}

function rowOutside(range: HashRange, owner: RunningShard, tag: string): string {
  const own = rangesOf(owner.node.map, owner.node.id);
  for (let i = 0; ; i++) {
    const row = `${tag}-${i}`;
    const h = rowHash(row);
    if ((h < range.start || h >= range.end) && own.some((r) => h >= r.start && h < r.end)) return row;
  }
}

interface PullOutcome {
  progress: PullRangeResponse[];
  err?: ServiceError;
  ms: number;
}

/** Calls PullRange on the destination as the master would, collecting every progress message. */
async function pull(dest: RunningShard, source: RunningShard | { id: string; address: string }, moveId: string, range: HashRange, o: Partial<PullRangeRequest> = {}): Promise<PullOutcome> {
  const c = controlClient(dest.address);
  const started = Date.now();
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${serverToken()}`);
  const src = 'node' in source ? { id: source.node.id, address: source.address } : source;
  const req: PullRangeRequest = {
    moveId,
    start: range.start,
    end: endToProto(range.end),
    sourceShardId: src.id,
    sourceAddress: src.address,
    epoch: dest.node.map.epoch,
    chunkBytes: 8192,
    maxBytesPerSec: 0n,
    ...o,
  };
  const progress: PullRangeResponse[] = [];
  try {
    for await (const m of c.pullRange(req, md, { deadline: Date.now() + 60_000 }) as AsyncIterable<PullRangeResponse>) progress.push(m);
    return { progress, ms: Date.now() - started };
  } catch (err) {
    return { progress, err: err as ServiceError, ms: Date.now() - started };
  } finally {
    c.close();
  }
}

async function internal<Res>(s: RunningShard, method: 'abortMove' | 'dropRange' | 'getMoveState' | 'pushMap', req: unknown): Promise<{ res?: Res; err?: ServiceError }> {
  const c = controlClient(s.address);
  try {
    return await rawCall(c, c[method] as never, req as never, serverToken());
  } finally {
    c.close();
  }
}

const abortMove = (s: RunningShard, moveId: string) => internal<{ fenceLifted: boolean; cancelled: boolean }>(s, 'abortMove', { moveId, epoch: s.node.map.epoch });
const dropRange = (s: RunningShard, moveId: string, r: HashRange) =>
  internal<{ deletedKeys: bigint }>(s, 'dropRange', { moveId, start: r.start, end: endToProto(r.end), epoch: s.node.map.epoch });

async function write(s: RunningShard | string, token: string, row: string, value: string, o: { requestId?: string; epoch?: bigint; column?: string } = {}) {
  const c = shardClient(typeof s === 'string' ? s : s.address);
  try {
    return await rawCall(
      c,
      c.writeRows,
      {
        epoch: o.epoch ?? (typeof s === 'string' ? 0n : s.node.map.epoch),
        requestId: o.requestId ?? '',
        sync: false,
        rows: [{ row, replace: false, cells: [{ column: o.column ?? 'c', timestampUs: 0n, value: Buffer.from(value) }] }],
      },
      token,
    );
  } finally {
    c.close();
  }
}

async function read(s: RunningShard, token: string, row: string, epoch = s.node.map.epoch) {
  const c = shardClient(s.address);
  try {
    return await rawCall(c, c.readRow, { epoch, row, filter: ALL_VERSIONS }, token);
  } finally {
    c.close();
  }
}

/** Every per-row key a store holds in a range (cells, leases, request ids). */
async function keysIn(s: RunningShard, r: HashRange): Promise<number> {
  let n = 0;
  for await (const chunk of s.node.store.exportRange(r, 1 << 20)) n += chunk.length;
  return n;
}

async function preload(s: RunningShard, token: string, rows: string[], valueBytes: number): Promise<void> {
  const c = shardClient(s.address);
  try {
    for (let i = 0; i < rows.length; i += 100) {
      const part = rows.slice(i, i + 100);
      const w = await rawCall(
        c,
        c.writeRows,
        {
          epoch: s.node.map.epoch,
          requestId: `preload-${part[0]}`,
          sync: false,
          rows: part.map((row) => ({ row, replace: false, cells: [{ column: 'p', timestampUs: 0n, value: Buffer.alloc(valueBytes, row) }] })),
        },
        token,
      );
      expect(w.err).toBeUndefined();
    }
  } finally {
    c.close();
  }
}

/** Plays this cluster's master: its tokens, and its journal lookup reporting every move of this file (named move-…) as in flight (see the header). */
function journalHandMadeMoves(cluster: InProcCluster): void {
  clusterId = cluster.master.master.clusterId;
  const c = cluster.master.master.coordinator;
  const real = c.moveStatus.bind(c);
  c.moveStatus = (id) => (id.startsWith('move-') ? { known: true, state: 'fenced' } : real(id));
}

const phases = (o: PullOutcome) => [...new Set(o.progress.map((p) => TransferPhase[p.phase]))];
const fencedCode = (err: ServiceError | undefined) => err && { code: err.code, domain: err.metadata.get('cairn-error-code')[0], retry: err.metadata.get('cairn-retry-after-ms')[0] };

// ---------------------------------------------------------------------------------------------

describe('a move that commits', () => {
  let cluster: InProcCluster;
  let token: string;

  beforeAll(async () => {
    cluster = await startInProcCluster({ shards: 2 });
    journalHandMadeMoves(cluster);
    token = await login(cluster.masterAddress, 'writer', 'writer-pass');
  });
  afterAll(() => cluster.stop());

  it('copies R while writes continue, fences A, and after the map commits serves every acknowledged write from B only', async () => {
    const [a, b] = cluster.shards as [RunningShard, RunningShard];
    const R = quarterOf(a);
    const epoch = a.node.map.epoch;
    const rows = rowsIn(R, 'move', 1500);
    await preload(a, token, rows, 300);

    // Request ids and leases must move with their rows.
    const dupRow = rows[0]!;
    const dup = await write(a, token, dupRow, 'once', { requestId: 'dup-1', column: 'dup' });
    expect(dup.err).toBeUndefined();
    const leaseRow = rows[1]!;
    const ca = shardClient(a.address);
    const lock = await rawCall(ca, ca.lockRow, { epoch, row: leaseRow, leaseMs: 60_000, requestId: 'lock-1' }, token);
    expect(lock.err).toBeUndefined();

    // Writers keep writing to rows in R through A for the whole move.
    const loopRows = rows.slice(2, 42);
    const acked: Array<{ row: string; value: string; ts: bigint }> = [];
    let stop = false;
    let out!: PullOutcome;
    let n = 0;
    const writer = async (w: number) => {
      while (!stop) {
        const row = loopRows[n++ % loopRows.length]!;
        const value = `w${w}-${n}`;
        const r = await write(a, token, row, value, { requestId: `loop-${value}`, column: 'loop', epoch });
        if (r.res) acked.push({ row, value, ts: r.res.timestampsUs[0]! });
        else if (r.err?.code === status.UNAVAILABLE) {
          // fenced: retry shortly, as the SDK would
          await sleep(5);
        } else throw new Error(`unexpected write error: ${r.err?.details}`);
      }
    };
    const writers = [0, 1, 2, 3].map(writer);
    try {
      await waitFor(() => acked.length > 0, 10_000, 'the writers to get going');
      const ackedBefore = acked.length;
      out = await pull(b, a, 'move-commit', R, { chunkBytes: 16384, maxBytesPerSec: 1_000_000n });
      expect(out.err).toBeUndefined();
      expect(acked.length).toBeGreaterThan(ackedBefore); // writes were acknowledged during the copy
      // A is fenced for R: reads and writes get UNAVAILABLE (FENCED) with a retry hint; the rest of A is served.
      const fencedWrite = await write(a, token, loopRows[0]!, 'after-fence', { epoch });
      expect(fencedCode(fencedWrite.err)).toEqual({ code: status.UNAVAILABLE, domain: 'FENCED', retry: '100' });
      expect((await read(a, token, rows[5]!)).err?.code).toBe(status.UNAVAILABLE);
      expect((await write(a, token, rowOutside(R, a, 'outside'), 'fine')).err).toBeUndefined();
    } finally {
      stop = true;
      await Promise.allSettled(writers);
    }
    await Promise.all(writers); // no writer saw an unexpected error
    const last = out.progress[out.progress.length - 1]!;
    expect(last.phase).toBe(TransferPhase.TRANSFER_PHASE_READY);
    expect(phases(out)).toEqual(['TRANSFER_PHASE_COPY', 'TRANSFER_PHASE_CATCH_UP', 'TRANSFER_PHASE_FENCED', 'TRANSFER_PHASE_READY']);
    expect(last.rowsReceived).toBe(BigInt(rows.length));
    expect(last.sourceRows).toBeGreaterThanOrEqual(BigInt(rows.length));
    expect(last.bytesReceived).toBeGreaterThan(last.sourceBytes / 2n);
    expect(last.bytesReceived).toBeGreaterThan(out.progress.find((p) => p.phase === TransferPhase.TRANSFER_PHASE_CATCH_UP)!.bytesReceived); // the log carried writes
    const state = await internal<{ fenced: boolean; fenceStart: bigint }>(a, 'getMoveState', { moveId: 'move-commit' });
    expect(state.res).toMatchObject({ fenced: true, fenceStart: R.start });
    const bState = await internal<{ pullPhase: TransferPhase }>(b, 'getMoveState', { moveId: 'move-commit' });
    expect(bState.res?.pullPhase).toBe(TransferPhase.TRANSFER_PHASE_READY);
    const statsOnA = a.node.store.rangeStats(R);
    expect(statsOnA.rows).toBe(rows.length);

    // Commit, as the master will: epoch + 1 with R owned by B, pushed to both shards.
    const next: ClusterMap = { ...a.node.map, epoch: epoch + 1n, ranges: reassign(a.node.map.ranges, R, b.node.id) };
    for (const s of [b, a]) expect((await internal(s, 'pushMap', { map: mapToProto(next) })).err).toBeUndefined();

    // Every acknowledged write reads back from B, and nothing else does.
    const byRow = new Map<string, string[]>();
    for (const w of acked) byRow.set(w.row, [...(byRow.get(w.row) ?? []), `${w.ts}:${w.value}`]);
    for (const row of loopRows) {
      const r = await read(b, token, row, epoch + 1n);
      expect(r.err).toBeUndefined();
      const got = r.res!.cells.filter((c) => c.column === 'loop').map((c) => `${c.timestampUs}:${c.value.toString()}`);
      expect(got.sort()).toEqual((byRow.get(row) ?? []).sort());
    }
    for (const row of rows.slice(42, 60)) expect((await read(b, token, row, epoch + 1n)).res!.cells.length).toBe(1);

    // A answers FAILED_PRECONDITION for R, naming B; A's copy is deleted in the background; B's counts equal A's.
    const wrong = await read(a, token, rows[7]!, epoch + 1n);
    expect(wrong.err?.code).toBe(status.FAILED_PRECONDITION);
    expect(wrong.err!.metadata.get('cairn-owner')).toEqual([b.node.id]);
    await waitFor(() => a.node.store.rangeStats(R).rows === 0, 10_000, "A's copy of R to be deleted");
    expect(await a.node.store.recountStats(R)).toEqual({ rows: 0, bytes: 0 });
    await waitFor(async () => (await keysIn(a, R)) === 0, 10_000, 'every key of R to leave A');
    expect(a.node.fences.size).toBe(0);
    expect(b.node.store.rangeStats(R)).toEqual(statsOnA);
    expect(await b.node.store.recountStats(R)).toEqual(statsOnA);

    // Request ids moved: a retry on B is answered from the record, not applied again.
    const retry = await write(b, token, dupRow, 'once', { requestId: 'dup-1', column: 'dup' });
    expect(retry.res!.timestampsUs).toEqual(dup.res!.timestampsUs);
    expect((await read(b, token, dupRow)).res!.cells.filter((c) => c.column === 'dup').length).toBe(1);
    // Leases moved: the same lock request gets the same lease, and the holder can extend it on B.
    const cb = shardClient(b.address);
    const relock = await rawCall(cb, cb.lockRow, { epoch: epoch + 1n, row: leaseRow, leaseMs: 60_000, requestId: 'lock-1' }, token);
    expect(relock.res?.leaseId).toBe(lock.res!.leaseId);
    const extend = await rawCall(cb, cb.extendLease, { epoch: epoch + 1n, row: leaseRow, leaseId: lock.res!.leaseId, leaseMs: 1000 }, token);
    expect(extend.err).toBeUndefined();
    const other = await rawCall(cb, cb.lockRow, { epoch: epoch + 1n, row: leaseRow, leaseMs: 1000, requestId: 'lock-2' }, token);
    expect(other.err?.code).toBe(status.ABORTED); // still held

    // B's clock moved past every timestamp it received: a new write is newer than all of them.
    const maxTs = acked.reduce((m, w) => (w.ts > m ? w.ts : m), 0n);
    const fresh = await write(b, token, loopRows[0]!, 'on-b', { column: 'loop' });
    expect(fresh.res!.timestampsUs[0]!).toBeGreaterThan(maxTs);
    ca.close();
    cb.close();
  });
});

// ---------------------------------------------------------------------------------------------

/**
 * A man in the middle for TransferRange: forwards the real source's stream,
 * damaging it on purpose, and the destination's acknowledgements (AckTransfer)
 * as they are.
 */
async function startProxy(source: string, damage: (msg: TransferRangeResponse, i: number, call: grpc.ServerWritableStream<TransferRangeRequest, TransferRangeResponse>) => 'send' | 'stop') {
  const upstreamClient = controlClient(source);
  const server = new grpc.Server();
  server.addService(ShardControlServiceService, {
    ackTransfer: (call: grpc.ServerUnaryCall<AckTransferRequest, AckTransferResponse>, callback: grpc.sendUnaryData<AckTransferResponse>) => {
      upstreamClient.ackTransfer(call.request, call.metadata, { deadline: Date.now() + 10_000 }, callback);
    },
    transferRange: (call: grpc.ServerWritableStream<TransferRangeRequest, TransferRangeResponse>) => {
      const up = upstreamClient.transferRange(call.request, call.metadata, { deadline: Date.now() + 60_000 });
      call.on('cancelled', () => up.cancel());
      void (async () => {
        let i = 0;
        try {
          for await (const msg of up as AsyncIterable<TransferRangeResponse>) {
            if (damage(msg, i++, call) === 'stop') {
              up.cancel();
              return;
            }
            if (!call.write(msg)) await new Promise((r) => call.once('drain', r));
          }
          call.end();
        } catch (err) {
          if (!call.cancelled) call.emit('error', err);
        }
      })();
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  return {
    address: `127.0.0.1:${port}`,
    close: () => {
      upstreamClient.close();
      server.forceShutdown();
    },
  };
}

describe('moves that abort', () => {
  let cluster: InProcCluster;
  let token: string;
  let a: RunningShard;
  let b: RunningShard;

  beforeAll(async () => {
    cluster = await startInProcCluster({ shards: 2 });
    journalHandMadeMoves(cluster);
    token = await login(cluster.masterAddress, 'writer', 'writer-pass');
    [a, b] = cluster.shards as [RunningShard, RunningShard];
  });
  afterAll(() => cluster.stop());

  /** After an abort: A serves all of R again, with every row, and B holds nothing of R. */
  async function expectAbortedCleanly(R: HashRange, rows: string[]) {
    const ok = await write(a, token, rows[0]!, 'after-abort');
    expect(ok.err).toBeUndefined();
    for (const row of rows.slice(0, 20)) expect((await read(a, token, row)).res!.cells.length).toBeGreaterThan(0);
    expect(a.node.store.rangeStats(R).rows).toBe(rows.length);
    expect(await keysIn(b, R)).toBe(0);
    expect(b.node.store.rangeStats(R)).toEqual({ rows: 0, bytes: 0 });
  }

  it('AbortMove on A and DropRange on B after READY: A serves R again with all data, B holds nothing', async () => {
    const R = quarterOf(a);
    const rows = rowsIn(R, 'abort', 400);
    await preload(a, token, rows, 200);
    const cb = shardClient(a.address);
    expect((await rawCall(cb, cb.lockRow, { epoch: a.node.map.epoch, row: rows[3]!, leaseMs: 60_000, requestId: 'abort-lock' }, token)).err).toBeUndefined();
    cb.close();

    const out = await pull(b, a, 'move-abort', R);
    expect(out.err).toBeUndefined();
    expect(out.progress.at(-1)!.phase).toBe(TransferPhase.TRANSFER_PHASE_READY);
    expect(await keysIn(b, R)).toBeGreaterThan(rows.length); // cells, the lease and request ids
    expect((await write(a, token, rows[0]!, 'fenced')).err?.code).toBe(status.UNAVAILABLE);

    // A shard keeps what it owns: a DropRange there deletes nothing, and no shard pulls a range it owns.
    const keysOnA = await keysIn(a, R);
    expect((await dropRange(a, 'move-abort', R)).res?.deletedKeys).toBe(0n);
    expect(await keysIn(a, R)).toBe(keysOnA);
    const backwards = await pull(a, b, 'move-backwards', R);
    expect(backwards.err?.code).toBe(status.FAILED_PRECONDITION);
    expect(backwards.err?.details).toMatch(/owns part of/);

    const aborted = await abortMove(a, 'move-abort');
    expect(aborted.res).toMatchObject({ fenceLifted: true });
    expect((await abortMove(a, 'move-abort')).res).toMatchObject({ fenceLifted: false }); // idempotent
    const dropped = await dropRange(b, 'move-abort', R);
    expect(dropped.res!.deletedKeys).toBeGreaterThan(BigInt(rows.length));
    await expectAbortedCleanly(R, rows);
    // A transfer of an aborted move cannot fence the range again.
    const late = await pull(b, a, 'move-abort', R);
    expect(late.err?.code).toBe(status.ABORTED);
    expect(late.err?.details).toMatch(/was aborted/);
    expect(a.node.fences.size).toBe(0);
    expect((await dropRange(b, 'move-abort', R)).err).toBeUndefined();
  });

  it('a checksum mismatch in the copy fails PullRange with a clear error; after the abort A is unfenced', async () => {
    const R = secondQuarterOf(a);
    const rows = rowsIn(R, 'corrupt', 300);
    await preload(a, token, rows, 200);
    const proxy = await startProxy(a.address, (msg) => {
      if (msg.chunk && msg.chunk.seq === 2n) {
        const v = Buffer.from(msg.chunk.ops[0]!.value);
        v[v.length - 1] = v[v.length - 1]! ^ 0xff;
        msg.chunk.ops[0] = { ...msg.chunk.ops[0]!, value: v };
      }
      return 'send';
    });
    try {
      const out = await pull(b, { id: a.node.id, address: proxy.address }, 'move-corrupt', R);
      expect(out.err?.code).toBe(status.ABORTED);
      expect(out.err?.details).toMatch(/^move move-corrupt: .*snapshot checksum mismatch \(received vs sent: sha256 differs\)/);
    } finally {
      proxy.close();
    }
    expect((await abortMove(a, 'move-corrupt')).err).toBeUndefined();
    // Once AbortMove answers, A runs no transfer of the move: the next move of R is not refused as "already running".
    expect(a.node.moves.find('transfer', 'move-corrupt')).toBeUndefined();
    expect((await dropRange(b, 'move-corrupt', R)).err).toBeUndefined();
    await expectAbortedCleanly(R, rows);
  });

  it('a damaged end checksum is caught after the fence: B never confirms the tail, so A lifts its fence by itself', async () => {
    const R = secondQuarterOf(a);
    const rows = rowsIn(R, 'corrupt', 300); // preloaded by the previous test
    const proxy = await startProxy(a.address, (msg) => {
      if (msg.end) msg.end = { ...msg.end, keys: msg.end.keys + 1n };
      return 'send';
    });
    try {
      const out = await pull(b, { id: a.node.id, address: proxy.address }, 'move-bad-end', R);
      expect(out.err?.code).toBe(status.ABORTED);
      expect(out.err?.details).toMatch(/end checksum mismatch \(received vs sent: keys \d+ != \d+\)/);
      expect(TransferPhase[out.progress.at(-1)!.phase]).toBe('TRANSFER_PHASE_FENCED');
    } finally {
      proxy.close();
    }
    // Not sealed: nothing can have committed, so A does not wait for the master's AbortMove.
    await waitFor(() => a.node.fences.get('move-bad-end') === undefined, 5000, 'A to lift the unconfirmed fence');
    expect((await write(a, token, rows[0]!, 'x')).err).toBeUndefined();
    expect((await abortMove(a, 'move-bad-end')).res).toMatchObject({ fenceLifted: false });
    expect((await dropRange(b, 'move-bad-end', R)).err).toBeUndefined();
    await expectAbortedCleanly(R, rows);
  });

  it('a source that fails mid-stream or cannot be reached fails PullRange with an error naming it', async () => {
    const R = secondQuarterOf(a);
    const rows = rowsIn(R, 'corrupt', 300);
    const proxy = await startProxy(a.address, (msg, i, call) => {
      if (i === 3) {
        call.emit('error', { code: status.UNAVAILABLE, details: 'injected: the source went away' });
        return 'stop';
      }
      return 'send';
    });
    try {
      const out = await pull(b, { id: a.node.id, address: proxy.address }, 'move-cut', R);
      expect(out.err?.code).toBe(status.UNAVAILABLE);
      expect(out.err?.details).toMatch(new RegExp(`^move move-cut: pulling \\[${R.start}, ${R.end}\\) from shard ${a.node.id} at ${proxy.address} failed: injected`));
    } finally {
      proxy.close();
    }
    expect((await abortMove(a, 'move-cut')).err).toBeUndefined();
    expect((await dropRange(b, 'move-cut', R)).err).toBeUndefined();
    await expectAbortedCleanly(R, rows);

    const dead = await pull(b, { id: a.node.id, address: '127.0.0.1:1' }, 'move-dead', R);
    expect(dead.err?.code).toBe(status.UNAVAILABLE);
    expect(dead.err?.details).toMatch(/^move move-dead: pulling .* from shard .* at 127\.0\.0\.1:1 failed/);
    const impostor = await pull(b, { id: 'not-a', address: a.address }, 'move-impostor', R);
    expect(impostor.err?.code).toBe(status.ABORTED);
    expect(impostor.err?.details).toMatch(new RegExp(`is shard ${a.node.id}, not the source not-a`));
    for (const id of ['move-dead', 'move-impostor']) {
      expect((await abortMove(a, id)).err).toBeUndefined();
      expect((await dropRange(b, id, R)).err).toBeUndefined();
    }
    await expectAbortedCleanly(R, rows);
  });

  it('AbortMove during the copy, on either side, stops both sides before any fence', async () => {
    const R = secondQuarterOf(a);
    const rows = rowsIn(R, 'corrupt', 300);
    for (const [side, moveId] of [[a, 'move-stop-src'], [b, 'move-stop-dst']] as const) {
      const running = pull(b, a, moveId, R, { maxBytesPerSec: 50_000n, chunkBytes: 4096 });
      await waitFor(
        async () => (await internal<{ transferPhase: TransferPhase }>(a, 'getMoveState', { moveId })).res?.transferPhase === TransferPhase.TRANSFER_PHASE_COPY,
        5000,
        'the copy to start',
      );
      const aborted = await abortMove(side, moveId);
      expect(aborted.res).toMatchObject({ fenceLifted: false, cancelled: true });
      // AbortMove answers once the aborted task has stopped: the range is free for the next move at once.
      if (side === a) expect(a.node.moves.find('transfer', moveId)).toBeUndefined();
      else expect(b.node.moves.find('pull', moveId)).toBeUndefined();
      const out = await running;
      expect(out.err?.code).toBe(status.ABORTED);
      expect(out.err?.details).toMatch(new RegExp(`move ${moveId} was aborted`));
      await waitFor(async () => (await internal<{ transferPhase: TransferPhase }>(a, 'getMoveState', { moveId })).res?.transferPhase === TransferPhase.TRANSFER_PHASE_UNSPECIFIED, 5000, 'the transfer to stop');
      expect(a.node.fences.size).toBe(0);
      if (side === b) expect((await abortMove(a, moveId)).res).toMatchObject({ fenceLifted: false });
      expect((await dropRange(b, moveId, R)).err).toBeUndefined();
      await expectAbortedCleanly(R, rows);
    }
  });

  it('a throttled transfer takes at least bytes / rate', async () => {
    const R = secondQuarterOf(a);
    const rate = 100_000;
    const out = await pull(b, a, 'move-slow', R, { maxBytesPerSec: BigInt(rate), chunkBytes: 4096 });
    expect(out.err).toBeUndefined();
    const bytes = Number(out.progress.at(-1)!.bytesReceived);
    expect(bytes).toBeGreaterThan(50_000);
    expect(out.ms).toBeGreaterThanOrEqual((bytes / rate) * 1000);
    expect((await abortMove(a, 'move-slow')).res?.fenceLifted).toBe(true);
    expect((await dropRange(b, 'move-slow', R)).err).toBeUndefined();
  });

  it('a fenced source that restarts still refuses R until AbortMove', async () => {
    const R = quarterOf(a);
    const rows = rowsIn(R, 'abort', 400); // preloaded by the first test
    const out = await pull(b, a, 'move-restart', R);
    expect(out.progress.at(-1)?.phase).toBe(TransferPhase.TRANSFER_PHASE_READY);

    const id = a.node.id;
    await a.stop(1000);
    const restarted = await cluster.restartShard(a);
    a = restarted;
    expect(a.node.id).toBe(id);
    expect(a.node.fences.get('move-restart')?.range).toEqual(R); // loaded before the server took calls
    await a.registered;
    // The master learns the new address and commits a map that still gives R to A: the fence stays.
    await waitFor(() => a.node.map.epoch === cluster.master.master.epoch && b.node.map.epoch === cluster.master.master.epoch, 5000, 'the new map');
    expect(fencedCode((await write(a, token, rows[0]!, 'x')).err)?.domain).toBe('FENCED');
    expect((await read(a, token, rows[1]!)).err?.code).toBe(status.UNAVAILABLE);
    const viaB = await write(b.address, token, rows[0]!, 'x'); // no epoch: B forwards to A, which refuses
    expect(viaB.err?.code).toBe(status.UNAVAILABLE);

    expect((await abortMove(a, 'move-restart')).res).toMatchObject({ fenceLifted: true });
    expect((await dropRange(b, 'move-restart', R)).err).toBeUndefined();
    await expectAbortedCleanly(R, rows);
  });
});
