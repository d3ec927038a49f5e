/**
 * `cairn master` and `cairn shard`: load config, start the server, stop
 * cleanly on SIGTERM/SIGINT (NOT_SERVING, drain within shutdownGraceMs, close
 * LevelDB) and exit 0. SIGHUP has the master read its client list again
 * (as `cairn ctl reload`); the other keys take effect at a restart.
 *
 * TLS: with tlsCert and tlsKey the gRPC port speaks only TLS. With tlsCa too,
 * servers dial each other trusting that CA and presenting their own
 * certificate, and internal calls are refused unless that client certificate
 * verifies against the CA (mutual TLS between servers); clients only need to
 * trust the CA.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'winston';
import { loadConfig, type MasterConfig, type ShardConfig } from '../services/common/config.js';
import { DataDirError } from '../services/common/datadir.js';
import type { ClientTls, TlsFiles } from '../services/common/grpc.js';
import { createLogger } from '../services/common/log.js';
import { startMasterServer } from '../services/master/server.js';
import type { EtcdSettings } from '../services/master/master-role.js';
import { startShardServer } from '../services/shard/server.js';
import type { FlagValue } from './flags.js';
import { CliError, EXIT } from './exit.js';

type Flags = Record<string, FlagValue>;

/** The TLS options of a server: its certificate and key, and with a CA, mutual TLS between servers. */
function tlsOptionsOf(c: MasterConfig | ShardConfig): { tls?: TlsFiles; mutualTls: boolean; peerTls?: ClientTls } {
  if (!c.tlsCert || !c.tlsKey) return { mutualTls: false };
  const tls = { cert: readFileSync(c.tlsCert), key: readFileSync(c.tlsKey), ca: c.tlsCa ? readFileSync(c.tlsCa) : undefined };
  return { tls, mutualTls: !!tls.ca, peerTls: { ca: tls.ca, cert: tls.cert, key: tls.key } };
}

/** A refused data directory goes to the JSON log too (main prints it on stderr as `error:` and `hint:`), then exits 1. */
function logDataDirRefusal(log: Logger) {
  return (err: unknown): never => {
    if (err instanceof DataDirError) log.error('data directory refused', { dataDir: err.dir, code: err.code, error: err.message, hint: err.hint });
    throw err;
  };
}

/**
 * An address in the config that this host cannot bind (a host name that does
 * not resolve, an address that is not this host's) is a config error: exit 2,
 * naming the key and where its value came from. A port in use stays exit 1.
 */
function bindErrorAsConfig(c: MasterConfig | ShardConfig) {
  return (err: unknown): never => {
    const msg = (err as Error)?.message ?? '';
    if (/Name resolution failed|EADDRNOTAVAIL|ENOTFOUND|EAI_AGAIN/.test(msg)) {
      for (const key of ['listen', 'metricsListen'] as const) {
        const addr = c[key];
        if (!addr || !msg.includes(addr)) continue;
        const why = /EADDRNOTAVAIL/.test(msg) ? 'is not an address of this host' : 'has a host name that does not resolve';
        const source = c.sources[key] ?? 'default';
        throw new CliError(`config: ${key} (${source === 'default' ? 'default' : `from ${source}`}): ${addr} ${why}`, EXIT.BAD_ARGS, `set ${key} (--${key === 'listen' ? 'listen' : 'metrics-listen'}) to host:port on this machine, e.g. 0.0.0.0:PORT or 127.0.0.1:PORT`);
      }
    }
    throw err;
  };
}

/** Resolves on the first SIGTERM or SIGINT. */
function untilSignal(log: Logger): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      log.info('shutting down', { signal: sig });
      resolve(sig);
    };
    process.once('SIGTERM', on);
    process.once('SIGINT', on);
  });
}

/**
 * The master's config read again, for a reload: its client list, and the
 * other keys whose value changed (they need a restart). Throws the config
 * error, naming the key, when the file no longer reads.
 */
function rereadMasterConfig(flags: Flags, running: MasterConfig): { clients: MasterConfig['clients']; restartNeeded: string[] } {
  const next = loadConfig('master', { flags });
  const [was, now] = [new Map(Object.entries(running)), new Map(Object.entries(next))];
  const keys = new Set([...was.keys(), ...now.keys()]);
  keys.delete('clients');
  return { clients: next.clients, restartNeeded: [...keys].filter((k) => JSON.stringify(was.get(k)) !== JSON.stringify(now.get(k))).sort() };
}

/** SIGHUP: the master reloads its client list; never the default (which ends the process). */
function onHangup(log: Logger, reload: (() => Promise<void>) | undefined): () => void {
  const on = () => {
    if (!reload) return log.info('SIGHUP: a shard has nothing to reload (the client list is the master\'s)');
    log.info('SIGHUP: reloading the client list');
    reload().catch((err: Error) => log.error('SIGHUP: reload refused; the client list in force is unchanged', { error: err.message }));
  };
  process.on('SIGHUP', on);
  return () => process.off('SIGHUP', on);
}

/** metaStore etcd: where the state lives and how this master campaigns (undefined: embedded). */
export function etcdSettingsOf(c: MasterConfig): EtcdSettings | undefined {
  if (c.metaStore !== 'etcd') return undefined;
  const pem = (path: string | undefined) => (path ? readFileSync(path) : undefined);
  const tls = c.etcdTlsCa || c.etcdTlsCert ? { ca: pem(c.etcdTlsCa), cert: pem(c.etcdTlsCert), key: pem(c.etcdTlsKey) } : undefined;
  return { endpoints: c.etcdEndpoints, prefix: c.etcdPrefix, leaseSeconds: c.etcdLeaseSeconds, callTimeoutMs: c.etcdCallTimeoutMs, settleTimeoutMs: c.etcdSettleTimeoutMs, ...(tls ? { tls } : {}) };
}

export async function runMaster(flags: Flags): Promise<number> {
  const c = loadConfig('master', { flags });
  const log = createLogger({ component: 'master', level: c.logLevel, verbose: c.verbose });
  let halt!: (err: Error) => void;
  const halted = new Promise<Error>((resolve) => (halt = resolve));
  let started: Awaited<ReturnType<typeof startMasterServer>> | undefined;
  // Installed first: a SIGHUP while the master starts must not end it.
  const offHangup = onHangup(log, async () => {
    if (!started) throw new Error('the master is still starting; it read the client list moments ago');
    await started.master.reload();
  });
  const running = (started = await startMasterServer({
    ...c,
    ...tlsOptionsOf(c),
    etcd: etcdSettingsOf(c),
    log,
    onFatal: (err) => halt(err),
    reloadConfig: () => rereadMasterConfig(flags, c),
  }).catch(logDataDirRefusal(log)).catch(bindErrorAsConfig(c)));
  log.info(`Starting Data Master on ${running.address}`, { expectShards: c.expectShards, metaStore: c.metaStore, ...(c.metaStore === 'etcd' ? { etcdEndpoints: c.etcdEndpoints, etcdPrefix: c.etcdPrefix } : {}) });
  const failed = await Promise.race([untilSignal(log).then(() => undefined), halted]);
  offHangup();
  await running.stop(c.shutdownGraceMs).catch((err: Error) => log.warn('stopping after a failed durable write', { error: err.message }));
  if (failed) {
    // Exit non-zero so a supervisor restarts the master: the restart reads what is on disk and ends every journaled move.
    log.error('master stopped: a durable write failed; restart it', { error: failed.message });
    return EXIT.ERROR;
  }
  log.info('master stopped');
  return 0;
}

export async function runShard(flags: Flags): Promise<number> {
  const c = loadConfig('shard', { flags });
  const log = createLogger({ component: 'shard', level: c.logLevel, verbose: c.verbose });
  const offHangup = onHangup(log, undefined);
  const running = await startShardServer({
    ...c,
    ...tlsOptionsOf(c),
    limits: c, // the config holds every request limit (maxKeyBytes, …)
    log,
  }).catch(logDataDirRefusal(log)).catch(bindErrorAsConfig(c));
  const why = await Promise.race([untilSignal(log).then(() => ({ refused: undefined })), running.node.stopRequested]);
  offHangup();
  await running.stop(c.shutdownGraceMs);
  log.info('shard stopped', { shardId: running.node.id });
  return why.refused ? EXIT.ERROR : EXIT.OK;
}
