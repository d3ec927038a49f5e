/**
 * Pure formatting of ctl results: the seed's human lines and the `--json`
 * shapes that scripts rely on (hash positions and epochs as decimal strings,
 * counts as numbers, the last range ending at "18446744073709551616").
 */
import type { ServerInfo } from '../services/client/types.js';
import { formatHash } from '../services/common/ranges.js';

/**
 * A server as ctl prints it: the SDK's ServerInfo, where the heartbeat and
 * disk figures may be absent (a master from before they were reported).
 */
type Optional = 'lastHeartbeatMs' | 'diskFreeBytes' | 'diskTotalBytes' | 'diskFull' | 'primaries' | 'followers' | 'learners';
export type ServerRow = Omit<ServerInfo, Optional> & Partial<Pick<ServerInfo, Optional>>;

export interface RangeRow {
  start: bigint;
  end: bigint;
  /** The primary. */
  shard: string;
  address: string;
  bytes: number;
  rows: number;
  /** The replica group; absent (from a master before replication) = the primary alone. */
  replicas?: string[];
  inSync?: string[];
  learners?: string[];
}

/**
 * What a range's copies are doing, for a replicated range ('' for a single
 * copy, so the seed's lines stay as they were): followers in sync, followers
 * catching up, learners.
 */
export function replicaNote(r: RangeRow): string {
  const followers = (r.replicas ?? [r.shard]).filter((s) => s !== r.shard);
  const learners = r.learners ?? [];
  if (followers.length === 0 && learners.length === 0) return '';
  const inSync = new Set(r.inSync ?? [r.shard]);
  const parts = [`followers ${followers.map((s) => (inSync.has(s) ? s : `${s} (catching up)`)).join(', ') || 'none'}`];
  if (learners.length) parts.push(`learners ${learners.join(', ')}`);
  const copies = 1 + followers.filter((s) => inSync.has(s)).length;
  return `  ${parts.join('; ')}; ${copies} in sync`;
}

export function humanBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n}B` : `${v < 10 ? v.toFixed(1) : Math.round(v)}${units[u]}`;
}

export const percent = (share: number): string => `${Math.round(share * 100)}%`;

/**
 * A shard's free disk: `12MB of 16MB` (`12MB/16MB` when `compact`), `0B of
 * 16MB FULL` while it refuses writes, `n/a` when the shard does not report it
 * (an older shard).
 */
export function diskFree(s: Pick<ServerRow, 'diskFreeBytes' | 'diskTotalBytes' | 'diskFull'>, compact = false): string {
  const full = s.diskFull ? ' FULL' : '';
  if (!s.diskTotalBytes) return `n/a${full}`;
  return `${humanBytes(s.diskFreeBytes ?? 0)}${compact ? '/' : ' of '}${humanBytes(s.diskTotalBytes)}${full}`;
}

/** `Server 0 50% [00000000000000000000, 09223372036854775808[` per range; `Server 2 0% (no range)` for an empty shard. */
export function formatRanges(servers: Array<Pick<ServerRow, 'id' | 'share'>>, ranges: RangeRow[]): string[] {
  const lines: string[] = [];
  servers.forEach((s, i) => {
    const own = ranges.filter((r) => r.shard === s.id);
    if (own.length === 0) lines.push(`Server ${i} 0% (no range)`);
    for (const r of own) {
      const share = Number(((r.end - r.start) * 10_000n) / (1n << 64n)) / 10_000;
      const counts = r.rows || r.bytes ? `  ${r.rows} rows, ${humanBytes(r.bytes)}` : '';
      lines.push(`Server ${i} ${percent(share)} [${formatHash(r.start)}, ${formatHash(r.end)}[${counts}${replicaNote(r)}`);
    }
  });
  return lines;
}

/**
 * One line per shard: `Server 0 s1 127.0.0.1:7001 up (Size: 70KB, Rows: 10,
 * Ranges: 1, Share: 33%, Load: 12 ops/s, Disk free: 12MB of 16MB)`; a shard
 * whose full disk makes it refuse writes ends `Disk free: 0B of 16MB FULL:
 * writes refused until space is freed)`.
 */
export function formatServers(servers: ServerRow[], epoch: bigint): string[] {
  const up = servers.filter((s) => s.status === 'up').length;
  const unknown = servers.filter((s) => s.status === 'unknown').length;
  return [
    `Map epoch ${epoch}: ${servers.length} servers, ${up} up${unknown ? `, ${unknown} not heard from yet (the master started or took over moments ago)` : ''}`,
    ...servers.map(
      (s, i) =>
        `Server ${i} ${s.id} ${s.address} ${s.status} (Size: ${humanBytes(s.bytes)}, Rows: ${s.rows}, Ranges: ${s.ranges}${copiesNote(s)}, Share: ${percent(s.share)}, Load: ${Math.round(s.opsPerSec)} ops/s, Disk free: ${diskFree(s)}${s.diskFull ? ': writes refused until space is freed' : ''})`,
    ),
  ];
}

/** A shard's copies of other primaries' ranges, when it holds any ('' otherwise: the seed's line). */
function copiesNote(s: ServerRow): string {
  const parts = [];
  if (s.followers) parts.push(`following ${s.followers}`);
  if (s.learners) parts.push(`learning ${s.learners}`);
  return parts.length ? ` as primary, ${parts.join(', ')}` : '';
}

export function serversJson(servers: ServerRow[], epoch: bigint) {
  return {
    epoch: epoch.toString(),
    servers: servers.map((s) => ({
      id: s.id,
      address: s.address,
      status: s.status,
      bytes: s.bytes,
      rows: s.rows,
      ranges: s.ranges,
      share: s.share,
      opsPerSec: s.opsPerSec,
      lastHeartbeatMs: s.lastHeartbeatMs ?? 0,
      diskFreeBytes: s.diskFreeBytes ?? 0,
      diskTotalBytes: s.diskTotalBytes ?? 0,
      diskFull: s.diskFull ?? false,
      primaries: s.primaries ?? s.ranges,
      followers: s.followers ?? 0,
      learners: s.learners ?? 0,
    })),
  };
}

export function rangesJson(ranges: RangeRow[], epoch: bigint) {
  return {
    epoch: epoch.toString(),
    ranges: ranges.map((r) => ({
      start: r.start.toString(),
      end: r.end.toString(),
      shard: r.shard,
      address: r.address,
      bytes: r.bytes,
      rows: r.rows,
      primary: r.shard,
      replicas: r.replicas ?? [r.shard],
      inSync: r.inSync ?? [r.shard],
      learners: r.learners ?? [],
    })),
  };
}
