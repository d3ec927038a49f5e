/**
 * ShardService.Batch against a real in-process cluster (real gRPC, real
 * LevelDB): the SDK coalesces the calls in flight to a shard into few
 * messages (counted at the shards), and every call's outcome — value or
 * error code, message and details — is what the unary RPC gives, call for
 * call: bad input amid good calls, a role too low, a bad token, a stale
 * epoch (WRONG_SHARD naming the owner), forwarding for epoch 0, and a
 * replicated range, whose batched writes are on the follower when answered.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Client, credentials, Metadata, status } from '@grpc/grpc-js';
import { BatchRequest, BatchResponse, type BatchAnswer, type BatchCall } from '../proto/gen/cairn/v1/shard.js';
import { CairnClient } from '../services/client/index.js';
import { fromServiceError } from '../services/common/errors.js';
import { rowHash } from '../services/common/hash.js';
import { ownerOfRow, type ClusterMap } from '../services/common/map.js';
import { login, rawCall, shardClient } from './harness/raw.js';
import { startInProcCluster, waitFor, type InProcCluster } from './harness/inproc.js';

let cluster: InProcCluster;
const clients: CairnClient[] = [];

const connect = async (user: string, password: string, batch: boolean) => {
  const c = await CairnClient.connect({ master: cluster.masterAddress, user, password, batch, timeoutMs: 10_000 });
  clients.push(c);
  return c;
};

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2 });
});
afterAll(async () => {
  for (const c of clients) c.close();
  await cluster.stop();
});

const traffic = () => cluster.shards.reduce((t, s) => ({ messages: t.messages + s.node.batchTraffic.messages, calls: t.calls + s.node.batchTraffic.calls }), { messages: 0, calls: 0 });

/** A row owned by the given shard under the current map. */
function rowOwnedBy(shardId: string, tag: string): string {
  const map = cluster.master.master.currentMap();
  for (let i = 0; ; i++) {
    const row = `${tag}-${i}`;
    if (ownerOfRow(map, row)!.shardId === shardId) return row;
  }
}

/** A call's outcome in a form two runs can be compared by: the value, or the error's code, message and details. */
async function outcome(p: Promise<unknown>): Promise<unknown> {
  try {
    const v = await p;
    return { ok: v };
  } catch (e) {
    const err = fromServiceError(e);
    return { code: err.code, message: err.message, details: err.details };
  }
}

describe('coalescing', () => {
  it('carries 400 concurrent puts and then 400 gets in a few messages, every call answered right', async () => {
    const db = await connect('writer', 'writer-pass', true);
    const before = traffic();
    const rows = Array.from({ length: 400 }, (_, i) => `co-${i}`);
    await Promise.all(rows.map((row) => db.put(row, { c: `v-${row}` })));
    const afterPuts = traffic();
    const values = await Promise.all(rows.map((row) => db.getValue(row, 'c')));
    const afterGets = traffic();
    expect(values.map((v) => v?.toString())).toEqual(rows.map((row) => `v-${row}`));
    // Every call went over the streams…
    expect(afterPuts.calls - before.calls).toBe(400);
    expect(afterGets.calls - afterPuts.calls).toBe(400);
    // …in far fewer messages than calls (issued together, they leave together: one per shard, give or take).
    expect(afterPuts.messages - before.messages).toBeLessThan(40);
    expect(afterGets.messages - afterPuts.messages).toBeLessThan(40);
  });

  it('sends a lone call at once and keeps working call after call', async () => {
    const db = await connect('writer', 'writer-pass', true);
    const before = traffic();
    for (let i = 0; i < 20; i++) {
      await db.put(`lone-${i}`, { c: String(i) });
      expect((await db.getValue(`lone-${i}`, 'c'))?.toString()).toBe(String(i));
    }
    const after = traffic();
    expect(after.calls - before.calls).toBe(40);
    expect(after.messages - before.messages).toBe(40); // nothing to coalesce: one call, one message
  });

  it('leaves everything unary with batch: false', async () => {
    const db = await connect('writer', 'writer-pass', false);
    const before = traffic();
    await Promise.all(Array.from({ length: 50 }, (_, i) => db.put(`unary-${i}`, { c: 'x' })));
    expect((await db.getValue('unary-7', 'c'))?.toString()).toBe('x');
    expect(traffic()).toEqual(before);
  });
});

describe('the same outcome as the unary RPCs, call for call', () => {
  /** Runs the same mixed load through a batching client and a unary one, on separate rows, and compares every outcome. */
  async function bothWays(user: string, password: string, load: (db: CairnClient, tag: string) => Array<Promise<unknown>>, setup?: (db: CairnClient, tag: string) => Promise<unknown>) {
    const batched = await connect(user, password, true);
    const unary = await connect(user, password, false);
    await setup?.(batched, 'b');
    await setup?.(unary, 'u');
    const before = traffic();
    const viaBatch = await Promise.all(load(batched, 'b').map(outcome));
    const batchedCalls = traffic().calls - before.calls;
    const viaUnary = await Promise.all(load(unary, 'u').map(outcome));
    expect(batchedCalls).toBeGreaterThan(0);
    return { viaBatch, viaUnary };
  }

  it('answers a bad request amid good ones with its own INVALID_ARGUMENT, the others as usual', async () => {
    const huge = 'k'.repeat(cluster.limits.maxKeyBytes + 1);
    const { viaBatch, viaUnary } = await bothWays(
      'writer',
      'writer-pass',
      (db, tag) => [
      db.put(`${tag}-mix-0`, [{ column: 'c', value: 'zero', timestampUs: 1000n }]),
      db.put(huge, { c: 'too long a key' }),
      db.put(`${tag}-mix-2`, { '': 'empty column' }),
      db.checkAndMutate(`${tag}-mix-3`, { column: 'c', absent: true }, [{ column: 'c', value: 'set', timestampUs: 2000n }]),
      db.get(`${tag}-mix-1`, { columns: ['c'] }),
      db.get(`${tag}-mix-4`, {}),
      db.checkAndMutate(`${tag}-mix-1`, { column: 'c', equals: 'not-one' }, { c: 'never' }),
      ],
      (db, tag) => db.put(`${tag}-mix-1`, [{ column: 'c', value: 'one', timestampUs: 1000n }]),
    );
    expect(viaBatch).toEqual(viaUnary);
    // And it is what was meant: the good calls worked, the bad ones failed alone.
    expect(viaBatch[0]).toHaveProperty('ok');
    expect((viaBatch[1] as { code: string }).code).toBe('INVALID_ARGUMENT');
    expect((viaBatch[2] as { code: string }).code).toBe('INVALID_ARGUMENT');
    expect(viaBatch[3]).toEqual({ ok: true });
    expect(viaBatch[4]).toEqual({ ok: [{ column: 'c', timestampUs: 1000n, value: Buffer.from('one') }] });
    expect(viaBatch[5]).toEqual({ ok: [] });
    expect(viaBatch[6]).toEqual({ ok: false });
  });

  it('refuses writes of a read-only user per call, and serves its reads in the same messages', async () => {
    const writer = await connect('writer', 'writer-pass', true);
    await writer.put('ro-seen', [{ column: 'c', value: 'x', timestampUs: 7n }]);
    const { viaBatch, viaUnary } = await bothWays('reader', 'reader-pass', (db, tag) => [
      db.get('ro-seen'),
      db.put(`${tag}-ro-1`, { c: 'no' }),
      db.get('ro-seen', { columns: ['c'] }),
      db.deleteRow('ro-seen'),
      db.checkAndMutate('ro-seen', { column: 'c', absent: true }, { c: 'no' }),
    ]);
    expect(viaBatch).toEqual(viaUnary);
    expect(viaBatch[0]).toEqual({ ok: [{ column: 'c', timestampUs: 7n, value: Buffer.from('x') }] });
    expect(viaBatch[1]).toMatchObject({ code: 'PERMISSION_DENIED', message: expect.stringMatching(/role r may not call WriteRows/) });
    expect(viaBatch[3]).toMatchObject({ code: 'PERMISSION_DENIED', message: expect.stringMatching(/DeleteRow/) });
  });

  it('rides over a stale map: the WRONG_SHARD answer on the stream makes the SDK refresh and retry', async () => {
    const db = await connect('writer', 'writer-pass', true);
    const real = db.map;
    // Every range pointed at the first shard: about half the calls reach the wrong one.
    const wrong: ClusterMap = { ...real, ranges: real.ranges.map((r) => ({ ...r, shardId: cluster.shards[0]!.node.id })) } as ClusterMap;
    db.setMap(wrong);
    const rows = Array.from({ length: 40 }, (_, i) => `stale-${i}`);
    await Promise.all(rows.map((row) => db.put(row, { c: row })));
    db.setMap(wrong);
    expect((await Promise.all(rows.map((row) => db.getValue(row, 'c')))).map((v) => v?.toString())).toEqual(rows);
    expect(db.map.epoch).toBe(real.epoch);
  });
});

describe('the Batch RPC itself (as any gRPC client sees it)', () => {
  it('answers each call with its own status: WRONG_SHARD with the owner for a stale epoch, forwarding for epoch 0, OK for its own rows', async () => {
    const token = await login(cluster.masterAddress, 'writer', 'writer-pass');
    const [a, b] = cluster.shards;
    const epoch = a!.node.map.epoch;
    const mine = rowOwnedBy(a!.node.id, 'raw-mine');
    const theirs = rowOwnedBy(b!.node.id, 'raw-theirs');
    const client = shardClient(a!.address);
    try {
      const unaryWrong = await rawCall(client, client.readRow, { epoch, row: theirs, filter: undefined }, token);
      const md = new Metadata();
      md.set('authorization', `Bearer ${token}`);
      const stream = client.batch(md);
      const answers: BatchAnswer[] = [];
      const done = new Promise<void>((resolve, reject) => {
        stream.on('data', (m: BatchResponse) => {
          answers.push(...m.answers);
          if (answers.length === 4) stream.end();
        });
        stream.on('status', () => resolve());
        stream.on('error', reject);
      });
      const write = (row: string): BatchCall => ({ id: 0n, timeoutMs: 5000, writeRows: { epoch, requestId: `raw-${row}`, sync: false, rows: [{ row, replace: false, cells: [{ column: 'c', timestampUs: 5n, value: Buffer.from(row) }] }] } });
      stream.write({
        calls: [
          { ...write(mine), id: 1n },
          { id: 2n, timeoutMs: 5000, readRow: { epoch, row: theirs, filter: undefined } },
          { id: 3n, timeoutMs: 5000, writeRows: { ...write(theirs).writeRows!, epoch: 0n } },
          { id: 4n, timeoutMs: 0 }, // no request set
        ],
      });
      await done;
      const byId = new Map(answers.map((x) => [x.id, x]));
      expect(byId.get(1n)!.status).toBeUndefined();
      expect(byId.get(1n)!.writeRows!.timestampsUs).toEqual([0n]);
      // The stale-epoch read: FAILED_PRECONDITION with the owner, exactly the unary trailers.
      const wrong = byId.get(2n)!.status!;
      expect(wrong.code).toBe(status.FAILED_PRECONDITION);
      expect(unaryWrong.err!.code).toBe(status.FAILED_PRECONDITION);
      expect(wrong.message).toBe(unaryWrong.err!.details);
      expect(wrong.errorCode).toBe('WRONG_SHARD');
      expect(wrong.owner).toBe(b!.node.id);
      expect(wrong.ownerAddress).toBe(String(unaryWrong.err!.metadata.get('cairn-owner-address')[0]));
      expect(wrong.epoch).toBe(BigInt(String(unaryWrong.err!.metadata.get('cairn-epoch')[0])));
      // Epoch 0: forwarded to the owner, one hop, and written there.
      expect(byId.get(3n)!.status).toBeUndefined();
      expect((await b!.node.store.readRow(theirs, { columns: [], columnPrefix: '', allVersions: true, limit: 0 })).map((c) => c.value.toString())).toEqual([theirs]);
      expect(byId.get(4n)!.status).toMatchObject({ code: status.INVALID_ARGUMENT, errorCode: 'INVALID_ARGUMENT' });
    } finally {
      client.close();
    }
  });
});

describe('a call holding a string that is not UTF-8', () => {
  it('is refused alone, naming the field as its unary call does; the call beside it is served', async () => {
    const token = await login(cluster.masterAddress, 'writer', 'writer-pass');
    const raw = new Client(cluster.shards[0]!.address, credentials.createInsecure());
    try {
      const cells = [{ column: 'c', timestampUs: 0n, value: Buffer.from('v') }];
      const message = BatchRequest.encode({
        calls: [
          { id: 1n, timeoutMs: 5000, readRow: { epoch: 0n, row: 'utf8-good', filter: undefined } },
          { id: 2n, timeoutMs: 5000, writeRows: { epoch: 0n, requestId: 'utf8-bad', sync: false, rows: [{ row: 'fine', replace: false, cells }, { row: 'BAD', replace: false, cells }] } },
        ],
      }).finish();
      const bytes = Buffer.from(message);
      const at = bytes.indexOf('BAD');
      bytes.set([0xff, 0xfe, 0x41], at); // same length: the framing stays valid
      const md = new Metadata();
      md.set('authorization', `Bearer ${token}`);
      const stream = raw.makeBidiStreamRequest('/cairn.v1.ShardService/Batch', (b: Buffer) => b, (b: Buffer) => BatchResponse.decode(b), md);
      const answers: BatchAnswer[] = [];
      await new Promise<void>((resolve, reject) => {
        stream.on('data', (m: BatchResponse) => {
          answers.push(...m.answers);
          if (answers.length === 2) stream.end();
        });
        stream.on('status', () => resolve());
        stream.on('error', reject);
        stream.write(bytes);
      });
      const byId = new Map(answers.map((x) => [x.id, x]));
      expect(byId.get(1n)!.status).toBeUndefined();
      expect(byId.get(2n)!.status).toMatchObject({ code: status.INVALID_ARGUMENT, errorCode: 'INVALID_ARGUMENT', message: 'rows[1].row: is not valid UTF-8 (3 bytes: ff fe 41)' });
    } finally {
      raw.close();
    }
  });
});

describe('a stream without a valid token', () => {
  it('is refused at once with UNAUTHENTICATED and the message of the unary call', async () => {
    const a = cluster.shards[0]!;
    const client = shardClient(a.address);
    try {
      const req = { epoch: 0n, row: 'no-token', filter: undefined };
      for (const header of [undefined, 'Bearer not.a.token']) {
        const unaryRefusal = await rawCall(client, client.readRow, req, header);
        const md = new Metadata();
        if (header) md.set('authorization', header);
        const stream = client.batch(md);
        const refusal = await new Promise<{ code: number; details: string }>((resolve) => {
          stream.on('data', () => resolve({ code: -1, details: 'answered' }));
          stream.on('error', (e: { code: number; details: string }) => resolve(e));
          stream.write({ calls: [{ id: 9n, timeoutMs: 5000, readRow: req }] });
        });
        expect(unaryRefusal.err!.code).toBe(status.UNAUTHENTICATED);
        expect(refusal).toMatchObject({ code: status.UNAUTHENTICATED, details: unaryRefusal.err!.details });
      }
    } finally {
      client.close();
    }
  });
});

describe('a replicated range', () => {
  it('answers a batched write only once the follower has it, and reads agree with unary', async () => {
    const admin = await connect('admin', 'admin-pass', false);
    await admin.setReplicationFactor(2);
    await waitFor(async () => (await admin.getRanges()).every((r) => r.inSync.length === 2), 30_000, 'every range to have 2 in-sync replicas');
    const db = await connect('writer', 'writer-pass', true);
    const unary = await connect('writer', 'writer-pass', false);
    const rows = Array.from({ length: 60 }, (_, i) => `rep-${i}`);
    await Promise.all(rows.map((row) => db.put(row, [{ column: 'c', value: row, timestampUs: 11n }])));
    // Acknowledged means on every in-sync member: each row is already in its follower's store.
    const ranges = await admin.getRanges();
    for (const row of rows) {
      const r = ranges.find((x) => x.start <= rowHash(row) && rowHash(row) < x.end)!;
      const follower = cluster.shards.find((s) => s.node.id === r.replicas.find((id) => id !== r.shardId))!;
      const cells = await follower.node.store.readRow(row, { columns: [], columnPrefix: '', allVersions: true, limit: 0 });
      expect(cells.map((c) => c.value.toString())).toEqual([row]);
    }
    const viaBatch = await Promise.all(rows.map((row) => outcome(db.get(row))));
    const viaUnary = await Promise.all(rows.map((row) => outcome(unary.get(row))));
    expect(viaBatch).toEqual(viaUnary);
    expect(viaBatch[0]).toEqual({ ok: [{ column: 'c', timestampUs: 11n, value: Buffer.from('rep-0') }] });
  });
});
