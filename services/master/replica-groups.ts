/**
 * The replica planner's working copy of the map: ranges in bucket units with
 * their groups as shard indices, each shard's load (every copy it holds) and
 * primary count, and the steps taken so far. Every change goes through one of
 * the step methods, which records the step, so the steps and the target map
 * never disagree. Pure.
 */
import type { MapRange } from '../common/map.js';
import { bucketStart, type HashRange } from '../common/ranges.js';
import { lowerBound, upperBound } from './bucket-sums.js';
import { withGroup, type ReplicaStep } from './replica-plan-steps.js';

/** A range of the working map, [s, e) in buckets; shards are indices into GroupMap.ids. */
export interface Seg {
  s: number;
  e: number;
  /** The primary first. */
  replicas: number[];
  inSync: number[];
  learners: number[];
  version: bigint;
  /** Left as it is: its group is being changed already, or it has a copy on a down shard not given up on. */
  frozen: boolean;
  /** The input range it came from; written back as it was (but for its bounds) while the group is unchanged. */
  orig: MapRange;
  changed: boolean;
}

/** A piece of a range to give away: the whole of it, or a prefix or suffix cut at bucket `k`. */
export interface Piece {
  side: 'whole' | 'prefix' | 'suffix';
  k: number;
  /** Its weight (on the plan's basis). */
  x: number;
}

export class GroupMap {
  readonly steps: ReplicaStep[] = [];
  /** Weight of every copy (replica or learner) each shard holds, on the plan's basis. */
  readonly load: Float64Array;
  readonly primaries: Int32Array;
  movedBytes = 0;

  /**
   * @param P prefix sums of the weights balanced (bytes, or key space)
   * @param bytesP prefix sums of bytes (what steps report and rooms count)
   * @param room bytes each shard may still receive; lowered as steps give it copies
   */
  constructor(
    readonly ids: readonly string[],
    readonly segs: Seg[],
    private readonly P: Float64Array,
    private readonly bytesP: Float64Array,
    readonly room: Float64Array,
  ) {
    this.load = new Float64Array(ids.length);
    this.primaries = new Int32Array(ids.length);
    for (const g of segs) {
      for (const i of [...g.replicas, ...g.learners]) this.load[i]! += this.weight(g);
      this.primaries[g.replicas[0]!]!++;
    }
  }

  weight(g: Seg): number {
    return this.P[g.e]! - this.P[g.s]!;
  }

  bytes(g: Seg): number {
    return this.bytesP[g.e]! - this.bytesP[g.s]!;
  }

  holds(g: Seg, i: number): boolean {
    return g.replicas.includes(i) || g.learners.includes(i);
  }

  range(g: Seg): HashRange {
    return { start: bucketStart(g.s), end: bucketStart(g.e) };
  }

  /**
   * The piece of `g` whose weight is closest to `a`, with x <= cap and
   * x < limit; only pieces with weight, unless `g` has none (then all of it).
   * Among equals: the whole range, then a prefix, then a suffix.
   */
  bestPiece(g: Seg, a: number, cap: number, limit = Infinity): Piece | null {
    const P = this.P;
    const lo = P[g.s]!;
    const hi = P[g.e]!;
    const w = hi - lo;
    let best: Piece | null = null;
    const consider = (side: Piece['side'], k: number, x: number): void => {
      if (x > cap || !(x < limit) || (!(x > 0) && !(w === 0 && side === 'whole'))) return;
      if (side !== 'whole' && !(k > g.s && k < g.e)) return;
      if (!best || Math.abs(x - a) < Math.abs(best.x - a)) best = { side, k, x };
    };
    consider('whole', g.e, w);
    if (w > a) {
      const k = upperBound(P, lo + a, g.s, g.e) - 1;
      consider('prefix', k, P[k]! - lo);
      consider('prefix', k + 1, P[k + 1]! - lo);
      const j = lowerBound(P, hi - a, g.s, g.e);
      consider('suffix', j, hi - P[j]!);
      consider('suffix', j - 1, hi - P[j - 1]!);
    }
    return best;
  }

  /** Cuts `g` at bucket k (a free map change): `g` keeps [s, k), the returned range is [k, e). */
  split(g: Seg, k: number): Seg {
    const right: Seg = { ...g, s: k, replicas: [...g.replicas], inSync: [...g.inSync], learners: [...g.learners] };
    this.steps.push({ kind: 'split', range: this.range(g), at: bucketStart(k) });
    g.e = k;
    this.segs.splice(this.segs.indexOf(g) + 1, 0, right);
    this.primaries[g.replicas[0]!]!++;
    return right;
  }

  /** The range that is `piece` of `g`, cut off it first when it is not the whole. */
  cut(g: Seg, piece: Piece): Seg {
    if (piece.side === 'whole') return g;
    const right = this.split(g, piece.k);
    return piece.side === 'prefix' ? g : right;
  }

  private changed(g: Seg): void {
    g.version++;
    g.changed = true;
  }

  handOver(g: Seg, to: number): void {
    const from = g.replicas[0]!;
    this.steps.push({ kind: 'handOver', range: this.range(g), from: this.ids[from]!, to: this.ids[to]! });
    g.replicas = [to, ...g.replicas.filter((i) => i !== to)];
    this.primaries[from]!--;
    this.primaries[to]!++;
    this.changed(g);
  }

  addReplica(g: Seg, to: number): void {
    const bytes = this.bytes(g);
    this.steps.push({ kind: 'addReplica', range: this.range(g), to: this.ids[to]!, bytes });
    g.replicas.push(to);
    g.inSync.push(to);
    this.received(to, g, bytes);
  }

  replaceReplica(g: Seg, from: number, to: number): void {
    const bytes = this.bytes(g);
    this.steps.push({ kind: 'replaceReplica', range: this.range(g), from: this.ids[from]!, to: this.ids[to]!, bytes });
    const at = g.replicas.indexOf(from);
    g.replicas[at] = to;
    g.inSync = [...g.inSync.filter((i) => i !== from), to];
    if (at === 0) {
      this.primaries[from]!--;
      this.primaries[to]!++;
    }
    this.load[from]! -= this.weight(g);
    this.received(to, g, bytes);
  }

  dropReplica(g: Seg, shard: number): void {
    this.steps.push({ kind: 'dropReplica', range: this.range(g), shard: this.ids[shard]! });
    g.replicas = g.replicas.filter((i) => i !== shard);
    g.inSync = g.inSync.filter((i) => i !== shard);
    this.load[shard]! -= this.weight(g);
    this.changed(g);
  }

  private received(to: number, g: Seg, bytes: number): void {
    this.load[to]! += this.weight(g);
    this.room[to]! -= bytes;
    this.movedBytes += bytes;
    this.changed(g);
  }

  /** The map as it stands: ranges whose group never changed are written back as they came. */
  toMap(): MapRange[] {
    const name = (xs: readonly number[]): string[] => xs.map((i) => this.ids[i]!);
    return this.segs.map((g) => {
      const r = this.range(g);
      return g.changed ? withGroup(r, name(g.replicas), name(g.inSync), name(g.learners), g.version) : { ...g.orig, ...r };
    });
  }
}
