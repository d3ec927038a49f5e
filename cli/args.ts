/**
 * Command-line argument parsing for `cairn`. Pure: no I/O, no process globals.
 *
 * - Flags may come before or after subcommands and positionals.
 * - `--flag value` and `--flag=value`; anything not declared boolean takes a value.
 * - Boolean flags: `--json`, `--json=true|false`, and `--no-json` (sets `json` to false).
 * - `--` ends flags: everything after it is positional.
 * - A value may start with `-` (negative numbers, `--offset -5`), unless it is
 *   itself a flag: a token starting with `--`, or a declared short flag.
 * - Repeatable flags collect a `string[]`; any other flag given twice keeps the last.
 * - Short flags map to long names (`short: { y: 'yes' }`); booleans combine (`-yv`).
 * - Keys stay kebab-case as typed (`--expect-shards` → `flags['expect-shards']`).
 */

export type FlagValue = string | boolean | string[];

export interface ArgSpec {
  /** Long names of flags that take no value. */
  booleans?: string[];
  /** Long names of value flags that may be given several times. */
  repeatable?: string[];
  /** Single-letter aliases: `{ y: 'yes', n: 'count' }`. */
  short?: Record<string, string>;
}

export interface ParsedArgs {
  positionals: string[];
  flags: Record<string, FlagValue>;
}

/** Thrown for a command line that cannot be parsed; the message names the flag. */
export class ArgsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ArgsError';
  }
}

const NEGATIVE_NUMBER = /^-\d*\.?\d+(e[+-]?\d+)?$/i;

function parseBool(name: string, v: string): boolean {
  const s = v.toLowerCase();
  if (['true', '1', 'yes'].includes(s)) return true;
  if (['false', '0', 'no'].includes(s)) return false;
  throw new ArgsError(`--${name} is a switch: expected true or false, got ${JSON.stringify(v)}`);
}

export function parseArgs(argv: readonly string[], spec: ArgSpec = {}): ParsedArgs {
  const booleans = new Set(spec.booleans ?? []);
  const repeatable = new Set(spec.repeatable ?? []);
  const short = spec.short ?? {};
  const positionals: string[] = [];
  const flags: Record<string, FlagValue> = Object.create(null) as Record<string, FlagValue>;

  const setValue = (name: string, value: string): void => {
    if (repeatable.has(name)) {
      const prev = flags[name];
      flags[name] = Array.isArray(prev) ? [...prev, value] : [value];
    } else {
      flags[name] = value;
    }
  };

  /** Is `tok` something that cannot be the value of a preceding flag? */
  const isFlagToken = (tok: string): boolean => {
    if (tok.startsWith('--')) return true;
    if (tok.length >= 2 && tok.startsWith('-') && !NEGATIVE_NUMBER.test(tok)) return tok[1]! in short;
    return false;
  };

  let i = 0;
  /** Takes the value of a value flag from the next token, or throws naming the flag. */
  const takeValue = (display: string): string => {
    const next = argv[i + 1];
    if (next === undefined || isFlagToken(next)) throw new ArgsError(`${display} needs a value`);
    i++;
    return next;
  };

  for (; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (tok.startsWith('--')) {
      const eq = tok.indexOf('=');
      const name = eq === -1 ? tok.slice(2) : tok.slice(2, eq);
      const inline = eq === -1 ? undefined : tok.slice(eq + 1);
      if (name === '') throw new ArgsError(`malformed flag ${JSON.stringify(tok)}`);
      if (booleans.has(name)) {
        flags[name] = inline === undefined ? true : parseBool(name, inline);
      } else if (name.startsWith('no-') && name.length > 3) {
        // `--no-x` negates `x` (declared or not, so an undeclared `--no-color`
        // never swallows the next argument), unless `no-x` is itself declared.
        if (inline !== undefined) throw new ArgsError(`--${name} takes no value`);
        flags[name.slice(3)] = false;
      } else if (inline !== undefined) {
        setValue(name, inline);
      } else {
        setValue(name, takeValue(`--${name}`));
      }
      continue;
    }
    if (tok.length >= 2 && tok.startsWith('-') && !NEGATIVE_NUMBER.test(tok)) {
      // One short flag (`-n 5`, `-n=5`) or a cluster of boolean ones (`-yv`).
      const eq = tok.indexOf('=');
      const letters = eq === -1 ? tok.slice(1) : tok.slice(1, eq);
      for (let k = 0; k < letters.length; k++) {
        const letter = letters[k]!;
        const name = short[letter];
        if (name === undefined) throw new ArgsError(`unknown flag -${letter}`);
        const last = k === letters.length - 1;
        if (booleans.has(name)) {
          flags[name] = last && eq !== -1 ? parseBool(name, tok.slice(eq + 1)) : true;
        } else if (!last) {
          throw new ArgsError(`-${letter} (--${name}) needs a value and must come last in ${tok}`);
        } else if (eq !== -1) {
          setValue(name, tok.slice(eq + 1));
        } else {
          setValue(name, takeValue(`-${letter} (--${name})`));
        }
      }
      continue;
    }
    positionals.push(tok);
  }
  return { positionals, flags: { ...flags } };
}

/** A flag's value as one string (last of a repeated flag), or undefined when absent or a switch. */
export function flagString(flags: Record<string, FlagValue>, name: string): string | undefined {
  const v = flags[name];
  if (Array.isArray(v)) return v[v.length - 1];
  return typeof v === 'string' ? v : undefined;
}
