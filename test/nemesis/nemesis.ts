/**
 * The nemesis: faults injected on a schedule while the clients run.
 *
 * - kill-shard: SIGKILL a shard, restart it after a moment;
 * - pause-shard: SIGSTOP a shard, SIGCONT it after a moment (now and then
 *   after the clients' deadlines have passed, so writes end unknown and the
 *   ones in the socket land late);
 * - partition: cut a shard off from the master, both ways (netns.ts), then heal;
 * - kill-master: SIGKILL the master while a move is in flight, restart it
 *   (with standby masters on etcd, the leader: a standby takes over);
 * - rebalance / drain: start one (StartRebalance / DropServer) at random.
 *
 * With replication (`replication`), rebalances and drains move replicas
 * (a drain whose copies have nowhere to go is refused and skipped), and there
 * are more:
 * - lose-machine: kill -9 a shard, wipe its data directory, and start a fresh
 *   shard on a new empty directory in its place (the master rebuilds the lost
 *   copies on it once the old one has been down replicaDownTimeoutMs: those
 *   rebuilds are the moves the other faults then land in); only when every
 *   range has all its copies and two in-sync, so that one machine at a time
 *   is lost;
 * - pause-long: SIGSTOP the primary of a range for longer than the lease;
 * - partition (replicated): cut the primary of a range off from the master;
 * - partition-followers: cut the primary of a range off from its followers
 *   (one or all of them, and the learner a copy is being rebuilt on).
 * With standby masters (`standby`), partitions and kill-master aim at the
 * leader, and one more:
 * - pause-master: SIGSTOP the leader past its etcd lease, then SIGCONT.
 * On a replicated cluster a "move" is a copy being made (a range with a
 * learner: a rebuild, or a rebalance's or drain's copy): half the shard faults
 * hit the primary (the source) or the learner (the destination) of one when
 * there is one.
 *
 * Half of the shard faults first start a rebalance and wait for a move in
 * flight, then hit its source or its destination, so crashes land inside
 * moves in every role. One fault at a time; moves run in the background.
 */
import { rm } from 'node:fs/promises';
import type { CairnClient } from '../../services/client/client.js';
import type { MoveInfo } from '../../proto/gen/cairn/v1/admin.js';
import type { ProcessCluster, Server } from '../harness/procs.js';
import type { NetnsLab } from './netns.js';

export const FAULT_KINDS = ['kill-shard', 'pause-shard', 'partition', 'kill-master', 'rebalance', 'drain', 'lose-machine', 'pause-long', 'partition-followers', 'pause-master'] as const;
/** Kinds only a replicated cluster gets. */
export const REPLICATED_KINDS: readonly FaultKind[] = ['lose-machine', 'pause-long', 'partition-followers'];
/** Kinds only a cluster with standby masters (state in etcd) gets. */
export const STANDBY_KINDS: readonly FaultKind[] = ['pause-master'];
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultRecord {
  kind: FaultKind;
  atMs: number;
  detail: string;
}

export interface NemesisOptions {
  cluster: ProcessCluster;
  /** An SDK client logged in as admin. */
  admin: CairnClient;
  /** Present when partitions can be made. */
  net?: NetnsLab;
  random?: () => number;
  /** Pause between faults, ms. */
  intervalMs?: [number, number];
  log?: (line: string) => void;
  /** Kinds to leave out. */
  disable?: FaultKind[];
  /** A replicated cluster: the replicated fault kinds, without rebalance and drain. */
  replication?: { factor: number; leaseMs: number; replicaDownTimeoutMs?: number };
  /** Standby masters on etcd: kill-master and partitions aim at the leader, and pause-master pauses it past its etcd lease. */
  standby?: { leaseMs: number };
}

/**
 * The order of faults: shuffled decks. The first deck holds each kind once,
 * so even a short run injects every kind early; later decks hold each kind
 * as many times as its weight.
 */
export class FaultDeck<K> {
  private cards: K[] = [];
  private dealt = 0;

  constructor(
    private readonly kinds: ReadonlyArray<readonly [K, number]>,
    private readonly random: () => number,
  ) {}

  draw(): K {
    if (this.cards.length === 0) {
      this.cards = this.kinds.flatMap(([k, w]) => Array.from({ length: this.dealt === 0 ? 1 : w }, () => k));
      this.dealt++;
      for (let i = this.cards.length - 1; i > 0; i--) {
        const j = Math.floor(this.random() * (i + 1));
        [this.cards[i], this.cards[j]] = [this.cards[j]!, this.cards[i]!];
      }
    }
    return this.cards.pop()!;
  }

  /**
   * A fault that could not be made now goes back under the cards still in
   * the deck, so a short run still gets it, but only under another kind:
   * with nothing else left it would be drawn forever (defect: from one
   * 10-minute run's 4th minute on, every fault was a skipped lose-machine).
   * The next deck holds it again.
   */
  putBack(kind: K): void {
    if (this.cards.some((k) => k !== kind)) this.cards.unshift(kind);
  }
}

const IN_FLIGHT = new Set(['copying', 'catching_up', 'fenced']);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Nemesis {
  readonly faults: FaultRecord[] = [];
  /** Attempts that could not be made (nothing to move, an operation already running, …), by kind. */
  readonly skipped = new Map<FaultKind, number>();
  private stopping = false;
  private loop: Promise<void> | undefined;
  private readonly random: () => number;
  private readonly started = Date.now();
  private readonly kinds: Array<[FaultKind, number]>;
  /** After a lost machine: until when its copies are expected to be rebuilding (ms since the epoch). */
  private rebuildUntil = 0;
  /** Kinds left out of this run, with the reason. */
  readonly leftOut = new Map<FaultKind, string>();

  constructor(private readonly o: NemesisOptions) {
    this.random = o.random ?? Math.random;
    const weights: Record<FaultKind, number> = { 'kill-shard': 2, 'pause-shard': 2, partition: 2, 'kill-master': 2, rebalance: 1, drain: 1, 'lose-machine': 2, 'pause-long': 2, 'partition-followers': 2, 'pause-master': 2 };
    for (const k of FAULT_KINDS) {
      if ((o.disable ?? []).includes(k)) this.leftOut.set(k, 'disabled');
      else if ((k === 'partition' || k === 'partition-followers') && !o.net) this.leftOut.set(k, 'no network namespaces');
    }
    this.kinds = FAULT_KINDS.filter((k) => !this.leftOut.has(k) && (o.replication || !REPLICATED_KINDS.includes(k)) && (o.standby || !STANDBY_KINDS.includes(k))).map((k) => [k, weights[k]]);
    this.deck = new FaultDeck(this.kinds, this.random);
  }

  counts(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const f of this.faults) out[f.kind] = (out[f.kind] ?? 0) + 1;
    return out;
  }

  start(): void {
    this.loop = this.run();
  }

  /** Lets the fault in progress finish (and heal), then stops. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.loop;
  }

  private log(line: string): void {
    this.o.log?.(`[+${((Date.now() - this.started) / 1000).toFixed(1)}s] ${line}`);
  }

  private between(lo: number, hi: number): number {
    return lo + this.random() * (hi - lo);
  }

  private pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.random() * xs.length)]!;
  }

  private record(kind: FaultKind, detail: string): void {
    this.faults.push({ kind, atMs: Date.now() - this.started, detail });
    this.log(`fault ${kind}: ${detail}`);
  }

  private skip(kind: FaultKind, why: string): void {
    this.skipped.set(kind, (this.skipped.get(kind) ?? 0) + 1);
    this.log(`skip ${kind}: ${why}`);
  }

  private readonly deck: FaultDeck<FaultKind>;

  private async run(): Promise<void> {
    const [lo, hi] = this.o.intervalMs ?? [1000, 3000];
    while (!this.stopping) {
      await sleep(this.between(lo, hi));
      if (this.stopping) break;
      const kind = this.deck.draw();
      try {
        await this.inject(kind);
      } catch (err) {
        this.log(`fault ${kind} failed to run: ${(err as Error).message}`);
        // Whatever happened, leave nothing broken behind.
        await this.o.net?.healAll().catch(() => undefined);
        await this.o.cluster.reviveAll().catch((e) => this.log(`revive failed: ${(e as Error).message}`));
      }
    }
  }

  // -------------------------------------------------------------------------
  // Cluster views

  private async shardIds(): Promise<Map<string, string>> {
    const servers = await this.o.admin.listServers({ timeoutMs: 15_000 });
    return new Map(servers.map((s) => [s.address, s.id]));
  }

  private async nodeOf(shardId: string): Promise<Server | undefined> {
    const ids = await this.shardIds();
    return this.o.cluster.shards.find((n) => ids.get(n.address) === shardId);
  }

  private async idOf(n: Server): Promise<string> {
    return (await this.shardIds()).get(n.address) ?? '?';
  }

  async movesInFlight(): Promise<MoveInfo[]> {
    const res = await this.o.admin.admin((a) => a.listMoves, { all: false }, { timeoutMs: 15_000 });
    return res.moves.filter((m) => IN_FLIGHT.has(m.state));
  }

  private maxMbps(): number {
    return this.pick([0.05, 0.1, 0.2, 0.5]);
  }

  /** Starts a rebalance, or a drain of a random shard that owns data; false when nothing started. */
  private async startOperation(kind: 'rebalance' | 'drain'): Promise<string | undefined> {
    try {
      if (kind === 'rebalance') {
        const mbps = this.maxMbps();
        const res = await this.o.admin.startRebalance({ maxMbps: mbps, timeoutMs: 15_000 });
        if (!res.operationId) return undefined;
        return `${res.plan?.moves.length ?? 0} moves at ${mbps} MB/s (${res.operationId})`;
      }
      const ranges = await this.o.admin.getRanges({ timeoutMs: 15_000 });
      const owners = [...new Set(ranges.map((r) => r.shardId))];
      if (owners.length < 2) return undefined;
      const victim = this.pick(owners);
      const mbps = this.maxMbps();
      const res = await this.o.admin.dropServer(victim, { maxMbps: mbps, timeoutMs: 15_000 });
      if (!res.operationId) return undefined;
      return `drain ${victim}: ${res.plan?.moves.length ?? 0} moves at ${mbps} MB/s (${res.operationId})`;
    } catch (err) {
      const msg = (err as Error).message;
      // A busy master, or (replicated) a drain whose copies have nowhere to go.
      if (/another rebalance or drain|CONFLICT|cannot drain/i.test(msg)) return undefined;
      throw err;
    }
  }

  /** A move in flight, starting a rebalance (or a drain) if none runs; undefined when none appears in time. */
  private async moveInFlight(timeoutMs: number): Promise<MoveInfo | undefined> {
    let moves = await this.movesInFlight();
    if (moves.length === 0) {
      const started = (await this.startOperation('rebalance')) ?? (await this.startOperation('drain'));
      if (started) this.log(`started for the next fault: ${started}`);
    }
    const until = Date.now() + timeoutMs;
    while (moves.length === 0 && Date.now() < until) {
      await sleep(50);
      moves = await this.movesInFlight();
    }
    return moves.length ? this.pick(moves) : undefined;
  }

  /**
   * The primary of a random range and its followers (the map as the admin API
   * shows it): with replication, half the time the range of a move in flight
   * (a copy being rebuilt).
   */
  private async primary(): Promise<{ node: Server; id: string; followers: Array<{ node: Server; id: string }>; learner?: { node: Server; id: string }; why: string } | undefined> {
    let ranges = await this.o.admin.getRanges({ timeoutMs: 15_000 });
    const ids = await this.shardIds();
    const byId = (id: string) => this.o.cluster.shards.find((n) => ids.get(n.address) === id);
    let pool = ranges;
    let why = 'no move';
    if (this.random() < 0.5) {
      // A move on a replicated cluster: a copy being rebuilt (a learner), or one in the journal.
      let rebuilding = ranges.filter((r) => r.learners.some((l) => byId(l)));
      // Soon after a lost machine, wait for the rebuild of its copies to start, to land inside it.
      while (rebuilding.length === 0 && Date.now() < this.rebuildUntil && !this.stopping) {
        await sleep(200);
        ranges = await this.o.admin.getRanges({ timeoutMs: 15_000 });
        rebuilding = ranges.filter((r) => r.learners.some((l) => byId(l)));
      }
      const moves = rebuilding.length ? [] : await this.movesInFlight().catch(() => []);
      const mv = moves.length ? this.pick(moves) : undefined;
      const hit = mv ? ranges.filter((r) => r.shardId === mv.from || r.shardId === mv.to || r.learners.includes(mv.to)) : rebuilding;
      if (hit.length) {
        pool = hit;
        why = mv ? `during ${mv.id} ${mv.from}→${mv.to} (${mv.state})` : 'during a rebuild';
      }
    }
    const r = this.pick(pool);
    const node = byId(r.shardId);
    if (!node) return undefined;
    const others = (xs: string[]) =>
      xs
        .filter((x) => x !== r.shardId)
        .flatMap((id) => {
          const n = byId(id);
          return n ? [{ node: n, id }] : [];
        });
    const learners = others(r.learners);
    const learner = learners.length ? this.pick(learners) : undefined;
    return {
      node,
      id: r.shardId,
      followers: others(r.replicas),
      learner,
      why: `primary of [${r.start}, ${r.end}) v${r.version}${learner ? `, rebuilding a copy on ${learner.id}` : ''}, ${why}`,
    };
  }

  /**
   * True when a machine may be lost without taking more than the product
   * promises to survive: every range has all its copies (none being rebuilt)
   * and at least two in-sync members (writes are acknowledged only then), so
   * losing any one shard leaves every acknowledged write on an in-sync copy.
   */
  private async fullyReplicated(): Promise<boolean> {
    const f = this.o.replication?.factor ?? 1;
    const want = Math.min(f, this.o.cluster.shards.length);
    const ranges = await this.o.admin.getRanges({ timeoutMs: 15_000 });
    // Copies on a machine lost earlier (still listed until the master replaces them) do not count.
    const ids = await this.shardIds();
    const live = new Set(this.o.cluster.shards.map((n) => ids.get(n.address)));
    return ranges.every((r) => r.replicas.filter((x) => live.has(x)).length >= want && r.inSync.length >= Math.min(2, want) && r.learners.length === 0);
  }

  /** A shard to hit: half the time the source or destination of a move in flight. */
  private async target(): Promise<{ node: Server; why: string }> {
    if (this.o.replication && this.random() < 0.5) {
      const p = await this.primary().catch(() => undefined);
      // Half the time a copy is being rebuilt, its destination (the learner) rather than its source.
      if (p?.learner && this.random() < 0.5) return { node: p.learner.node, why: `the learner of ${p.why}` };
      if (p) return { node: p.node, why: p.why };
    }
    if (this.random() < 0.5) {
      const mv = await this.moveInFlight(this.o.replication ? 0 : 4000).catch(() => undefined);
      if (mv) {
        const role = this.random() < 0.5 ? 'source' : 'destination';
        const node = await this.nodeOf(role === 'source' ? mv.from : mv.to);
        if (node) return { node, why: `${role} of ${mv.id} (${mv.state})` };
      }
    }
    const node = this.pick(this.o.cluster.shards);
    return { node, why: 'no move' };
  }

  private leaderName(m: Server): string {
    return this.o.standby ? `the leading master (${m.name})` : 'the master';
  }

  // -------------------------------------------------------------------------
  // Faults

  private async inject(kind: FaultKind): Promise<void> {
    const c = this.o.cluster;
    switch (kind) {
      case 'kill-shard': {
        const { node, why } = await this.target();
        const id = await this.idOf(node);
        const down = this.between(200, 2000);
        await c.kill(node);
        this.record(kind, `${node.name} (${id}, ${why}) down ${(down / 1000).toFixed(1)}s`);
        await sleep(down);
        await c.restart(node);
        return;
      }
      case 'pause-shard': {
        const { node, why } = await this.target();
        const id = await this.idOf(node);
        // Now and then past the clients' deadlines, so writes end unknown and land late.
        const hold = this.random() < 0.2 ? this.between(11_000, 14_000) : this.between(300, 3000);
        c.pause(node);
        this.record(kind, `${node.name} (${id}, ${why}) stopped ${(hold / 1000).toFixed(1)}s`);
        await sleep(hold);
        c.resume(node);
        return;
      }
      case 'partition': {
        const { node, why } = this.o.replication ? ((await this.primary()) ?? (await this.target())) : await this.target();
        const id = await this.idOf(node);
        const master = (await c.leader()) ?? c.master;
        const hold = this.between(1000, 5000);
        await this.o.net!.partition(node.name, master.name);
        this.record(kind, `${node.name} (${id}, ${why}) cut off from ${this.leaderName(master)} for ${(hold / 1000).toFixed(1)}s`);
        await sleep(hold);
        await this.o.net!.heal(node.name, master.name);
        return;
      }
      case 'kill-master': {
        const mv = await this.moveInFlight(5000).catch(() => undefined);
        const master = (await c.leader()) ?? c.master;
        const down = this.between(200, 1500);
        await c.kill(master);
        this.record(kind, `${this.leaderName(master)} killed ${mv ? `during ${mv.id} ${mv.from}→${mv.to} (${mv.state})` : 'with no move in flight'}, down ${(down / 1000).toFixed(1)}s`);
        await sleep(down);
        await c.restart(master);
        return;
      }
      case 'pause-master': {
        // Past its etcd lease: a standby takes over, and the paused one, resumed, must write nothing and be refused by term.
        const mv = await this.moveInFlight(5000).catch(() => undefined);
        const master = (await c.leader()) ?? c.master;
        const lease = this.o.standby?.leaseMs ?? 2000;
        const hold = this.between(lease * 1.5, lease * 2.5);
        c.pause(master);
        this.record(kind, `${this.leaderName(master)} stopped ${(hold / 1000).toFixed(1)}s (etcd lease ${lease / 1000}s) ${mv ? `during ${mv.id} ${mv.from}→${mv.to} (${mv.state})` : 'with no move in flight'}`);
        await sleep(hold);
        c.resume(master);
        return;
      }
      case 'lose-machine': {
        const { node, why } = await this.target();
        const id = await this.idOf(node);
        // One machine lost at a time: wait (up to 20 s) for every copy lost before to be rebuilt, and kill at
        // once when it is (the in-sync sets keep changing under the other faults).
        const until = Date.now() + 20_000;
        let full = false;
        while (!this.stopping && !(full = await this.fullyReplicated().catch(() => false)) && Date.now() < until) await sleep(250);
        if (!full) {
          this.skip(kind, 'a range is still missing a copy, or has fewer than 2 in-sync, after 20 s (one machine lost at a time); tried again later');
          this.deck.putBack(kind);
          return;
        }
        await c.kill(node);
        await rm(node.dataDir, { recursive: true, force: true });
        c.shards.splice(c.shards.indexOf(node), 1);
        const fresh = await c.addShard();
        // The master rebuilds the lost copies once the shard has been down replicaDownTimeoutMs: the next faults aim at that.
        this.rebuildUntil = Date.now() + (this.o.replication?.replicaDownTimeoutMs ?? 5000) + 5000;
        this.record(kind, `${node.name} (${id}, ${why}) killed and its data directory wiped; ${fresh.name} started on an empty directory`);
        return;
      }
      case 'pause-long': {
        const p = await this.primary();
        const { node, why } = p ?? (await this.target());
        const lease = this.o.replication?.leaseMs ?? 2000;
        const hold = this.between(lease * 1.25, lease * 2);
        c.pause(node);
        this.record(kind, `${node.name} (${p?.id ?? (await this.idOf(node))}, ${why}) stopped ${(hold / 1000).toFixed(1)}s (lease ${lease / 1000}s)`);
        await sleep(hold);
        c.resume(node);
        return;
      }
      case 'partition-followers': {
        const p = await this.primary();
        if (!p || p.followers.length + (p.learner ? 1 : 0) === 0) {
          this.skip(kind, 'no range with a primary and a follower running');
          return;
        }
        const peers = p.learner ? [...p.followers, p.learner] : p.followers;
        const cut = this.random() < 0.5 ? peers : [this.pick(peers)];
        const lease = this.o.replication?.leaseMs ?? 2000;
        const hold = this.between(lease / 2, lease * 2.5);
        for (const f of cut) await this.o.net!.partition(p.node.name, f.node.name);
        this.record(kind, `${p.node.name} (${p.id}, ${p.why}) cut off from its follower${cut.length > 1 ? 's' : ''} ${cut.map((f) => `${f.node.name} (${f.id})`).join(', ')} for ${(hold / 1000).toFixed(1)}s`);
        await sleep(hold);
        for (const f of cut) await this.o.net!.heal(p.node.name, f.node.name);
        return;
      }
      case 'rebalance':
      case 'drain': {
        const what = await this.startOperation(kind);
        if (what) this.record(kind, what);
        else this.skip(kind, 'nothing to move, or an operation is already running');
        return;
      }
    }
  }
}
