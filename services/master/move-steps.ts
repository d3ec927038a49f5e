/**
 * The move protocol in one file (after PD's pkg/schedule/operator/step.go):
 * each state of a move (moves.ts) is a declared step saying what the master,
 * the source S and the destination D do in it, what completes it and where
 * the move goes then, what bounds how long it takes, the name the operator
 * sees, the destination's transfer phases that belong to it, and the
 * failpoints the crash tests can stop it at. Pure: no I/O.
 *
 *   waiting → copy → catch-up → cutover → committed → done
 *   (planned  copying catching_up fenced   committed   cleaned)
 *      └───────┴────────┴──────────┴──→ aborted
 *
 * The coordinator (coordinator.ts) only drives these steps: an event (a
 * worker takes the move, the destination reports a phase, the pull ends
 * ready, something fails, both shards took the committed map) gives the
 * states to enter (`stepsOn`), and each is journaled before the coordinator
 * takes it in memory or acts on it. The shards' sides are
 * services/shard/transfer-source.ts and services/shard/transfer-sink.ts, over
 * the stream of services/shard/transfer-wire.ts.
 *
 * One vocabulary from the proto to the console: MoveState is what the journal
 * and the admin API carry, TransferPhase (the proto's enum) is what the
 * shards report, and both are shown with `phaseName` / `transferPhaseName`.
 */
import { TransferPhase } from '../../proto/gen/cairn/v1/control.js';
import { CairnError } from '../common/errors.js';
import { DEFAULT_MAX_FENCE_MS, MAX_CATCH_UP_MS } from '../shard/transfer-wire.js';
import { isCommitted, MOVE_STATES, TRANSITIONS, type MoveState } from './moves.js';

/** What the operator sees for each state (ctl, the console). */
export const PHASE_NAMES = ['waiting', 'copy', 'catch-up', 'cutover', 'committed', 'done', 'aborted'] as const;
export type PhaseName = (typeof PHASE_NAMES)[number];

export interface MoveStep {
  readonly state: MoveState;
  /** The name the operator sees. */
  readonly phase: PhaseName;
  /** What the master does on entering the step (after journaling it). */
  readonly master: string;
  /** What the source shard does in the step. */
  readonly source: string;
  /** What the destination shard does in the step. */
  readonly destination: string;
  /** The event that completes the step. */
  readonly completedBy: string;
  /** Where the move may go from here (the table in moves.ts). */
  readonly next: readonly MoveState[];
  /** What bounds the step's duration. */
  readonly timeout: string;
  /** The phases the destination reports (PullRangeResponse.phase) while the move is in this step. */
  readonly transferPhases: readonly TransferPhase[];
  /** The failpoints (services/common/failpoints.ts) inside this step, master's and shards'. */
  readonly failpoints: readonly string[];
}

/** A destination gets this much past the source's maxFenceMs (at least) to report READY after FENCED. */
export const FENCE_READY_MARGIN_MS = 2000;
/** First and longest pause between retries of an aborted move's cleanup (AbortMove + DropRange). */
export const CLEANUP_RETRY_MIN_MS = 1000;
export const CLEANUP_RETRY_MAX_MS = 30_000;
/** How often the master retries what a crash or a down shard left undone (cleanups, map pushes). */
export const RETRY_INTERVAL_MS = 1000;

const step = (s: Omit<MoveStep, 'next'>): MoveStep => Object.freeze({ ...s, next: TRANSITIONS[s.state] });

/** Every step of a move, one per state. */
export const STEPS: Readonly<Record<MoveState, MoveStep>> = Object.freeze({
  planned: step({
    state: 'planned',
    phase: 'waiting',
    master: 'journals every move of the operation as planned before any starts; at most maxConcurrentMoves run at once',
    source: 'nothing',
    destination: 'nothing',
    completedBy: 'a worker takes the move → copying',
    timeout: 'none: the move waits for a worker',
    transferPhases: [TransferPhase.TRANSFER_PHASE_UNSPECIFIED],
    failpoints: [],
  }),
  copying: step({
    state: 'copying',
    phase: 'copy',
    master: 'calls PullRange on D and follows its progress reports',
    source: 'logs every write to R, waits for the writes in flight, then streams a snapshot of R in numbered chunks and the checksum',
    destination: 'refuses if it owns any of R, deletes its leftovers of R, opens TransferRange on S and applies each chunk as one batch, acknowledging it',
    completedBy: 'D reports CATCH_UP → catching_up (FENCED or READY first: through catching_up to fenced)',
    timeout: 'the whole pull: 60 s plus 4 × the planned bytes at the throttle (pullDeadline); a failure aborts',
    transferPhases: [TransferPhase.TRANSFER_PHASE_COPY],
    failpoints: ['master-after-copy-journaled', 'master-during-copy', 'source-during-snapshot', 'dest-during-copy'],
  }),
  catching_up: step({
    state: 'catching_up',
    phase: 'catch-up',
    master: 'follows the pull',
    source: 'streams its log of writes to R, throttled, until less than a chunk is left and D acknowledged every chunk; R is still served',
    destination: 'applies and acknowledges each log chunk',
    completedBy: 'D reports FENCED (or READY) → fenced',
    timeout: `after MAX_CATCH_UP_MS (${MAX_CATCH_UP_MS} ms) S stops chasing writers and fences once every chunk is acknowledged; the pull's deadline`,
    transferPhases: [TransferPhase.TRANSFER_PHASE_CATCH_UP],
    failpoints: ['master-during-catch-up', 'source-during-catch-up', 'dest-during-catch-up'],
  }),
  fenced: step({
    state: 'fenced',
    phase: 'cutover',
    master: 'waits for READY, then commits (map and journal in one synced batch)',
    source: 'fences R (FENCED to callers, persisted), sends the rest of its log and the end checksum, and seals the fence once D confirms it',
    destination: 'applies the tail with sync, checks both checksums, acknowledges the end, waits for the seal and reports READY',
    completedBy: 'the pull ends READY → committed (the commit is journaled with the map); anything else → aborted',
    timeout: `S lifts its own fence unless sealed within maxFenceMs (${DEFAULT_MAX_FENCE_MS} ms by default); the master cancels a pull not READY within fenceReadyBoundMs of FENCED`,
    transferPhases: [TransferPhase.TRANSFER_PHASE_FENCED, TransferPhase.TRANSFER_PHASE_READY],
    failpoints: ['master-after-fence', 'source-after-fence', 'dest-after-fenced-tail', 'dest-before-ready', 'master-before-commit'],
  }),
  committed: step({
    state: 'committed',
    phase: 'committed',
    master: 'pushes the new map (R owned by D) to both shards until each took it; the move can no longer abort',
    source: 'on the new map: records R as a pending drop, drops the fence, answers WRONG_SHARD for R and deletes R in the background',
    destination: 'on the new map: serves R',
    completedBy: 'both shards took the map → cleaned',
    timeout: `none: the pushes are retried every ${RETRY_INTERVAL_MS} ms, and by a restarted master`,
    transferPhases: [],
    failpoints: ['master-after-commit-write', 'master-after-commit', 'dest-after-commit', 'source-before-cleanup', 'master-before-cleaned'],
  }),
  cleaned: step({
    state: 'cleaned',
    phase: 'done',
    master: 'nothing: the move is over',
    source: 'finishes deleting R in the background',
    destination: 'nothing',
    completedBy: 'terminal',
    timeout: 'none',
    transferPhases: [],
    failpoints: [],
  }),
  aborted: step({
    state: 'aborted',
    phase: 'aborted',
    master: 'calls AbortMove on S and DropRange on D until both answered, then journals the cleanup done; the map never changed',
    source: 'lifts the fence and remembers the move id, so it can never transfer again',
    destination: "deletes what it received of R (not what it owns or another move's copy)",
    completedBy: 'terminal (the cleanup is retried until it is done)',
    timeout: `none: the cleanup is retried, backing off from ${CLEANUP_RETRY_MIN_MS} ms to ${CLEANUP_RETRY_MAX_MS} ms (cleanupRetryDelayMs)`,
    transferPhases: [],
    failpoints: [],
  }),
});

/** The name the operator sees for a move state; an unknown state (a newer master's) is shown as it is. */
export function phaseName(state: MoveState | string): PhaseName | string {
  return (MOVE_STATES as readonly string[]).includes(state) ? STEPS[state as MoveState].phase : state;
}

/** The move state a destination's transfer phase belongs to (undefined for UNRECOGNIZED). */
export function stateOfTransferPhase(phase: TransferPhase): MoveState | undefined {
  return MOVE_STATES.find((s) => STEPS[s].transferPhases.includes(phase));
}

/** The name the operator sees for a shard's transfer phase (GetMoveState, PullRange progress). */
export function transferPhaseName(phase: TransferPhase): PhaseName | string {
  const state = stateOfTransferPhase(phase);
  return state ? STEPS[state].phase : (TransferPhase[phase] ?? String(phase));
}

// ------------------------------------------------------------------ driving the steps

/** What happens to a running move, as the coordinator sees it. */
export type MoveEvent =
  /** A worker takes the planned move. */
  | { kind: 'start' }
  /** The destination's pull reported its phase. */
  | { kind: 'report'; phase: TransferPhase }
  /** The pull ended READY: the source holds a sealed fence, the destination everything. */
  | { kind: 'ready' }
  /** Something failed before the commit. */
  | { kind: 'failed' }
  /** Both shards took the committed map. */
  | { kind: 'mapTaken' };

/**
 * The states a move in `state` enters on `event`, in order, each along a
 * declared edge; [] when the event changes nothing (a repeated report, an
 * abort of an aborted move). Throws CairnError('INTERNAL') for an event that
 * cannot happen in that state: a bug in the caller, like an illegal transition.
 */
export function stepsOn(state: MoveState, event: MoveEvent): MoveState[] {
  const illegal = (): CairnError => new CairnError('INTERNAL', `move event ${event.kind} cannot happen in state ${state}`);
  switch (event.kind) {
    case 'start':
      if (state !== 'planned') throw illegal();
      return ['copying'];
    case 'report': {
      // Reports may skip a phase (a short catch-up) but never go back: walk forward to the reported step.
      const to = stateOfTransferPhase(event.phase);
      const path: MoveState[] = [];
      const order = ['copying', 'catching_up', 'fenced'] as const;
      const from = order.indexOf(state as (typeof order)[number]);
      const target = order.indexOf(to as (typeof order)[number]);
      if (from < 0 || target <= from) return path;
      for (let i = from + 1; i <= target; i++) path.push(order[i]!);
      return path;
    }
    case 'ready':
      if (state !== 'fenced') throw illegal();
      return ['committed'];
    case 'failed':
      if (state === 'aborted') return [];
      if (isCommitted(state)) throw illegal();
      return ['aborted'];
    case 'mapTaken':
      if (state === 'cleaned') return [];
      if (state !== 'committed') throw illegal();
      return ['cleaned'];
  }
}

/** The deadline of a move's pull (ms since the epoch): generous, since the copy may be throttled; a stalled peer still fails the move. */
export function pullDeadline(bytes: number, mbps: number, now: number = Date.now()): number {
  const expectSeconds = mbps > 0 ? bytes / (mbps * 1e6) : bytes / 5e6;
  return now + 60_000 + expectSeconds * 4000;
}

/**
 * How long after FENCED the master waits for READY before it cancels the
 * pull. The source bounds its own fence (maxFenceMs) until it seals it; after
 * the seal only the master's outcome lifts it, so a destination that goes
 * silent between the seal and READY would keep it up without this bound.
 */
export function fenceReadyBoundMs(maxFenceMs: number): number {
  return maxFenceMs + Math.max(FENCE_READY_MARGIN_MS, maxFenceMs);
}

/**
 * The pause before retrying an aborted move's cleanup after `failures`
 * failures in a row: doubling from CLEANUP_RETRY_MIN_MS up to
 * CLEANUP_RETRY_MAX_MS, and never shorter than the shard's retry hint.
 */
export function cleanupRetryDelayMs(failures: number, retryAfterMs = 0): number {
  const backoff = Math.min(CLEANUP_RETRY_MAX_MS, CLEANUP_RETRY_MIN_MS * 2 ** Math.max(0, failures - 1));
  return Math.max(backoff, Math.min(retryAfterMs, CLEANUP_RETRY_MAX_MS));
}
