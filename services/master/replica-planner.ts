/**
 * The replica-aware planner (issue 13): the map with its replica groups, the
 * shards and the bucket stats in; an ordered list of steps (split, addReplica,
 * replaceReplica, handOver, dropReplica) and the target map out. Pure: no I/O,
 * no clock, no randomness; the same input gives the same plan, and planning
 * again on the target map gives no steps.
 *
 * Factor 1 with no groups (every range a single copy, as before replication)
 * is delegated to planner.ts, so such clusters are planned exactly as before:
 * each of its moves becomes the splits at its ends and one replaceReplica per
 * range it covers. A factor-1 map with groups (the factor was lowered) is
 * trimmed and evacuated here, then balanced by planner.ts too, so that the
 * plan made on its result (delegated) finds nothing to do.
 *
 * Otherwise (docs/design.md "Replication and failover"):
 *
 * - Roles. Eligible: up and not draining; it may give and take. Draining (up):
 *   must end with no copy. Gone: down and in `replaceDown`; its copies are
 *   rebuilt elsewhere from the primary. Fixed: down otherwise (or unknown);
 *   nothing is fenced on it or rebuilt from it, so every range with a copy on
 *   it is *frozen*: left as it is. So is a range with learners (a change of its
 *   group is under way) and one whose primary is gone with no in-sync replica
 *   that is up to take over. Frozen copies still count in their shards' loads.
 * - Every other range ends with want = min(factor, eligible shards) replicas,
 *   all on eligible shards, no shard holding two copies (the steps never give
 *   a copy to a shard that holds one, so no intermediate map does either).
 * - The target load T of an eligible shard is its share of W, the bytes the
 *   eligible shards hold when every range has `want` copies: the mean W / E, or
 *   with disk rooms the water level (as in planner.ts).
 * - Phases, each a greedy over the working map (replica-groups.ts); a step
 *   never gives a shard more than its disk room:
 *   1. Primacy leaves leaving shards: a primary there hands over to an in-sync
 *      eligible replica (a gone one to any live in-sync replica).
 *   2. Trim: a range with more than `want` replicas drops those on leaving
 *      shards first, then the fullest shard's copy of a piece of it cut to
 *      about what that shard holds above T (a primary hands over first), so
 *      that a lowered factor evens the loads without copying a byte.
 *   3. Evacuate: each copy on a leaving shard is replaced, piece by piece, on
 *      the neediest eligible shard without a copy of that range, each piece cut
 *      at a bucket boundary to about what that shard lacks.
 *   4. Fill: each range short of `want` replicas gets new ones the same way.
 *   5. Balance (replica-balance.ts): unless every eligible shard is within
 *      ±tolerance of T (hysteresis), each step takes from the most over-full
 *      shard the piece of one of its ranges closest to what both can use, for
 *      the neediest shard without a copy of that range, and replaces the copy
 *      there; when that shard holds every range of the fullest, a relay through
 *      a third shard. Steps only lower Σ|load − T|, so the loop ends, in a state
 *      where planning again finds nothing to do.
 *   6. Primaries (replica-primaries.ts): hand-overs (no bytes) along augmenting
 *      paths until the counts are as even as the in-sync sets allow: within
 *      one of even whenever some assignment of primaries to in-sync eligible
 *      replicas is.
 * - minimumBytes, a lower bound on the bytes a full rebalance copies (as
 *   planner.ts's), is the larger of:
 *   (a) the bytes of every copy that must be created: for each range that is
 *   not frozen, (want − its copies that can be kept, at least 0) × its bytes;
 *   no step but addReplica and replaceReplica creates a copy, so this bounds
 *   every plan that gives each range its replicas; and
 *   (b) Σ over eligible shards of max(0, min(T, load + room) − keepable): a
 *   shard ends with what it keeps plus what it receives, so a plan that
 *   leaves every eligible shard at its target copies at least that much (one
 *   that stops inside the tolerance band, as this one does, may copy less).
 *   A copy can be kept when it is on an eligible shard and, if one replica is
 *   wanted, in sync (the one left must be the primary, and primacy passes
 *   only to in-sync replicas); `keepable` is the load of such copies.
 *   Either can be the larger: (a) when ranges lack replicas but the shards are
 *   even, (b) when the shards are uneven and no copy is missing.
 *
 * Cost: O(buckets + ranges) to set up; a step of phases 1–4 costs O(shards)
 * plus O(ranges) for a split (an array splice);
 * a balancing step O(shards² × ranges) at worst (every source and receiver
 * tried, every range scanned for the best piece; a relay tries every third
 * shard), and each augmenting path O(ranges × factor). Measured: 4,096 ranges
 * on 65 shards, factor 3, a drain and a new shard: about 0.4 s and 800 steps.
 * Meant for maps of thousands of ranges; planner.ts plans the largest map
 * (65,536 ranges) on 1,000 shards in a few hundred milliseconds, this would not.
 */
import { CairnError } from '../common/errors.js';
import { factorOf, inSyncOf, isSingleCopy, learnersOf, mapError, replicasOf, type MapRange } from '../common/map.js';
import { BUCKET_COUNT, bucketSpan } from '../common/ranges.js';
import { KEYSPACE_SUMS, prefixSums, waterLevel } from './bucket-sums.js';
import { DEFAULT_TOLERANCE, type PlanInput, type PlannedMove } from './plan-types.js';
import { plan } from './planner.js';
import { GroupMap, type Seg } from './replica-groups.js';
import { balance } from './replica-balance.js';
import { evenPrimaries } from './replica-primaries.js';
import type { ReplicaPlan, ReplicaPlanOptions } from './replica-plan-steps.js';

export { applyReplicaStep, type ReplicaPlan, type ReplicaPlanOptions, type ReplicaStep } from './replica-plan-steps.js';

const Role = { Eligible: 0, Draining: 1, Gone: 2, Fixed: 3 } as const;
type Role = (typeof Role)[keyof typeof Role];

/**
 * Plans the replica groups' changes. Throws CairnError('INVALID_ARGUMENT') for
 * an invalid map (mapError), duplicate shard ids, bad bucket stats or rooms,
 * or a tolerance outside [0, 1).
 */
export function planReplicas(input: PlanInput, opts: ReplicaPlanOptions = {}): ReplicaPlan {
  const tolerance = opts.tolerance ?? DEFAULT_TOLERANCE;
  if (!(tolerance >= 0 && tolerance < 1)) throw new CairnError('INVALID_ARGUMENT', `tolerance must be in [0, 1), got ${tolerance}`);
  const factor = factorOf(input.map);
  if (!(Number.isInteger(factor) && factor >= 1)) throw new CairnError('INVALID_ARGUMENT', `replicationFactor must be an integer >= 1, got ${factor}`);
  const mapErr = mapError(input.map);
  if (mapErr) throw new CairnError('INVALID_ARGUMENT', `map: ${mapErr}`);
  if (factor === 1 && input.map.ranges.every(isSingleCopy)) return singleCopyPlan(input, opts);

  const { bytes: bytesP } = prefixSums(input.buckets);
  const totalBytes = bytesP[BUCKET_COUNT]!;
  const ranges = input.map.ranges;
  if (ranges.length === 0) return { steps: [], targetMap: [], totalBytes, movedBytes: 0, minimumBytes: 0, basis: 'bytes' };

  // ---- shards and roles (index order = input order, then shards only the map names)
  const ids: string[] = [];
  const role: Role[] = [];
  const index = new Map<string, number>();
  const roomOf: number[] = [];
  const addShard = (id: string, r: Role, room: number): number => {
    index.set(id, ids.length);
    ids.push(id);
    role.push(r);
    roomOf.push(room);
    return ids.length - 1;
  };
  for (const sh of input.shards) {
    if (index.has(sh.id)) throw new CairnError('INVALID_ARGUMENT', `shards: duplicate shard id ${sh.id}`);
    if (sh.roomBytes !== undefined && !(sh.roomBytes >= 0)) throw new CairnError('INVALID_ARGUMENT', `shards: ${sh.id} has roomBytes=${sh.roomBytes}; it must be >= 0 (or absent: unlimited)`);
    const r = !sh.up ? (opts.replaceDown?.has(sh.id) ? Role.Gone : Role.Fixed) : sh.draining ? Role.Draining : Role.Eligible;
    addShard(sh.id, r, sh.roomBytes ?? Infinity);
  }
  const shardIndex = (id: string): number => index.get(id) ?? addShard(id, Role.Fixed, Infinity);
  const eligible = ids.map((_, i) => i).filter((i) => role[i] === Role.Eligible);
  const E = eligible.length;
  const want = Math.min(factor, E);

  // ---- the working map
  const segs: Seg[] = ranges.map((r) => toSeg(r, shardIndex, role));
  // Key space when the eligible and leaving shards hold no bytes at all (an empty cluster), as in planner.ts.
  const basisBytes = segs.some((g) => bytesP[g.e]! > bytesP[g.s]! && g.replicas.some((i) => role[i] !== Role.Fixed));
  const basis: ReplicaPlan['basis'] = basisBytes ? 'bytes' : 'keyspace';
  const P = basisBytes ? bytesP : KEYSPACE_SUMS;
  const room = Float64Array.from(roomOf, (r) => (basisBytes ? r : Infinity));
  const gm = new GroupMap(ids, segs, P, bytesP, room);
  if (E === 0) return { steps: [], targetMap: gm.toMap(), totalBytes, movedBytes: 0, minimumBytes: 0, basis };

  // ---- the target load and the lower bound
  const { T, minimumBytes: shortOrForced } = targetAndMinimum(gm, role, eligible, want);
  const minimumBytes = basisBytes ? shortOrForced : 0;
  const band = tolerance * T;
  const slack = band / 2;

  const { load, primaries } = gm;
  const leaving = (i: number): boolean => role[i] === Role.Draining || role[i] === Role.Gone;
  const byLoad = (xs: number[]): number[] => xs.sort((x, y) => load[x]! - load[y]! || x - y);

  /** Hands primacy of `g` to its in-sync replica on an eligible shard with the fewest primaries, if it has one. */
  const handOverToEligible = (g: Seg): boolean => {
    const p = g.replicas[0]!;
    let best = -1;
    for (const i of g.inSync) if (i !== p && role[i] === Role.Eligible && (best < 0 || primaries[i]! < primaries[best]!)) best = i;
    if (best < 0) return false;
    gm.handOver(g, best);
    return true;
  };

  /** True when `s` may give up its copy of `g`: a follower, a primary alone in sync, or one that can hand over to an eligible replica. */
  const canLetGo = (g: Seg, s: number): boolean =>
    g.replicas[0] !== s || g.inSync.every((i) => i === s) || g.inSync.some((i) => i !== s && role[i] === Role.Eligible);

  /** How much to give receiver d of a range weighing w: what it lacks (a little over T when no other shard is under the band). */
  const sizeFor = (d: number, w: number): number => {
    const othersUnder = eligible.some((i) => i !== d && T - load[i]! > band);
    const a = Math.min(w, T - load[d]! + (othersUnder ? 0 : slack));
    return a > 0 ? a : w;
  };

  /**
   * Gives a piece of `g` to the neediest eligible shard without a copy that has room for one:
   * replacing `from`'s copy, or as a new replica when from < 0. False when no shard can take any piece.
   */
  const placePiece = (g: Seg, from: number): boolean => {
    const receivers = byLoad(eligible.filter((d) => !gm.holds(g, d)));
    // When every receiver will be needed anyway (a fill onto all the shards there are), cutting gains nothing.
    const all = from < 0 && want - g.replicas.length >= receivers.length;
    for (const d of receivers) {
      const piece = gm.bestPiece(g, all ? gm.weight(g) : sizeFor(d, gm.weight(g)), room[d]!);
      if (!piece) continue;
      const part = gm.cut(g, piece);
      if (from < 0) gm.addReplica(part, d);
      else gm.replaceReplica(part, from, d);
      return true;
    }
    return false;
  };

  /**
   * Drops one copy of (a piece of) `g`, which has more than `want` replicas: one on a leaving
   * shard if any (all of it: it must go anyway), else the fullest shard's, cut to about what
   * that shard holds above T, so that trimming balances as it goes.
   */
  const trimStep = (g: Seg): void => {
    const onLeaving = g.replicas.slice(1).find(leaving);
    if (onLeaving !== undefined) return gm.dropReplica(g, onLeaving);
    const canDrop = (i: number): boolean => i !== g.replicas[0] || g.inSync.some((j) => j !== i && role[j] === Role.Eligible);
    const victim = g.replicas.filter(canDrop).sort((x, y) => load[y]! - load[x]! || x - y)[0]!;
    const excess = load[victim]! - T;
    const part = gm.cut(g, gm.bestPiece(g, excess > 0 ? excess : gm.weight(g), Infinity)!);
    if (victim === part.replicas[0]) handOverToEligible(part);
    gm.dropReplica(part, victim);
  };

  // ---- 1. primacy off leaving shards, where an eligible (or for a gone primary, any live) in-sync replica can take it
  for (const g of segs) {
    if (g.frozen || !leaving(g.replicas[0]!) || handOverToEligible(g) || role[g.replicas[0]!] !== Role.Gone) continue;
    // The gone primary can serve nothing: an in-sync draining replica takes over (toSeg made sure there is one).
    gm.handOver(g, g.inSync.find((i) => i !== g.replicas[0] && role[i] === Role.Draining)!);
  }

  // ---- 2. trim ranges with too many replicas, 3. evacuate leaving shards, 4. fill ranges short of replicas
  // (ranges split as they go, the pieces right after them: walk by index)
  for (const phase of ['trim', 'evacuate', 'fill'] as const) {
    for (let k = 0; k < segs.length; k++) {
      const g = segs[k]!;
      if (g.frozen) continue;
      for (;;) {
        if (phase === 'trim') {
          if (g.replicas.length <= want) break;
          trimStep(g);
          continue;
        }
        if (phase === 'fill' ? g.replicas.length >= want : !g.replicas.some(leaving)) break;
        // Followers first: once they are replaced, every other in-sync replica is eligible and
        // a leaving primary can hand over (or, alone in sync, move with its copy).
        const from = phase === 'fill' ? -1 : (g.replicas.slice(1).find(leaving) ?? g.replicas[0]!);
        if (from === g.replicas[0]) handOverToEligible(g);
        if (!placePiece(g, from)) break; // no eligible shard has room for any of it: it stays (the caller reports)
      }
    }
  }

  // ---- 5. balance (replica-balance.ts)
  if (factor === 1 && segs.every((g) => g.replicas.length === 1 && g.learners.length === 0)) {
    // Trimming left single copies: balance them as planner.ts does, so that planning again
    // (which delegates such a map to planner.ts) finds nothing to do.
    const shards = input.shards.map((sh) => (sh.roomBytes === undefined || !basisBytes ? sh : { ...sh, roomBytes: Math.max(0, room[index.get(sh.id)!]!) }));
    applyMoves(gm, plan({ ...input, map: { ...input.map, ranges: gm.toMap() }, shards }, { tolerance }).moves, index);
  } else {
    balance({ gm, eligible, T, band, slack, canLetGo, handOverToEligible });
  }

  // ---- 6. primaries
  evenPrimaries(gm, eligible);

  return { steps: gm.steps, targetMap: gm.toMap(), totalBytes, movedBytes: gm.movedBytes, minimumBytes, basis };
}

/**
 * T, the load each eligible shard should end with, and minimumBytes (see the
 * header): the larger of the bytes of copies that must be created and what
 * the shards lack to reach T beyond what they can keep.
 */
function targetAndMinimum(gm: GroupMap, role: readonly Role[], eligible: readonly number[], want: number): { T: number; minimumBytes: number } {
  const { segs, room } = gm;
  // A copy no plan can keep: with one replica wanted, the one left must be the primary, and primacy
  // passes only to in-sync replicas, so a copy that is not in sync goes.
  const keeps = (g: Seg, i: number): boolean => role[i] === Role.Eligible && (want > 1 || g.inSync.includes(i));
  let W = 0;
  let forcedBytes = 0;
  const keepable = new Float64Array(gm.ids.length);
  for (const g of segs) {
    const w = gm.weight(g);
    if (g.frozen) {
      // Left as it is: its copies on eligible shards stay.
      for (const i of [...g.replicas, ...g.learners]) {
        if (role[i] !== Role.Eligible) continue;
        W += w;
        keepable[i]! += w;
      }
      continue;
    }
    W += w * want;
    const kept = g.replicas.filter((i) => keeps(g, i));
    for (const i of kept) keepable[i]! += w;
    forcedBytes += gm.bytes(g) * Math.max(0, want - kept.length);
  }
  const cap = (i: number): number => gm.load[i]! + room[i]!;
  const T = waterLevel(eligible.map(cap), W);
  let shortBytes = 0;
  for (const i of eligible) shortBytes += Math.max(0, Math.min(T, cap(i)) - keepable[i]!);
  return { T, minimumBytes: Math.max(forcedBytes, shortBytes) };
}

/** A range of the input as the working map holds it, frozen when the planner must leave it alone. */
function toSeg(r: MapRange, shardIndex: (id: string) => number, role: readonly Role[]): Seg {
  const [s, e] = bucketSpan(r);
  const replicas = replicasOf(r).map(shardIndex);
  const inSync = inSyncOf(r).map(shardIndex);
  const learners = learnersOf(r).map(shardIndex);
  const primaryStuck = role[replicas[0]!] === Role.Gone && !inSync.some((i) => role[i] === Role.Eligible || role[i] === Role.Draining);
  const frozen = learners.length > 0 || primaryStuck || replicas.some((i) => role[i] === Role.Fixed);
  return { s, e, replicas, inSync, learners, version: r.version ?? 0n, frozen, orig: r, changed: false };
}

/** Factor 1, single copies: planner.ts's moves, each as splits at its ends and a replaceReplica per range it covers. */
function singleCopyPlan(input: PlanInput, opts: ReplicaPlanOptions): ReplicaPlan {
  const p = plan(input, { tolerance: opts.tolerance });
  const ids = [...new Set([...input.shards.map((s) => s.id), ...input.map.ranges.map((r) => r.shardId), ...p.moves.map((m) => m.to)])];
  const index = new Map(ids.map((id, i) => [id, i]));
  const segs: Seg[] = input.map.ranges.map((r) => toSeg(r, (id) => index.get(id)!, []));
  const { bytes: bytesP } = prefixSums(input.buckets);
  const gm = new GroupMap(ids, segs, bytesP, bytesP, new Float64Array(ids.length).fill(Infinity));
  applyMoves(gm, p.moves, index);
  return { steps: gm.steps, targetMap: gm.toMap(), totalBytes: p.totalBytes, movedBytes: p.movedBytes, minimumBytes: p.minimumBytes, basis: p.basis };
}

/** planner.ts's moves as steps: the splits at each move's ends, and a replaceReplica for each range it covers. */
function applyMoves(gm: GroupMap, moves: readonly PlannedMove[], index: ReadonlyMap<string, number>): void {
  const segs = gm.segs;
  for (const m of moves) {
    const [ms, me] = bucketSpan(m);
    for (let k = segs.findIndex((g) => g.e > ms); k < segs.length && segs[k]!.s < me; k++) {
      let g = segs[k]!;
      if (g.s < ms) g = gm.split(g, ms);
      if (g.e > me) gm.split(g, me);
      gm.replaceReplica(g, index.get(m.from)!, index.get(m.to)!);
      k = segs.indexOf(g);
    }
  }
}
