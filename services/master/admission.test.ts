/**
 * The master's admission rules (docs/design.md "Membership": cluster
 * identity, one live session per shard id), through the real Master on a
 * real LevelDB in a temp dir, calling register and heartbeat in-process as
 * the gRPC service does. Shard addresses are 127.0.0.2 with low ports, where
 * no test process listens (they bind 127.0.0.1:0): the master's map pushes to
 * them fail, as they would to a shard that is down, and reach no other test.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { status as Status } from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { quietLogger, TEST_CREDENTIAL } from '../../test/harness/inproc.js';
import { CairnError, fromServiceError, toServiceError, type ErrorReason } from '../common/errors.js';
import { Master, type MasterOptions, type ShardHello } from './master.js';
import { MasterStore } from './store.js';

// Long enough that opening a master on a loaded CI machine stays inside its restart window; short enough to wait out.
const DOWN_AFTER_MS = 1000;
const CLUSTER_ID_RE = /^c-[0-9a-f]{16}$/;
const FIXTURE_MASTER = resolve('test/fixtures/v0-cluster/master');

const dirs: string[] = [];
const open: Master[] = [];

afterEach(async () => {
  for (const m of open.splice(0)) await m.close().catch(() => undefined);
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cairn-admission-'));
  dirs.push(d);
  return d;
}

async function openMaster(dataDir: string, o: Partial<MasterOptions> = {}): Promise<Master> {
  const m = await Master.open({
    dataDir,
    serverCredential: TEST_CREDENTIAL,
    clients: [],
    expectShards: 1,
    tokenTtlSeconds: 900,
    heartbeatIntervalMs: 100,
    shardDownAfterMs: DOWN_AFTER_MS,
    maxMessageBytes: 4 * 1024 * 1024,
    log: quietLogger(),
    ...o,
  });
  open.push(m);
  return m;
}

async function closeMaster(m: Master): Promise<void> {
  open.splice(open.indexOf(m), 1);
  await m.close();
}

let port = 1;
/** A hello from a shard process: a fresh session at a closed port unless told otherwise. */
function hello(o: Partial<ShardHello> = {}): ShardHello {
  return { shardId: '', address: `127.0.0.2:${port++}`, clusterId: '', epoch: 0n, generation: 1, sessionId: randomBytes(12).toString('hex'), ...o };
}

const beat = (m: Master, shardId: string, sessionId: string, epoch = m.epoch) =>
  m.heartbeat(shardId, { sessionId, epoch, ranges: [], opsPerSec: 0, stopping: false });

/** The CairnError a call throws: code PRECONDITION with `reason` (and so FAILED_PRECONDITION on the wire, with the reason in a trailer). */
async function refused(p: Promise<unknown> | (() => unknown), reason: ErrorReason): Promise<CairnError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(CairnError);
  const e = err as CairnError;
  expect({ code: e.code, reason: e.details.reason }).toEqual({ code: 'PRECONDITION', reason });
  const wire = toServiceError(e);
  expect(wire.code).toBe(Status.FAILED_PRECONDITION);
  const back = fromServiceError(wire);
  expect({ code: back.code, reason: back.details.reason, retryAfterMs: back.details.retryAfterMs }).toEqual({ code: 'PRECONDITION', reason, retryAfterMs: e.details.retryAfterMs });
  return e;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits (real time) until the master shows the shard down: silent for longer than shardDownAfterMs. */
async function untilDown(m: Master, id: string): Promise<void> {
  const until = Date.now() + 10_000;
  while (m.listServers().find((s) => s.id === id)?.status !== 'down') {
    if (Date.now() > until) throw new Error(`${id} never shown down`);
    await sleep(25);
  }
}

/** A master whose cluster formed with one shard (s1), and that shard's hello. */
async function formed(): Promise<{ m: Master; dir: string; s1: ShardHello & { shardId: string } }> {
  const dir = await tempDir();
  const m = await openMaster(dir);
  const h = hello({ generation: 5 });
  const { shardId } = await m.register(h);
  expect(shardId).toBe('s1');
  expect(m.epoch).toBe(1n);
  return { m, dir, s1: { ...h, shardId, clusterId: m.clusterId, epoch: m.epoch } };
}

describe('a master with no state', () => {
  it('refuses a shard that holds a cluster id, naming the id, its epoch and `cairn master rebuild`; forms nothing', async () => {
    const dir = await tempDir();
    const m = await openMaster(dir, { expectShards: 1 });
    const e = await refused(m.register(hello({ shardId: 's2', clusterId: 'c-5eed5eed5eed5eed', epoch: 7n })), 'CLUSTER_MISMATCH');
    expect(e.message).toContain('c-5eed5eed5eed5eed');
    expect(e.message).toContain('epoch 7');
    expect(e.message).toContain('cairn master rebuild');
    expect(m.currentMap().epoch).toBe(0n);
    expect(m.clusterId).toBe('');
    expect(m.listServers()).toEqual([]);
    // Nothing of it was written either.
    await closeMaster(m);
    const store = await MasterStore.open(dir);
    try {
      expect(await store.load()).toEqual({ clusterId: '', map: undefined, shards: [], nextShardNumber: 1, removed: [] });
    } finally {
      await store.close();
    }
  });

  it('refuses a shard with a map epoch > 0 and no cluster id (formed before ids): it belongs to a cluster too', async () => {
    const m = await openMaster(await tempDir(), { expectShards: 1 });
    const e = await refused(m.register(hello({ shardId: 's1', epoch: 4n })), 'CLUSTER_MISMATCH');
    expect(e.message).toContain('epoch 4');
    expect(e.message).toContain('cairn master rebuild');
    // Refused again on retry, still with nothing formed, even though expectShards (1) hellos arrived.
    await refused(m.register(hello({ epoch: 4n })), 'CLUSTER_MISMATCH');
    expect(m.currentMap().epoch).toBe(0n);
    expect(m.clusterId).toBe('');
    expect(m.listServers()).toEqual([]);
    // A fresh shard is welcome and gets s1.
    expect((await m.register(hello())).shardId).toBe('s1');
    expect(m.epoch).toBe(1n);
  });
});

describe('forming', () => {
  it('forms with expectShards fresh shards and gives the cluster an id, carried in the map and kept across a restart', async () => {
    const dir = await tempDir();
    const m = await openMaster(dir, { expectShards: 2 });
    const a = await m.register(hello());
    expect(a.shardId).toBe('s1');
    expect(a.map.epoch).toBe(0n);
    expect(m.clusterId).toBe('');
    const b = await m.register(hello());
    expect(b.shardId).toBe('s2');
    expect(m.clusterId).toMatch(CLUSTER_ID_RE);
    expect(m.currentMap()).toMatchObject({ epoch: 1n, clusterId: m.clusterId });
    expect(b.map.clusterId).toBe(m.clusterId);
    expect(new Set(m.currentMap().ranges.map((r) => r.shardId))).toEqual(new Set(['s1', 's2']));
    const id = m.clusterId;
    await closeMaster(m);
    const again = await openMaster(dir, { expectShards: 2 });
    expect(again.clusterId).toBe(id);
    expect(again.currentMap()).toMatchObject({ epoch: 1n, clusterId: id });
  });

  it('two masters forming two clusters get two ids', async () => {
    const one = await formed();
    const two = await formed();
    expect(one.m.clusterId).not.toBe(two.m.clusterId);
  });
});

describe('a restarted master', () => {
  it('shows a shard it has not heard from yet as unknown, not down, until it could have heard from it', async () => {
    // Defect (bench:master-failover): a standby that had just taken over listed every shard down ("0 up").
    const { m, dir, s1 } = await formed();
    await closeMaster(m);
    const again = await openMaster(dir);
    expect(again.listServers().map((s) => [s.id, s.status])).toEqual([['s1', 'unknown']]);
    await untilDown(again, 's1'); // silent for longer than shardDownAfterMs: down
    await again.register({ ...s1, shardId: 's1', clusterId: again.clusterId, epoch: again.epoch });
    expect(again.listServers().map((s) => [s.id, s.status])).toEqual([['s1', 'up']]);
  });
});

describe('a formed master', () => {
  it('refuses a shard of another cluster, naming both ids, even one that claims a known shard id; nothing changes', async () => {
    const { m, s1 } = await formed();
    const before = m.listServers().map((s) => ({ id: s.id, address: s.address }));
    const e = await refused(m.register(hello({ shardId: 's1', clusterId: 'c-0000000000000bad', epoch: 3n })), 'CLUSTER_MISMATCH');
    expect(e.message).toContain('c-0000000000000bad');
    expect(e.message).toContain(m.clusterId);
    await refused(m.register(hello({ clusterId: 'c-0000000000000bad', epoch: 3n })), 'CLUSTER_MISMATCH');
    expect(m.listServers().map((s) => ({ id: s.id, address: s.address }))).toEqual(before);
    expect(m.epoch).toBe(1n);
    expect(() => beat(m, 's1', s1.sessionId)).not.toThrow();
  });

  it('refuses a shard of its own cluster under an id it never gave out', async () => {
    const { m } = await formed();
    const e = await refused(m.register(hello({ shardId: 's9', clusterId: m.clusterId, epoch: 1n })), 'CLUSTER_MISMATCH');
    expect(e.message).toContain('s9');
    expect(m.listServers().map((s) => s.id)).toEqual(['s1']);
  });

  it('refuses a removed id with SHARD_REMOVED, and never hands it out again', async () => {
    const { m } = await formed();
    const s2 = hello();
    expect((await m.register(s2)).shardId).toBe('s2');
    expect(await m.removeServer('s2')).toMatchObject({ shardId: 's2', stopped: false }); // nothing listens at its address
    const e = await refused(m.register({ ...s2, shardId: 's2', clusterId: m.clusterId, epoch: m.epoch }), 'SHARD_REMOVED');
    expect(e.message).toContain('s2');
    // A new process on a copy of its directory (another session, higher generation) is refused the same way.
    await refused(m.register({ ...s2, shardId: 's2', clusterId: m.clusterId, epoch: m.epoch, generation: 9, sessionId: 'other' }), 'SHARD_REMOVED');
    expect(() => beat(m, 's2', s2.sessionId)).toThrow(expect.objectContaining({ code: 'NOT_FOUND' }));
    expect((await m.register(hello())).shardId).toBe('s3');
    expect(m.listServers().map((s) => s.id)).toEqual(['s1', 's3']);
  });

  it('admits the same session registering again (a retry), changing nothing', async () => {
    const { m, s1 } = await formed();
    const epoch = m.epoch;
    const again = await m.register(s1);
    expect(again.shardId).toBe('s1');
    expect(again.map.epoch).toBe(epoch);
    expect(m.listServers()).toMatchObject([{ id: 's1', address: s1.address, status: 'up' }]);
  });

  it('refuses a second session for a live shard id with SESSION_CONFLICT and a retryAfterMs; nothing changes', async () => {
    const { m, dir, s1 } = await formed();
    beat(m, 's1', s1.sessionId);
    const copy = { ...s1, address: '127.0.0.2:999', generation: s1.generation + 1, sessionId: 'a-copy-of-its-directory' };
    const e = await refused(m.register(copy), 'SESSION_CONFLICT');
    expect(e.details.retryAfterMs).toBeGreaterThan(0);
    expect(e.details.retryAfterMs).toBeLessThanOrEqual(DOWN_AFTER_MS + 100);
    expect(e.message).toContain('s1');
    expect(m.listServers()).toMatchObject([{ id: 's1', address: s1.address, status: 'up' }]);
    expect(m.currentMap().shards).toEqual([{ id: 's1', address: s1.address }]);
    expect(m.epoch).toBe(1n);
    // The first session carries on; the refused one cannot heartbeat in its place.
    expect(() => beat(m, 's1', s1.sessionId)).not.toThrow();
    await refused(() => beat(m, 's1', copy.sessionId), 'SESSION_SUPERSEDED');
    // And nothing of it was written: the registry on disk still points at the first.
    await closeMaster(m);
    const back = await openMaster(dir);
    expect(back.listServers().map((s) => ({ id: s.id, address: s.address }))).toEqual([{ id: 's1', address: s1.address }]);
    expect(() => beat(back, 's1', s1.sessionId)).not.toThrow();
  });

  it('lets a newer generation take over once the first session has been silent longer than shardDownAfterMs; the old one is then superseded', async () => {
    const { m, dir, s1 } = await formed();
    await untilDown(m, 's1');
    const restored = { ...s1, address: '127.0.0.2:998', generation: s1.generation + 1, sessionId: 'restored' };
    const r = await m.register(restored);
    expect(r.shardId).toBe('s1');
    expect(m.listServers()).toMatchObject([{ id: 's1', address: restored.address, status: 'up' }]);
    expect(m.currentMap().shards).toEqual([{ id: 's1', address: restored.address }]); // a new address is a new map
    expect(m.epoch).toBe(2n);
    const e = await refused(() => beat(m, 's1', s1.sessionId), 'SESSION_SUPERSEDED');
    expect(e.message).toContain('s1');
    expect(() => beat(m, 's1', restored.sessionId)).not.toThrow();
    // The old session trying to register again is now the second session for a live id.
    await refused(m.register(s1), 'SESSION_CONFLICT');
    // The takeover is durable.
    await closeMaster(m);
    const back = await openMaster(dir);
    expect(back.listServers().map((s) => s.address)).toEqual([restored.address]);
    expect(() => beat(back, 's1', restored.sessionId)).not.toThrow();
    await refused(() => beat(back, 's1', s1.sessionId), 'SESSION_SUPERSEDED');
  });

  it('never admits a generation older than the admitted one, however long the first has been silent', async () => {
    const { m, s1 } = await formed();
    await untilDown(m, 's1');
    const stale = { ...s1, address: '127.0.0.2:997', generation: s1.generation - 1, sessionId: 'stale-copy' };
    const e = await refused(m.register(stale), 'SESSION_CONFLICT');
    expect(e.details.retryAfterMs).toBeUndefined(); // not worth a retry: the shard stops
    expect(e.message).toContain(`generation ${stale.generation}`);
    expect(e.message).toContain(`generation ${s1.generation}`);
    expect(m.listServers()).toMatchObject([{ id: 's1', address: s1.address, status: 'down' }]);
    expect(m.epoch).toBe(1n);
    await refused(() => beat(m, 's1', stale.sessionId), 'SESSION_SUPERSEDED');
    // The admitted session itself is still welcome back.
    expect((await m.register(s1)).shardId).toBe('s1');
  });

  it('never admits an equal generation in another session: a copy made before the admitted process started', async () => {
    const { m, s1 } = await formed();
    await untilDown(m, 's1');
    const copy = { ...s1, address: '127.0.0.2:996', sessionId: 'same-generation-copy' };
    const e = await refused(m.register(copy), 'SESSION_CONFLICT');
    expect(e.details.retryAfterMs).toBeUndefined();
    expect(m.listServers()).toMatchObject([{ id: 's1', address: s1.address }]);
  });

  it('a master rebuilt from the shards (generations recorded, no session yet) refuses a copy older than the generation it recorded', async () => {
    const dir = await tempDir();
    const first = await openMaster(dir);
    const h = hello({ generation: 9 });
    await first.register(h);
    const clusterId = first.clusterId;
    await closeMaster(first);
    // What `cairn master rebuild` writes: the registry with each shard's generation and no session.
    const store = await MasterStore.open(dir);
    const st = await store.load();
    await store.save({ ...st, map: st.map!, shards: st.shards.map((x) => ({ id: x.id, address: x.address, registeredAtMs: x.registeredAtMs, generation: 9 })) });
    await store.close();
    const m = await openMaster(dir);
    const old = hello({ shardId: 's1', clusterId, epoch: 1n, generation: 2, sessionId: 'old-copy' });
    await refused(m.register(old), 'SESSION_CONFLICT');
    expect((await m.register({ ...h, shardId: 's1', clusterId, epoch: 1n })).shardId).toBe('s1');
  });
});

describe('right after a master restart', () => {
  it('refuses a different session until shardDownAfterMs has passed, and accepts the admitted session\'s heartbeat at once', async () => {
    const { m, dir, s1 } = await formed();
    beat(m, 's1', s1.sessionId);
    await closeMaster(m);

    const back = await openMaster(dir);
    const next = { ...s1, generation: s1.generation + 1, sessionId: 'after-restart' };
    const e = await refused(back.register(next), 'SESSION_CONFLICT');
    expect(e.message).toMatch(/restarted/);
    expect(e.details.retryAfterMs).toBeGreaterThan(0);
    expect(e.details.retryAfterMs).toBeLessThanOrEqual(DOWN_AFTER_MS + 100);
    expect(back.listServers()).toMatchObject([{ id: 's1', status: 'unknown' }]);
    // The admitted session knows nothing of the restart: its next heartbeat is simply accepted.
    expect(() => beat(back, 's1', s1.sessionId)).not.toThrow();
    expect(back.listServers()).toMatchObject([{ id: 's1', address: s1.address, status: 'up' }]);
    await refused(back.register(next), 'SESSION_CONFLICT');
    await closeMaster(back);

    // Once the window has passed with no word from the admitted session, the newer one takes over.
    const third = await openMaster(dir);
    const refusedNow = await refused(third.register(next), 'SESSION_CONFLICT');
    await sleep(refusedNow.details.retryAfterMs!);
    expect((await third.register(next)).shardId).toBe('s1');
    await refused(() => beat(third, 's1', s1.sessionId), 'SESSION_SUPERSEDED');
  });

  it('admits the admitted session registering again at once', async () => {
    const { m, dir, s1 } = await formed();
    await closeMaster(m);
    const back = await openMaster(dir);
    expect((await back.register(s1)).shardId).toBe('s1');
    expect(back.epoch).toBe(1n);
  });
});

describe('state written before cluster ids (test/fixtures/v0-cluster/master)', () => {
  it('gets a cluster id minted at open, persisted: the same id after a reopen', async () => {
    const dir = join(await tempDir(), 'master');
    await cp(FIXTURE_MASTER, dir, { recursive: true });
    const before = await MasterStore.open(dir);
    const old = await before.load();
    await before.close();
    expect(old.clusterId).toBe('');
    expect(old.map?.epoch).toBe(4n);

    const m = await openMaster(dir, { expectShards: 2 });
    const id = m.clusterId;
    expect(id).toMatch(CLUSTER_ID_RE);
    expect(m.currentMap()).toMatchObject({ epoch: 4n, clusterId: id });
    expect(m.currentMap().ranges).toEqual(old.map!.ranges);
    expect(m.listServers().map((s) => s.id)).toEqual(['s1', 's2', 's3']);
    await closeMaster(m);

    const store = await MasterStore.open(dir);
    try {
      expect((await store.load()).clusterId).toBe(id);
    } finally {
      await store.close();
    }
    const again = await openMaster(dir, { expectShards: 2 });
    expect(again.clusterId).toBe(id);
    expect(again.currentMap().clusterId).toBe(id);
  });

  it('admits its own shards (no id, epoch 4, first session since the upgrade) and hands them the id; refuses ids it does not know', async () => {
    const dir = join(await tempDir(), 'master');
    await cp(FIXTURE_MASTER, dir, { recursive: true });
    const m = await openMaster(dir, { expectShards: 2 });
    // At the address the fixture's map names, so no new map is committed and pushed to the fixture's
    // other (long gone, 127.0.0.1 ephemeral) addresses, where another test's shard may listen now.
    const address = m.currentMap().shards.find((s) => s.id === 's2')!.address;
    const s2 = hello({ shardId: 's2', epoch: 4n, address });
    const r = await m.register(s2);
    expect(r.shardId).toBe('s2');
    expect(r.map.clusterId).toBe(m.clusterId);
    expect(m.epoch).toBe(4n);
    expect(() => beat(m, 's2', s2.sessionId)).not.toThrow();
    expect(m.listServers().find((s) => s.id === 's2')).toMatchObject({ address, status: 'up' });
    await refused(m.register(hello({ shardId: 's7', epoch: 4n })), 'CLUSTER_MISMATCH');
  });
});
