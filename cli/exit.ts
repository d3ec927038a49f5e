/**
 * Expected CLI failures: one line, a hint, and a named exit code (as etcd's
 * cobrautl does). Anything else is a bug and prints a stack with --verbose.
 */
export const EXIT = {
  OK: 0,
  ERROR: 1,
  BAD_ARGS: 2,
  UNAVAILABLE: 3,
  AUTH: 4,
  VERIFY_FAILED: 5,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode = EXIT.ERROR,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}
