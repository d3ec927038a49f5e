/**
 * The master's durable state in etcd, under one key prefix, in the same
 * key/value form as the embedded store (meta-store.ts): `<prefix>/map`,
 * `<prefix>/shards`, `<prefix>/move/<id>`, … A write resolves once etcd's
 * quorum committed it.
 *
 * Every write is ONE etcd transaction that compares, besides writing:
 * - `createRevision(<prefix>/leader) == term`: only the leader that won this
 *   term may write; a deposed leader writes nothing, even before it knows it
 *   was deposed (PD's LeaderTxn). The refusal is CairnError NOT_LEADER.
 * - `modRevision(<prefix>/write-stamp) == the revision of this leader's last
 *   write`, putting a fresh stamp (`<term>/<random id>`) along. This chain is
 *   what makes an ambiguous write decidable: see `settle`.
 *
 * Writes are serialized (the chain needs each to start from the last), and a
 * multi-key save is one transaction, atomic like the LevelDB batch. etcd
 * bounds a transaction (by default 128 operations, 1.5 MiB), so one save must
 * stay within that.
 */
import { randomUUID } from 'node:crypto';
import {
  ClientClosedError,
  EtcdPermissionDeniedError,
  GRPCInvalidArgumentError,
  GRPCResourceExhastedError,
  GRPCUnauthenticatedError,
  type Etcd3,
  type IKeyValue,
  type IOperation,
  type ITxnResponse,
} from 'etcd3';
import { CairnError } from '../common/errors.js';
import type { AppliedClient, Revocation } from './client-list.js';
import { Serial } from './cluster-state.js';
import { AmbiguousWrite } from './coordinator.js';
import { leaderKey } from './etcd-leadership.js';
import type { AdminOpRecord, ClientState, MasterState, StateSave, StoredState } from './meta-store.js';
import * as form from './state-form.js';

export interface EtcdStoreOptions {
  /** The term writes are fenced with: the leadership key's create revision (Leadership.term); undefined while not leading. */
  term(): string | undefined;
  /** How long one etcd call may take before its outcome counts as unknown. */
  callTimeoutMs?: number;
  /** How long `settle` keeps asking before it gives up with AmbiguousWrite (the outcome stays unknown; default 20 s). */
  settleTimeoutMs?: number;
  /** Told about each ambiguous write and how it was settled. */
  log?: { warn(message: string, meta?: Record<string, unknown>): void };
}

/** How a write ended, as etcd's state says. */
export type WriteOutcome = 'landed' | 'not landed';

/** Errors after which etcd certainly applied nothing: the request was refused as such. Any other error leaves the outcome unknown. */
const DEFINITE_REFUSALS = [ClientClosedError, EtcdPermissionDeniedError, GRPCInvalidArgumentError, GRPCResourceExhastedError, GRPCUnauthenticatedError];
const isDefiniteRefusal = (err: unknown): boolean => DEFINITE_REFUSALS.some((c) => err instanceof c);

/** A write that did not land (a competing settle fenced it out) is retried this many times before the error reaches the caller. */
const WRITE_ATTEMPTS = 3;

export class EtcdStore implements MasterState {
  private readonly leaderKey: string;
  private readonly stampKey: string;
  private readonly serial = new Serial();
  /** The stamp's mod revision after this leader's last write, and the term it was read under. */
  private lastStampRevision = '0';
  private stampTerm: string | undefined;
  private closed = false;

  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    private readonly opts: EtcdStoreOptions,
  ) {
    this.leaderKey = leaderKey(prefix);
    this.stampKey = `${prefix}/write-stamp`;
  }

  private key(k: string): string {
    return `${this.prefix}/${k}`;
  }

  async load(): Promise<StoredState> {
    return form.decodeState(await this.readTogether(form.STATE_KEYS.map((k) => this.key(k))));
  }

  async save(state: StateSave): Promise<void> {
    await this.write(form.saveEntries(state));
  }

  async loadAdminOp(id: string): Promise<AdminOpRecord | undefined> {
    return form.decodeAdminOp((await this.readTogether([this.key(form.adminOpKey(id))]))[0]);
  }

  async saveMove(id: string, json: unknown): Promise<void> {
    await this.write([[form.moveKey(id), JSON.stringify(json)]]);
  }

  async loadMoves(): Promise<unknown[]> {
    const r = await this.client.getAll().prefix(this.key(form.MOVE_PREFIX)).sort('Key', 'Ascend').options(this.deadline()).exec();
    return r.kvs.map((kv) => JSON.parse(kv.value.toString()) as unknown);
  }

  async loadClientState(): Promise<ClientState> {
    return form.decodeClientState(await this.readTogether(form.CLIENT_KEYS.map((k) => this.key(k))));
  }

  async saveClientState(clients: AppliedClient[], revocations: Revocation[]): Promise<void> {
    await this.write(form.clientEntries(clients, revocations));
  }

  async loadApprovals(): Promise<string[]> {
    return form.decodeApprovals((await this.readTogether([this.key(form.APPROVALS_KEY)]))[0]);
  }

  async saveApprovals(addresses: string[]): Promise<void> {
    await this.write([[form.APPROVALS_KEY, JSON.stringify(addresses)]]);
  }

  /** Stops writing. The etcd client and the leadership belong to the caller. */
  async close(): Promise<void> {
    this.closed = true;
    await this.serial.run(async () => undefined);
  }

  /** The values of `keys` (undefined where absent) read at one revision. */
  private async readTogether(keys: string[]): Promise<Array<string | undefined>> {
    const r = await this.client.kv.txn({ compare: [], success: keys.map((k) => ({ request_range: { key: Buffer.from(k) } })), failure: [] }, this.deadline());
    return r.responses.map((op) => op.response_range?.kvs[0]?.value.toString());
  }

  /** One fenced transaction for `puts` (keys relative to the prefix), settled if its outcome is unknown, serialized after the last. */
  private write(entries: Array<[string, string]>): Promise<void> {
    // etcd refuses a transaction that names a key twice; a LevelDB batch keeps the last put, and so does this.
    const puts = [...new Map(entries)];
    return this.serial.run(async () => {
      for (let attempt = 1; ; attempt++) {
        if ((await this.writeOnce(puts)) === 'landed') return;
        if (attempt >= WRITE_ATTEMPTS) throw new CairnError('NOT_READY', `etcd did not take the write after ${attempt} attempts (none of them applied)`, { retryAfterMs: 1000 });
      }
    });
  }

  /** Sends the write once; when its answer is lost, settles what etcd did with it. */
  private async writeOnce(puts: Array<[string, string]>): Promise<WriteOutcome> {
    const term = await this.termForWriting();
    // The stamp names the term it was written under, so etcd's history shows which leader made each write.
    const writeId = stampOf(term);
    const txn = this.fencedTxn(term, writeId, puts.map(([k, v]) => this.client.put(this.key(k)).value(v)));
    try {
      return this.judge(await txn.commit(), term, writeId);
    } catch (err) {
      if (isDefiniteRefusal(err) || err instanceof CairnError) throw err;
      const outcome = await this.settle(term, writeId);
      this.opts.log?.warn('etcd write outcome was unknown; settled by reading etcd back', { writeId, outcome, cause: String(err) });
      return outcome;
    }
  }

  /** This leader's term, and the stamp revision its first write under that term starts the chain from. */
  private async termForWriting(): Promise<string> {
    if (this.closed) throw new CairnError('NOT_READY', 'the master state is closed');
    const term = this.opts.term();
    if (term === undefined) throw new CairnError('NOT_LEADER', 'this master does not lead: it writes nothing to the cluster state');
    if (this.stampTerm !== term) {
      // Once this term's leadership key exists, no earlier leader's write can land, so the stamp holds still but for this leader's writes.
      const r = await this.client.get(this.stampKey).options(this.deadline()).exec();
      this.lastStampRevision = r.kvs[0]?.mod_revision ?? '0';
      this.stampTerm = term;
    }
    return term;
  }

  /** The transaction: if this term still leads and the stamp is where this leader left it, apply `ops` and a new stamp; else read both. */
  fencedTxn(term: string, stamp: string, ops: IOperation[]) {
    return this.client
      .if(this.leaderKey, 'Create', '==', term)
      .and(this.stampKey, 'Mod', '==', this.lastStampRevision)
      .then(...ops, this.client.put(this.stampKey).value(stamp))
      .else(this.client.get(this.stampKey), this.client.get(this.leaderKey))
      .options(this.deadline());
  }

  /** One etcd call's deadline: past it, a write's outcome is unknown until settled. */
  private deadline(): { deadline: number } {
    return { deadline: Date.now() + (this.opts.callTimeoutMs ?? 5000) };
  }

  /**
   * Decides from a transaction's answer whether write `writeId` landed.
   * A failed compare is fencing (NOT_LEADER) unless the stamp shows the
   * write itself landed (the client resent it) or a settle fenced it out.
   */
  private judge(r: ITxnResponse, term: string, writeId: string): WriteOutcome {
    if (r.succeeded) {
      this.lastStampRevision = String(r.header.revision);
      return 'landed';
    }
    const [stamp, leader] = r.responses.map((op) => op.response_range?.kvs[0]) as [IKeyValue | undefined, IKeyValue | undefined];
    const stampValue = stamp?.value.toString();
    if (stamp && (stampValue === writeId || stampValue === settledStamp(writeId))) {
      this.lastStampRevision = stamp.mod_revision;
      return stampValue === writeId ? 'landed' : 'not landed';
    }
    if (leader?.create_revision !== term) {
      const now = leader ? `${leader.value.toString()} leads with term ${leader.create_revision}` : 'nobody leads';
      throw new CairnError('NOT_LEADER', `this master's term ${term} is over (${now}): the write was not applied`);
    }
    throw new CairnError('NOT_LEADER', `the cluster state was written by another writer under this master's term ${term}: the write was not applied`);
  }

  /**
   * Settles a write whose answer was lost: did etcd apply it? Reading alone
   * cannot say "no" for good, since the request may still be on its way and
   * apply after the read. So this moves the stamp on, with the same fence:
   * once that lands, the original's compare can never hold again, and it did
   * not land. If the stamp has moved already, it says what happened. Asks
   * again while etcd does not answer, until settleTimeoutMs; only then does
   * the outcome stay unknown (AmbiguousWrite), never guessed.
   */
  async settle(term: string, writeId: string): Promise<WriteOutcome> {
    const until = Date.now() + (this.opts.settleTimeoutMs ?? DEFAULT_SETTLE_TIMEOUT_MS);
    for (let pauseMs = 50; ; pauseMs = Math.min(pauseMs * 2, 1000)) {
      try {
        const r = await this.fencedTxn(term, settledStamp(writeId), []).commit();
        if (!r.succeeded) return this.judge(r, term, writeId);
        this.lastStampRevision = String(r.header.revision);
        return 'not landed';
      } catch (err) {
        if (err instanceof CairnError || isDefiniteRefusal(err)) throw err;
        if (Date.now() >= until) throw new AmbiguousWrite(`etcd did not answer for ${this.opts.settleTimeoutMs ?? DEFAULT_SETTLE_TIMEOUT_MS} ms: whether write ${writeId} was applied is unknown (${String(err)})`);
      }
      await new Promise((done) => setTimeout(done, pauseMs));
    }
  }
}

const settledStamp = (writeId: string): string => `settled ${writeId}`;

/** A fresh write stamp: `<term>/<random id>`. Any write under a term carries it in the stamp key's value, settles included. */
export const stampOf = (term: string): string => `${term}/${randomUUID()}`;

/** The term a stamp value (a write's, or a settle's) was written under. */
export const termOfStamp = (value: string): string => value.replace(/^settled /, '').split('/')[0]!;

const DEFAULT_SETTLE_TIMEOUT_MS = 20_000;
