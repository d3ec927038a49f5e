/**
 * Server configuration for `cairn master` and `cairn shard`: the layering of
 * sources over the schemas of config-schema.ts.
 *
 * Sources, later ones winning key by key:
 *   1. a YAML file (`--config PATH`, else `CAIRN_CONFIG`), keys in camelCase;
 *   2. environment variables `CAIRN_<UPPER_SNAKE>` (an empty variable counts as unset);
 *   3. flags `--kebab-case` (cli/commands.ts declares one per key, via configKeyInfo).
 *
 * Everything is validated at start-up by the schema. Each of its issues
 * becomes one line naming the key, where the value came from and what was
 * expected, e.g.
 *   config: expectShards (from env CAIRN_EXPECT_SHARDS): expected a positive integer, got "abc"
 * An unknown key in the file gets a "did you mean" hint. All problems found
 * are reported together in one ConfigError.
 *
 * Relative paths (in any source) resolve against `cwd`.
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import YAML from 'yaml';
import type { z } from 'zod';
import { configKeyInfo, configKeys, envName, flagName, isSecretKey, masterSchema, shardSchema, type MasterSettings, type ServerRole, type ShardSettings } from './config-schema.js';
import { got } from './config-values.js';
import { CairnError } from './errors.js';

export { splitClientList, type ClientCredential, type ClientRole } from './config-clients.js';
export { CONFIG_BOOLEAN_FLAGS, CONFIG_REPEATABLE_FLAGS, configKeyInfo, configKeys, envName, flagName, type ConfigKeyInfo, type ServerRole } from './config-schema.js';
export { LOG_LEVELS, parseHostPort, type LogLevel } from './config-values.js';

/** Where a value came from: `default`, `file /abs/path.yaml`, `env CAIRN_X` or `flag --x`. */
export type ConfigSource = string;

/** What loading adds to the settings: which process, the file read, and where each value came from. */
interface Loaded<R extends ServerRole> {
  /** Which process this configures. */
  kind: R;
  /** The YAML file read, absolute, if any. */
  configFile?: string;
  /** Where each key's value came from (for the start-up log line). */
  sources: Record<string, ConfigSource>;
}
export type MasterConfig = Loaded<'master'> & MasterSettings;
export type ShardConfig = Loaded<'shard'> & ShardSettings;

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


/** The values each source gives, later sources winning key by key; problems with the sources themselves go to `issues`. */
function gather(role: ServerRole, opts: LoadConfigOptions, cwd: string, issues: Issues): { raw: Map<string, Raw>; configFile?: string } {
  const env = opts.env ?? process.env;
  const flags = opts.flags;
  const known = configKeys(role);
  const envValue = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v === '' ? undefined : v;
  };
  const flagValue = (name: string): unknown => {
    const v = flags[name];
    if (!Array.isArray(v)) return v;
    if (v.length === 0) return undefined;
    return name === 'clients' ? v.join(',') : v[v.length - 1];
  };

  // 1. The file. Its unknown keys are kept, for the schema to refuse.
  const raw = new Map<string, Raw>();
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
      const source = `file ${configFile}`;
      for (const [k, value] of Object.entries(readYamlFile(configFile, fileSpec.source, issues) ?? {})) {
        // `key:` with no value leaves a known key unset.
        if (value !== null || !known.includes(k)) raw.set(k, { value, source });
      }
    }
  }

  // 2. Environment, 3. flags.
  for (const key of known) {
    const e = envValue(envName(key));
    if (e !== undefined) raw.set(key, { value: e, source: `env ${envName(key)}` });
    const f = flagValue(flagName(key));
    if (f !== undefined) raw.set(key, { value: f, source: `flag --${flagName(key)}` });
  }

  // The two credential keys are alternatives: the one from the later source wins; both from the same source is an error.
  const rank = (s: ConfigSource): number => (s.startsWith('flag ') ? 3 : s.startsWith('env ') ? 2 : 1);
  const cred = raw.get('serverCredential');
  const credFile = raw.get('serverCredentialFile');
  if (cred && credFile) {
    const [a, b] = [rank(cred.source), rank(credFile.source)];
    if (a === b) issues.add('serverCredential', cred.source, `set both serverCredential and serverCredentialFile (from ${credFile.source}); set exactly one`);
    else raw.delete(a < b ? 'serverCredential' : 'serverCredentialFile');
  }
  return { raw, configFile };
}

/** One line per schema issue: the key (and list item), where its value came from, what was expected and what was got. */
function report(role: ServerRole, raw: Map<string, Raw>, zodIssues: readonly z.core.$ZodIssue[], issues: Issues): void {
  const known = configKeys(role);
  const otherRole: ServerRole = role === 'master' ? 'shard' : 'master';
  const defaulted = new Set(configKeyInfo(role).filter((k) => k.defaultText !== undefined).map((k) => k.key));
  // Unknown keys first, as the file lists them.
  const sorted = [...zodIssues].sort((a, b) => Number(b.code === 'unrecognized_keys') - Number(a.code === 'unrecognized_keys'));
  for (const iss of sorted) {
    if (iss.code === 'unrecognized_keys') {
      for (const k of iss.keys) {
        if (configKeys(otherRole).includes(k)) {
          issues.add(k, raw.get(k)?.source, `is a ${otherRole} setting, not used by cairn ${role}; known keys: ${known.join(', ')}`);
        } else {
          const hint = suggest(k, known);
          issues.add(k, raw.get(k)?.source, `unknown key${hint ? ` (did you mean ${hint}?)` : ''}; known keys: ${known.join(', ')}`);
        }
      }
      continue;
    }
    const key = String(iss.path[0]);
    const item = iss.path[1];
    const r = raw.get(key);
    const label = typeof item === 'number' && Array.isArray(r?.value) ? `${key}[${item}]` : key;
    let msg = iss.message;
    if (iss.path.length === 1 && r && msg.startsWith('expected ') && !msg.includes(', got ') && !isSecretKey(key)) msg += `, ${got(r.value)}`;
    issues.add(label, r?.source ?? (defaulted.has(key) ? 'default' : undefined), msg);
  }
}

/** The settings, with where each came from; throws a ConfigError listing every problem. */
function finish<R extends ServerRole, T extends object>(
  role: R,
  result: z.ZodSafeParseResult<T>,
  raw: Map<string, Raw>,
  configFile: string | undefined,
  issues: Issues,
): Loaded<R> & T {
  if (!result.success) report(role, raw, result.error.issues, issues);
  // TLS needs both halves; which one is missing, and where the other came from, is the sources' business.
  if (raw.has('tlsCert') !== raw.has('tlsKey')) {
    const [has, lacks] = raw.has('tlsCert') ? (['tlsCert', 'tlsKey'] as const) : (['tlsKey', 'tlsCert'] as const);
    issues.add(lacks, undefined, `required when ${has} is set (${raw.get(has)?.source}): TLS needs both a certificate and its key`);
  }
  if (!result.success || issues.list.length) throw new ConfigError(issues.list);
  const sources: Record<string, ConfigSource> = {};
  for (const k of configKeyInfo(role)) {
    const r = raw.get(k.key);
    if (r) sources[k.key] = r.source;
    else if (k.defaultText !== undefined) sources[k.key] = 'default';
  }
  if (!raw.has('advertise')) sources.advertise = 'default (= listen)';
  return { kind: role, ...(configFile !== undefined ? { configFile } : {}), ...result.data, sources };
}

export function loadConfig(role: 'master', opts: LoadConfigOptions): MasterConfig;
export function loadConfig(role: 'shard', opts: LoadConfigOptions): ShardConfig;
export function loadConfig(role: ServerRole, opts: LoadConfigOptions): MasterConfig | ShardConfig;
export function loadConfig(role: ServerRole, opts: LoadConfigOptions): MasterConfig | ShardConfig {
  const cwd = opts.cwd ?? process.cwd();
  const issues = new Issues();
  const { raw, configFile } = gather(role, opts, cwd, issues);
  const input = Object.fromEntries([...raw].map(([k, r]) => [k, r.value]));
  if (role === 'master') return finish('master', masterSchema(cwd).safeParse(input), raw, configFile, issues);
  return finish('shard', shardSchema(cwd).safeParse(input), raw, configFile, issues);
}

/** The settings as a plain object safe to log: the credential and password hashes are redacted. */
export function redactConfig(c: MasterConfig | ShardConfig): Record<string, unknown> {
  const o: Record<string, unknown> = { ...c, serverCredential: '<redacted>' };
  if ('clients' in c) o.clients = c.clients.map((x) => ({ user: x.user, role: x.role }));
  delete o.sources;
  return o;
}
