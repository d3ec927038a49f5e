/**
 * `cairn dev`: a whole local cluster on embedded defaults — a master and 3
 * shards as child processes, data under ./data, an admin user with a fresh
 * generated password — then it prints how to connect. Ctrl-C stops it all.
 * Each process serves Prometheus metrics on 127.0.0.1, from --metrics-base-port
 * (default base port + 100: the master, then shard 1, 2, …); --no-metrics turns them off.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { CairnClient } from '../services/client/index.js';
import { hashPassword } from '../services/common/auth.js';
import type { FlagValue } from './flags.js';
import { CliError, EXIT } from './exit.js';
import { causeOf, launchCairn } from './launch.js';
import type { Io } from './ctl.js';

export async function runDev(flags: Record<string, FlagValue>, io: Io): Promise<number> {
  const dataDir = resolve(typeof flags['data-dir'] === 'string' ? flags['data-dir'] : './data');
  const basePort = Number(typeof flags['base-port'] === 'string' ? flags['base-port'] : 7000);
  const shardCount = Number(typeof flags.shards === 'string' ? flags.shards : 3);
  if (!Number.isInteger(basePort) || basePort < 1 || basePort > 65535 - shardCount) throw new CliError(`--base-port: expected a port number, got "${flags['base-port']}"`, EXIT.BAD_ARGS);
  if (!Number.isInteger(shardCount) || shardCount < 1 || shardCount > 64) throw new CliError(`--shards: expected 1 to 64, got "${flags.shards}"`, EXIT.BAD_ARGS);
  const metricsBase = flags.metrics === false ? undefined : Number(typeof flags['metrics-base-port'] === 'string' ? flags['metrics-base-port'] : basePort + 100);
  if (metricsBase !== undefined && (!Number.isInteger(metricsBase) || metricsBase < 1 || metricsBase > 65535 - shardCount)) {
    throw new CliError(`--metrics-base-port: expected a port number, got "${flags['metrics-base-port'] ?? metricsBase}"`, EXIT.BAD_ARGS);
  }
  const metricsListen = (i: number) => (metricsBase === undefined ? undefined : `127.0.0.1:${metricsBase + i}`);
  await mkdir(join(dataDir, 'logs'), { recursive: true });

  // The server credential is kept across runs; the admin password is new every run.
  const credFile = join(dataDir, 'server-credential');
  if (!existsSync(credFile)) await writeFile(credFile, randomBytes(24).toString('base64url') + '\n', { mode: 0o600 });
  const credential = (await readFile(credFile, 'utf8')).trim();
  const password = randomBytes(12).toString('base64url');
  const masterAddr = `127.0.0.1:${basePort}`;
  const masterConfig = join(dataDir, 'master.yaml');
  await writeFile(
    masterConfig,
    stringify({
      listen: masterAddr,
      dataDir: join(dataDir, 'master'),
      expectShards: shardCount,
      serverCredentialFile: credFile,
      ...(metricsListen(0) ? { metricsListen: metricsListen(0) } : {}),
      clients: [{ user: 'admin', passwordHash: hashPassword(password), role: 'admin' }],
    }),
    { mode: 0o600 },
  );

  const children: ChildProcess[] = [];
  const start = (name: string, args: string[]) => {
    const env = { ...process.env };
    delete env.CAIRN_CONFIG; // each child gets its settings from the flags below
    const logFile = join(dataDir, 'logs', `${name}.log`);
    const p = launchCairn({ name, args, env, logFile });
    void p.exited.then(({ code, signal }) => {
      if (stopping) return;
      if (!ready) firstExit ??= { name, status: String(signal ?? code), cause: causeOf(p.tail), logFile };
      else io.err(`${name} exited (${signal ?? code}); see ${logFile}`);
    });
    children.push(p.child);
  };
  let stopping = false;
  let ready = false;
  /** The first process to exit while the cluster comes up: the cause is said at once, not after the wait. */
  let firstExit: { name: string; status: string; cause: string | undefined; logFile: string } | undefined;
  const stopAll = async () => {
    stopping = true;
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((done) => {
            if (c.exitCode !== null || c.signalCode !== null) return done();
            c.once('exit', () => done());
            c.kill('SIGTERM');
          }),
      ),
    );
  };

  start('master', ['master', '--config', masterConfig]);
  for (let i = 1; i <= shardCount; i++) {
    start(`shard${i}`, [
      'shard',
      '--listen', `127.0.0.1:${basePort + i}`,
      '--data-dir', join(dataDir, `shard${i}`),
      '--master', masterAddr,
      '--server-credential-file', credFile,
      ...(metricsListen(i) ? ['--metrics-listen', metricsListen(i)!] : []),
    ]);
  }

  const signalled = new Promise<void>((done) => {
    process.once('SIGINT', () => done());
    process.once('SIGTERM', () => done());
  });

  // Wait until every shard reports up, then say how to connect.
  const until = Date.now() + 30_000;
  while (!ready && !firstExit && Date.now() < until) {
    try {
      const client = await CairnClient.connect({ master: masterAddr, user: 'admin', password, timeoutMs: 2000 });
      try {
        const servers = await client.listServers();
        ready = servers.length === shardCount && servers.every((s) => s.status === 'up');
      } finally {
        client.close();
      }
    } catch {
      /* not up yet */
    }
    if (!ready && !firstExit) await new Promise((r) => setTimeout(r, 250));
  }
  if (firstExit) {
    const { name, status, cause, logFile } = firstExit;
    await stopAll();
    throw new CliError(`the dev cluster did not come up: ${name} exited (${status})${cause ? `: ${cause}` : ''}`, EXIT.ERROR, `see ${logFile}`);
  }
  if (!ready) {
    await stopAll();
    throw new CliError('the dev cluster did not come up within 30 s', EXIT.UNAVAILABLE, `see the logs in ${join(dataDir, 'logs')}`);
  }

  io.out(`Cairn dev cluster is up: master ${masterAddr}, ${shardCount} shards on ports ${basePort + 1}-${basePort + shardCount}, data in ${dataDir}`);
  io.out('Connect with:');
  io.out(`  export CAIRN_USER=admin CAIRN_PASSWORD=${password}`);
  io.out(`  npx cairn ctl servers --master ${masterAddr}`);
  if (metricsBase !== undefined) io.out(`Metrics: http://127.0.0.1:${metricsBase}/metrics (master), ports ${metricsBase + 1}-${metricsBase + shardCount} (shards)`);
  io.out(`Logs: ${join(dataDir, 'logs')}. Press Ctrl-C to stop.`);
  await signalled;
  io.err('stopping the dev cluster…');
  await stopAll();
  return EXIT.OK;
}
