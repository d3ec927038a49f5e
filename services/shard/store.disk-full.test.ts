/**
 * The store on a disk that fills up, on a real 16 MiB tmpfs with real
 * LevelDB: a ballast file takes every free page, and deleting it frees them.
 * Skipped (with the reason printed) where a tmpfs cannot be mounted.
 */
import { afterAll, describe, expect, test } from '@jest/globals';
import { join } from 'node:path';
import { fillWithBallast, mountTmpfs, removeBallast } from '../../test/harness/tmpfs.js';
import { CairnError } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';
import { ShardStore, type CellFilterIn, type DiskState } from './store.js';

const tmpfs = await mountTmpfs(16);
if (!tmpfs.ok) console.warn(`SKIPPED store disk-full tests: ${tmpfs.reason}`);
const onTmpfs = tmpfs.ok ? describe : describe.skip;

const stores: ShardStore[] = [];
afterAll(async () => {
  for (const s of stores) await s.close();
  if (tmpfs.ok) await tmpfs.unmount();
});

const ALL: CellFilterIn = { columns: [], columnPrefix: '', allVersions: true, limit: 0 };
const VALUE = Buffer.alloc(32 * 1024, 0x61);
const write = (store: ShardStore, row: string, requestId = '') => store.writeRows([{ row, cells: [{ column: 'c', value: VALUE, timestampUs: 0n }], replace: false }], { requestId, sync: false });

/** Resolves with the first disk state change the store reports that satisfies `want`. */
const diskStateChange = (store: ShardStore, want: (s: DiskState) => boolean) =>
  new Promise<DiskState>((resolve) => {
    const off = store.onDiskState((s) => {
      if (want(s)) {
        off();
        resolve(s);
      }
    });
  });

onTmpfs('a store whose disk fills up', () => {
  test('refuses writes with DISK_FULL naming the directory, serves reads, and takes writes again by itself once space is freed, losing nothing acknowledged', async () => {
    if (!tmpfs.ok) return;
    const dir = join(tmpfs.dir, 'store');
    const ballast = join(tmpfs.dir, 'ballast');
    const store = await ShardStore.open(dir, { diskPollMs: 50 });
    stores.push(store);
    const acked: string[] = [];
    for (let i = 0; i < 20; i++) {
      await write(store, `before-${i}`);
      acked.push(`before-${i}`);
    }

    fillWithBallast(ballast);
    // LevelDB may still have a little room in its log's last page: write until it is refused.
    let refusal: CairnError | undefined;
    for (let i = 0; i < 200 && !refusal; i++) {
      try {
        await write(store, `filling-${i}`);
        acked.push(`filling-${i}`);
      } catch (err) {
        refusal = err as CairnError;
      }
    }
    expect(refusal).toBeInstanceOf(CairnError);
    expect(refusal!.code).toBe('DISK_FULL');
    expect(refusal!.message).toContain(dir);
    expect(refusal!.message).toMatch(/no space left on device/i);
    expect(store.diskState().full).toBe(true);

    // Every later write is refused the same way, deletes too (LevelDB needs space to delete).
    await expect(write(store, 'while-full')).rejects.toMatchObject({ code: 'DISK_FULL' });
    await expect(store.deleteRow('before-0', { requestId: '', sync: false })).rejects.toMatchObject({ code: 'DISK_FULL' });
    // Reads are answered.
    expect((await store.readRow('before-1', ALL)).length).toBe(1);

    const resumed = diskStateChange(store, (s) => !s.full);
    removeBallast(ballast);
    await resumed;
    expect(store.diskState()).toEqual({ full: false, message: '' });

    for (let i = 0; i < 20; i++) {
      await write(store, `after-${i}`, `req-${i}`);
      acked.push(`after-${i}`);
    }
    // A retried write is still applied once after the reopen.
    await write(store, 'after-0', 'req-0');

    const all = { start: 0n, end: HASH_SPACE_END };
    expect(store.rangeStats(all)).toEqual(await store.recountStats(all));
    await store.close();

    // Everything acknowledged survives a reopen: writes taken after space came back were not written into a broken log.
    const again = await ShardStore.open(dir);
    stores.push(again);
    const missing: string[] = [];
    for (const row of acked) if ((await again.readRow(row, ALL)).length !== 1) missing.push(row);
    expect(missing).toEqual([]);
    expect(again.rangeStats(all)).toEqual({ rows: acked.length, bytes: again.rangeStats(all).bytes });
    expect(again.rangeStats(all)).toEqual(await again.recountStats(all));
  });
});
