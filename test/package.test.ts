/**
 * The installable package: `npm pack` of this checkout installs into an empty
 * directory outside it, where `cairn` runs (npx, and `npm install -g` into a
 * private prefix), `cairn dev` brings a cluster up (its servers find their
 * .proto files inside node_modules/cairn), and `import { CairnClient } from
 * 'cairn'` writes and reads a row — with types that resolve under
 * moduleResolution nodenext.
 *
 * The tarball is packed with --ignore-scripts: `pretest` has just built dist/,
 * and the lifecycle scripts would delete it (`prepack`) and build it again
 * (`prepare`, ~25 s here) while the other process tests run from it. A
 * hand-run `npm pack` runs them. Installing takes the dependencies' tarballs
 * from the npm cache, filled by `npm ci` (--prefer-offline); only their
 * metadata may be fetched. Each install takes ~20-35 s on this machine.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, spawnSync, type ChildProcess, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { freeBasePort } from './harness/cluster.js';

const REPO = resolve('.');
const NPM_TIMEOUT_MS = 150_000;

/**
 * The environment without what `npm test` exported for this checkout: an
 * inherited npm_config_local_prefix, for one, would make `npm install` in the
 * temp dir install into this checkout instead. The cache, registry, user
 * config and proxies stay.
 */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const keep = /^npm_config_(cache|registry|userconfig|globalconfig|cafile|(https?_|no)?proxy|noproxy)$/i;
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k === 'INIT_CWD' || k === 'NODE_OPTIONS' || (/^npm_/i.test(k) && !keep.test(k))) continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

function run(cmd: string, args: string[], o: SpawnSyncOptions & { cwd: string }) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: NPM_TIMEOUT_MS, env: cleanEnv(), ...o });
  const out = { status: r.status, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}\n${out.stderr}`);
  return out;
}

function ok(cmd: string, args: string[], o: SpawnSyncOptions & { cwd: string }) {
  const r = run(cmd, args, o);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r;
}

let tmp: string;
let app: string;
let tarball: string;
let packedFiles: string[];
let dev: ChildProcess | undefined;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cairn-package-'));
  app = join(tmp, 'app');
  await mkdir(app);
  const packed = JSON.parse(ok('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], { cwd: REPO }).stdout) as {
    filename: string;
    files: { path: string }[];
  }[];
  tarball = join(tmp, packed[0]!.filename);
  packedFiles = packed[0]!.files.map((f) => f.path);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'cairn-package-test', version: '1.0.0', private: true }, null, 2));
  ok('npm', ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund'], { cwd: app });
}, 2 * NPM_TIMEOUT_MS);

afterAll(async () => {
  if (dev && dev.exitCode === null && dev.signalCode === null) {
    // A failed test left it running: stop it, and its servers with it (its own process group).
    dev.kill('SIGINT');
    const exited = await Promise.race([new Promise((r) => dev!.once('exit', () => r(true))), new Promise((r) => setTimeout(() => r(false), 15_000))]);
    if (!exited) {
      try {
        process.kill(-dev.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('the npm package', () => {
  it('holds the built CLI, the SDK with its declarations and the .proto files, and no tests or benches', () => {
    for (const f of ['bin/cairn.js', 'dist/cli/main.js', 'dist/services/client/index.js', 'dist/services/client/index.d.ts', 'dist/proto/gen/cairn/v1/shard.js', 'proto/cairn/v1/shard.proto', 'README.md']) {
      expect(packedFiles).toContain(f);
    }
    expect(packedFiles.filter((f) => /(^|\/)(test|bench)\/|\.test\.|\.ts$(?<!\.d\.ts)/.test(f))).toEqual([]);
    // Installed as a package, not linked to this checkout.
    const installed = realpathSync(join(app, 'node_modules', 'cairn'));
    expect(installed.startsWith(tmp)).toBe(true);
  });

  it('puts `cairn` on the PATH: npx cairn --help, and cairn --help after npm install -g', () => {
    const help = run('npx', ['--no', '--', 'cairn', '--help'], { cwd: app });
    expect(help.status).toBe(0);
    for (const c of ['master', 'shard', 'dev', 'ctl']) expect(help.stdout).toContain(c);

    // -g into a private prefix (not this machine's global one), run from elsewhere by PATH alone.
    const prefix = join(tmp, 'global');
    ok('npm', ['install', '-g', '--prefix', prefix, tarball, '--prefer-offline', '--no-audit', '--no-fund'], { cwd: tmp });
    expect(existsSync(join(prefix, 'bin', 'cairn'))).toBe(true);
    const global = run('cairn', ['--help'], { cwd: tmp, env: cleanEnv({ PATH: `${join(prefix, 'bin')}${delimiter}${process.env.PATH}` }) });
    expect(global.status).toBe(0);
    expect(global.stdout).toContain('dev');
  }, 2 * NPM_TIMEOUT_MS);

  it('runs a dev cluster from the install, and its SDK writes and reads a row', async () => {
    const base = await freeBasePort([0, 1, 2, 3, 100, 101, 102, 103]);
    // The same file `npx cairn` runs (node_modules/.bin/cairn), started by node
    // itself so that SIGINT reaches `cairn dev` alone, not through npm's relay too.
    dev = spawn(process.execPath, [join(app, 'node_modules', '.bin', 'cairn'), 'dev', '--base-port', String(base)], {
      cwd: app,
      env: cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const lines: string[] = [];
    dev.stderr!.on('data', (d) => lines.push(String(d).trimEnd()));
    await new Promise<void>((done, fail) => {
      const t = setTimeout(() => fail(new Error(`cairn dev did not come up:\n${lines.join('\n')}`)), 45_000);
      dev!.once('exit', (code) => fail(new Error(`cairn dev exited ${code}:\n${lines.join('\n')}`)));
      createInterface({ input: dev!.stdout! }).on('line', (l) => {
        lines.push(l);
        if (l.includes('cairn ctl servers')) {
          clearTimeout(t);
          done();
        }
      });
    });
    expect(existsSync(join(app, 'data', 'logs'))).toBe(true);
    const envLine = lines.find((l) => l.includes('export CAIRN_USER='))!;
    const creds = Object.fromEntries([...envLine.matchAll(/(CAIRN_\w+)=(\S+)/g)].map((m) => [m[1]!, m[2]!]));

    writeFileSync(
      join(app, 'sdk.mjs'),
      `import { CairnClient, CairnError } from 'cairn';
const db = await CairnClient.connect({ master: process.env.CAIRN_MASTER, user: process.env.CAIRN_USER, password: process.env.CAIRN_PASSWORD });
try {
  await db.put('pkg:row1', { 'f:greeting': 'hello from the package' });
  const cells = await db.get('pkg:row1');
  console.log(JSON.stringify({
    from: import.meta.resolve('cairn'),
    cairnError: typeof CairnError,
    cells: cells.map((c) => ({ column: c.column, value: c.value.toString() })),
  }));
} finally {
  db.close();
}
`,
    );
    const sdk = run(process.execPath, ['sdk.mjs'], { cwd: app, env: cleanEnv({ ...creds, CAIRN_MASTER: `127.0.0.1:${base}` }), timeout: 30_000 });
    expect(sdk.stderr).toBe('');
    expect(sdk.status).toBe(0);
    const got = JSON.parse(sdk.stdout) as { from: string; cairnError: string; cells: { column: string; value: string }[] };
    expect(got.from).toContain(`${app}/node_modules/cairn/dist/services/client/index.js`);
    expect(got.cairnError).toBe('function');
    expect(got.cells).toEqual([{ column: 'f:greeting', value: 'hello from the package' }]);

    dev.kill('SIGINT');
    expect(await new Promise((r) => dev!.once('exit', r))).toBe(0);
  }, 90_000);

  it("has types: a TypeScript file importing 'cairn' type-checks under nodenext, and misuse does not", () => {
    writeFileSync(
      join(app, 'check.mts'),
      `import { CairnClient, CairnError, type Cell, type ConnectOptions, type ScanRow } from 'cairn';
// @ts-expect-error: only the SDK is exported, not the package's files
import { runDev } from 'cairn/dist/cli/dev.js';

const opts: ConnectOptions = { master: '127.0.0.1:7000', user: 'admin', password: 'secret' };

export async function roundTrip(): Promise<string | undefined> {
  const db: CairnClient = await CairnClient.connect(opts);
  try {
    await db.put('row', { 'f:a': 'value' });
    const cells: Cell[] = await db.get('row', { columnPrefix: 'f:' });
    for await (const r of db.scan('r')) { const row: ScanRow = r; void row; }
    // @ts-expect-error: a row key is a string (fails only if the types are real, not any)
    await db.put(42, {});
    return cells[0]?.value.toString('utf8');
  } catch (err) {
    if (err instanceof CairnError) return err.code;
    throw err;
  } finally {
    db.close();
  }
}
void runDev;
`,
    );
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module: 'nodenext',
          moduleResolution: 'nodenext',
          target: 'es2022',
          strict: true,
          noEmit: true,
          // The installed package's own declarations are checked too (skipLibCheck off);
          // Node's types come from this checkout, as a user's project has its own.
          skipLibCheck: false,
          typeRoots: [join(REPO, 'node_modules', '@types')],
          types: ['node'],
        },
        files: ['check.mts'],
      }),
    );
    const tsc = run(process.execPath, [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(app, 'tsconfig.json')], { cwd: app });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    // The check reads the package in the temp dir, not this checkout's sources.
    expect(readdirSync(join(app, 'node_modules', 'cairn', 'dist', 'services', 'client')).filter((f) => f.endsWith('.d.ts')).length).toBeGreaterThan(0);
  }, 60_000);
});
