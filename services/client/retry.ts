/**
 * What the SDK retries, how long it waits, and the loop that does it. Pure:
 * the clock, the sleep and the randomness are injected, so tests run on a
 * fake clock.
 *
 * The retryable set is RETRYABLE in services/common/errors.ts (the one place,
 * as Temporal keeps it in grpc-retry.ts); this module only decides *how* each
 * retryable code is retried. Retrying a write is safe only because every
 * write the SDK sends carries a request id that the shard dedups by, and the
 * SDK reuses that id on every retry of the same logical write.
 */
import { CairnError, fromServiceError, RETRYABLE } from '../common/errors.js';

export type RetryAction = 'refresh-map' | 'backoff' | 'fail';

/**
 * - WRONG_SHARD: our map is stale; fetch a fresh one and re-route.
 * - UNREACHABLE: no process answered at the owner's address. The shard may be
 *   restarting, or it may have been drained and removed while our map still
 *   names it: refresh the map too, so a range that moved is found again.
 * - FENCED / NOT_READY (both UNAVAILABLE): nothing was applied, or the write
 *   is idempotent by request id; wait and send again.
 * - anything else (bad input, conflict, auth, deadline, …) will not get
 *   better by retrying: fail at once.
 */
export function classify(err: CairnError): RetryAction {
  if (!RETRYABLE.has(err.code)) return 'fail';
  return err.code === 'WRONG_SHARD' || err.code === 'UNREACHABLE' ? 'refresh-map' : 'backoff';
}

export const BACKOFF_BASE_MS = 20;
export const BACKOFF_CAP_MS = 1000;

/**
 * Exponential backoff with full jitter (a uniform pick in [0, min(cap,
 * base·2^attempt))), so clients that failed together do not retry together.
 * A server hint (`cairn-retry-after-ms`) is a floor: the server knows when a
 * fence or a missing map is likely to clear.
 */
export function backoffMs(attempt: number, retryAfterMs?: number, random: () => number = Math.random): number {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, attempt));
  const jittered = Math.floor(random() * ceiling);
  return retryAfterMs !== undefined && Number.isFinite(retryAfterMs) && retryAfterMs > jittered ? retryAfterMs : jittered;
}

export interface RetryOptions {
  /** Absolute deadline, ms since the epoch (same clock as `now`). */
  deadline: number;
  /** Called on WRONG_SHARD before the next attempt; typically fetches a fresh map. */
  onRefresh?: (err: CairnError) => Promise<void>;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
  random?: () => number;
  /** The retryable error that led here, when the caller already tried once (calls.ts `recover`). */
  previous?: CairnError;
}

export const realSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs `fn` until it succeeds, a non-retryable error occurs, or the next
 * attempt would start past the deadline; then rethrows the last error as a
 * CairnError. `fn` gets the attempt number (0 first).
 *
 * The first WRONG_SHARD in a row is retried at once after the refresh (the
 * fresh map should route correctly); repeated ones back off, since the
 * master's map can lag a shard's for a moment during a move.
 */
export async function retryLoop<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  const now = o.now ?? Date.now;
  const sleep = o.sleep ?? realSleep;
  let refreshesInARow = 0;
  let lastRetryable = o.previous;
  for (let attempt = 0; ; attempt++) {
    let err: CairnError;
    try {
      return await fn(attempt);
    } catch (e) {
      err = fromServiceError(e);
    }
    // An attempt cut off by the deadline says less than the server's answer
    // that made us retry ("range fenced for move m7"): report that one.
    if (err.code === 'DEADLINE_EXCEEDED' && lastRetryable) throw lastRetryable;
    let action = classify(err);
    if (action === 'fail') throw err;
    if (action === 'refresh-map') {
      refreshesInARow += 1;
      if (o.onRefresh) {
        try {
          await o.onRefresh(err);
        } catch (e) {
          // A refresh that fails is judged like any other error: a down master is
          // worth waiting for, a refused token is not.
          err = fromServiceError(e);
          action = refreshFailure(err, now(), o.deadline);
          if (action === 'fail') throw err;
        }
      }
    } else {
      refreshesInARow = 0;
    }
    lastRetryable = err;
    const delay = action === 'refresh-map' && refreshesInARow === 1 ? 0 : backoffMs(attempt, err.details.retryAfterMs, o.random);
    if (now() + delay >= o.deadline) throw err;
    if (delay > 0) await sleep(delay);
  }
}

/**
 * What a failed map refresh means for the call that asked for it: a master
 * that did not answer within the refresh's own bound (paused, or far away)
 * is worth waiting for while the call's deadline lasts, as a master that
 * refuses connections is; a refused token or bad request is not.
 */
export function refreshFailure(err: CairnError, now: number, deadline: number): 'fail' | 'backoff' {
  if (err.code === 'DEADLINE_EXCEEDED' && now < deadline) return 'backoff';
  return classify(err) === 'fail' ? 'fail' : 'backoff';
}
