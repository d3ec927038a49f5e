/**
 * Server configuration for `cairn master` and `cairn shard`.
 *
 * Sources, later ones winning key by key:
 *   1. a YAML file (`--config PATH`, else `CAIRN_CONFIG`), keys in camelCase;
 *   2. environment variables `CAIRN_<UPPER_SNAKE>` (an empty variable counts as unset);
 *   3. flags `--kebab-case` (cli/commands.ts declares one per key from the table below, via configKeyInfo).
 * Every key is settable all three ways: `expectShards` ⇔ `CAIRN_EXPECT_SHARDS` ⇔ `--expect-shards`.
 *
 * Everything is validated at start-up. Each problem names the key, where the
 * value came from and what was expected, e.g.
 *   config: expectShards (from env CAIRN_EXPECT_SHARDS): expected a positive integer, got "abc"
 * All problems found are reported together in one ConfigError.
 *
 * Relative paths (in any source) resolve against `cwd`.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import YAML from 'yaml';
import { CLIENT_ROLES, isPasswordHash, type Role } from './auth.js';
import { CairnError } from './errors.js';

// ---------------------------------------------------------------------------
// Public types

export type ServerRole = 'master' | 'shard';
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];
export type ClientRole = Exclude<Role, 'server'>;

export interface ClientCredential {
  user: string;
  /** A hash from `hashPassword` / `cairn hash-password`; never a plaintext password. */
  passwordHash: string;
  role: ClientRole;
}

/** Where a value came from: `default`, `file /abs/path.yaml`, `env CAIRN_X` or `flag --x`. */
export type ConfigSource = string;

export interface CommonConfig {
  /** Which process this configures. */
  kind: ServerRole;
  /** The YAML file read, absolute, if any. */
  configFile?: string;
  /** host:port to bind; port 0 picks a free port. */
  listen: string;
  /** host:port others use to reach this process (defaults to `listen`). */
  advertise: string;
  /** Absolute path of the data directory. */
  dataDir: string;
  /** The cluster's server credential (read from `serverCredentialFile` when that was given). */
  serverCredential: string;
  /** Absolute path the credential was read from, if it came from a file. */
  serverCredentialFile?: string;
  logLevel: LogLevel;
  verbose: boolean;
  /** host:port for the Prometheus /metrics endpoint, if enabled. */
  metricsListen?: string;
  /** Absolute paths of PEM files; tlsCert and tlsKey are both set or both unset. */
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  maxKeyBytes: number;
  maxColumnBytes: number;
  maxValueBytes: number;
  maxCellsPerCall: number;
  maxMessageBytes: number;
  heartbeatIntervalMs: number;
  /** On SIGTERM: how long calls in flight may take to finish before they are cancelled. */
  shutdownGraceMs: number;
  /** Where each key's value came from (for the start-up log line). */
  sources: Record<string, ConfigSource>;
}

export interface MasterConfig extends CommonConfig {
  kind: 'master';
  expectShards: number;
  clients: ClientCredential[];
  tokenTtlSeconds: number;
  shardDownAfterMs: number;
  requireApproval: boolean;
  maxConcurrentMoves: number;
  /** MB/s per move; 0 means unthrottled. */
  moveMaxMbps: number;
  /** The planner never takes a shard's disk use past this fraction of its size (0 < x <= 1). */
  diskHighWater: number;
}

export interface ShardConfig extends CommonConfig {
  kind: 'shard';
  /** host:port of the master. */
  master: string;
  /**
   * The longest a source keeps a range fenced for a move before the
   * destination confirms the fenced tail; past it the source lifts the fence
   * and the move aborts (docs/design.md "Moving data", step 4).
   */
  maxFenceMs: number;
}

export interface LoadConfigOptions {
  /** Parsed kebab-case flags (cli/commands.ts refuses any that are not config keys; here they are ignored). */
  flags: Record<string, string | boolean | string[]>;
  /** Defaults to process.env. */
  env?: NodeJS.ProcessEnv;
  /** Base for relative paths; defaults to process.cwd(). */
  cwd?: string;
}

/** Every configuration problem found, one per line in `message` and one per entry in `issues`. */
export class ConfigError extends CairnError {
  readonly issues: readonly string[];
  constructor(issues: string[]) {
    super('INVALID_ARGUMENT', issues.join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

// ---------------------------------------------------------------------------
// Key table

type Kind = 'hostport' | 'hostportNonZero' | 'path' | 'secret' | 'logLevel' | 'bool' | 'posint' | 'nonnegNumber' | 'fraction' | 'clients';

interface KeyDef {
  kind: Kind;
  roles: readonly ServerRole[];
  default?: (role: ServerRole) => unknown;
}

const BOTH: readonly ServerRole[] = ['master', 'shard'];
const MASTER: readonly ServerRole[] = ['master'];
const SHARD: readonly ServerRole[] = ['shard'];

const KEYS = {
  listen: { kind: 'hostport', roles: BOTH, default: (r) => (r === 'master' ? '127.0.0.1:7000' : '127.0.0.1:7001') },
  advertise: { kind: 'hostportNonZero', roles: BOTH },
  dataDir: { kind: 'path', roles: BOTH, default: (r) => `./data/${r}` },
  serverCredential: { kind: 'secret', roles: BOTH },
  serverCredentialFile: { kind: 'path', roles: BOTH },
  logLevel: { kind: 'logLevel', roles: BOTH, default: () => 'info' },
  verbose: { kind: 'bool', roles: BOTH, default: () => false },
  metricsListen: { kind: 'hostport', roles: BOTH },
  tlsCert: { kind: 'path', roles: BOTH },
  tlsKey: { kind: 'path', roles: BOTH },
  tlsCa: { kind: 'path', roles: BOTH },
  maxKeyBytes: { kind: 'posint', roles: BOTH, default: () => 4096 },
  maxColumnBytes: { kind: 'posint', roles: BOTH, default: () => 1024 },
  maxValueBytes: { kind: 'posint', roles: BOTH, default: () => 1_048_576 },
  maxCellsPerCall: { kind: 'posint', roles: BOTH, default: () => 10_000 },
  maxMessageBytes: { kind: 'posint', roles: BOTH, default: () => 16_777_216 },
  heartbeatIntervalMs: { kind: 'posint', roles: BOTH, default: () => 1000 },
  shutdownGraceMs: { kind: 'posint', roles: BOTH, default: () => 5000 },
  expectShards: { kind: 'posint', roles: MASTER, default: () => 1 },
  clients: { kind: 'clients', roles: MASTER, default: () => [] },
  tokenTtlSeconds: { kind: 'posint', roles: MASTER, default: () => 900 },
  shardDownAfterMs: { kind: 'posint', roles: MASTER, default: () => 5000 },
  requireApproval: { kind: 'bool', roles: MASTER, default: () => false },
  maxConcurrentMoves: { kind: 'posint', roles: MASTER, default: () => 2 },
  moveMaxMbps: { kind: 'nonnegNumber', roles: MASTER, default: () => 0 },
  diskHighWater: { kind: 'fraction', roles: MASTER, default: () => 0.9 },
  master: { kind: 'hostportNonZero', roles: SHARD, default: () => '127.0.0.1:7000' },
  maxFenceMs: { kind: 'posint', roles: SHARD, default: () => 1000 },
} satisfies Record<string, KeyDef>;

type Key = keyof typeof KEYS;
const ALL_KEYS = Object.keys(KEYS) as Key[];
const keyDef = (k: Key): KeyDef => KEYS[k];

/** The config keys one process accepts, in table order. */
export function configKeys(role: ServerRole): string[] {
  return keysOf(role);
}

function keysOf(role: ServerRole): Key[] {
  return ALL_KEYS.filter((k) => keyDef(k).roles.includes(role));
}

/** `expectShards` → `CAIRN_EXPECT_SHARDS`. */
export function envName(key: string): string {
  return `CAIRN_${key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()}`;
}

/** `expectShards` → `expect-shards`. */
export function flagName(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();
}

/** What `--help` says about each key (the README's Configuration table in one line). */
const KEY_DOCS: Record<Key, string> = {
  listen: 'address to bind (port 0 picks a free port)',
  advertise: 'address other processes dial',
  dataDir: 'LevelDB directory, one process per directory',
  serverCredential: 'shared secret of the master and every shard (this or serverCredentialFile is required)',
  serverCredentialFile: 'file holding the server credential',
  logLevel: `log level: ${LOG_LEVELS.join(', ')}`,
  verbose: 'human-readable logs on a terminal; stack traces',
  metricsListen: 'host:port for Prometheus /metrics (unset: no metrics)',
  tlsCert: 'PEM certificate: the gRPC port speaks only TLS',
  tlsKey: 'PEM key of tlsCert',
  tlsCa: 'PEM CA: mutual TLS between servers',
  maxKeyBytes: 'largest row key',
  maxColumnBytes: 'largest column name',
  maxValueBytes: 'largest value',
  maxCellsPerCall: 'most cells in one call',
  maxMessageBytes: 'largest gRPC message',
  heartbeatIntervalMs: 'shard heartbeat period',
  shutdownGraceMs: 'on SIGTERM, how long calls in flight may take',
  expectShards: 'split the space once this many shards have registered',
  clients: 'client users, user:<hash>:role[,...] (repeatable; hash from cairn hash-password)',
  tokenTtlSeconds: 'lifetime of login tokens',
  shardDownAfterMs: 'a shard silent this long is shown as down',
  requireApproval: 'new shards join only after cairn ctl addserver',
  maxConcurrentMoves: 'moves a rebalance runs at once',
  moveMaxMbps: 'default throttle per move in MB/s (0: unthrottled)',
  diskHighWater: 'the planner keeps each disk under this fraction of its size',
  master: "the master's address",
  maxFenceMs: 'the longest a source keeps a range fenced for a move',
};

const KIND_ARG: Record<Kind, string> = {
  hostport: 'host:port',
  hostportNonZero: 'host:port',
  path: 'path',
  secret: 'secret',
  logLevel: 'level',
  bool: 'bool',
  posint: 'n',
  nonnegNumber: 'x',
  fraction: 'x',
  clients: 'entries',
};

/** One config key as a command line shows it (for `cairn master --help` and the flag parser). */
export interface ConfigKeyInfo {
  key: string;
  /** `--expect-shards` without the dashes. */
  flag: string;
  env: string;
  /** The value's name in help: `n`, `host:port`, `path`, …; `bool` for switches. */
  arg: string;
  isSwitch: boolean;
  repeatable: boolean;
  doc: string;
  /** The default as help prints it, or undefined when the key has none. */
  defaultText?: string;
}

/** The keys one process accepts, in table order, as flags (the table is the only list of them). */
export function configKeyInfo(role: ServerRole): ConfigKeyInfo[] {
  return keysOf(role).map((k) => {
    const def = keyDef(k);
    const d = def.default?.(role);
    return {
      key: k,
      flag: flagName(k),
      env: envName(k),
      arg: KIND_ARG[def.kind],
      isSwitch: def.kind === 'bool',
      repeatable: CONFIG_REPEATABLE_FLAGS.includes(flagName(k)),
      doc: KEY_DOCS[k],
      defaultText: d === undefined ? undefined : Array.isArray(d) ? (d.length ? JSON.stringify(d) : 'none') : String(d),
    };
  });
}

/** Long flags that are switches, for `parseArgs({ booleans })`: `verbose`, `require-approval`. */
export const CONFIG_BOOLEAN_FLAGS: readonly string[] = ALL_KEYS.filter((k) => keyDef(k).kind === 'bool').map(flagName);
/** Flags that may repeat, for `parseArgs({ repeatable })`: `clients` (entries are joined). */
export const CONFIG_REPEATABLE_FLAGS: readonly string[] = ['clients'];

// ---------------------------------------------------------------------------
// Value parsing

interface Raw {
  value: unknown;
  source: ConfigSource;
}

class Issues {
  readonly list: string[] = [];
  add(key: string, source: ConfigSource | undefined, msg: string): void {
    this.list.push(`config: ${key}${source ? ` (${source === 'default' ? 'default' : `from ${source}`})` : ''}: ${msg}`);
  }
}

class Bad extends Error {}

function got(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (typeof v === 'string') return `got ${JSON.stringify(v)}`;
  if (typeof v === 'boolean' && v === true) return 'got a bare switch with no value';
  if (typeof v === 'number' || typeof v === 'boolean') return `got ${String(v)}`;
  if (Array.isArray(v)) return 'got a list';
  return 'got a mapping';
}

function parsePosInt(v: unknown): number {
  let n: number | undefined;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^\s*\d+\s*$/.test(v)) n = Number(v);
  if (n === undefined || !Number.isSafeInteger(n) || n <= 0) throw new Bad(`expected a positive integer, ${got(v)}`);
  return n;
}

function parseNonNegNumber(v: unknown): number {
  let n: number | undefined;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^\s*(\d+(\.\d*)?|\.\d+)\s*$/.test(v)) n = Number(v);
  if (n === undefined || !Number.isFinite(n) || n < 0) throw new Bad(`expected a number ≥ 0, ${got(v)}`);
  return n;
}

/** A fraction in (0, 1], such as 0.9. */
function parseFraction(v: unknown): number {
  let n: number | undefined;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^\s*(\d+(\.\d*)?|\.\d+)\s*$/.test(v)) n = Number(v);
  if (n === undefined || !Number.isFinite(n) || n <= 0 || n > 1) throw new Bad(`expected a fraction above 0 and at most 1 (such as 0.9 for 90%), ${got(v)}`);
  return n;
}

function parseBoolValue(v: unknown): boolean {
  if (typeof v === 'boolean') return v;
  if (v === 1 || v === 0) return v === 1;
  if (typeof v === 'string') {
    const s = v.trim().toLowerCase();
    if (s === 'true' || s === '1' || s === 'yes') return true;
    if (s === 'false' || s === '0' || s === 'no') return false;
  }
  throw new Bad(`expected true or false (or 1/0, yes/no), ${got(v)}`);
}

function parseString(v: unknown, what: string): string {
  if (typeof v !== 'string') throw new Bad(`expected ${what}, ${got(v)}`);
  return v;
}

/** Splits and checks `host:port` (IPv6 hosts in brackets: `[::1]:7000`). Throws an Error describing the problem. */
export function parseHostPort(s: string, opts: { allowPortZero?: boolean } = {}): { host: string; port: number } {
  const allowZero = opts.allowPortZero ?? true;
  const want = `expected host:port${allowZero ? '' : ' with a port from 1 to 65535'}`;
  const colon = s.lastIndexOf(':');
  if (colon === -1) throw new Bad(`${want}, ${got(s)}`);
  const hostPart = s.slice(0, colon);
  const portPart = s.slice(colon + 1);
  if (hostPart === '' || hostPart === '[]') throw new Bad(`${want}, got an empty host in ${JSON.stringify(s)}`);
  let host: string;
  if (hostPart.startsWith('[')) {
    if (!/^\[[0-9A-Za-z:.%]+\]$/.test(hostPart) || !hostPart.includes(':')) throw new Bad(`${want}, got a malformed IPv6 host in ${JSON.stringify(s)}`);
    host = hostPart.slice(1, -1);
  } else {
    if (!/^[^\s:[\]/]+$/.test(hostPart)) {
      throw new Bad(`${want} (IPv6 hosts go in brackets: [::1]:7000), got a malformed host in ${JSON.stringify(s)}`);
    }
    host = hostPart;
  }
  if (!/^\d{1,5}$/.test(portPart)) throw new Bad(`${want}, got port ${JSON.stringify(portPart)} in ${JSON.stringify(s)}`);
  const port = Number(portPart);
  if (port > 65535 || (!allowZero && port === 0)) throw new Bad(`${want}, got port ${port} in ${JSON.stringify(s)}`);
  return { host, port };
}

const PLAINTEXT_REFUSAL = 'plaintext passwords are not accepted; run `cairn hash-password` and use the hash it prints';

/**
 * Splits `user:<hash>:role,user:<hash>:role`. The scrypt parameters inside a
 * hash hold commas too (`ln=15,r=8,p=1`), so a comma separates entries only
 * where the text after it starts a new `user:` (user names hold no `$`, `,`,
 * `:` or space, and no fragment of a hash's parameters is followed by a colon).
 */
export function splitClientList(s: string): string[] {
  return s
    .split(/,(?=[\s,]*[^,:$\s]+:|[\s,]*$)/)
    .map((x) => x.trim())
    .filter((x) => x !== '');
}

function parseClientString(entry: string, n: number): ClientCredential {
  const s = entry.trim();
  const first = s.indexOf(':');
  const last = s.lastIndexOf(':');
  if (first <= 0 || last === first || last === s.length - 1) {
    // Name the entry without echoing it whole: it may hold a password.
    const which = first > 0 ? `entry ${n} ("${s.slice(0, first)}:…")` : `entry ${n}`;
    throw new Bad(`expected entries of the form user:<hash>:role, got ${which} with ${Math.max(0, s.split(':').length - 1)} colon(s)`);
  }
  return checkClient(s.slice(0, first), s.slice(first + 1, last), s.slice(last + 1));
}

function checkClient(user: unknown, passwordHash: unknown, role: unknown): ClientCredential {
  if (typeof user !== 'string' || user.trim() === '' || /[:,$\s]/.test(user)) {
    throw new Bad(`expected a user name with no colon, comma, $ or space, ${got(user)}`);
  }
  if (typeof role !== 'string' || !(CLIENT_ROLES as readonly string[]).includes(role)) {
    throw new Bad(`user ${JSON.stringify(user)}: expected role ${CLIENT_ROLES.join(', ')}, ${got(role)}`);
  }
  if (typeof passwordHash !== 'string' || !isPasswordHash(passwordHash)) {
    // Never echo the value: it is probably a password.
    throw new Bad(`user ${JSON.stringify(user)}: the password is not a hash; ${PLAINTEXT_REFUSAL}`);
  }
  return { user, passwordHash, role: role as ClientRole };
}

function parseClients(v: unknown, key: string, source: ConfigSource, issues: Issues): ClientCredential[] | undefined {
  const out: ClientCredential[] = [];
  let ok = true;
  const attempt = (label: string, fn: () => ClientCredential): void => {
    try {
      out.push(fn());
    } catch (e) {
      if (!(e instanceof Bad)) throw e;
      ok = false;
      issues.add(label, source, e.message);
    }
  };
  const fromString = (s: string, label: string): void => {
    splitClientList(s).forEach((entry, i) => attempt(label, () => parseClientString(entry, i + 1)));
  };
  if (typeof v === 'string') fromString(v, key);
  else if (Array.isArray(v)) {
    v.forEach((item, i) => {
      const label = `${key}[${i}]`;
      if (typeof item === 'string') return fromString(item, label);
      if (typeof item !== 'object' || item === null || Array.isArray(item)) {
        return attempt(label, () => {
          throw new Bad(`expected { user, passwordHash, role } or "user:<hash>:role", ${got(item)}`);
        });
      }
      const o = item as Record<string, unknown>;
      attempt(label, () => {
        if ('password' in o) throw new Bad(`has a "password" key: ${PLAINTEXT_REFUSAL} as passwordHash`);
        const extra = Object.keys(o).filter((k) => !['user', 'passwordHash', 'role'].includes(k));
        if (extra.length) throw new Bad(`unknown key ${JSON.stringify(extra[0])}; known keys: user, passwordHash, role`);
        return checkClient(o.user, o.passwordHash, o.role);
      });
    });
  } else if (v !== null && v !== undefined) {
    issues.add(key, source, `expected a list of { user, passwordHash, role } or "user:<hash>:role,…", ${got(v)}`);
    return undefined;
  }
  const seen = new Set<string>();
  for (const c of out) {
    if (seen.has(c.user)) {
      ok = false;
      issues.add(key, source, `duplicate user ${JSON.stringify(c.user)}`);
    }
    seen.add(c.user);
  }
  return ok ? out : undefined;
}

function convert(key: Key, v: unknown, cwd: string): unknown {
  switch (keyDef(key).kind) {
    case 'hostport':
      parseHostPort(parseString(v, 'host:port'), { allowPortZero: true });
      return v;
    case 'hostportNonZero':
      parseHostPort(parseString(v, 'host:port'), { allowPortZero: false });
      return v;
    case 'path': {
      const s = parseString(v, 'a path');
      if (s.trim() === '') throw new Bad('expected a path, got ""');
      return isAbsolute(s) ? s : resolve(cwd, s);
    }
    case 'secret': {
      if (typeof v !== 'string') throw new Bad('expected a string'); // never echo a secret
      const s = v;
      if (s.length < 16) throw new Bad(`expected at least 16 characters, got ${s.length}`);
      return s;
    }
    case 'logLevel': {
      const s = typeof v === 'string' ? v.trim().toLowerCase() : v;
      if (typeof s !== 'string' || !(LOG_LEVELS as readonly string[]).includes(s)) throw new Bad(`expected one of ${LOG_LEVELS.join(', ')}, ${got(v)}`);
      return s;
    }
    case 'bool':
      return parseBoolValue(v);
    case 'posint':
      return parsePosInt(v);
    case 'nonnegNumber':
      return parseNonNegNumber(v);
    case 'fraction':
      return parseFraction(v);
    case 'clients':
      throw new Error('clients are parsed separately');
  }
}

// ---------------------------------------------------------------------------
// Sources

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}

function suggest(key: string, known: string[]): string | undefined {
  const norm = (s: string): string => s.replace(/[-_]/g, '').toLowerCase();
  const exact = known.find((k) => norm(k) === norm(key));
  if (exact) return exact;
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const dist = editDistance(key.toLowerCase(), k.toLowerCase());
    if (dist < bestD) [best, bestD] = [k, dist];
  }
  return best;
}

function readYamlFile(path: string, via: ConfigSource, issues: Issues): Record<string, unknown> | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    issues.add('config', via, `cannot read config file ${path}: ${(e as Error).message}`);
    return undefined;
  }
  let doc: unknown;
  try {
    doc = YAML.parse(text, { prettyErrors: true });
  } catch (e) {
    issues.add('config', via, `${path} is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
    return undefined;
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    issues.add('config', via, `${path} must be a YAML mapping of keys to values, ${got(doc)}`);
    return undefined;
  }
  return doc as Record<string, unknown>;
}

// ---------------------------------------------------------------------------
// loadConfig

export function loadConfig(role: 'master', opts: LoadConfigOptions): MasterConfig;
export function loadConfig(role: 'shard', opts: LoadConfigOptions): ShardConfig;
export function loadConfig(role: ServerRole, opts: LoadConfigOptions): MasterConfig | ShardConfig;
export function loadConfig(role: ServerRole, opts: LoadConfigOptions): MasterConfig | ShardConfig {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const flags = opts.flags;
  const issues = new Issues();
  const known = keysOf(role);
  const otherRole: ServerRole = role === 'master' ? 'shard' : 'master';

  const envValue = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v === '' ? undefined : v;
  };
  const flagValue = (name: string, key: Key): unknown => {
    const v = flags[name];
    if (Array.isArray(v)) {
      if (v.length === 0) return undefined;
      return key === 'clients' ? v.join(',') : v[v.length - 1];
    }
    return v;
  };

  // 1. The file.
  const raw = new Map<Key, Raw>();
  let configFile: string | undefined;
  const fileFlag = flags.config;
  const fileSpec: Raw | undefined =
    fileFlag !== undefined
      ? { value: Array.isArray(fileFlag) ? fileFlag[fileFlag.length - 1] : fileFlag, source: 'flag --config' }
      : envValue('CAIRN_CONFIG') !== undefined
        ? { value: envValue('CAIRN_CONFIG'), source: 'env CAIRN_CONFIG' }
        : undefined;
  if (fileSpec) {
    if (typeof fileSpec.value !== 'string' || fileSpec.value === '') {
      issues.add('config', fileSpec.source, `expected the path of a YAML file, ${got(fileSpec.value)}`);
    } else {
      configFile = isAbsolute(fileSpec.value) ? fileSpec.value : resolve(cwd, fileSpec.value);
      const doc = readYamlFile(configFile, fileSpec.source, issues);
      const source = `file ${configFile}`;
      for (const [k, value] of Object.entries(doc ?? {})) {
        if ((known as string[]).includes(k)) {
          if (value !== null) raw.set(k as Key, { value, source }); // `key:` with no value leaves it unset
        } else if (configKeys(otherRole).includes(k)) {
          issues.add(k, source, `is a ${otherRole} setting, not used by cairn ${role}; known keys: ${known.join(', ')}`);
        } else {
          const hint = suggest(k, known);
          issues.add(k, source, `unknown key${hint ? ` (did you mean ${hint}?)` : ''}; known keys: ${known.join(', ')}`);
        }
      }
    }
  }

  // 2. Environment, 3. flags: later sources win key by key. The two credential keys are
  // alternatives: the one from the later source wins; both from the same source is an error.
  for (const key of known) {
    const e = envValue(envName(key));
    if (e !== undefined) raw.set(key, { value: e, source: `env ${envName(key)}` });
    const f = flagValue(flagName(key), key);
    if (f !== undefined) raw.set(key, { value: f, source: `flag --${flagName(key)}` });
  }
  const rank = (s: ConfigSource): number => (s.startsWith('flag ') ? 3 : s.startsWith('env ') ? 2 : 1);
  const credRaw = raw.get('serverCredential');
  const credFileRaw = raw.get('serverCredentialFile');
  if (credRaw && credFileRaw) {
    const [a, b] = [rank(credRaw.source), rank(credFileRaw.source)];
    if (a === b) {
      issues.add(
        'serverCredential',
        credRaw.source,
        `set both serverCredential and serverCredentialFile (from ${credFileRaw.source}); set exactly one`,
      );
    } else raw.delete(a < b ? 'serverCredential' : 'serverCredentialFile');
  }

  // Convert and validate each key.
  const out: Record<string, unknown> = {};
  const sources: Record<string, ConfigSource> = {};
  for (const key of known) {
    const r = raw.get(key);
    const def = keyDef(key);
    if (!r) {
      if (def.default) {
        const d = def.default(role);
        out[key] = def.kind === 'path' ? resolve(cwd, d as string) : d;
        sources[key] = 'default';
      }
      continue;
    }
    sources[key] = r.source;
    if (def.kind === 'clients') {
      const clients = parseClients(r.value, key, r.source, issues);
      if (clients) out[key] = clients;
      continue;
    }
    try {
      out[key] = convert(key, r.value, cwd);
    } catch (e) {
      if (!(e instanceof Bad)) throw e;
      issues.add(key, r.source, e.message);
    }
  }

  // Cross-key rules.
  if (out.advertise === undefined && typeof out.listen === 'string') {
    out.advertise = out.listen;
    sources.advertise = 'default (= listen)';
  }
  if (typeof out.serverCredentialFile === 'string') {
    const path = out.serverCredentialFile;
    try {
      const text = readFileSync(path, 'utf8').trim();
      if (text.length < 16) issues.add('serverCredentialFile', sources.serverCredentialFile, `${path}: expected a credential of at least 16 characters, got ${text.length}`);
      else out.serverCredential = text;
    } catch (e) {
      issues.add('serverCredentialFile', sources.serverCredentialFile, `cannot read ${path}: ${(e as Error).message}`);
    }
  } else if (!raw.has('serverCredential') && !raw.has('serverCredentialFile')) {
    issues.add(
      'serverCredential',
      undefined,
      `required: set serverCredential or serverCredentialFile (${envName('serverCredential')} / ${envName('serverCredentialFile')}, ` +
        `--${flagName('serverCredential')} / --${flagName('serverCredentialFile')}); every server of a cluster needs the same one`,
    );
  }
  for (const key of ['tlsCert', 'tlsKey', 'tlsCa'] as const) {
    const p = out[key];
    if (typeof p !== 'string') continue;
    if (!existsSync(p)) issues.add(key, sources[key], `file ${p} does not exist`);
    else if (!statSync(p).isFile()) issues.add(key, sources[key], `${p} is not a file`);
  }
  if (raw.has('tlsCert') !== raw.has('tlsKey')) {
    const [has, lacks] = raw.has('tlsCert') ? (['tlsCert', 'tlsKey'] as const) : (['tlsKey', 'tlsCert'] as const);
    issues.add(lacks, undefined, `required when ${has} is set (${sources[has]}): TLS needs both a certificate and its key`);
  }
  if (role === 'master' && typeof out.shardDownAfterMs === 'number' && typeof out.heartbeatIntervalMs === 'number') {
    if (out.shardDownAfterMs <= out.heartbeatIntervalMs) {
      issues.add(
        'shardDownAfterMs',
        sources.shardDownAfterMs,
        `expected more than heartbeatIntervalMs (${out.heartbeatIntervalMs}), got ${out.shardDownAfterMs}`,
      );
    }
  }

  if (issues.list.length) throw new ConfigError(issues.list);
  return {
    kind: role,
    ...(configFile !== undefined ? { configFile } : {}),
    ...out,
    sources,
  } as unknown as MasterConfig | ShardConfig;
}

/** The settings as a plain object safe to log: the credential and password hashes are redacted. */
export function redactConfig(c: MasterConfig | ShardConfig): Record<string, unknown> {
  const o: Record<string, unknown> = { ...c, serverCredential: '<redacted>' };
  if ('clients' in c) o.clients = c.clients.map((x) => ({ user: x.user, role: x.role }));
  delete o.sources;
  return o;
}
