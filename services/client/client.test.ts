/**
 * The SDK against a real in-process cluster (real master, real shards, real
 * gRPC and LevelDB): every data call, batching across shards, scans with
 * paging, leases, and stale routes and tokens that the caller never sees.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { startInProcCluster, waitFor, type InProcCluster } from '../../test/harness/inproc.js';
import { mintToken } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { ownerOfRow, type ClusterMap } from '../common/map.js';
import { CairnClient, type Cell } from './index.js';

let cluster: InProcCluster;
let db: CairnClient;

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2 });
  db = await CairnClient.connect({ master: cluster.masterAddress, user: 'writer', password: 'writer-pass' });
});
afterAll(async () => {
  db?.close();
  await cluster?.stop();
});

const text = (cells: Cell[]) => cells.map((c) => `${c.column}=${c.value.toString()}`);
const shardIds = () => cluster.shards.map((s) => s.node.id);

/** A row owned by the given shard under the master's current map. */
function rowOwnedBy(shardId: string, tag: string): string {
  const map = cluster.master.master.currentMap();
  for (let i = 0; ; i++) {
    const row = `${tag}-${i}`;
    if (ownerOfRow(map, row)!.shardId === shardId) return row;
  }
}

describe('connect', () => {
  it('logs in and holds the current map', () => {
    expect(db.token).toEqual(expect.any(String));
    expect(db.map.epoch).toBe(cluster.master.master.epoch);
    expect(new Set(db.map.ranges.map((r) => r.shardId))).toEqual(new Set(shardIds()));
  });

  it('refuses a wrong password with the server message', async () => {
    const err = await CairnClient.connect({ master: cluster.masterAddress, user: 'writer', password: 'nope', timeoutMs: 3000 }).catch((e) => e);
    expect(err).toBeInstanceOf(CairnError);
    expect(err.code).toBe('UNAUTHENTICATED');
  });
});

describe('put and get', () => {
  it('round-trips cells, strings and bytes, and returns the assigned timestamp', async () => {
    const before = BigInt(Date.now()) * 1000n;
    const ts = await db.put('user:1', { name: 'Ada', 'attr:lang': 'en', 'attr:tz': new Uint8Array([0x55, 0x54, 0x43]) });
    expect(ts).toBeGreaterThanOrEqual(before - 5_000_000n);
    const cells = await db.get('user:1');
    expect(text(cells)).toEqual(['attr:lang=en', 'attr:tz=UTC', 'name=Ada']);
    expect(cells.every((c) => c.timestampUs === ts && Buffer.isBuffer(c.value))).toBe(true);
    expect((await db.getValue('user:1', 'name'))?.toString()).toBe('Ada');
    expect(await db.getValue('user:1', 'missing')).toBeUndefined();
    expect(await db.get('no-such-row')).toEqual([]);
  });

  it('filters by exact columns and by column prefix', async () => {
    expect(text(await db.get('user:1', { columns: ['name', 'attr:tz'] }))).toEqual(['attr:tz=UTC', 'name=Ada']);
    expect(text(await db.get('user:1', { columnPrefix: 'attr:' }))).toEqual(['attr:lang=en', 'attr:tz=UTC']);
  });

  it('keeps versions: newest by default, all on request, a time range, a limit, and replace', async () => {
    const row = 'versions';
    for (const [i, v] of ['v1', 'v2', 'v3'].entries()) {
      await db.put(row, [{ column: 'c', value: v, timestampUs: 1000n * BigInt(i + 1) }]);
    }
    expect(text(await db.get(row))).toEqual(['c=v3']);
    const all = await db.get(row, { allVersions: true });
    expect(all.map((c) => [c.value.toString(), c.timestampUs])).toEqual([
      ['v3', 3000n],
      ['v2', 2000n],
      ['v1', 1000n],
    ]);
    expect(text(await db.get(row, { allVersions: true, timeRange: { startUs: 1500n, endUs: 3000n } }))).toEqual(['c=v2']);
    expect(text(await db.get(row, { timeRange: { endUs: 3000n } }))).toEqual(['c=v2']);
    expect(text(await db.get(row, { allVersions: true, limit: 2 }))).toEqual(['c=v3', 'c=v2']);
    await db.put(row, { c: 'only' }, { replace: true });
    expect(text(await db.get(row, { allVersions: true }))).toEqual(['c=only']);
  });

  it('passes the server message through on bad input', async () => {
    const err = await db.put('', { c: 'x' }).catch((e) => e);
    expect(err).toBeInstanceOf(CairnError);
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toMatch(/row/);
  });
});

describe('batches across shards', () => {
  const rows = Array.from({ length: 300 }, (_, i) => `batch/${i}`);

  it('writeRows groups by owner, writes every row, and returns timestamps in input order', async () => {
    const owners = new Set(rows.map((r) => ownerOfRow(db.map, r)!.shardId));
    expect(owners.size).toBe(2); // the batch really spans both shards
    const ts = await db.writeRows(rows.map((row, i) => ({ row, cells: { n: String(i) } })));
    expect(ts).toHaveLength(rows.length);
    expect(ts.every((t) => t > 0n)).toBe(true);
    // Each shard stores exactly the rows it owns.
    const stored = await Promise.all(cluster.shards.map((s) => s.node.store.readRows(rows, { columns: [], columnPrefix: '', allVersions: false, limit: 0 })));
    expect(stored.map((x) => x.length).reduce((a, b) => a + b, 0)).toBe(rows.length);
  });

  it('splits a batch bigger than one call into sub-batches', async () => {
    const many = Array.from({ length: 2500 }, (_, i) => ({ row: `big/${i}`, cells: { a: 'x', b: 'y', c: 'z', d: 'w', e: 'v' } }));
    const ts = await db.writeRows(many); // 12,500 cells: over maxCellsPerCall for one call
    expect(ts.filter((t) => t > 0n)).toHaveLength(many.length);
    const got = await db.getRows(many.map((r) => r.row), { columns: ['e'] });
    expect(got.size).toBe(many.length);
  });

  it('getRows reads rows from every owner, in request order, leaving out rows with no cells', async () => {
    const want = [...rows.slice(0, 50)].reverse().concat(['batch/none']);
    const got = await db.getRows(want, { columns: ['n'] });
    expect([...got.keys()]).toEqual(want.slice(0, 50));
    for (const [row, cells] of got) expect(text(cells)).toEqual([`n=${row.split('/')[1]}`]);
    expect(got.has('batch/none')).toBe(false);
  });
});

describe('scan', () => {
  const N = 137;
  beforeAll(async () => {
    await db.writeRows(Array.from({ length: N }, (_, i) => ({ row: `scan/${i}`, cells: { v: String(i), w: 'x' } })));
    await db.put('scanx-not-matching', { v: 'no' });
  });

  it('visits every matching row exactly once across shards, in pages', async () => {
    const seen: string[] = [];
    for await (const r of db.scan('scan/', { pageSize: 7, columns: ['v'] })) {
      seen.push(r.row);
      expect(text(r.cells)).toEqual([`v=${r.row.split('/')[1]}`]);
    }
    expect(seen).toHaveLength(N);
    expect(new Set(seen).size).toBe(N);
    expect(new Set(seen.map((r) => ownerOfRow(db.map, r)!.shardId)).size).toBe(2);
  });

  it('pages with opaque tokens until the last page has none', async () => {
    const seen = new Set<string>();
    let token: string | undefined;
    let pages = 0;
    do {
      const page = await db.scanPage('scan/', { limit: 20, resumeToken: token });
      expect(page.rows.length).toBeLessThanOrEqual(20);
      for (const r of page.rows) {
        expect(seen.has(r.row)).toBe(false);
        seen.add(r.row);
      }
      token = page.nextToken;
      pages += 1;
      expect(pages).toBeLessThan(50);
    } while (token);
    expect(seen.size).toBe(N);
    expect(pages).toBeGreaterThanOrEqual(Math.ceil(N / 20));
  });

  it('returns rows in the same order on every scan, whatever the page size', async () => {
    const a: string[] = [];
    for await (const r of db.scan('scan/', { pageSize: 50 })) a.push(r.row);
    const b: string[] = [];
    for await (const r of db.scan('scan/', { pageSize: 11 })) b.push(r.row);
    expect(a).toEqual(b);
  });

  it('rejects a token it did not issue', async () => {
    await expect(db.scanPage('scan/', { resumeToken: 'bogus' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('deletes', () => {
  it('deleteRow removes every cell and says how many', async () => {
    await db.put('del/row', { a: '1', b: '2' });
    await db.put('del/row', { a: '3' });
    expect(await db.deleteRow('del/row')).toBe(3);
    expect(await db.get('del/row', { allVersions: true })).toEqual([]);
    expect(await db.deleteRow('del/row')).toBe(0);
  });

  it('deleteCells removes some columns, optionally only versions in a time range', async () => {
    const row = 'del/cells';
    await db.put(row, [
      { column: 'a', value: 'old', timestampUs: 100n },
      { column: 'a', value: 'new', timestampUs: 200n },
      { column: 'b', value: 'keep', timestampUs: 100n },
      { column: 'c', value: 'gone', timestampUs: 100n },
    ]);
    expect(await db.deleteCells(row, ['a'], { timeRange: { startUs: 0n, endUs: 150n } })).toBe(1);
    expect(text(await db.get(row, { allVersions: true }))).toEqual(['a=new', 'b=keep', 'c=gone']);
    expect(await db.deleteCells(row, ['c'])).toBe(1);
    expect(text(await db.get(row, { allVersions: true }))).toEqual(['a=new', 'b=keep']);
  });
});

describe('checkAndMutate', () => {
  it('writes when the check holds and not otherwise', async () => {
    const row = 'cam/1';
    expect(await db.checkAndMutate(row, { column: 'state', absent: true }, { state: 'created' })).toBe(true);
    expect(await db.checkAndMutate(row, { column: 'state', absent: true }, { state: 'again' })).toBe(false);
    expect(await db.checkAndMutate(row, { column: 'state', equals: 'created' }, { state: 'running' })).toBe(true);
    expect(await db.checkAndMutate(row, { column: 'state', equals: 'created' }, { state: 'lost' })).toBe(false);
    expect((await db.getValue(row, 'state'))?.toString()).toBe('running');
  });

  it('needs equals or absent', async () => {
    await expect(db.checkAndMutate('cam/2', { column: 'x' }, { x: '1' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('leases', () => {
  it('locks, refuses a second holder with CONFLICT, extends, unlocks', async () => {
    const row = 'lease/1';
    const lease = await db.lockRow(row, 10_000);
    expect(lease.leaseId).toEqual(expect.any(String));
    expect(lease.expiresAtMs).toBeGreaterThan(Date.now());

    const err = await db.lockRow(row, 10_000).catch((e) => e);
    expect(err).toBeInstanceOf(CairnError);
    expect(err.code).toBe('CONFLICT'); // gRPC ABORTED
    expect(err.message).toMatch(/leased by another holder/);

    const { expiresAtMs } = await db.extendLease(row, lease.leaseId, 60_000);
    expect(expiresAtMs).toBeGreaterThan(lease.expiresAtMs);
    await expect(db.unlockRow(row, 'not-my-lease')).rejects.toMatchObject({ code: 'CONFLICT' });
    await db.unlockRow(row, lease.leaseId);
    const again = await db.lockRow(row, 1000);
    expect(again.leaseId).not.toBe(lease.leaseId);
    await db.unlockRow(row, again.leaseId);
  });
});

describe('recovering without the caller seeing an error', () => {
  /** Every range sent to one shard: half the keys now route to the wrong place. */
  function poisoned(map: ClusterMap, to: string, epoch: bigint): ClusterMap {
    return { ...map, epoch, ranges: map.ranges.map((r) => ({ ...r, shardId: to })) };
  }

  it('re-routes single-row calls after a stale map (old epoch, wrong owner)', async () => {
    const [a, b] = shardIds();
    const row = rowOwnedBy(b!, 'stale');
    const real = db.map;
    db.setMap(poisoned(real, a!, 1n));
    await db.put(row, { c: 'v1' });
    expect(db.map.epoch).toBe(real.epoch);
    db.setMap(poisoned(real, a!, real.epoch)); // wrong owner at the current epoch
    expect(text(await db.get(row))).toEqual(['c=v1']);
    expect(db.map.ranges.map((r) => r.shardId)).toEqual(real.ranges.map((r) => r.shardId));
  });

  it('re-groups only the failed rows of a batch, and keeps scans exact', async () => {
    const [a] = shardIds();
    const rows = Array.from({ length: 100 }, (_, i) => `stale-batch/${i}`);
    db.setMap(poisoned(db.map, a!, 1n));
    const ts = await db.writeRows(rows.map((row) => ({ row, cells: { c: row } })));
    expect(ts.every((t) => t > 0n)).toBe(true);
    db.setMap(poisoned(db.map, a!, 1n));
    expect((await db.getRows(rows)).size).toBe(rows.length);
    db.setMap(poisoned(db.map, a!, 1n));
    const seen = new Set<string>();
    for await (const r of db.scan('stale-batch/', { pageSize: 9 })) seen.add(r.row);
    expect(seen.size).toBe(rows.length);
  });

  it('logs in again when a shard says the token expired', async () => {
    const expired = mintToken(cluster.master.master.tokenKey, 'writer', 'rw', 1, Date.now() - 60_000).token;
    (db as unknown as { session: { token: string } }).session.token = expired; // plant it where the client keeps its token
    await db.put('relogin', { c: 'ok' });
    expect(db.token).not.toBe(expired);
    expect((await db.getValue('relogin', 'c'))?.toString()).toBe('ok');
  });
});

describe('roles and admin', () => {
  it('a reader can read but not write', async () => {
    const reader = await CairnClient.connect({ master: cluster.masterAddress, user: 'reader', password: 'reader-pass' });
    try {
      expect(text(await reader.get('user:1', { columns: ['name'] }))).toEqual(['name=Ada']);
      await expect(reader.put('user:1', { name: 'Eve' })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    } finally {
      reader.close();
    }
  });

  it('listServers and getRanges return plain objects with bigint hash positions', async () => {
    const admin = await CairnClient.connect({ master: cluster.masterAddress, user: 'admin', password: 'admin-pass' });
    try {
      const servers = await admin.listServers();
      expect(servers.map((s) => s.id).sort()).toEqual(shardIds().sort());
      expect(servers[0]).toEqual(expect.objectContaining({ address: expect.any(String), status: expect.any(String), share: expect.any(Number) }));
      const ranges = await admin.getRanges();
      expect(ranges[0]!.start).toBe(0n);
      expect(ranges[ranges.length - 1]!.end).toBe(1n << 64n);
      expect(ranges.map((r) => r.shardId)).toEqual(admin.map.ranges.map((r) => r.shardId));
    } finally {
      admin.close();
    }
  });
});

// Last: it adds a shard, which changes the map for everyone.
describe('watch', () => {
  it('keeps the map fresh without any call, and close() ends the stream', async () => {
    const watcher = await CairnClient.connect({ master: cluster.masterAddress, user: 'reader', password: 'reader-pass', watch: true });
    try {
      const before = watcher.map.epoch;
      await cluster.addShard();
      await waitFor(() => watcher.map.epoch > before, 5000, 'the watcher to see the new map');
      expect(watcher.map.epoch).toBe(cluster.master.master.epoch);
      expect(watcher.map.shards).toHaveLength(3);
    } finally {
      watcher.close();
    }
    // The plain client still works on the old map (its first call refreshes).
    await db.put('after-join', { c: 'x' });
    expect((await db.getValue('after-join', 'c'))?.toString()).toBe('x');
  });
});
