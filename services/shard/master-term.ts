/**
 * The shard's side of fenced master calls: every call a master makes carries
 * the term it leads under (Claims.term: its leadership key's create revision
 * in etcd, "0" for an embedded master). The shard keeps the highest term it
 * has seen and refuses a lower one, so a deposed leader (paused past its
 * lease, say, and not yet aware) can change nothing here once a newer leader
 * has called. A call with no term is a peer shard's (transfers, replication).
 *
 * The highest term lives in memory: a restarted shard learns it again from
 * the first call of the leader (which pushes its map to every shard when it
 * takes office).
 */
import type { Claims } from '../common/auth.js';
import { CairnError } from '../common/errors.js';

export class MasterTermFence {
  private highest: bigint | undefined;

  constructor(private readonly log: { info(message: string, meta?: Record<string, unknown>): unknown }) {}

  /** The highest master term seen, as text; undefined before any master called. */
  get highestTerm(): string | undefined {
    return this.highest?.toString();
  }

  /** Throws PRECONDITION (FAILED_PRECONDITION, reason STALE_TERM) for a master's call under a lower term; records a higher one. */
  check(claims: Claims, method: string): void {
    if (claims.term === undefined) return;
    const term = BigInt(claims.term);
    if (this.highest !== undefined && term < this.highest) {
      // Rare (a deposed master not yet aware), and what an operator looks for after a failover.
      this.log.info('refused a call from a deposed master (STALE_TERM)', { method, term: term.toString(), highest: this.highest.toString(), master: claims.sub });
      throw new CairnError(
        'PRECONDITION',
        `refused ${method} from master ${claims.sub} under term ${term}: this shard has seen term ${this.highest}, so a newer master leads and the caller was deposed`,
        { reason: 'STALE_TERM' },
      );
    }
    if (this.highest === undefined || term > this.highest) {
      if (this.highest !== undefined) this.log.info('a master with a newer term called; calls under older terms are refused from now on', { term: term.toString(), previous: this.highest.toString(), master: claims.sub });
      this.highest = term;
    }
  }
}
