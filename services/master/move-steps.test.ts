/**
 * The declared steps of a move (move-steps.ts): one per state, a display
 * name for every state and every transfer phase, and events that only ever
 * lead along the table's edges.
 */
import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { readdirSync, readFileSync } from 'node:fs';
import { TransferPhase } from '../../proto/gen/cairn/v1/control.js';
import { CairnError } from '../common/errors.js';
import {
  cleanupRetryDelayMs,
  fenceReadyBoundMs,
  PHASE_NAMES,
  phaseName,
  pullDeadline,
  stateOfTransferPhase,
  STEPS,
  stepsOn,
  transferPhaseName,
  type MoveEvent,
} from './move-steps.js';
import { canTransition, isTerminal, MOVE_STATES, newMove, transition, TRANSITIONS, type MoveState } from './moves.js';
import { REPLICATION_FAILPOINTS } from './failover.js';

/** Every value of the proto enum, UNRECOGNIZED aside. */
const PHASES = Object.values(TransferPhase).filter((v): v is TransferPhase => typeof v === 'number' && v !== TransferPhase.UNRECOGNIZED);

const arbState = fc.constantFrom(...MOVE_STATES);
const arbEvent: fc.Arbitrary<MoveEvent> = fc.oneof(
  fc.constantFrom<MoveEvent>({ kind: 'start' }, { kind: 'ready' }, { kind: 'failed' }, { kind: 'mapTaken' }),
  fc.constantFrom(...PHASES, TransferPhase.UNRECOGNIZED).map((phase): MoveEvent => ({ kind: 'report', phase })),
);

/** stepsOn, or 'illegal' when it refuses the event (always as INTERNAL). */
function outcome(state: MoveState, event: MoveEvent): MoveState[] | 'illegal' {
  try {
    return stepsOn(state, event);
  } catch (err) {
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).code).toBe('INTERNAL');
    return 'illegal';
  }
}

describe('the declared steps', () => {
  it('declares one step per state, whose next states are the transition table', () => {
    expect(Object.keys(STEPS).sort()).toEqual([...MOVE_STATES].sort());
    for (const s of MOVE_STATES) {
      expect(STEPS[s].state).toBe(s);
      expect(STEPS[s].next).toEqual(TRANSITIONS[s]);
      for (const field of ['master', 'source', 'destination', 'completedBy', 'timeout'] as const) expect(STEPS[s][field]).not.toBe('');
    }
  });

  it("shows every state with the CLI's words", () => {
    const cli: Record<MoveState, string> = { planned: 'waiting', copying: 'copy', catching_up: 'catch-up', fenced: 'cutover', committed: 'committed', cleaned: 'done', aborted: 'aborted' };
    for (const s of MOVE_STATES) expect(phaseName(s)).toBe(cli[s]);
    expect(new Set(MOVE_STATES.map((s) => phaseName(s))).size).toBe(MOVE_STATES.length);
    expect([...PHASE_NAMES].sort()).toEqual(MOVE_STATES.map((s) => STEPS[s].phase).sort());
    expect(phaseName('from_a_newer_master')).toBe('from_a_newer_master');
  });

  it('gives every transfer phase exactly one step, in the order of the move, and a display name', () => {
    for (const p of PHASES) {
      expect(MOVE_STATES.filter((s) => STEPS[s].transferPhases.includes(p))).toHaveLength(1);
      expect(PHASE_NAMES).toContain(transferPhaseName(p));
    }
    const order = [...PHASES].sort((a, b) => a - b).map((p) => MOVE_STATES.indexOf(stateOfTransferPhase(p)!));
    expect(order).toEqual([...order].sort((a, b) => a - b));
    expect(transferPhaseName(TransferPhase.TRANSFER_PHASE_COPY)).toBe('copy');
    expect(transferPhaseName(TransferPhase.TRANSFER_PHASE_CATCH_UP)).toBe('catch-up');
    expect(transferPhaseName(TransferPhase.TRANSFER_PHASE_FENCED)).toBe('cutover');
    expect(transferPhaseName(TransferPhase.TRANSFER_PHASE_READY)).toBe('cutover');
    expect(stateOfTransferPhase(TransferPhase.UNRECOGNIZED)).toBeUndefined();
    expect(transferPhaseName(TransferPhase.UNRECOGNIZED)).toBe('UNRECOGNIZED');
  });

  it('lists each failpoint in one step, and every failpoint of the move code in some step', () => {
    const listed = MOVE_STATES.flatMap((s) => STEPS[s].failpoints);
    expect(new Set(listed).size).toBe(listed.length);
    // Every failpoint of the master and the shard is a step's, or named here as not a move's.
    const notMoves: string[] = ['master-admin-answer', ...REPLICATION_FAILPOINTS];
    const files = ['master', 'shard'].flatMap((dir) =>
      readdirSync(new URL(`../${dir}/`, import.meta.url))
        .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))
        .map((f) => new URL(`../${dir}/${f}`, import.meta.url)),
    );
    const used = files.flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/failpoint\('([a-z-]+)'\)/g)].map((m) => m[1]!));
    expect([...new Set(used)].filter((n) => !notMoves.includes(n)).sort()).toEqual([...listed].sort());
  });
});

describe('driving the steps', () => {
  it('leads only along declared edges, from any state on any event', () => {
    fc.assert(
      fc.property(arbState, arbEvent, (state, event) => {
        const out = outcome(state, event);
        if (out === 'illegal') return;
        let at = state;
        for (const to of out) {
          expect(canTransition(at, to)).toBe(true);
          at = to;
        }
      }),
    );
  });

  it('moves a report forward to the step its phase belongs to, never back', () => {
    fc.assert(
      fc.property(arbState, fc.constantFrom(...PHASES), (state, phase) => {
        const path = stepsOn(state, { kind: 'report', phase });
        const target = stateOfTransferPhase(phase)!;
        if (path.length) expect(path.at(-1)).toBe(target);
        else expect(['planned', 'committed', 'cleaned', 'aborted'].includes(state) || MOVE_STATES.indexOf(target) <= MOVE_STATES.indexOf(state)).toBe(true);
      }),
    );
  });

  it('keeps what the coordinator did on each report', () => {
    const { COPY, CATCH_UP, FENCED, READY } = { COPY: TransferPhase.TRANSFER_PHASE_COPY, CATCH_UP: TransferPhase.TRANSFER_PHASE_CATCH_UP, FENCED: TransferPhase.TRANSFER_PHASE_FENCED, READY: TransferPhase.TRANSFER_PHASE_READY };
    const report = (state: MoveState, phase: TransferPhase) => stepsOn(state, { kind: 'report', phase });
    expect(report('copying', COPY)).toEqual([]);
    expect(report('copying', CATCH_UP)).toEqual(['catching_up']);
    expect(report('copying', FENCED)).toEqual(['catching_up', 'fenced']);
    expect(report('copying', READY)).toEqual(['catching_up', 'fenced']);
    expect(report('catching_up', CATCH_UP)).toEqual([]);
    expect(report('catching_up', FENCED)).toEqual(['fenced']);
    expect(report('fenced', READY)).toEqual([]);
    expect(report('fenced', COPY)).toEqual([]);
    expect(stepsOn('planned', { kind: 'start' })).toEqual(['copying']);
    expect(stepsOn('fenced', { kind: 'ready' })).toEqual(['committed']);
    expect(stepsOn('committed', { kind: 'mapTaken' })).toEqual(['cleaned']);
    expect(stepsOn('cleaned', { kind: 'mapTaken' })).toEqual([]);
    expect(stepsOn('catching_up', { kind: 'failed' })).toEqual(['aborted']);
    expect(stepsOn('aborted', { kind: 'failed' })).toEqual([]);
    for (const s of ['committed', 'cleaned'] as const) expect(outcome(s, { kind: 'failed' })).toBe('illegal');
    expect(outcome('copying', { kind: 'ready' })).toBe('illegal');
  });

  it('drives a move by random events through legal records only, and a terminal state takes no more steps', () => {
    fc.assert(
      fc.property(fc.array(arbEvent, { maxLength: 30 }), (events) => {
        let move = newMove({ id: 'm', start: 0n, end: 1n << 60n, from: 's1', to: 's2', bytes: 1 }, 0);
        for (const e of events) {
          const out = outcome(move.state, e);
          if (out === 'illegal') continue;
          if (isTerminal(move.state)) expect(out).toEqual([]);
          for (const to of out) move = transition(move, to, 0);
        }
        expect(move.history[0]!.state).toBe('planned');
      }),
    );
  });
});

describe('step timeouts', () => {
  it('gives a pull 60 s plus four times the expected transfer time', () => {
    expect(pullDeadline(0, 0, 1000)).toBe(61_000);
    expect(pullDeadline(10e6, 1, 0)).toBe(60_000 + 40_000);
    expect(pullDeadline(10e6, 0, 0)).toBe(60_000 + 8000); // unthrottled: reckoned at 5 MB/s
  });

  it('bounds FENCED to READY by maxFenceMs plus at least 2 s', () => {
    expect(fenceReadyBoundMs(1000)).toBe(3000);
    expect(fenceReadyBoundMs(5000)).toBe(10_000);
  });

  it('backs the abort cleanup off from 1 s to 30 s', () => {
    expect(cleanupRetryDelayMs(1)).toBe(1000);
    expect(cleanupRetryDelayMs(10)).toBe(30_000);
  });
});
