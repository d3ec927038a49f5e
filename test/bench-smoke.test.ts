/**
 * CI smoke tests for the benches. `npm run bench:peers`: the tiny mode runs start to finish
 * (Cairn clusters at replication factor 1 and 3, the echo floor, in-process
 * level, and etcd — 1 and 3 members — and redis when they are installed; a
 * missing one is reported with how to install it), and writes a results file
 * in the agreed shape, with exactly issue 15's targets, and a chart drawn from it.
 * `npm run bench:replication -- --quick`: both factors and one failover, and
 * its results file.
 * Benchmarks are not tests: nothing here looks at a time or a rate.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const dirs: string[] = [];

/** Issue 15's table, in its order. */
const ISSUE_15_TARGETS = [
  'put_ops_vs_etcd',
  'put_cpu_vs_etcd',
  'get_ops_vs_etcd',
  'batch100_vs_level',
  'batch1000_vs_level',
  'batch100_vs_etcd',
  'batch1000_vs_etcd',
  'scan_vs_level',
  'prefix_scan_vs_full',
  'transfer_vs_level',
  'rf3_put_vs_etcd3',
  'rf3_batch1000_vs_etcd3',
];

/** Why the 3-member etcd cannot run here (and the rf3 targets stay unmeasured), or undefined when it can. */
const etcdMissing = (): string | undefined => (spawnSync('etcd', ['--version'], { stdio: 'ignore' }).error ? 'etcd is not on PATH (apt-get install etcd-server)' : undefined);
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

    const file = JSON.parse(await readFile(json, 'utf8')) as {
      date: string;
      results: Array<Record<string, unknown>>;
      targets: Array<{ target: string; value: number | null; goal: string; met: boolean | null }>;
    };
    expect(new Date(file.date).toISOString()).toBe(file.date);
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
      // Every cairn row says its replication factor, every etcd row its cluster size.
      if (r.system === 'cairn') expect([1, 3]).toContain(r.replicationFactor);
      if (r.system === 'etcd') expect([1, 3]).toContain(r.members);
    }
    // One row per (system, factor or members, workload): factor-3 rows are their own, beside the factor-1 ones.
    const keys = file.results.map((r) => `${r.system}/${r.replicationFactor ?? r.members ?? '-'}/${r.workload}`);
    expect(new Set(keys).size).toBe(keys.length);
    const rowsOf = (system: string, size: { replicationFactor?: number; members?: number }) =>
      file.results.filter((r) => r.system === system && (size.replicationFactor === undefined || r.replicationFactor === size.replicationFactor) && (size.members === undefined || r.members === size.members)).map((r) => r.workload);
    // Cairn at factor 3 needs nothing installed: put and batch1000, the rf3 targets' workloads.
    expect(rowsOf('cairn', { replicationFactor: 3 }).sort()).toEqual(['batch1000', 'put']);
    expect(rowsOf('cairn', { replicationFactor: 1 })).toEqual(expect.arrayContaining(['put', 'get', 'batch100', 'batch1000', 'scan', 'scan_all', 'prefix_scan', 'transfer']));
    const noEtcd = etcdMissing();
    if (noEtcd === undefined) {
      expect(rowsOf('etcd', { members: 1 })).toEqual(expect.arrayContaining(['put', 'get', 'batch100', 'batch1000', 'scan']));
      expect(rowsOf('etcd', { members: 3 }).sort()).toEqual(['batch1000', 'put']);
    } else {
      console.log(`bench-smoke: the 1- and 3-member etcd were not exercised: ${noEtcd}`);
      expect(systems.has('etcd')).toBe(false);
    }

    // Exactly issue 15's targets, in its order; met is null exactly when a side was not measured.
    expect(out).toContain('Issue 15 targets');
    expect(file.targets.map((t) => t.target)).toEqual(ISSUE_15_TARGETS);
    for (const t of file.targets) {
      expect(Object.keys(t).sort()).toEqual(['goal', 'met', 'target', 'value']);
      expect(t.goal).toMatch(/^[≥≤] \d+\.\d+$/);
      if (t.value === null) expect(t.met).toBeNull();
      else expect(typeof t.met).toBe('boolean');
    }
    const target = (id: string) => file.targets.find((t) => t.target === id)!;
    // The selective prefix scan ran and its ratio to a full scan is a target.
    expect(file.results.filter((r) => r.system === 'cairn').map((r) => r.workload)).toEqual(expect.arrayContaining(['scan_all', 'prefix_scan']));
    expect(target('prefix_scan_vs_full')).toEqual(expect.objectContaining({ value: expect.any(Number), goal: '≤ 0.02' }));
    for (const id of ['batch100_vs_level', 'batch1000_vs_level', 'scan_vs_level', 'transfer_vs_level']) expect(target(id).value).toEqual(expect.any(Number));
    if (noEtcd === undefined) {
      // Both sides measured (put_cpu_vs_etcd left out: etcd's CPU in a 0.3 s window may be under one clock tick).
      for (const id of ['put_ops_vs_etcd', 'get_ops_vs_etcd', 'batch100_vs_etcd', 'batch1000_vs_etcd', 'rf3_put_vs_etcd3', 'rf3_batch1000_vs_etcd3']) {
        expect(target(id).value).toEqual(expect.any(Number));
      }
    } else {
      for (const id of ['put_ops_vs_etcd', 'rf3_put_vs_etcd3', 'rf3_batch1000_vs_etcd3']) expect(target(id)).toEqual(expect.objectContaining({ value: null, met: null }));
    }
    const chart = await readFile(svg, 'utf8');
    expect(chart.startsWith('<svg')).toBe(true);
    expect(chart).toContain('cairn');
    expect(chart).toContain('cairn rf3');
    if (noEtcd === undefined) expect(chart).toContain('etcd 3-member');
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

describe('bench:store and the transfer microbench', () => {
  it('bench:store runs each workload beside raw level and prints their ratios', async () => {
    const { code, out } = await run(['--seconds', '0.3', '--runs', '1'], 'store-bench');
    if (code !== 0) throw new Error(`bench:store exited with ${code}:\n${out}`);
    for (const w of ['put', 'batch100', 'batch1000']) expect(out).toContain(w);
    expect(out).toMatch(/level/);
  }, 120_000);

  it('the transfer microbench runs both apply modes', async () => {
    for (const mode of ['exact', 'ingest']) {
      const { code, out } = await run(['--rows', '3000', '--runs', '1', '--mode', mode], 'transfer-microbench');
      if (code !== 0) throw new Error(`transfer-microbench --mode ${mode} exited with ${code}:\n${out}`);
      expect(out).toMatch(/apply/);
    }
  }, 120_000);
});
