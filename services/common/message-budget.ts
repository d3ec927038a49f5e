/**
 * How a Batch stream (server answers, client calls) cuts what is queued into
 * messages under a byte budget. Pure.
 */

/** An item waiting to be sent, with its estimated size on the wire. */
export interface Sized<T> {
  item: T;
  bytes: number;
}

/**
 * The leading items that fit one message under `budget` bytes (at least one,
 * so an item bigger than the budget still goes, alone), the rest, and the
 * bytes taken.
 */
export function takeUnderBudget<T>(queue: readonly Sized<T>[], budget: number): { taken: T[]; rest: Sized<T>[]; bytes: number } {
  let bytes = 0;
  let k = 0;
  while (k < queue.length && (k === 0 || bytes + queue[k]!.bytes <= budget)) bytes += queue[k++]!.bytes;
  return { taken: queue.slice(0, k).map((x) => x.item), rest: queue.slice(k), bytes };
}
