/**
 * `cairn master` and `cairn shard`: load config, start the server, stop
 * cleanly on SIGTERM/SIGINT (NOT_SERVING, drain within shutdownGraceMs, close
 * LevelDB) and exit 0.
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
import type { TlsFiles } from '../services/common/grpc.js';
import { createLogger } from '../services/common/log.js';
import { startMasterServer } from '../services/master/server.js';
import { startShardServer } from '../services/shard/server.js';
import type { FlagValue } from './args.js';
import { EXIT } from './exit.js';

type Flags = Record<string, FlagValue>;

function tlsOf(c: MasterConfig | ShardConfig): TlsFiles | undefined {
  if (!c.tlsCert || !c.tlsKey) return undefined;
  return { cert: readFileSync(c.tlsCert), key: readFileSync(c.tlsKey), ca: c.tlsCa ? readFileSync(c.tlsCa) : undefined };
}

function limitsOf(c: MasterConfig | ShardConfig) {
  return {
    maxKeyBytes: c.maxKeyBytes,
    maxColumnBytes: c.maxColumnBytes,
    maxValueBytes: c.maxValueBytes,
    maxCellsPerCall: c.maxCellsPerCall,
    maxMessageBytes: c.maxMessageBytes,
  };
}

/** A refused data directory goes to the JSON log too (main prints it on stderr as `error:` and `hint:`), then exits 1. */
function logDataDirRefusal(log: Logger) {
  return (err: unknown): never => {
    if (err instanceof DataDirError) log.error('data directory refused', { dataDir: err.dir, code: err.code, error: err.message, hint: err.hint });
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

export async function runMaster(flags: Flags): Promise<number> {
  const c = loadConfig('master', { flags }) as MasterConfig;
  const log = createLogger({ component: 'master', level: c.logLevel, verbose: c.verbose });
  const tls = tlsOf(c);
  let halt!: (err: Error) => void;
  const halted = new Promise<Error>((resolve) => (halt = resolve));
  const running = await startMasterServer({
    listen: c.listen,
    dataDir: c.dataDir,
    serverCredential: c.serverCredential,
    clients: c.clients,
    expectShards: c.expectShards,
    tokenTtlSeconds: c.tokenTtlSeconds,
    heartbeatIntervalMs: c.heartbeatIntervalMs,
    shardDownAfterMs: c.shardDownAfterMs,
    maxMessageBytes: c.maxMessageBytes,
    requireApproval: c.requireApproval,
    maxConcurrentMoves: c.maxConcurrentMoves,
    moveMaxMbps: c.moveMaxMbps,
    tls,
    mutualTls: !!tls?.ca,
    peerTls: tls ? { ca: tls.ca, cert: tls.cert, key: tls.key } : undefined,
    metricsListen: c.metricsListen,
    shutdownGraceMs: c.shutdownGraceMs,
    log,
    onFatal: (err) => halt(err),
  }).catch(logDataDirRefusal(log));
  log.info(`Starting Data Master on ${running.address}`, { expectShards: c.expectShards });
  const failed = await Promise.race([untilSignal(log).then(() => undefined), halted]);
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
  const c = loadConfig('shard', { flags }) as ShardConfig;
  const log = createLogger({ component: 'shard', level: c.logLevel, verbose: c.verbose });
  const tls = tlsOf(c);
  const running = await startShardServer({
    listen: c.listen,
    advertise: c.advertise,
    dataDir: c.dataDir,
    master: c.master,
    serverCredential: c.serverCredential,
    heartbeatIntervalMs: c.heartbeatIntervalMs,
    maxFenceMs: c.maxFenceMs,
    limits: limitsOf(c),
    tls,
    mutualTls: !!tls?.ca,
    peerTls: tls ? { ca: tls.ca, cert: tls.cert, key: tls.key } : undefined,
    metricsListen: c.metricsListen,
    shutdownGraceMs: c.shutdownGraceMs,
    log,
  }).catch(logDataDirRefusal(log));
  const why = await Promise.race([untilSignal(log).then(() => ({ refused: undefined })), running.node.stopRequested]);
  await running.stop(c.shutdownGraceMs);
  log.info('shard stopped', { shardId: running.node.id });
  return why.refused ? EXIT.ERROR : EXIT.OK;
}
