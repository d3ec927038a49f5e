/**
 * Replication under faults, with real processes (issue 13's fault acceptance
 * points): 3 shards with replicationFactor 3, lease 1000 ms, ack timeout
 * 1500 ms, the harness's shardDownAfterMs 2000 ms. One cluster for the file;
 * each test leaves it whole again (every range with three in-sync members).
 *
 * - a paused primary (SIGSTOP past its lease): a follower is promoted, writes
 *   are acknowledged again; after SIGCONT the old primary acknowledges
 *   nothing and serves no stale read, then rejoins as a follower;
 * - a paused follower: writes go on once it is out of the in-sync set; after
 *   SIGCONT it catches up and rejoins;
 * - the master down: every range keeps serving through the SDK's cached map;
 *   a primary dying meanwhile holds its range's writes until the master is back
 *   (three of these found product defects, since fixed: a restarted or resumed master judging shards before they
 *   could report, a stopping master judging them while it drained, and the SDK giving up on a slow map refresh);
 * - below minInSync (two of three shards down): writes are refused with
 *   UNAVAILABLE, nothing acknowledged is lost, writes resume once a replica
 *   returns.
 *
 * Times are printed (console.log), never asserted.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { status } from '@grpc/grpc-js';
import { CairnClient } from '../services/client/index.js';
import { CairnError } from '../services/common/errors.js';
import { rowHash } from '../services/common/hash.js';
import { startProcCluster, waitUntil, type Proc, type ProcCluster, type RangeJson } from './harness/cluster.js';
import { USERS } from './harness/inproc.js';
import { login, rawCall, shardClient } from './harness/raw.js';

const WRITER = USERS.find((u) => u.role === 'rw')!;
let cluster: ProcCluster;
let client: CairnClient;
let failed = false;


const mapJson = async (): Promise<{ epoch: bigint; ranges: RangeJson[] }> => {
  const { json } = await cluster.ctl(['ranges', '--json']);
  return { epoch: BigInt(json.epoch), ranges: json.ranges };
};
const ranges = async (): Promise<RangeJson[]> => (await mapJson()).ranges;
const inRange = (r: RangeJson, row: string) => BigInt(r.start) <= rowHash(row) && rowHash(row) < BigInt(r.end);
const rangeOfRow = (all: RangeJson[], row: string) => all.find((r) => inRange(r, row))!;
const allInSync = async () => (await ranges()).every((r) => r.inSync.length === 3);

/** Shard id -> its current process (ids from `ctl servers`, matched by address). */
async function procOf(id: string): Promise<Proc> {
  const { json } = await cluster.ctl(['servers', '--json']);
  const address = json.servers.find((s: { id: string }) => s.id === id).address as string;
  return cluster.shards.find((p) => p.address === address)!;
}
async function idOf(p: Proc): Promise<string> {
  const { json } = await cluster.ctl(['servers', '--json']);
  return json.servers.find((s: { address: string }) => s.address === p.address).id;
}

/** The first `n` keys `tag-0`, `tag-1`, … in the range. */
function rowsOf(r: RangeJson, tag: string, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) if (inRange(r, `${tag}-${i}`)) out.push(`${tag}-${i}`);
  return out;
}

/** Every write acknowledged so far in this file: row -> value. Checked at the end of each test. */
const acked = new Map<string, string>();
async function put(row: string, value: string, timeoutMs = 30_000): Promise<void> {
  await client.put(row, { v: value }, { timeoutMs });
  acked.set(row, value);
}
/** Rows with a write neither acknowledged nor refused (its client gave up or is still waiting): either value may be read. */
const unsettled = new Map<string, string>();
async function checkAcked(c: CairnClient = client): Promise<void> {
  for (const [row, value] of acked) {
    const got = (await c.getValue(row, 'v', { timeoutMs: 30_000 }))?.toString();
    expect([row, got === unsettled.get(row) ? value : got]).toEqual([row, value]);
  }
}

/**
 * Puts until acknowledged, each attempt with a short deadline: an attempt sent to a paused process waits
 * for its whole deadline (the SDK has no per-attempt timeout), the next one routes by the pushed map.
 */
async function putSoon(row: string, value: string, totalMs = 30_000): Promise<number> {
  const until = Date.now() + totalMs;
  let attempts = 0;
  for (;;) {
    attempts++;
    try {
      await put(row, value, 1500);
      return attempts;
    } catch (err) {
      if (Date.now() > until) throw err;
    }
  }
}

const cellValue = (cells: Array<{ column: string; value: Uint8Array }> | undefined) => {
  const v = cells?.find((x) => x.column === 'v')?.value;
  return v === undefined ? undefined : Buffer.from(v).toString();
};

/** Until every shard runs and every range has three in-sync members again. */
async function whole(): Promise<void> {
  for (const s of cluster.driver.all) cluster.driver.resume(s);
  if (!cluster.driver.isRunning(cluster.driver.master)) await cluster.restart(cluster.master);
  for (const p of [...cluster.shards]) if (p.child.exitCode !== null || p.child.signalCode !== null) await cluster.restart(p);
  await waitUntil(allInSync, 60_000, 'every range in sync on three members');
}

const raceTimeout = <T>(p: Promise<T>, ms: number): Promise<'pending' | { ok: T } | { err: unknown }> =>
  Promise.race([p.then((ok) => ({ ok }), (err) => ({ err })), new Promise<'pending'>((r) => setTimeout(() => r('pending'), ms))]);

beforeAll(async () => {
  const t0 = Date.now();
  cluster = await startProcCluster({ shards: 3, masterArgs: ['--replication-factor', '3'], env: { CAIRN_REPLICA_LEASE_MS: '1000', CAIRN_REPLICA_ACK_TIMEOUT_MS: '1500' } });
  // watch: the map is pushed (a call sent to a paused process is answered only once it runs again, so a
  // client waiting for WRONG_SHARD would not learn of the failover meanwhile).
  client = await CairnClient.connect({ master: cluster.masterAddress, user: WRITER.user, password: WRITER.password, timeoutMs: 20_000, watch: true });
  await waitUntil(allInSync, 30_000, 'every range in sync');
  console.log(`faults: cluster of 3 shards, factor 3, in sync after ${Date.now() - t0} ms`);
}, 90_000);

afterAll(async () => {
  client?.close();
  const keep = process.env.KEEP_LOGS;
  if (cluster && keep && (failed || process.env.KEEP_LOGS_ALWAYS)) await import('node:fs/promises').then((fs) => fs.cp(`${cluster.dir}/logs`, keep, { recursive: true }));
  await cluster?.cleanup();
}, 30_000);

/** Marks the file failed (logs kept with KEEP_LOGS) when the body throws. */
const track = <T>(fn: () => Promise<T>) => async () => {
  try {
    await fn();
  } catch (err) {
    failed = true;
    throw err;
  }
};

describe('a paused primary (SIGSTOP past its lease)', () => {
  it('is replaced: a follower is promoted, writes are acknowledged again; after SIGCONT it acknowledges nothing, serves no stale read, and rejoins as a follower', track(async () => {
    const before = await mapJson();
    const row = 'pp-0';
    const r0 = rangeOfRow(before.ranges, row);
    const oldId = r0.shard;
    const old = await procOf(oldId);
    const oldServer = cluster.driver.shards.find((s) => s.proc === old)!;
    const others = rowsOf(r0, 'pp', 20).filter((x) => x !== row);
    await put(row, 'v1');
    const token = await login(cluster.masterAddress, WRITER.user, WRITER.password);

    // A client without the map watch: its call goes to the paused primary and waits there.
    const plain = await CairnClient.connect({ master: cluster.masterAddress, user: WRITER.user, password: WRITER.password, timeoutMs: 60_000 });
    await plain.getValue(row, 'v');

    const pausedAt = Date.now();
    cluster.driver.pause(oldServer);
    const plainPut = plain.put(others[0]!, { v: 'plain' }).then(
      () => ({ ok: Date.now() - pausedAt }),
      (err: CairnError) => ({ err: `${err.code}: ${err.message}`, at: Date.now() - pausedAt }),
    );
    const attempts = await putSoon(row, 'v2', 30_000);
    const gapMs = Date.now() - pausedAt;
    const after = await mapJson();
    const r1 = rangeOfRow(after.ranges, row);
    console.log(`faults: paused primary ${oldId}: ${r1.shard} promoted; writes to its range acknowledged again ${gapMs} ms after SIGSTOP (attempt ${attempts}; epoch ${before.epoch} -> ${after.epoch})`);
    expect(r1.shard).not.toBe(oldId);
    expect(r1.inSync).not.toContain(oldId);
    for (const [i, x] of others.slice(1).entries()) await put(x, `p-${i}`);
    await put(row, 'v3');

    // Sent while it is stopped, so they are the first thing it sees after SIGCONT: the old epoch, as a client
    // that has not heard of the failover would send them.
    const c = shardClient(old.address);
    try {
      const staleRead = rawCall(c, c.readRow, { row, epoch: before.epoch, filter: undefined }, token);
      const staleWrite = rawCall(c, c.writeRows, { epoch: before.epoch, requestId: 'pp-stale-write', sync: false, rows: [{ row, replace: false, cells: [{ column: 'v', timestampUs: 0n, value: Buffer.from('stale') }] }] }, token);
      await new Promise((r) => setTimeout(r, 300));
      const resumedAt = Date.now();
      cluster.driver.resume(oldServer);
      const read = await staleRead;
      const write = await staleWrite;
      const show = (x: { res?: unknown; err?: { code: number; details: string } }) => (x.err ? `${status[x.err.code]}: ${x.err.details}` : 'OK');
      console.log(`faults: old primary after SIGCONT (${Date.now() - resumedAt} ms): read at old epoch -> ${show(read)}; write at old epoch -> ${show(write)}`);
      // A read either fails or returns what is acknowledged now (never v1 or v2).
      if (read.res) expect(cellValue(read.res.cells)).toBe('v3');
      // A write with the old epoch is not acknowledged by the deposed primary.
      expect(write.err).toBeDefined();
      expect(write.res).toBeUndefined();
      // For a while after SIGCONT, reads at the old epoch never return anything stale.
      const outcomes = new Map<string, number>();
      const until = Date.now() + 2000;
      while (Date.now() < until) {
        const again = await rawCall(c, c.readRow, { row, epoch: before.epoch, filter: undefined }, token);
        if (again.res) expect(cellValue(again.res.cells)).toBe('v3');
        const k = again.err ? status[again.err.code]! : 'OK';
        outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
        await new Promise((r) => setTimeout(r, 50));
      }
      console.log(`faults: reads at the old epoch on the old primary in the 2 s after SIGCONT: ${JSON.stringify(Object.fromEntries(outcomes))}`);
      // The row was not overwritten by the refused write.
      expect((await client.getValue(row, 'v'))?.toString()).toBe('v3');
      const p = await plainPut;
      console.log(`faults: a put by a client without the map watch, sent when the primary was paused: ${'ok' in p ? `acknowledged ${p.ok} ms after SIGSTOP` : `${p.err} after ${p.at} ms`} (SIGCONT at ${resumedAt - pausedAt} ms)`);
      if ('ok' in p) acked.set(others[0]!, 'plain');
      plain.close();

      await waitUntil(async () => rangeOfRow(await ranges(), row).inSync.includes(oldId), 60_000, `${oldId} back in the in-sync set of its old range`);
      console.log(`faults: the old primary ${oldId} back in sync as a follower ${Date.now() - resumedAt} ms after SIGCONT`);
      const now = rangeOfRow(await ranges(), row);
      expect(now.shard).not.toBe(oldId);
      expect(now.replicas).toContain(oldId);
    } finally {
      c.close();
    }
    await waitUntil(allInSync, 60_000, 'every range in sync');
    await checkAcked();
  }), 120_000);
});

describe('a paused follower', () => {
  it('is taken out of the in-sync set so writes go on; after SIGCONT it catches up and rejoins; every acknowledged write is readable', track(async () => {
    await whole();
    const all = await ranges();
    // A shard that follows the range of 'pf-0' (each shard is also some range's primary: that range fails over too).
    const r0 = rangeOfRow(all, 'pf-0');
    const fid = r0.replicas.find((s) => s !== r0.shard)!;
    const f = await procOf(fid);
    const fServer = cluster.driver.shards.find((s) => s.proc === f)!;
    const followed = all.filter((r) => r.shard !== fid);
    const pausedAt = Date.now();
    cluster.driver.pause(fServer);
    // Writes to the ranges it follows (their primaries are up): acknowledged once it is out of their in-sync sets.
    let first = 0;
    for (const [k, r] of followed.entries()) {
      for (const [i, x] of rowsOf(r, `pf${k}`, 20).entries()) {
        await put(x, `f-${k}-${i}`);
        if (!first) first = Date.now() - pausedAt;
      }
    }
    const during = await ranges();
    console.log(`faults: paused follower ${fid}: first write to a range it follows acknowledged ${first} ms after SIGSTOP; 40 writes done ${Date.now() - pausedAt} ms after`);
    for (const r of during) if (r.shard !== fid) expect(r.inSync).not.toContain(fid);
    const resumedAt = Date.now();
    cluster.driver.resume(fServer);
    await waitUntil(async () => (await ranges()).every((r) => r.inSync.includes(fid)), 60_000, `${fid} back in every in-sync set`);
    console.log(`faults: the paused follower ${fid} back in every in-sync set ${Date.now() - resumedAt} ms after SIGCONT`);
    await checkAcked();
  }), 120_000);
});

describe('the master down', () => {
  let c2: CairnClient | undefined;
  afterAll(() => c2?.close());
  const master = () => cluster.driver.master;
  /** A client without the map watch, connected while the master is up: it routes by its cached map. */
  const connect = async (): Promise<CairnClient> => {
    c2?.close();
    c2 = await CairnClient.connect({ master: cluster.masterAddress, user: WRITER.user, password: WRITER.password, timeoutMs: 5000 });
    return c2;
  };
  /** Writes then reads 10 rows in every range through `c`; returns how long it took. */
  const serveAll = async (c: CairnClient, all: RangeJson[], tag: string): Promise<number> => {
    const t = Date.now();
    const rows: Array<[string, string]> = [];
    for (const [k, r] of all.entries()) for (const [i, x] of rowsOf(r, `${tag}${k}`, 10).entries()) rows.push([x, `${tag}-${k}-${i}`]);
    for (const [x, v] of rows) {
      await c.put(x, { v });
      acked.set(x, v);
    }
    for (const [x, v] of rows) expect((await c.getValue(x, 'v'))?.toString()).toBe(v);
    return Date.now() - t;
  };
  const groupChanges = (from: number) => cluster.master.logs.filter((l) => l.message === 'replica group changed' && Date.parse(String(l.timestamp)) >= from).map((l) => String(l.change));

  it('paused (SIGSTOP): every range keeps serving reads and writes through the SDK\'s cached map', track(async () => {
    await whole();
    const all = await ranges();
    const c = await connect();
    const pausedAt = Date.now();
    cluster.driver.pause(master());
    // Longer than shardDownAfterMs and the lease: nothing may depend on the master meanwhile.
    await new Promise((r) => setTimeout(r, 3000));
    const ms = await serveAll(c, all, 'ms');
    console.log(`faults: master paused: 30 writes and reads over ${all.length} ranges done in ${ms} ms (${Date.now() - pausedAt} ms after SIGSTOP)`);
    await checkAcked(c);
    const resumedAt = Date.now();
    cluster.driver.resume(master());
    await new Promise((r) => setTimeout(r, 2000));
    const back = await ranges();
    console.log(`faults: master resumed; within 2 s: ${back.filter((r, i) => r.shard !== all[i]!.shard).length} primaries changed, in-sync sizes ${back.map((r) => r.inSync.length).join(',')}; group changes: ${JSON.stringify(groupChanges(resumedAt - 100))}`);
    await waitUntil(allInSync, 60_000, 'every range in sync');
    console.log(`faults: every range in sync ${Date.now() - resumedAt} ms after the master's SIGCONT`);
  }), 120_000);

  /** The master goes down (`how`), then the primary of the range of 'mp-…' dies; a write to it must wait for the master. */
  const primaryDiesWhileMasterDown = async (how: 'SIGKILL' | 'SIGSTOP', tag: string) => {
    await whole();
    const all = await ranges();
    const c = await connect();
    const row = `${tag}-0`;
    const r0 = rangeOfRow(all, row);
    await c.put(row, { v: 'before' });
    acked.set(row, 'before');
    if (how === 'SIGSTOP') cluster.driver.pause(master());
    else await cluster.stop(cluster.master, 'SIGKILL');
    const victim = cluster.shards.find((p) => p.address === r0.address)!;
    const killedAt = Date.now();
    await cluster.stop(victim, 'SIGKILL');
    const pending = c.put(row, { v: 'after' }, { timeoutMs: 60_000 });
    pending.catch(() => undefined); // judged below; it may end while other calls are awaited
    unsettled.set(row, 'after');
    // The other ranges have the dead shard as an in-sync follower that only the master can remove: say what they do.
    // (After earlier failovers one shard may be the primary of every range: then there is no other range to ask.)
    const other = all.find((r) => r.shard !== r0.shard);
    const say = (x: 'pending' | { ok: unknown } | { err: unknown }) => (x === 'pending' ? 'pending' : 'ok' in x ? 'ok' : `${(x.err as CairnError).code}: ${(x.err as Error).message}`);
    if (other) {
      const otherWrite = await raceTimeout(c.put(rowsOf(other, `${tag}o`, 1)[0]!, { v: 'other' }, { timeoutMs: 3000 }), 4000);
      const otherRead = await raceTimeout(c.getValue(rowsOf(other, 'ms', 1)[0]!, 'v', { timeoutMs: 3000 }), 4000);
      console.log(`faults: master down (${how}), primary ${r0.shard} killed: another range (primary ${other.shard}) write -> ${say(otherWrite)}; read -> ${say(otherRead)}`);
      if (typeof otherWrite === 'object' && 'ok' in otherWrite) acked.set(rowsOf(other, `${tag}o`, 1)[0]!, 'other');
    }
    const state = await raceTimeout(pending, Math.max(0, killedAt + 8000 - Date.now()));
    console.log(`faults: write to the dead primary's range ${Date.now() - killedAt} ms after kill -9, master down (${how}): ${say(state)}`);
    if (state !== 'pending' && how === 'SIGSTOP') {
      // The SDK gave up (see the defect below). What the master does once it runs again, for the report:
      const at = Date.now();
      cluster.driver.resume(master());
      await new Promise((r) => setTimeout(r, 6000));
      const r1 = rangeOfRow(await ranges(), row);
      console.log(`faults: 6 s after the master's SIGCONT the dead primary's range has primary ${r1.shard}, in-sync ${r1.inSync.join(',')}; group changes: ${JSON.stringify(groupChanges(at - 100))}`);
    }
    expect(state).toBe('pending');

    const backAt = Date.now();
    if (how === 'SIGSTOP') cluster.driver.resume(master());
    else await cluster.restart(cluster.master);
    const done = await raceTimeout(pending, 20_000);
    const r1 = rangeOfRow(await ranges(), row);
    console.log(`faults: the waiting write: ${say(done)} ${Date.now() - backAt} ms after the master was back (${Date.now() - killedAt} ms after kill -9); its range now: primary ${r1.shard}, in-sync ${r1.inSync.join(',')}; group changes: ${JSON.stringify(groupChanges(backAt - 100))}`);
    expect(typeof done === 'object' && 'ok' in done).toBe(true);
    acked.set(row, 'after');
    unsettled.delete(row);
    expect(rangeOfRow(await ranges(), row).shard).not.toBe(r0.shard);
    await cluster.restart(victim);
    await waitUntil(allInSync, 60_000, 'every range in sync');
    await checkAcked(c);
  };

  // DEFECT (services/master/master.ts:121 with membership.ts:284-287 and failover.ts:69-72): a restarted master
  // has heard no heartbeat yet, so Membership.isUp is false for every shard (its `live` table starts empty; the
  // shards' channels reconnect with grpc backoff, seconds later), and its failover pass starts at once, with no
  // grace (the registration has one: membership.ts:227). Its first pass finds every primary down with no in-sync
  // follower up to promote, then takes every follower out of every in-sync set. The range whose primary died is
  // left with the dead shard as its only in-sync member: no replica can ever be promoted (never one outside the
  // in-sync set), so its writes never resume until that very shard returns. (Every other range also drops below
  // minInSync for a few seconds, until its followers rejoin.)
  it('killed, then a primary dies: writes to its range wait until the master is back, then resume', track(() => primaryDiesWhileMasterDown('SIGKILL', 'mk')), 150_000);

  // DEFECT (SDK: services/client/calls.ts:110-115 and retry.ts:88-96, with map-cache.ts:36): the write to the dead
  // primary gets UNREACHABLE, so the SDK refreshes its map; the GetMap to the paused master is capped at the
  // client's timeoutMs (5 s here) and ends with DEADLINE_EXCEEDED, which classify() calls not retryable: the write
  // fails after ~5 s although its own deadline is 60 s ("a down master is worth waiting for" holds only for a
  // master that refuses connections). It never waits for the master to come back.
  it('paused, then a primary dies: writes to its range wait until the master is back, then resume', track(() => primaryDiesWhileMasterDown('SIGSTOP', 'mp')), 150_000);

  // DEFECT (services/master/master.ts:121-133 with services/common/server.ts:125-131): on SIGTERM the master first
  // drains its calls for up to shutdownGraceMs (5 s; an SDK client's WatchMap stream keeps it waiting the whole
  // grace), refusing new ones, heartbeats included, while its failover pass (every 250 ms, cleared only in
  // Master.close(), after the drain) keeps running. Past shardDownAfterMs every shard looks down, so the stopping
  // master commits and pushes a map taking every follower out of every in-sync set: each range is left with one
  // in-sync member, below minInSync, and every write is refused with UNAVAILABLE for as long as the master stays down.
  // (When the shards' last heartbeats are staggered, the same pass may also promote a follower over a live primary.)
  // The master's startProcessServer call (services/master/server.ts) passes no onStop that would end the pass.
  it('stopped (SIGTERM): every range keeps serving reads and writes through the SDK\'s cached map', track(async () => {
    await whole();
    const all = await ranges();
    const c = await connect();
    const stoppedAt = Date.now();
    await cluster.stop(cluster.master, 'SIGTERM');
    console.log(`faults: master stopped (SIGTERM) in ${Date.now() - stoppedAt} ms; group changes while it stopped: ${JSON.stringify(groupChanges(stoppedAt))}`);
    try {
      const ms = await serveAll(c, all, 'mt');
      console.log(`faults: master stopped: 30 writes and reads over ${all.length} ranges done in ${ms} ms`);
    } catch (err) {
      console.log(`faults: master stopped: a write failed: ${(err as CairnError).code}: ${(err as Error).message}`);
      throw err;
    } finally {
      await cluster.restart(cluster.master);
      await waitUntil(allInSync, 60_000, 'every range in sync').catch(() => undefined);
    }
  }), 120_000);
});

describe('below minInSync (two of three shards down)', () => {
  it('refuses writes with UNAVAILABLE, loses nothing acknowledged, and takes writes again once a replica returns', track(async () => {
    await whole();
    const [a, b, survivor] = cluster.shards as [Proc, Proc, Proc];
    const sid = await idOf(survivor);
    const downAt = Date.now();
    await Promise.all([cluster.stop(a, 'SIGKILL'), cluster.stop(b, 'SIGKILL')]);
    await waitUntil(async () => (await ranges()).every((r) => r.shard === sid && r.inSync.length === 1), 30_000, `${sid} the only in-sync member of every range`);
    console.log(`faults: two shards killed; ${sid} the only in-sync member of every range after ${Date.now() - downAt} ms`);
    // Reads of what was acknowledged are still served (one member holds every acknowledged write).
    await checkAcked();
    const t = Date.now();
    let err: CairnError | undefined;
    try {
      await client.put('mi-0', { v: 'refused' }, { timeoutMs: 2000 });
    } catch (e) {
      err = e as CairnError;
    }
    console.log(`faults: a write with one in-sync member: ${err ? `${err.code}: ${err.message}` : 'acknowledged'} after ${Date.now() - t} ms`);
    expect(err).toBeDefined();
    expect(err!.code).toBe('NOT_READY'); // gRPC UNAVAILABLE
    expect(err!.message).toMatch(/minInSync/);

    const backAt = Date.now();
    await cluster.restart(a);
    await put('mi-0', 'resumed', 60_000);
    console.log(`faults: a write acknowledged again ${Date.now() - backAt} ms after one replica was restarted`);
    await cluster.restart(b);
    await waitUntil(allInSync, 60_000, 'every range in sync');
    await checkAcked();
  }), 150_000);
});
