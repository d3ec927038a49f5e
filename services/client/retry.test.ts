import { describe, expect, it, jest } from '@jest/globals';
import fc from 'fast-check';
import { CairnError, type ErrorCode } from '../common/errors.js';
import { BACKOFF_CAP_MS, backoffMs, classify, refreshFailure, retryLoop } from './retry.js';

/** A fake clock whose sleep advances time instantly and records each pause. */
function fakeClock(start = 1_000_000) {
  let t = start;
  const sleeps: number[] = [];
  return {
    now: () => t,
    sleep: async (ms: number) => {
      sleeps.push(ms);
      t += ms;
    },
    advance: (ms: number) => (t += ms),
    sleeps,
  };
}

const err = (code: ErrorCode, details = {}) => new CairnError(code, `${code} from the server`, details);

describe('classify', () => {
  it.each<[ErrorCode, string]>([
    ['WRONG_SHARD', 'refresh-map'],
    ['FENCED', 'backoff'],
    ['NOT_READY', 'backoff'],
    ['UNREACHABLE', 'refresh-map'],
    ['PRECONDITION', 'fail'],
    ['INVALID_ARGUMENT', 'fail'],
    ['LIMIT_EXCEEDED', 'fail'],
    ['CONFLICT', 'fail'],
    ['NOT_FOUND', 'fail'],
    ['UNAUTHENTICATED', 'fail'],
    ['PERMISSION_DENIED', 'fail'],
    ['CANCELLED', 'fail'],
    ['DEADLINE_EXCEEDED', 'fail'],
    ['INTERNAL', 'fail'],
  ])('%s → %s', (code, action) => {
    expect(classify(err(code))).toBe(action);
  });
});

describe('backoffMs', () => {
  it('grows exponentially from 20 ms and is capped at 1 s', () => {
    const top = () => 0.999999;
    expect(backoffMs(0, undefined, top)).toBe(19);
    expect(backoffMs(1, undefined, top)).toBe(39);
    expect(backoffMs(3, undefined, top)).toBe(159);
    expect(backoffMs(10, undefined, top)).toBe(BACKOFF_CAP_MS - 1);
    expect(backoffMs(1000, undefined, top)).toBe(BACKOFF_CAP_MS - 1);
  });

  it('uses full jitter: any value from 0 up to the ceiling', () => {
    fc.assert(
      fc.property(fc.nat(60), fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), (attempt, r) => {
        const d = backoffMs(attempt, undefined, () => r);
        return d >= 0 && d < Math.min(BACKOFF_CAP_MS, 20 * 2 ** attempt);
      }),
    );
    expect(backoffMs(5, undefined, () => 0)).toBe(0);
  });

  it('never waits less than the server hint', () => {
    expect(backoffMs(0, 250, () => 0.5)).toBe(250);
    expect(backoffMs(9, 5, () => 0.5)).toBe(500);
  });
});

describe('retryLoop', () => {
  it('returns the first success without sleeping', async () => {
    const clock = fakeClock();
    await expect(retryLoop(async () => 7, { deadline: clock.now() + 1000, ...clock })).resolves.toBe(7);
    expect(clock.sleeps).toEqual([]);
  });

  it('backs off on FENCED / NOT_READY and honours retryAfterMs', async () => {
    const clock = fakeClock();
    const answers = [err('FENCED', { retryAfterMs: 100 }), err('NOT_READY')];
    const fn = jest.fn(async (attempt: number) => {
      const e = answers[attempt];
      if (e) throw e;
      return 'ok';
    });
    const out = await retryLoop(fn, { deadline: clock.now() + 10_000, ...clock, random: () => 0.5 });
    expect(out).toBe('ok');
    expect(fn).toHaveBeenCalledTimes(3);
    expect(clock.sleeps).toEqual([100, 20]); // hint; then half of 40 ms
  });

  it('refreshes the map on WRONG_SHARD and retries at once, backing off only when it repeats', async () => {
    const clock = fakeClock();
    const onRefresh = jest.fn(async (_e: CairnError) => undefined);
    let calls = 0;
    const out = await retryLoop(
      async () => {
        calls += 1;
        if (calls <= 2) throw err('WRONG_SHARD', { epoch: 5n, owner: 's2' });
        return calls;
      },
      { deadline: clock.now() + 10_000, onRefresh, ...clock, random: () => 0.5 },
    );
    expect(out).toBe(3);
    expect(onRefresh).toHaveBeenCalledTimes(2);
    expect(onRefresh.mock.calls[0]![0].details.owner).toBe('s2');
    expect(clock.sleeps).toEqual([20]); // the first refresh retries immediately
  });

  it('fails at once on a non-retryable error', async () => {
    const clock = fakeClock();
    const fn = jest.fn(async () => {
      throw err('CONFLICT');
    });
    await expect(retryLoop(fn, { deadline: clock.now() + 10_000, ...clock })).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(fn).toHaveBeenCalledTimes(1);
  });

  it('rethrows the last error once the next attempt would pass the deadline', async () => {
    const clock = fakeClock();
    let n = 0;
    const p = retryLoop(
      async () => {
        n += 1;
        throw err('NOT_READY', { retryAfterMs: 40 });
      },
      { deadline: clock.now() + 200, ...clock, random: () => 0 },
    );
    await expect(p).rejects.toMatchObject({ code: 'NOT_READY', message: 'NOT_READY from the server' });
    expect(clock.now()).toBeLessThan(1_000_000 + 200);
    expect(n).toBe(5); // tried at 0, 40, 80, 120, 160; 200 would be past the deadline
  });

  it('reports the server error it was retrying, not the deadline, when the last attempt is cut off', async () => {
    const clock = fakeClock();
    let n = 0;
    const p = retryLoop(
      async () => {
        n += 1;
        // A loaded machine: the second attempt's own gRPC deadline fires first.
        throw n === 1 ? err('FENCED', { retryAfterMs: 40 }) : err('DEADLINE_EXCEEDED');
      },
      { deadline: clock.now() + 200, ...clock, random: () => 0 },
    );
    await expect(p).rejects.toMatchObject({ code: 'FENCED', message: 'FENCED from the server' });
    expect(n).toBe(2);
    // The same when the caller made the first attempt itself.
    const q = retryLoop(
      async () => {
        throw err('DEADLINE_EXCEEDED');
      },
      { deadline: clock.now() + 200, ...clock, previous: err('NOT_READY') },
    );
    await expect(q).rejects.toMatchObject({ code: 'NOT_READY' });
    // With nothing retried before, the deadline is the answer.
    await expect(retryLoop(async () => Promise.reject(err('DEADLINE_EXCEEDED')), { deadline: clock.now() + 200, ...clock })).rejects.toMatchObject({
      code: 'DEADLINE_EXCEEDED',
    });
  });

  it('does not sleep past the deadline even when the server hint is long', async () => {
    const clock = fakeClock();
    await expect(
      retryLoop(
        async () => {
          throw err('FENCED', { retryAfterMs: 5000 });
        },
        { deadline: clock.now() + 1000, ...clock },
      ),
    ).rejects.toMatchObject({ code: 'FENCED' });
    expect(clock.sleeps).toEqual([]);
  });

  it('converts a raw gRPC error into a CairnError', async () => {
    const clock = fakeClock();
    const grpcErr = Object.assign(new Error('14 UNAVAILABLE: connect failed'), { code: 14, details: 'connect failed' });
    const p = retryLoop(
      async () => {
        throw grpcErr;
      },
      { deadline: clock.now() + 50, ...clock, random: () => 0.99 },
    );
    await expect(p).rejects.toBeInstanceOf(CairnError);
    // No cairn-error-code trailer: the transport failed (nobody answered), not a Cairn process.
    await expect(p).rejects.toMatchObject({ code: 'UNREACHABLE', message: 'connect failed' });
  });

  it('fails with the refresh error when the refresh itself cannot succeed', async () => {
    const clock = fakeClock();
    const onRefresh = async () => {
      throw err('PERMISSION_DENIED');
    };
    await expect(
      retryLoop(
        async () => {
          throw err('WRONG_SHARD');
        },
        { deadline: clock.now() + 1000, onRefresh, ...clock },
      ),
    ).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
  });

  it('keeps retrying through a master that is briefly down during a refresh', async () => {
    const clock = fakeClock();
    let refreshes = 0;
    let calls = 0;
    const out = await retryLoop(
      async () => {
        calls += 1;
        if (calls < 3) throw err('WRONG_SHARD');
        return 'routed';
      },
      {
        deadline: clock.now() + 5000,
        onRefresh: async () => {
          refreshes += 1;
          if (refreshes === 1) throw err('NOT_READY', { retryAfterMs: 30 });
        },
        ...clock,
      },
    );
    expect(out).toBe('routed');
    expect(clock.sleeps[0]).toBe(30);
  });
});

describe('refreshFailure', () => {
  it('waits for a master that did not answer a refresh in time while the call has time left; fails at its deadline, and on a refusal', () => {
    const late = new CairnError('DEADLINE_EXCEEDED', 'Deadline exceeded');
    expect(refreshFailure(late, 1000, 60_000)).toBe('backoff');
    expect(refreshFailure(late, 60_000, 60_000)).toBe('fail');
    expect(refreshFailure(new CairnError('PERMISSION_DENIED', 'no'), 1000, 60_000)).toBe('fail');
    expect(refreshFailure(new CairnError('UNREACHABLE', 'down'), 1000, 60_000)).toBe('backoff');
  });
});
