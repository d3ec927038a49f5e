/**
 * The console's state and calls: logging in, the command queue, each manager
 * command, and where keys go in each mode. rebalance, dropserver and
 * remserver run the flow of cli/operations.ts (plan → confirm → progress),
 * which ctl runs too; this draws its steps into the log and the mode.
 * Components draw what this returns; nothing here draws.
 *
 * Cancelling: `n` or Ctrl-C at the question (or Ctrl-C while planning)
 * changes nothing. Ctrl-C while following only stops following: the moves
 * run on the master, and the dashboard keeps showing them.
 */
import { useInput } from 'ink';
import { useCallback, useEffect, useRef, useState } from 'react';
import { flagString } from '../flags.js';
import { formatRanges, formatServers } from '../format.js';
import { operationRequest, recoverLines, runOperation, TEXT, type OperationKind } from '../operations.js';
import { complete as completeLine, helpLines, parseCommandLine, type ParsedCommand } from './commands.js';
import type { History } from './history.js';
import type { LineEvent } from './line-editor.js';
import { sharesLine, type ConsoleMode, type LogItem, type LogRecord } from './model.js';
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
  /** Appends an entry to the log from outside a command (the dashboard's replica events). */
  note: (item: LogItem) => void;
}

/** Thrown inside a command to end it with one error line. */
class CommandError extends Error {}

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

  /** rebalance, dropserver and remserver: the flow of cli/operations.ts, drawn into the log and the mode. */
  const operation = async (kind: OperationKind, c: ParsedCommand) => {
    const req = operationRequest(kind, c.args, c.flags);
    cancelled.current = false;
    const outcome = await runOperation(api, req, {
      previewRemoval: true,
      busy: (what) => setMode({ kind: 'busy', what }),
      plan: (plan, text) => append({ kind: 'plan', plan, ...text }),
      // Ctrl-C while planning: the question is not asked.
      confirm: (question) => (cancelled.current ? Promise.resolve(false) : ask(question)),
      following: ({ operationId, title, stop }) => {
        detach.current = stop;
        setMode({ kind: 'following', title, operationId, moves: [] });
      },
      progress: ({ moves }) => {
        const m = modeRef.current;
        if (m.kind === 'following') setMode({ ...m, moves });
      },
    }).finally(() => (detach.current = undefined));
    switch (outcome.kind) {
      case 'cancelled':
        return append({ kind: 'lines', lines: [TEXT.cancelled] });
      case 'nothing':
        return outcome.started ? append({ kind: 'lines', lines: [TEXT.nothingStarted] }) : undefined;
      case 'removed':
        return append({ kind: 'lines', lines: [TEXT.removed(outcome.removed)] });
      case 'followed': {
        const r = outcome.result;
        if (r.detached) return append({ kind: 'lines', lines: TEXT.detached(r.operationId) });
        return append({ kind: 'moves', title: r.title, moves: r.moves, total: true, summary: r.summary });
      }
    }
  };

  // -------------------------------------------------------------------------
  // Commands

  const execute = async (c: ParsedCommand) => {
    switch (c.name) {
      case 'help':
        append({ kind: 'lines', lines: helpLines(c.args[0]) });
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
        append({ kind: 'plan', plan: await api.plan(flagString(c.flags, 'drain') || undefined) });
        return;
      }
      case 'rebalance':
      case 'dropserver':
      case 'remserver':
        await operation(c.name, c);
        return;
      case 'addserver': {
        const r = await api.addServer(c.args[0]!);
        append({ kind: 'lines', lines: [TEXT.addServer(c.args[0]!, r.approvalRequired, 'rebalance')] });
        return;
      }
      case 'sync': {
        const r = await api.sync();
        append({
          kind: 'lines',
          lines: [TEXT.synced(r, r.epoch)],
        });
        for (const f of r.failed) append({ kind: 'error', message: TEXT.notSynced(f) });
        return;
      }
      case 'moves': {
        const all = c.flags.all === true;
        append({ kind: 'moves', title: all ? 'Every journaled move:' : 'Moves in flight:', moves: await api.moves(all) });
        return;
      }
      case 'recover':
        append({ kind: 'lines', lines: recoverLines(await api.recover(c.args[0]!)) });
        return;
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
    note: append,
    input:
      mode.kind === 'password'
        ? { value: secret.value, options: [], mask: true, label: `Password for ${api.user}@${api.master}:` }
        : { value: command.value, options: command.options, mask: false },
  };
}
