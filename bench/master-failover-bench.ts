/**
 * bench:master-failover — how long a standby master takes to lead after the
 * leader dies, and what clients and operators see meanwhile (issue 14).
 *
 *   npm run build && npm run bench:master-failover            # 5 rounds: about 45 s
 *   npm run bench:master-failover -- --rounds 9 --lease-seconds 5
 *   npm run bench:master-failover -- --quick                  # smoke: 1 round, no results file
 *
 * Real processes, as test/master-standby.test.ts: 3 etcd members, two
 * `cairn master` processes on etcd (metaStore etcd, etcdLeaseSeconds
 * --lease-seconds), 3 shards that know both masters (`--master a,b`), and one
 * SDK client writing rows one after the other the whole time. Each round:
 * find the leader (its cairn.v1.AdminService health is SERVING; a standby's is
 * NOT_SERVING), kill -9 it, and time from the kill
 *   (a) takeover: the other master's AdminService reports SERVING;
 *   (b) admin ok: an SDK admin call (listServers) given both masters succeeds;
 *   (c) write gap: the longest stretch without an acknowledged write during
 *       the round (data goes to the shards, so it should not wait for a master);
 * and run `cairn ctl servers --master a,b` once, 1 s after the kill, to show
 * what an operator sees. The killed master is restarted (it comes back as a
 * standby) and must report SERVING before the next round. Nothing here
 * asserts a time. See bench/README.md.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { launchCairn, type Launched } from '../cli/launch.js';
import { CairnClient } from '../services/client/index.js';
import { hashPassword } from '../services/common/auth.js';
import { leadsAt } from '../services/client/master-status.js';
import { checkHealth } from '../services/common/health.js';
import { fmtInt, median, table } from './lib/common.js';

// The harness resolves bin/cairn.js (CAIRN_BIN) against the working directory
// when it is imported: run from the repo root, then import it.
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
process.chdir(ROOT);
const { ADMIN, CAIRN_BIN, runCtl, waitUntil } = await import('../test/harness/cluster.js');
const { freePort } = await import('../test/harness/compose.js');
const { EtcdCluster } = await import('../test/harness/etcd.js');
const { TEST_CREDENTIAL, USERS } = await import('../test/harness/inproc.js');

const USAGE = `usage: node dist/bench/master-failover-bench.js [--rounds N] [--lease-seconds N] [--out FILE.json] [--quick]
  --rounds N         leader kills, timed; medians are quoted (default 5)
  --lease-seconds N  etcdLeaseSeconds of both masters (default 2, as test/master-standby.test.ts)
  --out FILE         results JSON (default bench/results/master-failover-<date>.json)
  --keep-logs        keep the run directory (every server's log) and print where it is
  --quick            smoke: 1 round, no results file unless --out`;

interface Options {
  rounds: number;
  leaseSeconds: number;
  /** Results file; 'default' = bench/results/master-failover-<date>.json, '' = none. */
  out: string;
  keepLogs: boolean;
}

function parseOptions(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const o: Options = { rounds: quick ? 1 : 5, leaseSeconds: 2, out: quick ? '' : 'default', keepLogs: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const int = (min: number): number => {
      const v = argv[++i];
      if (v === undefined || !/^\d+$/.test(v) || Number(v) < min) throw new Error(`${a}: expected an integer >= ${min}, got ${v ?? 'nothing'}\n${USAGE}`);
      return Number(v);
    };
    if (a === '--quick') continue;
    else if (a === '--rounds') o.rounds = int(1);
    else if (a === '--lease-seconds') o.leaseSeconds = int(1);
    else if (a === '--out') o.out = argv[++i] ?? '';
    else if (a === '--keep-logs') o.keepLogs = true;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${JSON.stringify(a)}\n${USAGE}`);
  }
  return o;
}

const SHARDS = 3;
/** The config's default: every range has a copy on every shard, as in a real 3-shard cluster. */
const REPLICATION_FACTOR = 3;
/** The test harness's timings (test/master-standby.test.ts), so results compare with the tests' logs. */
const HEARTBEAT_MS = 250;
const SHARD_DOWN_AFTER_MS = 2000;
/** How long writes run with no kill before round 1: the longest gap there is what "no gap" looks like. */
const BASELINE_MS = 5000;
/** When the operator's `cairn ctl servers` runs, after the kill. */
const CTL_SAMPLE_AFTER_MS = 1000;
/** Give up on a round (and the bench) when takeover or the admin call takes longer. */
const ROUND_LIMIT_MS = 60_000;

const now = () => performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Master {
  name: string;
  address: string;
  proc?: Launched;
}

interface CtlSample {
  /** When it started and how long it ran, ms after the kill. */
  startedMs: number;
  tookMs: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

interface Round {
  killed: string;
  successor: string;
  /** (a) kill → the other master's AdminService reports SERVING. */
  takeoverMs: number;
  /** (b) kill → an SDK listServers given both masters succeeds. */
  adminOkMs: number;
  /** (c) the longest stretch without an acknowledged write, from the last ack before the kill to the round's end. */
  writeGapMs: number;
  /** Where that stretch started, ms after the kill (negative: before it, i.e. the write in flight at the kill). */
  writeGapStartMs: number;
  writesAcked: number;
  writesFailed: number;
  /** Restart of the killed master → it reports SERVING overall (as a standby). */
  rejoinMs: number;
  ctl: CtlSample;
}

/**
 * The longest stretch in [from, to] without an ack: it starts at the last ack
 * before `from` (so a write stuck across the kill counts in full) and ends at
 * `to` when the writer is still stuck then. `acks` is ascending.
 */
function longestGap(acks: number[], from: number, to: number): { ms: number; startMs: number } {
  let prev = from;
  for (const a of acks) if (a <= from) prev = a;
  let best = { ms: 0, start: prev };
  for (const a of acks) {
    if (a <= from || a > to) continue;
    if (a - prev > best.ms) best = { ms: a - prev, start: prev };
    prev = a;
  }
  if (to - prev > best.ms) best = { ms: to - prev, start: prev };
  return { ms: best.ms, startMs: best.start - from };
}

/** What the rounds showed, in words: the takeover, the operator's view at +1 s, and the writes. */
function closingNote(rounds: Round[], leaseSeconds: number, baselineGapMs: number): string {
  const med = (get: (x: Round) => number) => fmtInt(median(rounds.map(get)));
  const early = rounds.filter((x) => x.ctl.startedMs < x.takeoverMs);
  const failedCtl = early.filter((x) => x.ctl.code !== 0);
  const firstError = failedCtl[0]?.ctl.stderr.split('\n').find((l) => l.trim()) ?? '';
  const operator =
    early.length === 0
      ? `the ctl sample ran after the takeover in every round, so it shows the new leader`
      : failedCtl.length === early.length
        ? `\`cairn ctl servers\` (sampled then in ${early.length} of ${rounds.length} rounds) failed without waiting for a leader (exit ${[...new Set(failedCtl.map((x) => x.ctl.code))].join('/')}, ` +
          `after ${fmtInt(median(failedCtl.map((x) => x.ctl.tookMs)))} ms median) with "${firstError.trim()}" (its output is above): an operator must run it again once a master leads`
        : `\`cairn ctl servers\` (sampled then in ${early.length} of ${rounds.length} rounds) failed in ${failedCtl.length} and waited for the new leader in the others`;
  const gap = median(rounds.map((x) => x.writeGapMs));
  const writes =
    gap <= Math.max(2 * baselineGapMs, 250)
      ? `data writes did not wait for a master: the longest gap in a round (median ${fmtInt(gap)} ms) is close to the no-kill one (${fmtInt(baselineGapMs)} ms)`
      : `data writes stalled: the longest gap in a round (median ${fmtInt(gap)} ms) is well above the no-kill one (${fmtInt(baselineGapMs)} ms); see where each round's gap started`;
  return (
    `The standby leads ${med((x) => x.takeoverMs)} ms after the kill (median; the dead leader's etcd lease is ${leaseSeconds} s), and the SDK given both ` +
    `masters completes an admin call ${med((x) => x.adminOkMs - x.takeoverMs)} ms after that (median). Before the takeover, ${operator}. Meanwhile ${writes}.`
  );
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  const started = now();
  const dir = await mkdtemp(join(tmpdir(), 'cairn-bench-master-failover-'));
  const procs: Launched[] = [];
  let etcd: Awaited<ReturnType<typeof EtcdCluster.start>> | undefined;
  let writerClient: CairnClient | undefined;
  let adminClient: CairnClient | undefined;
  let writing = true;
  let writer: Promise<void> = Promise.resolve();
  let keepDir = o.keepLogs; // and after a failure, to see why

  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      writing = false;
      await writer;
      writerClient?.close();
      adminClient?.close();
      for (const p of procs) p.child.kill('SIGKILL');
      await Promise.all(procs.map((p) => p.exited));
      await etcd?.close().catch(() => undefined);
      if (keepDir) console.error(`the servers' logs are kept in ${dir}`);
      else await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    })());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143)));
  }

  try {
    // ---- the cluster
    etcd = await EtcdCluster.start(3);
    const credentialFile = join(dir, 'credential');
    await writeFile(credentialFile, TEST_CREDENTIAL + '\n', { mode: 0o600 });
    const masterYaml = join(dir, 'master.yaml');
    await writeFile(
      masterYaml,
      stringify({
        metaStore: 'etcd',
        etcdEndpoints: etcd.endpoints,
        etcdPrefix: '/cairn-master-failover-bench',
        etcdLeaseSeconds: o.leaseSeconds,
        expectShards: SHARDS,
        replicationFactor: REPLICATION_FACTOR,
        serverCredentialFile: credentialFile,
        heartbeatIntervalMs: HEARTBEAT_MS,
        shardDownAfterMs: SHARD_DOWN_AFTER_MS,
        clients: USERS.map((u) => ({ user: u.user, passwordHash: hashPassword(u.password), role: u.role })),
      }),
    );
    const launch = (name: string, args: string[]): Launched => {
      const l = launchCairn({ name, args, bin: CAIRN_BIN, env: { ...process.env, CAIRN_CONFIG: '' }, logFile: join(dir, `${name}.log`) });
      procs.push(l);
      return l;
    };
    const masters: Master[] = [];
    for (let i = 0; i < 2; i++) masters.push({ name: `master${i}`, address: `127.0.0.1:${await freePort()}` });
    const masterList = masters.map((m) => m.address).join(',');
    const startMaster = (m: Master): Promise<string> => {
      m.proc = launch(m.name, ['master', '--config', masterYaml, '--listen', m.address, '--data-dir', join(dir, m.name)]);
      return m.proc.listening;
    };
    /** The leader's AdminService is SERVING; a standby reports it NOT_SERVING (and SERVING overall: it is alive). */
    const leads = (m: Master) => leadsAt(m.address);
    const alive = async (m: Master) => (await checkHealth(m.address, { timeoutMs: 1000 }).catch(() => '')) === 'SERVING';
    const soleLeader = async (): Promise<Master | undefined> => {
      const leading = await Promise.all(masters.map(leads));
      return leading.filter(Boolean).length === 1 ? masters[leading.indexOf(true)] : undefined;
    };

    await startMaster(masters[0]!);
    await waitUntil(() => leads(masters[0]!), 20_000, `${masters[0]!.name} to lead`);
    await startMaster(masters[1]!);
    await waitUntil(() => alive(masters[1]!), 20_000, `${masters[1]!.name} to report SERVING as a standby`);
    for (let i = 1; i <= SHARDS; i++) {
      const args = ['shard', '--listen', '127.0.0.1:0', '--data-dir', join(dir, `shard${i}`), '--master', masterList];
      await launch(`shard${i}`, [...args, '--server-credential-file', credentialFile, '--heartbeat-interval-ms', String(HEARTBEAT_MS)]).listening;
    }
    adminClient = await CairnClient.connect({ master: masterList, user: ADMIN.user, password: ADMIN.password, timeoutMs: 30_000 });
    const admin = adminClient;
    await waitUntil(async () => (await admin.listServers()).filter((s) => s.status === 'up').length === SHARDS, 30_000, `${SHARDS} shards up`);
    await waitUntil(async () => (await admin.getRanges()).every((r) => r.inSync.length === SHARDS), 60_000, `every range with ${SHARDS} in-sync copies`);

    // ---- the writer: one put at a time, for the whole run; every ack's time is kept
    const writerUser = USERS.find((u) => u.role === 'rw')!;
    writerClient = await CairnClient.connect({ master: masterList, user: writerUser.user, password: writerUser.password, timeoutMs: 10_000 });
    const db = writerClient;
    const acks: number[] = [];
    const failures: number[] = [];
    let lastFailure = '';
    writer = (async () => {
      for (let n = 0; writing; n++) {
        try {
          await db.put(`mf-${String(n).padStart(8, '0')}`, { v: `value ${n}` }, { timeoutMs: 10_000 });
          acks.push(now());
        } catch (err) {
          failures.push(now());
          lastFailure = (err as Error).message;
          await sleep(10); // a write refused at once must not turn this loop into a busy one
        }
      }
    })();
    // The first writes open the channels to the shards: not part of "no gap".
    await waitUntil(() => acks.length > 0, 30_000, 'the first acknowledged write');
    await sleep(1000);
    const baselineFrom = now();
    await sleep(BASELINE_MS);
    const baseline = longestGap(acks, baselineFrom, now());
    const baselineRate = acks.filter((a) => a > baselineFrom).length / (BASELINE_MS / 1000);

    const machine = `${cpus().length} cores (${cpus()[0]?.model ?? 'unknown CPU'}), Node ${process.version}`;
    console.log(`Cairn bench:master-failover — ${machine}`);
    console.log(
      `${o.rounds} round(s): kill -9 of the leading master; 3 etcd members, 2 masters (metaStore etcd, etcdLeaseSeconds ${o.leaseSeconds}), ` +
        `${SHARDS} shards (replication factor ${REPLICATION_FACTOR}, heartbeats ${HEARTBEAT_MS} ms, shardDownAfterMs ${SHARD_DOWN_AFTER_MS}), one SDK client writing 1 row at a time`,
    );
    const load1 = loadavg()[0]!; // other work on the machine: the tests and benches share it
    if (load1 > cpus().length / 2) console.log(`NOTE: load average ${load1.toFixed(1)} on ${cpus().length} cores: other work shares this machine, so the times below are noisy`);
    console.log(`before the first kill: ${fmtInt(baselineRate)} writes/s, longest gap between acks ${fmtInt(baseline.ms)} ms over ${BASELINE_MS / 1000} s`);

    // ---- the rounds
    const rounds: Round[] = [];
    const ctlEnv = { CAIRN_USER: ADMIN.user, CAIRN_PASSWORD: ADMIN.password };
    for (let r = 1; r <= o.rounds; r++) {
      let leader: Master | undefined;
      await waitUntil(async () => (leader = await soleLeader()) !== undefined, 30_000, 'exactly one master to lead');
      const killed = leader!;
      const successor = masters.find((m) => m !== killed)!;
      const ackedBefore = acks.length;
      const failedBefore = failures.length;

      const killedAt = now();
      killed.proc!.child.kill('SIGKILL');
      const sinceKill = () => now() - killedAt;

      // What an operator sees: one `ctl servers` at about 1 s, whatever state the takeover is in then.
      const ctlSample = (async (): Promise<CtlSample> => {
        await sleep(CTL_SAMPLE_AFTER_MS);
        const startedMs = sinceKill();
        const res = await runCtl(['servers', '--master', masterList], ctlEnv, ROUND_LIMIT_MS);
        return { startedMs, tookMs: sinceKill() - startedMs, code: res.code, stdout: res.stdout, stderr: res.stderr };
      })();
      // (a) polled every 20 ms; a check that gets no answer counts as "not yet".
      const takeover = (async () => {
        while (!(await leads(successor))) {
          if (sinceKill() > ROUND_LIMIT_MS) throw new Error(`${successor.name} did not lead within ${ROUND_LIMIT_MS} ms of the kill`);
          await sleep(20);
        }
        return sinceKill();
      })();
      // (b) through the long-lived admin client (it was talking to the killed leader): it must find the new one.
      const adminOk = (async () => {
        for (;;) {
          try {
            await admin.listServers({ timeoutMs: 1000 });
            return sinceKill();
          } catch (err) {
            if (sinceKill() > ROUND_LIMIT_MS) throw new Error(`no admin call succeeded within ${ROUND_LIMIT_MS} ms of the kill: ${(err as Error).message}`);
            await sleep(20);
          }
        }
      })();
      const [takeoverMs, adminOkMs, ctl] = await Promise.all([takeover, adminOk, ctlSample]);
      await killed.proc!.exited;

      // Back as a standby: alive (SERVING overall), not leading.
      const restartedAt = now();
      await startMaster(killed);
      await waitUntil(() => alive(killed), 30_000, `${killed.name} to report SERVING after its restart`);
      const rejoinMs = now() - restartedAt;
      if (await leads(killed)) console.log(`NOTE: ${killed.name} leads again right after its restart (expected: a standby)`);
      await sleep(1000); // writes after the rejoin count in this round, so a restart's effect is not blamed on the next kill

      const gap = longestGap(acks, killedAt, now());
      const round: Round = {
        killed: killed.name,
        successor: successor.name,
        takeoverMs,
        adminOkMs,
        writeGapMs: gap.ms,
        writeGapStartMs: gap.startMs,
        writesAcked: acks.length - ackedBefore,
        writesFailed: failures.length - failedBefore,
        rejoinMs,
        ctl,
      };
      rounds.push(round);
      console.log(
        `round ${r}/${o.rounds}: ${round.killed} killed, ${round.successor} led after ${fmtInt(takeoverMs)} ms; admin call ok after ${fmtInt(adminOkMs)} ms; ` +
          `longest write gap ${fmtInt(gap.ms)} ms (from ${gap.startMs >= 0 ? '+' : ''}${fmtInt(gap.startMs)} ms), ${round.writesAcked} writes acked, ${round.writesFailed} failed; ` +
          `ctl servers at +${fmtInt(ctl.startedMs)} ms: exit ${ctl.code} after ${fmtInt(ctl.tookMs)} ms; ${round.killed} back as a standby in ${fmtInt(rejoinMs)} ms`,
      );
    }
    writing = false;
    await writer;

    // ---- summary
    const stat = (label: string, get: (x: Round) => number) => {
      const xs = rounds.map(get);
      return [label, fmtInt(median(xs)), fmtInt(Math.min(...xs)), fmtInt(Math.max(...xs)), xs.map(fmtInt).join(' / ')];
    };
    console.log(`\nMaster failover, ms after kill -9 of the leader (median of ${rounds.length})`);
    console.log(
      table(
        ['', 'median', 'min', 'max', 'per round'],
        [
          stat('(a) takeover: successor AdminService SERVING', (x) => x.takeoverMs),
          stat('(b) SDK listServers with both masters succeeds', (x) => x.adminOkMs),
          stat('(c) longest gap between acknowledged writes', (x) => x.writeGapMs),
          stat('    killed master restarted → SERVING (standby)', (x) => x.rejoinMs),
        ],
        [false, true, true, true, false],
      ),
    );
    const failed = rounds.reduce((n, x) => n + x.writesFailed, 0);
    console.log(
      `writes: ${rounds.reduce((n, x) => n + x.writesAcked, 0)} acknowledged and ${failed} failed during the rounds` +
        `${failed ? ` (last error: ${lastFailure})` : ''}; the longest gap with no kill was ${fmtInt(baseline.ms)} ms`,
    );

    const first = rounds[0]!.ctl;
    console.log(`\nWhat an operator sees: \`cairn ctl servers --master a,b\` started ${fmtInt(first.startedMs)} ms after the kill of round 1, exit ${first.code} after ${fmtInt(first.tookMs)} ms:`);
    const indent = (s: string) => s.trimEnd().split('\n').map((l) => `  | ${l}`).join('\n');
    if (first.stdout.trim()) console.log(indent(first.stdout));
    if (first.stderr.trim()) console.log(`  stderr:\n${indent(first.stderr)}`);
    console.log(`(a = ${masters[0]!.address}, b = ${masters[1]!.address}; every round: ${rounds.map((x) => `exit ${x.ctl.code} in ${fmtInt(x.ctl.tookMs)} ms`).join(', ')})`);
    console.log(`\n${closingNote(rounds, o.leaseSeconds, baseline.ms)}`);

    // ---- results file
    const date = new Date().toISOString().slice(0, 10);
    let out = o.out;
    if (out === 'default') {
      mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
      out = join(ROOT, 'bench/results', `master-failover-${date}.json`);
      for (let n = 2; existsSync(out); n++) out = join(ROOT, 'bench/results', `master-failover-${date}-${n}.json`);
    }
    if (out) {
      const medians = { takeoverMs: median(rounds.map((x) => x.takeoverMs)), adminOkMs: median(rounds.map((x) => x.adminOkMs)), writeGapMs: median(rounds.map((x) => x.writeGapMs)) };
      const settings = { etcdMembers: 3, masters: 2, shards: SHARDS, replicationFactor: REPLICATION_FACTOR, etcdLeaseSeconds: o.leaseSeconds, heartbeatIntervalMs: HEARTBEAT_MS, shardDownAfterMs: SHARD_DOWN_AFTER_MS, ctlSampleAfterMs: CTL_SAMPLE_AFTER_MS };
      const file = { date, machine, loadAverage1m: load1, options: { rounds: o.rounds }, settings, baseline: { writesPerSec: baselineRate, longestGapMs: baseline.ms }, medians, rounds };
      // Times to 0.1 ms: the clock is performance.now(), and more digits are noise.
      writeFileSync(out, JSON.stringify(file, (_, v) => (typeof v === 'number' ? Math.round(v * 10) / 10 : v), 2) + '\n');
      console.log(`results: ${out}`);
    }
    console.log(`done in ${((now() - started) / 1000).toFixed(0)} s`);
  } catch (err) {
    keepDir = true;
    throw err;
  } finally {
    await cleanup();
  }
}

main().then(
  () => setTimeout(() => process.exit(process.exitCode ?? 0), 500).unref(),
  (err) => {
    process.stderr.write(`master-failover-bench failed: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
