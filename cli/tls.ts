/** Client TLS for the CLI (`ctl`, `health`, `admin`): --tls-ca/--tls-cert/--tls-key, else CAIRN_TLS_CA/CERT/KEY. */
import { readFileSync } from 'node:fs';
import type { ClientTls } from '../services/common/grpc.js';
import { flagString, type FlagValue } from './flags.js';
import { CliError, EXIT } from './exit.js';

function readPem(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new CliError(`--${flag}: cannot read ${path}: ${(err as Error).message}`, EXIT.BAD_ARGS);
  }
}

/**
 * TLS options for a client, or undefined for plaintext. `--tls-ca` is the CA
 * to trust; `--tls-cert` and `--tls-key` are an optional client certificate
 * (servers with mutual TLS ask for one, but serve clients that only trust the CA).
 */
export function clientTlsFrom(flags: Record<string, FlagValue>, env: NodeJS.ProcessEnv): ClientTls | undefined {
  const pick = (flag: string, envName: string) => flagString(flags, flag) ?? (env[envName] || undefined);
  const ca = pick('tls-ca', 'CAIRN_TLS_CA');
  const cert = pick('tls-cert', 'CAIRN_TLS_CERT');
  const key = pick('tls-key', 'CAIRN_TLS_KEY');
  if (!ca && !cert && !key) return undefined;
  if (!!cert !== !!key) throw new CliError('--tls-cert and --tls-key go together (a client certificate and its key)', EXIT.BAD_ARGS);
  return {
    ca: ca ? readPem('tls-ca', ca) : undefined,
    cert: cert ? readPem('tls-cert', cert) : undefined,
    key: key ? readPem('tls-key', key) : undefined,
  };
}
