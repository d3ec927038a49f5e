/**
 * Wrong data directories (issue 11 item 4), with real `cairn shard`,
 * `cairn master` and `cairn master rebuild` processes on real LevelDB
 * directories: a directory of unrelated files, a master's directory given to
 * a shard and a shard's to a master (made by a real cluster, and from the v0
 * fixture, which predates the kind marker), a read-only directory, a corrupt
 * LevelDB (garbage in CURRENT; a truncated MANIFEST) and a plain file.
 *
 * Each process must exit non-zero, print an `error:` line naming the path and
 * what it found or LevelDB's cause, log it as JSON, and change nothing in the
 * directory. Before the check, the shard adopted the unrelated directory and
 * the master's (and a master the shard's) as if they were empty, and the
 * rest said only "Database failed to open".
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync, spawn } from 'node:child_process';
import { cp, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CAIRN_BIN, startProcCluster, type ProcCluster } from './harness/cluster.js';

interface Run {
  code: number | null;
  stderr: string;
}

/** Runs a cairn command that should refuse to start; a process still running after 20 s has adopted the directory. */
function runCairn(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [CAIRN_BIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, CAIRN_CONFIG: '', ...env } });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += '\n(still running after 20 s: it started on the directory)';
      child.kill('SIGKILL');
    }, 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code, stderr });
    });
  });
}

/** Every file under `dir` (names and bytes), or a plain file's bytes: what must not change. */
async function contents(path: string, skip: (name: string) => boolean = () => false): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  if (!(await stat(path)).isDirectory()) return { '.': (await readFile(path)).toString('base64') };
  for (const name of (await readdir(path)).sort()) {
    if (skip(name)) continue;
    const p = join(path, name);
    out[name] = (await stat(p)).isDirectory() ? JSON.stringify(await contents(p)) : (await readFile(p)).toString('base64');
  }
  return out;
}

/** The `error:` line main prints, and the JSON log line the server wrote. */
function refusalOf(r: Run): { error: string; logged: boolean } {
  const error = r.stderr.split('\n').find((l) => l.startsWith('error: ')) ?? `(no error line in: ${r.stderr.slice(-400)})`;
  const logged = r.stderr.split('\n').some((l) => l.includes('"message":"data directory refused"'));
  return { error, logged };
}

describe('a shard or a master on the wrong directory', () => {
  let cluster: ProcCluster;
  let work: string;
  let masterDir: string;
  let shardDir: string;

  const shardArgs = (dataDir: string) => ['shard', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--master', '127.0.0.1:1', '--server-credential-file', cluster.credFile];
  const masterArgs = (dataDir: string) => ['master', '--config', cluster.masterYaml, '--listen', '127.0.0.1:0', '--data-dir', dataDir];

  /** Starts `args` on `path`, expects exit 1 with `expected` in its error line, logged, and `path` unchanged (but for `skip`ped names). */
  async function expectRefused(role: 'shard' | 'master', path: string, expected: RegExp, skip?: (name: string) => boolean): Promise<string> {
    const before = await contents(path, skip);
    const r = await runCairn(role === 'shard' ? shardArgs(path) : masterArgs(path));
    const { error, logged } = refusalOf(r);
    expect({ code: r.code, error, logged }).toEqual({ code: 1, error: expect.stringMatching(expected), logged: true });
    expect(error).toContain(path);
    expect(await contents(path, skip)).toEqual(before);
    return error;
  }

  beforeAll(async () => {
    // A real master's and a real shard's directories, stopped.
    cluster = await startProcCluster({ shards: 1 });
    const load = await cluster.ctl(['load', '--rows', '200', '--json']);
    expect(load.json).toEqual({ written: 200, errors: 0 });
    await cluster.stopAll();
    work = join(cluster.dir, 'cases');
    await mkdir(work);
    masterDir = join(cluster.dir, 'master');
    shardDir = join(cluster.dir, 'shard1');
  }, 120_000);

  afterAll(async () => {
    await cluster?.cleanup();
  });

  it('a directory of unrelated files: refused, naming some of them', async () => {
    const dir = join(work, 'photos');
    await mkdir(dir);
    for (const f of ['IMG_0001.jpg', 'IMG_0002.jpg', 'notes.txt', 'todo.md']) await writeFile(join(dir, f), f);
    const err = await expectRefused('shard', dir, /cannot be used by this shard: it holds files that LevelDB does not make: "IMG_0001.jpg", "IMG_0002.jpg", "notes.txt" and 1 more$/);
    expect(err).toBe(`error: data directory ${dir} cannot be used by this shard: it holds files that LevelDB does not make: "IMG_0001.jpg", "IMG_0002.jpg", "notes.txt" and 1 more`);
    await expectRefused('master', dir, /cannot be used by this master: it holds files that LevelDB does not make/);
  }, 60_000);

  it("a master's directory given to a shard, and a shard's to a master: refused, naming the kind", async () => {
    await expectRefused('shard', masterDir, /cannot be used by this shard: it is a master's data directory \(its CAIRN_KIND file says "master"\)$/);
    await expectRefused('master', shardDir, /cannot be used by this master: it is a shard's data directory \(its CAIRN_KIND file says "shard"\)$/);
  }, 60_000);

  it('directories from before the kind marker (the v0 fixture): refused by their keys, no key changed', async () => {
    const v0 = join(work, 'v0');
    await cp(resolve('test/fixtures/v0-cluster'), v0, { recursive: true });
    // Telling them apart means opening LevelDB, which rewrites its own bookkeeping (LOG, MANIFEST, log files), never a key.
    const keysOf = async (dir: string) => {
      const { Level } = await import('level');
      const db = new Level<string, string>(dir);
      try {
        return await db.iterator().all();
      } finally {
        await db.close();
      }
    };
    const shardKeys = await keysOf(join(v0, 'shard1'));
    const masterKeys = await keysOf(join(v0, 'master'));
    const leveldbOwn = () => true; // compare keys below instead of files
    await expectRefused('shard', join(v0, 'master'), /cannot be used by this shard: it holds a master's state \(keys "[^"]+".*\), not a shard's$/, leveldbOwn);
    await expectRefused('master', join(v0, 'shard1'), /cannot be used by this master: it holds a shard's state \(keys "!cells!.*, not a master's$/, leveldbOwn);
    expect(await keysOf(join(v0, 'master'))).toEqual(masterKeys);
    expect(await keysOf(join(v0, 'shard1'))).toEqual(shardKeys);
    await expect(stat(join(v0, 'master', 'CAIRN_KIND'))).rejects.toMatchObject({ code: 'ENOENT' });
  }, 60_000);

  it('a plain file: refused, saying so', async () => {
    const file = join(work, 'data.db');
    await writeFile(file, 'not a directory');
    await expectRefused('shard', file, /cannot be used by this shard: it is a plain file, not a directory$/);
    await expectRefused('master', file, /cannot be used by this master: it is a plain file, not a directory$/);
  }, 60_000);

  it('a corrupt LevelDB: garbage in CURRENT is refused before LevelDB opens; a truncated MANIFEST names LevelDB\'s cause', async () => {
    const garbage = join(work, 'garbage-current');
    await cp(shardDir, garbage, { recursive: true });
    await writeFile(join(garbage, 'CURRENT'), 'MANIFEST-00000\u0000\u0000\u0007garbage\n');
    await expectRefused('shard', garbage, /cannot be used by this shard: it is a damaged LevelDB database: its CURRENT file does not name a manifest \(it holds ".*"\)$/);

    const truncated = join(work, 'truncated-manifest');
    await cp(shardDir, truncated, { recursive: true });
    const manifest = (await readdir(truncated)).find((n) => n.startsWith('MANIFEST-'))!;
    const bytes = await readFile(join(truncated, manifest));
    await writeFile(join(truncated, manifest), bytes.subarray(0, 10));
    // LevelDB rotates its info log (LOG -> LOG.old) and takes LOCK on every attempt to open; every data file stays as it was.
    const ownLog = (n: string) => n === 'LOG' || n === 'LOG.old' || n === 'LOCK';
    const err = await expectRefused('shard', truncated, /^error: the shard cannot open its data directory .*: Corruption: /, ownLog);
    expect(err).toBe(`error: the shard cannot open its data directory ${truncated}: Corruption: no meta-nextfile entry in descriptor`);
  }, 60_000);

  it('a read-only directory: the cause from LevelDB, and a hint', async () => {
    const ro = join(work, 'read-only');
    await cp(shardDir, ro, { recursive: true });
    // Root ignores permission bits, so make it read-only where even root cannot write: a read-only bind mount.
    try {
      execFileSync('mount', ['--bind', ro, ro], { stdio: 'pipe' });
    } catch (err) {
      console.log(`SKIPPED the read-only case: cannot bind-mount here (${(err as Error).message.split('\n')[0]})`);
      return;
    }
    try {
      execFileSync('mount', ['-o', 'remount,ro,bind', ro], { stdio: 'pipe' });
      const before = await contents(ro);
      const r = await runCairn(shardArgs(ro));
      const { error, logged } = refusalOf(r);
      expect({ code: r.code, error, logged }).toEqual({ code: 1, error: `error: the shard cannot open its data directory ${ro}: IO error: ${ro}/LOCK: Read-only file system`, logged: true });
      expect(r.stderr).toContain('hint: the file system is mounted read-only');
      expect(await contents(ro)).toEqual(before);
      // An empty read-only directory: the same, from the master.
      const r2 = await runCairn(masterArgs(join(ro, 'missing-subdir')));
      expect(r2.code).toBe(1);
      expect(refusalOf(r2).error).toContain(join(ro, 'missing-subdir'));
    } finally {
      execFileSync('umount', [ro]);
    }
  }, 60_000);

  it('master rebuild refuses a shard\'s directory as its target, before asking any shard', async () => {
    const before = await contents(shardDir);
    const r = await runCairn(['master', 'rebuild', '--config', cluster.masterYaml, '--data-dir', shardDir, '--from', '127.0.0.1:1']);
    expect({ code: r.code, error: refusalOf(r).error }).toEqual({
      code: 1,
      error: `error: data directory ${shardDir} cannot be used by this master: it is a shard's data directory (its CAIRN_KIND file says "shard")`,
    });
    expect(r.stderr).toContain('hint: a master and a shard each need their own data directory');
    expect(await contents(shardDir)).toEqual(before);
  }, 60_000);

  it('the right directories still start', async () => {
    await cluster.restart(cluster.master);
    await cluster.restart(cluster.shards[0]!);
    const r = await cluster.ctl(['verify', '--rows', '200', '--json']);
    expect(r.json).toEqual({ checked: 200, missing: 0, wrong: 0 });
  }, 60_000);
});
