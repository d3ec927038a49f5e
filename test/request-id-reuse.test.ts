/**
 * A request id reused for a different request, over real gRPC against an
 * in-process cluster (real master, shards and LevelDB), before and after the
 * rows move to another shard.
 *
 * A request id makes a retry apply once; reused with a different payload it
 * used to be acknowledged with the first request's outcome while the second
 * write was silently dropped. Now the shard answers ABORTED (domain code
 * CONFLICT, not retryable) saying the id was already used for a different
 * write, and a retry with the same payload is still applied once and answered
 * as before. The digest that tells them apart lives in the request-id record,
 * so it moves with the rows.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { status, type ServiceError } from '@grpc/grpc-js';
import type { CellWrite } from '../proto/gen/cairn/v1/common.js';
import type { ShardServiceClient } from '../proto/gen/cairn/v1/shard.js';
import { fromServiceError } from '../services/common/errors.js';
import { rangesOf } from '../services/common/map.js';
import type { RunningShard } from '../services/shard/server.js';
import { login, rawCall, rowsIn, shardClient } from './harness/raw.js';
import { startInProcCluster, waitFor, type InProcCluster } from './harness/inproc.js';

let cluster: InProcCluster;
let token: string;
let a: RunningShard;
let b: RunningShard;
let ca: ShardServiceClient;
let cb: ShardServiceClient;
let rows: string[];

const ALL = { columns: [], columnPrefix: '', timeRange: undefined, allVersions: true, limit: 0 };
const cells = (value: string): CellWrite[] => [{ column: 'c', timestampUs: 0n, value: Buffer.from(value) }];

function writeRows(c: ShardServiceClient, epoch: bigint, requestId: string, values: Array<[string, string]>) {
  return rawCall(c, c.writeRows, { epoch, requestId, sync: false, rows: values.map(([row, v]) => ({ row, cells: cells(v), replace: false })) }, token);
}

async function cellsOf(c: ShardServiceClient, row: string): Promise<string[]> {
  const r = await rawCall(c, c.readRow, { epoch: 0n, row, filter: ALL }, token);
  expect(r.err).toBeUndefined();
  return r.res!.cells.map((x) => `${x.timestampUs}:${x.value.toString()}`);
}

/** The refusal as a client sees it: status, domain code, whether the SDK would retry it, message. */
function refusal(err: ServiceError | undefined) {
  expect(err).toBeDefined();
  const e = fromServiceError(err);
  return { status: status[err!.code], code: e.code, retryable: e.retryable, message: e.message };
}

const conflict = (requestId: string, what: string, row: string) => ({
  status: 'ABORTED',
  code: 'CONFLICT',
  retryable: false,
  message: expect.stringMatching(new RegExp(`^requestId: "${requestId}" was already used for a different ${what} on row "${row}"`)),
});

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2 });
  token = await login(cluster.masterAddress, 'writer', 'writer-pass');
  [a, b] = cluster.shards as [RunningShard, RunningShard];
  ca = shardClient(a.address);
  cb = shardClient(b.address);
  rows = rowsIn(rangesOf(a.node.map, a.node.id)[0]!, 'reuse', 3);
});
afterAll(async () => {
  ca?.close();
  cb?.close();
  await cluster?.stop();
});

describe('a request id reused with a different payload', () => {
  let first: bigint[];
  let stored: string[][];

  it('a write and its retry with the same payload: applied once, the same timestamps', async () => {
    // Sent to B without an epoch: B forwards to A, the owner.
    const w = await writeRows(cb, 0n, 'reuse-1', [
      [rows[0]!, 'one'],
      [rows[1]!, 'one'],
    ]);
    expect(w.err).toBeUndefined();
    first = w.res!.timestampsUs;
    const retry = await writeRows(ca, a.node.map.epoch, 'reuse-1', [
      [rows[0]!, 'one'],
      [rows[1]!, 'one'],
    ]);
    expect(retry.res?.timestampsUs).toEqual(first);
    stored = [await cellsOf(ca, rows[0]!), await cellsOf(ca, rows[1]!)];
    expect(stored).toEqual([[`${first[0]}:one`], [`${first[1]}:one`]]);
  });

  it('gets ABORTED (CONFLICT) saying the id was already used for a different write, directly and when forwarded, and nothing is written', async () => {
    const stats = a.node.store.totalStats();
    const direct = await writeRows(ca, a.node.map.epoch, 'reuse-1', [
      [rows[0]!, 'one'],
      [rows[1]!, 'two'],
      [rows[2]!, 'new'],
    ]);
    expect(refusal(direct.err)).toEqual(conflict('reuse-1', 'write', rows[1]!));
    const forwarded = await writeRows(cb, 0n, 'reuse-1', [[rows[0]!, 'changed']]);
    expect(refusal(forwarded.err)).toEqual(conflict('reuse-1', 'write', rows[0]!));
    expect(a.node.store.totalStats()).toEqual(stats);
    expect([await cellsOf(ca, rows[0]!), await cellsOf(ca, rows[1]!), await cellsOf(ca, rows[2]!)]).toEqual([...stored, []]);
  });

  it('CheckAndMutate and LockRow: a different request under a used id is refused the same way', async () => {
    const epoch = a.node.map.epoch;
    const cas = { epoch, requestId: 'cas-1', sync: false, row: rows[2]!, checkColumn: 'state', expectedValue: Buffer.alloc(0), expectAbsent: true, cells: cells('mine'), replace: false };
    const won = await rawCall(ca, ca.checkAndMutate, cas, token);
    expect(won.res?.succeeded).toBe(true);
    expect((await rawCall(ca, ca.checkAndMutate, cas, token)).res).toMatchObject({ succeeded: true, timestampUs: won.res!.timestampUs });
    const other = await rawCall(ca, ca.checkAndMutate, { ...cas, cells: cells('theirs') }, token);
    expect(refusal(other.err)).toEqual(conflict('cas-1', 'checkAndMutate', rows[2]!));
    const lock = await rawCall(ca, ca.lockRow, { epoch, row: rows[2]!, leaseMs: 60_000, requestId: 'lock-1' }, token);
    expect(lock.err).toBeUndefined();
    const relock = await rawCall(ca, ca.lockRow, { epoch, row: rows[2]!, leaseMs: 5_000, requestId: 'lock-1' }, token);
    expect(refusal(relock.err)).toEqual(conflict('lock-1', 'lockRow', rows[2]!));
  });

  it('after the rows move to another shard, the new owner still tells a retry from a different write', async () => {
    await cluster.master.master.startRebalance(0, a.node.id); // drain A: every range it owns moves to B
    await waitFor(() => cluster.shards.every((s) => rangesOf(s.node.map, a.node.id).length === 0), 60_000, "A's ranges to move to B");
    await waitFor(() => !cluster.master.master.coordinator.busy(), 60_000, 'the drain to finish');
    const epoch = b.node.map.epoch;
    const retry = await writeRows(cb, epoch, 'reuse-1', [
      [rows[1]!, 'one'],
      [rows[0]!, 'one'],
    ]);
    expect(retry.res?.timestampsUs).toEqual([first[1], first[0]]);
    const different = await writeRows(cb, epoch, 'reuse-1', [[rows[1]!, 'two']]);
    expect(refusal(different.err)).toEqual(conflict('reuse-1', 'write', rows[1]!));
    expect([await cellsOf(cb, rows[0]!), await cellsOf(cb, rows[1]!)]).toEqual(stored);
  }, 90_000);
});
