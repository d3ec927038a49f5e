/**
 * Which master leads, decided by etcd: a master leads while its leadership
 * key `<prefix>/leader` exists, created by it, on a lease it keeps alive.
 * Its term is that key's create revision: every later leader's key is created
 * later, so terms only grow, and a term once lost never comes back.
 *
 * Nothing here is a fence by itself. A master that believes it leads may have
 * been deposed a moment ago (its lease expired while it was paused, say); the
 * fence is in etcd: every write compares `createRevision(<prefix>/leader) ==
 * term` in the same transaction (etcd-store.ts, PD's LeaderTxn). So the
 * library's Election and its "elected"/"lost" events are not used: they tell
 * a master what was true, not what etcd will accept.
 */
import type { Etcd3, Lease } from 'etcd3';

export const leaderKey = (prefix: string): string => `${prefix}/leader`;

export interface LeadershipOptions {
  /** The lease's time to live: how long a silent leader keeps the key. */
  ttlSeconds?: number;
  /** Pause between attempts while another master holds the key. */
  retryMs?: number;
  /**
   * Told when the client gives the current lease up for lost (keep-alives
   * failed for its whole time to live, or etcd says it is gone). Only a cue
   * to stop acting early: the fence is still the transaction's compare.
   */
  onLeaseLost?: (err: Error) => void;
}

export class Leadership {
  readonly key: string;
  private lease: Lease | undefined;
  private leaseLost = false;
  private currentTerm: string | undefined;
  private closed = false;

  constructor(
    private readonly client: Etcd3,
    prefix: string,
    /** This master's name, stored as the key's value so others can tell who leads. */
    readonly id: string,
    private readonly opts: LeadershipOptions = {},
  ) {
    this.key = leaderKey(prefix);
  }

  /**
   * The term this master last won: the revision its writes compare against.
   * Undefined before it wins. Kept after the lease is lost: the writes then
   * fail in etcd, which is the only place that knows for sure.
   */
  get term(): string | undefined {
    return this.currentTerm;
  }

  /**
   * Campaigns until this master creates the leadership key; returns its term.
   * Put-if-absent: the key is created only when its create revision is 0
   * (it does not exist), on this master's lease, in one transaction.
   */
  async campaign(signal?: AbortSignal): Promise<string> {
    for (;;) {
      if (this.closed) throw new Error('leadership closed');
      signal?.throwIfAborted();
      const leaseId = await this.liveLease();
      const r = await this.client
        .if(this.key, 'Create', '==', 0)
        .then(this.client.put(this.key).value(this.id).lease(leaseId))
        .else(this.client.get(this.key))
        .commit();
      // The put made this revision, so it is the key's create revision.
      if (r.succeeded) return (this.currentTerm = String(r.header.revision));
      // On this master's own lease, the key is its own: an earlier attempt whose answer was lost (the client resends), or a second call.
      const held = r.responses[0]?.response_range?.kvs[0];
      if (held && String(held.lease) === leaseId) return (this.currentTerm = String(held.create_revision));
      await new Promise((done) => setTimeout(done, this.opts.retryMs ?? 500));
    }
  }

  /** Who leads now, as etcd says: the key's value and create revision, or undefined. */
  async leader(): Promise<{ id: string; term: string } | undefined> {
    const r = await this.client.get(this.key).exec();
    const kv = r.kvs[0];
    return kv ? { id: kv.value.toString(), term: String(kv.create_revision) } : undefined;
  }

  /** Gives leadership up at once: revoking the lease deletes the key, and any write under this term fails from then on. */
  async resign(): Promise<void> {
    const lease = this.lease;
    this.lease = undefined;
    this.currentTerm = undefined;
    if (lease && !lease.revoked()) await lease.revoke();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.resign().catch(() => undefined);
  }

  /** A granted lease kept alive by the client; a new one when the last was lost (expired or revoked in etcd). */
  private async liveLease(): Promise<string> {
    if (this.lease && (this.leaseLost || this.lease.revoked())) {
      this.lease.release();
      this.lease = undefined;
    }
    if (!this.lease) {
      const lease = this.client.lease(this.opts.ttlSeconds ?? 5);
      this.leaseLost = false;
      lease.on('lost', (err: Error) => {
        if (this.lease !== lease) return;
        this.leaseLost = true;
        this.opts.onLeaseLost?.(err);
      });
      this.lease = lease;
    }
    return this.lease.grant();
  }
}
