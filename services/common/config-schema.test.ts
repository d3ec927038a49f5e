import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { hashPassword } from './auth.js';
import { configKeyInfo, configKeys, envName, flagName, loadConfig, type ServerRole } from './config.js';
import { LOG_LEVELS } from './config-values.js';

const HASHES = [hashPassword('first-password'), hashPassword('second-password')];
const RUNS = { numRuns: Number(process.env.CAIRN_FUZZ_RUNS) || 40 };

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'cairn-config-schema-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// ------------------------------------------------------------------ values the schema accepts

const host = fc.constantFrom('127.0.0.1', '0.0.0.0', 'localhost', 'db-1.example.com', '[::1]', '[fe80::1%eth0]');
const bindAddress = fc.tuple(host, fc.integer({ min: 0, max: 65535 })).map(([h, p]) => `${h}:${p}`);
const dialAddress = fc.tuple(host, fc.integer({ min: 1, max: 65535 })).map(([h, p]) => `${h}:${p}`);
const posInt = fc.integer({ min: 1, max: 2 ** 31 });
const client = fc.record({
  user: fc.constantFrom('alice', 'bob', 'carol', 'd.e-f_g', 'X9'),
  passwordHash: fc.constantFrom(...HASHES),
  role: fc.constantFrom('r', 'rw', 'admin'),
});

/** A valid value for each key (heartbeats and the down timeout kept apart, as the schema requires). */
const VALUES: Record<string, fc.Arbitrary<unknown>> = {
  listen: bindAddress,
  advertise: dialAddress,
  dataDir: fc.constantFrom('/var/lib/cairn', 'data/m1', './rel dir/x', '../up'),
  serverCredential: fc.string({ minLength: 16, maxLength: 40 }).filter((s) => s.trim() === s && !s.includes('\0')),
  logLevel: fc.constantFrom(...LOG_LEVELS),
  verbose: fc.boolean(),
  metricsListen: bindAddress,
  maxKeyBytes: posInt,
  maxColumnBytes: posInt,
  maxValueBytes: posInt,
  maxCellsPerCall: posInt,
  maxMessageBytes: posInt,
  heartbeatIntervalMs: fc.integer({ min: 1, max: 1000 }),
  shutdownGraceMs: posInt,
  expectShards: posInt,
  // Not empty: an empty env variable counts as unset, so an empty list does not read back from env.
  clients: fc.uniqueArray(client, { selector: (c) => c.user, minLength: 1, maxLength: 3 }),
  tokenTtlSeconds: posInt,
  shardDownAfterMs: fc.integer({ min: 1001, max: 10_000_000 }),
  requireApproval: fc.boolean(),
  maxConcurrentMoves: posInt,
  moveMaxMbps: fc.integer({ min: 0, max: 10_000_000 }).map((n) => n / 100),
  diskHighWater: fc.integer({ min: 1, max: 1000 }).map((n) => n / 1000),
  master: fc.uniqueArray(dialAddress, { minLength: 1, maxLength: 3 }),
  // embedded: etcd needs endpoints too, which the schema checks apart (below).
  metaStore: fc.constant('embedded'),
  etcdEndpoints: fc.uniqueArray(fc.tuple(fc.constantFrom('http', 'https'), fc.constantFrom('127.0.0.1', 'etcd-1.example.com'), fc.integer({ min: 1, max: 65535 })).map(([p, h, n]) => `${p}://${h}:${n}`), { minLength: 1, maxLength: 3 }),
  etcdPrefix: fc.constantFrom('/cairn', '/prod/cairn-1', '/x'),
  etcdLeaseSeconds: fc.integer({ min: 1, max: 60 }),
  etcdCallTimeoutMs: fc.integer({ min: 1, max: 60_000 }),
  etcdSettleTimeoutMs: fc.integer({ min: 1, max: 600_000 }),
  maxFenceMs: posInt,
  replicationFactor: posInt,
  replicaDownTimeoutMs: posInt,
  replicaLeaseMs: posInt,
  replicaAckTimeoutMs: posInt,
};
/** Keys whose values are files that must exist, or that the credential rule couples: set by hand below. */
const SKIPPED = new Set(['serverCredentialFile', 'tlsCert', 'tlsKey', 'tlsCa', 'etcdTlsCa', 'etcdTlsCert', 'etcdTlsKey']);

type Source = 'file' | 'env' | 'flag';

/** The value as an env variable or a flag gives it. */
function asText(key: string, v: unknown): string {
  if ((key === 'master' || key === 'etcdEndpoints') && Array.isArray(v)) return v.join(',');
  if (key === 'clients' && Array.isArray(v)) return v.map((c: { user: string; passwordHash: string; role: string }) => `${c.user}:${c.passwordHash}:${c.role}`).join(',');
  return String(v);
}

/** The value the loaded config holds for what a source gave. */
const expected = (key: string, v: unknown): unknown => (key === 'dataDir' && typeof v === 'string' ? resolve(dir, v) : v);

const settingsOf = (role: ServerRole) =>
  fc.record(Object.fromEntries(configKeys(role).filter((k) => !SKIPPED.has(k)).map((k) => [k, VALUES[k]!])), { requiredKeys: ['serverCredential'] });

let files = 0;
/** Loads `role`'s config with each key given by the source `where` picks, and lower sources giving `decoys`. */
function load(role: ServerRole, given: Record<string, unknown>, where: (key: string) => Source, decoys: Record<string, unknown> = {}) {
  const file: Record<string, unknown> = {};
  const env: Record<string, string> = {};
  const flags: Record<string, string> = {};
  for (const [k, v] of Object.entries(given)) {
    const at = where(k);
    const decoy = decoys[k];
    if (at === 'file') file[k] = v;
    if (at === 'env') env[envName(k)] = asText(k, v);
    if (at === 'flag') flags[flagName(k)] = asText(k, v);
    if (decoy !== undefined && at !== 'file') file[k] = decoy;
    if (decoy !== undefined && at === 'flag') env[envName(k)] = asText(k, decoy);
  }
  const path = join(dir, `c${files++}.yaml`);
  writeFileSync(path, YAML.stringify(file));
  return { config: loadConfig(role, { flags: { ...flags, config: path }, env, cwd: dir }), path };
}

describe('the schema and the layering', () => {
  it.each(['master', 'shard'] as const)('%s: any config the schema accepts reads the same from the file, env or flags, and records where it came from', (role) => {
    fc.assert(
      fc.property(settingsOf(role), fc.array(fc.constantFrom<Source>('file', 'env', 'flag'), { minLength: 48, maxLength: 48 }), (given, picks) => {
        const keys = configKeys(role);
        const where = (k: string): Source => picks[keys.indexOf(k)]!;
        const { config, path } = load(role, given, where);
        const got = new Map(Object.entries(config));
        for (const [k, v] of Object.entries(given)) {
          expect([k, got.get(k)]).toEqual([k, expected(k, v)]);
          const at = where(k);
          expect([k, config.sources[k]]).toEqual([k, at === 'file' ? `file ${path}` : at === 'env' ? `env ${envName(k)}` : `flag --${flagName(k)}`]);
        }
        if (given.advertise === undefined) expect(config.advertise).toBe(config.listen);
      }),
      RUNS,
    );
  });

  it('lets a later source win key by key: file < env < flag', () => {
    fc.assert(
      fc.property(
        settingsOf('master'),
        settingsOf('master'),
        fc.array(fc.constantFrom<Source>('env', 'flag'), { minLength: 48, maxLength: 48 }),
        (given, decoys, picks) => {
          const keys = configKeys('master');
          const { config } = load('master', given, (k) => picks[keys.indexOf(k)]!, decoys);
          const got = new Map(Object.entries(config));
          for (const [k, v] of Object.entries(given)) expect([k, got.get(k)]).toEqual([k, expected(k, v)]);
        },
      ),
      RUNS,
    );
  });

  it.each(['master', 'shard'] as const)('%s: help names every key, and each default it prints is the default loaded', (role) => {
    const { config } = load(role, { serverCredential: 'x'.repeat(20) }, () => 'flag');
    const got = new Map(Object.entries(config));
    for (const k of configKeyInfo(role)) {
      expect([k.key, k.doc.length > 0, k.arg.length > 0]).toEqual([k.key, true, true]);
      if (k.defaultText === undefined) continue;
      expect([k.key, config.sources[k.key]]).toEqual([k.key, 'default']);
      const v = got.get(k.key);
      const shown = Array.isArray(v) ? (v.length ? JSON.stringify(v) : 'none') : k.key === 'dataDir' ? resolve(dir, k.defaultText) : k.defaultText;
      expect([k.key, Array.isArray(v) ? shown : String(v)]).toEqual([k.key, k.key === 'dataDir' ? resolve(dir, k.defaultText) : shown]);
    }
  });
});

describe('the etcd keys', () => {
  const base = { 'server-credential': 'x'.repeat(20) };
  const loadMaster = (flags: Record<string, string>) => loadConfig('master', { flags: { ...base, ...flags }, env: {}, cwd: dir });

  it('default to the embedded store, so a master needs nothing else', () => {
    const c = loadMaster({});
    expect([c.metaStore, c.etcdEndpoints, c.etcdPrefix, c.etcdLeaseSeconds, c.etcdCallTimeoutMs, c.etcdSettleTimeoutMs]).toEqual(['embedded', [], '/cairn', 5, 5000, 20_000]);
  });

  it('read a list of endpoints from text', () => {
    const c = loadMaster({ 'meta-store': 'etcd', 'etcd-endpoints': 'http://10.0.0.1:2379, https://10.0.0.2:2379' });
    expect(c.etcdEndpoints).toEqual(['http://10.0.0.1:2379', 'https://10.0.0.2:2379']);
  });

  it.each([
    [{ 'meta-store': 'etcd' }, 'etcdEndpoints', 'required with metaStore etcd'],
    [{ 'meta-store': 'zookeeper' }, 'metaStore', 'expected embedded or etcd'],
    [{ 'etcd-endpoints': '127.0.0.1:2379' }, 'etcdEndpoints', 'expected an http:// or https:// URL'],
    [{ 'etcd-prefix': 'cairn/' }, 'etcdPrefix', 'expected a key prefix that starts with /'],
  ])('refuse %j naming %s and what was expected', (flags, key, expectedText) => {
    expect(() => loadMaster(flags)).toThrow(new RegExp(`${key}[^]*${expectedText.replace(/[/.*+?^${}()|[\]\\]/g, '\\$&')}`));
  });

  it('give a shard every master it may follow', () => {
    const c = loadConfig('shard', { flags: { ...base, master: 'a:7000,b:7000' }, env: {}, cwd: dir });
    expect(c.master).toEqual(['a:7000', 'b:7000']);
  });
});
