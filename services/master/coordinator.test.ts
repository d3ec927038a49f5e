/**
 * Coordinator races, on an in-memory host so the timing is deterministic
 * (as PD tests its schedulers on mock clusters). The real master, shards and
 * journal are exercised end to end by test/rebalance.test.ts and test/crash.test.ts.
 */
import { describe, expect, it } from '@jest/globals';
import winston from 'winston';
import { ShardControlServiceClient } from '../../proto/gen/cairn/v1/control.js';
import { deriveTokenKey, ServerTokenSource } from '../common/auth.js';
import { ClientPool } from '../common/grpc.js';
import { MoveCoordinator, type CoordinatorHost } from './coordinator.js';
import { CLEANUP_RETRY_MAX_MS, cleanupRetryDelayMs } from './move-steps.js';
import { moveToJson, newMove, transition, type Move } from './moves.js';

const log = winston.createLogger({ silent: true, transports: [new winston.transports.Console()] });

function host(over: Partial<CoordinatorHost> = {}) {
  const journal = new Map<string, { move: { state: string } }>();
  const h: CoordinatorHost = {
    log,
    addressOf: () => undefined,
    commitMove: async () => undefined,
    pushMapTo: async () => true,
    saveMove: async (id, j) => void journal.set(id, j as { move: { state: string } }),
    epoch: () => 5n,
    ...over,
  };
  return { h, journal };
}

function coordinator(h: CoordinatorHost) {
  const key = deriveTokenKey('coordinator-test-credential');
  return new MoveCoordinator(h, new ClientPool(ShardControlServiceClient, { maxMessageBytes: 1 << 20 }), new ServerTokenSource(key, 'master'), { maxConcurrentMoves: 2, moveMaxMbps: 0 });
}

function committedMove(): Move {
  let m = newMove({ id: 'mv-1', start: 0n, end: 1n << 60n, from: 's1', to: 's2', bytes: 100 });
  for (const s of ['copying', 'catching_up', 'fenced', 'committed'] as const) m = transition(m, s);
  return m;
}

describe('MoveCoordinator', () => {
  it('finishes a committed move once even when resume and recover ask at the same time', async () => {
    const pushes: string[] = [];
    const { h, journal } = host({
      pushMapTo: async (id) => {
        pushes.push(id);
        await new Promise((r) => setTimeout(r, 50));
        return true;
      },
    });
    const c = coordinator(h);
    try {
      await c.resume([{ move: moveToJson(committedMove()), operationId: 'op-1' }]);
      const r = await c.recover('mv-1'); // while the resume's finish is still pushing
      expect(r.move.state).toBe('cleaned');
      expect(journal.get('mv-1')!.move.state).toBe('cleaned');
      expect(pushes.sort()).toEqual(['s1', 's2']);
    } finally {
      c.close();
    }
  });

  it('leaves a move uncommitted in memory when the durable commit fails, and aborts it', async () => {
    const { h, journal } = host({
      commitMove: async () => {
        throw new Error('disk full');
      },
    });
    const c = coordinator(h);
    try {
      // Drive the private commit path directly: the pull itself needs real shards.
      const exec = c as unknown as { moves: Map<string, { move: Move; operationId: string; cleanupDone: boolean }>; execute(id: string, mbps: number): Promise<Move> };
      let m = newMove({ id: 'mv-2', start: 0n, end: 1n << 60n, from: 's1', to: 's2', bytes: 100 });
      m = transition(transition(transition(m, 'copying'), 'catching_up'), 'fenced');
      exec.moves.set('mv-2', { move: m, operationId: 'op-2', cleanupDone: false });
      (c as unknown as { pull: () => Promise<void> }).pull = async () => undefined;
      // The move is already fenced: skip only execute()'s opening `copying` step; every other step is real.
      const stepper = c as unknown as { step: (id: string, to: string, error?: string) => Promise<Move> };
      const realStep = stepper.step.bind(c);
      stepper.step = async (id, to, error) => (to === 'copying' ? exec.moves.get(id)!.move : realStep(id, to, error));
      const end = await exec.execute('mv-2', 0);
      expect(end.state).toBe('aborted');
      expect(end.error).toMatch(/commit failed: disk full/);
      expect(journal.get('mv-2')?.move.state).not.toBe('committed');
    } finally {
      c.close();
    }
  });
});

describe('journaling each step before taking it', () => {
  type Internals = { moves: Map<string, { move: Move; operationId: string; cleanupDone: boolean }>; step(id: string, to: string): Promise<Move> };

  it('writes the journal before the move changes in memory, and leaves it unchanged when the write fails', async () => {
    const seen: string[] = [];
    let fail = false;
    const { h, journal } = host({
      saveMove: async (id, j) => {
        // While the record is being written, the coordinator still holds the old state.
        seen.push(`${(j as { move: { state: string } }).move.state} while ${c.moveStatus(id).state}`);
        if (fail) throw new Error('fsync failed');
        journal.set(id, j as { move: { state: string } });
      },
    });
    const c = coordinator(h);
    try {
      const internals = c as unknown as Internals;
      internals.moves.set('mv-3', { move: transition(newMove({ id: 'mv-3', start: 0n, end: 1n << 60n, from: 's1', to: 's2', bytes: 1 }), 'copying'), operationId: 'op-3', cleanupDone: false });
      await internals.step('mv-3', 'catching_up');
      expect(seen).toEqual(['catching_up while copying']);
      expect(c.moveStatus('mv-3').state).toBe('catching_up');
      fail = true;
      await expect(internals.step('mv-3', 'fenced')).rejects.toThrow(/fsync failed/);
      expect(c.moveStatus('mv-3').state).toBe('catching_up');
      expect(journal.get('mv-3')!.move.state).toBe('catching_up');
    } finally {
      await c.close();
    }
  });

  it('holds a started move as journaled only once its planned record is written, while its operation already shows it', async () => {
    let release!: () => void;
    const written = new Promise<void>((r) => (release = r));
    const { h } = host({ saveMove: () => written.then(() => undefined) });
    const c = coordinator(h);
    try {
      const op = c.start({ moves: [{ start: 0n, end: 1n << 60n, from: 's1', to: 's2', bytes: 1, rows: 0 }] } as never, 'rebalance', 0);
      const [id] = op.moveIds;
      expect(c.movesOf(op).map((m) => m.move.state)).toEqual(['planned']);
      expect(c.moveStatus(id!).known).toBe(false);
      expect(c.listMoves(true)).toEqual([]);
      const closing = c.close(); // nothing more is journaled or run after the planned records
      release();
      await closing;
      expect(c.moveStatus(id!).state).toBe('planned');
    } finally {
      await c.close();
    }
  });
});

describe('retrying the cleanup of an aborted move', () => {
  it('backs off, doubling up to a bound, so a shard that keeps refusing (a full disk) is not asked every second forever', () => {
    const delays = Array.from({ length: 8 }, (_, i) => cleanupRetryDelayMs(i + 1));
    expect(delays).toEqual([1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
    expect(Math.max(...delays)).toBe(CLEANUP_RETRY_MAX_MS);
  });

  it('waits at least as long as the shard asks, within the bound', () => {
    expect(cleanupRetryDelayMs(1, 5000)).toBe(5000);
    expect(cleanupRetryDelayMs(1, 10 * 60_000)).toBe(CLEANUP_RETRY_MAX_MS);
  });
});
