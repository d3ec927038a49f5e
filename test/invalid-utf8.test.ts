/**
 * String fields that are not UTF-8, sent as raw bytes (as a client in any
 * language could), against a real in-process cluster. A proto3 string must be
 * UTF-8; the decoder used to turn such bytes into U+FFFD, so `ff fe 41` was
 * silently written as the row key U+FFFD U+FFFD A, another row. Now every
 * such request is refused with INVALID_ARGUMENT naming the field and quoting
 * the bytes, nothing stored changes, and a real U+FFFD (`ef bf bd`, valid
 * UTF-8) is still an ordinary key.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { MasterServiceService } from '../proto/gen/cairn/v1/master.js';
import { ShardServiceService, type ShardServiceClient } from '../proto/gen/cairn/v1/shard.js';
import { login, rawCall, shardClient } from './harness/raw.js';
import { startInProcCluster, type InProcCluster } from './harness/inproc.js';

let cluster: InProcCluster;
let writer: string;
let client: ShardServiceClient;
let raw: grpc.Client;

type Method = grpc.MethodDefinition<any, any>;
const passthrough = (b: Buffer) => b;

/**
 * The request encoded by the servers' own codec, with the placeholder `BAD`
 * (which must occur exactly once) replaced by three other bytes, so no length
 * prefix changes: a string field carrying bytes no UTF-8 encoder would write.
 */
function withBytes(m: Method, req: object, bytes: number[]): Buffer {
  const encoded = Buffer.from(m.requestSerialize(req as never));
  const ph = Buffer.from('BAD');
  expect(bytes.length).toBe(ph.length);
  const at = encoded.indexOf(ph);
  expect(at).toBeGreaterThanOrEqual(0);
  expect(encoded.indexOf(ph, at + 1)).toBe(-1);
  Buffer.from(bytes).copy(encoded, at);
  return encoded;
}

function send(m: Method, payload: Buffer, token?: string): Promise<{ code: status; details: string; errorCode?: string; res?: Buffer }> {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return new Promise((done) =>
    raw.makeUnaryRequest(m.path, passthrough, passthrough, payload, md, { deadline: Date.now() + 10_000 }, (err, res) =>
      done(err ? { code: err.code, details: err.details, errorCode: err.metadata?.get('cairn-error-code')[0]?.toString() } : { code: status.OK, details: '', res }),
    ),
  );
}

const ALL = { columns: [], columnPrefix: '', timeRange: undefined, allVersions: true, limit: 0 };
const cell = (column: string, value = 'v') => ({ column, timestampUs: 0n, value: Buffer.from(value) });
const writeReq = (rows: Array<{ row: string; cells: ReturnType<typeof cell>[] }>, requestId = '') => ({
  epoch: 0n,
  requestId,
  sync: false,
  rows: rows.map((r) => ({ ...r, replace: false })),
});

async function readRow(row: string, columns: string[] = []) {
  const r = await rawCall(client, client.readRow, { epoch: 0n, row, filter: { ...ALL, columns } }, writer);
  expect(r.err).toBeUndefined();
  return r.res!.cells;
}

/** Everything a refused request could change: every shard's stats, and the canary row. */
async function snapshot() {
  return { stats: cluster.shards.map((s) => s.node.store.totalStats()), canary: await readRow('canary') };
}

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2 });
  writer = await login(cluster.masterAddress, 'writer', 'writer-pass');
  client = shardClient(cluster.shards[0]!.address);
  raw = new grpc.Client(cluster.shards[0]!.address, grpc.credentials.createInsecure());
  expect((await rawCall(client, client.writeRows, writeReq([{ row: 'canary', cells: [cell('c', 'alive')] }]), writer)).err).toBeUndefined();
});
afterAll(async () => {
  raw?.close();
  client?.close();
  await cluster?.stop();
});

const S = ShardServiceService as unknown as Record<string, Method>;
const FF_FE_41 = [0xff, 0xfe, 0x41];
/** The first three bytes of a four-byte sequence: decoded as one U+FFFD, as many bytes as the wire carried (a length check would miss it). */
const TRUNCATED = [0xf0, 0x9f, 0x98];
/** A lone surrogate as CESU-8 / WTF-8 (what some encoders write for one): not UTF-8. */
const SURROGATE = [0xed, 0xa0, 0x80];

const cases: Array<{ name: string; m: Method; req: object; bytes: number[]; message: string }> = [
  {
    name: 'a row key (rows[1].row)',
    m: S.writeRows!,
    req: writeReq([{ row: 'fine', cells: [cell('c')] }, { row: 'BAD', cells: [cell('c')] }]),
    bytes: FF_FE_41,
    message: 'rows[1].row: is not valid UTF-8 (3 bytes: ff fe 41)',
  },
  {
    name: 'a truncated sequence in a column name',
    m: S.writeRows!,
    req: writeReq([{ row: 'fine', cells: [cell('ok'), cell('BAD')] }]),
    bytes: TRUNCATED,
    message: 'rows[0].cells[1].column: is not valid UTF-8 (3 bytes: f0 9f 98)',
  },
  { name: 'an encoded lone surrogate in a row key', m: S.writeRows!, req: writeReq([{ row: 'xBADx', cells: [cell('c')] }]), bytes: SURROGATE, message: 'rows[0].row: is not valid UTF-8 (5 bytes: 78 ed a0 80 78)' },
  {
    name: 'a long key (past the decoder\'s short-ASCII path), quoted up to 32 bytes',
    m: S.writeRows!,
    req: writeReq([{ row: `${'k'.repeat(40)}BAD`, cells: [cell('c')] }]),
    bytes: FF_FE_41,
    message: `rows[0].row: is not valid UTF-8 (43 bytes: ${'6b '.repeat(31)}6b …)`,
  },
  { name: 'the request id of a write', m: S.writeRows!, req: writeReq([{ row: 'fine', cells: [cell('c')] }], 'id-BAD'), bytes: FF_FE_41, message: 'requestId: is not valid UTF-8 (6 bytes: 69 64 2d ff fe 41)' },
  { name: 'ReadRow row', m: S.readRow!, req: { epoch: 0n, row: 'BAD', filter: ALL }, bytes: FF_FE_41, message: 'row: is not valid UTF-8 (3 bytes: ff fe 41)' },
  { name: 'ReadRows rows[2]', m: S.readRows!, req: { epoch: 0n, rows: ['a', 'b', 'BAD'], filter: ALL }, bytes: FF_FE_41, message: 'rows[2]: is not valid UTF-8 (3 bytes: ff fe 41)' },
  {
    name: 'ScanRows rowPrefix',
    m: S.scanRows!,
    req: { epoch: 0n, rowPrefix: 'BAD', filter: ALL, limit: 0, resumeToken: Buffer.alloc(0), hashStart: 0n, hashEnd: 0n },
    bytes: FF_FE_41,
    message: 'rowPrefix: is not valid UTF-8 (3 bytes: ff fe 41)',
  },
  {
    name: 'ScanRows filter.columns[0]',
    m: S.scanRows!,
    req: { epoch: 0n, rowPrefix: '', filter: { ...ALL, columns: ['BAD'] }, limit: 0, resumeToken: Buffer.alloc(0), hashStart: 0n, hashEnd: 0n },
    bytes: FF_FE_41,
    message: 'filter.columns[0]: is not valid UTF-8 (3 bytes: ff fe 41)',
  },
  {
    name: 'DeleteCells columns[1]',
    m: S.deleteCells!,
    req: { epoch: 0n, requestId: '', sync: false, row: 'canary', columns: ['c', 'BAD'], timeRange: undefined },
    bytes: FF_FE_41,
    message: 'columns[1]: is not valid UTF-8 (3 bytes: ff fe 41)',
  },
  { name: 'DeleteRow row', m: S.deleteRow!, req: { epoch: 0n, requestId: '', sync: false, row: 'BAD' }, bytes: FF_FE_41, message: 'row: is not valid UTF-8 (3 bytes: ff fe 41)' },
  {
    name: 'CheckAndMutate checkColumn',
    m: S.checkAndMutate!,
    req: { epoch: 0n, requestId: '', sync: false, row: 'canary', checkColumn: 'BAD', expectedValue: Buffer.alloc(0), expectAbsent: true, cells: [cell('c', 'evil')], replace: false },
    bytes: FF_FE_41,
    message: 'checkColumn: is not valid UTF-8 (3 bytes: ff fe 41)',
  },
  { name: 'LockRow row', m: S.lockRow!, req: { epoch: 0n, row: 'BAD', leaseMs: 1000, requestId: '' }, bytes: FF_FE_41, message: 'row: is not valid UTF-8 (3 bytes: ff fe 41)' },
];

describe('a string field that is not UTF-8', () => {
  it.each(cases)('$name is refused with INVALID_ARGUMENT naming the field, and nothing changes', async ({ m, req, bytes, message }) => {
    const before = await snapshot();
    const res = await send(m, withBytes(m, req, bytes), writer);
    expect({ code: status[res.code], errorCode: res.errorCode, details: res.details }).toEqual({ code: 'INVALID_ARGUMENT', errorCode: 'INVALID_ARGUMENT', details: message });
    expect(await snapshot()).toEqual(before);
  });

  it('ff fe 41 is not written as the row U+FFFD U+FFFD A (as it was), and nothing else of the call is written', async () => {
    const res = await send(S.writeRows!, withBytes(S.writeRows!, writeReq([{ row: 'other-row', cells: [cell('c')] }, { row: 'BAD', cells: [cell('c')] }]), FF_FE_41), writer);
    expect(status[res.code]).toBe('INVALID_ARGUMENT');
    expect(await readRow('\uFFFD\uFFFDA')).toEqual([]);
    expect(await readRow('other-row')).toEqual([]);
  });

  it('is refused even when a later copy of the field replaced it in the decoded message', async () => {
    // ReadRowRequest.row (field 2) twice: ff fe 41, then "a". Decoders keep the last, but the wire carried bytes that are not UTF-8.
    const payload = Buffer.from([0x12, 3, ...FF_FE_41, 0x12, 1, 0x61]);
    const res = await send(S.readRow!, payload, writer);
    expect({ code: status[res.code], details: res.details }).toEqual({ code: 'INVALID_ARGUMENT', details: 'request: a string field is not valid UTF-8 (3 bytes: ff fe 41)' });
  });

  it('is checked after the credential: without a token the answer is still UNAUTHENTICATED', async () => {
    const res = await send(S.writeRows!, withBytes(S.writeRows!, writeReq([{ row: 'BAD', cells: [cell('c')] }]), FF_FE_41));
    expect(status[res.code]).toBe('UNAUTHENTICATED');
  });

  it('is refused by every service: MasterService.Login names the user field', async () => {
    const m = (MasterServiceService as unknown as Record<string, Method>).login!;
    const master = new grpc.Client(cluster.masterAddress, grpc.credentials.createInsecure());
    try {
      const md = new grpc.Metadata();
      const payload = withBytes(m, { user: 'BAD', password: 'writer-pass' }, FF_FE_41);
      const res = await new Promise<grpc.ServiceError | null>((done) => master.makeUnaryRequest(m.path, passthrough, passthrough, payload, md, { deadline: Date.now() + 10_000 }, (err) => done(err)));
      expect({ code: res && status[res.code], details: res?.details }).toEqual({ code: 'INVALID_ARGUMENT', details: 'user: is not valid UTF-8 (3 bytes: ff fe 41)' });
    } finally {
      master.close();
    }
  });
});

describe('valid UTF-8 is unaffected', () => {
  it('a real U+FFFD (ef bf bd) and long non-ASCII keys and columns are written and read back unchanged', async () => {
    const keys = ['\uFFFD\uFFFDA', `日本語-${'é'.repeat(40)}`, '\u{1F600}'];
    for (const row of keys) {
      // Sent as raw bytes too: the UTF-8 encoding of the key, through the same path as the refused requests.
      const m = S.writeRows!;
      const res = await send(m, Buffer.from(m.requestSerialize(writeReq([{ row, cells: [cell(`col-${row}`, 'kept')] }]) as never)), writer);
      expect(status[res.code]).toBe('OK');
      const cells = await readRow(row, [`col-${row}`]);
      expect(cells.map((c) => [c.column, c.value.toString()])).toEqual([[`col-${row}`, 'kept']]);
    }
  });
});
