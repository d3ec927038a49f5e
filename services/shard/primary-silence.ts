/**
 * A follower's side of PacificA's failure detection (docs/design.md
 * "Replication and failover"): how long each primary this shard follows in
 * sync has been silent. A primary streams to each follower at least every
 * quarter of its lease, even with nothing to write; a follower that has heard
 * nothing from it for longer than the lease (the grace) says so in its
 * heartbeat, and when every in-sync follower that is up says so of a primary
 * the master still hears (the primary is cut off from its followers, not from
 * the master), the master promotes one of them. The primary itself has then
 * stopped serving: its lease ran out with no follower answering.
 *
 * Pure bookkeeping: the caller passes the clock.
 */
import { inSyncOf, type ClusterMap } from '../common/map.js';
import { rangeKey, type HashRange } from '../common/ranges.js';

interface Followed {
  range: HashRange;
  version: bigint;
  /** When the primary was last heard at this version (or when this shard began to follow it in sync). */
  heardAt: number;
}

export class PrimarySilence {
  private readonly followed = new Map<string, Followed>();

  constructor(readonly graceMs: number) {}

  /**
   * Each map this shard takes: the ranges it follows in sync, at their
   * versions. A new version (or a range newly followed) starts its silence at
   * `now`: the primary of that version has not had time to speak yet.
   */
  onMap(map: ClusterMap, me: string, now: number): void {
    const seen = new Set<string>();
    for (const r of map.ranges) {
      if (r.shardId === me || !inSyncOf(r).includes(me)) continue;
      const key = rangeKey(r);
      seen.add(key);
      const version = r.version ?? 0n;
      const known = this.followed.get(key);
      if (!known || known.version !== version) this.followed.set(key, { range: { start: r.start, end: r.end }, version, heardAt: now });
    }
    for (const key of [...this.followed.keys()]) if (!seen.has(key)) this.followed.delete(key);
  }

  /** A message from the range's primary at `version` (one this shard accepted as from its current primary). */
  heard(range: HashRange, version: bigint, now: number): void {
    const f = this.followed.get(rangeKey(range));
    if (f && f.version === version) f.heardAt = Math.max(f.heardAt, now);
  }

  /**
   * This process was not running for a while (paused, or starved): silence
   * measured across that stall says nothing about the primaries, so it
   * starts again.
   */
  resumed(now: number): void {
    for (const f of this.followed.values()) f.heardAt = Math.max(f.heardAt, now);
  }

  /** The ranges whose primary has been silent for longer than the grace, at the version followed. */
  unheard(now: number): Array<{ range: HashRange; version: bigint }> {
    return [...this.followed.values()].filter((f) => now - f.heardAt > this.graceMs).map((f) => ({ range: f.range, version: f.version }));
  }
}
