/**
 * Fuzzed inputs (fast-check) against every RPC of every service — Master,
 * Shard, Admin — on a cluster of real processes (a master and two shards):
 *
 * - messages built from the proto descriptors with random and extreme field
 *   values (empty, huge and odd strings, uint64 edges and bucket boundaries,
 *   NaN and infinite doubles, empty and long repeated fields);
 * - wrong types: another RPC's request message, random bytes that are not a
 *   valid message, a valid message cut short, and an empty payload — all
 *   sent with a pass-through serializer, as a plain gRPC client could;
 * - every kind of credential: each role, none, malformed, badly signed, expired;
 * - huge payloads: over the 16 MiB message limit, a value over 1 MiB,
 *   more cells than a call may carry.
 *
 * Each request must get a precise status: OK, or a specific error with a
 * message (a refused credential gets exactly UNAUTHENTICATED or
 * PERMISSION_DENIED; bytes that do not parse, once the credential passed,
 * INVALID_ARGUMENT naming the request message), never INTERNAL of an unexpected exception, never a
 * hang. No process may die, no handler may log an unexpected error, and a
 * rejected request must leave the stored data, the map, the shard list and
 * the move journal exactly as they were.
 *
 * At least 1,000 generated requests per service here (CAIRN_FUZZ_RUNS sets
 * how many; `npm run fuzz` runs more).
 *
 * Requests that only a trusted master makes during a move, with the server
 * credential (a TransferRange of a range the shard owns, a PullRange from a
 * real source, a newer valid map, stopping a real shard, registering a new
 * shard), and admin calls that would start real moves are turned into
 * their harmless neighbours before sending; moves and crashes during them
 * are the nemesis' and test/crash.test.ts's job.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { status, type Client } from '@grpc/grpc-js';
import fc from 'fast-check';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { CairnClient } from '../services/client/client.js';
import { deriveTokenKey, mintToken, ROLES, type Role } from '../services/common/auth.js';
import { endFromProto, HASH_SPACE_END } from '../services/common/hash.js';
import { mapError, mapFromProto, rangesOf, type ClusterMap } from '../services/common/map.js';
import { TEST_CREDENTIAL } from './harness/inproc.js';
import { ProcessCluster } from './harness/procs.js';
import { allRpcs, encodeAs, fieldsOf, invokeRaw, packageDefinition, rawClient, SERVICE_NAMES, type FieldDesc, type RawResult, type Rpc, type ServiceName } from './nemesis/rpc.js';
import { connectClient } from './nemesis/workload.js';

const RUNS = Number(process.env.CAIRN_FUZZ_RUNS ?? 1000);
const SEED = process.env.CAIRN_FUZZ_SEED ? Number(process.env.CAIRN_FUZZ_SEED) : undefined;

const NEEDS: Record<ServiceName, (name: string) => Role | null> = {
  MasterService: (n) => (n === 'Login' || n === 'GetMasterStatus' ? null : n === 'RegisterShard' || n === 'Heartbeat' || n === 'GetMoveStatus' ? 'server' : 'r'),
  // Batch: any valid token opens the stream; each call it carries is refused by its own role, inside the answer.
  ShardService: (n) => (['ReadRow', 'ReadRows', 'ScanRows', 'Batch'].includes(n) ? 'r' : 'rw'),
  ShardControlService: () => 'server',
  AdminService: () => 'admin',
};

const KEY = deriveTokenKey(TEST_CREDENTIAL);
const OTHER_KEY = deriveTokenKey('another-cluster-credential-0123456789');
type TokenKind = 'r' | 'rw' | 'admin' | 'server' | 'none' | 'malformed' | 'bad signature' | 'expired';
const TOKEN_KINDS: TokenKind[] = ['r', 'rw', 'admin', 'server', 'none', 'malformed', 'bad signature', 'expired'];

/** The cluster's id, from the first map: server tokens carry it. */
let clusterId = '';

function header(kind: TokenKind): string | undefined {
  switch (kind) {
    case 'none':
      return undefined;
    case 'malformed':
      return 'Bearer v1.@@@.!!!';
    case 'bad signature':
      return `Bearer ${mintToken(OTHER_KEY, 'fuzz', 'server', 600_000).token}`;
    case 'expired':
      return `Bearer ${mintToken(KEY, 'fuzz', 'server', 1000, Date.now() - 60_000).token}`;
    default:
      // Server tokens carry the cluster's id (learnt at start-up): shards refuse internal calls from another cluster.
      return `Bearer ${mintToken(KEY, `fuzz-${kind}`, kind, 600_000, Date.now(), clusterId).token}`;
  }
}

/** Any credential; as often as not one the RPC accepts, so requests get past authentication to validation and beyond. */
function tokenArb(r: Rpc): fc.Arbitrary<TokenKind> {
  const need = NEEDS[r.service](r.name);
  const enough = (['r', 'rw', 'admin', 'server'] as const).filter((k) => need === null || ROLES.indexOf(k) >= ROLES.indexOf(need));
  return fc.oneof({ weight: 1, arbitrary: fc.constantFrom<TokenKind>(...enough) }, { weight: 1, arbitrary: fc.constantFrom(...TOKEN_KINDS) });
}

/** The exact refusal a credential must get, or undefined when it is good enough for the RPC. */
function authRefusal(kind: TokenKind, need: Role | null, method: string): { code: status; message: RegExp } | undefined {
  if (need === null) return undefined;
  switch (kind) {
    case 'none':
      return { code: status.UNAUTHENTICATED, message: /missing token/ };
    case 'malformed':
      return { code: status.UNAUTHENTICATED, message: /malformed token/ };
    case 'bad signature':
      return { code: status.UNAUTHENTICATED, message: /bad signature/ };
    case 'expired':
      return { code: status.UNAUTHENTICATED, message: /expired/ };
    default:
      return ROLES.indexOf(kind) >= ROLES.indexOf(need) ? undefined : { code: status.PERMISSION_DENIED, message: new RegExp(`role ${kind} may not call ${method} \\(needs ${need}\\)`) };
  }
}

// ---------------------------------------------------------------------------
// Field values

const TWO48 = 1n << 48n;
const U64_EDGES = [0n, 1n, 2n, 255n, 65_535n, 4_294_967_295n, 4_294_967_296n, TWO48, TWO48 + 1n, (1n << 63n) - 1n, 1n << 63n, HASH_SPACE_END - TWO48, HASH_SPACE_END - 2n, HASH_SPACE_END - 1n].map(String);
const u64 = fc.oneof(
  fc.constantFrom(...U64_EDGES),
  fc.bigInt({ min: 0n, max: HASH_SPACE_END - 1n }).map(String),
  fc.integer({ min: 0, max: 65_535 }).map((k) => String(BigInt(k) << 48n)),
);
const u32 = fc.oneof(fc.constantFrom(0, 1, 2, 1000, 65_535, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1), fc.nat());
const dbl = fc.oneof(fc.constantFrom(0, -0, -1, 1, 0.001, 1e300, -1e300, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, Number.MIN_VALUE), fc.double());
const ODD_STRINGS = ['', ' ', '\u0000', '\n', '../../etc/passwd', '%s%s%n', '日本語', '\u{1F600}', 'x'.repeat(4096), 'x'.repeat(4097), 'y'.repeat(70_000)];
const str = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 24 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 12 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
  { weight: 2, arbitrary: fc.constantFrom(...ODD_STRINGS) },
);
const bytes = fc.oneof(
  { weight: 8, arbitrary: fc.uint8Array({ maxLength: 48 }).map((b) => Buffer.from(b)) },
  { weight: 1, arbitrary: fc.constantFrom(Buffer.alloc(0), Buffer.alloc(1 << 20, 7), Buffer.alloc((1 << 20) + 1, 7)) },
);

/** Values drawn from what the cluster knows, so some requests get past validation. */
const pools = {
  rows: ['fuzz/canary', 'fuzz/r1', 'fuzz/r2', 'fuzz/lease'],
  columns: ['c', 'v', 'd:x'],
  shardIds: [] as string[],
  addresses: [] as string[],
};

function byName(f: FieldDesc): fc.Arbitrary<unknown> | undefined {
  const n = f.name;
  // Epochs near the real one, so data calls get past routing as often as not.
  if (f.type === 'TYPE_UINT64' && (n === 'epoch' || n === 'minEpoch')) return fc.oneof(fc.constantFrom('0', '1', '2', '3'), u64);
  if (f.type !== 'TYPE_STRING') return undefined;
  if (n === 'row' || n === 'rows' || n === 'rowPrefix') return fc.oneof(fc.constantFrom(...pools.rows), str);
  if (n === 'column' || n === 'columns' || n === 'checkColumn' || n === 'columnPrefix') return fc.oneof(fc.constantFrom(...pools.columns), str);
  if (n === 'moveId' || n === 'operationId') return fc.oneof(fc.constantFrom('', 'mv-fuzz', 'op-fuzz', 'x'.repeat(300)), str);
  if (n === 'shardId' || n === 'server' || n === 'sourceShardId' || n === 'drain') return fc.oneof(fc.constantFrom('', 's99', ...pools.shardIds), str);
  if (n === 'address' || n === 'sourceAddress') {
    return fc.oneof(fc.constantFrom('', '127.0.0.1:1', 'not-an-address', ':0', '127.0.0.1:99999', '[::1]:1', 'host:port:extra', ...pools.addresses), str);
  }
  if (n === 'user') return fc.oneof(fc.constantFrom('reader', 'writer', 'admin', '', 'nobody'), str);
  if (n === 'password') return fc.oneof(fc.constantFrom('reader-pass', 'writer-pass', 'admin-pass', ''), str);
  if (n === 'requestId' || n === 'leaseId') return fc.oneof(fc.constantFrom('', 'req-fuzz', 'x'.repeat(1000)), str);
  return undefined;
}

const messageArbs = new Map<string, fc.Arbitrary<Record<string, unknown>>>();

function scalar(f: FieldDesc): fc.Arbitrary<unknown> {
  switch (f.type) {
    case 'TYPE_STRING':
      return str;
    case 'TYPE_BYTES':
      return bytes;
    case 'TYPE_UINT64':
    case 'TYPE_INT64':
      return u64;
    case 'TYPE_UINT32':
      return u32;
    case 'TYPE_DOUBLE':
    case 'TYPE_FLOAT':
      return dbl;
    case 'TYPE_BOOL':
      return fc.boolean();
    case 'TYPE_ENUM':
      return fc.integer({ min: -1, max: 9 });
    case 'TYPE_MESSAGE':
      return messageArb(f.typeName);
    default:
      throw new Error(`no generator for ${f.type} (${f.name})`);
  }
}

/** A message of the named type with every field optional and random. */
function messageArb(typeName: string): fc.Arbitrary<Record<string, unknown>> {
  const known = messageArbs.get(typeName);
  if (known) return known;
  const model: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of fieldsOf(typeName)) {
    const one = byName(f) ?? scalar(f);
    model[f.name] =
      f.label === 'LABEL_REPEATED'
        ? fc.oneof({ weight: 9, arbitrary: fc.array(one, { maxLength: 4 }) }, { weight: 1, arbitrary: fc.array(one, { minLength: 30, maxLength: 60 }) })
        : one;
  }
  const arb = fc.record(model, { requiredKeys: [] });
  messageArbs.set(typeName, arb);
  return arb;
}

type Payload =
  | { kind: 'message'; obj: Record<string, unknown> }
  | { kind: 'other message'; type: string; obj: Record<string, unknown> }
  | { kind: 'garbage'; bytes: Uint8Array }
  | { kind: 'truncated'; obj: Record<string, unknown>; cut: number }
  | { kind: 'empty' };

const REQUEST_TYPES = [...new Set(allRpcs().map((r) => r.requestType))];

function payloadArb(r: Rpc): fc.Arbitrary<Payload> {
  return fc.oneof(
    { weight: 14, arbitrary: messageArb(r.requestType).map((obj): Payload => ({ kind: 'message', obj })) },
    { weight: 2, arbitrary: fc.constantFrom(...REQUEST_TYPES).chain((type) => messageArb(type).map((obj): Payload => ({ kind: 'other message', type, obj }))) },
    { weight: 2, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 120 }).map((b): Payload => ({ kind: 'garbage', bytes: b })) },
    { weight: 1, arbitrary: fc.tuple(messageArb(r.requestType), fc.nat()).map(([obj, cut]): Payload => ({ kind: 'truncated', obj, cut })) },
    { weight: 1, arbitrary: fc.constant<Payload>({ kind: 'empty' }) },
  );
}

function encodePayload(r: Rpc, p: Payload): Buffer {
  switch (p.kind) {
    case 'message':
      return r.encode(p.obj);
    case 'other message':
      return encodeAs(p.type, p.obj);
    case 'garbage':
      return Buffer.from(p.bytes);
    case 'truncated': {
      const b = r.encode(p.obj);
      return b.subarray(0, b.length ? p.cut % b.length : 0);
    }
    case 'empty':
      return Buffer.alloc(0);
  }
}

// ---------------------------------------------------------------------------
// The cluster

let dir: string;
let cluster: ProcessCluster;
let sdk: CairnClient;
let admin: CairnClient;
const clients = new Map<string, Client>();
const serverHeader = () => header('server')!;

function clientAt(address: string): Client {
  let c = clients.get(address);
  if (!c) clients.set(address, (c = rawClient(address)));
  return c;
}

const rpcs = allRpcs();
/** The shard's two services (the data API and the internal control service) share its port. */
const isShardService = (s: ServiceName) => s === 'ShardService' || s === 'ShardControlService';

const rpcByName = (service: ServiceName, name: string) => rpcs.find((r) => r.service === service && r.name === name)!;

async function call<T>(service: ServiceName, name: string, req: object, address = cluster.masterAddress): Promise<T> {
  const r = rpcByName(service, name);
  const res = await invokeRaw(clientAt(address), r, r.encode(req), serverHeader());
  if (res.code !== status.OK) throw new Error(`${name}: ${status[res.code]} ${res.details}`);
  const def = packageDefinition()[`cairn.v1.${name}Response`] as unknown as { deserialize(b: Buffer): T };
  return def.deserialize(res.messages[0]!);
}

interface MapView {
  epoch: string;
  ranges?: Array<{ start?: string; end?: string; shardId?: string }>;
  shards?: Array<{ shardId?: string; address?: string }>;
  clusterId?: string;
}

async function currentMap(): Promise<ClusterMap> {
  const res = await call<{ map: MapView }>('MasterService', 'GetMap', {});
  return {
    epoch: BigInt(res.map.epoch ?? 0),
    ranges: (res.map.ranges ?? []).map((r) => ({ start: BigInt(r.start ?? 0), end: endFromProto(BigInt(r.end ?? 0)), shardId: r.shardId ?? '' })),
    shards: (res.map.shards ?? []).map((s) => ({ id: s.shardId ?? '', address: s.address ?? '' })),
    clusterId: res.map.clusterId ?? '',
  };
}

/** Everything a rejected request must leave alone. */
async function snapshot(): Promise<string> {
  // One snapshot per request: its parts are independent reads, so they go out together.
  const dataDigest = async () => {
    const h = createHash('sha256');
    for await (const row of sdk.scan('', { allVersions: true })) {
      h.update(row.row);
      for (const c of row.cells) h.update(`\u0000${c.column}\u0000${c.timestampUs}\u0000`).update(c.value);
    }
    return h.digest('hex');
  };
  const [map, servers, moves, data, buckets] = await Promise.all([
    currentMap(),
    admin.listServers().then((list) => list.map((s) => `${s.id}@${s.address}`).sort()),
    admin.admin((a) => a.listMoves, { all: true }).then((r) => r.moves.map((m) => `${m.id}:${m.state}`).sort()),
    dataDigest(),
    Promise.all(cluster.shards.map((s) => call('ShardControlService', 'GetBucketStats', {}, s.address))),
  ]);
  return JSON.stringify({
    epoch: map.epoch.toString(),
    ranges: map.ranges.map((r) => `${r.start}-${r.end}:${r.shardId}`),
    shards: map.shards.map((s) => `${s.id}@${s.address}`),
    servers,
    moves,
    data,
    buckets,
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cairn-fuzz-'));
  cluster = await ProcessCluster.start({ dir, shards: 2 });
  admin = await connectClient(cluster.masterAddress, 30_000, 'admin');
  await cluster.waitReady();
  const servers = await admin.listServers();
  pools.shardIds = servers.map((s) => s.id);
  pools.addresses = servers.map((s) => s.address);
  clusterId = (await currentMap()).clusterId;
  sdk = await connectClient(cluster.masterAddress, 30_000, 'rw');
  await sdk.put('fuzz/canary', { c: 'alive' });
  await sdk.put('fuzz/canary', { c: 'still alive', v: 'x' });
  await sdk.put('fuzz/r1', { c: 'one' });
  await sdk.lockRow('fuzz/lease', 600_000);
  // A row no generator names: it must read the same at the end.
  await sdk.put('guard/canary', { c: 'untouched' });
}, 60_000);

afterAll(async () => {
  for (const c of clients.values()) c.close();
  sdk?.close();
  admin?.close();
  await cluster?.stopAll();
  if (dir && !process.env.CAIRN_FUZZ_KEEP) rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// Taming: what only a trusted master sends during a move becomes harmless.

function owns(map: ClusterMap, shardId: string, start: bigint, end: bigint): boolean {
  return rangesOf(map, shardId).some((r) => r.start < end && start < r.end);
}

/**
 * Rewrites a request, as the server decoded it (ts-proto, bigints), that —
 * sent with a credential the RPC accepts — would start a real move, cut a
 * real shard off, or stop or re-address one. Returns undefined when nothing needs to change.
 */
function tame(r: Rpc, req: any, targetShardId: string, map: ClusterMap): any {
  const real = new Set([...pools.shardIds, ...pools.addresses]);
  switch (`${r.service}.${r.name}`) {
    case 'ShardControlService.StopShard':
      return real.has(req.shardId) ? { ...req, shardId: `not-${req.shardId}` } : undefined;
    case 'ShardControlService.PushMap': {
      if (!req.map) return undefined;
      const view = mapFromProto(req.map);
      return view.epoch > map.epoch && mapError(view) === null ? { ...req, map: { ...req.map, epoch: 1n } } : undefined;
    }
    case 'ShardControlService.TransferRange': {
      const start = req.start as bigint;
      const end = endFromProto(req.end as bigint);
      // A start off the bucket grid is refused before anything is fenced (start - 1 at the top of the space, where + 1 would not fit).
      return start < end && owns(map, targetShardId, start, end) ? { ...req, start: start + 1n < HASH_SPACE_END ? start + 1n : start - 1n } : undefined;
    }
    case 'ShardControlService.PullRange':
      return real.has(req.sourceAddress) ? { ...req, sourceAddress: '127.0.0.1:1' } : undefined;
    case 'MasterService.RegisterShard':
      return req.address ? { ...req, address: '' } : undefined;
    case 'AdminService.StartRebalance':
      // Would start real moves: a refused max_mbps keeps the request's other fields in play.
      return req.maxMbps >= 0 && req.maxMbps <= 1_000_000 ? { ...req, maxMbps: -1 } : undefined;
    case 'AdminService.DropServer':
      return real.has(req.server) ? { ...req, server: `not-${req.server}` } : undefined;
    case 'AdminService.RemoveServer':
      return real.has(req.server) ? { ...req, server: `not-${req.server}` } : undefined;
    case 'AdminService.SetReplicationFactor':
      // Would change the factor, and the master would then make or drop copies long after the call: refused instead.
      return req.factor >= 1 ? { ...req, factor: 0 } : undefined;
    case 'ShardService.Batch':
      // The stream is read up to its first answer message: with one call, every change it makes is in before the snapshot.
      return req.calls.length > 1 ? { ...req, calls: req.calls.slice(0, 1) } : undefined;
    case 'ShardControlService.Replicate': {
      // A message naming a real range could replace a copy (a snapshot): moved off the range's start.
      const start = req.start as bigint;
      return map.ranges.some((r) => r.start === start) ? { ...req, start: start + 1n < HASH_SPACE_END ? start + 1n : start - 1n } : undefined;
    }
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------------------
// The property

/** The message of a refusal that means "an unexpected exception": never allowed. */
const GENERIC_INTERNAL = 'internal error (see the server log)';
const PRECISE_ERRORS = new Set([
  status.INVALID_ARGUMENT,
  status.RESOURCE_EXHAUSTED,
  status.FAILED_PRECONDITION,
  status.NOT_FOUND,
  status.ABORTED,
  status.UNAVAILABLE,
  status.UNAUTHENTICATED,
  status.PERMISSION_DENIED,
]);

let sent = 0;
const perService = new Map<string, number>();
const codes = new Map<string, number>();

function describeCase(r: Rpc, token: TokenKind, p: Payload, res: RawResult): string {
  const body = JSON.stringify(p, (_k, v) => (v instanceof Uint8Array || (v && v.type === 'Buffer') ? `<${(v.length ?? v.data?.length) as number} bytes>` : typeof v === 'string' && v.length > 80 ? `${v.slice(0, 40)}…(${v.length} chars)` : v));
  return `${r.service}.${r.name} with ${token} token and ${p.kind} ${body.slice(0, 600)} → ${status[res.code]} ${JSON.stringify(res.details)}`;
}

async function fuzzOne(r: Rpc, token: TokenKind, p: Payload, shardIndex: number, before: { snap: string }): Promise<void> {
  const need = NEEDS[r.service](r.name);
  const target = isShardService(r.service) ? cluster.shards[shardIndex % cluster.shards.length]! : cluster.master;
  let payload = encodePayload(r, p);
  if (authRefusal(token, need, r.name) === undefined) {
    // What the server will decode: tame it if a trusted master would only send it during a move.
    let decoded: unknown;
    try {
      decoded = r.serverDecode(payload);
    } catch {
      decoded = undefined;
    }
    if (decoded) {
      const map = await currentMap();
      const targetId = pools.shardIds[pools.addresses.indexOf(target.address)] ?? '';
      const safe = tame(r, decoded, targetId, map);
      if (safe) payload = r.serverEncode(safe);
    }
  }
  // A watch with nothing new to say stays open: that is its answer.
  const watch = r.name === 'WatchMap' || r.name === 'WatchOperation';
  const res = await invokeRaw(clientAt(target.address), r, payload, header(token), 15_000, watch ? 200 : undefined);
  sent++;
  perService.set(r.service, (perService.get(r.service) ?? 0) + 1);
  codes.set(`${r.service} ${status[res.code]}`, (codes.get(`${r.service} ${status[res.code]}`) ?? 0) + 1);
  const what = describeCase(r, token, p, res);

  for (const n of cluster.all) if (!cluster.isRunning(n)) throw new Error(`${n.name} died after: ${what}`);
  // Refused by grpc before any handler ran: a message over the size limit.
  const oversized = res.code === status.RESOURCE_EXHAUSTED && /larger than max/.test(res.details);
  // Bytes that do not parse as the request message: INVALID_ARGUMENT naming it, once the credential passed.
  const undecodable = res.code === status.INVALID_ARGUMENT && new RegExp(`^request: the bytes are not a valid ${r.name} request message`).test(res.details);
  const unparsable = oversized || undecodable;
  if (res.code === status.INTERNAL) throw new Error(`INTERNAL (an unexpected exception on the server): ${what}`);
  if (res.code !== status.OK && !unparsable && !PRECISE_ERRORS.has(res.code)) throw new Error(`imprecise status: ${what}`);
  if (res.code !== status.OK && res.details.trim() === '') throw new Error(`an error without a message: ${what}`);
  if (res.details === GENERIC_INTERNAL) throw new Error(`generic internal error: ${what}`);
  if (p.kind === 'message' && undecodable) throw new Error(`a well-formed message did not parse: ${what}`);
  const refusal = authRefusal(token, need, r.name);
  if (refusal && !oversized) {
    if (res.code !== refusal.code || !refusal.message.test(res.details)) {
      throw new Error(`expected ${status[refusal.code]} ${refusal.message} for a ${token} token: ${what}`);
    }
  }
  const after = await snapshot();
  if (res.code !== status.OK && after !== before.snap) {
    throw new Error(`a rejected request changed stored state: ${what}\nbefore: ${before.snap}\nafter:  ${after}`);
  }
  before.snap = after;
}

describe('fuzzed requests', () => {
  for (const service of SERVICE_NAMES) {
    it(
      `${service}: ${RUNS} random requests to every RPC get precise statuses, crash nothing and change nothing when rejected`,
      async () => {
        const list = rpcs.filter((r) => r.service === service);
        const state = { snap: await snapshot() };
        const before = perService.get(service) ?? 0;
        await fc.assert(
          fc.asyncProperty(
            fc.constantFrom(...list).chain((r) => fc.tuple(fc.constant(r), tokenArb(r), payloadArb(r), fc.nat(1))),
            async ([r, token, p, shard]) => {
              await fuzzOne(r, token, p, shard, state);
            },
          ),
          { numRuns: RUNS, seed: SEED, endOnFailure: true },
        );
        expect((perService.get(service) ?? 0) - before).toBeGreaterThanOrEqual(RUNS);
      },
      RUNS * 200 + 120_000,
    );
  }

  it('every RPC refuses a message over the 16 MiB limit with RESOURCE_EXHAUSTED, and the servers keep serving', async () => {
    const state = { snap: await snapshot() };
    const huge = Buffer.alloc(16 * 1024 * 1024 + 64, 0x41);
    for (const r of rpcs) {
      const target = isShardService(r.service) ? cluster.shards[0]! : cluster.master;
      const res = await invokeRaw(clientAt(target.address), r, huge, serverHeader(), 60_000);
      expect({ rpc: r.name, code: status[res.code] }).toEqual({ rpc: r.name, code: 'RESOURCE_EXHAUSTED' });
      for (const n of cluster.all) expect(cluster.isRunning(n)).toBe(true);
    }
    expect(await snapshot()).toBe(state.snap);
    expect((await sdk.getValue('guard/canary', 'c'))?.toString()).toBe('untouched');
  }, 180_000);

  it('extreme but well-formed payloads get the limit that applies, and change nothing', async () => {
    const state = { snap: await snapshot() };
    const write = rpcByName('ShardService', 'WriteRows');
    const read = rpcByName('ShardService', 'ReadRows');
    const rw = header('rw');
    const cases: Array<{ name: string; r: Rpc; req: object; code: status; message: RegExp }> = [
      { name: 'a 15 MiB value', r: write, req: { rows: [{ row: 'fuzz/big', cells: [{ column: 'c', value: Buffer.alloc(15 << 20) }] }] }, code: status.INVALID_ARGUMENT, message: /maxValueBytes/ },
      { name: '20,000 cells', r: write, req: { rows: [{ row: 'fuzz/many', cells: Array.from({ length: 20_000 }, (_, i) => ({ column: `c${i}`, value: Buffer.from('x') })) }] }, code: status.RESOURCE_EXHAUSTED, message: /maxCellsPerCall/ },
      { name: '20,000 rows of one cell', r: write, req: { rows: Array.from({ length: 20_000 }, (_, i) => ({ row: `fuzz/m${i}`, cells: [{ column: 'c', value: Buffer.from('x') }] })) }, code: status.RESOURCE_EXHAUSTED, message: /maxCellsPerCall/ },
      { name: 'a 70,000-byte row key', r: write, req: { rows: [{ row: 'k'.repeat(70_000), cells: [{ column: 'c', value: Buffer.from('x') }] }] }, code: status.INVALID_ARGUMENT, message: /maxKeyBytes/ },
      { name: 'an empty row list', r: write, req: { rows: [] }, code: status.INVALID_ARGUMENT, message: /rows/ },
      { name: 'reading 100,000 rows', r: read, req: { rows: Array.from({ length: 100_000 }, (_, i) => `fuzz/q${i}`) }, code: status.RESOURCE_EXHAUSTED, message: /100000.*maxCellsPerCall/ },
      { name: 'reading rows with an empty key among them', r: read, req: { rows: ['fuzz/r1', ''] }, code: status.INVALID_ARGUMENT, message: /rows\[1\]/ },
    ];
    for (const c of cases) {
      const res = await invokeRaw(clientAt(cluster.shards[0]!.address), c.r, c.r.encode(c.req), rw, 60_000);
      expect({ case: c.name, code: status[res.code] }).toEqual({ case: c.name, code: status[c.code] });
      expect(res.details).toMatch(c.message);
    }
    expect(await snapshot()).toBe(state.snap);
  }, 120_000);

  it('no handler logged an unexpected error', () => {
    const unexpected: string[] = [];
    for (const f of readdirSync(join(dir, 'logs'))) {
      for (const line of readFileSync(join(dir, 'logs', f), 'utf8').split('\n')) {
        if (/unexpected error/.test(line)) unexpected.push(`${f}: ${line.slice(0, 500)}`);
      }
    }
    process.stdout.write(`fuzz: ${sent} requests (${[...perService].map(([s, n]) => `${s}=${n}`).join(' ')}); statuses ${[...codes].sort().map(([k, n]) => `${k}=${n}`).join(', ')}\n`);
    expect(unexpected).toEqual([]);
  });
});

/** Bugs the fuzz found in services/, fixed, and kept as regression tests. */
describe('bugs the fuzz found', () => {
  it('ScanRows with a malformed resume_token is INVALID_ARGUMENT naming it, not a generic INTERNAL', async () => {
    const r = rpcByName('ShardService', 'ScanRows');
    for (const token of [Buffer.from('garbage!!'), Buffer.from([1])]) {
      const res = await invokeRaw(clientAt(cluster.shards[0]!.address), r, r.encode({ rowPrefix: '', resumeToken: token }), header('r'));
      expect({ code: status[res.code], details: res.details }).toEqual({ code: 'INVALID_ARGUMENT', details: expect.stringMatching(/resume/i) });
    }
  });

  it('Heartbeat refuses counts the master cannot add up and report, and inverted ranges, and ListServers keeps working', async () => {
    const hb = rpcByName('MasterService', 'Heartbeat');
    const real = pools.shardIds[0]!;
    const bad = [
      { shardId: real, epoch: '1', ranges: [{ start: '0', end: '0', rows: '18446744073709551615', bytes: '5' }] },
      { shardId: real, epoch: '1', ranges: [{ start: '5', end: '3', rows: '1', bytes: '1' }] },
    ];
    for (const req of bad) {
      const res = await invokeRaw(clientAt(cluster.masterAddress), hb, hb.encode(req), serverHeader());
      expect({ code: status[res.code], details: res.details }).toEqual({ code: 'INVALID_ARGUMENT', details: expect.stringMatching(/^ranges\[0\]/) });
    }
    const ls = rpcByName('AdminService', 'ListServers');
    expect(status[(await invokeRaw(clientAt(cluster.masterAddress), ls, ls.encode({}), header('admin'))).code]).toBe('OK');
  });

  it('a refusal that quotes megabytes of input answers with a bounded message, and the master keeps serving', async () => {
    // A 200,000-character status message stalled the master's event loop for good.
    const add = rpcByName('AdminService', 'AddServer');
    const res = await invokeRaw(clientAt(cluster.masterAddress), add, add.encode({ address: `${'y'.repeat(200_000)}:x` }), header('admin'), 30_000);
    expect({ code: status[res.code], details: res.details }).toEqual({ code: 'INVALID_ARGUMENT', details: expect.stringMatching(/^address: 200002 characters/) });
    const bad = await invokeRaw(clientAt(cluster.masterAddress), add, add.encode({ address: 'no-port-here' }), header('admin'));
    expect({ code: status[bad.code], details: bad.details }).toEqual({ code: 'INVALID_ARGUMENT', details: expect.stringMatching(/^address: expected host:port/) });
    const ls = rpcByName('AdminService', 'ListServers');
    expect(status[(await invokeRaw(clientAt(cluster.masterAddress), ls, ls.encode({}), header('admin'))).code]).toBe('OK');
  });

  it('a write timestamp above 2^63 - 1 is refused by name, so the shard clock keeps room for fresh writes', async () => {
    // A cell at 2^64 - 1 moved the clock to its end: the next clock-assigned write failed with INTERNAL.
    const cam = rpcByName('ShardService', 'CheckAndMutate');
    const req = { row: 'fuzz/clock', checkColumn: 'c', expectAbsent: true, cells: [{ column: 'a' }, { column: 'b', timestampUs: '18446744073709551615', value: Buffer.from('x') }] };
    for (const shard of cluster.shards) {
      const res = await invokeRaw(clientAt(shard.address), cam, cam.encode(req), header('rw'));
      expect({ code: status[res.code], details: res.details }).toEqual({ code: 'INVALID_ARGUMENT', details: expect.stringMatching(/^cells\[1\]\.timestampUs: 18446744073709551615 is above 9223372036854775807/) });
    }
    await sdk.put('fuzz/clock', { c: 'fresh' });
    expect((await sdk.getValue('fuzz/clock', 'c'))?.toString()).toBe('fresh');
  });

  it('bytes that are not the request message get INVALID_ARGUMENT naming the message, once the credential passed', async () => {
    const garbage = Buffer.from([0xff, 0xff, 0xff, 0xff]);
    const cases: Array<[Rpc, string, string | undefined]> = [
      [rpcByName('ShardService', 'WriteRows'), cluster.shards[0]!.address, header('rw')],
      [rpcByName('AdminService', 'ListServers'), cluster.masterAddress, header('admin')],
    ];
    for (const [r, address, auth] of cases) {
      const res = await invokeRaw(clientAt(address), r, garbage, auth);
      expect({ code: status[res.code], details: res.details }).toEqual({ code: 'INVALID_ARGUMENT', details: expect.stringMatching(new RegExp(`^request: the bytes are not a valid ${r.name} request message`)) });
      expect(status[(await invokeRaw(clientAt(address), r, garbage, undefined)).code]).toBe('UNAUTHENTICATED');
    }
  });

  it('StartRebalance and DropServer refuse an infinite or uint64-overflowing max_mbps instead of starting moves that all abort', async () => {
    for (const [name, extra] of [
      ['StartRebalance', {}],
      ['DropServer', { server: 'not-a-shard' }],
    ] as const) {
      const r = rpcByName('AdminService', name);
      for (const maxMbps of [Number.POSITIVE_INFINITY, 1e300]) {
        const res = await invokeRaw(clientAt(cluster.masterAddress), r, r.encode({ ...extra, maxMbps }), header('admin'));
        expect({ rpc: name, maxMbps, code: status[res.code] }).toEqual({ rpc: name, maxMbps, code: 'INVALID_ARGUMENT' });
      }
    }
  });
});
