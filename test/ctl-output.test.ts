/**
 * Issue 12, what `cairn ctl` printed, against a real cluster:
 * - `ctl scan | head -3`: the reader leaves early; ctl crashed with an EPIPE stack;
 * - `ctl get` of a missing row exited 1 and printed nothing at all.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { CAIRN_BIN, startProcCluster, type ProcCluster } from './harness/cluster.js';

let cluster: ProcCluster;
beforeAll(async () => {
  cluster = await startProcCluster({ shards: 1 });
  expect((await cluster.ctl(['load', '--rows', '3000', '--value-size', '200', '--json'])).json).toEqual({ written: 3000, errors: 0 });
}, 120_000);
afterAll(() => cluster?.cleanup());

describe('ctl scan into a reader that stops early (| head -3)', () => {
  it('exits 0 with nothing on stderr', async () => {
    const child = spawn(process.execPath, [CAIRN_BIN, 'ctl', 'scan', '--limit', '3000'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...cluster.ctlEnv } });
    let stderr = '';
    let first = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.stdout.once('data', (d) => {
      first = String(d);
      child.stdout.destroy(); // as head does after 3 lines
    });
    const code = await new Promise<number | null>((done) => child.on('close', (c) => done(c)));
    expect(first.split('\n')[0]).toMatch(/^\S+\t/);
    expect(stderr).toBe('');
    expect(code).toBe(0);
  }, 60_000);
});

describe('ctl get of a missing row', () => {
  it('says the row was not found and exits 1', async () => {
    const r = await cluster.ctl(['get', 'no-such-row']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('row "no-such-row" not found');
  });

  it('with --json, prints the row with no cells and exits 1', async () => {
    const r = await cluster.ctl(['get', 'no-such-row', '--json']);
    expect(r.code).toBe(1);
    expect(r.json).toEqual({ row: 'no-such-row', cells: [] });
    expect(r.stderr).toContain('not found');
  });

  it('a row that exists still prints its cells and exits 0', async () => {
    expect((await cluster.ctl(['put', 'r1', 'c', 'v'])).code).toBe(0);
    const r = await cluster.ctl(['get', 'r1']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^c\t\d+\tv\n$/);
  });
});
