/**
 * The planner's virtual map node (a range in bucket units, in a linked list)
 * and a max-heap of a shard's ranges by weight, used with lazy deletion.
 */

/** A range of the virtual map, in bucket units [s, e). */
export interface Node {
  s: number;
  e: number;
  owner: number;
  prev: Node | null;
  next: Node | null;
  /** Merged into its left neighbour; no longer in the map. */
  dead: boolean;
}

/** A heap entry: a shard's range and its weight when pushed (stale once the range changes). */
export interface HeapEntry {
  w: number;
  s: number;
  node: Node;
}

/** Heap order: heavier first, then lower start. */
const heavier = (x: HeapEntry, y: HeapEntry): boolean => x.w > y.w || (x.w === y.w && x.s < y.s);

export function heapPush(h: HeapEntry[], x: HeapEntry): void {
  let i = h.length;
  h.push(x);
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (!heavier(h[i]!, h[p]!)) break;
    [h[i], h[p]] = [h[p]!, h[i]!];
    i = p;
  }
}

export function heapPop(h: HeapEntry[]): void {
  const last = h.pop()!;
  if (h.length === 0) return;
  h[0] = last;
  let i = 0;
  for (;;) {
    const l = 2 * i + 1;
    const r = l + 1;
    let m = i;
    if (l < h.length && heavier(h[l]!, h[m]!)) m = l;
    if (r < h.length && heavier(h[r]!, h[m]!)) m = r;
    if (m === i) return;
    [h[i], h[m]] = [h[m]!, h[i]!];
    i = m;
  }
}
