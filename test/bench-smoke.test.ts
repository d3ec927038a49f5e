/**
 * CI smoke tests for the benches. `npm run bench:peers`: the tiny mode runs start to finish
 * (Cairn cluster, the echo floor, in-process level, and etcd and redis when
 * they are installed; a missing one is reported with how to install it), and
 * writes a results file in the agreed shape and a chart drawn from it.
 * `npm run bench:replication -- --quick`: both factors and one failover, and
 * its results file.
 * Benchmarks are not tests: nothing here looks at a time or a rate.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function run(args: string[], bench = 'peers-bench'): Promise<{ code: number | null; out: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [resolve(`dist/bench/${bench}.js`), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => done({ code, out }));
  });
}

describe('bench:peers --tiny', () => {
  it('runs every installed system and writes results and a chart', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-bench-smoke-'));
    dirs.push(dir);
    const json = join(dir, 'results.json');
    const svg = join(dir, 'chart.svg');
    const { code, out } = await run(['--tiny', '--out', json, '--chart', svg]);
    if (code !== 0) throw new Error(`bench:peers --tiny exited with ${code}:\n${out}`);

    const file = JSON.parse(await readFile(json, 'utf8')) as { results: Array<Record<string, unknown>>; targets: unknown[] };
    const systems = new Set(file.results.map((r) => r.system));
    for (const s of ['cairn', 'level', 'echo']) expect(systems).toContain(s);
    for (const s of ['etcd', 'redis']) {
      // Either it ran, or the output says how to install it.
      if (!systems.has(s)) expect(out).toMatch(new RegExp(`${s === 'etcd' ? 'etcd' : 'redis-server'} is not installed.*apt-get install -y ${s === 'etcd' ? 'etcd-server' : 'redis-server'}`));
    }
    const ops = new Set(file.results.filter((r) => r.system === 'cairn').map((r) => r.op));
    for (const op of ['put', 'get', 'batch', 'scan', 'transfer']) expect(ops).toContain(op);
    for (const r of file.results) {
      expect(r).toEqual(
        expect.objectContaining({
          system: expect.stringMatching(/^(cairn|etcd|redis|level|echo)$/),
          op: expect.stringMatching(/^(put|get|batch|scan|transfer)$/),
          rowsPerCall: expect.any(Number),
          opsPerSec: expect.any(Number),
          rowsPerSec: expect.any(Number),
        }),
      );
      expect(r).toHaveProperty('p50Ms');
      expect(r).toHaveProperty('p99Ms');
      expect(r).toHaveProperty('serverCpuUsPerOp');
    }
    expect(file.targets.length).toBeGreaterThan(0);
    expect(out).toContain('Issue 7 and issue 15 targets');
    // The selective prefix scan ran and its ratio to a full scan is a target.
    expect(file.results.filter((r) => r.system === 'cairn').map((r) => r.workload)).toEqual(expect.arrayContaining(['scan_all', 'prefix_scan']));
    expect(file.targets).toContainEqual(expect.objectContaining({ target: 'prefix_scan_vs_full', value: expect.any(Number), goal: '≤ 0.02' }));
    const chart = await readFile(svg, 'utf8');
    expect(chart.startsWith('<svg')).toBe(true);
    expect(chart).toContain('cairn');
  }, 240_000);
});

describe('bench:replication --quick', () => {
  it('measures factor 1 and 3, times a failover, and writes results', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-bench-smoke-'));
    dirs.push(dir);
    const json = join(dir, 'replication.json');
    const { code, out } = await run(['--quick', '--out', json], 'replication-bench');
    if (code !== 0) throw new Error(`bench:replication --quick exited with ${code}:\n${out}`);
    const file = JSON.parse(await readFile(json, 'utf8')) as { results: Array<Record<string, unknown>>; ratios: unknown[]; failover: { trials: unknown[] } };
    expect(file.results.map((r) => `${r.workload}/${r.factor}`).sort()).toEqual(['batch1000/1', 'batch1000/3', 'put/1', 'put/3']);
    for (const r of file.results) expect(r).toEqual(expect.objectContaining({ rowsPerSec: expect.any(Number), serverCpuUsPerRow: expect.any(Number) }));
    expect(file.ratios).toHaveLength(2);
    expect(file.failover.trials).toHaveLength(1);
    expect(file.failover.trials[0]).toEqual(expect.objectContaining({ totalMs: expect.any(Number), victim: expect.any(String), promoted: expect.any(String) }));
    expect(out).toContain('Failover time (median of 1)');
  }, 180_000);
});
