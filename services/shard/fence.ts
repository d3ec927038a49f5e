/**
 * What a shard must not serve, and what it must not keep.
 *
 * - Fences: a source fences a range for the critical section of a move
 *   (docs/design.md "Moving data", step 4). While fenced, reads and writes of the
 *   range get FENCED (UNAVAILABLE with a retry hint). A fence is persisted
 *   (synced) before the source sends the last of its log, and it lasts until
 *   the shard learns the outcome: a map that no longer gives it the range
 *   (commit: the fence is dropped and the copy deleted), or AbortMove (the
 *   fence is lifted and the shard serves the range again). A restarted shard
 *   loads its fences before it serves anything.
 * - Orphan fences: a fence belongs to a move the master has journaled. While
 *   its transfer runs, the transfer owns it (and lifts it itself unless the
 *   destination confirms the fenced tail within maxFenceMs). A fence with no
 *   transfer (sealed, or loaded at a restart) is checked with the master
 *   (FenceReconciler): a move the master does not know, or has aborted, gets
 *   its fence lifted; a committed one makes the shard fetch the map, which
 *   drops it. Only the master's own answer lifts anything: unreachable means keep.
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
import { DURATION_BUCKETS, type Metrics } from '../common/metrics.js';
import { rangesOverlap, showRange, type HashRange } from '../common/ranges.js';

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

/** How a fence ended: dropped because the map gave the range away, or lifted (the shard serves the range again). */
export type FenceOutcome = 'committed' | 'aborted';
export type FenceEndListener = (f: Fence, outcome: FenceOutcome, seconds: number) => void;

export class FenceTable {
  private readonly fences = new Map<string, Fence>();
  private readonly endListeners: FenceEndListener[] = [];

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

  /**
   * Lifts a move's fence: effective at once (synchronously, like add); resolves
   * with the fence there was, if any, once the change is on disk.
   */
  async lift(moveId: string): Promise<Fence | undefined> {
    const f = this.fences.get(moveId);
    if (!f) return undefined;
    this.fences.delete(moveId);
    this.ended(f, 'aborted');
    await this.persist();
    return f;
  }

  /** Drops the fences whose range the shard no longer owns at all (the move committed); returns them. */
  async dropUnowned(owned: readonly HashRange[]): Promise<Fence[]> {
    const gone = this.all().filter((f) => !overlapsAny(f.range, owned));
    if (gone.length === 0) return [];
    for (const f of gone) {
      this.fences.delete(f.moveId);
      this.ended(f, 'committed');
    }
    await this.persist();
    return gone;
  }

  /** Called with every fence that ends (lifted or dropped), and how long it refused its range. */
  onEnded(listener: FenceEndListener): void {
    this.endListeners.push(listener);
  }

  private ended(f: Fence, outcome: FenceOutcome): void {
    // From the fence going up, restarts included: the range was refused all that time.
    const seconds = Math.max(0, Date.now() - f.sinceMs) / 1000;
    for (const l of this.endListeners) l(f, outcome, seconds);
  }

  /** Writes the whole table, synced. Writes are applied in call order, so the last one holds the current table. */
  private persist(): Promise<void> {
    const json = this.all().map((f) => ({ moveId: f.moveId, range: rangeToJson(f.range), sinceMs: f.sinceMs }));
    return this.store.putMeta(FENCES_KEY, json, true);
  }
}

/**
 * `cairn_shard_fence_duration_seconds{outcome}`: how long each fence really
 * refused its range, measured where it was refused (the source), from going
 * up to being lifted or dropped. The master's view of a move cannot see this:
 * a fence whose move aborted, or whose stream never reached the destination,
 * is only known here.
 */
export function registerFenceMetrics(metrics: Metrics, fences: FenceTable): void {
  const h = metrics.histogram(
    'cairn_shard_fence_duration_seconds',
    'How long each fence on this shard refused requests for its range: from the fence going up to it being dropped (outcome committed) or lifted (outcome aborted).',
    ['outcome'],
    DURATION_BUCKETS,
  );
  fences.onEnded((_f, outcome, seconds) => h.observe({ outcome }, seconds));
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

// ---------------------------------------------------------------- orphan fences

/**
 * What the master said of a move: a journaled state (planned, copying,
 * catching_up, fenced, committed, cleaned, aborted), 'unknown' when its
 * journal has no such move, or undefined when it could not be asked.
 */
export type MasterMoveAnswer = string | undefined;

/**
 * - skip: the move's transfer is running here; it owns its fence.
 * - keep: the move may still commit, or the master could not say.
 * - lift: the move will never commit (aborted) or never existed for the
 *   master; after fetching the current map, lift the fence if it is still there.
 * - refresh-map: the move committed; fetching the current map drops the fence
 *   (if the map gives the range back to this shard, a later move did, and the
 *   fence of the ended move is lifted).
 */
export type OrphanFenceAction = 'skip' | 'keep' | 'lift' | 'refresh-map';

/** The decision for one fence (pure). */
export function orphanFenceAction(transferRunning: boolean, answer: MasterMoveAnswer): OrphanFenceAction {
  if (transferRunning) return 'skip';
  switch (answer) {
    case 'unknown':
    case 'aborted':
      return 'lift';
    case 'committed':
    case 'cleaned':
      return 'refresh-map';
    default:
      // A running state, no answer, or one this shard does not know: only the move's outcome may lift it.
      return 'keep';
  }
}

export interface FenceReconcilerDeps {
  fences(): FenceTable | undefined;
  /** True while a transfer of the move runs on this shard. */
  transferRunning(moveId: string): boolean;
  /** True while this shard's master has admitted it: only that master's journal may lift a fence. */
  admitted(): boolean;
  /** What the master's journal says of the move ('unknown' when none); throws when the master cannot be asked. */
  askMaster(moveId: string): Promise<string>;
  /** Fetches and installs the master's current map (which drops the fences of committed moves). */
  refreshMap(): Promise<void>;
  /** Marks the move aborted on this shard, so no transfer of it can fence the range again. */
  forgetMove(moveId: string): void;
  log: Logger;
}

/** How often every fence without a transfer is checked with the master. */
export const ORPHAN_CHECK_INTERVAL_MS = 1000;

/**
 * Checks every fence that has no running transfer with the master, once a
 * second and at once when the master (re)admits the shard, and acts on
 * orphanFenceAction's answer. One round at a time; a failed round is retried
 * at the next.
 */
export class FenceReconciler {
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<void> | undefined;
  private lastRoundAt = -Infinity;
  private wasAdmitted = false;
  private stopped = false;

  constructor(
    private readonly deps: FenceReconcilerDeps,
    private readonly intervalMs = ORPHAN_CHECK_INTERVAL_MS,
  ) {}

  start(): void {
    if (this.timer || this.stopped) return;
    // Ticks often and cheaply (no I/O unless a round is due), so a fresh admission is acted on at once.
    this.timer = setInterval(() => this.tick(), Math.min(250, this.intervalMs));
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.round;
  }

  private tick(): void {
    if (this.round || this.stopped) return;
    const admitted = this.deps.admitted();
    const justAdmitted = admitted && !this.wasAdmitted;
    this.wasAdmitted = admitted;
    if (!admitted || (!justAdmitted && Date.now() - this.lastRoundAt < this.intervalMs)) return;
    if ((this.deps.fences()?.size ?? 0) === 0) return;
    this.lastRoundAt = Date.now();
    this.round = this.checkAll()
      .catch((err: Error) => void this.deps.log.warn('checking fences with the master failed; retrying', { error: err.message }))
      .finally(() => (this.round = undefined));
  }

  /** One round over every fence; public so a test can run one without waiting for the timer. */
  async checkAll(): Promise<void> {
    const table = this.deps.fences();
    if (!table) return;
    for (const f of table.all()) {
      if (this.stopped) return;
      if (this.deps.transferRunning(f.moveId)) continue;
      let answer: MasterMoveAnswer;
      try {
        answer = await this.deps.askMaster(f.moveId);
      } catch (err) {
        this.deps.log.debug('could not ask the master about a fence; keeping it', { moveId: f.moveId, error: (err as Error).message });
        continue;
      }
      const action = orphanFenceAction(this.deps.transferRunning(f.moveId), answer);
      if (action === 'skip' || action === 'keep') continue;
      // The current map first: if it gave the range away, the move committed and the fence is dropped, never lifted
      // (lifting under an old map would serve a range another shard owns).
      try {
        await this.deps.refreshMap();
      } catch (err) {
        this.deps.log.warn('could not fetch the map before acting on a fence; keeping it', { moveId: f.moveId, error: (err as Error).message });
        continue;
      }
      if (table.get(f.moveId) !== f) continue; // dropped by the map (committed), or lifted meanwhile
      if (this.deps.transferRunning(f.moveId)) continue;
      // Checked and lifted in one synchronous step: no transfer of the move can fence the range again after this.
      this.deps.forgetMove(f.moveId);
      const lifted = table.lift(f.moveId);
      this.deps.log.warn(
        action === 'lift'
          ? `fence lifted: the master ${answer === 'unknown' ? 'has no such move in its journal' : 'aborted the move'}`
          : 'fence lifted: its move committed, and the current map gives the range back to this shard',
        { moveId: f.moveId, range: showRange(f.range), masterSays: answer, fencedMs: Date.now() - f.sinceMs },
      );
      await lifted;
    }
  }
}
