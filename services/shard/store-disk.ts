/**
 * The store's disk-full state. The first write that fails for lack of space
 * puts the store in it; from then on every write is refused without touching
 * LevelDB, free space is polled, and once there is room again LevelDB is
 * closed and reopened (the store supplies how: store-open.ts reopenStore)
 * and writes resume. Reads keep being served, waiting only while the reopen
 * runs. Kept apart because it is a small state machine of its own, with its
 * own timer and listeners, that the writer and ShardStore only consult.
 */
import { statfs } from 'node:fs/promises';
import { CairnError } from '../common/errors.js';

/** Free and total bytes of the file system holding the data directory (for the unprivileged user: statfs bavail). */
export interface DiskSpace {
  freeBytes: number;
  totalBytes: number;
}

/**
 * The store's write state as to disk space. `full` from the first write that
 * failed for lack of space until LevelDB has been reopened with room again;
 * `message` is what refused writes are told.
 */
export interface DiskState {
  full: boolean;
  message: string;
}

export const DEFAULT_DISK_POLL_MS = 1000;

/**
 * Free bytes needed before a full store reopens and takes writes again: 5% of
 * the file system, at least 1 MiB and at most 64 MiB. Enough that LevelDB can
 * write its recovered memtable and a few batches, so it does not fill again
 * at once; a small bound, so freeing a little space is enough on a big disk.
 */
export function resumeFreeBytes(totalBytes: number): number {
  return Math.min(64 * 1024 * 1024, Math.max(1024 * 1024, Math.floor(totalBytes * 0.05)));
}

/** statfs of a directory as free and total bytes. */
export async function diskSpaceOf(dir: string): Promise<DiskSpace> {
  const s = await statfs(dir);
  return { freeBytes: s.bavail * s.bsize, totalBytes: s.blocks * s.bsize };
}

/** What DiskFullGuard asks of the store that owns it. */
export interface DiskHost {
  /** The data directory, named in the refusal. */
  readonly dir: string;
  readonly diskPollMs?: number;
  readonly resumeFreeBytes?: number;
  isClosed(): boolean;
  diskSpace(): Promise<DiskSpace>;
  /** Closes and opens LevelDB again and reloads what it must (see reopenStore). */
  reopenDb(): Promise<void>;
}

export class DiskFullGuard {
  /** Set while the disk is full: every write is refused with it, without touching LevelDB. */
  full: CairnError | null = null;
  /** Set while LevelDB is closed and reopened after a full disk: reads wait for it. */
  reopening: Promise<void> | null = null;
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners = new Set<(state: DiskState) => void>();

  constructor(private readonly host: DiskHost) {}

  /** Whether writes are refused for lack of space, and what they are told. */
  state(): DiskState {
    return { full: this.full !== null, message: this.full?.message ?? '' };
  }

  /** Calls `listener` when the store fills up and when it takes writes again. Returns the unsubscribe function. */
  onState(listener: (state: DiskState) => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  /** Stops looking at free space (the store is closing). */
  stop(): void {
    clearTimeout(this.timer);
  }

  /**
   * The first write that failed for lack of space puts the store in the full
   * state. LevelDB cannot be written on from then on: after a failed append
   * its log writer has lost its place in the file, so on a full-then-freed
   * disk later writes succeed but are unreadable at the next open (measured
   * on tmpfs: acknowledged, then gone after a reopen), and a failed
   * compaction leaves an error that fails every write until a reopen. So
   * every write is refused here until free space is back, and then LevelDB
   * is closed and opened again, which replays the log up to the failed
   * record (which nobody was told succeeded) and starts a new one.
   */
  enter(cause: unknown): CairnError {
    if (!this.full) {
      const why = String((cause as Error)?.message ?? cause);
      this.full = new CairnError(
        'DISK_FULL',
        `no space left on device in ${this.host.dir}: this shard refuses writes until space is freed there, then resumes by itself (reads are still served); LevelDB said: ${why}`,
      );
      this.emit();
      this.schedule();
    }
    return this.full;
  }

  private emit(): void {
    const state = this.state();
    for (const l of this.listeners) {
      try {
        l(state);
      } catch {
        // A listener's failure must not stop the store's own recovery.
      }
    }
  }

  private schedule(): void {
    if (this.host.isClosed()) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.checkRecovered(), this.host.diskPollMs ?? DEFAULT_DISK_POLL_MS);
    this.timer.unref();
  }

  /** While full: reopens LevelDB once the file system has room again; otherwise looks again later. */
  private async checkRecovered(): Promise<void> {
    if (this.host.isClosed() || !this.full) return;
    try {
      const { freeBytes, totalBytes } = await this.host.diskSpace();
      if (freeBytes >= (this.host.resumeFreeBytes ?? resumeFreeBytes(totalBytes))) await this.reopen();
    } catch {
      // Not yet (statfs failed, or LevelDB could not open again): the next check tries again.
    }
    if (this.full) this.schedule();
  }

  /** Closes and opens LevelDB again (writes are refused meanwhile, reads wait), and takes writes again. */
  private async reopen(): Promise<void> {
    const run = this.host.reopenDb();
    this.reopening = run;
    try {
      await run;
    } finally {
      this.reopening = null;
    }
    if (this.host.isClosed()) return;
    this.full = null;
    clearTimeout(this.timer);
    this.emit();
  }

  /** Reads wait while LevelDB is being reopened after a full disk. */
  whenOpen(): Promise<void> | undefined {
    return this.reopening?.catch(() => undefined);
  }
}
