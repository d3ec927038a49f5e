/**
 * Whether this master process leads, and the Master that acts while it does
 * (docs/design.md "The control plane: embedded, or on etcd").
 *
 * - embedded: one master, always leading, under the fixed term "0".
 * - etcd: the process campaigns (etcd-leadership.ts); once it wins it opens a
 *   Master on the etcd state under that term, which loads the state and
 *   resumes every journaled move to committed or aborted, and pushes the map
 *   (so shards learn the new term). Until then it is a standby: its Master
 *   and Admin calls are answered NOT_LEADER naming the leader's address.
 *
 * A leader stops acting and becomes a standby again (the process goes on)
 * when its lease is lost, when etcd shows another term leading, or when a
 * write of its state fails (NOT_LEADER from the fenced transaction, or an
 * outcome etcd left unknown): it closes its Master, gives the lease up, and
 * campaigns again; a Master is opened afresh from etcd at each term. None of
 * these cues is the fence: a deposed leader that has not noticed yet still
 * cannot write (the transaction compares its term) nor act on shards (they
 * refuse a lower term).
 */
import { Etcd3, type IOptions } from 'etcd3';
import type { Logger } from 'winston';
import { CairnError } from '../common/errors.js';
import { Leadership } from './etcd-leadership.js';
import { EtcdStore } from './etcd-store.js';
import { EMBEDDED_TERM, Master, type MasterOptions } from './master.js';

export interface EtcdSettings {
  endpoints: string[];
  prefix: string;
  /** The lease's time to live: a dead leader is replaced about this long after its last keep-alive. */
  leaseSeconds: number;
  /** Past this an etcd call's outcome counts as unknown (default 5000 ms). */
  callTimeoutMs?: number;
  /** An unanswered write is settled within this, else the leader steps down with the outcome unknown (default 20000 ms). */
  settleTimeoutMs?: number;
  /** PEM contents for https endpoints. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
}

/** What this process is, for health, `ctl servers` and NOT_LEADER answers. */
export interface RoleStatus {
  leading: boolean;
  /** The leader's address, when known ('' when not). */
  leaderAddress: string;
  /** The term this process leads under ('' when it does not lead). */
  term: string;
  /** Why this process does not lead, or cannot change the map while it does; '' when all is well. */
  why: string;
}

export interface MasterRoleOptions {
  master: Omit<MasterOptions, 'openState' | 'term'>;
  /** Unset: the embedded store (one master). */
  etcd?: EtcdSettings;
  log: Logger;
  /** How often the leader checks etcd still shows its term, and a standby who leads (default 1000 ms). */
  checkMs?: number;
}

export class MasterRole {
  private leader: Master | undefined;
  private current: RoleStatus;
  private readonly listeners = new Set<(s: RoleStatus) => void>();
  private closed = false;
  private etcdClient: Etcd3 | undefined;
  private leadership: Leadership | undefined;
  private checkTimer: NodeJS.Timeout | undefined;
  private loop: Promise<void> = Promise.resolve();
  /** Resolves the wait of the term under way (stepDown). */
  private endTerm: (() => void) | undefined;
  private readonly abort = new AbortController();
  /** The address clients and shards dial, what a standby names as the leader: known once the server is bound (begin). */
  private address = '';

  private constructor(private readonly opts: MasterRoleOptions) {
    this.current = { leading: false, leaderAddress: '', term: '', why: 'starting' };
  }

  /** Embedded: opens the Master now (its errors are the caller's, before the server binds). etcd: nothing yet (begin). */
  static async open(opts: MasterRoleOptions): Promise<MasterRole> {
    const role = new MasterRole(opts);
    if (!opts.etcd) role.leader = await Master.open({ ...opts.master, term: EMBEDDED_TERM });
    return role;
  }

  /** Once the server is bound at `address`: embedded, it leads; etcd, it starts campaigning and is a standby until it wins. */
  begin(address: string): void {
    this.address = address;
    if (this.opts.etcd) this.startEtcd(this.opts.etcd);
    else this.setStatus({ leading: true, leaderAddress: address, term: EMBEDDED_TERM, why: '' });
  }

  get status(): RoleStatus {
    return this.current;
  }

  /** The address this master names itself by ('' before the server is bound). */
  get selfAddress(): string {
    return this.address;
  }

  /** The Master while this process leads; else NOT_LEADER naming the leader (clients follow it). */
  lead(): Master {
    const m = this.leader;
    if (m && !m.closed) return m;
    const s = this.current;
    const leader = s.leaderAddress && s.leaderAddress !== this.address ? s.leaderAddress : undefined;
    throw new CairnError('NOT_LEADER', `this master (${this.address}) does not lead${leader ? `; the leader is ${leader}` : ''}${s.why ? ` (${s.why})` : ''}`, {
      ...(leader ? { leaderAddress: leader } : {}),
      retryAfterMs: 500,
    });
  }

  /** The Master while this process leads, else undefined. */
  master(): Master | undefined {
    return this.leader && !this.leader.closed ? this.leader : undefined;
  }

  /** Calls `fn` with each new status (and once now); returns the unsubscribe function. */
  onStatus(fn: (s: RoleStatus) => void): () => void {
    this.listeners.add(fn);
    fn(this.current);
    return () => this.listeners.delete(fn);
  }

  private setStatus(next: RoleStatus): void {
    const was = this.current;
    this.current = next;
    if (JSON.stringify(was) === JSON.stringify(next)) return;
    if (was.leading !== next.leading || was.leaderAddress !== next.leaderAddress) {
      this.opts.log.warn(next.leading ? 'this master leads' : 'this master is a standby', { term: next.term, leader: next.leaderAddress, why: next.why });
    } else if (next.why && next.why !== was.why) {
      this.opts.log.warn('master status', { leading: next.leading, why: next.why });
    }
    for (const fn of this.listeners) fn(next);
  }

  private startEtcd(e: EtcdSettings): void {
    const options: IOptions = { hosts: e.endpoints, dialTimeout: 2000 };
    if (e.tls) options.credentials = { rootCertificate: e.tls.ca ?? Buffer.alloc(0), ...(e.tls.cert ? { certChain: e.tls.cert } : {}), ...(e.tls.key ? { privateKey: e.tls.key } : {}) } as IOptions['credentials'];
    this.etcdClient = new Etcd3(options);
    this.leadership = new Leadership(this.etcdClient, e.prefix, this.address, {
      ttlSeconds: e.leaseSeconds,
      retryMs: 250,
      onLeaseLost: (err) => void this.stepDown(`its etcd lease was lost (${err.message})`),
    });
    this.checkTimer = setInterval(() => void this.check(), this.opts.checkMs ?? 1000);
    this.checkTimer.unref();
    this.setStatus({ ...this.current, why: 'campaigning for leadership in etcd' });
    this.loop = this.campaignForever(e);
  }

  /** Campaign, lead until deposed, campaign again: until closed. */
  private async campaignForever(e: EtcdSettings): Promise<void> {
    const client = this.etcdClient!;
    const leadership = this.leadership!;
    while (!this.closed) {
      let term: string;
      try {
        term = await leadership.campaign(this.abort.signal);
      } catch (err) {
        if (this.closed) return;
        this.setStatus({ leading: false, leaderAddress: this.current.leaderAddress, term: '', why: `etcd does not answer: ${(err as Error).message}` });
        await sleep(1000);
        continue;
      }
      const ended = new Promise<void>((done) => (this.endTerm = done));
      try {
        const master = await Master.open({
          ...this.opts.master,
          clients: this.clientsNow(),
          term,
          // The term is fixed for this Master's life: a later term is another Master.
          openState: async () => new EtcdStore(client, e.prefix, { term: () => term, log: this.opts.log, callTimeoutMs: e.callTimeoutMs, settleTimeoutMs: e.settleTimeoutMs }),
          onFatal: (err) => void this.stepDown(`a write of the cluster state to etcd failed: ${err.message}`),
          // Sooner than the next check of etcd: the shard has already heard from a newer leader. Only while this term lasts.
          onStaleTerm: (why) => {
            if (this.leadership?.term === term) void this.stepDown(`a shard refused its call by term: ${why}`);
          },
        });
        if (this.closed || this.endTerm === undefined) {
          // Closed, or deposed (lease lost) while it was opening: it never acts.
          await master.close();
          if (this.closed) return;
          await sleep(1000);
          continue;
        }
        this.leader = master;
        this.setStatus({ leading: true, leaderAddress: this.address, term, why: '' });
        // Shards learn the new term from its first call: from then on they refuse the deposed leader's.
        void master.pushMapToAll();
      } catch (err) {
        this.opts.log.error('could not take office after winning the election; giving leadership up', { term, error: (err as Error).message });
        await this.stepDown(`taking office failed: ${(err as Error).message}`);
        await sleep(1000);
        continue;
      }
      await ended;
      // Let another master take over before this one campaigns again.
      await sleep(Math.min(1000, e.leaseSeconds * 200));
    }
  }

  /**
   * The leader: is its term still the one etcd shows? A standby: who leads?
   * etcd not answering is reported (health, ctl servers) but deposes no one:
   * the lease decides that, and the fence holds meanwhile.
   */
  private async check(): Promise<void> {
    const leadership = this.leadership;
    if (!leadership || this.closed) return;
    try {
      const now = await withTimeout(leadership.leader(), 2000);
      const term = this.current.term;
      if (this.leader && this.current.leading) {
        if (now?.term !== term) return void this.stepDown(now ? `${now.id} leads now, with term ${now.term}` : 'its leadership key is gone (lease expired)');
        if (this.current.why) this.setStatus({ ...this.current, why: '' });
      } else {
        this.setStatus({ leading: false, leaderAddress: now?.id ?? '', term: '', why: now ? `standby: ${now.id} leads with term ${now.term}` : 'standby: no master leads at the moment (an election is under way)' });
      }
    } catch (err) {
      const why = `etcd does not answer (${(err as Error).message}): the map cannot change until it does`;
      this.setStatus({ ...this.current, why });
    }
  }

  /**
   * The client list a master taking office applies: its config as it reads
   * now, not as it was when this process started, hours of reloads ago at
   * the leader (defect: a user removed through the leader came back at the
   * failover). Every master reads the same list (one config, as the server
   * credential). A config that does not read now refuses the office (the
   * why says so) rather than apply a stale list.
   */
  private clientsNow(): MasterOptions['clients'] {
    const reread = this.opts.master.reloadConfig;
    if (!reread) return this.opts.master.clients;
    try {
      return reread().clients;
    } catch (err) {
      throw new Error(`its config does not read, so its client list is unknown: ${(err as Error).message}`);
    }
  }

  /** Stops acting: closes the Master (its moves stop at their last journaled step), gives the lease up, campaigns again. */
  private async stepDown(why: string): Promise<void> {
    const m = this.leader;
    const end = this.endTerm;
    this.leader = undefined;
    this.endTerm = undefined;
    if (!m && !end) return;
    this.setStatus({ leading: false, leaderAddress: '', term: '', why: `stopped leading: ${why}` });
    if (m) {
      m.stopActing();
      await m.close().catch((err: Error) => this.opts.log.warn('closing the deposed master', { error: err.message }));
    }
    await withTimeout(this.leadership?.resign() ?? Promise.resolve(), 2000).catch(() => undefined);
    end?.();
  }

  /** Stops the failover pass (start of a shutdown). */
  stopActing(): void {
    this.leader?.stopActing();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.checkTimer);
    this.abort.abort();
    const m = this.leader;
    this.leader = undefined;
    this.endTerm?.();
    if (m) await m.close();
    await this.loop.catch(() => undefined);
    await withTimeout(this.leadership?.close() ?? Promise.resolve(), 2000).catch(() => undefined);
    this.etcdClient?.close();
  }
}

const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms).unref());

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}
