import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashPassword, verifyPassword } from './auth.js';
import {
  CONFIG_BOOLEAN_FLAGS,
  CONFIG_REPEATABLE_FLAGS,
  ConfigError,
  configKeys,
  envName,
  flagName,
  loadConfig,
  parseHostPort,
  redactConfig,
  splitClientList,
  type MasterConfig,
  type ShardConfig,
} from './config.js';
import { CairnError } from './errors.js';

const CRED = 'a-long-enough-server-credential';
const H1 = hashPassword('alice-password');
const H2 = hashPassword('bob-password');

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'cairn-config-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

type Flags = Record<string, string | boolean | string[]>;
const master = (flags: Flags = {}, env: NodeJS.ProcessEnv = {}): MasterConfig =>
  loadConfig('master', { flags: { 'server-credential': CRED, ...flags }, env, cwd: dir });
const shard = (flags: Flags = {}, env: NodeJS.ProcessEnv = {}): ShardConfig =>
  loadConfig('shard', { flags: { 'server-credential': CRED, ...flags }, env, cwd: dir });

/** The ConfigError that `fn` throws. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('names', () => {
  it('maps every key to one env variable and one flag', () => {
    expect(envName('expectShards')).toBe('CAIRN_EXPECT_SHARDS');
    expect(flagName('expectShards')).toBe('expect-shards');
    expect(envName('tlsCa')).toBe('CAIRN_TLS_CA');
    expect(flagName('moveMaxMbps')).toBe('move-max-mbps');
    expect(envName('maxCellsPerCall')).toBe('CAIRN_MAX_CELLS_PER_CALL');
    expect(CONFIG_BOOLEAN_FLAGS).toEqual(['verbose', 'require-approval']);
    expect(CONFIG_REPEATABLE_FLAGS).toEqual(['clients', 'etcd-endpoints']);
    expect(configKeys('shard')).toContain('master');
    expect(configKeys('shard')).not.toContain('expectShards');
    expect(configKeys('master')).toContain('clients');
  });
});

describe('defaults', () => {
  it('fills master defaults', () => {
    const c = master();
    expect(c).toMatchObject({
      kind: 'master',
      listen: '127.0.0.1:7000',
      advertise: '127.0.0.1:7000',
      dataDir: join(dir, 'data/master'),
      serverCredential: CRED,
      logLevel: 'info',
      verbose: false,
      maxKeyBytes: 4096,
      maxColumnBytes: 1024,
      maxValueBytes: 1048576,
      maxCellsPerCall: 10000,
      maxMessageBytes: 16777216,
      expectShards: 1,
      clients: [],
      tokenTtlSeconds: 900,
      heartbeatIntervalMs: 1000,
      shardDownAfterMs: 5000,
      requireApproval: false,
      maxConcurrentMoves: 2,
      moveMaxMbps: 0,
      diskHighWater: 0.9,
    });
    expect(c.metricsListen).toBeUndefined();
    expect(c.tlsCert).toBeUndefined();
    expect(c.sources.expectShards).toBe('default');
    expect(c.sources.serverCredential).toBe('flag --server-credential');
  });

  it('fills shard defaults', () => {
    const c = shard();
    expect(c).toMatchObject({
      kind: 'shard',
      listen: '127.0.0.1:7001',
      advertise: '127.0.0.1:7001',
      dataDir: join(dir, 'data/shard'),
      master: ['127.0.0.1:7000'],
      heartbeatIntervalMs: 1000,
      maxFenceMs: 1000,
    });
    expect('expectShards' in c).toBe(false);
  });

  it('takes maxFenceMs, a shard key, from each source and refuses anything but a positive integer', () => {
    expect(shard({}, { CAIRN_MAX_FENCE_MS: '2500' }).maxFenceMs).toBe(2500);
    expect(shard({ 'max-fence-ms': '300' }, { CAIRN_MAX_FENCE_MS: '2500' }).maxFenceMs).toBe(300);
    expect(() => shard({ 'max-fence-ms': '0' })).toThrow(/maxFenceMs \(from flag --max-fence-ms\): expected a positive integer, got "0"/);
    expect(configKeys('master')).not.toContain('maxFenceMs');
  });
});

describe('precedence: file < env < flag', () => {
  it('lets later sources win key by key', () => {
    const cfg = file('prec.yaml', 'expectShards: 2\nmaxConcurrentMoves: 5\nlogLevel: warn\nverbose: true\n');
    const c = master({ config: cfg, 'max-concurrent-moves': '7' }, { CAIRN_EXPECT_SHARDS: '3', CAIRN_MAX_CONCURRENT_MOVES: '6' });
    expect(c.configFile).toBe(cfg);
    expect(c.logLevel).toBe('warn'); // file only
    expect(c.verbose).toBe(true);
    expect(c.expectShards).toBe(3); // env over file
    expect(c.maxConcurrentMoves).toBe(7); // flag over env over file
    expect(c.sources).toMatchObject({
      logLevel: `file ${cfg}`,
      expectShards: 'env CAIRN_EXPECT_SHARDS',
      maxConcurrentMoves: 'flag --max-concurrent-moves',
    });
  });

  it('takes the file from CAIRN_CONFIG, and --config over it, relative to cwd', () => {
    file('env.yaml', 'expectShards: 4\n');
    file('flag.yaml', 'expectShards: 5\n');
    expect(master({}, { CAIRN_CONFIG: 'env.yaml' }).expectShards).toBe(4);
    expect(master({ config: 'flag.yaml' }, { CAIRN_CONFIG: 'env.yaml' }).expectShards).toBe(5);
  });

  it('treats an empty env variable as unset', () => {
    expect(master({}, { CAIRN_EXPECT_SHARDS: '' }).expectShards).toBe(1);
  });

  it('sets every key from each source', () => {
    // One string value that every kind of key accepts is not possible, so check one key per kind.
    const cases: Array<[string, string, unknown]> = [
      ['listen', '0.0.0.0:0', '0.0.0.0:0'],
      ['advertise', 'db1.example:7100', 'db1.example:7100'],
      ['dataDir', '/var/lib/cairn', '/var/lib/cairn'],
      ['logLevel', 'debug', 'debug'],
      ['verbose', 'yes', true],
      ['metricsListen', '[::]:9100', '[::]:9100'],
      ['maxValueBytes', '2048', 2048],
      ['moveMaxMbps', '12.5', 12.5],
      ['diskHighWater', '0.8', 0.8],
      ['requireApproval', '1', true],
    ];
    for (const [key, value, want] of cases) {
      const y = file(`every-${key}.yaml`, `${key}: "${value}"\n`);
      expect((master({ config: y }) as unknown as Record<string, unknown>)[key]).toEqual(want);
      expect((master({}, { [envName(key)]: value }) as unknown as Record<string, unknown>)[key]).toEqual(want);
      expect((master({ [flagName(key)]: value }) as unknown as Record<string, unknown>)[key]).toEqual(want);
    }
  });

  it('takes booleans, negations and repeated flags in the shape parseArgs gives', () => {
    const c = master(
      { verbose: true, listen: '0.0.0.0:7000', clients: [`a:${H1}:rw`, `b:${H2}:r`], 'require-approval': false },
      { CAIRN_REQUIRE_APPROVAL: 'true', CAIRN_LISTEN: '1.2.3.4:1' },
    );
    expect(c.verbose).toBe(true);
    expect(c.listen).toBe('0.0.0.0:7000');
    expect(c.requireApproval).toBe(false);
    expect(c.clients.map((x) => `${x.user}:${x.role}`)).toEqual(['a:rw', 'b:r']);
    expect(master({ listen: ['1.1.1.1:1', '2.2.2.2:2'] }).listen).toBe('2.2.2.2:2');
  });

  it('ignores flags that are not config keys', () => {
    expect(master({ json: true, yes: true }).expectShards).toBe(1);
  });
});

describe('validation messages', () => {
  const cases: Array<[string, Flags, NodeJS.ProcessEnv, string]> = [
    ['env int', {}, { CAIRN_EXPECT_SHARDS: 'abc' }, 'config: expectShards (from env CAIRN_EXPECT_SHARDS): expected a positive integer, got "abc"'],
    ['trailing junk', { 'expect-shards': '12abc' }, {}, 'config: expectShards (from flag --expect-shards): expected a positive integer, got "12abc"'],
    ['zero', { 'max-key-bytes': '0' }, {}, 'config: maxKeyBytes (from flag --max-key-bytes): expected a positive integer, got "0"'],
    ['negative', {}, { CAIRN_MAX_CELLS_PER_CALL: '-5' }, 'config: maxCellsPerCall (from env CAIRN_MAX_CELLS_PER_CALL): expected a positive integer, got "-5"'],
    ['fraction', {}, { CAIRN_TOKEN_TTL_SECONDS: '1.5' }, 'config: tokenTtlSeconds (from env CAIRN_TOKEN_TTL_SECONDS): expected a positive integer, got "1.5"'],
    ['mbps', { 'move-max-mbps': '-1' }, {}, 'config: moveMaxMbps (from flag --move-max-mbps): expected a number ≥ 0, got "-1"'],
    ['mbps junk', { 'move-max-mbps': '5MB' }, {}, 'config: moveMaxMbps (from flag --move-max-mbps): expected a number ≥ 0, got "5MB"'],
    ['high water over 1', {}, { CAIRN_DISK_HIGH_WATER: '90' }, 'config: diskHighWater (from env CAIRN_DISK_HIGH_WATER): expected a fraction above 0 and at most 1 (such as 0.9 for 90%), got "90"'],
    ['high water 0', { 'disk-high-water': '0' }, {}, 'config: diskHighWater (from flag --disk-high-water): expected a fraction above 0 and at most 1 (such as 0.9 for 90%), got "0"'],
    ['high water percent', { 'disk-high-water': '90%' }, {}, 'config: diskHighWater (from flag --disk-high-water): expected a fraction above 0 and at most 1 (such as 0.9 for 90%), got "90%"'],
    ['bool', {}, { CAIRN_VERBOSE: 'maybe' }, 'config: verbose (from env CAIRN_VERBOSE): expected true or false (or 1/0, yes/no), got "maybe"'],
    ['level', { 'log-level': 'loud' }, {}, 'config: logLevel (from flag --log-level): expected one of error, warn, info, debug, got "loud"'],
    ['no port', { listen: 'localhost' }, {}, 'config: listen (from flag --listen): expected host:port, got "localhost"'],
    ['big port', { listen: 'localhost:70000' }, {}, 'config: listen (from flag --listen): expected host:port, got port 70000 in "localhost:70000"'],
    ['bad port', {}, { CAIRN_LISTEN: 'localhost:http' }, 'config: listen (from env CAIRN_LISTEN): expected host:port, got port "http" in "localhost:http"'],
    ['empty host', { 'metrics-listen': ':9100' }, {}, 'config: metricsListen (from flag --metrics-listen): expected host:port, got an empty host in ":9100"'],
    ['bare ipv6', { listen: '::1:7000' }, {}, 'IPv6 hosts go in brackets'],
    ['advertise 0', { advertise: 'db1:0' }, {}, 'config: advertise (from flag --advertise): expected host:port with a port from 1 to 65535, got port 0 in "db1:0"'],
    ['switch', { listen: true }, {}, 'config: listen (from flag --listen): expected host:port, got a bare switch with no value'],
    ['short cred', { 'server-credential': 'short' }, {}, 'config: serverCredential (from flag --server-credential): expected at least 16 characters, got 5'],
    ['heartbeats', { 'shard-down-after-ms': '500' }, {}, 'config: shardDownAfterMs (from flag --shard-down-after-ms): expected more than heartbeatIntervalMs (1000), got 500'],
  ];
  for (const [name, flags, env, want] of cases) {
    it(`reports ${name}`, () => {
      const e = configError(() => master(flags, env));
      expect(e.issues).toHaveLength(1);
      expect(e.message).toContain(want);
      expect(e).toBeInstanceOf(CairnError);
      expect(e.code).toBe('INVALID_ARGUMENT');
    });
  }

  it('accepts port 0 for listen and bracketed IPv6', () => {
    expect(master({ listen: '127.0.0.1:0' }).listen).toBe('127.0.0.1:0');
    expect(master({ listen: '[::1]:7000' }).advertise).toBe('[::1]:7000');
    expect(parseHostPort('[fe80::1%eth0]:80')).toEqual({ host: 'fe80::1%eth0', port: 80 });
    expect(parseHostPort('db-1.example.com:7000')).toEqual({ host: 'db-1.example.com', port: 7000 });
  });

  it('reports every problem at once, one line each', () => {
    const e = configError(() =>
      loadConfig('master', { flags: { 'expect-shards': 'x', listen: 'nope' }, env: { CAIRN_VERBOSE: 'maybe' }, cwd: dir }),
    );
    expect(e.issues).toHaveLength(4);
    expect(e.message.split('\n')).toHaveLength(4);
    expect(e.message).toContain('config: serverCredential: required: set serverCredential or serverCredentialFile');
  });

  it('names the file as the source of a bad file value', () => {
    const y = file('bad-value.yaml', 'expectShards: 2.5\nlisten: 7000\nmaxKeyBytes: "12abc"\n');
    const e = configError(() => master({ config: y }));
    expect(e.issues).toEqual([
      `config: listen (from file ${y}): expected host:port, got 7000`,
      `config: maxKeyBytes (from file ${y}): expected a positive integer, got "12abc"`,
      `config: expectShards (from file ${y}): expected a positive integer, got 2.5`,
    ]);
  });

  it('requires the shard master address to have a real port', () => {
    const e = configError(() => shard({ master: 'm:0' }));
    expect(e.message).toContain('config: master (from flag --master): expected host:port with a port from 1 to 65535');
    expect(shard({ master: 'master.cairn:7000' }).master).toEqual(['master.cairn:7000']);
  });
});

describe('the YAML file', () => {
  it('rejects unknown keys, naming the key and listing the known ones', () => {
    const y = file('typo.yaml', 'expectShard: 3\n');
    const e = configError(() => master({ config: y }));
    expect(e.message).toContain(`config: expectShard (from file ${y}): unknown key (did you mean expectShards?); known keys: listen, advertise, dataDir`);
    expect(e.message).toContain('expectShards');
    const k = configError(() => master({ config: file('kebab.yaml', 'data-dir: /x\n') }));
    expect(k.message).toContain('did you mean dataDir?');
    const z = configError(() => master({ config: file('junk.yaml', 'zzzzzzzz: 1\n') }));
    expect(z.message).not.toContain('did you mean');
    expect(z.message).toContain('unknown key; known keys:');
  });

  it('rejects a key of the other process', () => {
    const y = file('role.yaml', 'expectShards: 3\n');
    const e = configError(() => shard({ config: y }));
    expect(e.message).toContain(`config: expectShards (from file ${y}): is a master setting, not used by cairn shard`);
  });

  it('reports a missing file, bad YAML and a non-mapping', () => {
    const missing = join(dir, 'nope.yaml');
    expect(configError(() => master({ config: missing })).message).toContain(`config: config (from flag --config): cannot read config file ${missing}`);
    const bad = file('bad.yaml', 'listen: [1, 2\n');
    expect(configError(() => master({}, { CAIRN_CONFIG: bad })).message).toContain(`config: config (from env CAIRN_CONFIG): ${bad} is not valid YAML`);
    const list = file('list.yaml', '- a\n- b\n');
    expect(configError(() => master({ config: list })).message).toContain('must be a YAML mapping');
    const dup = file('dup.yaml', 'expectShards: 1\nexpectShards: 2\n');
    expect(configError(() => master({ config: dup })).message).toContain('not valid YAML');
  });

  it('accepts an empty file and keys with no value', () => {
    expect(master({ config: file('empty.yaml', '') }).expectShards).toBe(1);
    expect(master({ config: file('nulls.yaml', 'metricsListen:\nexpectShards: ~\n') }).metricsListen).toBeUndefined();
  });

  it('resolves relative paths against cwd', () => {
    const c = master({ config: file('paths.yaml', 'dataDir: db/m1\n') });
    expect(c.dataDir).toBe(join(dir, 'db/m1'));
    expect(master({ 'data-dir': '/abs/d' }).dataDir).toBe('/abs/d');
  });
});

describe('clients', () => {
  it('parses the YAML list form', () => {
    const y = file(
      'clients.yaml',
      `clients:\n  - user: alice\n    passwordHash: "${H1}"\n    role: rw\n  - { user: bob, passwordHash: '${H2}', role: admin }\n  - "carol:${H1}:r"\n`,
    );
    const c = master({ config: y });
    expect(c.clients).toEqual([
      { user: 'alice', passwordHash: H1, role: 'rw' },
      { user: 'bob', passwordHash: H2, role: 'admin' },
      { user: 'carol', passwordHash: H1, role: 'r' },
    ]);
    expect(verifyPassword('alice-password', c.clients[0]!.passwordHash)).toBe(true);
  });

  it('parses the seed form user:<hash>:role from env and flags, splitting on the first and last colon', () => {
    const c = master({}, { CAIRN_CLIENTS: ` alice:${H1}:rw , bob:${H2}:admin,` });
    expect(c.clients).toEqual([
      { user: 'alice', passwordHash: H1, role: 'rw' },
      { user: 'bob', passwordHash: H2, role: 'admin' },
    ]);
    expect(master({ clients: `ops:${H2}:r` }).clients).toEqual([{ user: 'ops', passwordHash: H2, role: 'r' }]);
    expect(master({ clients: [`a:${H1}:r`, `b:${H2}:rw,c:${H1}:admin`] }).clients.map((x) => x.user)).toEqual(['a', 'b', 'c']);
  });

  it('splits a client list on the commas between entries, not those inside a hash', () => {
    expect(H1).toContain(',');
    expect(splitClientList(`a:${H1}:rw,b:${H2}:r , c:${H1}:admin,`)).toEqual([`a:${H1}:rw`, `b:${H2}:r`, `c:${H1}:admin`]);
    expect(splitClientList('')).toEqual([]);
    expect(splitClientList(`a:${H1}:rw,, b:${H2}:r,,`)).toEqual([`a:${H1}:rw`, `b:${H2}:r`]);
  });

  it('refuses plaintext passwords, naming cairn hash-password and never echoing the password', () => {
    const e1 = configError(() => master({}, { CAIRN_CLIENTS: 'myawesomeuser:thepassword:rw' }));
    expect(e1.message).toContain('config: clients (from env CAIRN_CLIENTS): user "myawesomeuser": the password is not a hash');
    expect(e1.message).toContain('plaintext passwords are not accepted');
    expect(e1.message).toContain('cairn hash-password');
    expect(e1.message).not.toContain('thepassword');

    const y = file('plain.yaml', 'clients:\n  - user: alice\n    password: hunter2hunter2\n    role: rw\n');
    const e2 = configError(() => master({ config: y }));
    expect(e2.message).toContain(`config: clients[0] (from file ${y}): has a "password" key: plaintext passwords are not accepted`);
    expect(e2.message).toContain('cairn hash-password');
    expect(e2.message).not.toContain('hunter2');

    const y3 = file('plain-hash.yaml', 'clients:\n  - user: alice\n    passwordHash: hunter2hunter2\n    role: rw\n');
    expect(configError(() => master({ config: y3 })).message).toContain('plaintext passwords are not accepted');
  });

  it('rejects bad roles, malformed entries, unknown keys and duplicate users', () => {
    expect(configError(() => master({ clients: `a:${H1}:server` })).message).toContain(
      'config: clients (from flag --clients): user "a": expected role r, rw, admin, got "server"',
    );
    expect(configError(() => master({ clients: 'justauser' })).message).toContain('expected entries of the form user:<hash>:role');
    expect(configError(() => master({ clients: `:${H1}:r` })).message).toContain('expected entries of the form user:<hash>:role');
    expect(configError(() => master({ clients: `a b:${H1}:r` })).message).toContain('expected a user name');
    expect(configError(() => master({ clients: `a:${H1}:rw,a:${H2}:r` })).message).toContain(
      'config: clients (from flag --clients): duplicate user "a"',
    );
    const y = file('extra.yaml', `clients:\n  - { user: a, passwordHash: "${H1}", role: r, roles: rw }\n  - 42\n`);
    const e = configError(() => master({ config: y }));
    expect(e.issues).toEqual([
      `config: clients[0] (from file ${y}): unknown key "roles"; known keys: user, passwordHash, role`,
      `config: clients[1] (from file ${y}): expected { user, passwordHash, role } or "user:<hash>:role", got 42`,
    ]);
    expect(configError(() => master({ config: file('map.yaml', 'clients: { a: 1 }\n') })).message).toContain('got a mapping');
  });

  it('never prints password hashes or the credential when redacted', () => {
    const c = master({ clients: `alice:${H1}:rw` });
    const text = JSON.stringify(redactConfig(c));
    expect(text).not.toContain(H1);
    expect(text).not.toContain(CRED);
    expect(text).toContain('alice');
  });
});

describe('server credential', () => {
  it('reads and trims a credential file', () => {
    const p = file('cred', `  ${CRED}-from-file\n`);
    const c = loadConfig('shard', { flags: {}, env: { CAIRN_SERVER_CREDENTIAL_FILE: p }, cwd: dir });
    expect(c.serverCredential).toBe(`${CRED}-from-file`);
    expect(c.serverCredentialFile).toBe(p);
    const rel = loadConfig('shard', { flags: { 'server-credential-file': 'cred' }, env: {}, cwd: dir });
    expect(rel.serverCredential).toBe(`${CRED}-from-file`);
  });

  it('requires one of serverCredential and serverCredentialFile', () => {
    const e = configError(() => loadConfig('shard', { flags: {}, env: {}, cwd: dir }));
    expect(e.issues).toEqual([expect.stringContaining('config: serverCredential: required: set serverCredential or serverCredentialFile')]);
    expect(e.message).toContain('CAIRN_SERVER_CREDENTIAL_FILE');
  });

  it('rejects both from the same source, and lets a later source pick the other', () => {
    const p = file('cred2', `${CRED}-file\n`);
    const e = configError(() =>
      loadConfig('shard', { flags: {}, env: { CAIRN_SERVER_CREDENTIAL: CRED, CAIRN_SERVER_CREDENTIAL_FILE: p }, cwd: dir }),
    );
    expect(e.message).toContain('config: serverCredential (from env CAIRN_SERVER_CREDENTIAL): set both serverCredential and serverCredentialFile');
    const c = loadConfig('shard', { flags: { 'server-credential-file': p }, env: { CAIRN_SERVER_CREDENTIAL: CRED }, cwd: dir });
    expect(c.serverCredential).toBe(`${CRED}-file`);
    const d = loadConfig('shard', { flags: { 'server-credential': CRED }, env: { CAIRN_SERVER_CREDENTIAL_FILE: p }, cwd: dir });
    expect(d.serverCredential).toBe(CRED);
    expect(d.serverCredentialFile).toBeUndefined();
  });

  it('reports a missing or too short credential file', () => {
    const missing = join(dir, 'no-cred');
    expect(configError(() => loadConfig('shard', { flags: { 'server-credential-file': missing }, env: {}, cwd: dir })).message).toContain(
      `config: serverCredentialFile (from flag --server-credential-file): cannot read ${missing}`,
    );
    const short = file('short-cred', 'tiny\n');
    const e = configError(() => loadConfig('shard', { flags: { 'server-credential-file': short }, env: {}, cwd: dir }));
    expect(e.message).toContain(`config: serverCredentialFile (from flag --server-credential-file): ${short}: expected a credential of at least 16 characters, got 4`);
    expect(e.message).not.toContain('tiny');
  });
});

describe('TLS', () => {
  it('accepts cert and key together, with an optional CA', () => {
    const cert = file('cert.pem', 'x');
    const key = file('key.pem', 'x');
    const ca = file('ca.pem', 'x');
    const c = master({ 'tls-cert': 'cert.pem', 'tls-key': key, 'tls-ca': ca });
    expect([c.tlsCert, c.tlsKey, c.tlsCa]).toEqual([cert, key, ca]);
  });

  it('requires cert and key together', () => {
    file('cert.pem', 'x');
    expect(configError(() => master({ 'tls-cert': 'cert.pem' })).message).toContain(
      'config: tlsKey: required when tlsCert is set (flag --tls-cert)',
    );
    expect(configError(() => master({}, { CAIRN_TLS_KEY: 'cert.pem' })).message).toContain(
      'config: tlsCert: required when tlsKey is set (env CAIRN_TLS_KEY)',
    );
  });

  it('requires the files to exist', () => {
    file('key.pem', 'x');
    const e = configError(() => master({ 'tls-cert': 'missing.pem', 'tls-key': 'key.pem' }));
    expect(e.message).toBe(`config: tlsCert (from flag --tls-cert): file ${join(dir, 'missing.pem')} does not exist`);
    expect(configError(() => master({ 'tls-cert': dir, 'tls-key': 'key.pem' })).message).toContain('is not a file');
  });
});
