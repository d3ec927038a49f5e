/**
 * A login flood must not stall the master (issue 11 item 1). 300 concurrent
 * callers on one host keep sending wrong-password logins (for a real user and
 * for an unknown one) to a real master process, each sending again once
 * answered; while they do:
 *
 * - no shard is marked down: `cairn ctl servers --json` (which itself logs in
 *   as admin from the same host) keeps answering with every shard `up`;
 * - GetMap keeps answering within its deadline;
 * - `cairn health --addr <master>` exits 0;
 * - a correct login by another user from the same host succeeds within the
 *   raw client's default deadline (5 s).
 *
 * Every answer the flood gets is UNAUTHENTICATED (a checked wrong password)
 * or the login limiter's precise refusal (LIMIT_EXCEEDED with the limit and a
 * retry-after, or NOT_READY when too many wait) — never INTERNAL, never a
 * missed deadline. The master used to run scrypt on its event loop: 300 such
 * logins blocked it for tens of seconds, shards were marked down, and every
 * one of these checks timed out.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { MasterServiceClient } from '../proto/gen/cairn/v1/master.js';
import { call } from '../services/common/grpc.js';
import { CAIRN_BIN, startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';
import { login } from './harness/raw.js';

const FLOODERS = 300;
const CONNECTIONS = 10;
/** How long the checks run while the flood goes on. */
const CHECK_MS = 8_000;

let cluster: ProcCluster;

beforeAll(async () => {
  cluster = await startProcCluster({ shards: 2 });
}, 60_000);
afterAll(() => cluster?.cleanup());

interface Answer {
  code: grpc.status;
  details: string;
  errorCode?: string;
  retryAfterMs?: string;
}

/** One raw Login, answered with the status, message and the Cairn trailers. */
function rawLogin(client: MasterServiceClient, user: string, password: string, timeoutMs: number): Promise<Answer> {
  return new Promise((done) => {
    client.login({ user, password }, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err) => {
      if (!err) return done({ code: grpc.status.OK, details: '' });
      const trailer = (k: string) => {
        const v = err.metadata?.get(k)[0];
        return v === undefined ? undefined : String(v);
      };
      done({ code: err.code, details: err.details, errorCode: trailer('cairn-error-code'), retryAfterMs: trailer('cairn-retry-after-ms') });
    });
  });
}

/**
 * Runs the CLI and resolves once its output is complete ('close', not 'exit':
 * 'exit' may come before the last of stdout, and a loaded machine shows it).
 */
function cairn(args: string[], killAfterMs: number, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [CAIRN_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
  });
}

/** Runs `probe` every `everyMs` until `until`; resolves with how many times it ran. */
async function sampleUntil(until: number, everyMs: number, probe: () => Promise<void>): Promise<number> {
  let samples = 0;
  for (; Date.now() < until; samples++) {
    await probe();
    await sleep(everyMs);
  }
  return samples;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What a flood login may be answered: a checked wrong password, or the limiter's refusal. */
function allowed(a: Answer): boolean {
  if (a.code === grpc.status.UNAUTHENTICATED) return a.details === 'login failed: unknown user or wrong password';
  if (a.code === grpc.status.RESOURCE_EXHAUSTED) {
    return a.errorCode === 'LIMIT_EXCEEDED' && /^login refused: \d+ failed logins .* \(the limit is \d+ per 60 s per (user|host)\); retry in \d+ s$/.test(a.details) && Number(a.retryAfterMs) > 0;
  }
  if (a.code === grpc.status.UNAVAILABLE) return a.errorCode === 'NOT_READY' && /^login busy: .*the limit is \d+.*; retry in \d+ ms$/.test(a.details) && Number(a.retryAfterMs) > 0;
  return false;
}

describe('a login flood', () => {
  it(`${FLOODERS} concurrent wrong-password logins leave heartbeats, GetMap, health and other users' logins answering`, async () => {
    const master = cluster.masterAddress;
    // A token and a connection of its own for GetMap, taken before the flood.
    const token = await login(master, 'admin', 'admin-pass');
    const mapClient = new MasterServiceClient(master, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    const floodClients = Array.from(
      { length: CONNECTIONS },
      () => new MasterServiceClient(master, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }),
    );

    const answers: Answer[] = [];
    let flooding = true;
    const flood = Array.from({ length: FLOODERS }, async (_, i) => {
      const client = floodClients[i % CONNECTIONS]!;
      const user = i % 3 === 0 ? 'nobody' : 'reader';
      for (let n = 0; flooding; n++) {
        answers.push(await rawLogin(client, user, `wrong-${i}-${n}`, 10_000));
        if (flooding) await sleep(150 + (i % 50));
      }
    });

    const failures: string[] = [];
    await waitUntil(() => answers.length > 0, 10_000, 'the first answers to the flood'); // the first wave is in
    const until = Date.now() + CHECK_MS;

    const servers = sampleUntil(until, 200, async () => {
      // As admin, from this host: its login goes through the same gate as the flood's.
      const r = await cairn(['ctl', 'servers', '--json', '--timeout', '5000'], 20_000, cluster.ctlEnv);
      let statuses: string[] = [];
      try {
        statuses = (JSON.parse(r.stdout).servers as Array<{ id: string; status: string }>).map((s) => `${s.id}:${s.status}`);
      } catch {
        // reported below
      }
      if (r.code !== 0 || statuses.length !== 2 || !statuses.every((s) => s.endsWith(':up'))) {
        failures.push(`ctl servers: exit ${r.code}, statuses ${JSON.stringify(statuses)}, output ${(r.stdout + r.stderr).trim().slice(0, 300)}`);
      }
    });

    const maps = sampleUntil(until, 250, async () => {
      try {
        const res = await call(mapClient, mapClient.getMap, {}, { token, timeoutMs: 5000 });
        if (!(res.map && res.map.epoch > 0n)) failures.push(`GetMap: no map (epoch ${res.map?.epoch})`);
      } catch (err) {
        failures.push(`GetMap: ${(err as Error).message}`);
      }
    });

    const health = sampleUntil(until, 1000, async () => {
      const r = await cairn(['health', '--addr', master], 20_000);
      if (r.code !== 0) failures.push(`cairn health: exit ${r.code}: ${(r.stdout + r.stderr).trim().slice(0, 300)}`);
    });

    const logins = sampleUntil(until, 1500, async () => {
      // raw.ts login: a fresh client from this host, the default 5 s deadline.
      try {
        await login(master, 'writer', 'writer-pass');
      } catch (err) {
        failures.push(`writer's login: ${(err as Error).message}`);
      }
    });

    const [serverSamples, mapSamples, healthSamples, loginSamples] = await Promise.all([servers, maps, health, logins]);
    flooding = false;
    await Promise.all(flood);
    mapClient.close();
    for (const c of floodClients) c.close();

    expect(failures).toEqual([]);
    expect({ serverSamples: serverSamples >= 2, mapSamples: mapSamples >= 3, healthSamples: healthSamples >= 2, loginSamples: loginSamples >= 2 }).toEqual({
      serverSamples: true,
      mapSamples: true,
      healthSamples: true,
      loginSamples: true,
    });

    const byCode = new Map<string, number>();
    for (const a of answers) byCode.set(`${grpc.status[a.code]}${a.errorCode ? `/${a.errorCode}` : ''}`, (byCode.get(`${grpc.status[a.code]}${a.errorCode ? `/${a.errorCode}` : ''}`) ?? 0) + 1);
    const odd = answers.filter((a) => !allowed(a));
    expect({ odd: odd.slice(0, 5), count: odd.length }).toEqual({ odd: [], count: 0 });
    expect(answers.length).toBeGreaterThanOrEqual(FLOODERS);
    // Some wrong passwords were really checked, and the limiter refused the rest.
    expect(byCode.get('UNAUTHENTICATED/UNAUTHENTICATED')).toBeGreaterThan(0);
    expect(byCode.get('RESOURCE_EXHAUSTED/LIMIT_EXCEEDED')).toBeGreaterThan(0);

    process.stdout.write(`login flood: ${answers.length} answers (${[...byCode].map(([k, n]) => `${k}=${n}`).join(', ')}); samples: servers ${serverSamples}, GetMap ${mapSamples}, health ${healthSamples}, logins ${loginSamples}\n`);
    expect(cluster.master.child.exitCode).toBeNull();
    const unexpected = cluster.master.logs.filter((l) => /unexpected error/.test(String(l.message)));
    expect(unexpected).toEqual([]);
    // The operator hears of each lockout once.
    const lockouts = cluster.master.logs.filter((l) => /^login failure limit reached/.test(String(l.message))).map((l) => `${l.kind} ${l.name}`);
    expect(lockouts.sort()).toEqual(['user nobody', 'user reader']);
  }, 90_000);
});
