/**
 * The LevelDB plumbing every part of the store shares: the sublevels of one
 * data directory, the raw per-row op that listeners and moves see, and the
 * chunked iteration and point-read helpers. Kept apart so that the parts
 * (plans, writer, reads, request ids, leases, open) agree on one set of types
 * and read LevelDB the same way; no part owns the database, ShardStore does.
 */
import type { AbstractSublevel } from 'abstract-level';
import type { BatchOperation, Level } from 'level';

export type PerRowSublevel = 'cells' | 'leases' | 'reqids';
export const PER_ROW: readonly PerRowSublevel[] = ['cells', 'leases', 'reqids'];

/** One per-row key as stored; `value` undefined means delete. */
export interface RawOp {
  sublevel: PerRowSublevel;
  key: Buffer;
  value?: Buffer;
}

/** Entries per nextv. */
export const CHUNK = 256;

/** A sublevel of the store's database with keys of type K and binary values. */
type Sublevel<K> = AbstractSublevel<Level<Buffer, Buffer>, string | Buffer | Uint8Array, K, Buffer>;

/**
 * The store's sublevels. Declared rather than inferred: the inferred type
 * names abstract-level's own path, which a declaration build (npm pack) may
 * not be able to reach.
 */
export interface Subs {
  cells: Sublevel<Buffer>;
  leases: Sublevel<Buffer>;
  reqids: Sublevel<Buffer>;
  latest: Sublevel<Buffer>;
  rowindex: Sublevel<Buffer>;
  oldRowcells: Sublevel<Buffer>;
  meta: Sublevel<string>;
}

export function sublevels(db: Level<Buffer, Buffer>): Subs {
  const bin = { keyEncoding: 'buffer', valueEncoding: 'buffer' } as const;
  return {
    cells: db.sublevel<Buffer, Buffer>('cells', bin),
    leases: db.sublevel<Buffer, Buffer>('leases', bin),
    reqids: db.sublevel<Buffer, Buffer>('reqids', bin),
    /** Per column key prefix, the timestamp tail of its newest stored cell (shard-local, derived: see settle). */
    latest: db.sublevel<Buffer, Buffer>('lv', bin), // short names: they are in every key, and every new row writes both
    /** Per stored row, by its row-index key (keys.ts rowIndexKey), its number of stored cells: row existence and prefix seeks (shard-local, derived: see settle). */
    rowindex: db.sublevel<Buffer, Buffer>('rk', bin),
    /** The cell counts of stores from before the row-key index (keyed by row prefix): cleared when the index is built. */
    oldRowcells: db.sublevel<Buffer, Buffer>('rc', bin),
    meta: db.sublevel<string, Buffer>('meta', { keyEncoding: 'utf8', valueEncoding: 'buffer' }),
  };
}
export type BinSub = Subs['cells'];
export type Snapshot = ReturnType<Level<Buffer, Buffer>['snapshot']>;
export type BatchOp = BatchOperation<Level<Buffer, Buffer>, Buffer | string, Buffer>;

/** Iterator options without undefined bounds (abstract-level would try to encode them). */
export function rangeOpts(b: { gte?: Buffer; gt?: Buffer; lt?: Buffer; lte?: Buffer }, extra: { limit?: number; snapshot?: Snapshot } = {}) {
  const o: Record<string, unknown> = {};
  for (const k of ['gte', 'gt', 'lt', 'lte'] as const) if (b[k] !== undefined) o[k] = b[k];
  if (extra.limit !== undefined) o.limit = extra.limit;
  if (extra.snapshot !== undefined) o.snapshot = extra.snapshot;
  return o as { gte?: Buffer; gt?: Buffer; lt?: Buffer; lte?: Buffer; limit?: number; snapshot?: Snapshot };
}

export const hex = (b: Buffer): string => b.toString('latin1'); // a reversible Map key for a Buffer
export const startsWith = (b: Buffer, p: Buffer): boolean => b.length >= p.length && b.compare(p, 0, p.length, 0, p.length) === 0;
export const show = (row: string): string => JSON.stringify(row.length > 80 ? `${row.slice(0, 80)}…` : row);

/**
 * Point reads of a few keys run synchronously (LevelDB's Get on this thread:
 * a few µs, with bloom filters for absent keys); an async getMany costs ~15 µs
 * of CPU per call in thread-pool hand-offs and its implicit snapshot, so it is
 * kept for many keys at once, where it keeps the event loop free.
 */
const SYNC_LOOKUP_MAX = 8;
export function lookup(sub: BinSub, keys: Buffer[]): (Buffer | undefined)[] | Promise<(Buffer | undefined)[]> {
  if (keys.length > SYNC_LOOKUP_MAX) return sub.getMany(keys);
  const out = new Array<Buffer | undefined>(keys.length);
  for (let i = 0; i < keys.length; i++) out[i] = sub.getSync(keys[i]!);
  return out;
}

/** Entries in bounds, read in chunks with nextv; the iterator is closed even when the caller stops early. */
export async function* entries(
  sub: BinSub,
  bounds: { gte?: Buffer; gt?: Buffer; lt?: Buffer; lte?: Buffer },
  extra: { limit?: number; snapshot?: Snapshot } = {},
): AsyncGenerator<[Buffer, Buffer]> {
  const it = sub.iterator(rangeOpts(bounds, extra));
  try {
    for (;;) {
      const chunk = (await it.nextv(CHUNK)) as [Buffer, Buffer][];
      if (chunk.length === 0) return;
      yield* chunk;
    }
  } finally {
    await it.close();
  }
}

/** Keys in bounds, read in chunks with nextv. */
export async function* keysIn(sub: BinSub, bounds: { gte?: Buffer; lt?: Buffer }): AsyncGenerator<Buffer> {
  const it = sub.keys(rangeOpts(bounds));
  try {
    for (;;) {
      const chunk = (await it.nextv(CHUNK)) as Buffer[];
      if (chunk.length === 0) return;
      yield* chunk;
    }
  } finally {
    await it.close();
  }
}

/** Keys of the meta sublevel in string bounds, read in chunks with nextv. */
export async function* metaKeysIn(sub: Subs['meta'], bounds: { gte: string; lt: string }): AsyncGenerator<string> {
  const it = sub.keys(bounds);
  try {
    for (;;) {
      const chunk = await it.nextv(1024);
      if (chunk.length === 0) return;
      yield* chunk;
    }
  } finally {
    await it.close();
  }
}

/** A value as a Buffer, without copying when it already is one (values from gRPC are). */
export const toBuffer = (v: Uint8Array): Buffer => (Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength));
