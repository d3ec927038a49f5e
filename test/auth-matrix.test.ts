/**
 * The auth matrix: every RPC of every service (Master, Shard, Shard control,
 * Admin) × every
 * way a credential can be wrong → the exact status, and the message that
 * says which check failed (docs/design.md "Security": a bad token
 * gets UNAUTHENTICATED, too low a role PERMISSION_DENIED; internal calls
 * need the server credential).
 *
 * Columns: no token; a malformed header; a malformed token; a token signed
 * with another cluster's credential; a token whose claims were edited (role
 * raised to server) after signing; an expired token; a role one below what
 * the RPC needs; and, on internal calls, every client role (the server
 * credential is missing) and a server token minted from another credential.
 * A positive control checks that every role at or above the need gets past
 * authentication. The request bodies are the same in every column, so a
 * refusal comes from the credential alone; they are chosen to do nothing
 * lasting when accepted.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { status, type Client } from '@grpc/grpc-js';
import { deriveTokenKey, mintToken, ROLES, type Role } from '../services/common/auth.js';
import { startInProcCluster, TEST_CREDENTIAL, USERS, type InProcCluster } from './harness/inproc.js';
import { login } from './harness/raw.js';
import { allRpcs, invokeRaw, rawClient, type Rpc } from './nemesis/rpc.js';

/** What each RPC needs (null: no token, Login and GetMasterStatus), from the proto docs and docs/design.md "Security". */
const NEEDS: Record<string, Role | null> = {
  'MasterService.RegisterShard': 'server',
  'MasterService.Heartbeat': 'server',
  'MasterService.GetMap': 'r',
  'MasterService.WatchMap': 'r',
  'MasterService.Login': null,
  'MasterService.GetMasterStatus': null,
  'MasterService.GetMoveStatus': 'server',
  'ShardService.WriteRows': 'rw',
  'ShardService.ReadRow': 'r',
  'ShardService.ReadRows': 'r',
  'ShardService.ScanRows': 'r',
  'ShardService.DeleteRow': 'rw',
  'ShardService.DeleteCells': 'rw',
  'ShardService.CheckAndMutate': 'rw',
  'ShardService.LockRow': 'rw',
  'ShardService.ExtendLease': 'rw',
  'ShardService.UnlockRow': 'rw',
  // The stream needs a valid token to open; each call on it is then checked for its own role (batch-stream.test.ts).
  'ShardService.Batch': 'r',
  'ShardControlService.PushMap': 'server',
  'ShardControlService.PullRange': 'server',
  'ShardControlService.TransferRange': 'server',
  'ShardControlService.AckTransfer': 'server',
  'ShardControlService.AbortMove': 'server',
  'ShardControlService.DropRange': 'server',
  'ShardControlService.GetMoveState': 'server',
  'ShardControlService.Replicate': 'server',
  'ShardControlService.GetBucketStats': 'server',
  'ShardControlService.StopShard': 'server',
  'ShardControlService.DescribeShard': 'server',
  'AdminService.ListServers': 'admin',
  'AdminService.GetRanges': 'admin',
  'AdminService.PlanRebalance': 'admin',
  'AdminService.StartRebalance': 'admin',
  'AdminService.DropServer': 'admin',
  'AdminService.RemoveServer': 'admin',
  'AdminService.AddServer': 'admin',
  'AdminService.SyncMap': 'admin',
  'AdminService.ListMoves': 'admin',
  'AdminService.WatchOperation': 'admin',
  'AdminService.RecoverMove': 'admin',
  'AdminService.Reload': 'admin',
  'AdminService.SetReplicationFactor': 'admin',
};

/** Request bodies that change nothing lasting when accepted (invalid ones are refused after auth). */
const BODIES: Record<string, object> = {
  'MasterService.RegisterShard': { shardId: '', address: '' },
  'MasterService.Heartbeat': { shardId: '' },
  'MasterService.GetMap': {},
  'MasterService.WatchMap': { minEpoch: '0' },
  'MasterService.Login': { user: 'reader', password: 'reader-pass' },
  'MasterService.GetMoveStatus': { moveId: 'mv-auth-matrix' },
  'MasterService.GetMasterStatus': {},
  'ShardService.WriteRows': { requestId: 'auth-matrix', rows: [{ row: 'auth/row', cells: [{ column: 'c', value: Buffer.from('v') }] }] },
  'ShardService.ReadRow': { row: 'auth/row' },
  'ShardService.ReadRows': { rows: ['auth/row'] },
  'ShardService.ScanRows': { rowPrefix: 'auth/', limit: 1 },
  'ShardService.DeleteRow': { row: 'auth/none' },
  'ShardService.DeleteCells': { row: 'auth/none', columns: ['c'] },
  'ShardService.CheckAndMutate': { row: 'auth/none', checkColumn: 'c', expectAbsent: true, cells: [] },
  'ShardService.LockRow': { row: 'auth/lock', leaseMs: 0 },
  'ShardService.ExtendLease': { row: 'auth/lock', leaseId: 'nope', leaseMs: 1000 },
  'ShardService.UnlockRow': { row: 'auth/lock', leaseId: 'nope' },
  'ShardService.Batch': { calls: [] },
  'ShardControlService.PushMap': {},
  'ShardControlService.PullRange': { moveId: '' },
  'ShardControlService.TransferRange': { moveId: '' },
  'ShardControlService.AckTransfer': { moveId: '' },
  'ShardControlService.AbortMove': { moveId: '' },
  'ShardControlService.DropRange': { moveId: '' },
  'ShardControlService.GetMoveState': { moveId: 'mv-auth-matrix' },
  // No shard has this range: with a server token it is answered (STALE), and changes nothing.
  'ShardControlService.Replicate': { start: 1n, end: 2n, version: 0n, primary: 'auth-matrix' },
  'ShardControlService.GetBucketStats': {},
  'ShardControlService.StopShard': { shardId: 'not-this-shard' },
  'ShardControlService.DescribeShard': {},
  'AdminService.ListServers': {},
  'AdminService.GetRanges': {},
  'AdminService.PlanRebalance': {},
  'AdminService.StartRebalance': { maxMbps: -1 },
  'AdminService.DropServer': { server: '' },
  'AdminService.RemoveServer': { server: '' },
  'AdminService.AddServer': { address: 'not-an-address' },
  'AdminService.SyncMap': {},
  'AdminService.ListMoves': {},
  'AdminService.WatchOperation': { operationId: 'op-none' },
  'AdminService.RecoverMove': { moveId: '' },
  'AdminService.Reload': {},
  // Refused (factor 0) after the auth check: the matrix changes no factor.
  'AdminService.SetReplicationFactor': { factor: 0 },
};

const KEY = deriveTokenKey(TEST_CREDENTIAL);
const OTHER_KEY = deriveTokenKey('another-cluster-credential-0123456789');
/** The cluster's id: every token carries it (claim cid); servers refuse tokens of another cluster. */
let clusterId = '';
const token = (role: Role, key = KEY, ttlMs = 600_000, now = Date.now(), cid = clusterId) =>
  mintToken(key, `auth-${role}`, role, ttlMs, now, cid).token;
const bearer = (t: string) => `Bearer ${t}`;

/** A valid token with its claims edited to role server, keeping the old signature. */
function tampered(): string {
  const [v, , sig] = token('r').split('.');
  const claims = Buffer.from(JSON.stringify({ sub: 'auth-r', role: 'server', iat: Date.now(), exp: Date.now() + 600_000 })).toString('base64url');
  return `${v}.${claims}.${sig}`;
}

interface Expect {
  code: status;
  message: RegExp;
}

interface Column {
  name: string;
  /** The header to send for an RPC needing `need`, or null when the column does not apply. */
  header: (need: Role) => string | undefined | null;
  expect: (need: Role, method: string) => Expect;
}

const below = (need: Role): Role | undefined => ROLES[ROLES.indexOf(need) - 1];
const unauth = (message: RegExp): Expect => ({ code: status.UNAUTHENTICATED, message });
const denied = (have: Role, need: Role, method: string): Expect => ({
  code: status.PERMISSION_DENIED,
  message: new RegExp(`role ${have} may not call ${method} \\(needs ${need}\\)`),
});

const COLUMNS: Column[] = [
  { name: 'no token', header: () => undefined, expect: () => unauth(/missing token/) },
  { name: 'malformed header', header: () => 'Basic YWRtaW46YWRtaW4tcGFzcw==', expect: () => unauth(/malformed authorization header/) },
  { name: 'malformed token', header: () => bearer('not-a-token'), expect: () => unauth(/malformed token/) },
  { name: 'bad signature', header: (need) => bearer(token(need, OTHER_KEY)), expect: () => unauth(/bad signature/) },
  { name: 'claims edited after signing', header: () => bearer(tampered()), expect: () => unauth(/bad signature/) },
  { name: 'expired', header: (need) => bearer(token(need, KEY, 1000, Date.now() - 60_000)), expect: () => unauth(/expired/) },
  {
    name: 'too-low role',
    header: (need) => (below(need) ? bearer(token(below(need)!)) : null),
    expect: (need, method) => denied(below(need)!, need, method),
  },
  {
    name: 'server credential missing: admin client token',
    header: (need) => (need === 'server' ? bearer(token('admin')) : null),
    expect: (need, method) => denied('admin', need, method),
  },
  {
    name: 'server credential missing: rw client token',
    header: (need) => (need === 'server' ? bearer(token('rw')) : null),
    expect: (need, method) => denied('rw', need, method),
  },
  {
    name: 'server credential missing: r client token',
    header: (need) => (need === 'server' ? bearer(token('r')) : null),
    expect: (need, method) => denied('r', need, method),
  },
  {
    name: 'client token of another cluster sharing the credential',
    header: (need) => (need === 'server' ? null : bearer(token(need, KEY, 600_000, Date.now(), 'c-00000000000000ff'))),
    expect: () => unauth(/token was issued by cluster c-00000000000000ff, and this server belongs to cluster c-/),
  },
  {
    name: 'client token issued before the cluster had an id',
    header: (need) => (need === 'server' ? null : bearer(token(need, KEY, 600_000, Date.now(), ''))),
    expect: () => unauth(/token was issued before cluster c-[0-9a-f]+ had an id/),
  },
  {
    name: 'server credential missing: server token from another credential',
    header: (need) => (need === 'server' ? bearer(token('server', OTHER_KEY)) : null),
    expect: () => unauth(/bad signature/),
  },
];

let cluster: InProcCluster;
let masterClient: Client;
let shardClient: Client;

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2 });
  clusterId = cluster.master.master.clusterId;
  masterClient = rawClient(cluster.masterAddress);
  shardClient = rawClient(cluster.shards[0]!.address);
});
afterAll(async () => {
  masterClient.close();
  shardClient.close();
  await cluster.stop();
});

const rpcs = allRpcs();
const clientFor = (r: Rpc) => (r.service === 'ShardService' || r.service === 'ShardControlService' ? shardClient : masterClient);
const id = (r: Rpc) => `${r.service}.${r.name}`;

describe('auth matrix', () => {
  it('covers every RPC of every service', () => {
    expect(rpcs.map(id).sort()).toEqual(Object.keys(NEEDS).sort());
    expect(Object.keys(BODIES).sort()).toEqual(Object.keys(NEEDS).sort());
  });

  const guarded = rpcs.filter((r) => NEEDS[id(r)] !== null);
  const cells = guarded.flatMap((r) => COLUMNS.filter((c) => c.header(NEEDS[id(r)]!) !== null).map((c) => ({ rpc: id(r), column: c.name, r, c })));

  it.each(cells)('$rpc × $column', async ({ r, c }) => {
    const need = NEEDS[id(r)]!;
    const want = c.expect(need, r.name);
    const got = await invokeRaw(clientFor(r), r, r.encode(BODIES[id(r)]!), c.header(need)!);
    expect({ code: status[got.code], details: got.details }).toEqual({ code: status[want.code], details: expect.stringMatching(want.message) });
  });

  const controls = guarded.flatMap((r) => ROLES.filter((role) => ROLES.indexOf(role) >= ROLES.indexOf(NEEDS[id(r)]!)).map((role) => ({ rpc: id(r), role, r })));

  it.each(controls)('$rpc × role $role gets past authentication', async ({ r, role }) => {
    const got = await invokeRaw(clientFor(r), r, r.encode(BODIES[id(r)]!), bearer(token(role)));
    expect([status.UNAUTHENTICATED, status.PERMISSION_DENIED, status.INTERNAL, status.UNKNOWN]).not.toContain(got.code);
  });

  const internal = guarded.filter((r) => r.service === 'ShardControlService' && r.name !== 'DescribeShard');
  const foreign = internal.flatMap((r) => [
    { rpc: id(r), cid: 'c-00000000000000ff', r },
    { rpc: id(r), cid: '', r },
  ]);

  it.each(foreign)('$rpc with a valid server token of cluster "$cid" is refused: the shard belongs to another cluster', async ({ r, cid }) => {
    const got = await invokeRaw(clientFor(r), r, r.encode(BODIES[id(r)]!), bearer(token('server', KEY, 600_000, Date.now(), cid)));
    expect({ code: status[got.code], details: got.details }).toEqual({ code: 'FAILED_PRECONDITION', details: expect.stringMatching(`this shard belongs to cluster ${clusterId}`) });
  });

  // The master's internal RPCs (RegisterShard aside: admission() refuses another cluster's shard with more to say).
  const masterInternal = guarded.filter((r) => r.service === 'MasterService' && NEEDS[id(r)] === 'server' && r.name !== 'RegisterShard');

  it.each(masterInternal.map((r) => ({ rpc: id(r), r })))('$rpc with a valid server token of another cluster is refused: the master belongs to another cluster', async ({ r }) => {
    const got = await invokeRaw(clientFor(r), r, r.encode(BODIES[id(r)]!), bearer(token('server', KEY, 600_000, Date.now(), 'c-00000000000000ff')));
    expect({ code: status[got.code], details: got.details }).toEqual({ code: 'FAILED_PRECONDITION', details: expect.stringMatching(`this master's cluster is ${clusterId}`) });
  });

  it('ShardControlService.DescribeShard answers a server token with no cluster id (what `cairn master rebuild` holds)', async () => {
    const r = rpcs.find((x) => id(x) === 'ShardControlService.DescribeShard')!;
    const got = await invokeRaw(shardClient, r, r.encode({}), bearer(token('server', KEY, 600_000, Date.now(), '')));
    expect(status[got.code]).toBe('OK');
  });

  it.each(COLUMNS.map((c) => ({ column: c.name, c })))('MasterService.Login ignores the credential column "$column": a right password logs in', async ({ c }) => {
    const r = rpcs.find((x) => id(x) === 'MasterService.Login')!;
    const header = c.header('server') ?? c.header('r') ?? undefined;
    const got = await invokeRaw(masterClient, r, r.encode(BODIES['MasterService.Login']!), header);
    expect(status[got.code]).toBe('OK');
  });

  it('MasterService.Login with a wrong password or an unknown user is UNAUTHENTICATED, with one message for both', async () => {
    const r = rpcs.find((x) => id(x) === 'MasterService.Login')!;
    const wrong = await invokeRaw(masterClient, r, r.encode({ user: 'reader', password: 'nope' }), undefined);
    const unknown = await invokeRaw(masterClient, r, r.encode({ user: 'nobody', password: 'nope' }), undefined);
    expect([status[wrong.code], wrong.details]).toEqual(['UNAUTHENTICATED', 'login failed: unknown user or wrong password']);
    expect([status[unknown.code], unknown.details]).toEqual(['UNAUTHENTICATED', 'login failed: unknown user or wrong password']);
  });
});

describe('the shard control service', () => {
  const control = rpcs.filter((r) => r.service === 'ShardControlService');

  it('is where the internal RPCs live: the data service has only the data RPCs', () => {
    expect(control.map((r) => r.name).sort()).toEqual(
      ['AbortMove', 'AckTransfer', 'DescribeShard', 'DropRange', 'GetBucketStats', 'GetMoveState', 'PullRange', 'PushMap', 'Replicate', 'StopShard', 'TransferRange'].sort(),
    );
    for (const r of rpcs.filter((x) => x.service === 'ShardService')) expect({ rpc: r.name, need: NEEDS[id(r)] }).toEqual({ rpc: r.name, need: expect.stringMatching(/^rw?$/) });
  });

  it.each(USERS.map((u) => ({ user: u.user, role: u.role })))('refuses every call with the client credential of $user (role $role), logged in at the master', async ({ user, role }) => {
    const t = await login(cluster.masterAddress, user, USERS.find((u) => u.user === user)!.password);
    for (const r of control) {
      const got = await invokeRaw(shardClient, r, r.encode(BODIES[id(r)]!), bearer(t));
      expect({ rpc: r.name, code: status[got.code], details: got.details }).toEqual({ rpc: r.name, code: 'PERMISSION_DENIED', details: `role ${role} may not call ${r.name} (needs server)` });
    }
  });

  it('the data service no longer offers the internal RPCs: each answers UNIMPLEMENTED there, even to a server token', async () => {
    for (const r of control) {
      const onData = { ...r, path: r.path.replace('/cairn.v1.ShardControlService/', '/cairn.v1.ShardService/') };
      expect(onData.path).toBe(`/cairn.v1.ShardService/${r.name}`);
      const got = await invokeRaw(shardClient, onData, r.encode(BODIES[id(r)]!), bearer(token('server')));
      expect({ rpc: r.name, code: status[got.code] }).toEqual({ rpc: r.name, code: 'UNIMPLEMENTED' });
    }
  });
});
