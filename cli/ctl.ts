/**
 * `cairn ctl`: the scriptable face of the Admin API plus data commands.
 * Results go to stdout (`--json` for scripts); diagnostics to stderr.
 */
import { connect as tcpConnect } from 'node:net';
import { createInterface } from 'node:readline/promises';
import { CairnClient } from '../services/client/index.js';
import { parseHostPort } from '../services/common/config.js';
import { describeMasters, masterLine, type MasterView } from '../services/client/master-status.js';
import { masterList } from '../services/common/masters.js';
import { CairnError } from '../services/common/errors.js';
import { endFromProto } from '../services/common/hash.js';
import { formatHash } from '../services/common/ranges.js';
import type { FlagValue } from './flags.js';
import { CTL } from './ctl-commands.js';
import { CliError, EXIT } from './exit.js';
import { formatRanges, formatServers, humanBytes, percent, rangesJson, serversJson, type RangeRow, type ServerRow } from './format.js';
import { LOAD_COLUMN, loadRowKey, loadValue } from './loadgen.js';
import { FollowLostError, operationRequest, recoverLines, reloadLines, runOperation, TEXT, type OperationKind } from './operations.js';
import { moveView, SdkOperations, type PlanView } from './operations-api.js';
import { phaseName } from '../services/master/move-steps.js';
import { clientTlsFrom } from './tls.js';

export interface Io {
  out(line: string): void;
  err(line: string): void;
  env: NodeJS.ProcessEnv;
}

type Flags = Record<string, FlagValue>;

const CTL_COMMANDS = CTL.map((c) => c.name);

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
  const timeoutMs = int(flags, 'timeout', 10_000, 1);
  const tls = clientTlsFrom(flags, io.env);
  // Ask the network first: the SDK retries a refused connection until the deadline, and says so in grpc's words.
  // With several masters, one answering is enough: the SDK finds the leader among them.
  const answers = await Promise.all(masterList(master).map((a) => probe(a, Math.min(5000, Math.max(50, Math.floor(timeoutMs * 0.9))))));
  if (answers.every((why) => why !== undefined)) throw new CliError(answers.join('; '), EXIT.UNAVAILABLE, `is the master running there? (--master HOST:PORT[,HOST:PORT…] or CAIRN_MASTER)`);
  try {
    return await CairnClient.connect({ master, user, password, timeoutMs, tls });
  } catch (err) {
    throw asCliError(err, master);
  }
}

/** Every master given, as it describes itself; an unreachable one's why in plain words. */
async function mastersOf(given: string, tls: ReturnType<typeof clientTlsFrom>): Promise<MasterView[]> {
  const masters = await describeMasters(given, { tls, timeoutMs: 2000 });
  return masters.map((m) => (m.status === 'unreachable' ? { ...m, why: plainTransportMessage(m.why, m.address) } : m));
}

/**
 * The masters, asked again (up to `timeoutMs`) while none claims to lead
 * but one answers: an election is under way (a leader died and its lease has
 * not run out yet), which takes a few seconds, so `ctl servers` run during
 * a takeover shows its result rather than failing. A leader that holds but
 * says why (it lost etcd) is shown at once: waiting would not change it.
 */
async function mastersAfterElection(given: string, tls: ReturnType<typeof clientTlsFrom>, timeoutMs: number): Promise<MasterView[]> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const masters = await mastersOf(given, tls);
    const electing = masters.length > 1 && !masters.some((m) => m.leader) && masters.some((m) => m.status !== 'unreachable');
    if (!electing || Date.now() >= until) return masters;
    await new Promise((r) => setTimeout(r, 250));
  }
}

function masterLines(masters: MasterView[]): string[] {
  return ['', 'Masters:', ...masters.map((m) => `  ${masterLine(m)}`)];
}

/**
 * Opens and closes one TCP connection to `address`. Resolves to a plain
 * sentence when nothing accepted it within `ms` (refused, no such host, or
 * silence), else to undefined.
 */
export function probe(address: string, ms: number): Promise<string | undefined> {
  let host: string;
  let port: number;
  try {
    ({ host, port } = parseHostPort(address, { allowPortZero: false }));
  } catch (err) {
    throw new CliError(`--master: ${(err as Error).message}`, EXIT.BAD_ARGS);
  }
  return new Promise((resolve) => {
    const socket = tcpConnect({ host, port });
    const done = (why: string | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(why);
    };
    const timer = setTimeout(() => done(`nothing answered at ${address} within ${ms} ms`), ms);
    socket.once('connect', () => done(undefined));
    socket.once('error', (e: NodeJS.ErrnoException) => done(unreachableSentence(address, e.code ?? e.message)));
  });
}

function unreachableSentence(address: string, code: string): string {
  if (code === 'ECONNREFUSED') return `nothing answered at ${address} (connection refused)`;
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return `nothing answered at ${address}: the host name does not resolve`;
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return `nothing answered at ${address}: no route to that host`;
  return `nothing answered at ${address} (${code})`;
}

/** grpc-js's "No connection established. Last error: … Resolution note: …" in plain words. */
export function plainTransportMessage(message: string, address: string): string {
  if (!/No connection established|Resolution note|Name resolution failed/.test(message)) return message;
  const code = /\b(E[A-Z]{3,})\b/.exec(message)?.[1];
  if (/Name resolution failed/.test(message)) return unreachableSentence(address, 'ENOTFOUND');
  return code ? unreachableSentence(address, code) : `nothing answered at ${address}`;
}

export function asCliError(err: unknown, master?: string): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof FollowLostError) {
    const e = asCliError(err.cause, master);
    return new CliError(`${e.message} ${TEXT.followLost}`, e.exitCode, e.hint);
  }
  if (err instanceof CairnError) {
    switch (err.code) {
      case 'UNAUTHENTICATED':
        return new CliError(err.message, EXIT.AUTH, 'check --user/--password (or CAIRN_USER/CAIRN_PASSWORD)');
      case 'PERMISSION_DENIED':
        return new CliError(err.message, EXIT.AUTH, 'this command needs a user with a higher role');
      case 'NOT_READY':
      case 'UNREACHABLE':
      case 'FENCED':
      case 'DEADLINE_EXCEEDED':
        // A master that answered with no map runs: asking whether it does would send the operator the wrong way.
        // (Other NOT_READY answers include a master the SDK could not reach.)
        if (err.code === 'NOT_READY' && /no map yet/.test(err.message)) {
          return new CliError(
            err.message,
            EXIT.UNAVAILABLE,
            'start expectShards shards; a master started on an empty or wrong dataDir refuses the shards of an existing cluster and its log ("shard refused") says which cluster and how to rebuild',
          );
        }
        return new CliError(master ? plainTransportMessage(err.message, master) : err.message, EXIT.UNAVAILABLE, master ? `is the master running at ${master}? (--master HOST:PORT)` : undefined);
      case 'INVALID_ARGUMENT':
      case 'LIMIT_EXCEEDED':
        return new CliError(err.message, EXIT.BAD_ARGS);
      default:
        return new CliError(err.message, EXIT.ERROR);
    }
  }
  return new CliError((err as Error)?.message ?? String(err), EXIT.ERROR);
}

async function fetchServers(client: CairnClient): Promise<{ epoch: bigint; servers: ServerRow[] }> {
  const servers = await client.listServers();
  return { epoch: client.map.epoch, servers };
}

async function fetchRanges(client: CairnClient): Promise<{ epoch: bigint; ranges: RangeRow[] }> {
  const ranges = await client.getRanges();
  return { epoch: client.map.epoch, ranges: ranges.map((r) => ({ ...r, shard: r.shardId })) };
}

/** Asks y/n on a terminal; --yes answers for scripts; no terminal and no --yes is an error with the hint. */
async function confirm(question: string, flags: Flags, io: Io): Promise<boolean> {
  if (flags.yes === true) return true;
  if (!process.stdin.isTTY) throw new CliError('confirmation needed but stdin is not a terminal', EXIT.BAD_ARGS, 'pass --yes to proceed without asking');
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`${question} (y/n) `);
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}

function planJson(id: string, plan: PlanView, movedBytes?: number) {
  const moves = plan.moves.map((m) => ({ start: m.start.toString(), end: m.end.toString(), from: m.from, to: m.to, bytes: m.bytes, rows: m.rows }));
  return {
    id,
    moves,
    movedBytes: movedBytes ?? moves.reduce((n, m) => n + m.bytes, 0),
    totalBytes: plan.totalBytes,
    minimumBytes: plan.minimumBytes,
    shards: plan.shards,
  };
}

function planLines(plan: PlanView, text: { heading?: string; emptyText?: string } = {}): string[] {
  const p = planJson('', plan);
  if (p.moves.length === 0) return [text.emptyText ?? TEXT.balanced];
  return [
    text.heading ?? TEXT.movesHeading,
    ...plan.moves.map((m, i) => `  Move ${i + 1}: ${m.from} -> ${m.to}  [${formatHash(m.start)}, ${formatHash(m.end)}[  ${humanBytes(m.bytes)} (${m.rows} rows)`),
    TEXT.planMoves(p),
    TEXT.sharesHeading(p.moves.length),
    ...plan.shards.map((s) => `  ${s.id}: ${humanBytes(s.bytesBefore)} -> ${humanBytes(s.bytesAfter)} (${percent(s.shareAfter)})`),
  ];
}

/** rebalance, dropserver and remserver: the flow of cli/operations.ts, drawn on stdout (JSON at the end with --json). */
async function manage(client: CairnClient, kind: OperationKind, args: string[], flags: Flags, io: Io, json: boolean): Promise<number> {
  const req = operationRequest(kind, args, flags);
  const outcome = await runOperation(new SdkOperations(client), req, {
    previewRemoval: false,
    busy: () => {},
    plan: (plan, text) => (json ? undefined : planLines(plan, text).forEach((l) => io.out(l))),
    confirm: (question) => confirm(question, flags, io),
    following: ({ operationId }) => (json ? undefined : io.out(TEXT.started(operationId))),
    // With --json, stdout carries only the result.
    progress: ({ changed }) => changed.forEach((l) => (json ? io.err(l) : io.out(l))),
  });
  switch (outcome.kind) {
    case 'cancelled':
      io.err(TEXT.cancelled);
      return EXIT.ERROR;
    case 'nothing':
      if (json) io.out(JSON.stringify(planJson('', outcome.plan, 0)));
      else if (outcome.started) io.out(TEXT.nothingStarted);
      return EXIT.OK;
    case 'removed': {
      const r = outcome.removed;
      if (json) io.out(JSON.stringify({ id: r.shardId, moves: [], movedBytes: 0, totalBytes: 0, minimumBytes: 0, stopped: r.stopped }));
      else io.out(TEXT.removed(r));
      return EXIT.OK;
    }
    case 'followed': {
      const r = outcome.result;
      if (json) io.out(JSON.stringify({ ...planJson(r.operationId, r.plan, r.movedBytes), committed: r.committed, aborted: r.aborted }));
      else io.out(r.summary);
      return r.aborted ? EXIT.ERROR : EXIT.OK;
    }
  }
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
  if (!cmd) throw new CliError('no command', EXIT.BAD_ARGS, 'run "cairn ctl --help" for the list');
  const master = str(flags, 'master') ?? io.env.CAIRN_MASTER ?? '127.0.0.1:7000';
  const need = (n: number, usage: string) => {
    if (args.length < n) throw new CliError(`${cmd}: missing arguments`, EXIT.BAD_ARGS, `usage: cairn ctl ${usage}`);
  };

  if (!CTL_COMMANDS.includes(cmd)) {
    throw new CliError(`unknown command "${cmd}"`, EXIT.BAD_ARGS, 'run "cairn ctl help" for the list');
  }
  // servers shows the masters whatever else fails: with none leading (etcd lost, an election under way) they say why.
  const masters = cmd === 'servers' ? await mastersAfterElection(master, clientTlsFrom(flags, io.env), int(flags, 'timeout', 10_000, 1)) : [];
  // A leader that says why (it lost etcd) holds its services too: it cannot list the servers either.
  if (cmd === 'servers' && !masters.some((m) => m.leader && !m.why) && masters.some((m) => m.status !== 'unreachable')) {
    print(['No master can change the map: the server list is the leader\'s, and none answers for it.', ...masterLines(masters).slice(1)], { servers: [], masters, error: 'no master leads' });
    throw new CliError('no master leads', EXIT.UNAVAILABLE, 'shards keep serving with the map they have; see each master\'s why above');
  }
  const client = await connect(flags, io);
  try {
    switch (cmd) {
      case 'servers': {
        const { epoch, servers } = await fetchServers(client);
        // The masters section appears when several were given or one has something to say (one master is the embedded default: nothing to choose).
        const showMasters = masters.length > 1 || masters.some((m) => m.why);
        print([...formatServers(servers, epoch), ...(showMasters ? masterLines(masters) : [])], { ...serversJson(servers, epoch), masters });
        return EXIT.OK;
      }
      case 'ranges': {
        const [{ servers }, { epoch, ranges }] = await Promise.all([fetchServers(client), fetchRanges(client)]);
        print(formatRanges(servers, ranges), rangesJson(ranges, epoch));
        return EXIT.OK;
      }
      case 'plan': {
        const plan = await new SdkOperations(client).plan(str(flags, 'drain'));
        print(planLines(plan), planJson('', plan));
        return EXIT.OK;
      }
      case 'rebalance':
        return await manage(client, 'rebalance', args, flags, io, json);
      case 'dropserver':
        need(1, 'dropserver <id|host:port> [--yes]');
        return await manage(client, 'dropserver', args, flags, io, json);
      case 'remserver':
        need(1, 'remserver <id|host:port> [--yes]');
        return await manage(client, 'remserver', args, flags, io, json);
      case 'addserver': {
        need(1, 'addserver <host:port>');
        const r = await new SdkOperations(client).addServer(args[0]!);
        print(TEXT.addServer(args[0]!, r.approvalRequired, 'cairn ctl rebalance'), { address: args[0], approvalRequired: r.approvalRequired });
        return EXIT.OK;
      }
      case 'sync': {
        const r = await client.admin((a) => a.syncMap, {});
        print(
          [TEXT.synced(r, r.header?.epoch), ...r.failed.map((f) => `  ${TEXT.notSynced(f)}`)],
          { epoch: String(r.header?.epoch ?? 0n), synced: r.synced, failed: r.failed.map((f) => ({ id: f.shardId, error: f.error })) },
        );
        return r.failed.length ? EXIT.UNAVAILABLE : EXIT.OK;
      }
      case 'moves': {
        const r = await client.admin((a) => a.listMoves, { all: flags.all === true });
        const rows = r.moves.map((m) => ({ ...moveView(m), start: m.start.toString(), end: endFromProto(m.end).toString(), fenceMs: m.fenceMs }));
        print(
          rows.length ? rows.map((m) => `${m.id} ${m.from} -> ${m.to} ${phaseName(m.state)} ${humanBytes(m.copiedBytes)}/${humanBytes(m.bytes)}${m.error ? ` (${m.error})` : ''}`) : ['No moves in flight.'],
          { moves: rows },
        );
        return EXIT.OK;
      }
      case 'recover': {
        need(1, 'recover <move-id>');
        const r = await new SdkOperations(client).recover(args[0]!);
        print(recoverLines(r), { id: r.move.id, state: r.move.state, action: r.action, history: r.move.history });
        return EXIT.OK;
      }
      case 'factor': {
        if (args[0] === undefined) {
          const factor = client.map.replicationFactor ?? 1;
          print([`Replication factor ${factor}`], { factor });
          return EXIT.OK;
        }
        const n = Number(args[0]);
        if (!Number.isInteger(n) || n < 1) throw new CairnError('INVALID_ARGUMENT', `factor: expected a whole number of 1 or more, got ${args[0]}`);
        const r = await client.setReplicationFactor(n);
        print(
          [r.previous === r.factor ? `Replication factor stays ${r.factor}` : `Replication factor ${r.previous} -> ${r.factor}: the master ${r.factor > r.previous ? 'makes the new copies' : 'drops the extra copies'} by itself; \`cairn ctl ranges\` shows them`],
          r,
        );
        return EXIT.OK;
      }
      case 'reload': {
        const r = await client.reload();
        print(reloadLines(r), {
          users: r.users,
          added: r.added,
          removed: r.removed,
          lowered: r.lowered,
          raised: r.raised,
          passwordChanged: r.passwordChanged,
          revoked: r.revoked,
          restartNeeded: r.restartNeeded,
        });
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
        if (cells.length) return EXIT.OK;
        // Not found is an answer, not silence: say so (the JSON above already shows no cells).
        io.err(`row ${JSON.stringify(args[0])} not found${args.length > 1 ? ` (or it has none of the columns ${args.slice(1).join(', ')})` : ''}`);
        return EXIT.ERROR;
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
