/**
 * Issue 14, acceptance: a paused leader, etcd trouble, and revocation across
 * a failover. One cluster for the three, in order: three etcd members, two
 * `cairn master` processes on etcd (a 2 s lease, etcd calls bounded at 1 s
 * and settles at 3 s), shards that know both masters.
 *
 * 1. A paused leader. The first master runs with the failpoint
 *    master-after-commit=pause: during a rebalance it commits a move and
 *    stops itself (SIGSTOP) past its lease. The standby leads and finishes
 *    the move, and every shard learns its term. After SIGCONT the old leader
 *    goes on where it stopped (pushing its map for the move): the shards
 *    refuse those calls by term (their logs say so), it becomes a standby,
 *    and etcd's revision history shows no write under its term after the new
 *    term began (each write stamp names its term), while it shows the writes
 *    it made before.
 * 2. etcd trouble. One member killed: the same master leads under the same
 *    term, clients see no error, the map epoch is unchanged. A majority
 *    killed: no master can change the map, and `ctl servers` and `cairn
 *    health --master` say why (etcd), while shards keep serving reads and
 *    writes with the map they have. etcd back: a master leads again, the map
 *    epoch as before.
 * 3. Revocation across a failover: a user removed through the leader (the
 *    shared config edited, Reload) stays removed after the leader is killed
 *    and the standby takes over (defect this shows: the standby applied the
 *    client list it read at its own start, bringing the user back).
 *
 * Times are printed, never asserted. Skipped, saying why, when etcd is not
 * installed (unless CI=true).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { stringify } from 'yaml';
import { CairnClient } from '../services/client/index.js';
import { describeMasters, type MasterView } from '../services/client/master-status.js';
import { hashPassword } from '../services/common/auth.js';
import { termOfStamp } from '../services/master/etcd-store.js';
import { launchCairn, type Launched } from '../cli/launch.js';
import { ADMIN, CAIRN_BIN, runCtl, waitUntil } from './harness/cluster.js';
import { freePort } from './harness/compose.js';
import { EtcdCluster, etcdSkipReason } from './harness/etcd.js';
import { TEST_CREDENTIAL, USERS } from './harness/inproc.js';

const skip = etcdSkipReason();
if (skip) console.warn(`SKIPPED test/master-failover-faults.test.ts (a paused leader, etcd trouble, revocation across a failover): ${skip}`);
const withEtcd = skip ? describe.skip : describe;

const PREFIX = '/cairn-faults';
const LEASE_SECONDS = 2;
const LEAVER = { user: 'leaver', password: 'leaver-pass', role: 'rw' as const };

function runCairn(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [CAIRN_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CAIRN_CONFIG: '', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

withEtcd('masters on etcd: a paused leader, etcd trouble, revocation across a failover', () => {
  let etcd: EtcdCluster;
  let dir: string;
  const procs: Launched[] = [];
  const masters: Array<{ address: string; proc?: Launched }> = [];
  const shardLogs: string[] = [];
  let masterList: string;
  let c: CairnClient;

  const launch = (name: string, args: string[], env: NodeJS.ProcessEnv = {}) => {
    const l = launchCairn({ name, args, bin: CAIRN_BIN, env: { ...process.env, CAIRN_CONFIG: '', ...env }, logFile: join(dir, `${name}.log`) });
    procs.push(l);
    return l;
  };
  const client = (user: { user: string; password: string } = ADMIN) => CairnClient.connect({ master: masterList, user: user.user, password: user.password, timeoutMs: 5000 });
  const views = (): Promise<MasterView[]> => describeMasters(masterList, { timeoutMs: 1000 });
  /** The master that leads and can change the map, or undefined. */
  const leaderNow = async () => (await views()).find((m) => m.leader && !m.why);
  const config = (users: Array<{ user: string; password: string; role: string }>) =>
    writeFile(
      join(dir, 'master.yaml'),
      stringify({
        metaStore: 'etcd',
        etcdEndpoints: etcd.endpoints,
        etcdPrefix: PREFIX,
        etcdLeaseSeconds: LEASE_SECONDS,
        etcdCallTimeoutMs: 1000,
        etcdSettleTimeoutMs: 3000,
        expectShards: 2,
        replicationFactor: 1, // the control plane under test; single-copy moves are the journaled ones
        serverCredentialFile: join(dir, 'credential'),
        heartbeatIntervalMs: 250,
        shardDownAfterMs: 2000,
        maxConcurrentMoves: 1,
        clients: users.map((u) => ({ user: u.user, passwordHash: hashPassword(u.password), role: u.role })),
      }),
    );
  const writeRow = (cl: CairnClient, row: string) => cl.writeRows([{ row, cells: [{ column: 'c', value: row }] }], { timeoutMs: 5000 });

  beforeAll(async () => {
    etcd = await EtcdCluster.start(3);
    dir = await mkdtemp(join(tmpdir(), 'cairn-faults-'));
    await writeFile(join(dir, 'credential'), TEST_CREDENTIAL + '\n', { mode: 0o600 });
    for (let i = 0; i < 2; i++) masters.push({ address: `127.0.0.1:${await freePort()}` });
    masterList = masters.map((m) => m.address).join(',');
    await config([...USERS, LEAVER]);
    for (const [i, m] of masters.entries()) {
      // The first master stops itself right after it commits a move (case 1); the failpoint fires once.
      m.proc = launch(`master${i}`, ['master', '--config', join(dir, 'master.yaml'), '--listen', m.address, '--data-dir', join(dir, `master${i}`)], i === 0 ? { CAIRN_FAILPOINTS: 'master-after-commit=pause' } : {});
      await m.proc.listening;
      if (i === 0) await waitUntil(async () => (await leaderNow())?.address === m.address, 20_000, 'the first master to lead');
    }
    const shard = (i: number) => {
      shardLogs.push(join(dir, `shard${i}.log`));
      return launch(`shard${i}`, ['shard', '--listen', '127.0.0.1:0', '--data-dir', join(dir, `shard${i}`), '--master', masterList, '--server-credential-file', join(dir, 'credential'), '--heartbeat-interval-ms', '250']);
    };
    await Promise.all([shard(1).listening, shard(2).listening]);
    c = await client();
    await waitUntil(async () => (await c.listServers()).filter((s) => s.status === 'up').length === 2 && c.map.epoch > 0n, 30_000, 'two shards up');
    await c.writeRows(Array.from({ length: 600 }, (_, i) => ({ row: `seed-${String(i).padStart(4, '0')}`, cells: [{ column: 'c', value: 'v'.repeat(200) }] })));
    await shard(3).listening;
    await waitUntil(async () => (await c.listServers()).filter((s) => s.status === 'up').length === 3, 20_000, 'the third shard');
  }, 120_000);

  afterAll(async () => {
    c?.close();
    for (const p of procs) {
      p.child.kill('SIGCONT');
      p.child.kill('SIGKILL');
    }
    await Promise.all(procs.map((p) => p.exited));
    await etcd?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a leader paused past its lease: the standby leads; resumed, it writes nothing to etcd and the shards refuse its calls by term', async () => {
    const [a, b] = masters as [{ address: string; proc: Launched }, { address: string; proc: Launched }];
    const termA = (await views()).find((m) => m.address === a.address)!.term;
    await c.startRebalance({});
    await waitUntil(async () => (await readFile(join(dir, 'master0.log'), 'utf8')).includes('failpoint: pausing'), 60_000, 'the leader to commit a move and pause');
    const pausedAt = Date.now();
    await waitUntil(async () => (await leaderNow())?.address === b.address, 30_000, 'the standby to lead');
    console.log(`paused leader: the standby led ${Date.now() - pausedAt} ms after the pause (lease ${LEASE_SECONDS} s)`);
    const termB = (await views()).find((m) => m.address === b.address)!.term;
    expect(BigInt(termB)).toBeGreaterThan(BigInt(termA));
    // The new leader finishes the committed move, and every shard hears its term.
    await waitUntil(async () => (await c.admin((x) => x.listMoves, { all: true }, { timeoutMs: 3000 })).moves.some((m) => m.state === 'cleaned'), 30_000, 'the committed move cleaned by the new leader');
    await waitUntil(async () => (await Promise.all(shardLogs.map((f) => readFile(f, 'utf8')))).every((log) => log.includes('a master with a newer term called') && log.includes(`"term":"${termB}"`)), 20_000, 'every shard to hear the new term');

    a.proc.child.kill('SIGCONT');
    await waitUntil(async () => (await views()).find((m) => m.address === a.address)?.status === 'standby', 20_000, 'the resumed leader to stand down');
    const aView = (await views()).find((m) => m.address === a.address)!;
    const stepDown = (await readFile(join(dir, 'master0.log'), 'utf8')).split('\n').find((l) => l.includes('stopped leading'));
    console.log(`resumed leader: ${aView.status}: ${aView.why}; it stood down saying: ${stepDown}`);
    expect((await leaderNow())?.address).toBe(b.address);

    // Its calls after the pause (the map pushes for the move it committed) were refused by term.
    await waitUntil(async () => (await Promise.all(shardLogs.map((f) => readFile(f, 'utf8')))).some((log) => log.split('\n').some((l) => l.includes('STALE_TERM') && l.includes(`"term":"${termA}"`))), 10_000, 'a shard to refuse the resumed leader by term');

    // etcd's history: every write stamp since the new term began names it; the old term's writes all came before.
    const etcdClient = new Etcd3({ hosts: etcd.endpoints });
    try {
      const head = (await etcdClient.get(`${PREFIX}/write-stamp`).exec()).header.revision;
      const stamps: Array<{ revision: bigint; term: string }> = [];
      const watcher = await etcdClient.watch().key(`${PREFIX}/write-stamp`).startRevision('1').create();
      await new Promise<void>((done) => {
        watcher.on('put', (kv) => {
          stamps.push({ revision: BigInt(kv.mod_revision), term: termOfStamp(kv.value.toString()) });
          if (BigInt(kv.mod_revision) >= BigInt(head)) done();
        });
      });
      await watcher.cancel();
      const before = stamps.filter((s) => s.revision < BigInt(termB));
      const after = stamps.filter((s) => s.revision > BigInt(termB));
      console.log(`etcd history: ${before.filter((s) => s.term === termA).length} writes under term ${termA} before term ${termB} began, ${after.length} after it (terms ${[...new Set(after.map((s) => s.term))].join(',')})`);
      expect(before.some((s) => s.term === termA)).toBe(true);
      expect(after.length).toBeGreaterThan(0);
      expect(after.filter((s) => s.term !== termB)).toEqual([]);
    } finally {
      etcdClient.close();
    }
  }, 120_000);

  it('etcd trouble: one member lost changes nothing; the majority lost stops the map and says why while shards serve; etcd back, a master leads', async () => {
    await waitUntil(async () => (await c.admin((x) => x.listMoves, { all: true }, { timeoutMs: 3000 })).moves.every((m) => m.state === 'cleaned' || m.state === 'aborted'), 60_000, 'the rebalance to end');
    const before = await leaderNow();
    expect(before).toBeDefined();
    const epoch = (await c.admin((x) => x.listServers, {})).header!.epoch;

    // One member killed: same leader, same term, no client error, map unchanged.
    await etcd.kill(0);
    for (let i = 0; i < 16; i++) {
      await writeRow(c, `one-down-${i}`);
      await c.listServers();
      await new Promise((r) => setTimeout(r, 250));
    }
    const oneDown = await leaderNow();
    expect([oneDown?.address, oneDown?.term]).toEqual([before!.address, before!.term]);
    expect((await c.admin((x) => x.listServers, {})).header!.epoch).toBe(epoch);

    // The majority lost: no master can change the map, and they say why.
    const lostAt = Date.now();
    await etcd.kill(1);
    await waitUntil(async () => (await views()).every((m) => !m.leader || m.why !== ''), 30_000, 'the leader to stop changing the map');
    console.log(`etcd majority lost: the leader stopped ${Date.now() - lostAt} ms later`);
    const health = await runCairn(['health', '--master', masterList]);
    console.log(`cairn health --master during the outage (exit ${health.code}):\n${health.stdout}`);
    expect(health.code).toBe(1);
    expect(health.stdout).toMatch(/etcd/);
    expect(health.stdout.trim().split('\n').at(-1)).toBe('NOT_SERVING');
    const env = { CAIRN_USER: ADMIN.user, CAIRN_PASSWORD: ADMIN.password, CAIRN_MASTER: masterList };
    const servers = await runCtl(['servers', '--json'], env);
    console.log(`ctl servers --json during the outage (exit ${servers.code}): ${servers.stdout.trim()} ${servers.stderr.trim()}`);
    // A leader cut off from etcd still answers from memory (exit 0, servers listed) until its lease runs out; then none leads (exit 3). Either way each master says why.
    expect([0, 3]).toContain(servers.code);
    expect(servers.json.masters.filter((m: MasterView) => m.status !== 'unreachable').every((m: MasterView) => /etcd/.test(m.why))).toBe(true);
    // Shards serve with the map they have: writes and reads go through.
    for (let i = 0; i < 8; i++) await writeRow(c, `no-quorum-${i}`);
    const read = await c.getRows(['seed-0000', 'one-down-0', 'no-quorum-7'], { timeoutMs: 5000 });
    expect(['seed-0000', 'one-down-0', 'no-quorum-7'].filter((r) => !read.get(r)?.length)).toEqual([]);

    // etcd back: a master leads again, and the map is the one from before.
    const backAt = Date.now();
    await etcd.restart(0);
    await etcd.restart(1);
    await waitUntil(async () => (await leaderNow()) !== undefined, 60_000, 'a master to lead again');
    console.log(`etcd back: a master led again ${Date.now() - backAt} ms after the members were restarted`);
    expect((await runCairn(['health', '--master', masterList])).code).toBe(0);
    expect((await c.admin((x) => x.listServers, {}, { timeoutMs: 10_000 })).header!.epoch).toBe(epoch);
  }, 150_000);

  it('a user removed through the leader stays removed after the standby takes over', async () => {
    const leaver = await client(LEAVER);
    await writeRow(leaver, 'leaver-before');
    const leader = (await leaderNow())!;
    const leaderProc = masters.find((m) => m.address === leader.address)!.proc!;
    const standby = masters.find((m) => m.address !== leader.address)!;

    // Removed through the leader: the shared config loses the user, and the leader reloads it.
    await config(USERS);
    const reload = await c.admin((x) => x.reload, {}, { timeoutMs: 10_000 });
    expect(reload.removed).toEqual([LEAVER.user]);
    await expect(client(LEAVER)).rejects.toThrow(/password|unauthenticated|not/i);
    // Every shard has the revocation (from the leader's heartbeat answers) before the leader dies.
    const revokedAtShards = async () => (await Promise.all(shardLogs.map((f) => readFile(f, 'utf8')))).every((log) => log.split('\n').some((l) => l.includes('token revocations from the master') && l.includes(LEAVER.user)));
    await waitUntil(revokedAtShards, 10_000, 'every shard to have the revocation');
    expect(await writeRow(leaver, 'leaver-revoked').then(() => 'written', (err: Error) => err.message)).not.toBe('written');

    leaderProc.child.kill('SIGKILL');
    await leaderProc.exited;
    const killedAt = Date.now();
    await waitUntil(async () => (await leaderNow())?.address === standby.address, 30_000, 'the standby to lead');
    console.log(`revocation: the standby led ${Date.now() - killedAt} ms after the leader was killed`);

    const login = await client(LEAVER).then(
      (cl) => {
        cl.close();
        return 'logged in';
      },
      (err: Error) => err.message,
    );
    expect(login).not.toBe('logged in');
    // Its token from before the removal is still refused once the shards answer to the new leader, whose
    // heartbeat answers carry its whole list of revocations (one without the user would lift it).
    const termNow = (await leaderNow())!.term;
    await waitUntil(async () => (await Promise.all(shardLogs.map((f) => readFile(f, 'utf8')))).every((log) => log.includes(`"term":"${termNow}"`)), 20_000, 'every shard to hear the new leader');
    await new Promise((r) => setTimeout(r, 1500)); // several heartbeats answered by the new leader
    const late = await writeRow(leaver, 'leaver-after').then(() => 'written', (err: Error) => err.message);
    expect(late).not.toBe('written');
    leaver.close();
  }, 90_000);
});
