/**
 * Bad input against a real in-process cluster: each gets a precise status and
 * a message naming the field or limit; the shard keeps serving and nothing
 * stored changes.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { status } from '@grpc/grpc-js';
import { mintToken } from '../services/common/auth.js';
import { deriveTokenKey } from '../services/common/auth.js';
import { controlClient, login, rawCall, shardClient } from './harness/raw.js';
import { startInProcCluster, TEST_CREDENTIAL, type InProcCluster } from './harness/inproc.js';
import type { ShardControlServiceClient } from '../proto/gen/cairn/v1/control.js';
import type { ShardServiceClient } from '../proto/gen/cairn/v1/shard.js';

let cluster: InProcCluster;
let writer: string;
let reader: string;
let client: ShardServiceClient;
let control: ShardControlServiceClient;

const cell = (value: Buffer | string, column = 'c') => ({ column, timestampUs: 0n, value: Buffer.from(value) });
const write = (rows: Array<{ row: string; cells: ReturnType<typeof cell>[] }>, token = writer) =>
  rawCall(client, client.writeRows, { epoch: 0n, requestId: '', sync: false, rows: rows.map((r) => ({ ...r, replace: false })) }, token);

/** Everything a test could change: total stats of every shard plus the canary row. */
async function snapshot() {
  const canary = await rawCall(client, client.readRow, { epoch: 0n, row: 'canary', filter: { columns: [], columnPrefix: '', allVersions: true, limit: 0, timeRange: undefined } }, writer);
  return { stats: cluster.shards.map((s) => s.node.store.totalStats()), canary: canary.res!.cells };
}

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2, limits: { maxCellsPerCall: 50 } });
  writer = await login(cluster.masterAddress, 'writer', 'writer-pass');
  reader = await login(cluster.masterAddress, 'reader', 'reader-pass');
  client = shardClient(cluster.shards[0]!.address);
  control = controlClient(cluster.shards[0]!.address);
  expect((await write([{ row: 'canary', cells: [cell('alive')] }])).err).toBeUndefined();
});
afterAll(async () => {
  client.close();
  control.close();
  await cluster.stop();
});

const cases: Array<{ name: string; run: () => Promise<{ err?: { code: number; details: string } }>; code: status; message: RegExp }> = [
  { name: 'an empty row key', run: () => write([{ row: '', cells: [cell('x')] }]), code: status.INVALID_ARGUMENT, message: /rows\[0\]\.row.*empty/ },
  { name: 'an oversized row key', run: () => write([{ row: 'k'.repeat(4097), cells: [cell('x')] }]), code: status.INVALID_ARGUMENT, message: /4097.*maxKeyBytes.*4096/ },
  {
    name: 'an oversized value',
    run: () => write([{ row: 'big', cells: [cell(Buffer.alloc((1 << 20) + 1))] }]),
    code: status.INVALID_ARGUMENT,
    message: /1048577.*maxValueBytes.*1048576/,
  },
  {
    name: 'an oversized column name',
    run: () => write([{ row: 'col', cells: [cell('x', 'c'.repeat(1025))] }]),
    code: status.INVALID_ARGUMENT,
    message: /1025.*maxColumnBytes.*1024/,
  },
  {
    name: 'too many cells in one call',
    run: () => write([{ row: 'many', cells: Array.from({ length: 51 }, (_, i) => cell('x', `c${i}`)) }]),
    code: status.RESOURCE_EXHAUSTED,
    message: /51.*maxCellsPerCall.*50/,
  },
  {
    name: 'an inverted time range',
    run: () => rawCall(client, client.readRow, { epoch: 0n, row: 'canary', filter: { columns: [], columnPrefix: '', allVersions: true, limit: 0, timeRange: { startUs: 500n, endUs: 100n } } }, writer),
    code: status.INVALID_ARGUMENT,
    message: /time_?[rR]ange.*500.*100/,
  },
  {
    name: 'an inverted time range on delete',
    run: () => rawCall(client, client.deleteCells, { epoch: 0n, requestId: '', sync: false, row: 'canary', columns: ['c'], timeRange: { startUs: 9n, endUs: 3n } }, writer),
    code: status.INVALID_ARGUMENT,
    message: /time_?[rR]ange/,
  },
  { name: 'a malformed token', run: () => write([{ row: 'canary', cells: [cell('evil')] }], 'not-a-token'), code: status.UNAUTHENTICATED, message: /malformed/ },
  { name: 'no token at all', run: () => write([{ row: 'canary', cells: [cell('evil')] }], ''), code: status.UNAUTHENTICATED, message: /token/ },
  {
    name: 'a token signed with another credential',
    run: () => write([{ row: 'canary', cells: [cell('evil')] }], mintToken(deriveTokenKey('some-other-credential-xyz'), 'writer', 'rw', 60_000).token),
    code: status.UNAUTHENTICATED,
    message: /signature/,
  },
  {
    name: 'an expired token',
    run: () => write([{ row: 'canary', cells: [cell('evil')] }], mintToken(deriveTokenKey(TEST_CREDENTIAL), 'writer', 'rw', 1000, Date.now() - 60_000).token),
    code: status.UNAUTHENTICATED,
    message: /expired/,
  },
  { name: 'a read-only user writing', run: () => write([{ row: 'canary', cells: [cell('evil')] }], reader), code: status.PERMISSION_DENIED, message: /role r .*WriteRows.*rw/ },
  {
    name: 'a client token on an internal call',
    run: () => rawCall(control, control.pushMap, { map: undefined }, writer),
    code: status.PERMISSION_DENIED,
    message: /PushMap/,
  },
];

describe('bad input', () => {
  it.each(cases)('$name gets a precise status and changes nothing', async ({ run, code, message }) => {
    const before = await snapshot();
    const { err } = await run();
    expect(err?.code).toBe(code);
    expect(err!.details).toMatch(message);
    expect(await snapshot()).toEqual(before);
  });

  it('keeps serving afterwards', async () => {
    const r = await rawCall(client, client.readRow, { epoch: 0n, row: 'canary', filter: undefined }, reader);
    expect(r.res!.cells[0]!.value.toString()).toBe('alive');
  });
});
