/**
 * Phase 5 of the replica planner: spreading primaries over the eligible
 * shards with hand-overs alone (no bytes move). Pure.
 *
 * Each range whose primary is eligible may hand primacy to any of its in-sync
 * replicas on an eligible shard. An augmenting path runs from a shard with
 * many primaries to one with at least two fewer, each hop a range whose
 * primary is the hop's first shard and an in-sync replica its second; handing
 * over along it moves one primary from the path's start to its end and leaves
 * the shards between unchanged. When no such path is left, no assignment of
 * primaries to in-sync replicas has a smaller maximum (the classic result for
 * balancing unit jobs over their allowed machines), so the counts are within
 * one of even whenever the groups allow it.
 */
import type { GroupMap, Seg } from './replica-groups.js';

interface Hop {
  seg: Seg;
  to: number;
}

/** Hands over along augmenting paths until none is left; frozen ranges keep their primaries (and count). */
export function evenPrimaries(gm: GroupMap, eligible: readonly number[]): void {
  const count = gm.primaries;
  const isEligible = new Set(eligible);
  // Each path lowers Σ count² by at least 2; the budget only guards against a bug.
  for (let budget = 4 * gm.segs.length + 100; budget > 0; budget--) {
    const order = [...eligible].sort((x, y) => count[y]! - count[x]! || x - y);
    const least = count[order[order.length - 1]!]!;
    let path: Hop[] | null = null;
    for (const src of order) {
      if (count[src]! - least < 2) break;
      path = augmentingPath(gm, src, isEligible);
      if (path) break;
    }
    if (!path) return;
    for (const hop of path) gm.handOver(hop.seg, hop.to);
  }
}

/** The shortest path of hand-overs from `src` to an eligible shard with at least two fewer primaries (lowest index first), or null. */
function augmentingPath(gm: GroupMap, src: number, isEligible: ReadonlySet<number>): Hop[] | null {
  const count = gm.primaries;
  const out = new Map<number, Hop[]>();
  for (const seg of gm.segs) {
    const p = seg.replicas[0]!;
    if (seg.frozen || !isEligible.has(p)) continue;
    const hops = out.get(p) ?? [];
    for (const to of seg.inSync) if (to !== p && isEligible.has(to)) hops.push({ seg, to });
    out.set(p, hops);
  }
  const via = new Map<number, Hop | null>([[src, null]]);
  const queue = [src];
  for (let q = 0; q < queue.length; q++) {
    for (const hop of out.get(queue[q]!) ?? []) {
      if (via.has(hop.to)) continue;
      via.set(hop.to, hop);
      if (count[hop.to]! <= count[src]! - 2) {
        const path: Hop[] = [];
        for (let h: Hop | null | undefined = hop; h; h = via.get(h.seg.replicas[0]!)) path.unshift(h);
        return path;
      }
      queue.push(hop.to);
    }
  }
  return null;
}
