/**
 * The manager commands the console accepts, how a typed line parses, and Tab
 * completion. A line parses with commander and the declarations `cairn ctl`
 * uses (cli/ctl-commands.ts), less --yes (the console asks): a flag ctl
 * refuses, the console refuses, with commander's suggestion, in one line.
 * Pure: no React, no I/O.
 */
import { Command, CommanderError } from 'commander';
import { flagsOf, type Flags } from '../commands.js';
import { CTL, declareOptions, optionsOf, type CtlSpec } from '../ctl-commands.js';

export interface CommandSpec {
  name: string;
  usage: string;
  help: string;
  /** What the first argument completes to. */
  completes?: 'server';
  /** ctl's declaration, for the commands ctl has too. */
  ctl?: CtlSpec;
}

/** `rebalance [--max-mbps X]`: the command, its arguments, and its options with their values in capitals. */
function usageOf(spec: CtlSpec): string {
  const options = optionsOf(spec, 'console').map(([flags]) => {
    const m = /(--[a-z][a-z-]*)(?: <([^>]+)>)?$/.exec(flags)!;
    return `[${m[1]}${m[2] ? ` ${m[2].toUpperCase()}` : ''}]`;
  });
  return [spec.name, ...(spec.args ? [spec.args] : []), ...options].join(' ');
}

export const COMMANDS: CommandSpec[] = [
  ...CTL.filter((c) => c.console).map((c) => ({ name: c.name, usage: usageOf(c), help: c.doc, completes: c.completes, ctl: c })),
  { name: 'help', usage: 'help', help: 'this list' },
  { name: 'exit', usage: 'exit', help: 'leave (moves in flight keep running on the master)' },
];

export const COMMAND_NAMES = COMMANDS.map((c) => c.name);

/** Every command; or, for `rebalance --help`, the one named. */
export function helpLines(only?: string): string[] {
  const one = COMMANDS.find((c) => c.name === only);
  if (one) return [`usage: ${one.usage}`, `  ${one.help}`];
  const w = Math.max(...COMMANDS.map((c) => c.usage.length));
  return [
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.usage.padEnd(w)}  ${c.help}`),
    'Keys: Tab completes, Up/Down walk the history, Ctrl-C cancels (twice at an empty prompt leaves).',
  ];
}

export interface ParsedCommand {
  name: string;
  args: string[];
  flags: Flags;
}

export type ParseResult = { ok: true; command: ParsedCommand } | { ok: false; error: string } | { ok: true; command: undefined };

/** Commander's refusal in the console's one line: `rebalance: unknown flag --max-mbs (did you mean --max-mbps?); usage: …`. */
function refusal(spec: CommandSpec, err: CommanderError): string {
  const usage = `usage: ${spec.usage}`;
  switch (err.code) {
    case 'commander.unknownOption': {
      const flag = /unknown option '([^']+)'/.exec(err.message)?.[1];
      const near = /Did you mean (\S+)\?/.exec(err.message)?.[1];
      return `${spec.name}: unknown flag ${flag}${near ? ` (did you mean ${near}?)` : ''}; ${usage}`;
    }
    case 'commander.optionMissingArgument':
      return `${spec.name}: ${/'(--[a-z-]+)/.exec(err.message)?.[1]} needs a value`;
    case 'commander.missingArgument':
      return `${spec.name}: missing argument; ${usage}`;
    case 'commander.excessArguments':
      return `${spec.name}: too many arguments; ${usage}`;
    default:
      return `${spec.name}: ${err.message.replace(/^error: /, '').replace(/\s+/g, ' ')}; ${usage}`;
  }
}

/** Parses `words` with `spec`'s declaration; throws CommanderError. */
function parseWith(spec: CtlSpec, words: string[]): { args: string[]; flags: Flags } {
  const cmd = new Command(spec.name).exitOverride().showSuggestionAfterError(true);
  cmd.configureOutput({ writeOut: () => {}, writeErr: () => {} });
  if (spec.args) cmd.arguments(spec.args);
  declareOptions(cmd, spec, 'console').action(() => {});
  cmd.parse(words, { from: 'user' });
  return { args: cmd.args, flags: flagsOf(cmd) };
}

/** Parses a typed line; an empty line is no command. */
export function parseCommandLine(line: string): ParseResult {
  const words = line.trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) return { ok: true, command: undefined };
  const [first, ...rest] = words;
  const name = first!.toLowerCase() === 'quit' ? 'exit' : first!.toLowerCase();
  const spec = COMMANDS.find((c) => c.name === name);
  if (!spec) return { ok: false, error: `unknown command "${first}": type help for the list` };
  try {
    const parsed = spec.ctl ? parseWith(spec.ctl, rest) : parseWith({ name, doc: spec.help }, rest);
    return { ok: true, command: { name, ...parsed } };
  } catch (err) {
    // `rebalance --help` asks for help, as in ctl.
    if (err instanceof CommanderError && err.code === 'commander.helpDisplayed') return { ok: true, command: { name: 'help', args: [name], flags: {} } };
    if (err instanceof CommanderError) return { ok: false, error: refusal(spec, err) };
    throw err;
  }
}

export interface Completion {
  /** The line after completion. */
  value: string;
  /** The candidates when more than one matches (to show), else empty. */
  options: string[];
}

function commonPrefix(words: string[]): string {
  if (words.length === 0) return '';
  let p = words[0]!;
  for (const w of words) while (!w.startsWith(p)) p = p.slice(0, -1);
  return p;
}

/**
 * Tab completion at the end of the line: command names for the first word,
 * shard ids for the argument of dropserver and remserver.
 */
export function complete(line: string, serverIds: string[] = []): Completion {
  const m = /^(\s*)(\S*)$/.exec(line);
  let before: string;
  let word: string;
  let candidates: string[];
  if (m) {
    before = m[1]!;
    word = m[2]!;
    candidates = COMMAND_NAMES;
  } else {
    const arg = /^(\s*(\S+)\s+)(\S*)$/.exec(line);
    const spec = arg ? COMMANDS.find((c) => c.name === arg[2]!.toLowerCase()) : undefined;
    if (!arg || spec?.completes !== 'server') return { value: line, options: [] };
    before = arg[1]!;
    word = arg[3]!;
    candidates = serverIds;
  }
  const matches = candidates.filter((c) => c.startsWith(word));
  if (matches.length === 0) return { value: line, options: [] };
  if (matches.length === 1) return { value: `${before}${matches[0]} `, options: [] };
  return { value: `${before}${commonPrefix(matches)}`, options: matches };
}
