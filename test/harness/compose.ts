/**
 * deploy/ without Docker: reads deploy/Dockerfile and deploy/docker-compose.yml
 * and runs the compose services as local processes, with the command,
 * environment, mounted config files and health checks declared there.
 *
 * The only changes are what a host without containers needs:
 * - `service:port`, `0.0.0.0:port` and `127.0.0.1:port` (inside a service)
 *   become distinct loopback ports, one per (service, container port);
 * - container paths become host paths: named volumes → a temp dir per volume,
 *   bind mounts → the mounted file (its text remapped the same way), compose
 *   secrets → files the test writes, the image's WORKDIR → this checkout;
 * - the image's `cairn` (a symlink in the Dockerfile) → `node bin/cairn.js`.
 * Compose variables (`${VAR:?msg}`, `${VAR:-default}`) are interpolated from the
 * environment the test gives, as `docker compose` does from the shell or .env.
 *
 * Several files (`docker compose -f a.yml -f b.yml`) merge as compose merges
 * them (`mergeCompose`). A service whose image is etcd runs its command with
 * the local etcd binary (test/harness/etcd.ts), and its `etcdctl endpoint
 * health` check is made with the etcd client, since Debian's etcd-server
 * ships no etcdctl.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import YAML from 'yaml';
import { answersGrpc, ETCD_BIN } from './etcd.js';

export const REPO = resolve('.');
export const DEPLOY = join(REPO, 'deploy');
export const COMPOSE_FILE = join(DEPLOY, 'docker-compose.yml');
/** Standby masters on etcd, layered over COMPOSE_FILE with `-f`. */
export const COMPOSE_HA_FILE = join(DEPLOY, 'docker-compose.ha.yml');
export const DOCKERFILE = join(DEPLOY, 'Dockerfile');

// ---------------------------------------------------------------------------
// The compose file

export interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string | number | boolean | null>;
  volumes?: string[];
  ports?: string[];
  secrets?: string[];
  profiles?: string[];
  restart?: string;
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[]; interval?: string; timeout?: string; retries?: number };
  stop_grace_period?: string;
}

export interface ComposeFile {
  name?: string;
  services: Record<string, ComposeService>;
  secrets?: Record<string, { file: string }>;
  volumes?: Record<string, unknown>;
}

/** The compose file as docker compose sees it before interpolation (YAML merge keys resolved). */
export function loadCompose(path = COMPOSE_FILE): ComposeFile {
  return YAML.parse(readFileSync(path, 'utf8'), { merge: true }) as ComposeFile;
}

/** The container path a `volumes` entry mounts at: what compose merges volumes by. */
function volumeTarget(v: unknown): string {
  return typeof v === 'string' ? parseVolume(v).target : String((v as { target?: string }).target);
}

/**
 * `docker compose -f base -f override`: mappings merge key by key (environment,
 * depends_on, healthcheck, …); `volumes` merge by container path and `ports`
 * and `secrets` add up; any other value (command, entrypoint, profiles, image,
 * healthcheck.test) is replaced by the later file's.
 */
export function mergeCompose(base: unknown, over: unknown, key = ''): unknown {
  if (over === undefined) return base;
  if (base === undefined || base === null) return over;
  if (Array.isArray(base) && Array.isArray(over)) {
    if (key === 'volumes') {
      const out = new Map<string, unknown>(base.map((v) => [volumeTarget(v), v]));
      for (const v of over) out.set(volumeTarget(v), v);
      return [...out.values()];
    }
    if (key === 'ports' || key === 'secrets') return [...new Set([...base, ...over])];
    return over;
  }
  if (typeof base === 'object' && typeof over === 'object' && over !== null && !Array.isArray(base) && !Array.isArray(over)) {
    const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
    for (const [k, v] of Object.entries(over as Record<string, unknown>)) out[k] = mergeCompose(out[k], v, k);
    return out;
  }
  return over;
}

/** Several compose files, merged in order as `docker compose -f a -f b` does. */
export function loadComposeFiles(paths: string[]): ComposeFile {
  return paths.map((p) => loadCompose(p)).reduce((a, b) => mergeCompose(a, b) as ComposeFile);
}

/** Compose variable interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}. */
export function interpolate(s: string, env: Record<string, string | undefined>): string {
  return s.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (m, name, op, arg, bare) => {
    if (m === '$$') return '$';
    if (bare) return env[bare] ?? '';
    const v = env[name];
    const unsetOrEmpty = v === undefined || v === '';
    switch (op) {
      case undefined:
        return v ?? '';
      case ':-':
        return unsetOrEmpty ? arg : v!;
      case '-':
        return v === undefined ? arg : v;
      case ':?':
        if (unsetOrEmpty) throw new Error(`required variable ${name} is missing a value: ${arg}`);
        return v!;
      case '?':
        if (v === undefined) throw new Error(`required variable ${name} is missing a value: ${arg}`);
        return v;
      case ':+':
        return unsetOrEmpty ? '' : arg;
      default:
        return m;
    }
  });
}

/** `a:b[:ro]` → { source: a, target: b }. */
export function parseVolume(v: string): { source: string; target: string; readOnly: boolean } {
  const [source, target, mode] = v.split(':');
  return { source: source!, target: target!, readOnly: mode === 'ro' };
}

// ---------------------------------------------------------------------------
// The Dockerfile

export interface Instruction {
  op: string;
  args: string;
}

export interface Stage {
  from: string;
  name?: string;
  instructions: Instruction[];
}

export function parseDockerfile(path = DOCKERFILE): Stage[] {
  const lines = readFileSync(path, 'utf8').split('\n');
  const logical: string[] = [];
  let cur = '';
  for (const raw of lines) {
    if (/^\s*#/.test(raw) && cur === '') continue;
    if (/^\s*#/.test(raw)) continue; // comments inside a continued instruction
    const line = raw.replace(/\s+$/, '');
    if (line.endsWith('\\')) {
      cur += line.slice(0, -1) + ' ';
      continue;
    }
    cur += line;
    if (cur.trim()) logical.push(cur.trim());
    cur = '';
  }
  const stages: Stage[] = [];
  for (const l of logical) {
    const m = /^(\w+)\s+(.*)$/s.exec(l);
    if (!m) continue;
    const op = m[1]!.toUpperCase();
    const args = m[2]!.trim();
    if (op === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?/i.exec(args)!;
      stages.push({ from: f[1]!, name: f[2], instructions: [] });
    } else {
      stages.at(-1)?.instructions.push({ op, args });
    }
  }
  return stages;
}

/** The JSON (exec) form of ENTRYPOINT/CMD. */
export function execForm(args: string): string[] {
  const v = JSON.parse(args) as unknown;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new Error(`expected the exec form ["..."], got ${args}`);
  return v;
}

/** What the runtime stage sets up: workdir, env, entrypoint, and the commands it links onto PATH. */
export function runtimeImage(stages = parseDockerfile()) {
  const stage = stages.at(-1)!;
  const get = (op: string) => stage.instructions.filter((i) => i.op === op);
  const workdir = get('WORKDIR').at(-1)?.args ?? '/';
  const env: Record<string, string> = {};
  for (const e of get('ENV')) for (const m of e.args.matchAll(/(\w+)=(\S+)/g)) env[m[1]!] = m[2]!;
  const links = new Map<string, string>();
  for (const r of get('RUN')) for (const m of r.args.matchAll(/ln\s+-s\s+(\S+)\s+(\S+)/g)) links.set(m[2]!.split('/').at(-1)!, m[1]!);
  const entrypoint = get('ENTRYPOINT').length ? execForm(get('ENTRYPOINT').at(-1)!.args) : [];
  const user = get('USER').at(-1)?.args;
  const volumes = get('VOLUME').flatMap((v) => (v.args.startsWith('[') ? execForm(v.args) : v.args.split(/\s+/)));
  const expose = get('EXPOSE').flatMap((e) => e.args.split(/\s+/).map((p) => Number(p.split('/')[0])));
  return { stage, workdir, env, links, entrypoint, user, volumes, expose };
}

// ---------------------------------------------------------------------------
// Running the services as processes

/** `n` distinct free ports: each is held until all are found (ports freed one at a time may come back twice). */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<ReturnType<typeof createServer>>((done, fail) => {
          const s = createServer();
          s.once('error', fail);
          s.listen(0, '127.0.0.1', () => done(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((done) => s.close(done))));
  return ports;
}

export async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => done(port));
    });
  });
}

export interface LocalProc {
  service: string;
  argv: string[];
  env: Record<string, string>;
  child: ChildProcess;
  logs: string[];
  exited: Promise<number | null>;
}

/**
 * Every exec (each health check) writes the mounted files again; a process
 * starting meanwhile must never read one truncated, so each is written beside
 * and renamed into place.
 */
function writeAtomically(path: string, text: string, mode = 0o644): void {
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  writeFileSync(tmp, text, { mode });
  renameSync(tmp, path);
}

const LOOPBACK_HOSTS = new Set(['0.0.0.0', '127.0.0.1', 'localhost', '[::]', '::']);

export class LocalCompose {
  readonly compose: ComposeFile;
  readonly image = runtimeImage();
  private readonly ports = new Map<string, number>();
  private readonly procs = new Map<string, LocalProc>();
  /** Every remapped value the test can look at: `service:port` → loopback port. */
  readonly portMap = this.ports;

  constructor(
    /** Temp dir for volumes, secrets and remapped config files. */
    readonly dir: string,
    /** The shell / .env environment compose would interpolate from. */
    readonly vars: Record<string, string | undefined>,
    /** Contents of each compose secret, by secret name (the files the operator creates). */
    readonly secrets: Record<string, string>,
    /** The compose files, as `-f` gives them (merged in order). */
    readonly files: string[] = [COMPOSE_FILE],
  ) {
    this.compose = loadComposeFiles(files);
  }

  get serviceNames(): string[] {
    return Object.keys(this.compose.services);
  }

  service(name: string): ComposeService {
    const s = this.compose.services[name];
    if (!s) throw new Error(`no service ${name} in ${this.files.join(' + ')}`);
    return s;
  }

  /** Services that run the Cairn image (built from deploy/Dockerfile). */
  cairnServices(): string[] {
    return this.serviceNames.filter((n) => this.service(n).build?.dockerfile === 'deploy/Dockerfile');
  }

  /** Services that run the etcd image (the official quay.io/coreos/etcd or gcr.io/etcd-development/etcd). */
  etcdServices(): string[] {
    return this.serviceNames.filter((n) => /(^|\/)etcd(:|$)/.test(this.service(n).image ?? ''));
  }

  /** Loopback port standing for `service`'s container port. Allocated up front by `allocatePorts`. */
  port(service: string, containerPort: number): number {
    const p = this.ports.get(`${service}:${containerPort}`);
    if (p === undefined) throw new Error(`no port allocated for ${service}:${containerPort}`);
    return p;
  }

  /** Finds every (service, port) the compose file mentions and gives each a free loopback port. */
  async allocatePorts(): Promise<void> {
    const names = new Set(this.serviceNames);
    const want = new Set<string>();
    for (const name of [...this.cairnServices(), ...this.etcdServices()]) {
      const s = this.service(name);
      const texts = [...Object.values(s.environment ?? {}).map(String), ...(s.healthcheck?.test ?? []), ...(s.command ?? [])];
      for (const v of s.volumes ?? []) {
        const { source } = parseVolume(v);
        if (source.startsWith('.')) texts.push(readFileSync(resolve(DEPLOY, source), 'utf8'));
      }
      for (const t of texts) {
        for (const m of t.matchAll(/(\[[^\]]*\]|[A-Za-z0-9_.-]+):(\d{2,5})\b/g)) {
          const host = m[1]!;
          if (names.has(host)) want.add(`${host}:${m[2]}`);
          else if (LOOPBACK_HOSTS.has(host)) want.add(`${name}:${m[2]}`);
        }
      }
    }
    for (const k of want) this.ports.set(k, await freePort());
  }

  /** Container paths of `service` → host paths. */
  private mounts(service: string): Array<[string, string]> {
    const s = this.service(service);
    const out: Array<[string, string]> = [];
    for (const v of s.volumes ?? []) {
      const { source, target } = parseVolume(v);
      if (source.startsWith('.') || source.startsWith('/')) {
        const host = resolve(DEPLOY, source);
        const copy = join(this.dir, 'mounts', service, target.replace(/\//g, '_'));
        mkdirSync(join(this.dir, 'mounts', service), { recursive: true });
        writeAtomically(copy, this.remapText(service, readFileSync(host, 'utf8')));
        out.push([target, copy]);
      } else {
        const host = join(this.dir, 'volumes', source);
        mkdirSync(host, { recursive: true });
        out.push([target, host]);
      }
    }
    for (const name of s.secrets ?? []) {
      const host = join(this.dir, 'secrets', name);
      mkdirSync(join(this.dir, 'secrets'), { recursive: true });
      if (this.secrets[name] === undefined) throw new Error(`the test gives no content for compose secret ${name}`);
      writeAtomically(host, this.secrets[name]!, 0o600);
      out.push([`/run/secrets/${name}`, host]);
    }
    out.push([this.image.workdir, REPO]);
    return out.sort((a, b) => b[0].length - a[0].length);
  }

  /** Addresses only: `svc:port` / `0.0.0.0:port` → `127.0.0.1:<allocated>`. */
  remapText(service: string, text: string): string {
    const names = new Set(this.serviceNames);
    return text.replace(/(\[[^\]]*\]|[A-Za-z0-9_.-]+):(\d{2,5})\b/g, (m, host: string, port: string) => {
      if (names.has(host)) return `127.0.0.1:${this.port(host, Number(port))}`;
      if (LOOPBACK_HOSTS.has(host)) return `127.0.0.1:${this.port(service, Number(port))}`;
      return m;
    });
  }

  /** Addresses and container paths in one value. */
  remapValue(service: string, value: string, mounts = this.mounts(service)): string {
    // `--flag=/container/path` (etcd's flags): the path after the `=`.
    const flag = /^(--[A-Za-z0-9-]+=)(\/.*)$/.exec(value);
    if (flag) return flag[1] + this.remapValue(service, flag[2]!, mounts);
    let v = this.remapText(service, value);
    for (const [container, host] of mounts) {
      if (v === container) return host;
      if (v.startsWith(container + '/')) return host + v.slice(container.length);
    }
    return v;
  }

  /** The argv for a command run in `service`'s container: `cairn` → node bin/cairn.js. */
  argv(service: string, cmd: string[], mounts = this.mounts(service)): string[] {
    const [exe, ...rest] = cmd.map((a) => this.remapValue(service, a, mounts));
    if (this.etcdServices().includes(service)) {
      // The etcd image has etcd on its PATH (/usr/local/bin/etcd): here, the installed binary.
      if (exe === 'etcd' || exe === '/usr/local/bin/etcd') return [ETCD_BIN, ...rest];
      throw new Error(`${service}: cannot run "${exe}" without a container`);
    }
    const link = this.image.links.get(exe!);
    if (link) return [process.execPath, this.remapValue(service, link, mounts), ...rest];
    if (exe === 'node') return [process.execPath, ...rest];
    throw new Error(`${service}: cannot run "${exe}" without a container`);
  }

  /** The environment a container of `service` gets: the image's ENV, then the service's (interpolated, remapped). */
  env(service: string, mounts = this.mounts(service)): Record<string, string> {
    const out: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: this.dir };
    // The Cairn image's ENV is for services of that image only.
    if (this.cairnServices().includes(service)) for (const [k, v] of Object.entries(this.image.env)) out[k] = this.remapValue(service, v, mounts);
    for (const [k, v] of Object.entries(this.service(service).environment ?? {})) {
      out[k] = this.remapValue(service, interpolate(String(v ?? ''), this.vars), mounts);
    }
    return out;
  }

  /** `docker compose up -d <service>`: starts the process (entrypoint + command). */
  up(service: string): LocalProc {
    const s = this.service(service);
    const mounts = this.mounts(service);
    const entrypoint = s.entrypoint ?? (this.cairnServices().includes(service) ? this.image.entrypoint : []);
    const argv = this.argv(service, [...entrypoint, ...(s.command ?? [])], mounts);
    const env = this.env(service, mounts);
    const child = spawn(argv[0]!, argv.slice(1), { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const logs: string[] = [];
    createInterface({ input: child.stderr! }).on('line', (l) => logs.push(l));
    createInterface({ input: child.stdout! }).on('line', (l) => logs.push(l));
    const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
    const p: LocalProc = { service, argv, env, child, logs, exited };
    this.procs.set(service, p);
    return p;
  }

  proc(service: string): LocalProc {
    const p = this.procs.get(service);
    if (!p) throw new Error(`${service} is not running`);
    return p;
  }

  /** `docker compose exec <service> <cmd…>`: runs a command with the container's environment. */
  exec(service: string, cmd: string[], extraEnv: Record<string, string> = {}, timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const mounts = this.mounts(service);
    const argv = this.argv(service, cmd, mounts);
    const env = { ...this.env(service, mounts), ...extraEnv };
    return new Promise((done, fail) => {
      const child = spawn(argv[0]!, argv.slice(1), { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      const t = setTimeout(() => {
        child.kill('SIGKILL');
        fail(new Error(`${service}: ${cmd.join(' ')} timed out; stderr: ${stderr}`));
      }, timeoutMs);
      child.on('exit', (code) => {
        clearTimeout(t);
        done({ code, stdout, stderr });
      });
    });
  }

  /** Runs the service's compose health check (CMD form) until it passes, as `condition: service_healthy` waits. */
  async waitHealthy(service: string, timeoutMs = 60_000): Promise<void> {
    const hc = this.service(service).healthcheck;
    if (!hc) throw new Error(`${service} has no healthcheck`);
    const [form, ...cmd] = hc.test;
    if (form !== 'CMD') throw new Error(`${service}: healthcheck must use the exec form ["CMD", …], got ${form}`);
    const until = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const p = this.procs.get(service);
      if (p && p.child.exitCode !== null) throw new Error(`${service} exited with ${p.child.exitCode}; logs:\n${p.logs.slice(-10).join('\n')}`);
      const r = cmd[0] === 'etcdctl' ? await this.etcdctlHealth(service, cmd) : await this.exec(service, cmd, {}, 30_000);
      if (r.code === 0) return;
      last = `${r.code}: ${r.stdout.trim()} ${r.stderr.trim()}`;
      if (Date.now() > until) throw new Error(`${service} not healthy after ${timeoutMs} ms (last check ${last}); logs:\n${p?.logs.slice(-10).join('\n')}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /**
   * `etcdctl [--endpoints=URL] endpoint health` (as an etcd image's health check
   * runs it): the endpoint answers /health and a read through gRPC, which is
   * what etcdctl's check does.
   */
  private async etcdctlHealth(service: string, cmd: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const args = cmd.slice(1).filter((a) => !a.startsWith('--endpoints='));
    if (args.join(' ') !== 'endpoint health') throw new Error(`${service}: only "etcdctl endpoint health" runs without a container, not ${cmd.join(' ')}`);
    const given = cmd.find((a) => a.startsWith('--endpoints='))?.slice('--endpoints='.length) ?? 'http://127.0.0.1:2379';
    const url = this.remapText(service, given);
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(5000) });
      const ok = r.ok && ((await r.json()) as { health?: string }).health === 'true' && (await answersGrpc(url));
      return ok ? { code: 0, stdout: `${url} is healthy`, stderr: '' } : { code: 1, stdout: '', stderr: `${url} is unhealthy` };
    } catch (err) {
      return { code: 1, stdout: '', stderr: `${url} is unhealthy: ${(err as Error).message}` };
    }
  }

  async stop(service: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const p = this.procs.get(service);
    if (!p) return null;
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill(signal);
    return p.exited;
  }

  async down(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await Promise.all([...this.procs.keys()].map((s) => this.stop(s, signal)));
  }
}
