/**
 * The `cairn` command. Subcommands: master, shard, dev, ctl, admin, hash-password.
 * Expected errors print one line (and a hint) to stderr and exit with a named
 * code; a stack trace appears only with --verbose.
 */
import { CONFIG_BOOLEAN_FLAGS, CONFIG_REPEATABLE_FLAGS } from '../services/common/config.js';
import { ArgsError, parseArgs } from './args.js';
import { CTL_USAGE, runCtl, type Io } from './ctl.js';
import { CliError, EXIT } from './exit.js';

export const USAGE = `cairn — a sharded, persistent row store

Usage: cairn <command> [flags]

Commands:
  master          run the master (map, membership, Admin API)
  master rebuild  rebuild a lost master's state from its shards (cairn master rebuild --help)
  shard           run a shard (stores rows in LevelDB)
  dev             run a local cluster: a master and 3 shards, data under ./data
  ctl <command>   scriptable cluster and data commands (cairn ctl help)
  health          ask a process's gRPC health service; exit 0 only when SERVING
  admin           the operator's console: live dashboard, plans, moves with progress bars
  hash-password   print a salted hash of a password read from stdin, for config "clients"

Server flags (also in a YAML --config file or CAIRN_* variables):
  --config FILE  --listen HOST:PORT  --advertise HOST:PORT  --data-dir DIR
  --master HOST:PORT  --expect-shards N  --server-credential-file FILE
  --metrics-listen HOST:PORT  --tls-cert FILE  --tls-key FILE  --tls-ca FILE  --shutdown-grace-ms MS
Global flags: --verbose  --help`;

const BOOLEANS = ['json', 'yes', 'help', 'sync', 'all', 'allow-missing', ...CONFIG_BOOLEAN_FLAGS];

export async function main(argv: string[], io: Io = defaultIo()): Promise<number> {
  let verbose = argv.includes('--verbose');
  try {
    const { positionals, flags } = parseArgs(argv, { booleans: BOOLEANS, repeatable: [...CONFIG_REPEATABLE_FLAGS], short: { h: 'help', v: 'verbose', y: 'yes' } });
    verbose = flags.verbose === true;
    const [cmd, ...rest] = positionals;
    switch (cmd) {
      case undefined:
      case 'help':
        io.out(USAGE);
        return cmd || flags.help ? EXIT.OK : EXIT.BAD_ARGS;
      case 'master':
      case 'shard': {
        if (cmd === 'master' && rest[0] === 'rebuild') return await (await import('./rebuild.js')).runRebuild(flags, io);
        if (flags.help) return io.out(USAGE), EXIT.OK;
        const servers = await import('./servers.js');
        // Awaited here, so that a server that cannot start (a refused data directory) is reported below, with its hint.
        return await (cmd === 'master' ? servers.runMaster(flags) : servers.runShard(flags));
      }
      case 'dev': {
        const { runDev } = await import('./dev.js');
        return runDev(flags, io);
      }
      case 'ctl':
        if (flags.help && rest.length === 0) return io.out(CTL_USAGE), EXIT.OK;
        return await runCtl(rest, flags, io);
      case 'admin':
        return await (await import('./admin.js')).runAdmin(flags, io);
      case 'health':
        return await (await import('./health.js')).runHealth(flags, io);
      case 'hash-password': {
        const { runHashPassword } = await import('./hash-password.js');
        return runHashPassword({ stdin: process.stdin, stdout: process.stdout, stderr: process.stderr });
      }
      default:
        if (flags.help) return io.out(USAGE), EXIT.OK;
        throw new CliError(`unknown command "${cmd}"`, EXIT.BAD_ARGS, 'run "cairn --help" for the list of commands');
    }
  } catch (err) {
    return reportError(err, io, verbose);
  }
}

function reportError(err: unknown, io: Io, verbose: boolean): number {
  const e = err as Error & { exitCode?: number; hint?: string };
  if (err instanceof CliError) {
    io.err(`error: ${e.message}`);
    if (e.hint) io.err(`hint: ${e.hint}`);
  } else if (err instanceof ArgsError || e?.name === 'ConfigError') {
    io.err(`error: ${e.message}`);
    if (verbose && e.stack) io.err(e.stack);
    return EXIT.BAD_ARGS;
  } else {
    io.err(`error: ${e?.message ?? String(err)}`);
    // Errors that know what to do about them (a refused data directory) say so; the rest point at --verbose.
    if (typeof e?.hint === 'string') io.err(`hint: ${e.hint}`);
    else if (!verbose) io.err('hint: run with --verbose for details');
  }
  if (verbose && e?.stack) io.err(e.stack);
  return e.exitCode ?? EXIT.ERROR;
}

function defaultIo(): Io {
  return {
    out: (l) => process.stdout.write(l + '\n'),
    err: (l) => process.stderr.write(l + '\n'),
    env: process.env,
  };
}
