import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { CairnError } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';
import {
  abortMove,
  canTransition,
  copiedFraction,
  isCommitted,
  isTerminal,
  MOVE_STATES,
  moveFromJson,
  moveToJson,
  newMove,
  RATE_WINDOW_MS,
  RateWindow,
  resumeAction,
  transition,
  TRANSITIONS,
  withProgress,
  type Move,
  type MoveState,
} from './moves.js';

const spec = { id: 'm1', start: 1n << 48n, end: HASH_SPACE_END, from: 's1', to: 's2', bytes: 1234 };

/** The protocol as docs/design.md "Moving data" describes it, written out independently of TRANSITIONS. */
const LEGAL = new Set([
  'planned>copying',
  'copying>catching_up',
  'catching_up>fenced',
  'fenced>committed',
  'committed>cleaned',
  'planned>aborted',
  'copying>aborted',
  'catching_up>aborted',
  'fenced>aborted',
]);

/** A move driven through the table's first choices up to `state`. */
function moveIn(state: MoveState): Move {
  const path: Record<MoveState, MoveState[]> = {
    planned: [],
    copying: ['copying'],
    catching_up: ['copying', 'catching_up'],
    fenced: ['copying', 'catching_up', 'fenced'],
    committed: ['copying', 'catching_up', 'fenced', 'committed'],
    cleaned: ['copying', 'catching_up', 'fenced', 'committed', 'cleaned'],
    aborted: ['aborted'],
  };
  return path[state].reduce((m, s, i) => transition(m, s, 100 + i), newMove(spec, 0));
}

describe('the transition table', () => {
  const pairs = MOVE_STATES.flatMap((from) => MOVE_STATES.map((to) => [from, to] as const));

  it('lists exactly the legal transitions', () => {
    const listed = Object.entries(TRANSITIONS).flatMap(([from, tos]) => tos.map((to) => `${from}>${to}`));
    expect(new Set(listed)).toEqual(LEGAL);
  });

  it.each(pairs.filter(([f, t]) => LEGAL.has(`${f}>${t}`)))('allows %s → %s', (from, to) => {
    const m = moveIn(from);
    expect(canTransition(from, to)).toBe(true);
    const next = transition(m, to, 999);
    expect(next.state).toBe(to);
    expect(next.history[next.history.length - 1]).toEqual({ state: to, at: 999 });
    expect(next.history).toHaveLength(m.history.length + 1);
    // Immutable: the old record is unchanged and both are frozen.
    expect(m.state).toBe(from);
    expect(Object.isFrozen(next)).toBe(true);
    expect(Object.isFrozen(next.history)).toBe(true);
  });

  it.each(pairs.filter(([f, t]) => !LEGAL.has(`${f}>${t}`)))('refuses %s → %s with INTERNAL naming it', (from, to) => {
    const m = moveIn(from);
    expect(canTransition(from, to)).toBe(false);
    let thrown: unknown;
    try {
      transition(m, to);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(CairnError);
    expect((thrown as CairnError).code).toBe('INTERNAL');
    expect((thrown as CairnError).message).toContain(`${from} → ${to}`);
    expect(m.state).toBe(from);
  });

  it('covers all 49 ordered pairs', () => {
    expect(pairs).toHaveLength(49);
  });
});

describe('terminal states and restart', () => {
  it('knows which states are terminal and committed', () => {
    expect(MOVE_STATES.filter(isTerminal)).toEqual(['cleaned', 'aborted']);
    expect(MOVE_STATES.filter(isCommitted)).toEqual(['committed', 'cleaned']);
  });

  it.each<[MoveState, 'abort' | 'finish' | 'none']>([
    ['planned', 'abort'],
    ['copying', 'abort'],
    ['catching_up', 'abort'],
    ['fenced', 'abort'],
    ['committed', 'finish'],
    ['cleaned', 'none'],
    ['aborted', 'none'],
  ])('resumeAction(%s) is %s', (state, action) => {
    expect(resumeAction(state)).toBe(action);
    // The action is always one the table allows.
    if (action === 'abort') expect(canTransition(state, 'aborted')).toBe(true);
    if (action === 'finish') expect(canTransition(state, 'cleaned')).toBe(true);
    if (action === 'none') expect(isTerminal(state)).toBe(true);
  });
});

describe('newMove, abortMove, withProgress', () => {
  it('starts planned with an empty copy count', () => {
    const m = newMove(spec, 5);
    expect(m).toEqual({ ...spec, state: 'planned', history: [{ state: 'planned', at: 5 }], copiedBytes: 0 });
  });

  it('rejects a move to itself, an empty range and one past 2^64', () => {
    expect(() => newMove({ ...spec, to: 's1' })).toThrow(/both s1/);
    expect(() => newMove({ ...spec, end: spec.start })).toThrow(/empty/);
    expect(() => newMove({ ...spec, end: HASH_SPACE_END + 1n })).toThrow(/outside/);
    expect(() => newMove({ ...spec, bytes: -1 })).toThrow(/bytes/);
  });

  it('records why a move aborted, and refuses to abort after the commit', () => {
    const a = abortMove(moveIn('fenced'), 'destination went away', 7);
    expect(a).toMatchObject({ state: 'aborted', error: 'destination went away' });
    expect(() => abortMove(moveIn('committed'), 'too late')).toThrow(/committed → aborted/);
  });

  it('tracks copy progress without going backwards', () => {
    const m = withProgress(withProgress(moveIn('copying'), 500), 200);
    expect(m.copiedBytes).toBe(500);
    expect(m.state).toBe('copying');
    expect(() => withProgress(m, Number.NaN)).toThrow(CairnError);
  });
});

describe('journal JSON', () => {
  it.each(MOVE_STATES)('round-trips a move in state %s through JSON text', (state) => {
    let m = withProgress(moveIn(state), 77);
    if (state === 'aborted') m = { ...m, error: 'boom' };
    const text = JSON.stringify(moveToJson(m));
    expect(JSON.parse(text).start).toBe(String(spec.start));
    expect(JSON.parse(text).end).toBe('18446744073709551616');
    expect(moveFromJson(JSON.parse(text))).toEqual(m);
    expect(moveFromJson(text)).toEqual(m);
  });

  it('names the damaged field of a bad record', () => {
    const good = moveToJson(moveIn('catching_up'));
    const bad = (patch: object): unknown => ({ ...good, ...patch });
    expect(() => moveFromJson('{')).toThrow(/not JSON/);
    expect(() => moveFromJson(bad({ start: '0x10' }))).toThrow(/start must be a decimal/);
    expect(() => moveFromJson(bad({ state: 'flying' }))).toThrow(/state must be one of/);
    expect(() => moveFromJson(bad({ state: 'fenced' }))).toThrow(/not the last state/);
    expect(() => moveFromJson(bad({ history: [{ state: 'planned', at: 0 }, { state: 'fenced', at: 1 }], state: 'fenced' }))).toThrow(
      /illegal transition planned → fenced/,
    );
    expect(() => moveFromJson(bad({ copiedBytes: -5 }))).toThrow(/copiedBytes/);
    expect(() => moveFromJson(bad({ from: 's2' }))).toThrow(/both s2/);
    try {
      moveFromJson(bad({ id: '' }));
    } catch (e) {
      expect((e as CairnError).code).toBe('INTERNAL');
    }
  });

  it('round-trips any move', () => {
    const hashPair = fc
      .tuple(fc.bigInt({ min: 0n, max: HASH_SPACE_END }), fc.bigInt({ min: 0n, max: HASH_SPACE_END }))
      .filter(([a, b]) => a !== b)
      .map(([a, b]) => (a < b ? [a, b] : [b, a]));
    fc.assert(
      fc.property(hashPair, fc.string({ minLength: 1 }), fc.nat(), fc.array(fc.nat({ max: 3 }), { maxLength: 6 }), ([start, end], id, bytes, walk) => {
        let m = newMove({ id, start, end, from: 'a', to: 'b', bytes }, 1);
        for (const [i, pick] of walk.entries()) {
          const next = TRANSITIONS[m.state];
          if (next.length === 0) break;
          m = transition(m, next[pick % next.length]!, i + 2);
        }
        expect(moveFromJson(JSON.parse(JSON.stringify(moveToJson(m))))).toEqual(m);
      }),
    );
  });
});

describe('random walks through the table', () => {
  it('never leave committed for aborted, and keep a history of legal steps', () => {
    let reachedCommit = 0;
    // Each step tries any state (often illegal), goes forward (legal choice 0) or aborts (choice 1).
    const step = fc.oneof(
      { arbitrary: fc.constantFrom(...MOVE_STATES), weight: 2 },
      { arbitrary: fc.constant(0), weight: 4 },
      { arbitrary: fc.constant(1), weight: 1 },
    );
    fc.assert(
      fc.property(fc.array(step, { maxLength: 30 }), (attempts) => {
        let m = newMove(spec, 0);
        let committed = false;
        for (const [i, a] of attempts.entries()) {
          const legal = TRANSITIONS[m.state];
          if (typeof a === 'number' && legal.length === 0) continue;
          const to: MoveState = typeof a === 'number' ? legal[a % legal.length]! : a;
          if (!canTransition(m.state, to)) {
            expect(() => transition(m, to)).toThrow(CairnError);
            continue;
          }
          m = transition(m, to, i + 1);
          if (isCommitted(m.state)) committed = true;
          if (committed) expect(['committed', 'cleaned']).toContain(m.state);
        }
        const states = m.history.map((h) => h.state);
        expect(states[0]).toBe('planned');
        for (let i = 1; i < states.length; i++) expect(canTransition(states[i - 1]!, states[i]!)).toBe(true);
        if (states.includes('committed')) {
          reachedCommit++;
          expect(states).not.toContain('aborted');
        }
        expect(states.filter((s) => s === 'aborted').length).toBeLessThanOrEqual(1);
      }),
      { numRuns: 1000 },
    );
    // The walks do reach the commit, so the property is not vacuous.
    expect(reachedCommit).toBeGreaterThan(100);
  });
});

describe('copiedFraction', () => {
  it('is 0 before the source said how many rows its snapshot holds, not 100%', () => {
    expect(copiedFraction({ copying: true, rowsReceived: 0, sourceRows: 0 })).toBe(0);
  });
  it('is received over snapshot rows while copying, capped at 1, and 1 once the copy is done', () => {
    expect(copiedFraction({ copying: true, rowsReceived: 25, sourceRows: 100 })).toBe(0.25);
    expect(copiedFraction({ copying: true, rowsReceived: 150, sourceRows: 100 })).toBe(1);
    expect(copiedFraction({ copying: false, rowsReceived: 0, sourceRows: 0 })).toBe(1);
  });
  it('never decreases along the reports of one pull (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1e6 }), fc.array(fc.integer({ min: 0, max: 1e6 }), { maxLength: 30 }), (rows, received) => {
        const sorted = [...received].sort((a, b) => a - b);
        const reports = [{ copying: true, rowsReceived: 0, sourceRows: 0 }, ...sorted.map((n) => ({ copying: true, rowsReceived: n, sourceRows: rows })), { copying: false, rowsReceived: rows, sourceRows: rows }];
        const f = reports.map(copiedFraction);
        for (let i = 1; i < f.length; i++) expect(f[i]!).toBeGreaterThanOrEqual(f[i - 1]!);
      }),
    );
  });
});

describe('RateWindow', () => {
  it('shows the average over the last 5 s, not the jump since the previous sample', () => {
    const w = new RateWindow();
    expect(RATE_WINDOW_MS).toBe(5000);
    expect(w.add(0, 0)).toBe(0);
    expect(w.add(100, 1_000_000)).toBe(0); // under 200 ms of samples: nothing to show yet
    expect(w.add(1000, 1_000_000)).toBe(1_000_000); // 1 MB in the first second
    for (let t = 2000; t <= 10_000; t += 1000) w.add(t, t * 1000); // 1 MB/s from then on
    expect(w.add(10_500, 10_500_000)).toBeCloseTo(1_000_000, 6); // over 5.5 s back to the sample at 5000
  });

  it('never shows more than the bytes over the window when a chunk lands at once (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 0, max: 200_000 })), { minLength: 1, maxLength: 200 }), (steps) => {
        const w = new RateWindow();
        const seen: Array<{ at: number; bytes: number }> = [{ at: 0, bytes: 0 }];
        w.add(0, 0);
        let at = 0;
        let bytes = 0;
        for (const [dt, db] of steps) {
          at += dt;
          bytes += db;
          seen.push({ at, bytes });
          const shown = w.add(at, bytes);
          // Whatever it shows is the average over some span of at least 200 ms ending now.
          const spans = seen.filter((s) => at - s.at >= 200).map((s) => ((bytes - s.bytes) * 1000) / (at - s.at));
          if (spans.length) expect(shown).toBeLessThanOrEqual(Math.max(...spans) + 1e-6);
        }
      }),
    );
  });
});
