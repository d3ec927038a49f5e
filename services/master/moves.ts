/**
 * The move state machine: one range R moving from source S to destination D.
 * Pure: no I/O. Records are immutable; every change returns a new record.
 *
 *   planned → copying → catching_up → fenced → committed → cleaned
 *      └─────────┴───────────┴───────────┴──→ aborted
 *
 * The one table below is the whole set of transitions (after PD's
 * operator/status.go): a transition it does not list cannot happen. Before
 * `committed` any state may abort (D drops what it received, S lifts the
 * fence). `committed` is the point of no return: the new map is durable, so
 * the move only goes forward to `cleaned` (S has deleted its copy). A master
 * that restarts reads each move from its journal and asks `resumeAction` what
 * to do with it. What each state means for the master and both shards, what
 * completes it, its timeout and its display name are its step in move-steps.ts.
 */
import { CairnError } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';

export const MOVE_STATES = ['planned', 'copying', 'catching_up', 'fenced', 'committed', 'cleaned', 'aborted'] as const;

export type MoveState = (typeof MOVE_STATES)[number];

/** Every legal transition; anything else is refused. */
export const TRANSITIONS: Readonly<Record<MoveState, readonly MoveState[]>> = Object.freeze({
  /** Written to the journal, nothing started. */
  planned: Object.freeze(['copying', 'aborted'] as const),
  /** D streams R's snapshot from S; S logs every write to R. */
  copying: Object.freeze(['catching_up', 'aborted'] as const),
  /** S streams its log of writes to R until D has nearly caught up. */
  catching_up: Object.freeze(['fenced', 'aborted'] as const),
  /** S refuses R (UNAVAILABLE) and sends the last of the log; D confirms it is durable. */
  fenced: Object.freeze(['committed', 'aborted'] as const),
  /** The new map (R owned by D) is durable. Only forward from here. */
  committed: Object.freeze(['cleaned'] as const),
  /** S has deleted its copy of R. Terminal. */
  cleaned: Object.freeze([] as const),
  /** D dropped what it received and S lifted the fence; the map never changed. Terminal. */
  aborted: Object.freeze([] as const),
});

export interface Move {
  id: string;
  start: bigint;
  /** Exclusive; at most 2^64. */
  end: bigint;
  /** Source shard. */
  from: string;
  /** Destination shard. */
  to: string;
  /** Live bytes in the range when the move was planned. */
  bytes: number;
  state: MoveState;
  /** Every state the move has been in, oldest first, starting with `planned`. Frozen: never push. */
  history: Array<{ state: MoveState; at: number }>;
  /** Why the move aborted (or the last error seen). */
  error?: string;
  /** Bytes D has received so far (snapshot and log), for progress. */
  copiedBytes: number;
}

export function isMoveState(s: unknown): s is MoveState {
  return typeof s === 'string' && (MOVE_STATES as readonly string[]).includes(s);
}

export function canTransition(from: MoveState, to: MoveState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function isTerminal(state: MoveState): boolean {
  return TRANSITIONS[state].length === 0;
}

/** True once the new map is durable: the move can no longer abort. */
export function isCommitted(state: MoveState): boolean {
  return state === 'committed' || state === 'cleaned';
}

/**
 * What a restarted master does with a move found in its journal: abort it
 * when it had not committed, finish the clean-up when it had, nothing when it
 * already ended.
 */
export function resumeAction(state: MoveState): 'abort' | 'finish' | 'none' {
  switch (state) {
    case 'planned':
    case 'copying':
    case 'catching_up':
    case 'fenced':
      return 'abort';
    case 'committed':
      return 'finish';
    case 'cleaned':
    case 'aborted':
      return 'none';
  }
}

export interface NewMove {
  id: string;
  start: bigint;
  end: bigint;
  from: string;
  to: string;
  bytes: number;
}

/** A move in state `planned`. Throws INVALID_ARGUMENT for an empty range, one past 2^64, or from === to. */
export function newMove(spec: NewMove, at: number = Date.now()): Move {
  const err = specError(spec);
  if (err) throw new CairnError('INVALID_ARGUMENT', `move ${spec.id || '(no id)'}: ${err}`);
  return Object.freeze({
    id: spec.id,
    start: spec.start,
    end: spec.end,
    from: spec.from,
    to: spec.to,
    bytes: spec.bytes,
    state: 'planned' as const,
    history: frozen([{ state: 'planned' as const, at }]),
    copiedBytes: 0,
  });
}

/**
 * The move in state `to`, with the transition appended to its history.
 * Throws CairnError('INTERNAL') naming the transition when the table does not
 * allow it: an illegal transition is a bug in the caller, never a user error.
 */
export function transition(move: Move, to: MoveState, at: number = Date.now(), error?: string): Move {
  if (!canTransition(move.state, to)) {
    const allowed = TRANSITIONS[move.state];
    throw new CairnError(
      'INTERNAL',
      `move ${move.id}: illegal transition ${move.state} → ${to} (from ${move.state} only ${allowed.length ? allowed.join(', ') : 'nothing: it is terminal'})`,
    );
  }
  return Object.freeze({
    ...move,
    state: to,
    history: frozen([...move.history, { state: to, at }]),
    ...(error !== undefined ? { error } : {}),
  });
}

/** Aborts a move that has not committed, recording why. Throws like `transition` after a commit. */
export function abortMove(move: Move, reason: string, at: number = Date.now()): Move {
  return transition(move, 'aborted', at, reason);
}

/**
 * How far a move's copy is, from 0 to 1, given a pull's progress report:
 * received snapshot rows over the snapshot's rows while copying, all of it
 * once the copy is done. Before the source has said how many rows its
 * snapshot holds (sourceRows 0 while copying) nothing is copied yet: this was
 * shown as 100% and then dropped.
 */
export function copiedFraction(r: { copying: boolean; rowsReceived: number; sourceRows: number }): number {
  if (!r.copying) return 1;
  if (!(r.sourceRows > 0)) return 0;
  return Math.min(1, Math.max(0, r.rowsReceived / r.sourceRows));
}

/** The span a move's shown rate is averaged over: the throttle's promise is about windows of 5 s. */
export const RATE_WINDOW_MS = 5000;
/** A rate is shown only once its samples span this long; until then the last one stands (0 at first). */
const MIN_RATE_SPAN_MS = 200;

/**
 * A move's transfer rate as shown to the operator: bytes per second over the
 * last `spanMs` of progress samples (less at the start). The rate used to be
 * the change since the previous sample at least 200 ms before, so each chunk
 * arriving showed as a spike (5 MB/s under a 1 MB/s limit) and the mean of
 * what was shown ran well above the limit.
 */
export class RateWindow {
  private readonly samples: Array<{ at: number; bytes: number }> = [];
  private rate = 0;

  constructor(private readonly spanMs: number = RATE_WINDOW_MS) {}

  /** Adds a sample (time in ms, bytes so far) and returns the current rate in bytes per second. */
  add(at: number, bytes: number): number {
    this.samples.push({ at, bytes });
    // Keep one sample at or before the window's start, so the rate spans the whole window once there is one.
    while (this.samples.length > 2 && this.samples[1]!.at <= at - this.spanMs) this.samples.shift();
    const first = this.samples[0]!;
    if (at - first.at >= MIN_RATE_SPAN_MS) this.rate = Math.max(0, ((bytes - first.bytes) * 1000) / (at - first.at));
    return this.rate;
  }
}

/** Records copy progress (never backwards); does not change the state. */
export function withProgress(move: Move, copiedBytes: number): Move {
  if (!(Number.isFinite(copiedBytes) && copiedBytes >= 0)) {
    throw new CairnError('INTERNAL', `move ${move.id}: copiedBytes must be a finite number >= 0, got ${copiedBytes}`);
  }
  return Object.freeze({ ...move, copiedBytes: Math.max(move.copiedBytes, copiedBytes) });
}

// ------------------------------------------------------------------ journal form

/** A move as the journal stores it: JSON-safe, hashes as decimal strings. */
export interface MoveJson {
  id: string;
  start: string;
  end: string;
  from: string;
  to: string;
  bytes: number;
  state: MoveState;
  history: Array<{ state: MoveState; at: number }>;
  error?: string;
  copiedBytes: number;
}

export function moveToJson(move: Move): MoveJson {
  return {
    id: move.id,
    start: move.start.toString(),
    end: move.end.toString(),
    from: move.from,
    to: move.to,
    bytes: move.bytes,
    state: move.state,
    history: move.history.map((h) => ({ state: h.state, at: h.at })),
    ...(move.error !== undefined ? { error: move.error } : {}),
    copiedBytes: move.copiedBytes,
  };
}

/**
 * Reads a journal record (the object from moveToJson, or its JSON text).
 * Throws CairnError('INTERNAL') naming the field when the record is damaged:
 * the master wrote it, so a bad one is never the caller's fault.
 */
export function moveFromJson(json: unknown): Move {
  const bad = (what: string): CairnError => new CairnError('INTERNAL', `journal move record: ${what}`);
  let v = json;
  if (typeof v === 'string') {
    try {
      v = JSON.parse(v);
    } catch (e) {
      throw bad(`not JSON (${(e as Error).message})`);
    }
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('not an object');
  const o = v as Record<string, unknown>;
  const str = (k: string): string => {
    if (typeof o[k] !== 'string' || o[k] === '') throw bad(`${k} must be a non-empty string, got ${JSON.stringify(o[k])}`);
    return o[k] as string;
  };
  const num = (k: string, x: unknown = o[k]): number => {
    if (typeof x !== 'number' || !Number.isFinite(x) || x < 0) throw bad(`${k} must be a finite number >= 0, got ${JSON.stringify(x)}`);
    return x;
  };
  const hash = (k: string): bigint => {
    const s = str(k);
    if (!/^\d+$/.test(s)) throw bad(`${k} must be a decimal integer string, got ${JSON.stringify(s)}`);
    return BigInt(s);
  };
  const state = o.state;
  if (!isMoveState(state)) throw bad(`state must be one of ${MOVE_STATES.join(', ')}, got ${JSON.stringify(state)}`);
  if (!Array.isArray(o.history) || o.history.length === 0) throw bad('history must be a non-empty array');
  const history = o.history.map((h: unknown, i) => {
    const e = h as Record<string, unknown> | null;
    if (typeof e !== 'object' || e === null || !isMoveState(e.state)) throw bad(`history[${i}].state is not a move state`);
    return { state: e.state, at: num(`history[${i}].at`, e.at) };
  });
  if (history[0]!.state !== 'planned') throw bad(`history must start at planned, not ${history[0]!.state}`);
  for (let i = 1; i < history.length; i++) {
    if (!canTransition(history[i - 1]!.state, history[i]!.state)) {
      throw bad(`history has an illegal transition ${history[i - 1]!.state} → ${history[i]!.state}`);
    }
  }
  if (history[history.length - 1]!.state !== state) throw bad(`state ${state} is not the last state in history`);
  if (o.error !== undefined && typeof o.error !== 'string') throw bad('error must be a string when present');
  const spec = { id: str('id'), start: hash('start'), end: hash('end'), from: str('from'), to: str('to'), bytes: num('bytes') };
  const err = specError(spec);
  if (err) throw bad(err);
  return Object.freeze({
    ...spec,
    state,
    history: frozen(history),
    ...(o.error !== undefined ? { error: o.error as string } : {}),
    copiedBytes: num('copiedBytes'),
  });
}

/** Freezes the entries and the array, typed as the plain array the Move interface names. */
function frozen(h: Array<{ state: MoveState; at: number }>): Array<{ state: MoveState; at: number }> {
  for (const e of h) Object.freeze(e);
  return Object.freeze(h) as Array<{ state: MoveState; at: number }>;
}

function specError(m: NewMove): string | null {
  if (!m.id) return 'id must not be empty';
  if (!m.from || !m.to) return 'from and to must name shards';
  if (m.from === m.to) return `from and to are both ${m.from}`;
  if (m.start < 0n || m.end > HASH_SPACE_END || m.end <= m.start) return `range [${m.start}, ${m.end}) is empty or outside [0, 2^64)`;
  if (!(Number.isFinite(m.bytes) && m.bytes >= 0)) return `bytes must be a finite number >= 0, got ${m.bytes}`;
  return null;
}
