/**
 * A real etcd for tests: N members (1 by default) on 127.0.0.1 free ports,
 * each with its own data directory under one mkdtemp run directory. A member
 * can be stopped (SIGTERM), killed (SIGKILL), paused (SIGSTOP) and resumed
 * (SIGCONT), and restarted on the same ports and data.
 *
 * `etcdMissing()` says why etcd cannot run here (suites skip, saying so,
 * unless CI=true, where a missing etcd is a failure).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { freePorts } from './compose.js';

/** The etcd binary: $CAIRN_TEST_ETCD, or `etcd` on the PATH. */
export const ETCD_BIN = process.env.CAIRN_TEST_ETCD || 'etcd';

/** Why etcd cannot run here, or undefined when it can. */
export function etcdMissing(): string | undefined {
  const r = spawnSync(ETCD_BIN, ['--version'], { encoding: 'utf8' });
  if (r.error) return `${ETCD_BIN} cannot be run (${r.error.message}); install etcd (apt-get install etcd-server) or set CAIRN_TEST_ETCD`;
  if (r.status !== 0) return `${ETCD_BIN} --version exited with ${r.status}: ${r.stderr.trim()}`;
  return undefined;
}

/**
 * Why a suite that needs etcd skips here, or undefined when it runs. With
 * CI=true it always runs: a CI machine without etcd fails, not skips.
 */
export function etcdSkipReason(): string | undefined {
  return process.env.CI === 'true' ? undefined : etcdMissing();
}

/** True once a gRPC client (as the stores use) reads from this member alone: /health can answer a moment before. */
export async function answersGrpc(url: string): Promise<boolean> {
  const client = new Etcd3({ hosts: [url], dialTimeout: 1000 });
  try {
    await client.get('health-probe').options({ deadline: Date.now() + 1000 }).exec();
    return true;
  } catch {
    return false;
  } finally {
    client.close();
  }
}

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  child?: ChildProcess;
  exited?: Promise<void>;
  paused: boolean;
}

export class EtcdCluster {
  private constructor(
    readonly dir: string,
    readonly members: EtcdMember[],
  ) {}

  /**
   * Starts `size` members as one new cluster and waits until each answers
   * /health. `host`: the address they listen on (default 127.0.0.1; the
   * nemesis gives its network lab's, which processes in other namespaces reach).
   */
  static async start(size = 1, o: { host?: string } = {}): Promise<EtcdCluster> {
    const host = o.host ?? '127.0.0.1';
    const missing = etcdMissing();
    if (missing) throw new Error(missing);
    // A member that exits at once lost a port to another process between our pick and its bind (seen on a busy
    // CI machine): the whole cluster starts again on new ports, once.
    for (let attempt = 1; ; attempt++) {
      const dir = await mkdtemp(join(tmpdir(), 'cairn-etcd-'));
      const ports = await freePorts(2 * size);
      const members: EtcdMember[] = Array.from({ length: size }, (_, i) => ({
        name: `etcd${i}`,
        clientUrl: `http://${host}:${ports[2 * i]}`,
        peerUrl: `http://${host}:${ports[2 * i + 1]}`,
        dataDir: join(dir, `etcd${i}`),
        paused: false,
      }));
      const cluster = new EtcdCluster(dir, members);
      for (let i = 0; i < size; i++) cluster.launch(i);
      try {
        await Promise.all(members.map((_, i) => cluster.waitHealthy(i)));
        return cluster;
      } catch (err) {
        await cluster.close().catch(() => undefined);
        if (attempt >= 2 || !/it exited/.test((err as Error).message)) throw err;
      }
    }
  }

  /** The client URLs, for an etcd client's `hosts`. */
  get endpoints(): string[] {
    return this.members.map((m) => m.clientUrl);
  }

  private launch(i: number): void {
    const m = this.members[i]!;
    const initialCluster = this.members.map((p) => `${p.name}=${p.peerUrl}`).join(',');
    const args = [
      `--name=${m.name}`,
      `--data-dir=${m.dataDir}`,
      `--listen-client-urls=${m.clientUrl}`,
      `--advertise-client-urls=${m.clientUrl}`,
      `--listen-peer-urls=${m.peerUrl}`,
      `--initial-advertise-peer-urls=${m.peerUrl}`,
      `--initial-cluster=${initialCluster}`,
      '--initial-cluster-state=new',
      `--initial-cluster-token=${this.dir}`,
      '--logger=zap',
      '--log-level=warn',
    ];
    const child = spawn(ETCD_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const log = createWriteStream(join(this.dir, `${m.name}.log`), { flags: 'a' });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    m.child = child;
    m.paused = false;
    m.exited = new Promise((done) => {
      child.once('exit', () => done());
      child.once('error', () => done());
    });
  }

  /** Resolves once the member answers its /health endpoint; fails after `timeoutMs` or if it exits. */
  async waitHealthy(i: number, timeoutMs = 30_000): Promise<void> {
    const m = this.members[i]!;
    let exited = false;
    void m.exited?.then(() => (exited = true));
    for (const until = Date.now() + timeoutMs; Date.now() < until && !exited; ) {
      try {
        const r = await fetch(`${m.clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
        if (r.ok && ((await r.json()) as { health?: string }).health === 'true' && (await answersGrpc(m.clientUrl))) return;
      } catch {
        // not listening yet, or no leader yet
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`etcd member ${m.name} did not become healthy (${exited ? 'it exited' : `within ${timeoutMs} ms`}); see ${join(this.dir, `${m.name}.log`)}`);
  }

  pause(i = 0): void {
    this.members[i]!.child?.kill('SIGSTOP');
    this.members[i]!.paused = true;
  }

  resume(i = 0): void {
    this.members[i]!.child?.kill('SIGCONT');
    this.members[i]!.paused = false;
  }

  /** Ends the member with `signal` and waits for it to exit. */
  async stop(i = 0, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const m = this.members[i]!;
    if (!m.child || m.child.exitCode !== null || m.child.signalCode !== null) return;
    if (m.paused) this.resume(i);
    m.child.kill(signal);
    await m.exited;
  }

  kill(i = 0): Promise<void> {
    return this.stop(i, 'SIGKILL');
  }

  /** Starts a stopped member again on the same ports and data directory. */
  async restart(i = 0): Promise<void> {
    await this.stop(i);
    this.launch(i);
    await this.waitHealthy(i);
  }

  /** Kills every member and removes the run directory. */
  async close(): Promise<void> {
    await Promise.all(this.members.map((_, i) => this.kill(i)));
    await rm(this.dir, { recursive: true, force: true });
  }
}
