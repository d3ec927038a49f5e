/**
 * The console's state and calls: logging in, the command queue, each manager
 * command, the plan → confirm → progress flow of rebalance, dropserver and
 * remserver, and where keys go in each mode. Components draw what this
 * returns; nothing here draws.
 *
 * Cancelling: `n` or Ctrl-C at the question (or Ctrl-C while planning)
 * changes nothing. Ctrl-C while following only stops following: the moves
 * run on the master, and the dashboard keeps showing them.
 */
import { useInput } from 'ink';
import { useCallback, useEffect, useRef, useState } from 'react';
import { formatHash } from '../../services/common/ranges.js';
import { formatRanges, formatServers, humanBytes } from '../format.js';
import { complete as completeLine, helpLines, parseCommandLine, type ParsedCommand } from './commands.js';
import type { History } from './history.js';
import type { LineEvent } from './line-editor.js';
import { phaseOf, sharesLine, type ConsoleMode, type LogItem, type LogRecord, type MoveView } from './model.js';
import { describeError, type AdminApi } from './session.js';
import { useLineInput } from './use-line-input.js';

export interface ConsoleOptions {
  api: AdminApi;
  /** From --password or CAIRN_PASSWORD; asked for when absent. */
  password?: string;
  history: History;
  /** Leaves the app with an exit code. */
  exit: (code: number) => void;
  /** The prompt as it reads now, e.g. `Manager(3 servers)>`. */
  promptLabel: () => string;
  /** Shard ids, for Tab completion of dropserver and remserver. */
  serverIds: () => string[];
  /** Asks the dashboard to poll now (after a command changed something). */
  refresh: () => void;
}

export interface ConsoleState {
  mode: ConsoleMode;
  log: LogRecord[];
  connected: boolean;
  /** The command line (or the password being typed). */
  input: { value: string; options: string[]; mask: boolean; label?: string };
  notice?: string;
}

/** Thrown inside a command to end it with one error line. */
class CommandError extends Error {}

const TITLES = { rebalance: 'Rebalance', dropserver: 'Drain' } as const;

export function useConsole(o: ConsoleOptions): ConsoleState {
  const { api, history, exit } = o;
  const [mode, setModeState] = useState<ConsoleMode>(o.password !== undefined ? { kind: 'connecting' } : { kind: 'password' });
  const [log, setLog] = useState<LogRecord[]>([]);
  const [connected, setConnected] = useState(false);
  const [notice, setNotice] = useState<string | undefined>(history.problem);

  const modeRef = useRef(mode);
  const setMode = useCallback((m: ConsoleMode) => {
    modeRef.current = m;
    setModeState(m);
  }, []);
  const nextId = useRef(0);
  const append = useCallback((...items: LogItem[]) => setLog((l) => [...l, ...items.map((it) => ({ ...it, id: nextId.current++ }))]), []);
  const fail = useCallback((err: unknown) => append({ kind: 'error', message: err instanceof CommandError ? err.message : describeError(err, api.master).line }), [append, api]);

  const optsRef = useRef(o);
  optsRef.current = o;
  const password = useRef(o.password);
  const queue = useRef<string[]>([]);
  const running = useRef(false);
  const answer = useRef<((yes: boolean) => void) | undefined>(undefined);
  const detach = useRef<(() => void) | undefined>(undefined);
  const cancelled = useRef(false);
  const interruptedOnce = useRef(false);

  // -------------------------------------------------------------------------
  // Connection

  const connect = useCallback(
    async (pw: string): Promise<boolean> => {
      setMode({ kind: 'connecting' });
      try {
        await api.connect(pw);
        password.current = pw;
        setConnected(true);
        setMode({ kind: 'prompt' });
        return true;
      } catch (err) {
        const d = describeError(err, api.master);
        append({ kind: 'error', message: d.line });
        setConnected(false);
        if (d.auth) {
          password.current = undefined;
          setMode({ kind: 'password' });
        } else {
          // Unreachable: keep the password, so that the next command can try again.
          password.current = pw;
          setMode({ kind: 'prompt' });
        }
        return false;
      }
    },
    [api, append, setMode],
  );

  useEffect(() => {
    if (o.password !== undefined) void connect(o.password);
    // Only at start: later logins come from the password prompt.
  }, []);

  /** Before a command that needs the master: reconnect with the known password, or explain. */
  const ensureConnected = async () => {
    if (api.connected) return;
    if (password.current === undefined) {
      setMode({ kind: 'password' });
      throw new CommandError('not logged in: enter the password first');
    }
    setMode({ kind: 'busy', what: `connecting to ${api.master}` });
    try {
      await api.connect(password.current);
      setConnected(true);
    } catch (err) {
      const d = describeError(err, api.master);
      if (d.auth) {
        password.current = undefined;
        setMode({ kind: 'password' });
      }
      throw new CommandError(d.line);
    }
  };

  // -------------------------------------------------------------------------
  // Questions and operations

  const ask = (question: string): Promise<boolean> =>
    new Promise((resolve) => {
      answer.current = (yes) => {
        answer.current = undefined;
        resolve(yes);
      };
      setMode({ kind: 'confirm', question });
    });

  const follow = async (kind: 'rebalance' | 'dropserver', operationId: string) => {
    const title = `${TITLES[kind]} ${operationId}`;
    setMode({ kind: 'following', title, operationId, moves: [] });
    const it = api.watch(operationId)[Symbol.asyncIterator]();
    const detached = new Promise<'detached'>((resolve) => (detach.current = () => resolve('detached')));
    let last: MoveView[] = [];
    try {
      for (;;) {
        const r = await Promise.race([it.next(), detached]);
        if (r === 'detached') {
          it.return?.()?.catch(() => {});
          append({
            kind: 'lines',
            lines: [
              `Stopped following ${operationId}: its moves keep running on the master.`,
              'The dashboard shows them under "Moves in flight" (here and on the next start); "moves" lists them.',
            ],
          });
          return;
        }
        if (r.done) break;
        last = r.value.moves;
        setMode({ kind: 'following', title, operationId, moves: last });
        if (r.value.done) break;
      }
    } catch (err) {
      throw new CommandError(`${describeError(err, api.master).line} (the moves keep running on the master; "moves" shows them)`);
    } finally {
      detach.current = undefined;
    }
    const committed = last.filter((m) => m.state === 'committed' || m.state === 'cleaned');
    const aborted = last.filter((m) => m.state === 'aborted');
    const moved = committed.reduce((n, m) => n + m.bytes, 0);
    const unfinished = last.length - committed.length - aborted.length;
    append({
      kind: 'moves',
      title,
      moves: last,
      total: true,
      summary:
        `${TITLES[kind]} ${operationId}: ${committed.length} moves committed, ${aborted.length} aborted, ${humanBytes(moved)} moved.` +
        (unfinished ? ` The progress stream ended early: ${unfinished} still running on the master ("moves" shows them).` : ''),
    });
  };

  const maxMbpsOf = (c: ParsedCommand): number | undefined => {
    const v = c.flags['max-mbps'];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (typeof v !== 'string' || !(n >= 0)) throw new CommandError(`--max-mbps: expected a number >= 0, got "${String(v)}"`);
    return n;
  };

  /** Plan first; then ask; then start and follow. Nothing changes before "y". */
  const operation = async (kind: 'rebalance' | 'dropserver' | 'remserver', c: ParsedCommand) => {
    const server = kind === 'rebalance' ? undefined : c.args[0]!;
    const maxMbps = maxMbpsOf(c);
    cancelled.current = false;
    setMode({ kind: 'busy', what: server ? `planning the drain of ${server}` : 'planning' });
    const plan = await api.plan(server);
    if (kind === 'remserver') {
      append({ kind: 'plan', plan, emptyText: `${server} owns no range: nothing to move.`, heading: `${server} still owns ranges; draining it ("dropserver ${server}") would make these moves:` });
      if (plan.moves.length) throw new CommandError(`remserver: ${server} still owns ranges (the moves above); drain it first with "dropserver ${server}"`);
    } else {
      append({ kind: 'plan', plan, emptyText: server ? `${server} owns no range: nothing to move.` : undefined });
      if (!plan.moves.length) return;
    }
    const question = kind === 'rebalance' ? 'Proceed with re-sharding?' : kind === 'dropserver' ? `Drain ${server}?` : `Remove server ${server} from the cluster and stop it?`;
    if (cancelled.current || !(await ask(question))) {
      append({ kind: 'lines', lines: ['Cancelled: nothing was changed.'] });
      return;
    }
    if (kind === 'remserver') {
      setMode({ kind: 'busy', what: `removing ${server}` });
      const r = await api.removeServer(server!);
      append({ kind: 'lines', lines: [`Removed ${r.shardId}${r.stopped ? '; its process is stopping' : '; it did not answer the stop request (stop it by hand)'}.`] });
      return;
    }
    setMode({ kind: 'busy', what: 'starting the moves' });
    const started = await api.start(kind, { server, maxMbps });
    if (!started.operationId) {
      append({ kind: 'lines', lines: ['Nothing to move.'] });
      return;
    }
    await follow(kind, started.operationId);
  };

  // -------------------------------------------------------------------------
  // Commands

  const execute = async (c: ParsedCommand) => {
    switch (c.name) {
      case 'help':
        append({ kind: 'lines', lines: helpLines() });
        return;
      case 'exit':
        exit(0);
        return;
    }
    await ensureConnected();
    setMode({ kind: 'busy', what: c.name });
    switch (c.name) {
      case 'servers': {
        const s = await api.snapshot();
        append({ kind: 'lines', lines: formatServers(s.servers, s.epoch) });
        return;
      }
      case 'ranges': {
        const s = await api.snapshot();
        append({ kind: 'lines', lines: [...formatRanges(s.servers, s.ranges), sharesLine(s.servers, s.ranges)] });
        return;
      }
      case 'plan': {
        const drain = c.flags.drain;
        if (drain === true || Array.isArray(drain)) throw new CommandError('plan: --drain needs one shard id or host:port');
        append({ kind: 'plan', plan: await api.plan(drain || undefined) });
        return;
      }
      case 'rebalance':
      case 'dropserver':
      case 'remserver':
        await operation(c.name, c);
        return;
      case 'addserver': {
        const r = await api.addServer(c.args[0]!);
        append({
          kind: 'lines',
          lines: [
            r.approvalRequired
              ? `Approved ${c.args[0]}: start the shard with --advertise ${c.args[0]} and it will join at 0%; then run "rebalance".`
              : `Noted ${c.args[0]}. This cluster does not require approval: any shard with the server credential joins at 0%.`,
          ],
        });
        return;
      }
      case 'sync': {
        const r = await api.sync();
        append({
          kind: 'lines',
          lines: [r.failed.length ? `Sync incomplete: ${r.synced} shards took map epoch ${r.epoch}.` : `Sync done: ${r.synced} shards hold map epoch ${r.epoch}.`],
        });
        for (const f of r.failed) append({ kind: 'error', message: `${f.shardId} did not answer: ${f.error}` });
        return;
      }
      case 'moves': {
        const all = c.flags.all === true;
        append({ kind: 'moves', title: all ? 'Every journaled move:' : 'Moves in flight:', moves: await api.moves(all) });
        return;
      }
      case 'recover': {
        const r = await api.recover(c.args[0]!);
        const m = r.move;
        append({
          kind: 'lines',
          lines: [
            `Move ${m.id}: ${m.from} -> ${m.to} [${formatHash(m.start)}, ${formatHash(m.end)}[`,
            ...m.history.map((h) => `  ${new Date(h.atMs).toISOString()} ${h.state}`),
            `Now ${m.state} (${phaseOf(m.state)}): ${r.action}`,
          ],
        });
        return;
      }
    }
  };

  const run = async (line: string) => {
    const parsed = parseCommandLine(line);
    append({ kind: 'echo', prompt: optsRef.current.promptLabel(), line: line.trim() });
    if (line.trim()) history.add(line);
    if (!parsed.ok) return append({ kind: 'error', message: parsed.error });
    if (!parsed.command) return;
    try {
      await execute(parsed.command);
    } catch (err) {
      fail(err);
    } finally {
      if (modeRef.current.kind !== 'password') setMode({ kind: 'prompt' });
      optsRef.current.refresh();
    }
  };

  /** Runs queued lines one at a time; lines typed ahead while one runs wait their turn. */
  const pump = async () => {
    if (running.current) return;
    running.current = true;
    try {
      while (queue.current.length && modeRef.current.kind !== 'password') await run(queue.current.shift()!);
    } finally {
      running.current = false;
    }
  };

  // -------------------------------------------------------------------------
  // Keys

  const onCommandEvent = useCallback((e: LineEvent) => {
    if (e.type === 'submit') {
      interruptedOnce.current = false;
      setNotice(undefined);
      queue.current.push(e.line);
      void pump();
    } else if (e.type === 'eof') {
      exit(0);
    } else if (modeRef.current.kind === 'busy') {
      // Ctrl-C while planning: the question will not be asked.
      cancelled.current = true;
      setNotice('Interrupted: no question will be asked and nothing will be changed.');
    } else if (e.hadText) {
      interruptedOnce.current = false;
    } else if (interruptedOnce.current) {
      exit(0);
    } else {
      interruptedOnce.current = true;
      setNotice('Press Ctrl-C again (or type exit) to leave.');
    }
    // pump reads only refs and stable callbacks, so the first one serves for the console's life.
  }, []);

  const onPasswordEvent = useCallback(
    (e: LineEvent) => {
      if (e.type === 'submit') void connect(e.line).then((ok) => (ok ? pump() : undefined));
      else if (e.type === 'eof' || e.type === 'interrupt') exit(1);
    },
    [connect, exit],
  );

  const complete = useCallback((value: string) => completeLine(value, optsRef.current.serverIds()), []);

  const command = useLineInput({ active: mode.kind === 'prompt' || mode.kind === 'busy', history: history.entries, complete, onEvent: onCommandEvent });
  const secret = useLineInput({ active: mode.kind === 'password', keepHistory: false, onEvent: onPasswordEvent });

  // The question, the operation being followed, and connecting take single keys.
  useInput(
    (input, key) => {
      const m = modeRef.current;
      const ctrlC = (key.ctrl && input === 'c') || input.startsWith('\x03');
      if (m.kind === 'confirm') {
        const c = input.trim().charAt(0).toLowerCase();
        if (c === 'y') answer.current?.(true);
        else if (c === 'n' || ctrlC || key.escape) answer.current?.(false);
      } else if (m.kind === 'following') {
        if (ctrlC) detach.current?.();
      } else if (m.kind === 'connecting') {
        if (ctrlC) exit(1);
      }
    },
    { isActive: mode.kind === 'confirm' || mode.kind === 'following' || mode.kind === 'connecting' },
  );

  return {
    mode,
    log,
    connected,
    notice,
    input:
      mode.kind === 'password'
        ? { value: secret.value, options: [], mask: true, label: `Password for ${api.user}@${api.master}:` }
        : { value: command.value, options: command.options, mask: false },
  };
}
