/**
 * The SDK against scripted fake servers (real gRPC on 127.0.0.1:0, no
 * storage): the cases a real cluster cannot be made to produce on demand —
 * a master with no map yet, a fenced shard, a token about to expire, a watch
 * stream that breaks — and what exactly goes over the wire in each.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { Metadata, status as Status, type Server, type ServerDuplexStream, type ServerUnaryCall, type ServerWritableStream, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { MasterServiceService, type GetMapResponse, type LoginResponse, type WatchMapRequest, type WatchMapResponse } from '../../proto/gen/cairn/v1/master.js';
import { ShardServiceService, type BatchCall, type BatchRequest, type BatchResponse, type WriteRowsRequest, type WriteRowsResponse } from '../../proto/gen/cairn/v1/shard.js';
import { CairnError, toCallStatus, toServiceError } from '../common/errors.js';
import { startServer } from '../common/grpc.js';
import { mapToProto, ownerOfRow, type ClusterMap } from '../common/map.js';
import { evenSplit } from '../common/ranges.js';
import { CairnClient } from './client.js';

type Callback<Res> = (err: unknown, res?: Res) => void;
const fail = (cb: Callback<never>, err: CairnError) => cb(toServiceError(err));
const authOf = (call: { metadata: { get(k: string): unknown[] } }) => String(call.metadata.get('authorization')[0] ?? '');

const servers: Server[] = [];
const clients: CairnClient[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) s.forceShutdown();
});

async function serve(def: object, impl: object): Promise<string> {
  const { server, port } = await startServer('127.0.0.1:0', [[def as never, impl as UntypedServiceImplementation]], { maxMessageBytes: 4 << 20 });
  servers.push(server);
  return `127.0.0.1:${port}`;
}

interface FakeShard {
  address: string;
  writes: Array<{ req: WriteRowsRequest; auth: string }>;
  /** Decides each WriteRows answer; default: accept. */
  onWrite: (req: WriteRowsRequest, n: number, auth: string) => CairnError | undefined;
}

async function fakeShard(): Promise<FakeShard> {
  const shard: FakeShard = { address: '', writes: [], onWrite: () => undefined };
  shard.address = await serve(ShardServiceService, {
    writeRows: (call: ServerUnaryCall<WriteRowsRequest, WriteRowsResponse>, cb: Callback<WriteRowsResponse>) => {
      shard.writes.push({ req: call.request, auth: authOf(call) });
      const err = shard.onWrite(call.request, shard.writes.length, authOf(call));
      if (err) return fail(cb, err);
      cb(null, { header: { nodeId: 'fake', epoch: call.request.epoch }, timestampsUs: call.request.rows.map((_, i) => 1000n + BigInt(i)) });
    },
  });
  return shard;
}

interface FakeMaster {
  address: string;
  logins: number;
  getMaps: number;
  watches: number;
  /** The map GetMap answers with, by call number (1-based). */
  mapFor: (n: number) => ClusterMap;
  tokenTtlMs: number;
  /** Drives each WatchMap stream, by stream number. */
  onWatch: (n: number, req: WatchMapRequest, stream: ServerWritableStream<WatchMapRequest, WatchMapResponse>) => void;
}

async function fakeMaster(map: ClusterMap): Promise<FakeMaster> {
  const m: FakeMaster = { address: '', logins: 0, getMaps: 0, watches: 0, mapFor: () => map, tokenTtlMs: 60_000, onWatch: () => undefined };
  m.address = await serve(MasterServiceService, {
    login: (_call: unknown, cb: Callback<LoginResponse>) => {
      m.logins += 1;
      cb(null, { header: undefined, token: `t${m.logins}`, expiresAtMs: BigInt(Date.now() + m.tokenTtlMs), role: 'rw' });
    },
    getMap: (_call: unknown, cb: Callback<GetMapResponse>) => {
      m.getMaps += 1;
      cb(null, { header: undefined, map: mapToProto(m.mapFor(m.getMaps)) });
    },
    watchMap: (stream: ServerWritableStream<WatchMapRequest, WatchMapResponse>) => {
      m.watches += 1;
      m.onWatch(m.watches, stream.request, stream);
    },
  });
  return m;
}

function twoShardMap(a: FakeShard, b: FakeShard, epoch = 4n): ClusterMap {
  return {
    epoch,
    ranges: evenSplit(2).map((r, i) => ({ ...r, shardId: i === 0 ? 's1' : 's2' })),
    shards: [
      { id: 's1', address: a.address },
      { id: 's2', address: b.address },
    ],
    clusterId: 'c-test',
  };
}

async function setup() {
  const a = await fakeShard();
  const b = await fakeShard();
  const map = twoShardMap(a, b);
  const master = await fakeMaster(map);
  const connect = async (o: { timeoutMs?: number; watch?: boolean } = {}) => {
    const c = await CairnClient.connect({ master: master.address, user: 'u', password: 'p', ...o });
    clients.push(c);
    return c;
  };
  return { a, b, map, master, connect };
}

const rowsFor = (n: number) => Array.from({ length: n }, (_, i) => ({ row: `row-${i}`, cells: { c: String(i) } }));

describe('connect', () => {
  it('waits while the cluster has no map (epoch 0), then routes by the first real one', async () => {
    const { master, map, connect } = await setup();
    master.mapFor = (n) => (n < 4 ? { epoch: 0n, ranges: [], shards: [], clusterId: '' } : map);
    const c = await connect({ timeoutMs: 5000 });
    expect(master.getMaps).toBe(4);
    expect(c.map.epoch).toBe(4n);
  });

  it('gives up at its deadline with NOT_READY when the map never comes', async () => {
    const { master, connect } = await setup();
    master.mapFor = () => ({ epoch: 0n, ranges: [], shards: [], clusterId: '' });
    await expect(connect({ timeoutMs: 400 })).rejects.toMatchObject({ code: 'NOT_READY' });
  });
});

describe('writes', () => {
  it('retries only the fenced sub-batch, with one request id for every retry and sub-batch', async () => {
    const { a, b, map, connect } = await setup();
    b.onWrite = (_req, n) => (n === 1 ? new CairnError('FENCED', 'range fenced for move m1', { retryAfterMs: 30 }) : undefined);
    const c = await connect();
    const rows = rowsFor(40);
    const ts = await c.writeRows(rows);
    expect(ts.every((t) => t >= 1000n)).toBe(true);

    const owned = (s: string) => rows.filter((r) => ownerOfRow(map, r.row)!.shardId === s).map((r) => r.row);
    expect(a.writes.map((w) => w.req.rows.map((r) => r.row))).toEqual([owned('s1')]); // sent once
    expect(b.writes.map((w) => w.req.rows.map((r) => r.row))).toEqual([owned('s2'), owned('s2')]); // fenced, then again
    const ids = new Set([...a.writes, ...b.writes].map((w) => w.req.requestId));
    expect(ids.size).toBe(1);
    expect([...ids][0]).toMatch(/^[0-9a-f]{32}$/);
    expect([...a.writes, ...b.writes].every((w) => w.req.epoch === 4n && w.auth === 'Bearer t1')).toBe(true);
  });

  it('puts timestamps back in input order across shards', async () => {
    const { connect, map } = await setup();
    const c = await connect();
    const rows = rowsFor(10);
    const ts = await c.writeRows(rows);
    // Each fake shard numbers its rows 1000, 1001, … in the order it received them.
    const counters = new Map<string, bigint>();
    const want = rows.map((r) => {
      const s = ownerOfRow(map, r.row)!.shardId;
      const t = counters.get(s) ?? 1000n;
      counters.set(s, t + 1n);
      return t;
    });
    expect(ts).toEqual(want);
  });

  it('gives up at the deadline with the last server error when a shard stays fenced', async () => {
    const { b, connect } = await setup();
    b.onWrite = () => new CairnError('FENCED', 'range fenced for move m7', { retryAfterMs: 50 });
    const c = await connect({ timeoutMs: 400 });
    const rows = rowsFor(10);
    const err = await c.writeRows(rows).catch((e) => e);
    expect(err).toBeInstanceOf(CairnError);
    expect(err).toMatchObject({ code: 'FENCED', message: 'range fenced for move m7' });
    expect(b.writes.length).toBeGreaterThan(2);
  });

  it('fails at once on a non-retryable answer', async () => {
    const { a, b, connect } = await setup();
    a.onWrite = b.onWrite = () => new CairnError('LIMIT_EXCEEDED', 'cells: 12000 cells in one call, over the maxCellsPerCall limit of 10000');
    const c = await connect();
    await expect(c.put('x', { c: '1' })).rejects.toMatchObject({ code: 'LIMIT_EXCEEDED', message: expect.stringContaining('maxCellsPerCall') });
    expect(a.writes.length + b.writes.length).toBe(1);
  });

  it('refreshes the map on WRONG_SHARD and sends the rows to their new owner', async () => {
    const { a, b, map, master, connect } = await setup();
    const c = await connect();
    // Stale view: the client thinks s1 owns everything; s1 knows better.
    c.setMap({ ...map, epoch: 3n, ranges: map.ranges.map((r) => ({ ...r, shardId: 's1' })) });
    a.onWrite = (req) =>
      req.rows.some((r) => ownerOfRow(map, r.row)!.shardId !== 's1') ? new CairnError('WRONG_SHARD', 'not mine', { epoch: 4n, owner: 's2' }) : undefined;
    const rows = rowsFor(20);
    await c.writeRows(rows);
    expect(master.getMaps).toBe(2); // connect, then one refresh
    expect(c.map.epoch).toBe(4n);
    expect(a.writes[0]!.req.rows).toHaveLength(20);
    expect(a.writes[0]!.req.epoch).toBe(3n);
    const resent = [...a.writes.slice(1), ...b.writes].flatMap((w) => w.req.rows.map((r) => r.row)).sort();
    expect(resent).toEqual(rows.map((r) => r.row).sort());
  });
});

describe('tokens', () => {
  it('logs in again shortly before the token expires', async () => {
    const { a, b, master, connect } = await setup();
    master.tokenTtlMs = 500; // renewed once less than a fifth of its life is left
    const c = await connect();
    await c.put('row-1', { c: '1' });
    expect(c.token).toBe('t1');
    await new Promise((r) => setTimeout(r, 450));
    await c.put('row-1', { c: '2' });
    expect(master.logins).toBe(2);
    expect([...a.writes, ...b.writes].map((w) => w.auth)).toEqual(['Bearer t1', 'Bearer t2']);
  });

  it('logs in again once when a shard says the token expired, and not on other auth errors', async () => {
    const { a, b, master, connect } = await setup();
    a.onWrite = b.onWrite = (_req, _n, auth) =>
      auth === 'Bearer t1' ? new CairnError('UNAUTHENTICATED', 'token expired at 2020-01-01T00:00:00.000Z (5m ago)', { reason: 'TOKEN_EXPIRED' }) : undefined;
    const c = await connect();
    await c.put('row-1', { c: '1' });
    expect(master.logins).toBe(2);

    a.onWrite = b.onWrite = () => new CairnError('UNAUTHENTICATED', 'invalid token: bad signature');
    await expect(c.put('row-1', { c: '1' })).rejects.toMatchObject({ code: 'UNAUTHENTICATED', message: 'invalid token: bad signature' });
    expect(master.logins).toBe(2);
  });
});

describe('watch', () => {
  it('installs maps from the stream and reopens it after an error, without crashing', async () => {
    const { map, master, connect } = await setup();
    const seenMinEpochs: bigint[] = [];
    master.onWatch = (n, req, stream) => {
      seenMinEpochs.push(req.minEpoch);
      if (n === 1) {
        stream.write({ header: undefined, map: mapToProto({ ...map, epoch: 5n }) });
        setTimeout(() => stream.emit('error', toServiceError(new CairnError('NOT_READY', 'master restarting'))), 20);
      } else if (n === 2) {
        stream.write({ header: undefined, map: mapToProto({ ...map, epoch: 6n }) });
      }
    };
    const c = await connect({ watch: true });
    const until = Date.now() + 3000;
    while (c.map.epoch < 6n && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    expect(c.map.epoch).toBe(6n);
    expect(master.watches).toBe(2);
    expect(seenMinEpochs).toEqual([4n, 5n]); // resumes after the newest map it holds
  });

  it('never goes back to an older map', async () => {
    const { map, master, connect } = await setup();
    master.onWatch = (_n, _req, stream) => {
      stream.write({ header: undefined, map: mapToProto({ ...map, epoch: 9n }) });
      stream.write({ header: undefined, map: mapToProto({ ...map, epoch: 7n }) });
    };
    const c = await connect({ watch: true });
    const until = Date.now() + 3000;
    while (c.map.epoch < 9n && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    expect(c.map.epoch).toBe(9n);
  });
});

/** A shard that serves ShardService.Batch by a script: each call is handed to `onCall` with the stream it came on. */
interface FakeBatchShard {
  address: string;
  streams: number;
  /** Every call received: which stream (1-based), its row and request id. */
  calls: Array<{ stream: number; row: string; requestId: string }>;
  /** The authorization metadata each stream was opened with, by stream number - 1. */
  auths: string[];
  /** Answers (or not) one call; default: accept. */
  onCall: (call: BatchCall, streamNo: number, stream: ServerDuplexStream<BatchRequest, BatchResponse>) => void;
}

const accept = (call: BatchCall, stream: ServerDuplexStream<BatchRequest, BatchResponse>) =>
  stream.write({ answers: [{ id: call.id, status: undefined, writeRows: { header: { nodeId: 'fake', epoch: 4n }, timestampsUs: [1000n] } }] });

async function fakeBatchShard(): Promise<FakeBatchShard> {
  const shard: FakeBatchShard = { address: '', streams: 0, calls: [], auths: [], onCall: (call, _n, stream) => accept(call, stream) };
  shard.address = await serve(ShardServiceService, {
    batch: (stream: ServerDuplexStream<BatchRequest, BatchResponse>) => {
      const n = ++shard.streams;
      shard.auths.push(authOf(stream));
      stream.on('data', (m: BatchRequest) => {
        for (const call of m.calls) {
          shard.calls.push({ stream: n, row: call.writeRows?.rows[0]?.row ?? '', requestId: call.writeRows?.requestId ?? '' });
          shard.onCall(call, n, stream);
        }
      });
      stream.on('end', () => stream.end());
      stream.on('error', () => undefined);
    },
  });
  return shard;
}

async function batchSetup() {
  const a = await fakeBatchShard();
  const b = await fakeBatchShard();
  const map = twoShardMap(a as unknown as FakeShard, b as unknown as FakeShard);
  const master = await fakeMaster(map);
  const c = await CairnClient.connect({ master: master.address, user: 'u', password: 'p' });
  clients.push(c);
  const rowOn = (shardId: string, tag: string) => {
    for (let i = 0; ; i++) if (ownerOfRow(map, `${tag}-${i}`)!.shardId === shardId) return `${tag}-${i}`;
  };
  return { a, b, master, c, rowOn };
}

describe('the Batch stream', () => {
  it('fails a call at its own deadline and nothing else: the calls beside it, and later ones, are answered on the same stream', async () => {
    const { a, c, rowOn } = await batchSetup();
    a.onCall = (call, _n, stream) => {
      if (!call.writeRows!.rows[0]!.row.startsWith('slow')) accept(call, stream); // a slow one is never answered
    };
    const slow = c.put(rowOn('s1', 'slow'), { c: 'x' }, { timeoutMs: 300 });
    const fast = c.put(rowOn('s1', 'fast'), { c: 'x' });
    await expect(fast).resolves.toBe(1000n);
    await expect(slow).rejects.toMatchObject({ code: 'DEADLINE_EXCEEDED' });
    await expect(c.put(rowOn('s1', 'later'), { c: 'x' })).resolves.toBe(1000n);
    expect(a.streams).toBe(1);
    expect(a.calls.map((x) => x.row.split('-')[0])).toEqual(['slow', 'fast', 'later']);
  });

  it('when a stream breaks mid-flight, resends only the calls that were on it (same request ids), on a new stream', async () => {
    const { a, b, c, rowOn } = await batchSetup();
    const onA = Array.from({ length: 5 }, (_, i) => rowOn('s1', `a${i}`));
    const onB = Array.from({ length: 5 }, (_, i) => rowOn('s2', `b${i}`));
    let held = 0;
    a.onCall = (call, n, stream) => {
      if (n > 1) return accept(call, stream);
      // The first stream takes the five calls, answers none, then breaks as a reset connection does (no cairn code).
      if (++held === onA.length) stream.emit('error', { code: Status.UNAVAILABLE, details: 'connection reset', metadata: new Metadata() });
    };
    const results = await Promise.all([...onA, ...onB].map((row) => c.put(row, { c: 'x' })));
    expect(results).toEqual(new Array(10).fill(1000n));
    expect(a.streams).toBe(2);
    expect(b.streams).toBe(1);
    // B's calls went once; A's twice each, the retry with the first attempt's request id.
    expect(b.calls.map((x) => x.row).sort()).toEqual([...onB].sort());
    for (const row of onA) {
      const sent = a.calls.filter((x) => x.row === row);
      expect(sent.map((x) => x.stream)).toEqual([1, 2]);
      expect(sent[0]!.requestId).toBe(sent[1]!.requestId);
    }
  });

  it('falls back to unary calls on a shard without Batch (an older version), losing no call', async () => {
    const { a, b, connect } = await setup(); // fakeShard serves WriteRows only: Batch is UNIMPLEMENTED
    const c = await connect();
    const rows = Array.from({ length: 6 }, (_, i) => `old-${i}`);
    expect(await Promise.all(rows.map((row) => c.put(row, { c: 'x' })))).toEqual(new Array(6).fill(1000n));
    await c.put('old-again', { c: 'x' });
    expect([...a.writes, ...b.writes].map((w) => w.req.rows[0]!.row).sort()).toEqual([...rows, 'old-again'].sort());
  });

  it('logs in again when a call on the stream says the token expired, and sends the call again on a stream with the new token', async () => {
    const { a, master, c, rowOn } = await batchSetup();
    a.onCall = (call, n, stream) => {
      if (n > 1) return accept(call, stream);
      const err = toCallStatus(new CairnError('UNAUTHENTICATED', 'token expired', { reason: 'TOKEN_EXPIRED' }));
      stream.write({ answers: [{ id: call.id, status: err }] });
    };
    await expect(c.put(rowOn('s1', 'expiring'), { c: 'x' })).resolves.toBe(1000n);
    expect(master.logins).toBe(2);
    expect(a.auths).toEqual(['Bearer t1', 'Bearer t2']);
    expect(a.calls.map((x) => x.stream)).toEqual([1, 2]);
  });

  it('gives every call still waiting CANCELLED when the client closes', async () => {
    const { a, c, rowOn } = await batchSetup();
    a.onCall = () => undefined;
    const waiting = c.put(rowOn('s1', 'w'), { c: 'x' });
    await new Promise((r) => setTimeout(r, 50));
    c.close();
    await expect(waiting).rejects.toMatchObject({ code: 'CANCELLED' });
  });
});
