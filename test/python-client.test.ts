/**
 * Issue 16, item 2: the Python example (examples/python/) against a real
 * cluster. Debian's python3-grpcio, python3-grpc-tools and python3-protobuf
 * under /usr/bin/python3 compile proto/cairn/v1/*.proto, then the example logs
 * in as an rw user, writes, reads, batches, scans a prefix in pages (routed by
 * the map and with epoch 0), checks-and-mutates, takes a lease, and meets
 * each retryable status: FAILED_PRECONDITION (WRONG_SHARD) from a stale map,
 * UNAVAILABLE from an address where nobody answers, UNAVAILABLE with
 * cairn-retry-after-ms, and TOKEN_EXPIRED (the master gives 2 s tokens).
 * Then the TypeScript SDK reads back what it wrote: every row, each written
 * once however often it was retried.
 *
 * Skipped, saying why, when /usr/bin/python3 (or $CAIRN_TEST_PYTHON) lacks
 * those packages (.ci/run installs them).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { CairnClient } from '../services/client/index.js';
import { startProcCluster, type ProcCluster } from './harness/cluster.js';

/** Debian's interpreter, not whichever python3 is first on the PATH (pyenv, a virtualenv); CAIRN_TEST_PYTHON overrides it. */
const PYTHON = process.env.CAIRN_TEST_PYTHON || '/usr/bin/python3';
const EXAMPLE = resolve('examples/python/example.py');

/** Why the suite cannot run here, or undefined when it can. */
function missingPython(): string | undefined {
  if (!existsSync(PYTHON)) return `${PYTHON} does not exist`;
  // grpc_tools.protoc, not only grpc_tools: Debian's 1.14 imports pkg_resources there, which it does not depend on.
  const r = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools.protoc, google.protobuf'], { encoding: 'utf8', env: pythonEnv() });
  if (r.status === 0) return undefined;
  const last = (r.stderr || String(r.error ?? '')).trim().split('\n').pop();
  return `${PYTHON} cannot import grpc, grpc_tools.protoc and google.protobuf (${last}); apt-get install python3-grpcio python3-grpc-tools python3-protobuf python3-pkg-resources`;
}

/** The environment without what would point Debian's interpreter at another Python's packages. */
function pythonEnv(): NodeJS.ProcessEnv {
  const { PYTHONPATH: _path, PYTHONHOME: _home, ...env } = process.env;
  return env;
}

const missing = missingPython();
if (missing) console.warn(`SKIPPED test/python-client.test.ts (the Python example against a real cluster): ${missing}`);
const withPython = missing ? describe.skip : describe;

const PREFIX = 'py-test/';
const ROWS = [
  'greeting',
  'counted',
  ...Array.from({ length: 10 }, (_, i) => `item-${String(i).padStart(2, '0')}`),
  'job',
  'forwarded',
  'retry-wrong-shard',
  'retry-unreachable',
  'retry-after',
  'retry-token',
].map((r) => PREFIX + r);

withPython('the Python example against a real cluster', () => {
  let cluster: ProcCluster;
  let client: CairnClient;
  let genDir: string;
  let run: { code: number | null; stdout: string; stderr: string; ms: number };

  beforeAll(async () => {
    genDir = await mkdtemp(join(tmpdir(), 'cairn-pygen-'));
    // 2 s tokens, so the example sees a shard answer TOKEN_EXPIRED and logs in again.
    cluster = await startProcCluster({ shards: 3, masterArgs: ['--token-ttl-seconds', '2'] });
    const started = Date.now();
    run = await new Promise((done) => {
      execFile(
        PYTHON,
        [EXAMPLE, '--master', cluster.masterAddress, '--prefix', PREFIX, '--gen-dir', genDir],
        // The rw user: what a service would use. No __pycache__ in the checkout.
        { env: { ...pythonEnv(), CAIRN_USER: 'writer', CAIRN_PASSWORD: 'writer-pass', PYTHONDONTWRITEBYTECODE: '1' }, timeout: 60_000 },
        (err, stdout, stderr) => done({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr, ms: Date.now() - started }),
      );
    });
    client = await CairnClient.connect({ master: cluster.masterAddress, user: 'admin', password: 'admin-pass' });
  }, 90_000);

  afterAll(async () => {
    client?.close();
    await cluster?.cleanup();
    if (genDir) await rm(genDir, { recursive: true, force: true });
  });

  const line = (step: string): string => {
    const found = run.stdout.split('\n').find((l) => l.startsWith(`${step}:`));
    if (!found) throw new Error(`no "${step}:" line in the example's output:\n${run.stdout}\n${run.stderr}`);
    return found;
  };

  it('runs to the end, generating its stubs with Debian grpc_tools', () => {
    if (run.code !== 0) throw new Error(`example.py exited ${run.code}:\n${run.stdout}\n${run.stderr}`);
    expect(existsSync(join(genDir, 'cairn', 'v1', 'shard_pb2_grpc.py'))).toBe(true);
    expect(line('login')).toMatch(/^login: user writer, role rw, token valid for [12] s$/);
    expect(line('map')).toBe('map: epoch 1, 3 ranges, 3 shards');
    expect(line('done')).toBe(`done: ${ROWS.length} rows under ${PREFIX}`);
    // A few seconds (stubs, 2 s of waiting for the token to expire, the calls);
    // the bound is loose for a loaded CI machine, and catches a retry loop that
    // sleeps to its deadline.
    expect(run.ms).toBeLessThan(30_000);
  });

  it('writes, reads, batches, scans in pages, checks-and-mutates, leases and forwards', () => {
    expect(line('read')).toBe(`read: ${PREFIX}greeting msg:text = 'hello from python'`);
    expect(line('applied-once')).toMatch(/sent twice -> same timestamp \d+, 1 version stored$/);
    expect(line('reused-id')).toBe('reused-id: other cells under the same request id -> ABORTED (CONFLICT)');
    expect(line('batch')).toMatch(/^batch: 10 rows in [1-3] WriteRows calls/);
    const pages = run.stdout.split('\n').filter((l) => l.startsWith('scan page '));
    expect(pages.length).toBeGreaterThanOrEqual(3); // 10 rows, 4 a page
    expect(line('scan')).toBe(`scan: 10 rows under ${PREFIX}item- range by range, self-routed`);
    expect(line('scan-epoch0')).toBe('scan-epoch0: 10 rows, same order, one shard walking the ranges');
    expect(line('check-and-mutate')).toBe('check-and-mutate: claim if absent -> True, second claim -> False, claimed -> done -> True');
    expect(line('lease')).toMatch(/^lease: LockRow -> [0-9a-f-]{36}, ExtendLease -> \+\d+\.\d s, second LockRow -> ABORTED \(CONFLICT\), UnlockRow ok$/);
    expect(line('forward')).toMatch(new RegExp(`^forward: wrote and read ${PREFIX}forwarded \\(owner s\\d\\) through s\\d with epoch 0$`));
    expect(line('health')).toBe('health: master SERVING, s1 SERVING, s2 SERVING, s3 SERVING');
  });

  it('meets each retryable status and recovers as docs/clients.md says', () => {
    const retries = run.stdout.split('\n').filter((l) => l.startsWith('  retry '));
    const retryOf = (row: string) => retries.find((l) => l.startsWith(`  retry WriteRows ${PREFIX}${row}:`)) ?? `(no retry line for ${row} in:\n${run.stdout})`;
    expect(retryOf('retry-wrong-shard')).toMatch(/FAILED_PRECONDITION \(WRONG_SHARD\) cairn-epoch=1 cairn-owner=s\d cairn-owner-address=127\.0\.0\.1:\d+ -> refreshed the map/);
    expect(retryOf('retry-unreachable')).toMatch(/: UNAVAILABLE -> refreshed the map/); // no cairn-error-code: nobody answered
    expect(retryOf('retry-after')).toMatch(/: UNAVAILABLE \(NOT_READY\) cairn-epoch=1 cairn-retry-after-ms=50 -> backing off (\d+) ms$/);
    expect(Number(/backing off (\d+) ms/.exec(retryOf('retry-after'))![1])).toBeGreaterThanOrEqual(50);
    expect(retryOf('retry-token')).toMatch(/UNAUTHENTICATED \(UNAUTHENTICATED\) cairn-error-reason=TOKEN_EXPIRED -> logging in again$/);
    expect(line('token-expired')).toMatch(/logged in again and wrote/);
    expect(retries).toHaveLength(4);
  });

  it('left exactly its rows in the cluster, each write applied once', async () => {
    const found = new Map<string, Map<string, string[]>>();
    for await (const r of client.scan(PREFIX, { allVersions: true })) {
      const cols = new Map<string, string[]>();
      for (const c of r.cells) cols.set(c.column, [...(cols.get(c.column) ?? []), c.value.toString('utf8')]);
      found.set(r.row, cols);
    }
    expect([...found.keys()].sort()).toEqual([...ROWS].sort());
    const col = (row: string, column: string) => found.get(PREFIX + row)?.get(column);
    expect(col('greeting', 'msg:text')).toEqual(['hello from python']);
    expect(col('counted', 'n')).toEqual(['once']); // sent twice with one request id; the reuse with other cells was refused
    for (let i = 0; i < 10; i++) expect(col(`item-${String(i).padStart(2, '0')}`, 'data:n')).toEqual([String(i)]);
    expect(col('job', 'state')).toEqual(['done', 'claimed']); // newest first; the second claim wrote nothing
    expect(col('job', 'owner')).toEqual(['python']);
    expect(col('forwarded', 'msg:text')).toEqual(['via another shard']);
    expect(col('retry-wrong-shard', 'msg:text')).toEqual(['routed again']);
    expect(col('retry-unreachable', 'msg:text')).toEqual(['found again']);
    expect(col('retry-after', 'msg:text')).toEqual(['after the hint']);
    expect(col('retry-token', 'msg:text')).toEqual(['after a new login']);
    // The lease was released: another holder can take one now.
    const lease = await client.lockRow(`${PREFIX}job`, 1000);
    await client.unlockRow(`${PREFIX}job`, lease.leaseId);
  });
});
