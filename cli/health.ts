/**
 * `cairn health --addr HOST:PORT`: asks a process's standard gRPC health
 * service (grpc.health.v1.Health/Check) once, prints the status, and exits 0
 * only when it is SERVING — for container health checks, where
 * grpc_health_probe is not at hand.
 *
 *   exit 0  SERVING
 *   exit 1  an answer other than SERVING (NOT_SERVING while it drains or before a shard has registered)
 *   exit 2  bad arguments
 *   exit 3  no answer: refused, timed out, or a TLS mismatch
 */
import type { ServiceError } from '@grpc/grpc-js';
import { checkHealth } from '../services/common/health.js';
import { flagString, type FlagValue } from './flags.js';
import { plainTransportMessage, type Io } from './ctl.js';
import { CliError, EXIT } from './exit.js';
import { clientTlsFrom } from './tls.js';

export async function runHealth(flags: Record<string, FlagValue>, io: Io): Promise<number> {
  const addr = flagString(flags, 'addr') ?? (io.env.CAIRN_HEALTH_ADDR || undefined);
  if (!addr) throw new CliError('health: --addr HOST:PORT is required', EXIT.BAD_ARGS, 'e.g. cairn health --addr 127.0.0.1:7000');
  if (!/^(\[[0-9A-Fa-f:.%]+\]|[^\s:[\]/]+):\d{1,5}$/.test(addr)) throw new CliError(`health: --addr: expected host:port, got "${addr}"`, EXIT.BAD_ARGS);
  const timeout = flagString(flags, 'timeout');
  if (timeout !== undefined && !/^\d+$/.test(timeout)) throw new CliError(`--timeout: expected milliseconds, got "${timeout}"`, EXIT.BAD_ARGS);
  const service = flagString(flags, 'service') ?? '';
  const json = flags.json === true;
  let status: string;
  try {
    status = await checkHealth(addr, { service, tls: clientTlsFrom(flags, io.env), timeoutMs: timeout ? Number(timeout) : 5000 });
  } catch (err) {
    const e = err as ServiceError;
    const reason = plainTransportMessage(e.details || e.message, addr);
    if (json) io.out(JSON.stringify({ address: addr, service, status: 'UNREACHABLE', error: reason }));
    else io.err(`error: ${addr}: no health answer: ${reason}`);
    return EXIT.UNAVAILABLE;
  }
  if (json) io.out(JSON.stringify({ address: addr, service, status }));
  else io.out(status);
  return status === 'SERVING' ? EXIT.OK : EXIT.ERROR;
}
