/**
 * The shard's hybrid clock. Pure: the wall clock is injected.
 *
 * Timestamps are microseconds. `now()` follows the wall clock while it moves
 * ahead, and otherwise counts up by one from the last value it gave or saw, so
 * it never repeats and never goes back: not across calls, not below the
 * persisted high-water mark after a restart, and not below any timestamp the
 * shard received (explicit writes, moved ranges). That keeps "latest" latest
 * after a range changes hands, and no two writes of a shard share a timestamp.
 */

/** Wall-clock microseconds at millisecond precision, so it is never below Date.now()*1000. */
export const wallClockUs = (): bigint => BigInt(Date.now()) * 1000n;

export class HybridClock {
  private last: bigint;

  /**
   * @param floor the persisted high-water mark: every later `now()` is above it.
   * @param wall the wall clock in microseconds (injectable for tests).
   */
  constructor(
    floor: bigint = 0n,
    private readonly wall: () => bigint = wallClockUs,
  ) {
    this.last = floor;
  }

  /** A timestamp greater than every one given out or observed so far, and at least the wall clock. */
  now(): bigint {
    const w = this.wall();
    this.last = w > this.last ? w : this.last + 1n;
    return this.last;
  }

  /** Moves the clock past a timestamp received from elsewhere, so later `now()` > ts. */
  observe(ts: bigint): void {
    if (ts > this.last) this.last = ts;
  }

  /** The largest timestamp given out or observed: the value to persist as the high-water mark. */
  high(): bigint {
    return this.last;
  }
}
