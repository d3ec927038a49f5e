/**
 * The kinds of value a config key holds, as zod schemas. Each takes the value
 * as a source gives it (text from an env variable or a flag, or a YAML value)
 * and yields the typed value.
 *
 * Messages say what was expected. Where one says only that ("expected a
 * positive integer"), the loader (config.ts) adds what it got, from the value
 * as given (`got "12abc"`), since a schema sees the value after its text was
 * read; messages that need more ("got port 0 in …") carry their own.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const satisfies readonly LogLevel[];

/** How a message names a value it refuses: `got "abc"`, `got 7`, `got a list`, … */
export function got(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (typeof v === 'string') return `got ${JSON.stringify(v)}`;
  if (typeof v === 'boolean' && v === true) return 'got a bare switch with no value';
  if (typeof v === 'number' || typeof v === 'boolean') return `got ${String(v)}`;
  if (Array.isArray(v)) return 'got a list';
  return 'got a mapping';
}

/** Text that matches `pattern` read as a number; anything else left as it is, for the number schema to refuse. */
const numberText = (pattern: RegExp) => (v: unknown): unknown => (typeof v === 'string' && pattern.test(v) ? Number(v) : v);
const DIGITS = /^\s*\d+\s*$/;
const DECIMAL = /^\s*(\d+(\.\d*)?|\.\d+)\s*$/;

const POSINT = 'expected a positive integer';
export const posInt = z.preprocess(numberText(DIGITS), z.number(POSINT).int(POSINT).positive(POSINT));

const NONNEG = 'expected a number ≥ 0';
export const nonnegNumber = z.preprocess(numberText(DECIMAL), z.number(NONNEG).nonnegative(NONNEG));

const FRACTION = 'expected a fraction above 0 and at most 1 (such as 0.9 for 90%)';
/** A fraction in (0, 1], such as 0.9. */
export const fraction = z.preprocess(numberText(DECIMAL), z.number(FRACTION).gt(0, FRACTION).lte(1, FRACTION));

const BOOL_TEXT = new Map([['true', true], ['1', true], ['yes', true], ['false', false], ['0', false], ['no', false]]);
/** true/false, 1/0, yes/no (as text or YAML). */
export const bool = z.preprocess(
  (v) => (v === 1 || v === 0 ? v === 1 : typeof v === 'string' ? (BOOL_TEXT.get(v.trim().toLowerCase()) ?? v) : v),
  z.boolean('expected true or false (or 1/0, yes/no)'),
);

export const logLevel = z.preprocess(
  (v) => (typeof v === 'string' ? v.trim().toLowerCase() : v),
  z.enum(LOG_LEVELS, `expected one of ${LOG_LEVELS.join(', ')}`),
);

/** What is wrong with `s` as host:port (IPv6 hosts in brackets: `[::1]:7000`), or undefined. */
function hostPortProblem(s: string, allowZero: boolean): string | undefined {
  const want = `expected host:port${allowZero ? '' : ' with a port from 1 to 65535'}`;
  const colon = s.lastIndexOf(':');
  if (colon === -1) return `${want}, ${got(s)}`;
  const hostPart = s.slice(0, colon);
  const portPart = s.slice(colon + 1);
  if (hostPart === '' || hostPart === '[]') return `${want}, got an empty host in ${JSON.stringify(s)}`;
  if (hostPart.startsWith('[')) {
    if (!/^\[[0-9A-Za-z:.%]+\]$/.test(hostPart) || !hostPart.includes(':')) return `${want}, got a malformed IPv6 host in ${JSON.stringify(s)}`;
  } else if (!/^[^\s:[\]/]+$/.test(hostPart)) {
    return `${want} (IPv6 hosts go in brackets: [::1]:7000), got a malformed host in ${JSON.stringify(s)}`;
  }
  if (!/^\d{1,5}$/.test(portPart)) return `${want}, got port ${JSON.stringify(portPart)} in ${JSON.stringify(s)}`;
  const port = Number(portPart);
  if (port > 65535 || (!allowZero && port === 0)) return `${want}, got port ${port} in ${JSON.stringify(s)}`;
  return undefined;
}

/** Splits and checks `host:port` (IPv6 hosts in brackets: `[::1]:7000`). Throws an Error describing the problem. */
export function parseHostPort(s: string, opts: { allowPortZero?: boolean } = {}): { host: string; port: number } {
  const problem = hostPortProblem(s, opts.allowPortZero ?? true);
  if (problem) throw new Error(problem);
  const colon = s.lastIndexOf(':');
  const host = s.slice(0, colon);
  return { host: host.startsWith('[') ? host.slice(1, -1) : host, port: Number(s.slice(colon + 1)) };
}

const hostPortOf = (allowZero: boolean) =>
  z.string('expected host:port').superRefine((s, ctx) => {
    const problem = hostPortProblem(s, allowZero);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });
/** host:port to bind: port 0 picks a free port. */
export const hostPort = hostPortOf(true);
/** host:port to dial: a real port. */
export const dialAddress = hostPortOf(false);

/** A path, made absolute against `cwd`. */
export const path = (cwd: string) =>
  z
    .string('expected a path')
    .refine((s) => s.trim() !== '', 'expected a path, got ""')
    .transform((s) => (isAbsolute(s) ? s : resolve(cwd, s)));

/** A path to a file that exists (a PEM file). */
export const existingFile = (cwd: string) =>
  path(cwd).superRefine((p, ctx) => {
    if (!existsSync(p)) ctx.addIssue({ code: 'custom', message: `file ${p} does not exist` });
    else if (!statSync(p).isFile()) ctx.addIssue({ code: 'custom', message: `${p} is not a file` });
  });

const MIN_SECRET = 16;
/** A shared secret; its messages never echo it. */
export const secret = z.string('expected a string').min(MIN_SECRET, {
  error: (iss) => `expected at least ${MIN_SECRET} characters, got ${typeof iss.input === 'string' ? iss.input.length : 0}`,
});

/** A file holding a secret: yields its path and its text, trimmed. */
export const secretFile = (cwd: string) =>
  path(cwd).transform((p, ctx) => {
    let text: string;
    try {
      text = readFileSync(p, 'utf8').trim();
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: `cannot read ${p}: ${(e as Error).message}` });
      return z.NEVER;
    }
    if (text.length < MIN_SECRET) {
      ctx.addIssue({ code: 'custom', message: `${p}: expected a credential of at least ${MIN_SECRET} characters, got ${text.length}` });
      return z.NEVER;
    }
    return { path: p, secret: text };
  });

/** Text items separated by commas (env, flags, a YAML string), or a YAML list as it is. */
const listItems = (v: unknown): unknown =>
  typeof v === 'string'
    ? v
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== '')
    : v;

/** One or more host:port to dial, `a:7000,b:7000` or a YAML list: every master of a cluster, the leader found among them. */
export const dialAddressList = z.preprocess(listItems, z.array(dialAddress, 'expected host:port, or several separated by commas (a:7000,b:7000)').min(1, 'expected at least one host:port'));

const URL_EXPECTED = 'expected an http:// or https:// URL such as http://127.0.0.1:2379';
/** etcd client URLs, `http://a:2379,http://b:2379` or a YAML list. */
export const urlList = z.preprocess(
  listItems,
  z.array(
    z.string(URL_EXPECTED).superRefine((s, ctx) => {
      let u: URL | undefined;
      try {
        u = new URL(s);
      } catch {
        /* refused below */
      }
      if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:') || !u.port) ctx.addIssue({ code: 'custom', message: `${URL_EXPECTED} (with its port), got ${JSON.stringify(s)}` });
    }),
    `${URL_EXPECTED}, or several separated by commas`,
  ),
);

/** A key prefix in etcd: starts with '/', no trailing '/' (keys are `<prefix>/map`, …). */
export const etcdPrefix = z
  .string('expected a key prefix such as /cairn')
  .refine((s) => /^\/[^\s]*[^/\s]$/.test(s), { error: (iss) => `expected a key prefix that starts with / and does not end with one, such as /cairn, ${got(iss.input)}` });
