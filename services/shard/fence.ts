/**
 * What a shard must not serve, and what it must not keep.
 *
 * - Fences: a source fences a range for the critical section of a move
 *   (DESIGN "Moving data", step 4). While fenced, reads and writes of the
 *   range get FENCED (UNAVAILABLE with a retry hint). A fence is persisted
 *   (synced) before the source sends the last of its log, and it lasts until
 *   the shard learns the outcome: a map that no longer gives it the range
 *   (commit: the fence is dropped and the copy deleted), or AbortMove (the
 *   fence is lifted and the shard serves the range again). A restarted shard
 *   loads its fences before it serves anything.
 * - Pending drops: ranges a shard lost in a map change, deleted in the
 *   background. The intent is persisted before the map that causes it, and a
 *   deletion only ever touches what the current map does not give the shard,
 *   so a crash at any point leaves either garbage to finish deleting or
 *   nothing, never a hole in owned data.
 *
 * The range arithmetic at the top is pure.
 */
import type { Logger } from 'winston';
import { CairnError } from '../common/errors.js';
import { rangesOverlap, type HashRange } from '../common/ranges.js';

// ---------------------------------------------------------------- range sets (pure)

/** Sorts ranges and merges the ones that overlap or touch. */
export function normalizeRanges(ranges: readonly HashRange[]): HashRange[] {
  const sorted = ranges.filter((r) => r.end > r.start).sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const out: HashRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) {
      if (r.end > last.end) last.end = r.end;
    } else {
      out.push({ start: r.start, end: r.end });
    }
  }
  return out;
}

/** The parts of `a` that lie in no range of `b`, normalized. */
export function subtractRanges(a: readonly HashRange[], b: readonly HashRange[]): HashRange[] {
  const cut = normalizeRanges(b);
  const out: HashRange[] = [];
  for (const r of normalizeRanges(a)) {
    let start = r.start;
    for (const c of cut) {
      if (c.end <= start) continue;
      if (c.start >= r.end) break;
      if (c.start > start) out.push({ start, end: c.start });
      start = c.end > start ? c.end : start;
      if (start >= r.end) break;
    }
    if (start < r.end) out.push({ start, end: r.end });
  }
  return out;
}

/** True when every hash of `r` lies in some range of `within`. */
export function coveredBy(r: HashRange, within: readonly HashRange[]): boolean {
  return subtractRanges([r], within).length === 0;
}

/** True when `r` shares a hash with some range of `others`. */
export function overlapsAny(r: HashRange, others: readonly HashRange[]): boolean {
  return others.some((o) => rangesOverlap(r, o));
}

export const showRange = (r: HashRange): string => `[${r.start}, ${r.end})`;

// ---------------------------------------------------------------- persistence seam

/** The part of the store fences and drops need: the synced meta records. */
export interface MetaStore {
  getMeta<T = unknown>(key: string): Promise<T | undefined>;
  putMeta(key: string, value: unknown, sync?: boolean): Promise<void>;
  deleteRange(range: HashRange): Promise<number>;
}

interface RangeJson {
  start: string;
  end: string;
}
const rangeToJson = (r: HashRange): RangeJson => ({ start: r.start.toString(), end: r.end.toString() });
const rangeFromJson = (j: RangeJson): HashRange => ({ start: BigInt(j.start), end: BigInt(j.end) });

// ---------------------------------------------------------------- fences

export interface Fence {
  moveId: string;
  range: HashRange;
  /** When the fence went up (ms since the epoch). */
  sinceMs: number;
}

const FENCES_KEY = 'fences';
/** What a fenced caller is told to wait before retrying. */
export const FENCE_RETRY_AFTER_MS = 100;

export class FenceTable {
  private readonly fences = new Map<string, Fence>();

  private constructor(private readonly store: MetaStore) {}

  static async load(store: MetaStore): Promise<FenceTable> {
    const t = new FenceTable(store);
    const saved = (await store.getMeta<Array<{ moveId: string; range: RangeJson; sinceMs: number }>>(FENCES_KEY)) ?? [];
    for (const f of saved) t.fences.set(f.moveId, { moveId: f.moveId, range: rangeFromJson(f.range), sinceMs: f.sinceMs });
    return t;
  }

  get size(): number {
    return this.fences.size;
  }

  all(): Fence[] {
    return [...this.fences.values()];
  }

  get(moveId: string): Fence | undefined {
    return this.fences.get(moveId);
  }

  /** The fence covering a hash, if any. Called on every data request: a linear scan of the (few) fences. */
  covering(hash: bigint): Fence | undefined {
    for (const f of this.fences.values()) if (hash >= f.range.start && hash < f.range.end) return f;
    return undefined;
  }

  /** The first fence overlapping a range, if any. */
  overlapping(range: HashRange): Fence | undefined {
    for (const f of this.fences.values()) if (rangesOverlap(f.range, range)) return f;
    return undefined;
  }

  /** Throws FENCED when the hash is fenced. */
  checkHash(hash: bigint): void {
    const f = this.covering(hash);
    if (f) throw fencedError(f);
  }

  /** Throws FENCED when any of the range is fenced. */
  checkRange(range: HashRange): void {
    const f = this.overlapping(range);
    if (f) throw fencedError(f);
  }

  /**
   * Fences a range. The fence takes effect at once (synchronously: no request
   * checked after this call can pass), and the returned promise resolves once
   * it is on disk. If persisting fails the fence stays up in memory: only the
   * move's outcome may lift it.
   */
  add(moveId: string, range: HashRange): Promise<void> {
    const cur = this.fences.get(moveId);
    if (cur && (cur.range.start !== range.start || cur.range.end !== range.end)) {
      return Promise.reject(new CairnError('CONFLICT', `move ${moveId} already fences ${showRange(cur.range)}, not ${showRange(range)}`));
    }
    if (!cur) this.fences.set(moveId, { moveId, range: { ...range }, sinceMs: Date.now() });
    return this.persist();
  }

  /** Lifts a move's fence; resolves with whether there was one, once the change is on disk. */
  async lift(moveId: string): Promise<Fence | undefined> {
    const f = this.fences.get(moveId);
    if (!f) return undefined;
    this.fences.delete(moveId);
    await this.persist();
    return f;
  }

  /** Drops the fences whose range the shard no longer owns at all (the move committed); returns them. */
  async dropUnowned(owned: readonly HashRange[]): Promise<Fence[]> {
    const gone = this.all().filter((f) => !overlapsAny(f.range, owned));
    if (gone.length === 0) return [];
    for (const f of gone) this.fences.delete(f.moveId);
    await this.persist();
    return gone;
  }

  /** Writes the whole table, synced. Writes are applied in call order, so the last one holds the current table. */
  private persist(): Promise<void> {
    const json = this.all().map((f) => ({ moveId: f.moveId, range: rangeToJson(f.range), sinceMs: f.sinceMs }));
    return this.store.putMeta(FENCES_KEY, json, true);
  }
}

export function fencedError(f: Fence): CairnError {
  return new CairnError('FENCED', `hash range ${showRange(f.range)} is fenced while move ${f.moveId} hands it over; retry shortly`, {
    retryAfterMs: FENCE_RETRY_AFTER_MS,
  });
}

// ---------------------------------------------------------------- pending drops

const DROPS_KEY = 'drops';

/**
 * Deletes ranges the shard has lost, in the background, one at a time. A
 * deletion only touches the part of an intent that the shard neither owns
 * (by its current map) nor is receiving (`busy`), checked as it starts.
 */
export class RangeJanitor {
  private intents: HashRange[] = [];
  private running: Promise<void> | null = null;
  private stopped = false;
  /** The last pass stopped on an error; the next map change or restart tries again. */
  private failed = false;

  private constructor(
    private readonly store: MetaStore,
    private readonly owned: () => HashRange[],
    private readonly busy: () => HashRange[],
    private readonly log: Logger,
  ) {}

  static async load(store: MetaStore, owned: () => HashRange[], busy: () => HashRange[], log: Logger): Promise<RangeJanitor> {
    const j = new RangeJanitor(store, owned, busy, log);
    j.intents = ((await store.getMeta<RangeJson[]>(DROPS_KEY)) ?? []).map(rangeFromJson);
    return j;
  }

  pending(): HashRange[] {
    return this.intents.map((r) => ({ ...r }));
  }

  /** Records ranges to delete, synced; call before the map change that loses them is persisted. */
  async record(ranges: readonly HashRange[]): Promise<void> {
    if (ranges.length === 0) return;
    this.intents = normalizeRanges([...this.intents, ...ranges]);
    await this.persist();
  }

  /**
   * Drops intents over a range whose leftovers the caller deletes itself (a
   * destination about to pull it), so no stale intent can later delete what
   * it received. Call after settled(range).
   */
  async forget(range: HashRange): Promise<void> {
    if (!overlapsAny(range, this.intents)) return;
    this.intents = subtractRanges(this.intents, [range]);
    await this.persist();
  }

  /** Starts (or keeps) the background deletion. */
  start(): void {
    if (this.running || this.stopped || this.intents.length === 0) return;
    this.running = this.loop().finally(() => {
      this.running = null;
      // Intents recorded while the last pass was finishing.
      if (!this.stopped && !this.failed && this.intents.length > 0) this.start();
    });
  }

  /** Resolves once no pending deletion overlaps `range` (or none at all), or the janitor stopped. */
  async settled(range?: HashRange): Promise<void> {
    while (this.running && this.intents.some((r) => !range || rangesOverlap(r, range))) await this.running;
  }

  /** Stops after the current batch; pending intents stay recorded for the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  private async loop(): Promise<void> {
    this.failed = false;
    while (!this.stopped && this.intents.length > 0) {
      const intent = this.intents[0]!;
      const parts = subtractRanges([intent], [...this.owned(), ...this.busy()]);
      let deleted = 0;
      try {
        for (const part of parts) {
          if (this.stopped) return;
          deleted += await this.store.deleteRange(part);
        }
      } catch (err) {
        if (!this.stopped) this.log.warn('deleting a lost range failed; it is retried at the next map change or restart', { range: showRange(intent), error: (err as Error).message });
        this.failed = true;
        return;
      }
      this.intents = subtractRanges(this.intents, [intent]);
      this.log.info('deleted the copy of a range this shard no longer owns', { range: showRange(intent), keys: deleted });
      await this.persist().catch(() => undefined); // a lost update only means deleting nothing again after a restart
    }
  }

  private persist(): Promise<void> {
    return this.store.putMeta(DROPS_KEY, this.intents.map(rangeToJson), true);
  }
}
