/**
 * The data directory check: its pure parts on names, CURRENT, the marker and
 * key evidence; then real stores (ShardStore, MasterStore) on real LevelDB
 * directories, each given what the other kind wrote, unrelated files, a
 * damaged LevelDB or a file.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Level } from 'level';
import { MasterStore } from '../master/store.js';
import { ShardStore } from '../shard/store.js';
import { damageOf, DataDirError, keyVerdict, KIND_FILE, listSome, markerKind, openFailure, surveyNames, type KeyEvidence } from './datadir.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cairn-datadir-'));
  dirs.push(d);
  return d;
}
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('names, CURRENT and the marker (pure)', () => {
  it('sorts names into LevelDB files, the marker and the rest, ignoring lost+found', () => {
    expect(surveyNames(['notes.txt', 'CURRENT', 'LOCK', 'LOG', 'LOG.old', 'MANIFEST-000002', '000003.log', '000005.ldb', '000007.sst', KIND_FILE, 'lost+found', 'a.jpg'])).toEqual({
      leveldb: ['000003.log', '000005.ldb', '000007.sst', 'CURRENT', 'LOCK', 'LOG', 'LOG.old', 'MANIFEST-000002'],
      hasMarker: true,
      unrelated: ['a.jpg', 'notes.txt'],
    });
    expect(surveyNames([])).toEqual({ leveldb: [], hasMarker: false, unrelated: [] });
    expect(surveyNames(['MANIFEST-x', 'CURRENT.bak']).unrelated).toEqual(['CURRENT.bak', 'MANIFEST-x']);
  });

  it('names a few of many', () => {
    expect(listSome([])).toBe('');
    expect(listSome(['a'])).toBe('"a"');
    expect(listSome(['a', 'b'])).toBe('"a" and "b"');
    expect(listSome(['a', 'b', 'c'])).toBe('"a", "b" and "c"');
    expect(listSome(['a', 'b', 'c', 'd', 'e'])).toBe('"a", "b", "c" and 2 more');
  });

  it('sees damage that LevelDB would hide or make worse', () => {
    expect(damageOf([], undefined)).toBeUndefined();
    expect(damageOf(['LOCK', 'LOG'], undefined)).toBeUndefined(); // an open that failed before creating anything
    expect(damageOf(['000003.log', 'MANIFEST-000002'], undefined)).toBe('it has LevelDB files ("000003.log" and "MANIFEST-000002") but no CURRENT file');
    expect(damageOf(['CURRENT', 'MANIFEST-000002'], 'MANIFEST-000002\n')).toBeUndefined();
    expect(damageOf(['CURRENT', 'MANIFEST-000002'], 'MANIFEST-000009\n')).toBe('its CURRENT file names MANIFEST-000009, which is not there');
    expect(damageOf(['CURRENT'], 'garbage\n')).toBe('its CURRENT file does not name a manifest (it holds "garbage\\n")');
    expect(damageOf(['CURRENT', 'MANIFEST-000002'], 'MANIFEST-000002')).toMatch(/does not name a manifest/); // LevelDB wants the newline
  });

  it('reads the marker: a kind, nothing (a torn write), or something else', () => {
    expect(markerKind('shard\n')).toBe('shard');
    expect(markerKind('master')).toBe('master');
    expect(markerKind('')).toBeUndefined();
    expect(markerKind('etcd\n')).toEqual({ invalid: 'etcd' });
  });
});

describe('keys (pure)', () => {
  const ev = (shard: string[], master: string[], first: string[] = [...shard, ...master]): KeyEvidence => ({
    found: { shard, master },
    firstKeys: first.map((k) => Buffer.from(k)),
  });

  it('accepts its own keys, an empty database, and unknown keys under its own marker', () => {
    expect(keyVerdict('shard', false, ev(['!meta!stats/v1'], []))).toBeUndefined();
    expect(keyVerdict('master', false, ev([], ['clusterId']))).toBeUndefined();
    expect(keyVerdict('shard', false, ev([], []))).toBeUndefined();
    expect(keyVerdict('master', true, ev([], [], ['revoked/t1']))).toBeUndefined();
  });

  it('refuses the other kind, both kinds, and keys of neither without a marker', () => {
    expect(keyVerdict('shard', false, ev([], ['clusterId', 'map']))).toEqual({ code: 'WRONG_KIND', what: `it holds a master's state (keys "clusterId" and "map"), not a shard's` });
    expect(keyVerdict('master', true, ev(['!meta!stats/v1'], []))).toEqual({ code: 'WRONG_KIND', what: `it holds a shard's state (keys "!meta!stats/v1"), not a master's` });
    expect(keyVerdict('shard', false, ev(['!cells!x'], ['map']))?.code).toBe('WRONG_KIND');
    expect(keyVerdict('shard', false, ev([], [], ['user:1', 'user:2']))).toEqual({
      code: 'UNKNOWN_DATABASE',
      what: `it is a LevelDB database of something else: neither a shard's nor a master's keys (its first keys: "user:1" and "user:2")`,
    });
  });
});

describe('open errors (pure)', () => {
  const opening = (code: string, message: string) => Object.assign(new Error('Database failed to open'), { code: 'LEVEL_DATABASE_NOT_OPEN', cause: Object.assign(new Error(message), { code }) });

  it('names the path and LevelDB\'s cause, with a hint by cause', () => {
    const ro = openFailure('/d', 'shard', opening('LEVEL_IO_ERROR', 'IO error: /d/LOCK: Read-only file system'));
    expect(ro).toMatchObject({ code: 'OPEN_FAILED', dir: '/d', message: 'the shard cannot open its data directory /d: IO error: /d/LOCK: Read-only file system' });
    expect(ro.hint).toMatch(/read-only/);
    expect(openFailure('/d', 'master', opening('LEVEL_IO_ERROR', 'IO error: /d/LOCK: Permission denied')).hint).toMatch(/may not write there/);
    const bad = openFailure('/d', 'master', opening('LEVEL_CORRUPTION', 'Corruption: no meta-nextfile entry in descriptor'));
    expect(bad).toMatchObject({ code: 'DAMAGED', message: 'the master cannot open its data directory /d: Corruption: no meta-nextfile entry in descriptor' });
    const locked = openFailure('/d', 'shard', opening('LEVEL_LOCKED', 'IO error: lock /d/LOCK: already held by process'));
    expect(locked).toMatchObject({ code: 'LOCKED', message: 'the shard cannot open its data directory /d: it is in use by another process (IO error: lock /d/LOCK: already held by process)' });
    expect(locked.hint).toMatch(/another process is using it/);
  });
});

/** Every file's name and bytes, to show a refusal changed nothing. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort()) out[name] = (await readFile(join(dir, name))).toString('base64');
  return out;
}

async function refusalOf(p: Promise<unknown>): Promise<DataDirError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DataDirError);
  return err as DataDirError;
}

describe('real stores on real directories', () => {
  async function shardDir(): Promise<string> {
    const dir = join(await tempDir(), 'shard');
    const s = await ShardStore.open(dir);
    await s.putMeta('shardId', 's1');
    await s.close();
    return dir;
  }
  async function masterDir(): Promise<string> {
    const dir = join(await tempDir(), 'master');
    const m = await MasterStore.open(dir);
    await m.save({ clusterId: 'c-1', shards: [], nextShardNumber: 1, removed: [] });
    await m.close();
    return dir;
  }

  it('a new directory is created and marked with its kind; it opens again', async () => {
    const dir = join(await tempDir(), 'a', 'b');
    await (await ShardStore.open(dir)).close();
    expect(await readFile(join(dir, KIND_FILE), 'utf8')).toBe('shard\n');
    await (await ShardStore.open(dir)).close();
    const empty = await tempDir();
    await mkdir(join(empty, 'lost+found'));
    await (await MasterStore.open(empty)).close();
    expect(await readFile(join(empty, KIND_FILE), 'utf8')).toBe('master\n');
  });

  it('refuses the other kind\'s directory by its marker, touching nothing', async () => {
    const m = await masterDir();
    const before = await snapshot(m);
    const err = await refusalOf(ShardStore.open(m));
    expect(err).toMatchObject({ code: 'WRONG_KIND', message: `data directory ${m} cannot be used by this shard: it is a master's data directory (its ${KIND_FILE} file says "master")` });
    expect(await snapshot(m)).toEqual(before);
    const s = await shardDir();
    const sBefore = await snapshot(s);
    expect((await refusalOf(MasterStore.open(s))).message).toBe(`data directory ${s} cannot be used by this master: it is a shard's data directory (its ${KIND_FILE} file says "shard")`);
    expect(await snapshot(s)).toEqual(sBefore);
  });

  it('tells directories from before the marker apart by their keys, refuses the wrong one, and marks the right one', async () => {
    const m = await masterDir();
    const s = await shardDir();
    await rm(join(m, KIND_FILE));
    await rm(join(s, KIND_FILE));
    const err = await refusalOf(ShardStore.open(m));
    expect(err.code).toBe('WRONG_KIND');
    expect(err.message).toMatch(/it holds a master's state \(keys "clusterId", "nextShardNumber", "removedShards" and 1 more\), not a shard's$/);
    expect(err.hint).toMatch(/no key in it was changed/);
    expect((await refusalOf(MasterStore.open(s))).message).toMatch(/it holds a shard's state \(keys "!meta!/);
    // Still a master's, unmarked, with its keys: the refusal closed LevelDB and wrote nothing.
    await expect(readFile(join(m, KIND_FILE))).rejects.toMatchObject({ code: 'ENOENT' });
    const master = await MasterStore.open(m);
    expect((await master.load()).clusterId).toBe('c-1');
    await master.close();
    expect(await readFile(join(m, KIND_FILE), 'utf8')).toBe('master\n');
  });

  it('opens the v0 fixture\'s directories as what they are, and refuses them as the other', async () => {
    const root = await tempDir();
    await cp(resolve('test/fixtures/v0-cluster'), root, { recursive: true });
    expect((await refusalOf(MasterStore.open(join(root, 'shard1')))).code).toBe('WRONG_KIND');
    expect((await refusalOf(ShardStore.open(join(root, 'master')))).code).toBe('WRONG_KIND');
    await (await ShardStore.open(join(root, 'shard1'))).close();
    const m = await MasterStore.open(join(root, 'master'));
    expect((await m.load()).map?.epoch).toBe(4n);
    await m.close();
  });

  it('refuses unrelated files, a LevelDB of something else, a damaged LevelDB and a file, naming what it found', async () => {
    const junk = await tempDir();
    for (const f of ['notes.txt', 'photo.jpg', 'a.csv', 'z.bin']) await writeFile(join(junk, f), 'x');
    const before = await snapshot(junk);
    const e1 = await refusalOf(ShardStore.open(junk));
    expect(e1).toMatchObject({ code: 'UNRELATED_FILES', message: `data directory ${junk} cannot be used by this shard: it holds files that LevelDB does not make: "a.csv", "notes.txt", "photo.jpg" and 1 more` });
    expect(await snapshot(junk)).toEqual(before);

    const s = await shardDir();
    await writeFile(join(s, 'README'), 'mine');
    expect((await refusalOf(ShardStore.open(s))).message).toMatch(/it holds files that LevelDB does not make beside a LevelDB database: "README"$/);

    const foreign = join(await tempDir(), 'other');
    const db = new Level<string, string>(foreign);
    await db.put('user:1', 'x');
    await db.close();
    expect((await refusalOf(MasterStore.open(foreign))).message).toMatch(/a LevelDB database of something else: .*\(its first keys: "user:1"\)$/);

    const bad = await shardDir();
    await writeFile(join(bad, 'CURRENT'), 'garbage\n');
    const badBefore = await snapshot(bad);
    expect(await refusalOf(ShardStore.open(bad))).toMatchObject({ code: 'DAMAGED', message: `data directory ${bad} cannot be used by this shard: it is a damaged LevelDB database: its CURRENT file does not name a manifest (it holds "garbage\\n")` });
    expect(await snapshot(bad)).toEqual(badBefore);

    const truncated = await shardDir();
    const manifest = (await readdir(truncated)).find((n) => n.startsWith('MANIFEST-'))!;
    await writeFile(join(truncated, manifest), Buffer.alloc(10, 0x55));
    const e2 = await refusalOf(ShardStore.open(truncated));
    expect(e2.code).toBe('DAMAGED');
    expect(e2.message).toMatch(new RegExp(`^the shard cannot open its data directory ${truncated}: Corruption: `));

    const file = join(await tempDir(), 'plain');
    await writeFile(file, 'x');
    expect(await refusalOf(MasterStore.open(file))).toMatchObject({ code: 'NOT_A_DIRECTORY', message: `data directory ${file} cannot be used by this master: it is a plain file, not a directory` });
    expect((await refusalOf(ShardStore.open(join(file, 'sub')))).code).toBe('NOT_A_DIRECTORY');
    expect((await stat(file)).size).toBe(1);
  });
});
