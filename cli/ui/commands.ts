/**
 * The manager commands the console accepts, how a typed line parses, and Tab
 * completion. Pure: no React, no I/O.
 */
import { ArgsError, parseArgs, type FlagValue } from '../args.js';

export interface CommandSpec {
  name: string;
  usage: string;
  help: string;
  /** Positional arguments required. */
  args: number;
  /** What the first argument completes to. */
  completes?: 'server';
}

export const COMMANDS: CommandSpec[] = [
  { name: 'servers', usage: 'servers', help: 'shards with address, status, size, rows, ranges, share and load', args: 0 },
  { name: 'ranges', usage: 'ranges', help: 'the map: each range and its owner, and every shard\'s share', args: 0 },
  { name: 'plan', usage: 'plan [--drain ID]', help: 'dry run: the moves a rebalance (or a drain) would make', args: 0 },
  { name: 'rebalance', usage: 'rebalance [--max-mbps X]', help: 'balance bytes across shards, online: plan, confirm, then progress', args: 0 },
  { name: 'dropserver', usage: 'dropserver <id|host:port> [--max-mbps X]', help: 'drain every range of a shard to the others', args: 1, completes: 'server' },
  { name: 'remserver', usage: 'remserver <id|host:port>', help: 'remove a shard that owns no range; its process exits', args: 1, completes: 'server' },
  { name: 'addserver', usage: 'addserver <host:port>', help: 'approve a shard address (clusters with requireApproval)', args: 1 },
  { name: 'sync', usage: 'sync', help: 'push the current map to every shard', args: 0 },
  { name: 'moves', usage: 'moves [--all]', help: 'moves in flight (or every journaled move)', args: 0 },
  { name: 'recover', usage: 'recover <move-id>', help: 'show a move\'s journal and drive it to committed or aborted', args: 1 },
  { name: 'help', usage: 'help', help: 'this list', args: 0 },
  { name: 'exit', usage: 'exit', help: 'leave (moves in flight keep running on the master)', args: 0 },
];

export const COMMAND_NAMES = COMMANDS.map((c) => c.name);

export function helpLines(): string[] {
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
  flags: Record<string, FlagValue>;
}

export type ParseResult = { ok: true; command: ParsedCommand } | { ok: false; error: string } | { ok: true; command: undefined };

/** Parses a typed line; an empty line is no command. */
export function parseCommandLine(line: string): ParseResult {
  const words = line.trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) return { ok: true, command: undefined };
  const [first, ...rest] = words;
  const name = first!.toLowerCase() === 'quit' ? 'exit' : first!.toLowerCase();
  const spec = COMMANDS.find((c) => c.name === name);
  if (!spec) return { ok: false, error: `unknown command "${first}": type help for the list` };
  let parsed;
  try {
    parsed = parseArgs(rest, { booleans: ['all'] });
  } catch (err) {
    return { ok: false, error: `${name}: ${err instanceof ArgsError ? err.message : String(err)}` };
  }
  // A flag the command does not take is refused, never ignored (a mistyped --max-mbps would run unthrottled).
  const known = [...spec.usage.matchAll(/--([a-z][a-z-]*)/g)].map((m) => m[1]!);
  const unknown = Object.keys(parsed.flags).find((f) => !known.includes(f));
  if (unknown !== undefined) {
    const near = known.find((k) => editDistance(k, unknown) <= 2);
    return { ok: false, error: `${name}: unknown flag --${unknown}${near ? ` (did you mean --${near}?)` : ''}; usage: ${spec.usage}` };
  }
  if (parsed.positionals.length < spec.args) return { ok: false, error: `${name}: missing argument; usage: ${spec.usage}` };
  return { ok: true, command: { name, args: parsed.positionals, flags: parsed.flags } };
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
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
