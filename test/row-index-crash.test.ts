/**
 * The row-key index after a crash: a child process (the built store, dist/)
 * writes and deletes rows with no pause, some writes synced, and is killed
 * with SIGKILL mid-stream. Reopened, the store's index names exactly the
 * stored rows (each batch carried its index records with its cells, so a
 * crash keeps both or neither), every synced write is there, and a prefix
 * scan returns exactly what a filtered full scan returns.
 */
import { afterAll, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { HASH_SPACE_END } from '../services/common/hash.js';
import { ShardStore } from '../services/shard/store.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

// The child: rows d/<n> written in batches of 50 without sync, every tenth batch synced (and reported),
// and every third batch deleting rows of an earlier one, until it is killed.
const CHILD = `
const { ShardStore } = await import(process.argv[2]);
const store = await ShardStore.open(process.argv[1]);
const W = (sync) => ({ requestId: '', sync });
for (let b = 0; ; b++) {
  const rows = Array.from({ length: 50 }, (_, i) => 'd/' + (b * 50 + i));
  const sync = b % 10 === 9;
  await store.writeRows(rows.map((row) => ({ row, replace: false, cells: [{ column: 'c', value: Buffer.from(row), timestampUs: 0n }] })), W(sync));
  if (b % 3 === 2) for (let i = 0; i < 50; i += 7) await store.deleteRow('d/' + ((b - 2) * 50 + i), W(false));
  if (sync) console.log('synced ' + b);
}
`;

it('a store killed mid-write reopens with its index exact and prefix scans equal to filtered full scans', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cairn-rowindex-crash-'));
  dirs.push(dir);
  const storeUrl = pathToFileURL(join(process.cwd(), 'dist/services/shard/store.js')).href;
  const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD, dir, storeUrl], { stdio: ['ignore', 'pipe', 'inherit'] });
  let lastSynced = -1;
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      for (const m of d.toString().matchAll(/synced (\d+)/g)) lastSynced = Number(m[1]);
      if (lastSynced >= 39) {
        child.kill('SIGKILL');
        resolve();
      }
    });
    child.on('exit', (code, signal) => (signal === 'SIGKILL' ? resolve() : reject(new Error(`writer exited with ${code}`))));
  });
  if (child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
  expect(lastSynced).toBeGreaterThanOrEqual(39);

  const store = await ShardStore.open(dir);
  try {
    expect(await store.verifyDerived()).toEqual([]);
    const f = { columns: [], columnPrefix: '', allVersions: false, limit: 0 };
    const scan = async (rowPrefix: string): Promise<string[]> => {
      const out: string[] = [];
      let resumeToken: Buffer | undefined;
      do {
        const page = await store.scan({ rowPrefix, filter: f, limit: 500, resumeToken, hashStart: 0n, hashEnd: HASH_SPACE_END });
        out.push(...page.rows.map((r) => r.row));
        resumeToken = page.nextToken ?? undefined;
      } while (resumeToken);
      return out;
    };
    const all = await scan('');
    // Every row of the last synced batch is there, except those a later batch deletes (i % 7 = 0), which the child may have reached.
    const synced = Array.from({ length: 50 }, (_, i) => i).filter((i) => i % 7 !== 0).map((i) => `d/${lastSynced * 50 + i}`);
    for (const row of synced) expect(all).toContain(row);
    for (const prefix of ['d/1', 'd/19', 'd/7', 'd/']) {
      expect(await scan(prefix)).toEqual(all.filter((r) => r.startsWith(prefix)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))));
    }
  } finally {
    await store.close();
  }
});
