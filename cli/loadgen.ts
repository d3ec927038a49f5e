/**
 * Deterministic rows for `ctl load` and `ctl verify`. The seed picks both the
 * keys and the values, so loads with different seeds write disjoint rows and
 * verify can tell a missing row from a wrong one.
 */
import { createHash } from 'node:crypto';

export const LOAD_COLUMN = 'load:value';

export function loadRowKey(seed: number, i: number): string {
  return `load/${seed}/${i.toString().padStart(10, '0')}`;
}

/** `size` pseudo-random bytes derived from (seed, i), printable so `ctl get` shows them. */
export function loadValue(seed: number, i: number, size: number): Buffer {
  const out = Buffer.alloc(size);
  let block = 0;
  let filled = 0;
  while (filled < size) {
    const h = createHash('sha256').update(`${seed}/${i}/${block++}`).digest('base64url');
    filled += out.write(h, filled, 'latin1');
  }
  return out;
}
