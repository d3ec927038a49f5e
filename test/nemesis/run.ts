/**
 * The chaos run: a real cluster (master + shards as processes), concurrent
 * SDK clients recording a history, the nemesis injecting faults, then the
 * checks: per-key linearizability of the history, every acknowledged write
 * present at the end (once, in timestamp order), and every range served by
 * exactly one shard (each shard asked directly, with the current epoch).
 *
 * With `--replication-factor N` (N > 1) the master forms a replicated
 * cluster (a short --replica-down-timeout-ms, so lost copies are rebuilt
 * during the run); the nemesis then also loses machines (kill -9, data
 * directory wiped, a fresh shard in its place), pauses primaries past the
 * lease, and cuts primaries off from their followers or from the master,
 * while rebalances and drains move replicas.
 * The checker then also fails the run when two replicas of one range
 * acknowledged writes at the same group version (acks.ts), and when a range
 * is still missing in-sync copies once the faults have healed.
 *
 * With `--masters N` (N > 1) the masters keep their state in a 3-member
 * etcd cluster, one leading and the others standing by; the nemesis kills
 * the leader, pauses it past its etcd lease, and cuts shards off from it.
 *
 *   npm run chaos -- --duration 10m [--clients 16] [--shards 4] [--keys 8]
 *                    [--replication-factor 3] [--masters 2] [--seed N] [--out DIR] [--keep]
 *                    [--no-partitions] [--self-test]
 *
 * Prints what it does, then ops, faults by kind, anomalies, and one last
 * line `chaos: ops=N faults=N anomalies=N`. On an anomaly the smallest
 * offending history (and the whole history, and every process's log) is
 * saved under the run directory, and the exit code is 1.
 *
 * test/nemesis/chaos.test.ts runs a bounded one in CI.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { credentials, status } from '@grpc/grpc-js';
import { MasterServiceClient } from '../../proto/gen/cairn/v1/master.js';
import type { CairnClient } from '../../services/client/client.js';
import { call } from '../../services/common/grpc.js';
import { rowHash } from '../../services/common/hash.js';
import { mapFromProto, ownerOfHash, type ClusterMap } from '../../services/common/map.js';
import { login, rawCall, shardClient } from '../harness/raw.js';
import { USERS } from '../harness/inproc.js';
import { byKey, checkAcks, type Anomaly } from './checker.js';
import { MapLog, recordAcks } from './acks.js';
import { EtcdCluster } from '../harness/etcd.js';
import { ProcessCluster } from '../harness/procs.js';
import { HistoryRecorder, saveHistory, showOp, type Op } from './history.js';
import { Nemesis, type FaultKind } from './nemesis.js';
import { NetnsLab, probeNetns } from './netns.js';
import { checkHistory, connectClient, startWorkload } from './workload.js';

export interface ChaosOptions {
  durationMs: number;
  clients?: number;
  shards?: number;
  keys?: number;
  seed?: number;
  /** Where the run directory (data, logs, results) is made; default the OS temp dir. */
  dir?: string;
  /** Keep the run directory after a clean run. */
  keep?: boolean;
  /** 'off' skips partitions even where they are possible. */
  partitions?: 'auto' | 'off';
  opTimeoutMs?: number;
  /** Filler rows loaded first, so rebalances have bytes to move. */
  fillerRows?: number;
  /** Pause between faults, ms. */
  faultIntervalMs?: [number, number];
  /** Copies of every range (the master's --replication-factor); default 1. */
  replicationFactor?: number;
  /** The master's --replica-down-timeout-ms with replication (default 5000). */
  replicaDownTimeoutMs?: number;
  /** CAIRN_REPLICA_LEASE_MS of the shards with replication (default 2000). */
  leaseMs?: number;
  /**
   * Masters (default 1, its state embedded). More: their state in a 3-member
   * etcd cluster, one leading and the others standing by; the nemesis then
   * kills and pauses the leader.
   */
  masters?: number;
  /** etcdLeaseSeconds of the masters with standbys (default 2). */
  etcdLeaseSeconds?: number;
  /** Self-test: one client writes with stale timestamps; the run must then report anomalies. */
  selfTest?: boolean;
  log?: (line: string) => void;
}

export interface ChaosResult {
  ops: number;
  outcomes: Record<string, number>;
  faults: number;
  faultsByKind: Record<string, number>;
  skipped: Record<string, number>;
  /** Fault kinds this run leaves out, and why. */
  leftOut: Record<string, string>;
  /** With replication: acknowledgements placed in a (range, version), and those whose epoch the map log missed. */
  acks?: { placed: number; unplaced: number };
  partitions: { enabled: boolean; reason?: string };
  moves: Record<string, number>;
  anomalies: Anomaly[];
  /** The last line: `chaos: ops=N faults=N anomalies=N`. */
  summary: string;
  dir: string;
  savedFiles: string[];
}

/** A seeded 32-bit generator (mulberry32), as a float in [0, 1). */
export function seeded(seed: number): () => number {
  let t = seed >>> 0;
  return () => {
    t = (t + 0x6d2b79f5) >>> 0;
    let r = Math.imul(t ^ (t >>> 15), 1 | t);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
}

/** "90s", "10m", "1h", "1500ms", or a bare number of seconds. */
export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s.trim());
  if (!m) throw new Error(`--duration: expected e.g. 90s, 10m or 1h, got "${s}"`);
  const n = Number(m[1]);
  return n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function masterMap(master: string, token: string): Promise<ClusterMap> {
  const c = new MasterServiceClient(master, credentials.createInsecure());
  try {
    return mapFromProto((await call(c, c.getMap, {}, { token, timeoutMs: 10_000 })).map);
  } finally {
    c.close();
  }
}

/** Waits until no move is in flight, driving stuck ones with RecoverMove. */
export async function settleMoves(admin: CairnClient, log: (l: string) => void, timeoutMs: number): Promise<{ anomalies: Anomaly[] }> {
  const until = Date.now() + timeoutMs;
  let lastRecover = 0;
  for (;;) {
    let pending: Array<{ id: string; state: string }> = [];
    try {
      pending = (await admin.admin((a) => a.listMoves, { all: false }, { timeoutMs: 15_000 })).moves;
    } catch (err) {
      log(`settle: ListMoves failed: ${(err as Error).message}`);
      pending = [{ id: '?', state: 'unknown' }];
    }
    if (pending.length === 0) return { anomalies: [] };
    if (Date.now() > until) {
      return { anomalies: [{ kind: 'other', message: `moves did not settle within ${timeoutMs / 1000}s: ${pending.map((m) => `${m.id}:${m.state}`).join(', ')}` }] };
    }
    if (Date.now() - lastRecover > 10_000) {
      lastRecover = Date.now();
      for (const m of pending) {
        if (m.id === '?') continue;
        try {
          const r = await admin.admin((a) => a.recoverMove, { moveId: m.id }, { timeoutMs: 60_000 });
          log(`settle: recover ${m.id}: ${r.action}`);
        } catch (err) {
          log(`settle: recover ${m.id} failed: ${(err as Error).message}`);
        }
      }
    }
    await sleep(500);
  }
}

/** A row key whose hash falls in [start, end). */
function probeKey(start: bigint, end: bigint, salt: string): string {
  for (let i = 0; i < 50_000_000; i++) {
    const k = `probe/${salt}/${i}`;
    const h = rowHash(k);
    if (h >= start && h < end) return k;
  }
  throw new Error(`no probe key found for [${start}, ${end})`);
}

/**
 * Asks every shard directly, with the master's current epoch, about a key in
 * every range of the map (and about every hot key): exactly one must serve
 * it, and it must be the map's owner. Shards still behind (NOT_READY) or
 * fenced are asked again for up to `timeoutMs`.
 */
export async function checkOwnership(cluster: ProcessCluster, hotKeys: string[], timeoutMs = 30_000): Promise<Anomaly[]> {
  const reader = USERS.find((u) => u.role === 'r')!;
  const leader = ((await cluster.leader()) ?? cluster.master).address;
  const token = await login(leader, reader.user, reader.password);
  const map = await masterMap(leader, token);
  const probes = [...map.ranges.map((r, i) => probeKey(r.start, r.end, String(i))), ...hotKeys];
  const clients = cluster.shards.map((s) => ({ node: s, client: shardClient(s.address) }));
  const anomalies: Anomaly[] = [];
  try {
    const until = Date.now() + timeoutMs;
    for (const row of probes) {
      const owner = ownerOfHash(map, rowHash(row))!;
      for (;;) {
        const answers = await Promise.all(
          clients.map(async ({ node, client }) => {
            const r = await rawCall(client, client.readRow, { epoch: map.epoch, row, filter: undefined }, token);
            return { node, code: r.err ? r.err.code : status.OK, details: r.err?.details ?? '', servedBy: r.res?.header?.nodeId };
          }),
        );
        const settled = answers.every((a) => a.code === status.OK || a.code === status.FAILED_PRECONDITION);
        if (!settled && Date.now() < until) {
          await sleep(250);
          continue;
        }
        const serving = answers.filter((a) => a.code === status.OK);
        const odd = answers.filter((a) => a.code !== status.OK && a.code !== status.FAILED_PRECONDITION);
        const range = map.ranges.find((r) => rowHash(row) >= r.start && rowHash(row) < r.end)!;
        const where = `row ${JSON.stringify(row)} (range [${range.start}, ${range.end}) owned by ${owner.shardId} in epoch ${map.epoch})`;
        if (serving.length !== 1) {
          anomalies.push({
            kind: 'ownership',
            message: `${where} is served by ${serving.length} shards (${serving.map((a) => a.servedBy ?? a.node.name).join(', ') || 'none'}); answers: ${answers.map((a) => `${a.node.name}=${status[a.code]}`).join(' ')}`,
          });
        } else if (serving[0]!.servedBy !== owner.shardId) {
          anomalies.push({ kind: 'ownership', message: `${where} is served by ${serving[0]!.servedBy}, not by its owner` });
        }
        for (const a of odd) anomalies.push({ kind: 'ownership', message: `${where}: ${a.node.name} still answers ${status[a.code]} (${a.details})` });
        break;
      }
    }
  } finally {
    for (const c of clients) c.client.close();
  }
  return anomalies;
}

async function waitFor(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await cond().catch(() => false)) return;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

/** Every range has `want` in-sync copies and no learner left, within `timeoutMs` of the faults healing. */
export async function checkReplicated(admin: CairnClient, want: number, timeoutMs: number): Promise<Anomaly[]> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ranges = await admin.getRanges({ timeoutMs: 15_000 }).catch(() => undefined);
    // Copies on a lost machine (listed until the master replaces them) do not count, nor does a primary there.
    const up = new Set((await admin.listServers({ timeoutMs: 15_000 }).catch(() => [])).filter((s) => s.status === 'up').map((s) => s.id));
    const short = ranges?.filter((r) => !up.has(r.shardId) || r.inSync.filter((id) => up.has(id)).length < want || r.learners.length > 0);
    if (short && short.length === 0) return [];
    if (Date.now() > until) {
      const what = short ? short.map((r) => `[${r.start}, ${r.end}) v${r.version} primary ${r.shardId} replicas ${r.replicas.join(',')} in-sync ${r.inSync.join(',')} learners ${r.learners.join(',') || '-'}`).join('; ') : 'GetRanges failed';
      return [{ kind: 'other', message: `ranges still short of ${want} in-sync copies ${timeoutMs / 1000}s after the faults healed: ${what}` }];
    }
    await sleep(500);
  }
}

function count<T>(xs: Iterable<T>, key: (x: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[key(x)] = (out[key(x)] ?? 0) + 1;
  return out;
}

const show = (r: Record<string, number>) =>
  Object.entries(r)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ') || '(none)';

export async function runChaos(o: ChaosOptions): Promise<ChaosResult> {
  const log = o.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const seed = o.seed ?? Math.floor(Math.random() * 2 ** 31);
  const random = seeded(seed);
  const nClients = o.clients ?? 16;
  const nShards = o.shards ?? 4;
  const nKeys = o.keys ?? 8;
  const opTimeoutMs = o.opTimeoutMs ?? 10_000;
  if (o.dir) mkdirSync(o.dir, { recursive: true });
  // Always a fresh directory of our own (inside --out when given), so removing it is safe.
  const dir = mkdtempSync(join(o.dir ?? tmpdir(), 'cairn-chaos-'));
  const runTag = `${Date.now().toString(36)}`;
  const keys = Array.from({ length: nKeys }, (_, i) => `nemesis/${runTag}/k${i}`);

  const factor = o.replicationFactor ?? 1;
  const leaseMs = o.leaseMs ?? 2000;
  const replicaDownTimeoutMs = o.replicaDownTimeoutMs ?? 5000;
  const nMasters = o.masters ?? 1;
  const etcdLeaseSeconds = o.etcdLeaseSeconds ?? 2;
  log(
    `chaos: seed ${seed}, ${nShards} shards, ${nClients} clients, ${nKeys} keys, ${Math.round(o.durationMs / 1000)}s` +
      `${factor > 1 ? `, replication factor ${factor} (lease ${leaseMs} ms, replica down timeout ${replicaDownTimeoutMs} ms)` : ''}` +
      `${nMasters > 1 ? `, ${nMasters} masters on a 3-member etcd (lease ${etcdLeaseSeconds} s)` : ''}; run directory ${dir}`,
  );
  let net: NetnsLab | undefined;
  const partitions: ChaosResult['partitions'] = { enabled: false };
  if (o.partitions === 'off') {
    partitions.reason = 'turned off (--no-partitions)';
  } else {
    const p = await probeNetns();
    if (p.ok) {
      try {
        net = await NetnsLab.create();
        partitions.enabled = true;
      } catch (err) {
        partitions.reason = `network namespace setup failed: ${(err as Error).message}`;
      }
    } else partitions.reason = p.reason;
  }
  log(partitions.enabled ? `partitions: on (network namespaces, subnet ${net!.subnet}.0/24)` : `partitions: SKIPPED — ${partitions.reason}`);

  let cluster: ProcessCluster | undefined;
  let etcd: EtcdCluster | undefined;
  let admin: CairnClient | undefined;
  const acked = factor > 1 ? recordAcks() : undefined;
  let mapLog: MapLog | undefined;
  const cleanup = async () => {
    acked?.uninstall();
    await mapLog?.stop();
    admin?.close();
    await cluster?.stopAll().catch(() => undefined);
    await etcd?.close().catch(() => undefined);
    await net?.destroy().catch(() => undefined);
  };
  const onSignal = () => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    // etcd listens on the lab's address in this namespace, which every process's namespace reaches.
    if (nMasters > 1) etcd = await EtcdCluster.start(3, { host: net ? `${net.subnet}.1` : '127.0.0.1' });
    cluster = await ProcessCluster.start({
      dir,
      shards: nShards,
      net,
      etcd: etcd && { endpoints: etcd.endpoints, leaseSeconds: etcdLeaseSeconds, masters: nMasters },
      ...(factor > 1
        ? {
            masterArgs: ['--replication-factor', String(factor), '--replica-down-timeout-ms', String(replicaDownTimeoutMs)],
            env: { CAIRN_REPLICA_LEASE_MS: String(leaseMs), CAIRN_REPLICA_ACK_TIMEOUT_MS: String(Math.round(leaseMs * 1.5)) },
          }
        : {}),
    });
    admin = await connectClient(cluster.masterAddress, 30_000, 'admin');
    const adminClient = admin;
    await cluster.waitReady();
    if (factor > 1) {
      const c = cluster;
      const reader = USERS.find((u) => u.role === 'r')!;
      // One master at a time, the next after each failure: a standby answers NOT_LEADER.
      let turn = 0;
      const next = () => c.masters[turn++ % c.masters.length]!.address;
      let current = next();
      mapLog = new MapLog(() => current, () => login((current = next()), reader.user, reader.password));
      const wanted = Math.min(factor, nShards);
      await waitFor(async () => (await adminClient.getRanges({ timeoutMs: 10_000 })).every((r) => r.inSync.length >= wanted), 60_000, `every range with ${wanted} in-sync copies`);
    }
    const fillerRows = o.fillerRows ?? 2000;
    if (fillerRows > 0) {
      const w = await connectClient(cluster.masterAddress, 60_000);
      for (let i = 0; i < fillerRows; i += 500) {
        await w.writeRows(Array.from({ length: Math.min(500, fillerRows - i) }, (_, j) => ({ row: `filler/${runTag}/${i + j}`, cells: { f: 'x'.repeat(150) } })));
      }
      w.close();
    }
    log(`cluster up: master ${cluster.masterAddress}, shards ${cluster.shards.map((s) => s.address).join(' ')}; ${fillerRows} filler rows`);

    const recorder = new HistoryRecorder();
    if (o.selfTest) log('self-test: client 0 writes with timestamps from 1970; its acknowledged puts are never the latest, and the checker must report it');
    const workload = await startWorkload({ master: cluster.masterAddress, keys, clients: nClients, opTimeoutMs, random: seeded(seed ^ 0x9e3779b9), sabotage: o.selfTest }, recorder);
    const nemesis = new Nemesis({
      cluster,
      admin: adminClient,
      net,
      random,
      log,
      intervalMs: o.faultIntervalMs,
      replication: factor > 1 ? { factor, leaseMs, replicaDownTimeoutMs } : undefined,
      standby: nMasters > 1 ? { leaseMs: etcdLeaseSeconds * 1000 } : undefined,
    });
    for (const [k, why] of nemesis.leftOut) log(`fault ${k}: left out — ${why}`);
    const t0 = Date.now();
    nemesis.start();
    const progress = setInterval(() => log(`… ${Math.round((Date.now() - t0) / 1000)}s, ${workload.completed()} ops`), 15_000);
    await sleep(o.durationMs);
    clearInterval(progress);
    log('stopping the nemesis and the clients');
    await nemesis.stop();
    await net?.healAll();
    await cluster.reviveAll();
    await workload.stop();

    const anomalies: Anomaly[] = [];
    log('waiting for moves to settle');
    const settled = await settleMoves(adminClient, log, 120_000);
    anomalies.push(...settled.anomalies);
    if (factor > 1) {
      log('waiting for every range to have its in-sync copies again');
      anomalies.push(...(await checkReplicated(adminClient, Math.min(factor, cluster.shards.length), 120_000)));
    }
    log('checking that every range is served by exactly one shard');
    anomalies.push(...(await checkOwnership(cluster, keys)));

    // Final reads, then the checker.
    log(`checking ${recorder.ops.length} ops on ${keys.length} keys`);
    const checked = await checkHistory(cluster.masterAddress, recorder, nClients);
    anomalies.push(...checked.anomalies);
    const lin = checked;
    let ackCounts: ChaosResult['acks'];
    if (acked && mapLog) {
      acked.uninstall();
      await mapLog.stop();
      const a = checkAcks(acked.acks, mapLog.maps);
      ackCounts = { placed: a.placed, unplaced: a.unplaced };
      log(`acknowledgements: ${acked.acks.length} write answers, ${a.placed} rows placed in a (range, version) over ${mapLog.maps.size} maps, ${a.unplaced} not placed (epoch not seen)`);
      anomalies.push(...a.anomalies);
    }
    const history = recorder.ops;

    const movesAll = await adminClient.admin((a) => a.listMoves, { all: true }, { timeoutMs: 15_000 }).catch(() => ({ moves: [] }));
    const moves = count(movesAll.moves, (m) => m.state);
    const outcomes = count(history, (op) => op.outcome);
    const faultsByKind = nemesis.counts();
    const skipped = Object.fromEntries(nemesis.skipped) as Record<FaultKind, number>;
    const leftOut = Object.fromEntries(nemesis.leftOut) as Record<FaultKind, string>;

    // Results.
    const savedFiles: string[] = [];
    if (anomalies.length) {
      const hist = join(dir, 'history.jsonl');
      saveHistory(hist, history);
      savedFiles.push(hist);
      anomalies.forEach((a, i) => {
        const f = join(dir, `anomaly-${i + 1}-${a.kind}${a.key ? '-' + a.key.replace(/[^A-Za-z0-9]+/g, '_') : ''}.txt`);
        const body = [a.message, '', ...(a.ops ?? []).sort((x, y) => x.call - y.call).map(showOp), ''].join('\n');
        writeFileSync(f, body);
        if (a.ops?.length) writeFileSync(f.replace(/\.txt$/, '.jsonl'), a.ops.map((x) => JSON.stringify(x)).join('\n') + '\n');
        savedFiles.push(f);
      });
    }

    const perKey = [...byKey(history).entries()].map(([k, ops]) => `${k.slice(k.lastIndexOf('/') + 1)}:${ops.length}`).join(' ');
    log(`ops: ${history.length} (${show(outcomes)}); by kind ${show(count(history, (op: Op) => op.f))}; per key ${perKey}`);
    const leftOutText = Object.entries(leftOut)
      .map(([k, why]) => `${k} (${why})`)
      .join(', ');
    log(`faults: ${nemesis.faults.length} (${show(faultsByKind)}); skipped ${show(skipped)}${leftOutText ? `; left out: ${leftOutText}` : ''}${partitions.enabled ? '' : `; partitions skipped: ${partitions.reason}`}`);
    log(`moves: ${show(moves)}`);
    log(`checker: ${lin.results.length} keys, ${lin.results.filter((r) => r.linearizable).length} linearizable, ${lin.results.reduce((a, r) => a + r.steps, 0)} search steps`);
    log(`anomalies: ${anomalies.length}`);
    for (const a of anomalies) {
      log(`  ${a.kind}: ${a.message}`);
      for (const op of (a.ops ?? []).slice(0, 40)) log(`    ${showOp(op)}`);
    }
    if (savedFiles.length) log(`saved: ${savedFiles.join(' ')} (process logs under ${join(dir, 'logs')})`);
    const summary = `chaos: ops=${history.length} faults=${nemesis.faults.length} anomalies=${anomalies.length}`;
    await cleanup();
    if (!anomalies.length && !o.keep) rmSync(dir, { recursive: true, force: true });
    return { ops: history.length, outcomes, faults: nemesis.faults.length, faultsByKind, skipped, leftOut, acks: ackCounts, partitions, moves, anomalies, summary, dir, savedFiles };
  } catch (err) {
    log(`chaos run failed: ${(err as Error).stack ?? err}; run directory kept: ${dir}`);
    await cleanup();
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

// ---------------------------------------------------------------------------
// CLI

function parseCli(argv: string[]): ChaosOptions {
  const o: ChaosOptions = { durationMs: 90_000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i] ?? '';
    const int = (name: string) => {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1) throw new Error(`${name}: expected a positive integer`);
      return n;
    };
    switch (flag) {
      case '--duration':
        o.durationMs = parseDuration(value());
        break;
      case '--clients':
        o.clients = int(flag);
        break;
      case '--shards':
        o.shards = int(flag);
        break;
      case '--keys':
        o.keys = int(flag);
        break;
      case '--seed':
        o.seed = int(flag);
        break;
      case '--out':
        o.dir = value();
        break;
      case '--keep':
        o.keep = true;
        break;
      case '--replication-factor':
        o.replicationFactor = int(flag);
        break;
      case '--masters':
        o.masters = int(flag);
        break;
      case '--no-partitions':
        o.partitions = 'off';
        break;
      case '--self-test':
        o.selfTest = true;
        break;
      case '--help':
        process.stdout.write(
          'usage: npm run chaos -- [--duration 10m] [--clients 16] [--shards 4] [--keys 8] [--replication-factor N] [--masters N] [--seed N] [--out DIR] [--keep] [--no-partitions] [--self-test]\n' +
            '  --replication-factor N  a replicated cluster: machine loss, pauses past the lease, primary/follower partitions\n' +
            '  --masters N  N masters on a 3-member etcd (needs etcd): the leader is killed and paused past its lease\n' +
            '  --self-test  one client writes with stale timestamps: the run must find anomalies and exit 1\n',
        );
        process.exit(0);
        break;
      default:
        throw new Error(`unknown flag ${a} (see --help)`);
    }
  }
  return o;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  let opts: ChaosOptions;
  try {
    opts = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`error: ${(err as Error).message}\n`);
    process.exit(2);
  }
  runChaos({ ...opts, log: (l) => process.stdout.write(l + '\n') }).then(
    (r) => {
      process.stdout.write(r.summary + '\n');
      process.exit(r.anomalies.length ? 1 : 0);
    },
    (err) => {
      process.stderr.write(`error: ${(err as Error).message}\n`);
      process.stdout.write('chaos: run failed\n');
      process.exit(3);
    },
  );
}
