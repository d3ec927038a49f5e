/**
 * The rebalance planner: cluster state in, a list of moves and the target map
 * out. Pure: no I/O, no clock, no randomness. The same input always gives the
 * same plan, and planning again on the plan's target map gives no moves.
 *
 * It balances live BYTES (exact per stats bucket), not shares of the hash
 * space; only when the shards that take part hold no bytes at all does it fall
 * back to equal key space. All arithmetic is in stats buckets (2^16 of them,
 * see ranges.ts), so every boundary it makes is a bucket boundary.
 *
 * How (after PD's balance-region scheduler, but computed all at once):
 *
 * - Roles. A shard that is up and not draining is *eligible*: it may give and
 *   take. A shard that is up and draining must end with no range. A shard that
 *   is down (or absent from `shards`) is *fixed*: its ranges stay where they are
 *   and its bytes count toward nothing. The target load T of an eligible shard
 *   is the mean over eligible shards of the bytes that eligible and draining
 *   shards hold.
 * - A virtual map (a linked list of ranges, neighbours with one owner always
 *   merged) is changed one *step* at a time. Draining shards are emptied first:
 *   each step gives an edge piece of a draining shard's range, sized to the
 *   neediest shard's need, to that shard. Then, unless every eligible shard is
 *   already within ±tolerance of T (hysteresis), each step takes one edge piece
 *   (a prefix, a suffix or a whole range, cut at a bucket boundary) from the
 *   most over-full shard and gives it to the neediest one, sized to what both
 *   can use. Pieces are chosen closest to that size; among near-equals, whole
 *   ranges and pieces that merge into the receiver's neighbouring range win, so
 *   the map stays coarse.
 * - A balancing step is taken only when it strictly lowers Σ|load − T|, which
 *   rules out cycles. The loop stops when all are within tolerance or when no
 *   piece helps (a bucket bigger than the imbalance); both conditions depend
 *   only on the map and the loads, so a plan made on the result is empty.
 * - The moves are the difference between the current map and the target map,
 *   so bytes that a step passed on twice are moved once, from the real owner.
 * - Disk room. A shard may come with `roomBytes`: what its disk can still take
 *   before it passes the high-water mark (see diskRoomBytes). Every piece a
 *   step gives a shard counts against its room, and no step gives a shard a
 *   piece bigger than what is left, so no destination ends above its mark
 *   (the bytes given in steps bound the bytes of the moves to it). The
 *   neediest shard with room receives; a drain that no shard has room for
 *   stops with the rest left on the draining shard, which the caller reports.
 *   T is then the water level (waterLevel) rather than the mean, so the
 *   shards with room balance among themselves around a full one.
 *
 * Cost: O(buckets + ranges) to set up. A step costs O(shards) plus, when the
 * source has a range heavier than the amount wanted, a scan of its ranges with
 * binary searches over the bucket prefix sums; otherwise O(log ranges) (a heap
 * per shard yields its heaviest range). 1,000 shards and the largest possible
 * map (65,536 ranges, one per bucket) plan in a few hundred milliseconds.
 */
import { CairnError } from '../common/errors.js';
import { BUCKET_COUNT, bucketSpan, bucketStart, mapLayoutError, type OwnedRange } from '../common/ranges.js';
import { KEYSPACE_SUMS, lowerBound, prefixSums, upperBound, waterLevel } from './bucket-sums.js';
import { DEFAULT_TOLERANCE, type Plan, type PlanInput, type PlannedMove, type PlanOptions } from './plan-types.js';
import { heapPop, heapPush, type HeapEntry, type Node } from './range-heap.js';

export { shardLoads, waterLevel, type BucketStats } from './bucket-sums.js';
export { DEFAULT_DISK_HIGH_WATER, diskRoomBytes, drainShortfallMessage, type DiskReport } from './disk-room.js';
export { DEFAULT_TOLERANCE, type Plan, type PlanInput, type PlannedMove, type PlanOptions, type PlanShard } from './plan-types.js';

/** Eligible: up and not draining. Draining: up and draining. Fixed: down or unknown. */
const Role = { Eligible: 0, Draining: 1, Fixed: 2 } as const;
type Role = (typeof Role)[keyof typeof Role];

type Side = 'prefix' | 'suffix';

interface Candidate {
  node: Node;
  side: Side;
  /** Prefix-sum value at the cut: P[cut] (prefix end or suffix start). */
  cutValue: number;
  x: number;
  err: number;
  rank: number;
}

/**
 * Plans a rebalance. Throws CairnError('INVALID_ARGUMENT') for a map that does
 * not tile or is not bucket-aligned, duplicate shard ids, bad bucket stats or
 * a tolerance outside [0, 1).
 */
export function plan(input: PlanInput, opts: PlanOptions = {}): Plan {
  const tolerance = opts.tolerance ?? DEFAULT_TOLERANCE;
  if (!(tolerance >= 0 && tolerance < 1)) throw new CairnError('INVALID_ARGUMENT', `tolerance must be in [0, 1), got ${tolerance}`);
  const { bytes: bytesP, rows: rowsP } = prefixSums(input.buckets);
  const totalBytes = bytesP[BUCKET_COUNT]!;
  const inputRanges = input.map.ranges;
  if (inputRanges.length === 0) {
    return { moves: [], targetMap: [], totalBytes, movedBytes: 0, minimumBytes: 0, basis: 'bytes' };
  }
  const layout = mapLayoutError(inputRanges);
  if (layout) throw new CairnError('INVALID_ARGUMENT', `map: ${layout}`);

  // ---- shards and roles (index order = input order, then unknown owners)
  const ids: string[] = [];
  const role: Role[] = [];
  const index = new Map<string, number>();
  /** Bytes each shard may still be given (Infinity: unlimited); only shards in `input.shards` can have a limit. */
  const roomOf: number[] = [];
  for (const sh of input.shards) {
    if (index.has(sh.id)) throw new CairnError('INVALID_ARGUMENT', `shards: duplicate shard id ${sh.id}`);
    if (sh.roomBytes !== undefined && !(sh.roomBytes >= 0)) throw new CairnError('INVALID_ARGUMENT', `shards: ${sh.id} has roomBytes=${sh.roomBytes}; it must be >= 0 (or absent: unlimited)`);
    index.set(sh.id, ids.length);
    ids.push(sh.id);
    role.push(!sh.up ? Role.Fixed : sh.draining ? Role.Draining : Role.Eligible);
    roomOf.push(sh.roomBytes ?? Infinity);
  }
  const origSpans = inputRanges.map((r) => {
    let o = index.get(r.shardId);
    if (o === undefined) {
      o = ids.length;
      index.set(r.shardId, o);
      ids.push(r.shardId);
      role.push(Role.Fixed);
    }
    const [s, e] = bucketSpan(r);
    return { s, e, owner: o };
  });
  const nShards = ids.length;
  const eligible: number[] = [];
  for (let i = 0; i < nShards; i++) if (role[i] === Role.Eligible) eligible.push(i);

  // ---- the virtual map, merged
  const owned: Set<Node>[] = Array.from({ length: nShards }, () => new Set<Node>());
  let head: Node | null = null;
  let tail: Node | null = null;
  for (const sp of origSpans) {
    if (tail && tail.owner === sp.owner) {
      tail.e = sp.e;
      continue;
    }
    const n: Node = { s: sp.s, e: sp.e, owner: sp.owner, prev: tail, next: null, dead: false };
    if (tail) tail.next = n;
    else head = n;
    tail = n;
    owned[sp.owner]!.add(n);
  }

  // ---- weights: bytes, or key space when participants hold no bytes
  const participates = (i: number): boolean => role[i] !== Role.Fixed;
  const byteLoad = new Float64Array(nShards);
  for (let n = head; n; n = n.next) byteLoad[n.owner]! += bytesP[n.e]! - bytesP[n.s]!;
  let participatingBytes = 0;
  for (let i = 0; i < nShards; i++) if (participates(i)) participatingBytes += byteLoad[i]!;
  const basis: Plan['basis'] = participatingBytes > 0 ? 'bytes' : 'keyspace';
  const P: Float64Array = basis === 'bytes' ? bytesP : KEYSPACE_SUMS;
  const load = new Float64Array(nShards);
  for (let n = head; n; n = n.next) load[n.owner]! += P[n.e]! - P[n.s]!;
  // With the key-space basis the shards taking part hold no bytes, so no piece adds any: rooms cannot bind.
  const room = Float64Array.from({ length: nShards }, (_, i) => (basis === 'bytes' ? (roomOf[i] ?? Infinity) : Infinity));

  let participatingWeight = 0;
  for (let i = 0; i < nShards; i++) if (participates(i)) participatingWeight += load[i]!;
  // The target load: the mean, or with disk rooms the water level that the loads reach when
  // no shard rises above what its room allows (a full shard keeps its bytes; the others share the rest).
  const T = eligible.length === 0 ? 0 : waterLevel(eligible.map((i) => load[i]! + room[i]!), participatingWeight);
  const band = tolerance * T;
  const slack = band / 2;
  /** Candidates whose error is within one quantum count as equally close; then coarseness decides. */
  const quantum = band / 10;

  // minimumBytes is always in bytes, whatever the basis.
  let minimumBytes = 0;
  if (eligible.length > 0) {
    const Tb = participatingBytes / eligible.length;
    for (let i = 0; i < nShards; i++) {
      if (role[i] === Role.Draining) minimumBytes += byteLoad[i]!;
      else if (role[i] === Role.Eligible) minimumBytes += Math.max(0, byteLoad[i]! - Tb);
    }
  }

  // ---- per-shard heaviest range: a heap with lazy deletion (entries are checked when read)
  const heaps: HeapEntry[][] = Array.from({ length: nShards }, () => []);
  const track = (n: Node): void => {
    if (role[n.owner] !== Role.Fixed) heapPush(heaps[n.owner]!, { w: P[n.e]! - P[n.s]!, s: n.s, node: n });
  };
  for (let n = head; n; n = n.next) track(n);
  /** The heaviest range of a shard (lowest start among equals), or null. */
  const heaviest = (i: number): HeapEntry | null => {
    const h = heaps[i]!;
    while (h.length > 0) {
      const top = h[0]!;
      const n = top.node;
      if (!n.dead && n.owner === i && n.s === top.s && P[n.e]! - P[n.s]! === top.w) return top;
      heapPop(h);
    }
    return null;
  };

  // ---- virtual map operations
  const split = (node: Node, cut: number): Node => {
    const r: Node = { s: cut, e: node.e, owner: node.owner, prev: node, next: node.next, dead: false };
    if (node.next) node.next.prev = r;
    node.next = r;
    node.e = cut;
    owned[node.owner]!.add(r);
    track(node);
    track(r);
    return r;
  };
  const mergeNext = (a: Node): void => {
    const b = a.next!;
    a.e = b.e;
    a.next = b.next;
    if (b.next) b.next.prev = a;
    b.dead = true;
    owned[b.owner]!.delete(b);
  };
  const assign = (node: Node, to: number): void => {
    owned[node.owner]!.delete(node);
    node.owner = to;
    owned[to]!.add(node);
    let n = node;
    if (n.prev && n.prev.owner === to) {
      n = n.prev;
      mergeNext(n);
    }
    if (n.next && n.next.owner === to) mergeNext(n);
    track(n);
  };

  const isOverSource = (i: number): boolean => (role[i] === Role.Eligible && load[i]! > T) || role[i] === Role.Draining;

  /** The best edge piece of `s` for `d`, closest to `a` bytes, with 0 < x < limit and x <= cap (d's room; a <= cap). */
  const bestPiece = (s: number, d: number, a: number, limit: number, cap: number): Candidate | null => {
    // When no range of s is heavier than a, the best piece is its heaviest whole range: the
    // scan below would choose the same, and this keeps a shard of many small ranges O(log).
    const top = heaviest(s);
    if (!top || !(top.w > 0)) return null;
    if (top.w <= a && top.w < limit && top.w <= cap) {
      return { node: top.node, side: 'prefix', cutValue: P[top.node.e]!, x: top.w, err: a - top.w, rank: 0 };
    }
    let best: Candidate | null = null;
    const consider = (node: Node, side: Side, cutValue: number, x: number): void => {
      if (!(x > 0) || !(x < limit) || x > cap) return;
      const whole = side === 'prefix' ? cutValue === P[node.e] : cutValue === P[node.s];
      const neighbour = side === 'prefix' ? node.prev : node.next;
      const rank = whole || neighbour?.owner === d ? 0 : neighbour && isOverSource(neighbour.owner) ? 1 : 2;
      const err = Math.abs(x - a);
      if (best) {
        const qb = quantum > 0 ? Math.floor(best.err / quantum) : best.err;
        const qc = quantum > 0 ? Math.floor(err / quantum) : err;
        if (qc > qb) return;
        if (qc === qb) {
          if (rank > best.rank) return;
          if (rank === best.rank) {
            if (err > best.err) return;
            if (err === best.err && (node.s > best.node.s || (node.s === best.node.s && side === 'suffix'))) return;
          }
        }
      }
      best = { node, side, cutValue, x, err, rank };
    };
    for (const node of owned[s]!) {
      const lo = P[node.s]!;
      const hi = P[node.e]!;
      const w = hi - lo;
      if (w <= 0) continue;
      if (w <= a) {
        consider(node, 'prefix', hi, w);
        continue;
      }
      // Prefixes [s, k): the largest sum <= a and the smallest sum > a.
      const k = upperBound(P, lo + a, node.s, node.e) - 1;
      consider(node, 'prefix', P[k]!, P[k]! - lo);
      consider(node, 'prefix', P[k + 1]!, P[k + 1]! - lo);
      // Suffixes [k, e): likewise.
      const j = lowerBound(P, hi - a, node.s, node.e);
      consider(node, 'suffix', P[j]!, hi - P[j]!);
      consider(node, 'suffix', P[j - 1]!, hi - P[j - 1]!);
    }
    return best;
  };

  /** Cuts the candidate's piece off its range (in the middle of any empty buckets at the cut) and gives it to `d`. */
  const applyPiece = (c: Candidate, s: number, d: number): void => {
    const node = c.node;
    let piece = node;
    if (c.side === 'prefix') {
      if (c.cutValue !== P[node.e]) {
        const k1 = lowerBound(P, c.cutValue, node.s, node.e);
        const k2 = upperBound(P, c.cutValue, node.s, node.e) - 1;
        split(node, (k1 + k2) >>> 1);
      }
    } else if (c.cutValue !== P[node.s]) {
      const k1 = lowerBound(P, c.cutValue, node.s, node.e);
      const k2 = upperBound(P, c.cutValue, node.s, node.e) - 1;
      piece = split(node, Math.max(node.s + 1, (k1 + k2 + 1) >>> 1));
    }
    load[s]! -= c.x;
    load[d]! += c.x;
    room[d]! -= c.x;
    assign(piece, d);
  };

  const neediest = (): number => {
    let d = eligible[0]!;
    for (const i of eligible) if (load[i]! < load[d]!) d = i;
    return d;
  };

  /** The eligible shard with the least load among those with disk room left (lowest index among equals), or -1. */
  const neediestWithRoom = (): number => {
    let d = -1;
    for (const i of eligible) if (room[i]! > 0 && (d < 0 || load[i]! < load[d]!)) d = i;
    return d;
  };

  /** One step of emptying draining shard `s`; false when no shard has room for any piece of it. */
  const drainStep = (s: number): boolean => {
    if (load[s]! > 0) {
      const give = (d: number): boolean => {
        // As in balanceStep, the receiver may rise above T by half the band when no other
        // shard is below the band: fewer, larger pieces, none of which need to move again.
        const othersUnder = eligible.some((i) => i !== d && T - load[i]! > band);
        let a = Math.min(load[s]!, T - load[d]! + (othersUnder ? 0 : slack));
        if (!(a > 0)) a = load[s]!;
        const c = bestPiece(s, d, Math.min(a, room[d]!), Infinity, room[d]!);
        if (!c) return false;
        applyPiece(c, s, d);
        return true;
      };
      const first = neediestWithRoom();
      if (first < 0) return false;
      if (give(first)) return true;
      // Its room is smaller than every piece s can give: try the others, neediest first.
      const others = eligible.filter((i) => i !== first && room[i]! > 0).sort((x, y) => load[x]! - load[y]! || x - y);
      return others.some(give);
    }
    const d = neediest();
    // Only empty ranges are left: hand each to a neighbour that keeps it, so they merge.
    const rest = [...owned[s]!].sort((x, y) => x.s - y.s);
    for (const node of rest) {
      const to =
        node.prev && role[node.prev.owner] === Role.Eligible
          ? node.prev.owner
          : node.next && role[node.next.owner] === Role.Eligible
            ? node.next.owner
            : d;
      assign(node, to);
    }
    return true;
  };

  /**
   * One balancing step, or false when every eligible shard is within the band
   * (hysteresis) or no piece of any over-full shard helps the neediest one.
   */
  const balanceStep = (): boolean => {
    let d = -1;
    let first = -1;
    let overBand = 0;
    let underBand = 0;
    for (let k = 0; k < eligible.length; k++) {
      const i = eligible[k]!;
      const l = load[i]!;
      // The receiver: the neediest shard whose disk can still take something.
      if (room[i]! > 0 && (d < 0 || l < load[d]!)) d = i;
      if (l > T && (first < 0 || l > load[first]!)) first = i;
      if (l - T > band) overBand++;
      else if (T - l > band) underBand++;
    }
    if (overBand + underBand === 0 || first < 0 || d < 0) return false;
    const n = T - load[d]!;
    if (!(n > 0)) return false;
    const dUnder = n > band ? 1 : 0;
    const tryFrom = (s: number): boolean => {
      const e = load[s]! - T;
      // A source may dip below T (or the receiver rise above it) by half the band, but only
      // when no other shard is out of band on that side, so the extra is never handed back.
      const ss = overBand - (e > band ? 1 : 0) === 0 ? slack : 0;
      const sd = underBand - dUnder === 0 ? slack : 0;
      const a = Math.min(n + sd, e + ss, Math.max(e, n), room[d]!);
      const c = bestPiece(s, d, a, e + n, room[d]!);
      if (!c) return false;
      applyPiece(c, s, d);
      return true;
    };
    if (tryFrom(first)) return true;
    // Rare: the fullest shard has only pieces too big to help. Try the others, fullest first.
    const sources = eligible.filter((i) => load[i]! > T && i !== first);
    sources.sort((x, y) => load[y]! - load[x]! || x - y);
    for (const s of sources) if (tryFrom(s)) return true;
    return false;
  };

  // ---- the loop
  if (eligible.length > 0) {
    let budget = 10 * (inputRanges.length + nShards) + 10_000;
    for (let s = 0; s < nShards; s++) {
      if (role[s] !== Role.Draining) continue;
      while (owned[s]!.size > 0 && budget-- > 0) if (!drainStep(s)) break;
    }
    while (budget-- > 0 && balanceStep());
  }

  // ---- target map and moves (the difference between the maps)
  // The virtual map is kept merged (neighbours never share an owner), so it is the target as it stands.
  const target: Node[] = [];
  const targetMap: OwnedRange[] = [];
  let at = 0n;
  for (let n = head; n; n = n.next) {
    const end = bucketStart(n.e);
    target.push(n);
    targetMap.push({ start: at, end, shardId: ids[n.owner]! });
    at = end;
  }
  const segs: Array<{ s: number; e: number; from: number; to: number }> = [];
  let i = 0;
  let j = 0;
  let pos = 0;
  while (pos < BUCKET_COUNT) {
    const o = origSpans[i]!;
    const t = target[j]!;
    const end = Math.min(o.e, t.e);
    if (o.owner !== t.owner) {
      const last = segs[segs.length - 1];
      if (last && last.e === pos && last.from === o.owner && last.to === t.owner) last.e = end;
      else segs.push({ s: pos, e: end, from: o.owner, to: t.owner });
    }
    pos = end;
    if (o.e === end) i++;
    if (t.e === end) j++;
  }
  let movedBytes = 0;
  const moves: PlannedMove[] = segs.map((g) => {
    const bytes = bytesP[g.e]! - bytesP[g.s]!;
    movedBytes += bytes;
    return { start: bucketStart(g.s), end: bucketStart(g.e), from: ids[g.from]!, to: ids[g.to]!, bytes, rows: rowsP[g.e]! - rowsP[g.s]! };
  });
  return { moves, targetMap, totalBytes, movedBytes, minimumBytes, basis };
}
