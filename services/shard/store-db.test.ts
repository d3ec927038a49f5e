import { afterAll, describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { sublevels, WriteBatch, type BatchOp, type Subs } from './store-db.js';

const dirs: string[] = [];
const dbs: Level<Buffer, Buffer>[] = [];
afterAll(async () => {
  for (const db of dbs) if (db.status === 'open') await db.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function openDb(): Promise<{ db: Level<Buffer, Buffer>; subs: Subs }> {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-store-db-'));
  dirs.push(dir);
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.open();
  dbs.push(db);
  return { db, subs: sublevels(db) };
}

/** Every stored key and value of a database, as hex. */
async function dump(db: Level<Buffer, Buffer>): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for await (const [k, v] of db.iterator()) out.push([k.toString('hex'), v.toString('hex')]);
  return out;
}

type Op = { sub: keyof Subs; del: boolean; key: Buffer | string; value: Buffer };
const NAMES: (keyof Subs)[] = ['cells', 'leases', 'reqids', 'latest', 'rowindex', 'oldRowcells', 'meta'];

const opArb = fc
  .record({
    sub: fc.constantFrom(...NAMES),
    del: fc.boolean(),
    bin: fc.uint8Array({ minLength: 0, maxLength: 24 }),
    str: fc.string({ maxLength: 12 }),
    value: fc.uint8Array({ maxLength: 40 }),
  })
  .map(({ sub, del, bin, str, value }): Op => ({ sub, del, key: sub === 'meta' ? str : Buffer.from(bin), value: Buffer.from(value) }));

describe('WriteBatch (a batch below abstract-level)', () => {
  test('stores exactly what db.batch stores, for every sublevel, puts and deletes, in order', async () => {
    const a = await openDb();
    const b = await openDb();
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(opArb, { maxLength: 30 }), { minLength: 1, maxLength: 4 }), fc.boolean(), async (batches, sync) => {
        for (const ops of batches) {
          const list = ops.map((o) => (o.del ? { type: 'del', sublevel: a.subs[o.sub], key: o.key } : { type: 'put', sublevel: a.subs[o.sub], key: o.key, value: o.value }) as BatchOp);
          const batch = a.db.batch.bind(a.db) as (ops: BatchOp[], o?: { sync: boolean }) => Promise<void>;
          if (list.length > 0) await batch(list, sync ? { sync: true } : undefined);
          const wb = new WriteBatch(b.db);
          ops.forEach((o, i) => {
            // Both entry points: direct puts and deletes, and ops built elsewhere.
            if (i % 2) wb.op((o.del ? { type: 'del', sublevel: b.subs[o.sub], key: o.key } : { type: 'put', sublevel: b.subs[o.sub], key: o.key, value: o.value }) as BatchOp);
            else if (o.del) wb.del(b.subs[o.sub], o.key);
            else wb.put(b.subs[o.sub], o.key, o.value);
          });
          await wb.write(sync);
        }
        expect(await dump(b.db)).toEqual(await dump(a.db));
      }),
      { numRuns: 40 },
    );
    // What was written is read back through the sublevels as usual.
    const wb = new WriteBatch(b.db);
    wb.put(b.subs.cells, Buffer.from('k1'), Buffer.from('v1'));
    wb.put(b.subs.meta, 'x/name', Buffer.from('v2'));
    await wb.write(false);
    expect(await b.subs.cells.get(Buffer.from('k1'))).toEqual(Buffer.from('v1'));
    expect(await b.subs.meta.get('x/name')).toEqual(Buffer.from('v2'));
  });

  test('leaves no resource attached to the database, written, empty or discarded', async () => {
    const { db, subs } = await openDb();
    // abstract-level keeps its resources in a private field: count what is attached and detached.
    const attached = new Set<unknown>();
    const d = db as unknown as { attachResource(r: unknown): void; detachResource(r: unknown): void };
    const attach = d.attachResource.bind(db);
    const detach = d.detachResource.bind(db);
    d.attachResource = (r) => (/Batch/.test((r as object).constructor.name) && attached.add(r), attach(r)); // batches only (sublevels attach too)
    d.detachResource = (r) => (attached.delete(r), detach(r));
    for (let i = 0; i < 5; i++) {
      const wb = new WriteBatch(db);
      wb.put(subs.cells, Buffer.from([i]), Buffer.from('v'));
      await wb.write(false);
      await new WriteBatch(db).write(false);
      const dropped = new WriteBatch(db);
      dropped.put(subs.cells, Buffer.from('never'), Buffer.from('v'));
      dropped.discard();
    }
    expect(attached.size).toBe(0);
    expect(await subs.cells.get(Buffer.from('never'))).toBeUndefined();
    await db.close(); // would close (or hang on) a batch left attached
  });

  test('on a database that is not open, refuses the write as db.batch does', async () => {
    const { db, subs } = await openDb();
    await db.close();
    const wb = new WriteBatch(db);
    wb.put(subs.cells, Buffer.from('k'), Buffer.from('v'));
    await expect(wb.write(false)).rejects.toThrow(/not open/i);
  });
});
