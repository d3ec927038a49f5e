/**
 * Who may call the master (docs/design.md "Security"): the client list in
 * force and its revocations (client-list.ts), login (password checks through
 * the LoginGate, logins.ts, then a token bound to the cluster), reload of the
 * list (SIGHUP, AdminService.Reload), and the checks every call's token gets
 * after its signature: a client token's cluster and revocation, a server
 * token's cluster.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'winston';
import { checkClientClaims, hashPasswordAsync, mintToken, verifyPasswordAsync, type Claims, type Role } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { applied, diffClients, revoke, revokedBefore, type ClientListChange, type Revocation } from './client-list.js';
import type { ClusterState } from './cluster-state.js';
import { LoginGate, type LoginCaller } from './logins.js';
import type { MasterState } from './meta-store.js';

export interface ClientUser {
  user: string;
  passwordHash: string;
  role: Exclude<Role, 'server'>;
}

export interface AccessOptions {
  tokenTtlSeconds: number;
  /**
   * Reads the client list again from where it came from (the config file,
   * flags and environment); throws with the config error. `restartNeeded`
   * names other keys that changed. Unset: reload is refused.
   */
  reloadConfig?: () => { clients: ClientUser[]; restartNeeded: string[] };
}

export class Access {
  /** Password checks: a few at a time off the event loop, and per-user and per-host failure limits (logins.ts). */
  private readonly logins = new LoginGate({}, Date.now, (l) =>
    this.log.warn(`login failure limit reached: logins ${l.kind === 'user' ? 'for this user' : 'from this host'} are refused until ${new Date(l.untilMs).toISOString()}`, l),
  );
  /** Users whose earlier tokens no longer hold (client-list.ts); shards get them with each heartbeat. */
  private revocations: Revocation[] = [];
  /** Set while a new client list is being saved: logins wait, so none mints a token under the old list after the revocation time. */
  private applyingClients: Promise<unknown> | undefined;
  /** Checked against for unknown users; hashed once per process, off the event loop, from the start. */
  private readonly dummyHash = dummyPasswordHash();

  constructor(
    private readonly state: ClusterState,
    private readonly store: MasterState,
    private readonly tokenKey: Buffer,
    /** The client list in force: from the config at start, replaced by reload(). */
    private clients: ClientUser[],
    private readonly opts: AccessOptions,
    private readonly log: Logger,
  ) {}

  /** Applies the configured list against the one last applied (it may have changed while the master was down). */
  async start(): Promise<void> {
    const { clients: before, revocations } = await this.store.loadClientState();
    this.revocations = revocations;
    await this.applyClientList(this.clients, before, 'start');
  }

  /**
   * Makes `next` the client list in force. Users removed, lowered, or given a
   * new password since `before` (the list last applied) have their tokens
   * revoked: the master refuses them at once, each shard at its next
   * heartbeat. Durable before it takes effect.
   */
  private async applyClientList(next: ClientUser[], before: ReturnType<typeof applied> | undefined, why: 'start' | 'reload'): Promise<ClientListChange> {
    const now = Date.now();
    const nextApplied = applied(next);
    const change = diffClients(before ?? nextApplied, nextApplied);
    const revocations = revoke(this.revocations, change.revoked, now, this.opts.tokenTtlSeconds * 1000);
    const saving = this.state.durably(`client list (${why})`, () => this.store.saveClientState(nextApplied, revocations));
    this.applyingClients = saving;
    try {
      await saving;
    } finally {
      this.applyingClients = undefined;
    }
    this.clients = next;
    this.revocations = revocations;
    const changed = Object.entries(change).filter(([k, v]) => k !== 'revoked' && v.length);
    if (changed.length || why === 'reload') {
      this.log.info(`client list ${why === 'start' ? 'changed while the master was down' : 'reloaded'}`, { users: next.length, ...Object.fromEntries(changed), revoked: change.revoked });
    }
    return change;
  }

  /**
   * Reads the client list again (SIGHUP, AdminService.Reload) and applies it.
   * A config error changes nothing and is returned as FAILED_PRECONDITION
   * naming the key.
   */
  reload(): Promise<{ change: ClientListChange; users: number; restartNeeded: string[] }> {
    return this.state.serial.run(async () => {
      this.state.checkNotHalted();
      if (!this.opts.reloadConfig) throw new CairnError('PRECONDITION', 'this master was not started from a config it can read again; restart it to change its client list');
      let loaded: { clients: ClientUser[]; restartNeeded: string[] };
      try {
        loaded = this.opts.reloadConfig();
      } catch (err) {
        throw new CairnError('PRECONDITION', `reload refused, nothing changed: ${(err as Error).message}`);
      }
      const change = await this.applyClientList(loaded.clients, applied(this.clients), 'reload');
      if (loaded.restartNeeded.length) this.log.warn('reload: these keys changed and take effect only at a restart', { keys: loaded.restartNeeded });
      return { change, users: loaded.clients.length, restartNeeded: loaded.restartNeeded };
    });
  }

  /**
   * Checks every call made with a server token (HandlerEnv.checkServerCall).
   * A shard of another cluster, say after this master was started on the
   * wrong state, must hear "another cluster" on every call: never
   * "superseded" on a heartbeat because a new shard took its id here (it
   * would stop), nor "unknown move" on GetMoveStatus (it would lift a fence
   * its own master may have committed). RegisterShard is judged by
   * admission(), which says more. An empty id is a shard not yet in a cluster.
   */
  checkServerCall(claims: Claims, method: string): void {
    const ours = this.state.clusterId;
    const theirs = claims.cid ?? '';
    if (method === 'RegisterShard' || !theirs || theirs === ours) return;
    throw new CairnError('PRECONDITION', `refused ${method} from a process of cluster ${theirs} (${claims.sub}): this master's cluster is ${ours || '(none: it has no state)'}`, {
      reason: 'CLUSTER_MISMATCH',
    });
  }

  /** Checks a client token's cluster and revocation (HandlerEnv.checkClientCall). */
  checkClientCall(claims: Claims): void {
    checkClientClaims(claims, { clusterId: this.state.clusterId, revokedBefore: (u) => revokedBefore(this.revocations, u) });
  }

  /** The revocations in force, for the shards (heartbeat and register answers). */
  tokenRevocations(): Array<{ user: string; notBeforeMs: number }> {
    return this.revocations.map((r) => ({ user: r.user, notBeforeMs: r.notBeforeMs }));
  }

  /**
   * Checks a password and mints a token. The scrypt check runs on the libuv
   * pool, a few at a time, and not at all for a user name or host over its
   * failure limit (LIMIT_EXCEEDED) or while too many wait (NOT_READY): see
   * logins.ts. `from` is the caller (its host, deadline, whether it left).
   */
  async login(user: string, password: string, from: LoginCaller = { peer: 'local' }): Promise<{ token: string; expiresAtMs: number; role: string }> {
    const u = this.clients.find((c) => c.user === user);
    // Verify even for unknown users (against a dummy hash) so timing does not reveal which users exist.
    const ok = await this.logins.attempt({ ...from, user }, async () => (await verifyPasswordAsync(password, u?.passwordHash ?? (await this.dummyHash))) && !!u);
    if (!ok || !u) throw new CairnError('UNAUTHENTICATED', 'login failed: unknown user or wrong password');
    // A reload during the check may have removed or changed the user: mint only what the list in force allows.
    while (this.applyingClients) await this.applyingClients.catch(() => undefined);
    const current = this.clients.find((c) => c.user === user);
    if (!current || current.passwordHash !== u.passwordHash) throw new CairnError('UNAUTHENTICATED', 'login failed: unknown user or wrong password');
    // Bound to the cluster: another cluster sharing the server credential refuses it (auth.ts checkClientClaims).
    const { token, expiresAtMs } = mintToken(this.tokenKey, current.user, current.role, this.opts.tokenTtlSeconds * 1000, Date.now(), this.state.clusterId);
    return { token, expiresAtMs, role: current.role };
  }
}

// A hash of a random password, so a login for an unknown user costs the same as a wrong password (made once, off the event loop).
let dummyHash: Promise<string> | undefined;
const dummyPasswordHash = (): Promise<string> => {
  if (!dummyHash) {
    dummyHash = hashPasswordAsync(randomBytes(16).toString('hex'));
    dummyHash.catch(() => undefined); // a failure reaches the login that awaits it, never the process
  }
  return dummyHash;
};
