/**
 * Client-side routing. Pure: no I/O, no clock. Given the cached cluster map it
 * says which shard owns a row, splits batches by owner (keeping each item's
 * original index so results can be put back in request order), plans scans
 * over the map's ranges in hash order, and encodes the scan resume token.
 *
 * Whenever the cached map cannot route a key (no map yet, a hole, an owner
 * without an address) the answer is WRONG_SHARD: that is exactly the case
 * where the caller must fetch a fresh map and try again (see retry.ts).
 */
import { CairnError } from '../common/errors.js';
import { HASH_SPACE_END, hashFromBytes, hashToBytes, rowHash } from '../common/hash.js';
import { addressOf, ownerOfHash, type ClusterMap } from '../common/map.js';
import { rangeContains, type HashRange, type OwnedRange } from '../common/ranges.js';

/** Where one hash is served under a map. */
export interface Route {
  shardId: string;
  address: string;
  /** The owning range (contains the hash). */
  range: OwnedRange;
}

/** The owner of a hash, or WRONG_SHARD when the cached map cannot say. */
export function routeHash(map: ClusterMap, hash: bigint): Route {
  const range = ownerOfHash(map, hash);
  if (!range) {
    throw new CairnError('WRONG_SHARD', `the cached map (epoch ${map.epoch}) has no owner for hash ${hash}; refresh the map`);
  }
  const address = addressOf(map, range.shardId);
  if (!address) {
    throw new CairnError('WRONG_SHARD', `the cached map (epoch ${map.epoch}) has no address for shard ${range.shardId}; refresh the map`);
  }
  return { shardId: range.shardId, address, range };
}

/** The owner shard and address of a row. */
export function routeRow(map: ClusterMap, row: string): Route {
  return routeHash(map, rowHash(row));
}

export interface Indexed<T> {
  /** Position of the item in the array given to groupByShard. */
  index: number;
  item: T;
}

export interface ShardGroup<T> {
  shardId: string;
  address: string;
  /** In input order. */
  items: Array<Indexed<T>>;
}

/**
 * Groups items by the shard that owns their key. Every item lands in exactly
 * one group; groups and the items within them keep input order.
 */
export function groupByShard<T>(map: ClusterMap, items: readonly T[], keyOf: (item: T) => string): Map<string, ShardGroup<T>> {
  const groups = new Map<string, ShardGroup<T>>();
  items.forEach((item, index) => {
    const r = routeRow(map, keyOf(item));
    let g = groups.get(r.shardId);
    if (!g) {
      g = { shardId: r.shardId, address: r.address, items: [] };
      groups.set(r.shardId, g);
    }
    g.items.push({ index, item });
  });
  return groups;
}

export interface BatchCaps<T> {
  /** The most items per batch (at least 1). */
  maxItems: number;
  /** Further budgets per batch, e.g. cells per call or bytes per message. */
  weights?: Array<{ max: number; of: (item: T) => number }>;
}

/**
 * Cuts a list into consecutive batches that respect every cap. An item that
 * alone exceeds a weight budget still gets a batch of its own: rows are
 * written atomically, so it cannot be split here, and the server's limit
 * error is the honest answer for it.
 */
export function splitBatches<T>(items: readonly T[], caps: BatchCaps<T>): T[][] {
  const maxItems = Math.max(1, Math.floor(caps.maxItems));
  const weights = caps.weights ?? [];
  const out: T[][] = [];
  let cur: T[] = [];
  let used = weights.map(() => 0);
  for (const item of items) {
    const w = weights.map((x) => x.of(item));
    const fits = cur.length < maxItems && weights.every((x, i) => used[i]! + w[i]! <= x.max);
    if (!fits && cur.length > 0) {
      out.push(cur);
      cur = [];
      used = weights.map(() => 0);
    }
    cur.push(item);
    used = used.map((u, i) => u + w[i]!);
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/** One step of a scan: the part of a window that one range covers. */
export interface ScanSegment extends HashRange {
  shardId: string;
  address: string;
}

/** The whole hash space, [0, 2^64). */
export const FULL_WINDOW: HashRange = { start: 0n, end: HASH_SPACE_END };

/**
 * The map's ranges that intersect `window`, clipped to it, in hash order.
 * They tile the window exactly when the map tiles the hash space.
 */
export function planScan(map: ClusterMap, window: HashRange = FULL_WINDOW): ScanSegment[] {
  const out: ScanSegment[] = [];
  let from = window.start;
  while (from < window.end) {
    const seg = segmentAt(map, from, window.end);
    out.push(seg);
    from = seg.end;
  }
  return out;
}

/** The segment that starts at `hash`: up to the end of its owning range or the window, whichever is first. */
export function segmentAt(map: ClusterMap, hash: bigint, windowEnd: bigint): ScanSegment {
  const r = routeHash(map, hash);
  return { start: hash, end: r.range.end < windowEnd ? r.range.end : windowEnd, shardId: r.shardId, address: r.address };
}

/**
 * Where a scan stands between pages. `hash` is the next hash to visit; with a
 * `shardToken` (the shard's next_token, whose first 8 bytes are the hash of
 * the last row returned) the scan resumes right after that row instead.
 * Because the position is a hash, it survives map changes: the next page is
 * routed to whoever owns that hash then.
 */
export interface ScanCursor {
  hash: bigint;
  shardToken?: Buffer;
}

const TOKEN_VERSION = 1;
const KIND_AT_HASH = 0;
const KIND_SHARD_TOKEN = 1;

/** The cursor after a shard answered: inside its window, or at the window's end. */
export function cursorAfter(nextToken: Uint8Array, segmentEnd: bigint): ScanCursor {
  if (nextToken.length === 0) return { hash: segmentEnd };
  const shardToken = Buffer.from(nextToken);
  return { hash: hashFromBytes(shardToken), shardToken };
}

/** The opaque string a caller passes back to continue a scan (base64url). */
export function encodeScanToken(c: ScanCursor): string {
  const body = c.shardToken ? Buffer.from(c.shardToken) : hashToBytes(c.hash);
  return Buffer.concat([Buffer.from([TOKEN_VERSION, c.shardToken ? KIND_SHARD_TOKEN : KIND_AT_HASH]), body]).toString('base64url');
}

export function decodeScanToken(token: string): ScanCursor {
  const bad = () => new CairnError('INVALID_ARGUMENT', 'resumeToken: not a token returned by scanPage');
  if (!/^[A-Za-z0-9_-]*$/.test(token)) throw bad();
  const b = Buffer.from(token, 'base64url');
  if (b.length < 10 || b[0] !== TOKEN_VERSION) throw bad();
  const body = b.subarray(2);
  if (b[1] === KIND_AT_HASH && body.length === 8) return { hash: hashFromBytes(body) };
  if (b[1] === KIND_SHARD_TOKEN) return { hash: hashFromBytes(body), shardToken: Buffer.from(body) };
  throw bad();
}

/** True when the cursor is inside the window (there may be more to scan). */
export function cursorInWindow(c: ScanCursor, window: HashRange): boolean {
  return rangeContains(window, c.hash);
}
