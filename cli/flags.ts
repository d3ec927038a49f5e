/**
 * Parsed flags as the CLI's modules take them: keyed by the long flag name in
 * kebab-case (`--expect-shards` → `flags['expect-shards']`), as commander's
 * parse leaves them (cli/commands.ts `flagsOf`). The hand-written parser that
 * lived here is gone: every command line, ctl's and the console's, parses
 * with commander.
 */

export type FlagValue = string | boolean | string[];

/** A flag's value as one string (last of a repeated flag), or undefined when absent or a switch. */
export function flagString(flags: Record<string, FlagValue>, name: string): string | undefined {
  const v = flags[name];
  if (Array.isArray(v)) return v[v.length - 1];
  return typeof v === 'string' ? v : undefined;
}
