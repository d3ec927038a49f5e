/**
 * The configuration of `cairn master` and `cairn shard` as zod schemas: one
 * field per key, in the order help lists them, each with what `--help` says
 * about it and its default. The types are inferred from the schemas.
 *
 * Every key is settable three ways (config.ts layers them): `expectShards` in
 * the YAML file ⇔ `CAIRN_EXPECT_SHARDS` ⇔ `--expect-shards`.
 */
import { z } from 'zod';
import { clientList } from './config-clients.js';
import { bool, dialAddress, dialAddressList, etcdPrefix, existingFile, fraction, hostPort, LOG_LEVELS, logLevel, nonnegNumber, path, posInt, secret, secretFile, urlList } from './config-values.js';

export type ServerRole = 'master' | 'shard';

/** What help says about a key. */
interface KeyHelp {
  doc: string;
  /** The value's name in help: `n`, `host:port`, `path`, …; `bool` for switches. */
  arg: string;
  /** The default, as the key's schema reads it. */
  default?: unknown;
  /** Never echoed in a message. */
  secret?: boolean;
  /** The flag may repeat (its values are joined with commas). */
  repeatable?: boolean;
}
const KEY_HELP = z.registry<KeyHelp>();

function described<S extends z.ZodType>(schema: S, help: KeyHelp): S {
  KEY_HELP.add(schema, help);
  return schema;
}
/** A key with no default. */
const key = <T extends z.ZodType>(schema: T, help: KeyHelp) => described(schema.optional(), help);
/** A key with a default, read by the key's own schema (so a default path is made absolute too). */
const keyOr = <T extends z.ZodType>(schema: T, dflt: z.input<T>, help: KeyHelp) => described(schema.prefault(dflt), { ...help, default: dflt });

const N = 'n';
const META_STORES = ['embedded', 'etcd'] as const;
const metaStore = z.preprocess((v) => (typeof v === 'string' ? v.trim().toLowerCase() : v), z.enum(META_STORES, `expected ${META_STORES.join(' or ')}`));
const HOST_PORT = 'host:port';

function commonFields(role: ServerRole, cwd: string) {
  return {
    listen: keyOr(hostPort, role === 'master' ? '127.0.0.1:7000' : '127.0.0.1:7001', { doc: 'address to bind (port 0 picks a free port)', arg: HOST_PORT }),
    advertise: key(dialAddress, { doc: 'address other processes dial', arg: HOST_PORT }),
    dataDir: keyOr(path(cwd), `./data/${role}`, { doc: 'LevelDB directory, one process per directory', arg: 'path' }),
    serverCredential: key(secret, { doc: 'shared secret of the master and every shard (this or serverCredentialFile is required)', arg: 'secret', secret: true }),
    serverCredentialFile: key(secretFile(cwd), { doc: 'file holding the server credential', arg: 'path' }),
    logLevel: keyOr(logLevel, 'info', { doc: `log level: ${LOG_LEVELS.join(', ')}`, arg: 'level' }),
    verbose: keyOr(bool, false, { doc: 'human-readable logs on a terminal; stack traces', arg: 'bool' }),
    metricsListen: key(hostPort, { doc: 'host:port for Prometheus /metrics (unset: no metrics)', arg: HOST_PORT }),
    tlsCert: key(existingFile(cwd), { doc: 'PEM certificate: the gRPC port speaks only TLS', arg: 'path' }),
    tlsKey: key(existingFile(cwd), { doc: 'PEM key of tlsCert', arg: 'path' }),
    tlsCa: key(existingFile(cwd), { doc: 'PEM CA: mutual TLS between servers', arg: 'path' }),
    maxKeyBytes: keyOr(posInt, 4096, { doc: 'largest row key', arg: N }),
    maxColumnBytes: keyOr(posInt, 1024, { doc: 'largest column name', arg: N }),
    maxValueBytes: keyOr(posInt, 1_048_576, { doc: 'largest value', arg: N }),
    maxCellsPerCall: keyOr(posInt, 10_000, { doc: 'most cells in one call', arg: N }),
    maxMessageBytes: keyOr(posInt, 16_777_216, { doc: 'largest gRPC message', arg: N }),
    heartbeatIntervalMs: keyOr(posInt, 1000, { doc: 'shard heartbeat period', arg: N }),
    /** On SIGTERM: how long calls in flight may take to finish before they are cancelled. */
    shutdownGraceMs: keyOr(posInt, 5000, { doc: 'on SIGTERM, how long calls in flight may take', arg: N }),
  };
}

function masterFields(role: 'master', cwd: string) {
  return {
    ...commonFields(role, cwd),
    expectShards: keyOr(posInt, 1, { doc: 'split the space once this many shards have registered', arg: N }),
    clients: keyOr(clientList, [], { doc: 'client users, user:<hash>:role[,...] (repeatable; hash from cairn hash-password)', arg: 'entries', repeatable: true }),
    tokenTtlSeconds: keyOr(posInt, 900, { doc: 'lifetime of login tokens', arg: N }),
    shardDownAfterMs: keyOr(posInt, 5000, { doc: 'a shard silent this long is shown as down', arg: N }),
    requireApproval: keyOr(bool, false, { doc: 'new shards join only after cairn ctl addserver', arg: 'bool' }),
    maxConcurrentMoves: keyOr(posInt, 2, { doc: 'moves a rebalance runs at once', arg: N }),
    /** MB/s per move; 0 means unthrottled. */
    moveMaxMbps: keyOr(nonnegNumber, 0, { doc: 'default throttle per move in MB/s (0: unthrottled)', arg: 'x' }),
    /** The planner never takes a shard's disk use past this fraction of its size (0 < x <= 1). */
    diskHighWater: keyOr(fraction, 0.9, { doc: 'the planner keeps each disk under this fraction of its size', arg: 'x' }),
    /** Kept with the map: read when the cluster forms (docs/design.md "Replication and failover"). */
    replicationFactor: keyOr(posInt, 3, {
      doc: 'how many shards hold each range (one copy per shard at most), set when the cluster forms; a cluster formed before replication keeps 1 until `cairn ctl factor N`',
      arg: N,
    }),
    /** As TiKV's down-store time: past it a down shard's copies are made again on other shards. */
    replicaDownTimeoutMs: keyOr(posInt, 600_000, { doc: "a shard down this long has its copies of ranges rebuilt elsewhere", arg: N }),
    /** docs/design.md "The control plane: embedded, or on etcd". */
    metaStore: keyOr(metaStore, 'embedded', { doc: "where the master's state lives: embedded (LevelDB in dataDir) or etcd (standby masters possible)", arg: 'kind' }),
    etcdEndpoints: keyOr(urlList, [], { doc: 'etcd client URLs (metaStore etcd), such as http://127.0.0.1:2379 (repeatable)', arg: 'urls', repeatable: true }),
    etcdPrefix: keyOr(etcdPrefix, '/cairn', { doc: "the etcd key prefix of this cluster's state", arg: 'prefix' }),
    /** The leader's lease: a dead leader is replaced about this long after its last keep-alive. */
    etcdLeaseSeconds: keyOr(posInt, 5, { doc: 'how long a silent leader keeps leadership (etcd lease time to live)', arg: N }),
    /** Past this an etcd call's outcome counts as unknown (a write is then settled by reading etcd back). */
    etcdCallTimeoutMs: keyOr(posInt, 5000, { doc: 'how long one etcd call may take before its outcome counts as unknown', arg: N }),
    /** A write etcd left unanswered is settled within this, or the leader steps down with its outcome unknown (a new leader reads what landed). */
    etcdSettleTimeoutMs: keyOr(posInt, 20_000, { doc: 'how long a leader keeps asking etcd whether an unanswered write landed before it steps down', arg: N }),
    etcdTlsCa: key(existingFile(cwd), { doc: "PEM CA that signed etcd's certificate (https endpoints)", arg: 'path' }),
    etcdTlsCert: key(existingFile(cwd), { doc: 'PEM client certificate for etcd (with etcdTlsKey)', arg: 'path' }),
    etcdTlsKey: key(existingFile(cwd), { doc: 'PEM key of etcdTlsCert', arg: 'path' }),
  };
}

function shardFields(role: 'shard', cwd: string) {
  return {
    ...commonFields(role, cwd),
    master: keyOr(dialAddressList, ['127.0.0.1:7000'], { doc: "the masters' addresses, a:7000,b:7000 (the shard follows the leader)", arg: HOST_PORT }),
    /**
     * The longest a source keeps a range fenced for a move before the
     * destination confirms the fenced tail; past it the source lifts the fence
     * and the move aborts (docs/design.md "Moving data", step 4).
     */
    maxFenceMs: keyOr(posInt, 1000, { doc: 'the longest a source keeps a range fenced for a move', arg: N }),
    /** PacificA's lease: a primary serves only while every in-sync follower answered within it. */
    replicaLeaseMs: keyOr(posInt, 2000, { doc: 'a primary serves only while every in-sync follower answered within this', arg: N }),
    replicaAckTimeoutMs: keyOr(posInt, 3000, { doc: 'a follower this late is reported to the master for removal from the in-sync set', arg: N }),
  };
}

/** `expectShards` → `CAIRN_EXPECT_SHARDS`. */
export function envName(key: string): string {
  return `CAIRN_${key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()}`;
}

/** `expectShards` → `expect-shards`. */
export function flagName(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();
}

const CREDENTIAL_REQUIRED =
  `required: set serverCredential or serverCredentialFile (${envName('serverCredential')} / ${envName('serverCredentialFile')}, ` +
  `--${flagName('serverCredential')} / --${flagName('serverCredentialFile')}); every server of a cluster needs the same one`;

/** Checked even when other keys are wrong, so that one run reports every problem. */
const always = { when: () => true } as const;

interface Credentials {
  listen: string;
  advertise?: string;
  serverCredential?: string;
  serverCredentialFile?: { path: string; secret: string };
}

/** advertise defaults to listen; the credential is the file's when it came from one (config.ts drops the one of the earlier source). */
function settle<T extends Credentials>({ advertise, serverCredential, serverCredentialFile, ...rest }: T, ctx: z.RefinementCtx) {
  const credential = serverCredentialFile?.secret ?? serverCredential;
  if (credential === undefined) {
    ctx.addIssue({ code: 'custom', path: ['serverCredential'], message: CREDENTIAL_REQUIRED });
    return z.NEVER;
  }
  return { ...rest, advertise: advertise ?? rest.listen, serverCredential: credential, serverCredentialFile: serverCredentialFile?.path };
}

const hasCredential = (c: { serverCredential?: unknown; serverCredentialFile?: unknown }) =>
  c.serverCredential !== undefined || c.serverCredentialFile !== undefined;

/** A shard must stay silent for longer than a heartbeat before it counts as down. */
function heartbeatProblem(c: unknown): string | undefined {
  if (typeof c !== 'object' || c === null || !('shardDownAfterMs' in c) || !('heartbeatIntervalMs' in c)) return undefined;
  const { shardDownAfterMs: down, heartbeatIntervalMs: beat } = c;
  if (typeof down !== 'number' || typeof beat !== 'number' || down > beat) return undefined;
  return `expected more than heartbeatIntervalMs (${beat}), got ${down}`;
}

/** What is wrong with the etcd keys together, as [key, message], or undefined. */
function etcdProblem(c: unknown): [string, string] | undefined {
  if (typeof c !== 'object' || c === null) return undefined;
  const o = c as { metaStore?: unknown; etcdEndpoints?: unknown; etcdTlsCert?: unknown; etcdTlsKey?: unknown };
  if (o.metaStore === 'etcd' && (!Array.isArray(o.etcdEndpoints) || o.etcdEndpoints.length === 0)) {
    return ['etcdEndpoints', 'required with metaStore etcd: expected a list of etcd client URLs such as http://127.0.0.1:2379'];
  }
  if ((o.etcdTlsCert === undefined) !== (o.etcdTlsKey === undefined)) {
    return [o.etcdTlsCert === undefined ? 'etcdTlsCert' : 'etcdTlsKey', 'etcdTlsCert and etcdTlsKey go together: expected both or neither'];
  }
  return undefined;
}

/** One schema per base directory (a process has one; tests have a few): zod compiles a schema on its first use. */
function perCwd<S>(build: (cwd: string) => S): (cwd: string) => S {
  const made = new Map<string, S>();
  return (cwd) => made.get(cwd) ?? made.set(cwd, build(cwd)).get(cwd)!;
}

/** The master's config; `cwd` is the base of relative paths. Unknown keys are refused. */
export const masterSchema = perCwd((cwd: string) =>
  z
    .strictObject(masterFields('master', cwd))
    .refine(hasCredential, { ...always, path: ['serverCredential'], message: CREDENTIAL_REQUIRED })
    .refine((c) => heartbeatProblem(c) === undefined, { ...always, path: ['shardDownAfterMs'], error: (iss) => heartbeatProblem(iss.input) })
    .superRefine((c, ctx) => {
      const problem = etcdProblem(c);
      if (problem) ctx.addIssue({ code: 'custom', path: [problem[0]], message: problem[1] });
    })
    .transform(settle),
);

/** A shard's config; `cwd` is the base of relative paths. Unknown keys are refused. */
export const shardSchema = perCwd((cwd: string) =>
  z
    .strictObject(shardFields('shard', cwd))
    .refine(hasCredential, { ...always, path: ['serverCredential'], message: CREDENTIAL_REQUIRED })
    .transform(settle),
);

export type MasterSettings = z.output<ReturnType<typeof masterSchema>>;
export type ShardSettings = z.output<ReturnType<typeof shardSchema>>;

const FIELDS: Record<ServerRole, Record<string, z.ZodType>> = { master: masterFields('master', '/'), shard: shardFields('shard', '/') };
/** The fields, for their names and help (not for parsing: their paths resolve against `/`). */
const fieldsOf = (role: ServerRole): Record<string, z.ZodType> => FIELDS[role];

/** The config keys one process accepts, in help order. */
export function configKeys(role: ServerRole): string[] {
  return Object.keys(fieldsOf(role));
}

/** Whether messages may echo the value of `key`. */
export function isSecretKey(key: string): boolean {
  const field = fieldsOf('master')[key];
  return field !== undefined && KEY_HELP.get(field)?.secret === true;
}

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

/** The keys one process accepts, in help order, as flags (the schema is the only list of them). */
export function configKeyInfo(role: ServerRole): ConfigKeyInfo[] {
  return Object.entries(fieldsOf(role)).map(([k, field]) => {
    const help = KEY_HELP.get(field) ?? { doc: '', arg: 'value' };
    const d = help.default;
    return {
      key: k,
      flag: flagName(k),
      env: envName(k),
      arg: help.arg,
      isSwitch: help.arg === 'bool',
      repeatable: help.repeatable === true,
      doc: help.doc,
      defaultText: d === undefined ? undefined : Array.isArray(d) ? (d.length ? JSON.stringify(d) : 'none') : String(d),
    };
  });
}

const allKeyInfo = (): ConfigKeyInfo[] => {
  const seen = new Set<string>();
  return [...configKeyInfo('master'), ...configKeyInfo('shard')].filter((k) => !seen.has(k.key) && seen.add(k.key));
};
/** Long flags that are switches, for `parseArgs({ booleans })`: `verbose`, `require-approval`. */
export const CONFIG_BOOLEAN_FLAGS: readonly string[] = allKeyInfo().filter((k) => k.isSwitch).map((k) => k.flag);
/** Flags that may repeat, for `parseArgs({ repeatable })`: `clients` (entries are joined). */
export const CONFIG_REPEATABLE_FLAGS: readonly string[] = allKeyInfo().filter((k) => k.repeatable).map((k) => k.flag);
