/**
 * Network partitions for the nemesis, with Linux network namespaces.
 *
 * Layout: a hub namespace holds a bridge; every cluster process runs in a
 * namespace of its own with one veth on that bridge (10.213.N.x/24); the
 * test process (the clients) reaches the bridge through one more veth in the
 * namespace it runs in. Nothing on the host's own interfaces, routes or
 * sysctls changes.
 *
 * A partition between two processes is a silent drop in both directions:
 * each side gets a permanent neighbour entry that sends the other's IP to a
 * MAC nobody has, so packets leave and vanish (like a cut cable, not a
 * refused connection), while both keep talking to everyone else. Healing
 * deletes those entries; TCP's retransmissions then get through.
 *
 * Needs root (CAP_NET_ADMIN) and iproute2's `ip`. `probeNetns()` says why
 * not when it cannot be done; the caller prints that reason.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const exec = promisify(execFile);
const NOWHERE_MAC = '02:00:00:00:00:99';

async function ip(args: string[]): Promise<string> {
  const { stdout } = await exec('ip', args, { timeout: 10_000 });
  return stdout;
}

/** Whether partitions can be made here; `reason` says why not. */
export async function probeNetns(): Promise<{ ok: true } | { ok: false; reason: string }> {
  if (process.platform !== 'linux') return { ok: false, reason: `network namespaces need Linux (this is ${process.platform})` };
  const uid = process.getuid?.() ?? -1;
  if (uid !== 0) return { ok: false, reason: `not root (uid ${uid}): network namespaces and veth pairs need CAP_NET_ADMIN` };
  const name = `cairn-${process.pid}-probe`;
  try {
    await ip(['netns', 'add', name]);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') return { ok: false, reason: 'iproute2 `ip` is not installed' };
    return { ok: false, reason: `\`ip netns add\` failed: ${(e.stderr || e.message).trim()}` };
  }
  try {
    await ip(['-n', name, 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
    await ip(['-n', name, 'link', 'add', 'b0', 'type', 'bridge']);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    return { ok: false, reason: `veth pairs or bridges are not available: ${(e.stderr || e.message).trim()}` };
  } finally {
    await ip(['netns', 'del', name]).catch(() => undefined);
  }
  return { ok: true };
}

/** Deletes namespaces and links left by earlier runs of this harness whose process is gone. */
export async function cleanupStale(): Promise<void> {
  let list = '';
  try {
    list = await ip(['netns', 'list']);
  } catch {
    return;
  }
  for (const line of list.split('\n')) {
    const m = /^(cairn-(\d+)-\S+)/.exec(line.trim());
    if (!m) continue;
    const pid = Number(m[2]);
    // Ours only when a lab of this process is open; otherwise a reused pid's leftovers.
    if (pid === process.pid ? NetnsLab.open > 0 : alive(pid)) continue;
    await ip(['netns', 'del', m[1]!]).catch(() => undefined);
  }
  const links = await ip(['-o', 'link', 'show']).catch(() => '');
  for (const line of links.split('\n')) {
    const m = /^\d+:\s+(cn(\d+)r)[@:]/.exec(line);
    const pid = Number(m?.[2]);
    if (m && (pid === process.pid ? NetnsLab.open === 0 : !alive(pid))) await ip(['link', 'del', m[1]!]).catch(() => undefined);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export interface NetNode {
  name: string;
  ns: string;
  ip: string;
}

/** A bridge in its own namespace, and one namespace per cluster process. */
export class NetnsLab {
  /** Labs of this process not yet destroyed. */
  static open = 0;
  readonly nodes = new Map<string, NetNode>();
  private readonly hub: string;
  private readonly rootLink: string;
  private readonly cut = new Set<string>();
  private nextHost = 2;
  private destroyed = false;

  private constructor(
    private readonly tag: string,
    /** A 10.213.X /24 that no interface here uses yet, so parallel runs do not clash. */
    readonly subnet: string,
  ) {
    this.hub = `cairn-${tag}-hub`;
    this.rootLink = `cn${process.pid}r`;
  }

  /** Creates the hub and the veth the test process uses; call `addNode` for each process. */
  static async create(): Promise<NetnsLab> {
    await cleanupStale();
    const used = await ip(['-o', '-4', 'addr', 'show']).catch(() => '');
    let x = process.pid % 250;
    while (used.includes(`10.213.${x}.`)) x = (x + 1) % 250;
    const lab = new NetnsLab(String(process.pid), `10.213.${x}`);
    NetnsLab.open++;
    try {
      await ip(['netns', 'add', lab.hub]);
      await ip(['-n', lab.hub, 'link', 'add', 'br0', 'type', 'bridge']);
      await ip(['-n', lab.hub, 'link', 'set', 'br0', 'up']);
      await ip(['link', 'add', lab.rootLink, 'type', 'veth', 'peer', 'name', 'root', 'netns', lab.hub]);
      await ip(['addr', 'add', `${lab.subnet}.1/24`, 'dev', lab.rootLink]);
      await ip(['link', 'set', lab.rootLink, 'up']);
      await ip(['-n', lab.hub, 'link', 'set', 'root', 'master', 'br0']);
      await ip(['-n', lab.hub, 'link', 'set', 'root', 'up']);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  /** A namespace for one process, on the bridge, with its own IP. */
  async addNode(name: string): Promise<NetNode> {
    const host = this.nextHost++;
    const node: NetNode = { name, ns: `cairn-${this.tag}-${name}`, ip: `${this.subnet}.${host}` };
    const port = `p${host}`;
    await ip(['netns', 'add', node.ns]);
    await ip(['-n', node.ns, 'link', 'set', 'lo', 'up']);
    await ip(['-n', node.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port, 'netns', this.hub]);
    await ip(['-n', node.ns, 'addr', 'add', `${node.ip}/24`, 'dev', 'eth0']);
    await ip(['-n', node.ns, 'link', 'set', 'eth0', 'up']);
    await ip(['-n', this.hub, 'link', 'set', port, 'master', 'br0']);
    await ip(['-n', this.hub, 'link', 'set', port, 'up']);
    this.nodes.set(name, node);
    return node;
  }

  /** The command line that runs `argv` inside a node's namespace. */
  wrap(name: string, argv: string[]): string[] {
    const n = this.nodes.get(name);
    if (!n) throw new Error(`no namespace for ${name}`);
    return ['ip', 'netns', 'exec', n.ns, ...argv];
  }

  private pairKey(a: string, b: string): string {
    return [a, b].sort().join('|');
  }

  /** Silently drops every packet between a and b, both ways. */
  async partition(a: string, b: string): Promise<void> {
    const na = this.nodes.get(a)!;
    const nb = this.nodes.get(b)!;
    await ip(['-n', na.ns, 'neigh', 'replace', nb.ip, 'lladdr', NOWHERE_MAC, 'nud', 'permanent', 'dev', 'eth0']);
    await ip(['-n', nb.ns, 'neigh', 'replace', na.ip, 'lladdr', NOWHERE_MAC, 'nud', 'permanent', 'dev', 'eth0']);
    this.cut.add(this.pairKey(a, b));
  }

  async heal(a: string, b: string): Promise<void> {
    const na = this.nodes.get(a)!;
    const nb = this.nodes.get(b)!;
    await ip(['-n', na.ns, 'neigh', 'del', nb.ip, 'dev', 'eth0']).catch(() => undefined);
    await ip(['-n', nb.ns, 'neigh', 'del', na.ip, 'dev', 'eth0']).catch(() => undefined);
    this.cut.delete(this.pairKey(a, b));
  }

  async healAll(): Promise<void> {
    for (const k of [...this.cut]) {
      const [a, b] = k.split('|') as [string, string];
      await this.heal(a, b);
    }
  }

  /** Removes every namespace and link this lab made (processes inside must be gone first). */
  async destroy(): Promise<void> {
    if (!this.destroyed) NetnsLab.open--;
    this.destroyed = true;
    for (const n of this.nodes.values()) await ip(['netns', 'del', n.ns]).catch(() => undefined);
    this.nodes.clear();
    await ip(['link', 'del', this.rootLink]).catch(() => undefined);
    await ip(['netns', 'del', this.hub]).catch(() => undefined);
  }
}
