/**
 * `cairn admin`: the operator's console, a terminal UI over the same Admin
 * calls as `cairn ctl`. This module checks the flags and the terminal; all
 * drawing lives in cli/ui/ (reached through ui/ui.js, never Ink directly).
 */
import { flagString, type FlagValue } from './flags.js';
import type { Io } from './ctl.js';
import { CliError, EXIT } from './exit.js';
import { clientTlsFrom } from './tls.js';
import { historyFile } from './ui/history.js';

export async function runAdmin(flags: Record<string, FlagValue>, io: Io): Promise<number> {
  if (!process.stdin.isTTY || !process.stdout.isTTY) {
    throw new CliError(
      'cairn admin needs a terminal (stdin and stdout must be a TTY)',
      EXIT.BAD_ARGS,
      'for scripts use "cairn ctl <command> --json", e.g. "cairn ctl servers --json" or "cairn ctl rebalance --yes --json" (cairn ctl help lists them)',
    );
  }
  const master = flagString(flags, 'master') ?? io.env.CAIRN_MASTER ?? '127.0.0.1:7000';
  const user = flagString(flags, 'user') ?? io.env.CAIRN_USER;
  if (!user) throw new CliError('no user', EXIT.AUTH, 'pass --user or set CAIRN_USER (the password is asked for when not given)');
  const timeout = flagString(flags, 'timeout');
  if (timeout !== undefined && !/^[1-9]\d*$/.test(timeout)) throw new CliError(`--timeout: expected a number of milliseconds >= 1, got "${timeout}"`, EXIT.BAD_ARGS);
  const tls = clientTlsFrom(flags, io.env);
  // Ink and React load only now, past the checks.
  // Ink draws only the last frame when it believes it runs in CI (CI=true), read once when Ink
  // is first imported. We have just checked for a real terminal, so this session is interactive.
  for (const name of ['CI', 'CONTINUOUS_INTEGRATION']) if (name in process.env) process.env[name] = 'false';
  const { runAdminUi } = await import('./ui/ui.js');
  return runAdminUi({
    master,
    user,
    tls,
    password: flagString(flags, 'password') ?? io.env.CAIRN_PASSWORD,
    timeoutMs: timeout === undefined ? undefined : Number(timeout),
    historyFile: historyFile(io.env),
  });
}
