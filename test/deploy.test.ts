/**
 * Compose against the code: deploy/Dockerfile and deploy/docker-compose.yml
 * name commands, files, config keys and ports that exist. No Docker engine
 * runs here, so the runtime stage's file layout is rebuilt from its COPY lines
 * (from this checkout, built by `pretest`) and the image's `cairn` is run from
 * it: --help, `health`, and a master that starts (reflection serves the descriptors compiled
 * into dist/), reports SERVING, and exits 0 on SIGTERM.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import YAML from 'yaml';
import { hashPassword } from '../services/common/auth.js';
import { configKeys, envName, loadConfig, parseHostPort, type ServerRole } from '../services/common/config.js';
import { CAIRN_BIN } from './harness/cluster.js';
import { COMPOSE_FILE, COMPOSE_HA_FILE, DEPLOY, DOCKERFILE, LocalCompose, loadCompose, loadComposeFiles, parseDockerfile, parseVolume, REPO, runtimeImage } from './harness/compose.js';

const compose = loadCompose();
const stages = parseDockerfile();
const image = runtimeImage(stages);
const cairnServices = Object.keys(compose.services).filter((s) => compose.services[s]!.build?.dockerfile === 'deploy/Dockerfile');
const env = (s: string) => compose.services[s]!.environment as Record<string, string>;
const portOf = (hostPort: string) => parseHostPort(hostPort).port;
const roleOf = (s: string) => compose.services[s]!.command![0] as ServerRole;

function cairn(args: string[], bin = CAIRN_BIN) {
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH } });
}

const cleanups: string[] = [];
afterAll(async () => {
  for (const d of cleanups) await rm(d, { recursive: true, force: true });
});

describe('deploy/Dockerfile', () => {
  it('is a multi-stage build whose runtime stage runs as a non-root user with the data dir as a volume', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(stages[0]!.name).toBe('build');
    expect(image.user).toBeDefined();
    expect(['root', '0', '0:0']).not.toContain(image.user);
    expect(image.volumes).toContain('/data');
    expect(image.env.CAIRN_DATA_DIR).toBe('/data');
    expect(image.entrypoint).toEqual(['cairn']);
    // `cairn` is linked onto PATH to the CLI's entry point inside WORKDIR.
    expect(image.links.get('cairn')).toBe(join(image.workdir, 'bin/cairn.js'));
    expect(existsSync(join(REPO, relative(image.workdir, image.links.get('cairn')!)))).toBe(true);
  });

  it('copies only files that exist, and none the .dockerignore leaves out', () => {
    const ignore = readFileSync(join(DEPLOY, 'Dockerfile.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    const build = stages[0]!;
    const buildWorkdir = build.instructions.find((i) => i.op === 'WORKDIR')!.args;
    for (const c of build.instructions.filter((i) => i.op === 'COPY')) {
      const parts = c.args.split(/\s+/);
      for (const src of parts.slice(0, -1)) {
        expect(existsSync(join(REPO, src))).toBe(true);
        expect(ignore).not.toContain(src.replace(/\/$/, ''));
      }
    }
    // The build runs `npm run build`; what the runtime stage copies from it exists after a build.
    expect(JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).scripts.build).toBeDefined();
    for (const c of image.stage.instructions.filter((i) => i.op === 'COPY')) {
      const m = /^--from=build\s+(\S+)\s+(\S+)$/.exec(c.args);
      expect(m).not.toBeNull();
      const src = join(REPO, relative(buildWorkdir, m![1]!));
      expect(existsSync(src)).toBe(true);
    }
    expect(readdirSync(join(REPO, 'proto/cairn/v1')).filter((f) => f.endsWith('.proto')).length).toBeGreaterThanOrEqual(4);
    // Secrets are never baked in.
    const text = readFileSync(DOCKERFILE, 'utf8');
    expect(text).not.toMatch(/^\s*(ENV|ARG)\b.*(CREDENTIAL|PASSWORD|CLIENTS|TOKEN)/im);
    expect(text).not.toMatch(/^\s*COPY\b.*(secrets|\.env)/im);
    expect(ignore).toEqual(expect.arrayContaining(['deploy/secrets', 'deploy/.env']));
  });

  it('exposes every port the compose services listen on', () => {
    for (const s of cairnServices) {
      expect(image.expose).toContain(portOf(env(s).CAIRN_LISTEN!));
      expect(image.expose).toContain(portOf(env(s).CAIRN_METRICS_LISTEN!));
    }
  });

  /** The build stage's /src, rebuilt from its COPY lines and built with its `npm run build` (node_modules linked: no registry here). */
  let buildRoot: string | undefined;

  it('the build stage builds from exactly the files it copies', async () => {
    const root = await mkdtemp(join(tmpdir(), 'cairn-build-'));
    cleanups.push(root);
    const build = stages[0]!;
    const workdir = join(root, build.instructions.find((i) => i.op === 'WORKDIR')!.args.replace(/^\//, ''));
    mkdirSync(workdir, { recursive: true });
    const ignored = (p: string) => /(^|\/)(node_modules|dist|data|coverage)(\/|$)/.test(relative(REPO, p)) || relative(REPO, p).startsWith('bench/results');
    for (const c of build.instructions.filter((i) => i.op === 'COPY')) {
      const parts = c.args.split(/\s+/);
      const to = join(workdir, parts.at(-1)!);
      for (const src of parts.slice(0, -1)) {
        const from = join(REPO, src);
        const dest = statSync(from).isDirectory() ? to : parts.length > 2 || to.endsWith('/') ? join(to, src) : to;
        mkdirSync(statSync(from).isDirectory() ? dest : dirname(dest), { recursive: true });
        cpSync(from, dest, { recursive: true, filter: (p) => !ignored(p) });
      }
    }
    const runs = build.instructions.filter((i) => i.op === 'RUN').map((i) => i.args);
    expect(runs.some((r) => r.includes('npm ci'))).toBe(true);
    expect(runs.some((r) => r.includes('npm run build'))).toBe(true);
    symlinkSync(join(REPO, 'node_modules'), join(workdir, 'node_modules')); // stands in for `npm ci`
    const r = spawnSync('npm', ['run', 'build'], { cwd: workdir, encoding: 'utf8', env: process.env, timeout: 600_000 });
    expect({ status: r.status, out: r.status === 0 ? '' : `${r.stdout}\n${r.stderr}` }).toEqual({ status: 0, out: '' });
    expect(existsSync(join(workdir, 'dist/cli/main.js'))).toBe(true);
    buildRoot = workdir;
  }, 600_000);

  it('the runtime layout it copies runs: cairn --help, cairn health, and a master that serves health and reflection', async () => {
    const root = await mkdtemp(join(tmpdir(), 'cairn-image-'));
    cleanups.push(root);
    const app = join(root, image.workdir.replace(/^\//, ''));
    const buildWorkdir = stages[0]!.instructions.find((i) => i.op === 'WORKDIR')!.args;
    const from0 = buildRoot ?? REPO; // the build stage's output when it ran above, else this checkout's build
    for (const c of image.stage.instructions.filter((i) => i.op === 'COPY')) {
      const [, from, to] = /^--from=build\s+(\S+)\s+(\S+)$/.exec(c.args)!;
      const src = join(from0, relative(buildWorkdir, from!));
      const dest = join(app, to!);
      if (relative(buildWorkdir, from!).replace(/\/$/, '') === 'node_modules') {
        symlinkSync(src, dest.replace(/\/$/, '')); // the production dependencies: linked, not copied
        continue;
      }
      mkdirSync(statSync(src).isDirectory() ? dest : dirname(dest), { recursive: true });
      cpSync(src, dest, { recursive: true });
    }
    const bin = join(app, 'bin/cairn.js');
    const help = cairn(['--help'], bin);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('health');
    expect(cairn(['health', '--help'], bin).stdout).toContain('--addr');

    const data = join(root, 'data');
    const child = spawn(process.execPath, [bin, 'master', '--listen', '127.0.0.1:0', '--server-credential', 'image-layout-credential-0123456789'], {
      env: { PATH: process.env.PATH, ...image.env, CAIRN_DATA_DIR: data },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const exited = new Promise<number | null>((r) => child.once('exit', r));
    const address = await new Promise<string>((done, fail) => {
      const lines: string[] = [];
      createInterface({ input: child.stderr! }).on('line', (l) => {
        lines.push(l);
        const rec = JSON.parse(l) as { message: string; address?: string };
        if (rec.message === 'listening') done(rec.address!);
      });
      void exited.then((code) => fail(new Error(`master from the image layout exited ${code}: ${lines.join('\n')}`)));
    });
    expect(existsSync(data)).toBe(true);
    const h = cairn(['health', '--addr', address], bin);
    expect(h.stdout.trim()).toBe('SERVING');
    expect(h.status).toBe(0);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  }, 60_000);
});

describe('deploy/docker-compose.yml', () => {
  it('runs one master (expectShards: 3) and three shards, plus a fourth under the scale-out profile', () => {
    const active = cairnServices.filter((s) => !compose.services[s]!.profiles);
    expect(active.map(roleOf).sort()).toEqual(['master', 'shard', 'shard', 'shard']);
    const scaleOut = cairnServices.filter((s) => compose.services[s]!.profiles?.includes('scale-out'));
    expect(scaleOut).toEqual(['shard4']);
    expect(roleOf('shard4')).toBe('shard');
    const masterFile = compose.services.master!.volumes!.map(parseVolume).find((v) => v.target === env('master').CAIRN_CONFIG)!;
    expect(YAML.parse(readFileSync(join(DEPLOY, masterFile.source), 'utf8')).expectShards).toBe(3);
  });

  it('names only real commands and config keys, and its config files and environment pass validation', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cairn-deploy-'));
    cleanups.push(dir);
    const dc = new LocalCompose(dir, { CAIRN_CLIENTS: `admin:${hashPassword('pw')}:admin` }, { server_credential: 'x'.repeat(40) });
    await dc.allocatePorts();
    for (const s of cairnServices) {
      const role = roleOf(s);
      expect(compose.services[s]!.command).toEqual([role]);
      const r = cairn([role, '--help']);
      expect(r.status).toBe(0);
      const known = new Set(['CAIRN_CONFIG', ...configKeys(role).map(envName)]);
      for (const k of Object.keys(env(s))) expect([s, k, known.has(k)]).toEqual([s, k, true]);
      // The whole configuration as the container sees it (paths and ports remapped) validates.
      const c = loadConfig(role, { flags: {}, env: dc.env(s), cwd: dir });
      expect(c.metricsListen).toBeDefined();
      expect(c.serverCredential).toBe('x'.repeat(40));
      expect(c.dataDir.startsWith(join(dir, 'volumes'))).toBe(true);
    }
    // The mounted config files exist and hold only keys of their role.
    for (const s of cairnServices) {
      for (const v of compose.services[s]!.volumes!.map(parseVolume).filter((x) => x.source.startsWith('.'))) {
        expect(existsSync(join(DEPLOY, v.source))).toBe(true);
        expect(v.readOnly).toBe(true);
        if (v.target === env(s).CAIRN_CONFIG) {
          expect(() => loadConfig(roleOf(s), { flags: { config: join(DEPLOY, v.source) }, env: { CAIRN_SERVER_CREDENTIAL: 'y'.repeat(20) } })).not.toThrow();
        }
      }
    }
  });

  it('health checks run `cairn health --addr` against the port each service listens on', () => {
    const h = cairn(['health', '--help']);
    expect(h.status).toBe(0);
    for (const s of cairnServices) {
      const test = compose.services[s]!.healthcheck!.test;
      expect(test.slice(0, 4)).toEqual(['CMD', 'cairn', 'health', '--addr']);
      expect(image.links.has(test[1]!)).toBe(true);
      const addr = test[4]!;
      expect(parseHostPort(addr).host).toBe('127.0.0.1');
      expect(portOf(addr)).toBe(portOf(env(s).CAIRN_LISTEN!));
    }
  });

  it('each shard advertises its own service name and listen port, and dials the master by its service name', () => {
    const masterPort = portOf(env('master').CAIRN_LISTEN!);
    for (const s of cairnServices.filter((x) => roleOf(x) === 'shard')) {
      const adv = parseHostPort(env(s).CAIRN_ADVERTISE!);
      expect(adv).toEqual({ host: s, port: portOf(env(s).CAIRN_LISTEN!) });
      expect(env(s).CAIRN_MASTER).toBe(`master:${masterPort}`);
      expect(compose.services[s]!.depends_on?.master?.condition).toBe('service_healthy');
    }
    const listens = cairnServices.map((s) => portOf(env(s).CAIRN_LISTEN!));
    expect(new Set(listens).size).toBe(listens.length);
  });

  it('publishes the master port and every metrics port; each process has its own named volume; restart policies are set', () => {
    const published = (s: string) => (compose.services[s]!.ports ?? []).map((p) => p.split(':').map(Number) as [number, number]);
    const masterPort = portOf(env('master').CAIRN_LISTEN!);
    expect(published('master')).toContainEqual([masterPort, masterPort]);
    const hostPorts: number[] = [];
    const volumes: string[] = [];
    for (const s of cairnServices) {
      const metrics = portOf(env(s).CAIRN_METRICS_LISTEN!);
      const p = published(s).find(([, container]) => container === metrics);
      expect([s, p !== undefined]).toEqual([s, true]);
      hostPorts.push(...published(s).map(([host]) => host));
      const named = compose.services[s]!.volumes!.map(parseVolume).filter((v) => !v.source.startsWith('.') && !v.source.startsWith('/'));
      expect(named).toHaveLength(1);
      expect(named[0]!.target).toBe(env(s).CAIRN_DATA_DIR ?? image.env.CAIRN_DATA_DIR);
      expect(Object.keys(compose.volumes ?? {})).toContain(named[0]!.source);
      volumes.push(named[0]!.source);
      expect(['always', 'unless-stopped', 'on-failure']).toContain(compose.services[s]!.restart);
    }
    expect(new Set(hostPorts).size).toBe(hostPorts.length);
    expect(new Set(volumes).size).toBe(volumes.length);
  });

  it('credentials come from a secret file and the environment, never from the compose file itself', () => {
    const raw = readFileSync(join(DEPLOY, 'docker-compose.yml'), 'utf8');
    expect(raw).not.toMatch(/\$scrypt\$/);
    for (const s of cairnServices) {
      expect(env(s).CAIRN_SERVER_CREDENTIAL).toBeUndefined();
      const secret = compose.services[s]!.secrets![0]!;
      expect(env(s).CAIRN_SERVER_CREDENTIAL_FILE).toBe(`/run/secrets/${secret}`);
      expect(compose.secrets![secret]!.file).toMatch(/^\.\/secrets\//);
    }
    expect(env('master').CAIRN_CLIENTS).toMatch(/^\$\{CAIRN_CLIENTS:\?/);
    expect(readFileSync(join(DEPLOY, '.gitignore'), 'utf8')).toMatch(/^secrets\/$/m);
  });

  it('prometheus.yml scrapes the metrics port of every Cairn service, the HA file\'s second master included', () => {
    const prom = YAML.parse(readFileSync(join(DEPLOY, 'prometheus.yml'), 'utf8')) as { scrape_configs: Array<{ static_configs: Array<{ targets: string[] }> }> };
    const targets = prom.scrape_configs.flatMap((j) => j.static_configs.flatMap((c) => c.targets));
    const ha = loadComposeFiles([COMPOSE_FILE, COMPOSE_HA_FILE]);
    const haCairn = Object.keys(ha.services).filter((x) => ha.services[x]!.build?.dockerfile === 'deploy/Dockerfile');
    expect(haCairn).toEqual(expect.arrayContaining([...cairnServices, 'master2']));
    const metricsOf = (x: string) => portOf((ha.services[x]!.environment as Record<string, string>).CAIRN_METRICS_LISTEN!);
    expect(targets.sort()).toEqual(haCairn.map((x) => `${x}:${metricsOf(x)}`).sort());
    const mount = compose.services.prometheus!.volumes!.map(parseVolume)[0]!;
    expect(existsSync(join(DEPLOY, mount.source))).toBe(true);
  });

  it('the README walks through it', () => {
    const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Run with docker compose'));
    expect(readme).toContain('## Run with docker compose');
    for (const needle of ['docker build -f deploy/Dockerfile', 'secrets/server-credential', 'CAIRN_CLIENTS', 'docker compose up -d', 'docker compose --profile scale-out up -d shard4', 'cairn ctl rebalance --yes', 'cairn health']) {
      expect([needle, section.includes(needle)]).toEqual([needle, true]);
    }
  });

  it('docker-compose.ha.yml adds etcd and a second master on etcd, and gives every shard both masters', async () => {
    const ha = loadComposeFiles([COMPOSE_FILE, COMPOSE_HA_FILE]);
    const haEnv = (s: string) => ha.services[s]!.environment as Record<string, string>;
    const haCairn = Object.keys(ha.services).filter((s) => ha.services[s]!.build?.dockerfile === 'deploy/Dockerfile');
    expect(haCairn.filter((s) => ha.services[s]!.command![0] === 'master').sort()).toEqual(['master', 'master2']);
    expect(ha.services.etcd!.image).toMatch(/^(quay\.io\/coreos|gcr\.io\/etcd-development)\/etcd:v3\.5\.\d+$/);
    const dir = await mkdtemp(join(tmpdir(), 'cairn-deploy-ha-'));
    cleanups.push(dir);
    const dc = new LocalCompose(dir, { CAIRN_CLIENTS: `admin:${hashPassword('pw')}:admin` }, { server_credential: 'x'.repeat(40) }, [COMPOSE_FILE, COMPOSE_HA_FILE]);
    await dc.allocatePorts();
    const etcdUrl = `http://127.0.0.1:${dc.port('etcd', 2379)}`;
    for (const m of ['master', 'master2']) {
      // Each master's whole configuration, as its container sees it, validates: on etcd, the replication the base file keeps.
      const c = loadConfig('master', { flags: {}, env: dc.env(m), cwd: dir });
      expect([m, c.metaStore, c.etcdEndpoints, c.replicationFactor, c.expectShards]).toEqual([m, 'etcd', [etcdUrl], 3, 3]);
      expect(ha.services[m]!.depends_on?.etcd?.condition).toBe('service_healthy');
      expect(parseHostPort(haEnv(m).CAIRN_ADVERTISE!)).toEqual({ host: m, port: portOf(haEnv(m).CAIRN_LISTEN!) });
      expect(ha.services[m]!.healthcheck!.test).toEqual(['CMD', 'cairn', 'health', '--addr', `127.0.0.1:${portOf(haEnv(m).CAIRN_LISTEN!)}`]);
    }
    const masters = ['master', 'master2'].map((m) => haEnv(m).CAIRN_ADVERTISE).join(',');
    for (const s of haCairn.filter((x) => ha.services[x]!.command![0] === 'shard')) {
      expect([s, haEnv(s).CAIRN_MASTER]).toEqual([s, masters]);
      expect(loadConfig('shard', { flags: {}, env: dc.env(s), cwd: dir }).master).toEqual(['master', 'master2'].map((m) => `127.0.0.1:${dc.port(m, 7000)}`));
    }
    // The base file's services keep their other settings; the published host ports and named volumes stay distinct.
    expect(haEnv('shard1').CAIRN_ADVERTISE).toBe(env('shard1').CAIRN_ADVERTISE);
    expect(ha.services.shard4!.profiles).toEqual(['scale-out']);
    const hostPorts = Object.values(ha.services).flatMap((s) => (s.ports ?? []).map((p) => p.split(':')[0]));
    expect(new Set(hostPorts).size).toBe(hostPorts.length);
    const named = Object.values(ha.services).flatMap((s) => (s.volumes ?? []).map(parseVolume).filter((v) => !v.source.startsWith('.')).map((v) => v.source));
    expect(new Set(named).size).toBe(named.length);
    for (const v of named) expect(Object.keys(ha.volumes ?? {})).toContain(v);
  });

  it('passes `docker compose config` where the compose plugin is installed', () => {
    const v = spawnSync('docker', ['compose', 'version'], { encoding: 'utf8' });
    if (v.status !== 0) return; // no compose plugin here: the checks above stand in for it
    for (const files of [[COMPOSE_FILE], [COMPOSE_FILE, COMPOSE_HA_FILE]]) {
      const r = spawnSync('docker', ['compose', ...files.flatMap((f) => ['-f', f]), 'config', '-q'], {
        encoding: 'utf8',
        env: { ...process.env, CAIRN_CLIENTS: 'admin:x:admin' },
      });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
    }
  });
});
