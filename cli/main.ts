/**
 * The `cairn` command. Subcommands: master, shard, dev, ctl, admin, hash-password.
 * Expected errors print one line (and a hint) to stderr and exit with a named
 * code; a stack trace appears only with --verbose.
 */
import { CommanderError } from 'commander';
import { buildProgram } from './commands.js';
import { runCtl, type Io } from './ctl.js';
import { CliError, EXIT } from './exit.js';

/** commander's own exits: help asked for is 0; everything else it refuses is a bad command line. */
function commanderExit(e: CommanderError): number {
  if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return EXIT.OK;
  // `cairn help master` is help asked for (0); `cairn ctl` with no command is help shown for a mistake (1 → 2).
  if (e.code === 'commander.help' && e.exitCode === 0) return EXIT.OK;
  return EXIT.BAD_ARGS;
}

export async function main(argv: string[], io: Io = defaultIo()): Promise<number> {
  // Before parsing, so that a parse error can show its stack too.
  const verbose = argv.includes('--verbose') || argv.includes('-v');
  let code: number = EXIT.OK;
  const program = buildProgram(
    io,
    {
      master: async (flags) => (await import('./servers.js')).runMaster(flags),
      shard: async (flags) => (await import('./servers.js')).runShard(flags),
      rebuild: async (flags) => (await import('./rebuild.js')).runRebuild(flags, io),
      migrateToEtcd: async (flags) => (await import('./migrate.js')).runMigrateToEtcd(flags, io),
      dev: async (flags) => (await import('./dev.js')).runDev(flags, io),
      ctl: (flags, args) => runCtl(args, flags, io),
      admin: async (flags) => (await import('./admin.js')).runAdmin(flags, io),
      health: async (flags) => (await import('./health.js')).runHealth(flags, io),
      hashPassword: async () => (await import('./hash-password.js')).runHashPassword({ stdin: process.stdin, stdout: process.stdout, stderr: process.stderr }),
    },
    (c) => (code = c),
  );
  try {
    if (argv.length === 0) {
      program.outputHelp({ error: true });
      return EXIT.BAD_ARGS;
    }
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (err) {
    if (err instanceof CommanderError) return commanderExit(err);
    return reportError(err, io, verbose);
  }
}

function reportError(err: unknown, io: Io, verbose: boolean): number {
  const e = err as Error & { exitCode?: number; hint?: string };
  if (err instanceof CliError) {
    io.err(`error: ${e.message}`);
    if (e.hint) io.err(`hint: ${e.hint}`);
  } else if (e?.name === 'ConfigError') {
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
  // A reader that stops early (`cairn ctl scan | head -3`) is not an error: stop writing and exit quietly.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(EXIT.OK);
    throw err;
  });
  return {
    out: (l) => process.stdout.write(l + '\n'),
    err: (l) => process.stderr.write(l + '\n'),
    env: process.env,
  };
}
