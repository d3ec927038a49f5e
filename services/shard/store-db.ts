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

/**
 * One LevelDB write batch, built below abstract-level. `db.batch(ops)` costs
 * ~1–2 µs of the event loop per op before LevelDB sees it: abstract-level
 * clones every op (spreading the options into it), validates and re-encodes
 * its key and prefixes it for its sublevel, then classic-level's native
 * `batch_do` reads each op's `type`, `key` and `value` back by name (about ten
 * N-API property calls per op). Here each key gets its sublevel's prefix in
 * one allocation (the same bytes abstract-level writes: the sublevel's
 * `prefix`, then the key), and goes to classic-level's chained batch with one
 * native call per op. Sublevels must be direct or nested sublevels of `db`
 * with binary values (every sublevel of the store is); a key given as a
 * string (meta) is written as UTF-8. When the database is not open, the ops
 * go through `db.batch` instead, which defers or refuses them as it always
 * did.
 */
type NativeBatch = { _put(key: Buffer, value: Buffer): void; _del(key: Buffer): void; _write(options: object): Promise<void> };
type AnySub = { prefix: string };
const PREFIXES = new WeakMap<object, Buffer>();
const NO_SYNC = Object.freeze({});
const WITH_SYNC = Object.freeze({ sync: true });

function prefixOf(sub: AnySub): Buffer {
  let p = PREFIXES.get(sub);
  if (!p) PREFIXES.set(sub, (p = Buffer.from(sub.prefix, 'utf8')));
  return p;
}

/** The key as stored: the sublevel's prefix, then the key's bytes. */
export function storedKey(sub: AnySub, key: Buffer | string): Buffer {
  const p = prefixOf(sub);
  if (typeof key === 'string') {
    const b = Buffer.allocUnsafe(p.length + Buffer.byteLength(key, 'utf8'));
    p.copy(b, 0);
    b.write(key, p.length, 'utf8');
    return b;
  }
  const b = Buffer.allocUnsafe(p.length + key.length);
  b.set(p, 0);
  b.set(key, p.length);
  return b;
}

export class WriteBatch {
  private readonly native: NativeBatch | null;
  private readonly ops: BatchOp[] | null;
  length = 0;

  constructor(private readonly db: Level<Buffer, Buffer>) {
    const direct = db.status === 'open' && typeof (db as unknown as { _chainedBatch?: unknown })._chainedBatch === 'function';
    this.native = direct ? (db as unknown as { _chainedBatch(): NativeBatch })._chainedBatch() : null;
    this.ops = direct ? null : [];
  }

  put(sub: AnySub, key: Buffer | string, value: Buffer): void {
    this.length++;
    if (this.native) this.native._put(storedKey(sub, key), value);
    else this.ops!.push({ type: 'put', sublevel: sub as BinSub, key, value } as BatchOp);
  }

  del(sub: AnySub, key: Buffer | string): void {
    this.length++;
    if (this.native) this.native._del(storedKey(sub, key));
    else this.ops!.push({ type: 'del', sublevel: sub as BinSub, key } as BatchOp);
  }

  /** An op built elsewhere (meta records, log positions, derived records). */
  op(o: BatchOp): void {
    const sub = (o as { sublevel?: AnySub }).sublevel;
    if (!sub) throw new Error('a store batch op needs a sublevel'); // every op of the store names one
    if (o.type === 'put') this.put(sub, o.key, o.value as Buffer);
    else this.del(sub, o.key);
  }

  /** Drops a batch that will not be written. */
  discard(): void {
    if (this.native) (this.db as unknown as { detachResource(r: unknown): void }).detachResource(this.native);
  }

  /** Writes the batch (an empty one writes nothing). */
  async write(sync: boolean): Promise<void> {
    if (this.length === 0) return this.discard();
    if (!this.native) {
      // No options object unless syncing: abstract-level spreads the options into every op (~10 µs per op, see bench/NOTES.md).
      await (this.db.batch as (ops: BatchOp[], o?: { sync: boolean }) => Promise<void>).call(this.db, this.ops!, sync ? WITH_SYNC : undefined);
      return;
    }
    try {
      await this.native._write(sync ? WITH_SYNC : NO_SYNC);
    } finally {
      // _chainedBatch() attached the batch to the database (for close()); the public write() would detach it.
      (this.db as unknown as { detachResource(r: unknown): void }).detachResource(this.native);
    }
  }
}

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

const GET_MANY_OPTIONS = Object.freeze({ valueEncoding: 'buffer', fillCache: true });

/**
 * Point reads in several sublevels at once: one async getMany of the root
 * database for all of them (keys prefixed in one allocation each, as
 * WriteBatch does), instead of one per sublevel through abstract-level.
 * Values come back per part, in key order. A few keys in all are read
 * synchronously, as `lookup` does.
 */
export function lookupAcross(db: Level<Buffer, Buffer>, parts: readonly (readonly [BinSub, readonly Buffer[]])[]): (Buffer | undefined)[][] | Promise<(Buffer | undefined)[][]> {
  let total = 0;
  for (const [, keys] of parts) total += keys.length;
  const direct = db.status === 'open' && typeof (db as unknown as { _getMany?: unknown })._getMany === 'function';
  if (!direct) return Promise.all(parts.map(([sub, keys]) => lookup(sub, keys as Buffer[])));
  if (total <= SYNC_LOOKUP_MAX) return parts.map(([sub, keys]) => lookup(sub, keys as Buffer[]) as (Buffer | undefined)[]);
  return lookupAcrossAsync(db, parts, total);
}

async function lookupAcrossAsync(db: Level<Buffer, Buffer>, parts: readonly (readonly [BinSub, readonly Buffer[]])[], total: number): Promise<(Buffer | undefined)[][]> {
  const all = new Array<Buffer>(total);
  let n = 0;
  for (const [sub, keys] of parts) for (const k of keys) all[n++] = storedKey(sub, k);
  const vals = (await (db as unknown as { _getMany(keys: Buffer[], o: object): Promise<(Buffer | undefined)[]> })._getMany(all, GET_MANY_OPTIONS)) as (Buffer | undefined)[];
  const out: (Buffer | undefined)[][] = [];
  n = 0;
  for (const [, keys] of parts) {
    out.push(vals.slice(n, n + keys.length));
    n += keys.length;
  }
  return out;
}

/**
 * Entries in bounds, `per` at a time as nextv reads them (a caller that handles
 * many entries saves an await per entry); the iterator is closed even when the
 * caller stops early.
 */
export async function* entryChunks(
  sub: BinSub,
  bounds: { gte?: Buffer; gt?: Buffer; lt?: Buffer; lte?: Buffer },
  extra: { limit?: number; snapshot?: Snapshot } = {},
  per = CHUNK,
): AsyncGenerator<[Buffer, Buffer][]> {
  const it = sub.iterator(rangeOpts(bounds, extra));
  try {
    for (;;) {
      const chunk = (await it.nextv(per)) as [Buffer, Buffer][];
      if (chunk.length === 0) return;
      yield chunk;
    }
  } finally {
    await it.close();
  }
}

/** Entries in bounds, one at a time (read in chunks with nextv). */
export async function* entries(
  sub: BinSub,
  bounds: { gte?: Buffer; gt?: Buffer; lt?: Buffer; lte?: Buffer },
  extra: { limit?: number; snapshot?: Snapshot } = {},
): AsyncGenerator<[Buffer, Buffer]> {
  for await (const chunk of entryChunks(sub, bounds, extra)) yield* chunk;
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
