/**
 * The first quick-start command: `npm start` runs `cairn dev`, a master and 3
 * shards, and prints a `cairn ctl servers` command that shows 3 shards up.
 * Also: `cairn --help` works right after install.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { CAIRN_BIN, freeBasePort, runCtl } from './harness/cluster.js';


let dev: ChildProcess | undefined;
let dir: string | undefined;
afterAll(async () => {
  if (dev && dev.exitCode === null) {
    dev.kill('SIGINT');
    await new Promise((r) => dev!.once('exit', r));
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('cairn', () => {
  it('--help exits 0 and lists the commands', () => {
    const r = spawnSync(process.execPath, [CAIRN_BIN, '--help'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    for (const c of ['master', 'shard', 'dev', 'ctl', 'hash-password']) expect(r.stdout).toContain(c);
  });

  it('dev starts a cluster and prints a ctl command that shows 3 shards up', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cairn-dev-'));
    const base = await freeBasePort([0, 1, 2, 3]);
    dev = spawn(process.execPath, [CAIRN_BIN, 'dev', '--data-dir', dir, '--base-port', String(base)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    await new Promise<void>((done, fail) => {
      const t = setTimeout(() => fail(new Error(`dev did not print the connect command: ${lines.join('\n')}`)), 45_000);
      createInterface({ input: dev!.stdout! }).on('line', (l) => {
        lines.push(l);
        if (l.includes('cairn ctl servers')) {
          clearTimeout(t);
          done();
        }
      });
    });
    const envLine = lines.find((l) => l.includes('export CAIRN_USER='))!;
    const env = Object.fromEntries([...envLine.matchAll(/(CAIRN_\w+)=(\S+)/g)].map((m) => [m[1]!, m[2]!]));
    const cmd = lines.find((l) => l.includes('cairn ctl servers'))!.trim().split(/\s+/);
    const args = cmd.slice(cmd.indexOf('ctl') + 1);
    const human = await runCtl(args, env);
    expect(human.code).toBe(0);
    expect(human.stdout.match(/ up /g)).toHaveLength(3);
    const json = await runCtl([...args, '--json'], env);
    expect(json.json.servers.map((s: { status: string }) => s.status)).toEqual(['up', 'up', 'up']);

    dev.kill('SIGINT');
    expect(await new Promise((r) => dev!.once('exit', r))).toBe(0);
  }, 90_000);
});
