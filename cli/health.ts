/**
 * `cairn health --addr HOST:PORT`: asks a process's standard gRPC health
 * service (grpc.health.v1.Health/Check) once, prints the status, and exits 0
 * only when it is SERVING — for container health checks, where
 * grpc_health_probe is not at hand.
 *
 * `cairn health --master a:7000,b:7000` (or CAIRN_MASTER): asks every master
 * about itself (GetMasterStatus), prints one line each (leader, standby or
 * unreachable, and why), then the control plane's status: SERVING when one
 * master leads and can change the map.
 *
 *   exit 0  SERVING
 *   exit 1  an answer other than SERVING (NOT_SERVING while it drains or before a shard has registered)
 *   exit 2  bad arguments
 *   exit 3  no answer: refused, timed out, or a TLS mismatch
 */
import type { ServiceError } from '@grpc/grpc-js';
import { controlPlaneStatus, describeMasters, masterLine } from '../services/client/master-status.js';
import { checkHealth } from '../services/common/health.js';
import { masterList } from '../services/common/masters.js';
import { flagString, type FlagValue } from './flags.js';
import { plainTransportMessage, type Io } from './ctl.js';
import { CliError, EXIT } from './exit.js';
import { clientTlsFrom } from './tls.js';

const HOST_PORT = /^(\[[0-9A-Fa-f:.%]+\]|[^\s:[\]/]+):\d{1,5}$/;

export async function runHealth(flags: Record<string, FlagValue>, io: Io): Promise<number> {
  const timeout = flagString(flags, 'timeout');
  if (timeout !== undefined && !/^\d+$/.test(timeout)) throw new CliError(`--timeout: expected milliseconds, got "${timeout}"`, EXIT.BAD_ARGS);
  const json = flags.json === true;
  const addr = flagString(flags, 'addr') ?? (io.env.CAIRN_HEALTH_ADDR || undefined);
  const masters = flagString(flags, 'master') ?? (addr ? undefined : io.env.CAIRN_MASTER || undefined);
  if (addr && flagString(flags, 'master')) throw new CliError('health: --addr and --master ask different things; give one', EXIT.BAD_ARGS);
  if (masters !== undefined) return runMastersHealth(masters, flags, io, timeout ? Number(timeout) : 5000, json);
  if (!addr) throw new CliError('health: --addr HOST:PORT (one process) or --master a:7000,b:7000 (the control plane) is required', EXIT.BAD_ARGS, 'e.g. cairn health --addr 127.0.0.1:7000');
  if (!HOST_PORT.test(addr)) throw new CliError(`health: --addr: expected host:port, got "${addr}"`, EXIT.BAD_ARGS);
  const service = flagString(flags, 'service') ?? '';
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

/** Every master's view, then the control plane's status; exit 0 only when a master leads and can change the map. */
async function runMastersHealth(given: string, flags: Record<string, FlagValue>, io: Io, timeoutMs: number, json: boolean): Promise<number> {
  const list = masterList(given);
  if (list.length === 0) throw new CliError('health: --master: expected host:port, or several separated by commas (a:7000,b:7000)', EXIT.BAD_ARGS);
  const bad = list.find((a) => !HOST_PORT.test(a));
  if (bad) throw new CliError(`health: --master: expected host:port, got "${bad}"`, EXIT.BAD_ARGS);
  const masters = (await describeMasters(list.join(','), { tls: clientTlsFrom(flags, io.env), timeoutMs })).map((m) =>
    m.status === 'unreachable' ? { ...m, why: plainTransportMessage(m.why, m.address) } : m,
  );
  const status = controlPlaneStatus(masters);
  if (json) io.out(JSON.stringify({ masters, status }));
  else {
    for (const m of masters) io.out(masterLine(m));
    io.out(status);
  }
  return status === 'SERVING' ? EXIT.OK : status === 'UNREACHABLE' ? EXIT.UNAVAILABLE : EXIT.ERROR;
}
