/**
 * The disk high-water mark as the planner sees it: how many bytes a shard's
 * disk can still take (diskRoomBytes), and why a drain does not fit.
 */

/** A shard's disk as it reported it: free and total bytes (total 0 = not reported), and whether it refuses writes. */
export interface DiskReport {
  freeBytes: number;
  totalBytes: number;
  full: boolean;
}

export const DEFAULT_DISK_HIGH_WATER = 0.9;

const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;

/**
 * Why a drain cannot be planned whole: how much would stay on the draining
 * shard, the mark, and each other shard's room before and what the moves
 * that fit would use of it.
 */
export function drainShortfallMessage(draining: string, leftBytes: number, highWater: number, others: ReadonlyArray<{ id: string; roomBytes: number; plannedBytes: number }>): string {
  const rooms = others.map((o) => `${o.id} ${mib(o.roomBytes)} (${mib(o.plannedBytes)} planned)`).join(', ');
  return (
    `cannot drain ${draining}: ${mib(leftBytes)} of its data would take the other shards' disks past the high-water mark ` +
    `(diskHighWater ${highWater}: ${Math.round(highWater * 100)}% of each disk); room below the mark: ${rooms}; ` +
    `free disk space on those shards or add a shard, then drain again`
  );
}

/**
 * The bytes a shard's disk can still take before its use passes `highWater`
 * (a fraction of its size): highWater × total − used, at least 0; 0 while it
 * refuses writes for a full disk; undefined (unlimited) when it does not
 * report its disk. Live bytes stand in for what a move adds on disk: LevelDB
 * compresses, and writes a log and compacts at first, which the 10% kept
 * free by the default mark absorbs.
 */
export function diskRoomBytes(disk: DiskReport | undefined, highWater: number): number | undefined {
  if (!disk || !(disk.totalBytes > 0)) return undefined;
  if (disk.full) return 0;
  const used = disk.totalBytes - Math.min(disk.freeBytes, disk.totalBytes);
  return Math.max(0, Math.floor(highWater * disk.totalBytes - used));
}
