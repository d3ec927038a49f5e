/**
 * The masters a process may talk to, and which one it talks to now: shards,
 * the SDK, ctl, admin and health take a list (`a:7000,b:7000`) and follow the
 * leader. Pure: it decides, the caller dials.
 *
 * A standby (or deposed) master answers NOT_LEADER naming the leader's
 * address when it knows it: the next call goes there. A master that does not
 * answer, or a NOT_LEADER that names no leader (an election under way), moves
 * on to the next address in the list, round and round.
 */
import { CairnError } from './errors.js';

/** `a:7000,b:7000` or a list → the addresses, trimmed, without duplicates. */
export function masterList(given: string | readonly string[]): string[] {
  const items = (typeof given === 'string' ? given.split(',') : given).map((s) => s.trim()).filter((s) => s !== '');
  return [...new Set(items)];
}

export class MasterAddresses {
  readonly all: string[];
  private index = 0;

  constructor(given: string | readonly string[]) {
    this.all = masterList(given);
    if (this.all.length === 0) throw new CairnError('INVALID_ARGUMENT', 'master: expected host:port, or several separated by commas (a:7000,b:7000)');
  }

  /** The address to call now. */
  get current(): string {
    return this.all[this.index]!;
  }

  /** Whether there is any other master to try. */
  get several(): boolean {
    return this.all.length > 1;
  }

  /**
   * Takes a failed call's error into account; true when the next call goes
   * elsewhere (worth retrying at once). A leader named that is not in the
   * list is followed all the same: the list is where to start, not a bound.
   */
  follow(err: unknown): boolean {
    if (!(err instanceof CairnError)) return false;
    if (err.code === 'NOT_LEADER' && err.details.leaderAddress) {
      const named = err.details.leaderAddress;
      if (named === this.current) return false;
      if (!this.all.includes(named)) this.all.push(named);
      this.index = this.all.indexOf(named);
      return true;
    }
    if (err.code === 'NOT_LEADER' || err.code === 'UNREACHABLE' || err.code === 'DEADLINE_EXCEEDED') {
      if (!this.several) return false;
      this.index = (this.index + 1) % this.all.length;
      return true;
    }
    return false;
  }
}
