/**
 * What each `cairn ctl` subcommand takes: its arguments and options, in
 * commander's syntax. The manager commands among them are also the commands
 * of the console's prompt (`cairn admin`), which parses a typed line with
 * these same declarations (cli/ui/commands.ts), so a flag either refuses is
 * refused by both.
 */
import { Option, type Command } from 'commander';

export interface CtlSpec {
  name: string;
  /** Positional arguments, as commander declares them: `<server>`, `[prefix]`. */
  args?: string;
  doc: string;
  options?: Array<[string, string]>;
  /** Also a command of the console's prompt. */
  console?: boolean;
  /** What the first argument completes to on the console's prompt. */
  completes?: 'server';
}

/** ctl's alone: the console asks instead. */
export const YES: [string, string] = ['-y, --yes', 'do not ask for confirmation (needed without a terminal)'];
const MAX_MBPS: [string, string] = ['--max-mbps <x>', "MB/s per move (default: the master's moveMaxMbps)"];
const LOADGEN: Array<[string, string]> = [
  ['--rows <n>', 'number of rows (required)'],
  ['--value-size <bytes>', 'bytes per value (default: 100)'],
  ['--seed <s>', 'seed of the deterministic rows (default: 0)'],
  ['--concurrency <c>', 'batches in flight (default: 8)'],
];

export const CTL: CtlSpec[] = [
  { name: 'servers', doc: 'shards with address, status, size, rows, ranges, share and load', console: true },
  { name: 'ranges', doc: "the map: each range, its owner, rows and bytes, and every shard's share", console: true },
  { name: 'plan', doc: 'dry run: the moves a rebalance (or drain) would make, with bytes', options: [['--drain <id>', 'plan draining this shard instead']], console: true },
  { name: 'rebalance', doc: 'balance bytes across shards, online: plan, confirm, then progress', options: [YES, MAX_MBPS], console: true },
  { name: 'dropserver', args: '<id|host:port>', doc: 'drain every range of a shard to the others', options: [YES, MAX_MBPS], console: true, completes: 'server' },
  { name: 'remserver', args: '<id|host:port>', doc: 'remove a shard that owns no range; its process exits', options: [YES], console: true, completes: 'server' },
  { name: 'addserver', args: '<host:port>', doc: 'approve a shard address (clusters with requireApproval)', console: true },
  { name: 'sync', doc: 'push the current map to every shard', console: true },
  { name: 'moves', doc: 'moves in flight (or every journaled move)', options: [['--all', 'every journaled move']], console: true },
  { name: 'recover', args: '<move-id>', doc: "show a move's journal and drive it to committed or aborted", console: true },
  { name: 'reload', doc: 'have the master read its client list again (as SIGHUP does)' },
  { name: 'factor', args: '[n]', doc: 'show the replication factor, or set it to n (new copies are made, or extra ones dropped, by themselves)' },
  { name: 'put', args: '<row> <column> <value>', doc: 'write one cell', options: [['--sync', 'wait until the write is on disk']] },
  { name: 'get', args: '<row> [columns...]', doc: 'read the newest cells of a row (exit 1 when it has none)' },
  { name: 'scan', args: '[prefix]', doc: 'list rows by key prefix (storage order)', options: [['--limit <n>', 'at most this many rows (default: 100)']] },
  { name: 'delete', args: '<row>', doc: 'delete a row' },
  { name: 'load', doc: 'write deterministic rows', options: LOADGEN },
  { name: 'verify', doc: 'read them back; exit 5 if any is missing or wrong', options: LOADGEN },
];

/** The options of `spec` where it runs: on the console's prompt, all but --yes. */
export const optionsOf = (spec: CtlSpec, where: 'ctl' | 'console'): Array<[string, string]> => (spec.options ?? []).filter((o) => where === 'ctl' || o !== YES);

/** Declares `spec`'s options on `cmd` (created with its name and arguments). */
export function declareOptions(cmd: Command, spec: CtlSpec, where: 'ctl' | 'console'): Command {
  for (const [flags, doc] of optionsOf(spec, where)) cmd.addOption(new Option(flags, doc));
  return cmd;
}
