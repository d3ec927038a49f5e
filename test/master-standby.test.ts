/**
 * Issue 14, acceptance: leader death under load and during a move. Three etcd
 * members, two `cairn master` processes on etcd (metaStore etcd, a 2 s
 * lease), three shards that know both masters, writers, and a throttled
 * rebalance. The leader is killed with SIGKILL while a move is under way:
 * the standby leads (the test prints after how long), every move ends
 * committed or aborted, `ctl` pointed at both masters keeps working, and no
 * acknowledged write is lost. Takeover time is reported, never asserted.
 *
 * Skipped, saying why, when etcd is not installed (unless CI=true).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { CairnClient } from '../services/client/index.js';
import { hashPassword } from '../services/common/auth.js';
import { leadsAt } from '../services/client/master-status.js';
import { checkHealth } from '../services/common/health.js';
import { launchCairn, type Launched } from '../cli/launch.js';
import { ADMIN, CAIRN_BIN, runCtl, waitUntil } from './harness/cluster.js';
import { freePort } from './harness/compose.js';
import { EtcdCluster, etcdSkipReason } from './harness/etcd.js';
import { TEST_CREDENTIAL, USERS } from './harness/inproc.js';

const skip = etcdSkipReason();
if (skip) console.warn(`SKIPPED test/master-standby.test.ts (standby masters on etcd): ${skip}`);
const withEtcd = skip ? describe.skip : describe;

const LEASE_SECONDS = 2;

withEtcd('two masters on etcd, the leader killed during a move', () => {
  let etcd: EtcdCluster;
  let dir: string;
  const procs: Launched[] = [];
  const masters: Array<{ address: string; proc?: Launched }> = [];
  let masterList: string;

  const launch = (name: string, args: string[]) => {
    const l = launchCairn({ name, args, bin: CAIRN_BIN, env: { ...process.env, CAIRN_CONFIG: '' }, logFile: join(dir, `${name}.log`) });
    procs.push(l);
    return l;
  };
  const client = (master = masterList) => CairnClient.connect({ master, user: ADMIN.user, password: ADMIN.password, timeoutMs: 5000 });
  /** True when the master at `address` reports its Admin service SERVING: it leads (a standby is SERVING overall only). */
  const leads = (address: string) => leadsAt(address);

  beforeAll(async () => {
    etcd = await EtcdCluster.start(3);
    dir = await mkdtemp(join(tmpdir(), 'cairn-standby-'));
    await writeFile(join(dir, 'credential'), TEST_CREDENTIAL + '\n', { mode: 0o600 });
    for (let i = 0; i < 2; i++) masters.push({ address: `127.0.0.1:${await freePort()}` });
    masterList = masters.map((m) => m.address).join(',');
    await writeFile(
      join(dir, 'master.yaml'),
      stringify({
        metaStore: 'etcd',
        etcdEndpoints: etcd.endpoints,
        etcdPrefix: '/cairn-standby',
        etcdLeaseSeconds: LEASE_SECONDS,
        expectShards: 2,
        replicationFactor: 1, // the moves under test are the single-copy ones, journaled (replica copies are not yet)
        serverCredentialFile: join(dir, 'credential'),
        heartbeatIntervalMs: 250,
        shardDownAfterMs: 2000,
        clients: USERS.map((u) => ({ user: u.user, passwordHash: hashPassword(u.password), role: u.role })),
      }),
    );
    for (const [i, m] of masters.entries()) {
      m.proc = launch(`master${i}`, ['master', '--config', join(dir, 'master.yaml'), '--listen', m.address, '--data-dir', join(dir, `master${i}`)]);
      await m.proc.listening;
      if (i === 0) await waitUntil(() => leads(m.address), 20_000, 'the first master to lead');
      else {
        // A standby: alive (overall SERVING) while its Admin service is NOT_SERVING, so a liveness probe never restarts it.
        await waitUntil(async () => (await checkHealth(m.address, { timeoutMs: 1000 })) === 'SERVING', 10_000, 'the standby to report SERVING');
        expect(await leads(m.address)).toBe(false);
      }
    }
    const shard = (i: number) => launch(`shard${i}`, ['shard', '--listen', '127.0.0.1:0', '--data-dir', join(dir, `shard${i}`), '--master', masterList, '--server-credential-file', join(dir, 'credential'), '--heartbeat-interval-ms', '250']);
    await Promise.all([shard(1).listening, shard(2).listening]);
    await waitUntil(async () => {
      const c = await client();
      try {
        return (await c.listServers()).filter((s) => s.status === 'up').length === 2 && c.map.epoch > 0n;
      } finally {
        c.close();
      }
    }, 30_000, 'two shards up');
    await shard(3).listening;
  }, 90_000);

  afterAll(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    await etcd?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('the standby leads, the move ends, ctl works at both masters, nothing acknowledged is lost', async () => {
    const c = await client();
    const value = 'v'.repeat(500);
    await c.writeRows(Array.from({ length: 2000 }, (_, i) => ({ row: `seed-${String(i).padStart(5, '0')}`, cells: [{ column: 'c', value }] })));
    await waitUntil(async () => (await c.listServers()).filter((s) => s.status === 'up').length === 3, 20_000, 'the third shard');

    // Writers: every write that was acknowledged must be readable at the end.
    const acked: string[] = [];
    let writing = true;
    let failedWrites = 0;
    const writers = Array.from({ length: 2 }, async (_, w) => {
      for (let i = 0; writing; i++) {
        const row = `w${w}-${String(i).padStart(6, '0')}`;
        try {
          await c.writeRows([{ row, cells: [{ column: 'c', value: row }] }], { timeoutMs: 15_000 });
          acked.push(row);
        } catch {
          failedWrites++;
        }
      }
    });

    await c.startRebalance({ maxMbps: 0.1 });
    await waitUntil(async () => (await c.admin((a) => a.listMoves, { all: true })).moves.some((m) => m.state !== 'planned' && m.state !== 'cleaned' && m.state !== 'aborted'), 20_000, 'a move under way');

    const leader = masters[0]!;
    const standby = masters[1]!;
    const env = { CAIRN_USER: ADMIN.user, CAIRN_PASSWORD: ADMIN.password, CAIRN_MASTER: masterList };
    const killedAt = Date.now();
    leader.proc!.child.kill('SIGKILL');
    await leader.proc!.exited;
    // ctl run during the election (the dead leader's lease still runs) waits for it rather than failing with
    // "no master leads" (it did: an operator had to run it again).
    const duringElection = runCtl(['servers', '--json'], env);
    await waitUntil(() => leads(standby.address), 30_000, 'the standby to lead');
    const takeoverMs = Date.now() - killedAt;
    console.log(`standby took over ${takeoverMs} ms after the leader was killed (lease ${LEASE_SECONDS} s)`);

    await waitUntil(
      async () => {
        const moves = (await c.admin((a) => a.listMoves, { all: true }, { timeoutMs: 3000 })).moves;
        return moves.length > 0 && moves.every((m) => m.state === 'cleaned' || m.state === 'aborted');
      },
      120_000,
      'every move to end committed (cleaned) or aborted',
    );
    writing = false;
    await Promise.all(writers);

    const during = await duringElection;
    expect([during.code, during.stderr]).toEqual([0, '']);
    expect(during.json.masters.filter((m: { leader: boolean }) => m.leader).map((m: { address: string }) => m.address)).toEqual([standby.address]);

    // ctl given both masters (the first one dead) finds the leader.
    const servers = await runCtl(['servers', '--json'], env);
    expect([servers.code, servers.stderr]).toEqual([0, '']);
    expect(servers.json.servers.filter((s: { status: string }) => s.status === 'up')).toHaveLength(3);
    expect(servers.json.masters.map((m: { address: string; leader: boolean; status: string; why: string }) => [m.address, m.leader, m.status, m.why === '' ? 'no why' : 'why'])).toEqual([
      [masters[0]!.address, false, 'unreachable', 'why'],
      [masters[1]!.address, true, 'leader', 'no why'],
    ]);
    console.log(`ctl servers --json masters after the takeover: ${JSON.stringify(servers.json.masters)}`);
    const reversed = await runCtl(['servers', '--json', '--master', [...masters].reverse().map((m) => m.address).join(',')], env);
    expect(reversed.code).toBe(0);
    expect(reversed.json.servers).toHaveLength(3);

    // The shards tried the masters in turn several times a second during the election; that is one info line per shard per 10 s, not one per try.
    for (const name of ['shard1', 'shard2', 'shard3']) {
      const lines = (await readFile(join(dir, `${name}.log`), 'utf8')).split('\n').filter((l) => l.startsWith('{'));
      const switches = lines.map((l) => JSON.parse(l) as { level?: string; message?: string }).filter((r) => r.message === 'calling another master' && r.level === 'info');
      expect([name, switches.length <= 2 ? 'at most 2 info lines' : `${switches.length} info lines`]).toEqual([name, 'at most 2 info lines']);
    }

    const rows = ['seed-00000', 'seed-01999', ...acked];
    const read = await c.getRows(rows, { timeoutMs: 30_000 });
    expect(rows.filter((r) => !read.get(r)?.length)).toEqual([]);
    expect(acked.length).toBeGreaterThan(0);
    console.log(`writes acknowledged ${acked.length}, failed (not acknowledged) ${failedWrites}`);
    c.close();
  }, 240_000);
});
