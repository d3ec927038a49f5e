/**
 * `cairn ctl`: the scriptable face of the Admin API plus data commands.
 * Results go to stdout (`--json` for scripts); diagnostics to stderr.
 */
import { AdminServiceClient } from '../proto/gen/cairn/v1/admin.js';
import { CairnClient } from '../services/client/index.js';
import { CairnError } from '../services/common/errors.js';
import { call } from '../services/common/grpc.js';
import { endFromProto } from '../services/common/hash.js';
import type { FlagValue } from './args.js';
import { CliError, EXIT } from './exit.js';
import { formatRanges, formatServers, rangesJson, serversJson, type RangeRow, type ServerRow } from './format.js';
import { LOAD_COLUMN, loadRowKey, loadValue } from './loadgen.js';

export interface Io {
  out(line: string): void;
  err(line: string): void;
  env: NodeJS.ProcessEnv;
}

type Flags = Record<string, FlagValue>;

export const CTL_USAGE = `Usage: cairn ctl <command> [args] [--master HOST:PORT] [--user U] [--password P] [--json]

Cluster:
  servers                         shards with address, status, size, rows, ranges, share and load
  ranges                          the map: each range, its owner, rows and bytes
Data:
  put ROW COLUMN VALUE            write one cell
  get ROW [COLUMN...]             read the newest cells of a row
  scan [PREFIX] [--limit N]       list rows by key prefix (storage order)
  delete ROW                      delete a row
  load --rows N [--value-size B] [--concurrency C] [--seed S]     write deterministic rows
  verify --rows N [--value-size B] [--seed S]                     read them back; exit 5 if any is missing or wrong

Connection: --master defaults to 127.0.0.1:7000; --user/--password default to
CAIRN_USER/CAIRN_PASSWORD. --timeout MS sets the per-call deadline.`;

function str(flags: Flags, name: string): string | undefined {
  const v = flags[name];
  if (v === undefined || typeof v === 'boolean') return undefined;
  return Array.isArray(v) ? v[v.length - 1] : v;
}

function int(flags: Flags, name: string, dflt: number, min = 0): number {
  const v = str(flags, name);
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new CliError(`--${name}: expected an integer >= ${min}, got "${v}"`, EXIT.BAD_ARGS);
  return Number(v);
}

async function connect(flags: Flags, io: Io): Promise<CairnClient> {
  const master = str(flags, 'master') ?? io.env.CAIRN_MASTER ?? '127.0.0.1:7000';
  const user = str(flags, 'user') ?? io.env.CAIRN_USER;
  const password = str(flags, 'password') ?? io.env.CAIRN_PASSWORD;
  if (!user || password === undefined) {
    throw new CliError('no credentials', EXIT.AUTH, 'pass --user and --password, or set CAIRN_USER and CAIRN_PASSWORD');
  }
  try {
    return await CairnClient.connect({ master, user, password, timeoutMs: int(flags, 'timeout', 10_000, 1) });
  } catch (err) {
    throw asCliError(err, master);
  }
}

export function asCliError(err: unknown, master?: string): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof CairnError) {
    switch (err.code) {
      case 'UNAUTHENTICATED':
        return new CliError(err.message, EXIT.AUTH, 'check --user/--password (or CAIRN_USER/CAIRN_PASSWORD)');
      case 'PERMISSION_DENIED':
        return new CliError(err.message, EXIT.AUTH, 'this command needs a user with a higher role');
      case 'NOT_READY':
      case 'FENCED':
      case 'DEADLINE_EXCEEDED':
        return new CliError(err.message, EXIT.UNAVAILABLE, master ? `is the master running at ${master}? (--master HOST:PORT)` : undefined);
      case 'INVALID_ARGUMENT':
      case 'LIMIT_EXCEEDED':
        return new CliError(err.message, EXIT.BAD_ARGS);
      default:
        return new CliError(err.message, EXIT.ERROR);
    }
  }
  return new CliError((err as Error)?.message ?? String(err), EXIT.ERROR);
}

async function adminCall<Res>(client: CairnClient, master: string, method: 'listServers' | 'getRanges'): Promise<Res> {
  const admin = new AdminServiceClient(master, (await import('@grpc/grpc-js')).credentials.createInsecure());
  try {
    return (await call(admin, admin[method] as never, {}, { token: client.token, timeoutMs: 10_000 })) as Res;
  } finally {
    admin.close();
  }
}

async function fetchServers(client: CairnClient, master: string): Promise<{ epoch: bigint; servers: ServerRow[] }> {
  const res = await adminCall<Awaited<ReturnType<typeof import('../proto/gen/cairn/v1/admin.js').ListServersResponse.fromJSON>>>(client, master, 'listServers');
  return {
    epoch: res.header?.epoch ?? 0n,
    servers: res.servers.map((s) => ({
      id: s.id,
      address: s.address,
      status: s.status,
      bytes: Number(s.bytes),
      rows: Number(s.rows),
      ranges: s.ranges,
      share: s.share,
      opsPerSec: s.opsPerSec,
      lastHeartbeatMs: Number(s.lastHeartbeatMs),
    })),
  };
}

async function fetchRanges(client: CairnClient, master: string): Promise<{ epoch: bigint; ranges: RangeRow[] }> {
  const res = await adminCall<Awaited<ReturnType<typeof import('../proto/gen/cairn/v1/admin.js').GetRangesResponse.fromJSON>>>(client, master, 'getRanges');
  return {
    epoch: res.header?.epoch ?? 0n,
    ranges: res.ranges.map((r) => ({
      start: r.start,
      end: endFromProto(r.end),
      shard: r.shardId,
      address: r.address,
      bytes: Number(r.bytes),
      rows: Number(r.rows),
    })),
  };
}

/** Runs `items` through `fn` with at most `concurrency` in flight. */
async function pool<T>(items: T[], concurrency: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

function batches(total: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < total; i += size) out.push([i, Math.min(total, i + size)]);
  return out;
}

export async function runCtl(positionals: string[], flags: Flags, io: Io): Promise<number> {
  const [cmd, ...args] = positionals;
  const json = flags.json === true;
  const print = (human: string[] | string, obj: unknown) =>
    json ? io.out(JSON.stringify(obj)) : (Array.isArray(human) ? human : [human]).forEach((l) => io.out(l));
  if (!cmd || cmd === 'help' || flags.help === true) {
    io.out(CTL_USAGE);
    return cmd || flags.help === true ? EXIT.OK : EXIT.BAD_ARGS;
  }
  const master = str(flags, 'master') ?? io.env.CAIRN_MASTER ?? '127.0.0.1:7000';
  const need = (n: number, usage: string) => {
    if (args.length < n) throw new CliError(`${cmd}: missing arguments`, EXIT.BAD_ARGS, `usage: cairn ctl ${usage}`);
  };

  if (!['servers', 'ranges', 'put', 'get', 'scan', 'delete', 'load', 'verify'].includes(cmd)) {
    throw new CliError(`unknown command "${cmd}"`, EXIT.BAD_ARGS, 'run "cairn ctl help" for the list');
  }
  const client = await connect(flags, io);
  try {
    switch (cmd) {
      case 'servers': {
        const { epoch, servers } = await fetchServers(client, master);
        print(formatServers(servers, epoch), serversJson(servers, epoch));
        return EXIT.OK;
      }
      case 'ranges': {
        const [{ servers }, { epoch, ranges }] = await Promise.all([fetchServers(client, master), fetchRanges(client, master)]);
        print(formatRanges(servers, ranges), rangesJson(ranges, epoch));
        return EXIT.OK;
      }
      case 'put': {
        need(3, 'put ROW COLUMN VALUE');
        const ts = await client.put(args[0]!, { [args[1]!]: args[2]! }, { sync: flags.sync === true });
        print(`OK ${ts}`, { row: args[0], column: args[1], timestampUs: ts.toString() });
        return EXIT.OK;
      }
      case 'get': {
        need(1, 'get ROW [COLUMN...]');
        const cells = await client.get(args[0]!, args.length > 1 ? { columns: args.slice(1) } : {});
        print(
          cells.map((c) => `${c.column}\t${c.timestampUs}\t${c.value.toString('utf8')}`),
          { row: args[0], cells: cells.map((c) => ({ column: c.column, timestampUs: c.timestampUs.toString(), value: c.value.toString('utf8') })) },
        );
        return cells.length ? EXIT.OK : EXIT.ERROR;
      }
      case 'scan': {
        const limit = int(flags, 'limit', 100, 1);
        const rows: Array<{ row: string; cells: Array<{ column: string; timestampUs: string; value: string }> }> = [];
        for await (const r of client.scan(args[0] ?? '', { pageSize: Math.min(limit, 1000) })) {
          rows.push({ row: r.row, cells: r.cells.map((c) => ({ column: c.column, timestampUs: c.timestampUs.toString(), value: c.value.toString('utf8') })) });
          if (rows.length >= limit) break;
        }
        print(
          rows.map((r) => `${r.row}\t${r.cells.map((c) => `${c.column}=${c.value}`).join(' ')}`),
          { rows },
        );
        return EXIT.OK;
      }
      case 'delete': {
        need(1, 'delete ROW');
        const n = await client.deleteRow(args[0]!);
        print(`deleted ${n} cells`, { row: args[0], deletedCells: n });
        return EXIT.OK;
      }
      case 'load': {
        const rows = int(flags, 'rows', -1, 1);
        if (rows < 0) throw new CliError('load: --rows N is required', EXIT.BAD_ARGS);
        const size = int(flags, 'value-size', 100, 0);
        const seed = int(flags, 'seed', 0);
        const concurrency = int(flags, 'concurrency', 8, 1);
        let written = 0;
        let errors = 0;
        let firstError: string | undefined;
        await pool(batches(rows, 500), concurrency, async ([from, to]) => {
          const batch = [];
          for (let i = from; i < to; i++) batch.push({ row: loadRowKey(seed, i), cells: [{ column: LOAD_COLUMN, value: loadValue(seed, i, size) }] });
          try {
            await client.writeRows(batch);
            written += batch.length;
          } catch (err) {
            errors += batch.length;
            firstError ??= (err as Error).message;
          }
        });
        print(`written ${written} rows, ${errors} errors${firstError ? ` (first: ${firstError})` : ''}`, { written, errors });
        return errors ? EXIT.ERROR : EXIT.OK;
      }
      case 'verify': {
        const rows = int(flags, 'rows', -1, 1);
        if (rows < 0) throw new CliError('verify: --rows N is required', EXIT.BAD_ARGS);
        const size = int(flags, 'value-size', 100, 0);
        const seed = int(flags, 'seed', 0);
        let missing = 0;
        let wrong = 0;
        await pool(batches(rows, 500), int(flags, 'concurrency', 8, 1), async ([from, to]) => {
          const keys = [];
          for (let i = from; i < to; i++) keys.push(loadRowKey(seed, i));
          const got = await client.getRows(keys, { columns: [LOAD_COLUMN] });
          for (let i = from; i < to; i++) {
            const cell = got.get(loadRowKey(seed, i))?.[0];
            if (!cell) missing++;
            else if (!cell.value.equals(loadValue(seed, i, size))) wrong++;
          }
        });
        print(`checked ${rows} rows: ${missing} missing, ${wrong} wrong`, { checked: rows, missing, wrong });
        return missing || wrong ? EXIT.VERIFY_FAILED : EXIT.OK;
      }
    }
    return EXIT.BAD_ARGS;
  } catch (err) {
    throw asCliError(err, master);
  } finally {
    client.close();
  }
}
