/**
 * One replicated range's log as a shard keeps it (docs/design.md
 * "Replication and failover"). Pure: no I/O.
 *
 * Every write batch that touches a replicated range gets the next log
 * sequence number (lsn) of that range and the term it was written under (the
 * group version of its primary). Entries are applied to the store as they
 * are numbered, on the primary and on followers alike; what a replica keeps
 * durable is only its position: the last (lsn, term) it holds and where each
 * term began (Kafka's leader-epoch cache, KIP-101), written in the same batch
 * as the rows. The term history answers "which term is the entry at lsn L?"
 * for every L the replica holds, which is all log matching needs: two
 * replicas that agree on the term of the entry at L hold the same entries up
 * to L, because one version has one primary and it numbers each lsn once.
 *
 * Recent entries are also kept in memory (bounded), so a follower that is a
 * little behind catches up from them; one further behind (or one whose log
 * has entries this one lacks) gets a snapshot.
 */
import type { RawOp } from './store-db.js';

/** The durable position: where the log ends and where each term began. */
export interface LogPosition {
  lastLsn: bigint;
  lastTerm: bigint;
  /** [term, first lsn written under it], ascending; the first one may start after lsn 1 (after a snapshot). */
  terms: Array<[bigint, bigint]>;
}

export interface LogEntry {
  lsn: bigint;
  term: bigint;
  ops: RawOp[];
  sync: boolean;
  /** Key and value bytes, for the memory bound. */
  bytes: number;
  /** The ops packed for the wire (replica-wire.ts), once some follower was sent them (or as a follower received them). */
  packed?: Buffer;
}

/** How many bytes of recent entries a range keeps in memory for followers that fall behind. */
export const DEFAULT_RETAINED_BYTES = 32 * 1024 * 1024;

export const EMPTY_POSITION: LogPosition = Object.freeze({ lastLsn: 0n, lastTerm: 0n, terms: [] }) as LogPosition;

export class RangeLog {
  lastLsn: bigint;
  lastTerm: bigint;
  private terms: Array<[bigint, bigint]>;
  /** Contiguous entries ending at lastLsn (or none). */
  private entries: LogEntry[] = [];
  private retainedBytes = 0;

  constructor(
    position: LogPosition = EMPTY_POSITION,
    private readonly maxRetainedBytes = DEFAULT_RETAINED_BYTES,
  ) {
    this.lastLsn = position.lastLsn;
    this.lastTerm = position.lastTerm;
    this.terms = position.terms.map(([t, l]) => [t, l]);
  }

  position(): LogPosition {
    return { lastLsn: this.lastLsn, lastTerm: this.lastTerm, terms: this.terms.map(([t, l]) => [t, l]) };
  }

  /**
   * The term of the entry at `lsn`: 0 for lsn 0 (the empty log), undefined
   * past the end or before what the term history reaches (before a snapshot).
   */
  termAt(lsn: bigint): bigint | undefined {
    if (lsn === 0n) return 0n;
    if (lsn > this.lastLsn) return undefined;
    for (let i = this.terms.length - 1; i >= 0; i--) {
      const [term, start] = this.terms[i]!;
      if (start <= lsn) return term;
    }
    return undefined;
  }

  /** Appends the next entry (lsn must be lastLsn + 1; the term never goes down). */
  append(entry: LogEntry): void {
    if (entry.lsn !== this.lastLsn + 1n) throw new Error(`log append out of order: lsn ${entry.lsn} after ${this.lastLsn}`);
    if (entry.term < this.lastTerm) throw new Error(`log append with term ${entry.term} below ${this.lastTerm}`);
    if (entry.term !== this.lastTerm || this.terms.length === 0) this.terms.push([entry.term, entry.lsn]);
    this.lastLsn = entry.lsn;
    this.lastTerm = entry.term;
    this.entries.push(entry);
    this.retainedBytes += entry.bytes;
    while (this.entries.length > 1 && this.retainedBytes > this.maxRetainedBytes) this.retainedBytes -= this.entries.shift()!.bytes;
  }

  /** Entries from `fromLsn` on, up to about maxBytes (at least one); undefined when they are no longer kept (a snapshot is needed). */
  entriesFrom(fromLsn: bigint, maxBytes: number): LogEntry[] | undefined {
    if (fromLsn > this.lastLsn) return [];
    const first = this.entries[0];
    if (!first || fromLsn < first.lsn) return undefined;
    const out: LogEntry[] = [];
    let bytes = 0;
    for (let i = Number(fromLsn - first.lsn); i < this.entries.length; i++) {
      const e = this.entries[i]!;
      if (out.length > 0 && bytes + e.bytes > maxBytes) break;
      out.push(e);
      bytes += e.bytes;
    }
    return out;
  }

  /** Forgets kept entries below `lsn` (every follower has them). */
  forgetBelow(lsn: bigint): void {
    while (this.entries.length > 0 && this.entries[0]!.lsn < lsn) this.retainedBytes -= this.entries.shift()!.bytes;
  }

  /**
   * The log of `part`, a piece of this log's range after a split (docs/design.md
   * "Splitting a replicated range"): the same position and term history, and
   * the kept entries with only the ops whose key hashes into `part` (an entry
   * left with none stays, empty, so every lsn keeps its place and term).
   */
  projectedOnto(inPart: (op: RawOp) => boolean): RangeLog {
    const out = new RangeLog(this.position(), this.maxRetainedBytes);
    out.entries = this.entries.map((e) => projectEntry(e, inPart));
    out.retainedBytes = out.entries.reduce((n, e) => n + e.bytes, 0);
    return out;
  }

  /** After a snapshot that ends at (lsn, term): the log is that position alone. */
  resetTo(lsn: bigint, term: bigint): void {
    this.lastLsn = lsn;
    this.lastTerm = term;
    this.terms = lsn === 0n ? [] : [[term, lsn]];
    this.entries = [];
    this.retainedBytes = 0;
  }
}

/** An entry with only the ops `inPart` keeps (bytes counted again); the same lsn and term. */
export function projectEntry(e: LogEntry, inPart: (op: RawOp) => boolean): LogEntry {
  const ops = e.ops.filter(inPart);
  if (ops.length === e.ops.length) return e;
  const kept = e.ops.length ? Math.round((e.bytes * ops.length) / e.ops.length) : 0;
  return { lsn: e.lsn, term: e.term, ops, sync: e.sync, bytes: kept };
}

/** True when `outer` holds all of `inner` and is larger (a range `inner` was split from). */
export function strictlyContains(outer: { start: bigint; end: bigint }, inner: { start: bigint; end: bigint }): boolean {
  return outer.start <= inner.start && inner.end <= outer.end && (outer.start !== inner.start || outer.end !== inner.end);
}

/**
 * The logs of the replicated ranges a shard holds, primary or follower: one
 * per range, loaded from its durable position once. Shared by both sides, so
 * a follower that is promoted keeps the recent entries it received.
 */
export class RangeLogs {
  private readonly logs = new Map<string, Promise<RangeLog>>();
  private readonly ready = new Map<string, { range: { start: bigint; end: bigint }; log: RangeLog }>();

  /**
   * `load` reads a range's durable position (undefined when there is no
   * record); `loadCovering` the record of the smallest range that strictly
   * holds it, for a range split since its last write (see `derived`).
   */
  constructor(
    private readonly load: (key: string) => Promise<LogPosition | undefined>,
    private readonly loadCovering: (range: { start: bigint; end: bigint }) => Promise<LogPosition | undefined> = async () => undefined,
  ) {}

  /**
   * A range's log. A range with no record of its own was split from a larger
   * one since this shard last wrote to it: its log is the larger range's
   * position (docs/design.md "Splitting a replicated range").
   */
  get(range: { start: bigint; end: bigint }): Promise<RangeLog> {
    const key = positionKey(range);
    let log = this.logs.get(key);
    if (!log) {
      log = this.derived(range, key).then((p) => {
        const l = new RangeLog(p);
        this.ready.set(key, { range: { start: range.start, end: range.end }, log: l });
        return l;
      });
      this.logs.set(key, log);
      log.catch(() => this.logs.delete(key));
    }
    return log;
  }

  private async derived(range: { start: bigint; end: bigint }, key: string): Promise<LogPosition> {
    return (await this.load(key)) ?? (await this.loadCovering(range)) ?? EMPTY_POSITION;
  }

  /** Takes `log` as the log of `range` (a split's piece, projected by the primary from its own log). */
  put(range: { start: bigint; end: bigint }, log: RangeLog): void {
    const key = positionKey(range);
    this.logs.set(key, Promise.resolve(log));
    this.ready.set(key, { range: { start: range.start, end: range.end }, log });
  }

  /** Forgets ranges the shard no longer holds a copy of. */
  keepOnly(ranges: Array<{ start: bigint; end: bigint }>): void {
    const keep = new Set(ranges.map(positionKey));
    for (const key of this.logs.keys()) if (!keep.has(key)) this.logs.delete(key);
    for (const key of this.ready.keys()) if (!keep.has(key)) this.ready.delete(key);
  }

  /** Where each loaded log ends (what the heartbeat reports). */
  positions(): Array<{ range: { start: bigint; end: bigint }; lastLsn: bigint; lastTerm: bigint }> {
    return [...this.ready.values()].map(({ range, log }) => ({ range, lastLsn: log.lastLsn, lastTerm: log.lastTerm }));
  }
}

// ---------------------------------------------------------------- the durable record

/** The position as JSON for the store's meta records (bigints as decimal strings). */
export function positionToJson(p: LogPosition): { lastLsn: string; lastTerm: string; terms: Array<[string, string]> } {
  return { lastLsn: p.lastLsn.toString(), lastTerm: p.lastTerm.toString(), terms: p.terms.map(([t, l]) => [t.toString(), l.toString()]) };
}

export function positionFromJson(j: { lastLsn: string; lastTerm: string; terms: Array<[string, string]> } | undefined): LogPosition {
  if (!j) return EMPTY_POSITION;
  return { lastLsn: BigInt(j.lastLsn), lastTerm: BigInt(j.lastTerm), terms: j.terms.map(([t, l]) => [BigInt(t), BigInt(l)]) };
}

/** The range a position record names (positionKey's inverse), or undefined for another key. */
export function rangeOfPositionKey(key: string): { start: bigint; end: bigint } | undefined {
  const m = /^replog\/(\d+)-(\d+)$/.exec(key);
  return m ? { start: BigInt(m[1]!), end: BigInt(m[2]!) } : undefined;
}

/** The meta record name of a range's log position. */
export function positionKey(range: { start: bigint; end: bigint }): string {
  return `replog/${range.start}-${range.end}`;
}

/**
 * The durable position of the smallest range that strictly holds `range`: a
 * range split since this shard last wrote to it continues that log (ranges
 * of a replicated cluster are split, never merged, so the smallest holder
 * is the latest).
 */
export async function coveringPosition(
  store: { metaNamesStartingWith(prefix: string): Promise<string[]>; getMeta<T>(key: string): Promise<T | undefined> },
  range: { start: bigint; end: bigint },
): Promise<LogPosition | undefined> {
  let best: { key: string; size: bigint } | undefined;
  for (const key of await store.metaNamesStartingWith('replog/')) {
    const r = rangeOfPositionKey(key);
    if (!r || !strictlyContains(r, range)) continue;
    if (!best || r.end - r.start < best.size) best = { key, size: r.end - r.start };
  }
  if (!best) return undefined;
  const j = await store.getMeta<Parameters<typeof positionFromJson>[0]>(best.key);
  return j ? positionFromJson(j) : undefined;
}
