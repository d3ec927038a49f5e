/**
 * The `cairn` command tree, on commander. Each subcommand declares its
 * options; anything else on its command line is an error (exit 2) naming the
 * flag, with commander's "did you mean" suggestion. `--help` anywhere prints
 * help on stdout and runs nothing.
 *
 * The server flags are not listed here: `cairn master` and `cairn shard` take
 * one flag per config key, derived from the config schema in
 * services/common/config-schema.ts (with the env variable and the default in help).
 *
 * Actions receive the parsed flags as the rest of cli/ always took them: a
 * record keyed by the long flag name in kebab-case (`--no-x` sets `x` to
 * false), merged from the command and its parents, so that the global ctl
 * flags may come before or after the subcommand.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { configKeyInfo, type ServerRole } from '../services/common/config.js';
import type { FlagValue } from './flags.js';
import type { Io } from './ctl.js';
import { CTL, declareOptions } from './ctl-commands.js';

export type Flags = Record<string, FlagValue>;
/** What a subcommand runs: its flags (kebab-case) and its positional arguments. */
export type Run = (flags: Flags, args: string[]) => Promise<number>;

export interface Handlers {
  master: Run;
  shard: Run;
  rebuild: Run;
  migrateToEtcd: Run;
  dev: Run;
  ctl: Run;
  admin: Run;
  health: Run;
  hashPassword: Run;
}

function parseSwitch(v: string): boolean {
  const s = v.toLowerCase();
  if (['true', '1', 'yes'].includes(s)) return true;
  if (['false', '0', 'no'].includes(s)) return false;
  throw new InvalidArgumentError('expected true or false');
}

const collect = (v: string, prev: unknown): string[] => [...(Array.isArray(prev) ? prev : []), v];

/** The parsed flags of `cmd` and its parents, the innermost winning; defaults are not flags. */
export function flagsOf(cmd: Command): Flags {
  const chain: Command[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) chain.unshift(c);
  const flags: Flags = {};
  for (const c of chain) {
    for (const o of c.options) {
      const attr = o.attributeName();
      const source = c.getOptionValueSource(attr);
      if (source === undefined || source === 'default' || source === 'implied') continue;
      const v = c.getOptionValue(attr) as unknown;
      if (v === undefined) continue;
      const name = o.long!.slice(2);
      const key = o.negate ? name.slice(3) : name;
      flags[key] = typeof v === 'number' ? String(v) : (v as FlagValue);
    }
  }
  return flags;
}

function verboseOption(cmd: Command): Command {
  return cmd.addOption(new Option('-v, --verbose', 'print stack traces of unexpected errors'));
}

/** A switch that also takes `--x=true|false` and `--no-x`. */
function switchOptions(cmd: Command, flag: string, doc: string): void {
  cmd.addOption(new Option(`--${flag} [bool]`, doc).argParser(parseSwitch));
  cmd.addOption(new Option(`--no-${flag}`, `turn ${flag} off`).hideHelp());
}

/** One flag per config key of `role`, each with its env variable and default in help. */
export function addConfigOptions(cmd: Command, role: ServerRole): Command {
  cmd.addOption(new Option('--config <file>', 'YAML config file, keys in camelCase (env CAIRN_CONFIG)'));
  for (const k of configKeyInfo(role)) {
    const tail = ` [env ${k.env}; default: ${k.defaultText ?? (k.key === 'advertise' ? 'listen' : 'unset')}]`;
    if (k.isSwitch) switchOptions(cmd, k.flag, k.doc + tail);
    else if (k.repeatable) cmd.addOption(new Option(`--${k.flag} <${k.arg}>`, k.doc + tail).argParser(collect));
    else cmd.addOption(new Option(`--${k.flag} <${k.arg}>`, k.doc + tail));
  }
  return cmd;
}

/** --tls-ca, --tls-cert, --tls-key: how a client (ctl, admin, health) dials a cluster with TLS. */
function clientTlsOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--tls-ca <file>', 'trust this CA (default: CAIRN_TLS_CA)'))
    .addOption(new Option('--tls-cert <file>', 'client certificate (default: CAIRN_TLS_CERT)'))
    .addOption(new Option('--tls-key <file>', 'key of --tls-cert (default: CAIRN_TLS_KEY)'));
}

/** --master, --user, --password: who a client of the master (ctl, admin) logs in as, and where. */
function loginOptions(cmd: Command, password: string): Command {
  return cmd
    .addOption(new Option('--master <host:port>', 'the master (default: CAIRN_MASTER or 127.0.0.1:7000)'))
    .addOption(new Option('--user <name>', 'user (default: CAIRN_USER)'))
    .addOption(new Option('--password <password>', password));
}

/** --master, --user, … : on `ctl` and on each of its subcommands, so they may come before or after it. */
function addCtlGlobals(cmd: Command): Command {
  return clientTlsOptions(
    loginOptions(verboseOption(cmd), 'password (default: CAIRN_PASSWORD)')
      .addOption(new Option('--json', 'results as JSON on stdout, for scripts'))
      .addOption(new Option('--timeout <ms>', 'per-call deadline in milliseconds (default: 10000)')),
  );
}

const CTL_NOTES = `
Global flags (--master, --user, --password, --json, --timeout, --tls-*) may come
before or after the command. Exit codes: 0 ok, 1 error, 2 bad arguments,
3 unreachable, 4 authentication or permission, 5 verify found bad rows.`;

/**
 * The whole tree. `io` receives help (stdout) and commander's errors (stderr);
 * the caller sets exitOverride semantics (see main.ts).
 */
export function buildProgram(io: Io, run: Handlers, setCode: (code: number) => void): Command {
  const program = new Command('cairn')
    .description('a sharded, persistent row store')
    .usage('<command> [flags]')
    .exitOverride()
    .showSuggestionAfterError(true)
    .showHelpAfterError('(run with --help for the flags this command takes)')
    .configureOutput({
      writeOut: (s) => io.out(s.replace(/\n$/, '')),
      writeErr: (s) => io.err(s.replace(/\n$/, '')),
      // As cairn said before commander: unknown command "x", in double quotes.
      outputError: (s, write) => write(s.replace(/^error: unknown command '([^']*)'/, 'error: unknown command "$1"')),
    });
  verboseOption(program);
  const act = (fn: Run) =>
    async function (this: Command) {
      setCode(await fn(flagsOf(this), this.args));
    };

  const master = addConfigOptions(program.command('master').description('run the master (map, membership, Admin API)'), 'master');
  verboseOptionIfMissing(master);
  master.action(act(run.master));
  const rebuild = addConfigOptions(
    master
      .command('rebuild')
      .description("rebuild a lost master's state from its shards, into its empty dataDir, then exit")
      .addOption(new Option('--from <addresses>', 'the shards to read: host:port[,host:port...] (required)'))
      .addOption(new Option('--allow-missing', 'rebuild even when a shard the newest map names does not answer')),
    'master',
  );
  rebuild.addHelpText('after', `
Each shard keeps its cluster id and the last map it was given. rebuild writes
the newest map, the cluster id and the shard list into the master's dataDir
(from --config or --data-dir), which must be empty, then exits; start the
master on it with "cairn master --config FILE". Every shard the newest map
names must answer, unless --allow-missing.`);
  rebuild.action(act(run.rebuild));
  const migrate = addConfigOptions(
    master.command('migrate-to-etcd').description("move an embedded master's state (its dataDir) into etcd (metaStore: etcd, etcdEndpoints, etcdPrefix), then exit"),
    'master',
  );
  migrate.addHelpText('after', `
Stop the master first (shards may keep running). Give the config the masters
will run with: metaStore etcd, etcdEndpoints, etcdPrefix, and dataDir still
naming the embedded state. The map, shard registry, cluster id, removed ids,
move journal, client list with its revocations and approvals are copied under
etcdPrefix, which must hold no state and have no leader; the LevelDB is left
as it was. Then start the masters with that config and run "cairn ctl verify".`);
  migrate.action(act(run.migrateToEtcd));

  addConfigOptions(program.command('shard').description('run a shard (stores rows in LevelDB)'), 'shard').action(act(run.shard));

  verboseOption(
    program
      .command('dev')
      .description('run a local cluster: a master and 3 shards, data under ./data; Ctrl-C stops it')
      .addOption(new Option('--data-dir <dir>', 'where the cluster keeps its data and logs (default: ./data)'))
      .addOption(new Option('--base-port <port>', 'the master listens here, shard i on base + i (default: 7000)'))
      .addOption(new Option('--shards <n>', 'number of shards, 1 to 64 (default: 3)'))
      .addOption(new Option('--metrics-base-port <port>', 'Prometheus /metrics of the master here, shard i on + i (default: base port + 100)'))
      .addOption(new Option('--no-metrics', 'no metrics endpoints')),
  ).action(act(run.dev));

  const ctl = addCtlGlobals(program.command('ctl').description('scriptable cluster and data commands').usage('<command> [args] [flags]'));
  ctl.addHelpText('after', CTL_NOTES);
  for (const spec of CTL) {
    const sub = addCtlGlobals(ctl.command(spec.args ? `${spec.name} ${spec.args}` : spec.name).description(spec.doc));
    declareOptions(sub, spec, 'ctl');
    sub.action(
      act((flags, args) => run.ctl(flags, [spec.name, ...args])),
    );
  }

  verboseOption(
    clientTlsOptions(
      program
        .command('health')
        .description("ask a process's gRPC health service; exit 0 only when SERVING (1: another answer, 3: no answer)")
        .addOption(new Option('--addr <host:port>', 'the process to ask (default: CAIRN_HEALTH_ADDR)'))
        .addOption(new Option('--master <list>', 'ask every master (a:7000,b:7000; default without --addr: CAIRN_MASTER) whether one leads, and why not'))
        .addOption(new Option('--service <name>', 'ask about one service (cairn.v1.ShardService, …) instead of the whole process'))
        .addOption(new Option('--timeout <ms>', 'deadline in milliseconds (default: 5000)'))
        .addOption(new Option('--json', 'the answer as JSON')),
    ),
  )
    .addHelpText('after', `
With --master, one line per master (leader, standby or unreachable, and why),
then SERVING when one master leads and can change the map.

Exit codes: 0 SERVING; 1 another answer (NOT_SERVING while it drains, or before
a shard has registered; with --master: no master leads); 2 bad arguments;
3 no answer (refused, timed out, or a TLS mismatch).`)
    .action(act(run.health));

  verboseOption(
    clientTlsOptions(
      loginOptions(
        program.command('admin').description("the operator's console: live dashboard, plans, moves with progress bars (needs a terminal)"),
        'password (default: CAIRN_PASSWORD; asked for when missing)',
      ).addOption(new Option('--timeout <ms>', 'per-call deadline in milliseconds')),
    ),
  )
    .addHelpText('after', `
A live dashboard of the shards, the map and the moves in flight, and a prompt
(Manager(N servers)>) for the manager commands: servers, ranges, plan,
rebalance, dropserver, remserver, addserver, sync, moves, recover, help, exit.
Type help inside for details. History is kept in CAIRN_HISTORY_FILE (default
~/.cairn_history). Needs a terminal; for scripts use "cairn ctl <command> --json".`)
    .action(act(run.admin));

  program
    .command('hash-password')
    .description('print a salted hash of a password read from stdin (or asked for twice on a terminal), for config "clients"')
    .action(act(run.hashPassword));

  return program;
}

/** `verbose` is a config key of the servers; elsewhere it is added by verboseOption. */
function verboseOptionIfMissing(cmd: Command): void {
  if (!cmd.options.some((o) => o.long === '--verbose')) verboseOption(cmd);
}
