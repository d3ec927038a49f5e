/**
 * Phase 5 of the replica planner: evening every eligible shard's load (all
 * the copies it holds) around its target T. Pure.
 *
 * Each step takes, from the most over-full shard s, the piece of one of its
 * ranges closest to what both can use, for the neediest shard d without a
 * copy of that range, and replaces s's copy of it with one on d (s hands
 * primacy over first when it has it). When d holds a copy of every range s
 * has, a direct step cannot help d, however far below T it is; moving one
 * bucket at a time through a shard near T would take thousands of steps and
 * cut the map to shreds. So the step relays instead: a piece of about
 * min(excess, need) goes from s to a third shard x lacking it, and a piece of
 * about the same weight from x to d. That copies twice the bytes it evens,
 * which is why it is the last resort.
 *
 * Every step lowers Σ|load − T| over the eligible shards (weights are whole
 * bytes or buckets, so by at least one), so the loop ends; it stops when every
 * eligible shard is within ±tolerance of T (hysteresis) or no step helps.
 * Both conditions depend only on the map and the loads, so a plan made on the
 * result has nothing to do.
 */
import type { GroupMap, Piece, Seg } from './replica-groups.js';

export interface BalanceContext {
  gm: GroupMap;
  eligible: readonly number[];
  T: number;
  band: number;
  /** A source may dip below T (or a receiver rise above it) by this much, when no other shard is out of band on that side. */
  slack: number;
  /** May `s` give up its copy of `g` (with a hand-over first if it is the primary)? */
  canLetGo: (g: Seg, s: number) => boolean;
  /** Hands primacy of `g` to an eligible in-sync replica, if it has one. */
  handOverToEligible: (g: Seg) => boolean;
}

interface Choice {
  g: Seg;
  piece: Piece;
}

export function balance(ctx: BalanceContext): void {
  const { gm, eligible, T, band, slack } = ctx;
  const { load, room, segs } = gm;
  const byLoad = (xs: number[]): number[] => xs.sort((x, y) => load[x]! - load[y]! || x - y);
  const dev = (i: number, delta = 0): number => Math.abs(load[i]! + delta - T);

  /** The piece of a range of s that d lacks with weight closest to `a` (x <= d's room, x < limit), or null. */
  const bestFor = (s: number, d: number, a: number, limit: number): Choice | null => {
    let best: Choice | null = null;
    for (const g of segs) {
      if (g.frozen || !g.replicas.includes(s) || gm.holds(g, d) || !ctx.canLetGo(g, s)) continue;
      const piece = gm.bestPiece(g, a, room[d]!, limit);
      if (piece && piece.x > 0 && (!best || Math.abs(piece.x - a) < Math.abs(best.piece.x - a))) best = { g, piece };
    }
    return best;
  };

  const give = (c: Choice, s: number, d: number): void => {
    const part = gm.cut(c.g, c.piece);
    if (part.replicas[0] === s) ctx.handOverToEligible(part);
    gm.replaceReplica(part, s, d);
  };

  /** s → x → d, through the first shard x (closest to T first) by which the two pieces lower Σ|load − T|. */
  const relay = (s: number, d: number, a: number): boolean => {
    const others = eligible.filter((x) => x !== s && x !== d && room[x]! > 0).sort((x, y) => dev(x) - dev(y) || x - y);
    for (const x of others) {
      const first = bestFor(s, x, a, Infinity);
      if (!first) continue;
      const second = bestFor(x, d, first.piece.x, Infinity);
      if (!second) continue;
      const [x1, x2] = [first.piece.x, second.piece.x];
      if (!(dev(s, -x1) + dev(x, x1 - x2) + dev(d, x2) < dev(s) + dev(x) + dev(d))) continue;
      give(first, s, x);
      give(second, x, d);
      return true;
    }
    return false;
  };

  const step = (): boolean => {
    let overBand = 0;
    let underBand = 0;
    for (const i of eligible) {
      if (load[i]! - T > band) overBand++;
      else if (T - load[i]! > band) underBand++;
    }
    if (overBand + underBand === 0) return false;
    const sources = byLoad(eligible.filter((i) => load[i]! > T)).reverse();
    const receivers = byLoad(eligible.filter((i) => load[i]! < T && room[i]! > 0));
    for (const s of sources) {
      const e = load[s]! - T;
      // As in planner.ts: the extra is allowed only when no other shard is out of band on that side, so it is never handed back.
      const ss = overBand - (e > band ? 1 : 0) === 0 ? slack : 0;
      for (const [k, d] of receivers.entries()) {
        const n = T - load[d]!;
        const sd = underBand - (n > band ? 1 : 0) === 0 ? slack : 0;
        const a = Math.min(n + sd, e + ss, Math.max(e, n), room[d]!);
        // Only a piece lighter than e + n lowers |load[s] − T| + |load[d] − T|.
        const direct = bestFor(s, d, a, e + n);
        if (direct) {
          give(direct, s, d);
          return true;
        }
        if (k === 0 && relay(s, d, Math.min(e, n, room[d]!))) return true;
      }
    }
    return false;
  };

  let budget = 10 * (segs.length + eligible.length) + 10_000;
  while (budget-- > 0 && step());
}
