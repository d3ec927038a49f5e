/**
 * Issue 14, item 2 (its fencing core): on a real etcd, a master that lost
 * its leadership writes nothing, even while it still believes it leads, and
 * a write whose answer is lost is settled from etcd's state.
 *
 * - A leader idle past its lease TTL still leads (the lease is kept alive).
 * - Two Leaderships, A and B, campaign on one prefix; A wins. A's leadership
 *   ends behind its back (its lease revoked, or its key deleted), B wins a
 *   later term. A's store still holds A's term, yet each of its writes fails
 *   with NOT_LEADER, and etcd shows that nothing under the prefix changed
 *   after A lost but B's leadership key and B's own writes.
 * - Five masters campaign at once: one holds a term at a time, terms grow,
 *   and only the holder writes; a standby leads once the leader resigns.
 * - Settling: an original write built but held back while `settle` runs is
 *   "not landed", and can never apply afterwards; one that applied is
 *   "landed". A deposed leader's settle is NOT_LEADER.
 * - A write sent while etcd is paused (SIGSTOP) times out, is settled once
 *   etcd is resumed, and resolves with the value in etcd exactly once.
 * - On a 3-member etcd, writes go on with one member killed.
 *
 * Skipped, saying why, when etcd is not installed (unless CI=true).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { Etcd3, type IKeyValue } from 'etcd3';
import { CairnError } from '../services/common/errors.js';
import { Leadership } from '../services/master/etcd-leadership.js';
import { EtcdStore } from '../services/master/etcd-store.js';
import { EtcdCluster, etcdSkipReason } from './harness/etcd.js';

const skip = etcdSkipReason();
if (skip) console.warn(`SKIPPED test/etcd-fencing.test.ts (leader-fenced writes on etcd): ${skip}`);
const withEtcd = skip ? describe.skip : describe;

withEtcd('leader-fenced writes on a real etcd', () => {
  let etcd: EtcdCluster;
  let admin: Etcd3;
  const opened: Array<{ close(): unknown }> = [];
  let prefixes = 0;

  beforeAll(async () => {
    etcd = await EtcdCluster.start();
    admin = new Etcd3({ hosts: etcd.endpoints });
  });
  afterEach(async () => {
    for (const o of opened.splice(0).reverse()) await o.close();
  });
  afterAll(async () => {
    admin?.close();
    await etcd?.close();
  });

  /** A master's view: its own client, leadership and store on `prefix`. */
  function master(prefix: string, id: string, opts: { callTimeoutMs?: number; warnings?: string[]; ttlSeconds?: number } = {}) {
    const client = new Etcd3({ hosts: etcd.endpoints });
    const leadership = new Leadership(client, prefix, id, { ttlSeconds: opts.ttlSeconds ?? 10, retryMs: 50 });
    const store = new EtcdStore(client, prefix, {
      term: () => leadership.term,
      callTimeoutMs: opts.callTimeoutMs,
      log: { warn: (message, meta) => opts.warnings?.push(`${message} ${JSON.stringify(meta)}`) },
    });
    opened.push({ close: () => leadership.close() }, { close: () => client.close() });
    return { client, leadership, store };
  }

  const everything = async (prefix: string): Promise<IKeyValue[]> => (await admin.getAll().prefix(`${prefix}/`).exec()).kvs;
  const expectNotLeader = async (write: Promise<unknown>): Promise<void> => {
    const err = await write.then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).code).toBe('NOT_LEADER');
  };

  it.each([
    ['its lease is revoked', async (a: Leadership) => void (await admin.leaseClient.leaseRevoke({ ID: (await admin.get(a.key).exec()).kvs[0]!.lease }))],
    ['its key is deleted', async (a: Leadership) => void (await admin.delete().key(a.key))],
  ])('a deposed leader (%s) writes nothing, though it still holds its term', async (_how, depose) => {
    const prefix = `/fence-${++prefixes}`;
    const a = master(prefix, 'master-a');
    const b = master(prefix, 'master-b');
    const termA = await a.leadership.campaign();
    await a.store.saveApprovals(['a-1']);
    await a.store.saveMove('mv-1', { by: 'a', step: 1 });

    const bLeads = b.leadership.campaign();
    await depose(a.leadership);
    const termB = await bLeads;
    expect(BigInt(termB)).toBeGreaterThan(BigInt(termA));
    const before = await everything(prefix);
    const revisionAtLoss = Math.max(...before.map((kv) => Number(kv.mod_revision)));

    // A was not told: it still holds its term, and every kind of write fails in etcd.
    expect(a.leadership.term).toBe(termA);
    await expectNotLeader(a.store.saveApprovals(['a-2']));
    await expectNotLeader(a.store.saveMove('mv-1', { by: 'a', step: 2 }));
    await expectNotLeader(a.store.save({ clusterId: 'c-a', shards: [], nextShardNumber: 9, removed: [] }));
    await expectNotLeader(a.store.saveClientState([], []));
    await expectNotLeader(a.store.settle(termA, 'w-never-sent'));
    expect(await everything(prefix)).toEqual(before);
    expect(before.find((kv) => kv.key.toString() === `${prefix}/leader`)?.value.toString()).toBe('master-b');

    // B writes under its term; A still cannot, and nothing A sent shows.
    await b.store.saveApprovals(['b-1']);
    await expectNotLeader(a.store.saveApprovals(['a-3']));
    expect(await a.store.loadApprovals()).toEqual(['b-1']);
    expect(await a.store.loadMoves()).toEqual([{ by: 'a', step: 1 }]);
    const changed = (await everything(prefix)).filter((kv) => Number(kv.mod_revision) > revisionAtLoss).map((kv) => kv.key.toString());
    expect(changed.sort()).toEqual([`${prefix}/approvals`, `${prefix}/write-stamp`]);
  });

  it('a leader idle for longer than its lease keeps leading: the lease is kept alive', async () => {
    const prefix = `/fence-${++prefixes}`;
    const a = master(prefix, 'master-a', { ttlSeconds: 2 });
    const term = await a.leadership.campaign();
    await new Promise((done) => setTimeout(done, 5000));
    expect(await a.leadership.leader()).toEqual({ id: 'master-a', term });
    await a.store.saveApprovals(['still leading']);
    expect(await a.store.loadApprovals()).toEqual(['still leading']);
  });

  it('a standby waits while the leader holds the key, and leads with a greater term once it resigns', async () => {
    const prefix = `/fence-${++prefixes}`;
    const a = master(prefix, 'master-a');
    const b = master(prefix, 'master-b');
    const termA = await a.leadership.campaign();
    expect(await a.leadership.campaign()).toBe(termA); // its own key: still the same term
    let bTerm: string | undefined;
    const bLeads = b.leadership.campaign().then((t) => (bTerm = t));
    await b.store.loadApprovals(); // a round trip to etcd while B campaigns
    await new Promise((done) => setTimeout(done, 200));
    expect(bTerm).toBeUndefined();
    expect(await b.leadership.leader()).toEqual({ id: 'master-a', term: termA });
    await expectNotLeader(b.store.saveApprovals(['b']));

    await a.leadership.resign();
    await bLeads;
    expect(BigInt(bTerm!)).toBeGreaterThan(BigInt(termA));
    expect(await a.leadership.leader()).toEqual({ id: 'master-b', term: bTerm });
    await b.store.saveApprovals(['b']);
    await expectNotLeader(a.store.saveApprovals(['a']));
  });

  it('of masters campaigning at once, exactly one leads at a time, each later term greater, and only it can write', async () => {
    const prefix = `/fence-${++prefixes}`;
    const masters = ['m0', 'm1', 'm2', 'm3', 'm4'].map((id) => ({ id, ...master(prefix, id) }));
    const campaigns = new Map(masters.map((m) => [m.id, m.leadership.campaign().then(() => m)]));
    const terms: bigint[] = [];
    while (campaigns.size > 0) {
      const winner = await Promise.race(campaigns.values());
      campaigns.delete(winner.id);
      expect(await winner.leadership.leader()).toEqual({ id: winner.id, term: winner.leadership.term });
      terms.push(BigInt(winner.leadership.term!));
      // Everyone else is still campaigning: none holds a term, none can write.
      for (const m of masters.filter((o) => campaigns.has(o.id))) {
        expect(m.leadership.term).toBeUndefined();
        await expectNotLeader(m.store.saveApprovals([m.id]));
      }
      await winner.store.saveApprovals([winner.id]);
      expect(await winner.store.loadApprovals()).toEqual([winner.id]);
      await winner.leadership.resign();
    }
    expect(terms).toEqual([...terms].sort((x, y) => (x < y ? -1 : 1)));
    expect(new Set(terms).size).toBe(masters.length);
  });

  it('settle: a held-back original is "not landed" and can never apply after; an applied one is "landed"', async () => {
    const prefix = `/fence-${++prefixes}`;
    const a = master(prefix, 'master-a');
    const term = await a.leadership.campaign();
    await a.store.saveApprovals(['first']);
    const late = (value: string) => [a.client.put(`${prefix}/approvals`).value(JSON.stringify([value]))];

    // Built as writeOnce builds it, but "still on its way" while the answer is settled.
    const heldBack = a.store.fencedTxn(term, 'w-held-back', late('held back'));
    expect(await a.store.settle(term, 'w-held-back')).toBe('not landed');
    expect((await heldBack.commit()).succeeded).toBe(false);
    expect(await a.store.loadApprovals()).toEqual(['first']);

    // Applied, but its answer "lost": the store never saw it succeed.
    expect((await a.store.fencedTxn(term, 'w-applied', late('applied')).commit()).succeeded).toBe(true);
    expect(await a.store.settle(term, 'w-applied')).toBe('landed');
    expect(await a.store.loadApprovals()).toEqual(['applied']);

    // The chain goes on from what etcd holds: the next write lands.
    await a.store.saveApprovals(['after']);
    expect(await a.store.loadApprovals()).toEqual(['after']);
  });

  it('a write whose answer is lost while etcd is paused is settled once etcd is back, and lands once', async () => {
    const prefix = `/fence-${++prefixes}`;
    const warnings: string[] = [];
    const a = master(prefix, 'master-a', { callTimeoutMs: 300, warnings });
    await a.leadership.campaign();
    await a.store.saveMove('mv-1', { step: 1 });

    etcd.pause();
    let resolved = false;
    const write = a.store.saveMove('mv-1', { step: 2 }).finally(() => (resolved = true));
    // Wait until the first attempt has timed out (the warning is written once settled, so poll the promise instead).
    await new Promise((done) => setTimeout(done, 1000));
    expect(resolved).toBe(false);
    etcd.resume();
    await write;

    // Either outcome happens (whether etcd read the request before it was paused); both must end with the value written once.
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/"outcome":"(landed|not landed)"/);
    expect(await a.store.loadMoves()).toEqual([{ step: 2 }]);
    // Landed once: the write stamp moved once for the write (and at most once more for the settle).
    const kvs = await everything(prefix);
    const move = kvs.find((kv) => kv.key.toString() === `${prefix}/move/mv-1`)!;
    expect(Number(move.version)).toBe(2);
  });
});

withEtcd('the state on a 3-member etcd', () => {
  let etcd: EtcdCluster;
  let client: Etcd3 | undefined;
  let leadership: Leadership | undefined;

  beforeAll(async () => {
    etcd = await EtcdCluster.start(3);
  });
  afterAll(async () => {
    await leadership?.close();
    client?.close();
    await etcd?.close();
  });

  it('keeps taking writes with one member killed, and the member catches up after its restart', async () => {
    client = new Etcd3({ hosts: etcd.endpoints });
    const lead = new Leadership(client, '/three', 'master-a', { ttlSeconds: 10 });
    leadership = lead;
    const store = new EtcdStore(client, '/three', { term: () => lead.term, callTimeoutMs: 2000 });
    await lead.campaign();
    await store.saveMove('mv-1', { step: 1 });

    await etcd.kill(0);
    for (let step = 2; step <= 6; step++) await store.saveMove('mv-1', { step });
    expect(await store.loadMoves()).toEqual([{ step: 6 }]);

    await etcd.restart(0);
    const onlyFirst = new Etcd3({ hosts: etcd.endpoints[0]! });
    try {
      expect(JSON.parse((await onlyFirst.get('/three/move/mv-1').string())!)).toEqual({ step: 6 });
    } finally {
      onlyFirst.close();
    }
  });
});
