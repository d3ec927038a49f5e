/**
 * The admin console's view model: plain data the components draw, and the
 * pure functions that derive it (progress, ETA, phases, shares, the map
 * strip, replication: copies wanted, ranges short of them, and what changed
 * between two refreshes). No React, no I/O: tested on its own in model.test.ts.
 */
import { HASH_SPACE_END } from '../../services/common/hash.js';
import { rangeKey, showRange } from '../../services/common/ranges.js';
import type { RangeRow, ServerRow } from '../format.js';
import type { MoveView, PlanView } from '../operations-api.js';
import { phaseName } from '../../services/master/move-steps.js';

export type { RangeRow, ServerRow } from '../format.js';
export type { MoveView, PlanMoveView, PlanView } from '../operations-api.js';

/** What the dashboard shows: one poll of the master. */
export interface Snapshot {
  epoch: bigint;
  servers: ServerRow[];
  ranges: RangeRow[];
  /** Moves in flight (ListMoves without `all`). */
  moves: MoveView[];
  /** When the poll answered, ms since the Unix epoch. */
  at: number;
  /** The map's replication factor, when the master told it (absent = not known: see wantedCopies). */
  replicationFactor?: number;
}

/** One entry of the console's log (the part of the screen that scrolls). */
export type LogItem =
  | { kind: 'echo'; prompt: string; line: string }
  | { kind: 'lines'; lines: string[] }
  | { kind: 'error'; message: string }
  | { kind: 'plan'; plan: PlanView; emptyText?: string; heading?: string }
  | { kind: 'moves'; title: string; moves: MoveView[]; total?: boolean; summary?: string };

export type LogRecord = LogItem & { id: number };

/** What the console is doing, which decides what the bottom of the screen shows and where keys go. */
export type ConsoleMode =
  | { kind: 'connecting' }
  | { kind: 'password' }
  | { kind: 'prompt' }
  | { kind: 'busy'; what: string }
  | { kind: 'confirm'; question: string }
  | { kind: 'following'; title: string; operationId: string; moves: MoveView[] };

// ---------------------------------------------------------------------------
// Moves: phase, fraction, rate, ETA

/**
 * A move's phase as its progress bar names it (services/master/move-steps.ts): copy,
 * catch-up and cutover, then done. A committed move is whole for the
 * operator, so its bar says done as a cleaned one's does.
 */
export const phaseOf = (state: string): string => (state === 'committed' ? phaseName('cleaned') : phaseName(state));

export const isFinished = (m: Pick<MoveView, 'state'>): boolean => m.state === 'committed' || m.state === 'cleaned' || m.state === 'aborted';
const isDone = (m: Pick<MoveView, 'state'>): boolean => m.state === 'committed' || m.state === 'cleaned';

/** 0..1. A committed move is whole whatever the byte counts say (bytes were counted at plan time). */
export function moveFraction(m: Pick<MoveView, 'state' | 'bytes' | 'copiedBytes'>): number {
  if (isDone(m)) return 1;
  if (m.state === 'planned') return 0;
  // Fenced: the copy is over and the cutover is under way.
  if (m.state === 'fenced') return 0.99;
  if (m.bytes <= 0) return 0;
  // Copy and catch-up end below 100%: only the cutover makes a move whole.
  return Math.min(0.99, m.copiedBytes / m.bytes);
}

/** Seconds left at the current rate, or undefined when it cannot be told. */
export function etaSeconds(m: Pick<MoveView, 'state' | 'bytes' | 'copiedBytes' | 'bytesPerSec'>): number | undefined {
  if (isFinished(m)) return 0;
  if (m.state !== 'copying' && m.state !== 'catching_up') return undefined;
  if (!(m.bytesPerSec > 0)) return undefined;
  return Math.max(0, m.bytes - m.copiedBytes) / m.bytesPerSec;
}

export function formatDuration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return '-';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

export interface TotalProgress {
  fraction: number;
  copiedBytes: number;
  bytes: number;
  done: number;
  aborted: number;
  count: number;
  bytesPerSec: number;
  etaSeconds: number | undefined;
}

/** The total bar: bytes-weighted over every move (a move of 0 bytes counts as 1). */
export function totalProgress(moves: MoveView[]): TotalProgress {
  let weight = 0;
  let doneWeight = 0;
  let copied = 0;
  let bytes = 0;
  let rate = 0;
  for (const m of moves) {
    const w = Math.max(1, m.bytes);
    weight += w;
    doneWeight += w * moveFraction(m);
    bytes += m.bytes;
    copied += isDone(m) ? m.bytes : Math.min(m.bytes, m.copiedBytes);
    if (!isFinished(m)) rate += m.bytesPerSec;
  }
  const done = moves.filter(isDone).length;
  const aborted = moves.filter((m) => m.state === 'aborted').length;
  const left = Math.max(0, bytes - copied);
  return {
    fraction: weight ? doneWeight / weight : 1,
    copiedBytes: copied,
    bytes,
    done,
    aborted,
    count: moves.length,
    bytesPerSec: rate,
    etaSeconds: done + aborted === moves.length ? 0 : rate > 0 ? left / rate : undefined,
  };
}

// ---------------------------------------------------------------------------
// Shares of the hash space

const SPACE = HASH_SPACE_END;

/**
 * Each shard's share of the hash space in tenths of a percent, rounded by
 * largest remainder so that the shares printed always add up to exactly
 * 100.0% when the ranges tile the space.
 */
export function hashShares(servers: Array<Pick<ServerRow, 'id'>>, ranges: Array<Pick<RangeRow, 'start' | 'end' | 'shard'>>): Array<{ id: string; permille: number }> {
  const owned = new Map<string, bigint>(servers.map((s) => [s.id, 0n]));
  for (const r of ranges) owned.set(r.shard, (owned.get(r.shard) ?? 0n) + (r.end - r.start));
  const ids = [...owned.keys()];
  const exact = ids.map((id) => owned.get(id)! * 1000n);
  const floor = exact.map((x) => x / SPACE);
  const covered = [...owned.values()].reduce((a, b) => a + b, 0n);
  const target = (covered * 1000n + SPACE / 2n) / SPACE;
  let left = Number(target - floor.reduce((a, b) => a + b, 0n));
  const order = ids.map((_, i) => i).sort((a, b) => Number((exact[b]! % SPACE) - (exact[a]! % SPACE)) || a - b);
  const out = floor.map(Number);
  for (const i of order) {
    if (left <= 0) break;
    out[i]! += 1;
    left -= 1;
  }
  return ids.map((id, i) => ({ id, permille: out[i]! }));
}

export const formatPermille = (p: number): string => `${(p / 10).toFixed(1)}%`;

/** `Shares of the hash space: s1 33.4%, s2 33.3%, s3 33.3% (total 100.0%)` */
export function sharesLine(servers: Array<Pick<ServerRow, 'id'>>, ranges: Array<Pick<RangeRow, 'start' | 'end' | 'shard'>>): string {
  const shares = hashShares(servers, ranges);
  const total = shares.reduce((n, s) => n + s.permille, 0);
  return `Shares of the hash space: ${shares.map((s) => `${s.id} ${formatPermille(s.permille)}`).join(', ')} (total ${formatPermille(total)})`;
}

// ---------------------------------------------------------------------------
// The map strip: the hash space drawn as `width` cells, each marked with the
// index of the shard that owns the middle of the cell.

const MARKS = '0123456789abcdefghijklmnopqrstuvwxyz';

export function shardMark(index: number): string {
  return index >= 0 && index < MARKS.length ? MARKS[index]! : '?';
}

export function mapStrip(servers: Array<Pick<ServerRow, 'id'>>, ranges: Array<Pick<RangeRow, 'start' | 'end' | 'shard'>>, width: number): string {
  const index = new Map(servers.map((s, i) => [s.id, i]));
  const sorted = [...ranges].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  let out = '';
  let r = 0;
  for (let i = 0; i < width; i++) {
    const mid = (SPACE * BigInt(2 * i + 1)) / BigInt(2 * width);
    while (r < sorted.length && sorted[r]!.end <= mid) r++;
    const range = sorted[r];
    out += range && range.start <= mid ? shardMark(index.get(range.shard) ?? -1) : ' ';
  }
  return out;
}

/** `0.4s ago`, `12s ago`, `3m ago`, or `never`. */
export function ago(atMs: number | undefined, nowMs: number): string {
  if (!atMs) return 'never';
  const s = Math.max(0, nowMs - atMs) / 1000;
  if (s < 10) return `${s.toFixed(1)}s ago`;
  if (s < 120) return `${Math.round(s)}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

/** Local time of day, `HH:MM:SS`. */
export function clock(atMs: number): string {
  return new Date(atMs).toTimeString().slice(0, 8);
}

// ---------------------------------------------------------------------------
// Replication: the copies wanted, the ranges short of them, and the changes
// of the replica groups between two refreshes (failovers, re-replication).

/** What the replication view reads of a range (a master from before replication sends no group: the primary alone). */
export type GroupRow = Pick<RangeRow, 'start' | 'end' | 'shard' | 'replicas' | 'inSync' | 'learners'>;

const replicasOf = (r: GroupRow): readonly string[] => r.replicas ?? [r.shard];
const inSyncOf = (r: GroupRow): readonly string[] => r.inSync ?? [r.shard];
const learnersOf = (r: GroupRow): readonly string[] => r.learners ?? [];
const isSingleCopy = (r: GroupRow): boolean => replicasOf(r).length <= 1 && learnersOf(r).length === 0;

/** What of a snapshot the replication view reads. */
type ReplicationView = { servers: ReadonlyArray<Pick<ServerRow, 'id'>>; ranges: readonly GroupRow[]; replicationFactor?: number };

/**
 * The in-sync copies each range should have: min(factor, shards), as the
 * master's planner aims for. Without the factor, the most copies any range
 * has stands in for it (the planner gives every range as many).
 */
export function wantedCopies(s: ReplicationView): number {
  const most = s.ranges.reduce((n, r) => Math.max(n, replicasOf(r).length), 1);
  return Math.max(1, Math.min(s.replicationFactor ?? most, s.servers.length));
}

/** A cluster that keeps (or should keep) more than one copy of a range: the dashboard shows copies only then. */
export function isReplicated(s: ReplicationView): boolean {
  return wantedCopies(s) > 1 || s.ranges.some((r) => !isSingleCopy(r));
}

/** The ranges with fewer in-sync copies than wanted, in hash order, with how many they have. */
export function underReplicated(s: ReplicationView): Array<{ range: GroupRow; inSync: number }> {
  const wanted = wantedCopies(s);
  return s.ranges.filter((r) => inSyncOf(r).length < wanted).map((range) => ({ range, inSync: inSyncOf(range).length }));
}

/**
 * The dashboard's replication summary, or undefined for a single-copy
 * cluster (whose dashboard stays as it was): `Replication: 3 copies wanted ·
 * 2 of 12 ranges under-replicated · 1 learner copying`, and when ranges are
 * short, which: `Under-replicated: [0, 10) 1/3 in sync, [10, 20) 2/3 in
 * sync, and 3 more`. Lists at most `listed`: the count is what matters at a
 * glance, and `ranges` lists them all.
 */
export function replicationSummary(s: ReplicationView, listed = 2): { summary: string; short?: string } | undefined {
  if (!isReplicated(s)) return undefined;
  const wanted = wantedCopies(s);
  const short = underReplicated(s);
  const learners = s.ranges.reduce((n, r) => n + learnersOf(r).length, 0);
  const parts = [`Replication: ${wanted} copies wanted`, short.length ? `${short.length} of ${s.ranges.length} ranges under-replicated` : `all ${s.ranges.length} ranges in sync`];
  if (learners) parts.push(`${learners} learner${learners === 1 ? '' : 's'} copying`);
  if (short.length === 0) return { summary: parts.join(' · ') };
  const shown = short.slice(0, listed).map((u) => `${showRange(u.range)} ${u.inSync}/${wanted} in sync`);
  const more = short.length > listed ? `, and ${short.length - listed} more` : '';
  return { summary: parts.join(' · '), short: `Under-replicated: ${shown.join(', ')}${more}` };
}

/**
 * What changed in the replica groups between two refreshes, one line per
 * change, in hash order: a new primary (a failover when the old one left the
 * in-sync set, a hand-over when it stayed), learners added (re-replication
 * begins) and caught up, followers leaving and rejoining the in-sync set,
 * copies dropped. A range held by its primary alone on both sides says
 * nothing: its moves have their own progress bars. A range split or merged
 * meanwhile is not compared (a split or merge changes no copy).
 */
export function replicaEvents(previous: readonly GroupRow[], next: readonly GroupRow[]): string[] {
  const before = new Map(previous.map((r) => [rangeKey(r), r]));
  const lines: string[] = [];
  for (const now of next) {
    const was = before.get(rangeKey(now));
    if (!was || (isSingleCopy(was) && isSingleCopy(now))) continue;
    const where = showRange(now);
    const wasInSync = new Set(inSyncOf(was));
    const wasLearner = new Set(learnersOf(was));
    const wasReplica = new Set(replicasOf(was));
    const inSync = new Set(inSyncOf(now));
    const holds = new Set([...replicasOf(now), ...learnersOf(now)]);
    if (was.shard !== now.shard) {
      // promote takes the old primary out of the in-sync set; a hand-over keeps it in.
      const how = inSync.has(was.shard) ? 'hand-over' : 'failover';
      lines.push(`range ${where}: primary ${was.shard} → ${now.shard} (${how})`);
    }
    for (const s of learnersOf(now)) if (!wasLearner.has(s) && !wasReplica.has(s)) lines.push(`${s} started copying ${where} as a learner (re-replication)`);
    for (const s of inSyncOf(now)) {
      if (wasInSync.has(s)) continue;
      if (wasLearner.has(s)) lines.push(`${s} caught up and joined the in-sync set of ${where}`);
      else if (wasReplica.has(s)) lines.push(`${s} rejoined the in-sync set of ${where}`);
      else lines.push(`${s} joined the in-sync set of ${where}`);
    }
    for (const s of inSyncOf(was)) {
      // The old primary of a failover is said above.
      if (inSync.has(s) || !holds.has(s) || (s === was.shard && s !== now.shard)) continue;
      lines.push(`${s} left the in-sync set of ${where} (catching up)`);
    }
    for (const s of [...wasReplica, ...wasLearner]) if (!holds.has(s)) lines.push(`${s} no longer holds a copy of ${where}`);
  }
  return lines;
}

/** At most `max` lines: a failure may change hundreds of ranges at once, and the log should stay readable. */
export function capLines(lines: string[], max: number, rest: (n: number) => string): string[] {
  return lines.length <= max ? lines : [...lines.slice(0, max), rest(lines.length - max)];
}
