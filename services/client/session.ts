/**
 * The client's connection to the cluster and who it is there: the channels
 * (master, admin, one per shard) and the bearer token, with login, early
 * renewal and the one re-login a server's "token expired" earns.
 */
import type { Metadata } from '@grpc/grpc-js';
import { AdminServiceClient } from '../../proto/gen/cairn/v1/admin.js';
import { MasterServiceClient } from '../../proto/gen/cairn/v1/master.js';
import { ShardServiceClient } from '../../proto/gen/cairn/v1/shard.js';
import { CairnError, fromServiceError } from '../common/errors.js';
import { call, ClientPool, metadataFor } from '../common/grpc.js';
import { MasterAddresses } from '../common/masters.js';
import type { ConnectOptions } from './types.js';

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** How long before expiry a token is renewed: a fifth of its life, at most this. */
const RENEW_MARGIN_MS = 30_000;

/** The token a call can use as it stands, or STALE when one must be fetched first. */
export const STALE: unique symbol = Symbol('stale token');

/** The auth failures a fresh login fixes: an expired token, and one revoked because its user changed (the new token has the current role). */
export const isExpiry = (err: CairnError): boolean =>
  err.code === 'UNAUTHENTICATED' && (err.details.reason === 'TOKEN_EXPIRED' || err.details.reason === 'TOKEN_REVOKED');

export class Session {
  /** Every master the client was given; calls go to the one that leads (services/common/masters.ts). */
  readonly masters: MasterAddresses;
  private readonly masterClients: ClientPool<MasterServiceClient>;
  private readonly adminClients: ClientPool<AdminServiceClient>;
  private readonly shards: ClientPool<ShardServiceClient>;
  /** Default deadline of a call, retries included. */
  readonly timeoutMs: number;
  readonly maxMessageBytes: number;
  private readonly user: string | undefined;
  private readonly password: string | undefined;
  /** Set first by close(): every later call fails with CANCELLED, and the map watch does not reopen. */
  closed = false;

  /** The bearer token sent with every call (undefined without credentials). */
  token: string | undefined;
  private tokenExpiresAt = Infinity;
  private renewAt = Infinity;
  /** Set when a server said our token expired: log in again before the next call. */
  private tokenStale = false;
  private loggingIn: Promise<void> | undefined;
  /** Metadata for the current token, reused by every call (grpc-js clones it per call). */
  private mdToken: string | undefined | null = null;
  private md: Metadata | undefined;

  constructor(opts: ConnectOptions) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxMessageBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.user = opts.user;
    this.password = opts.password;
    this.token = opts.token;
    this.masters = new MasterAddresses(opts.master);
    this.masterClients = new ClientPool(MasterServiceClient, { tls: opts.tls, maxMessageBytes: this.maxMessageBytes });
    this.adminClients = new ClientPool(AdminServiceClient, { tls: opts.tls, maxMessageBytes: this.maxMessageBytes });
    this.shards = new ClientPool(ShardServiceClient, { tls: opts.tls, maxMessageBytes: this.maxMessageBytes });
  }

  /** The MasterService of the master that leads, as far as the client knows. */
  get master(): MasterServiceClient {
    return this.masterClients.get(this.masters.current);
  }

  /** The AdminService of the master that leads, as far as the client knows. */
  get admin(): AdminServiceClient {
    return this.adminClients.get(this.masters.current);
  }

  /** Runs one call to the master; when it fails, the next goes to the leader a standby named, or to the next master. */
  async toMaster<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      const err = fromServiceError(e);
      this.masters.follow(err);
      throw err;
    }
  }

  shard(address: string): ShardServiceClient {
    return this.shards.get(address);
  }

  /** Closes every channel; the caller sets `closed` (and stops the watch) first. */
  closeChannels(): void {
    this.shards.close();
    this.masterClients.close();
    this.adminClients.close();
  }

  /** The metadata carrying `token`, built once per token rather than once per call. */
  metadata(token: string | undefined): Metadata {
    if (token !== this.mdToken || !this.md) {
      this.md = metadataFor(token);
      this.mdToken = token;
    }
    return this.md;
  }

  get canLogin(): boolean {
    return this.user !== undefined && this.password !== undefined;
  }

  /** A server refused our token: the next call logs in first. */
  markStale(): void {
    this.tokenStale = true;
  }

  /** The current token when it can be sent as is; STALE when a login must come first. */
  readyToken(): string | undefined | typeof STALE {
    if (!this.canLogin) return this.token;
    if (this.token === undefined || this.tokenStale || Date.now() >= this.renewAt) return STALE;
    return this.token;
  }

  /** The token for the next call, logging in first when there is none yet or it is about to expire. */
  async authToken(deadline: number): Promise<string | undefined> {
    if (!this.canLogin) return this.token;
    const now = Date.now();
    if (this.token === undefined || this.tokenStale || now >= this.renewAt) {
      try {
        await this.login(deadline);
      } catch (err) {
        // An early renewal that fails is not fatal while the old token still works.
        if (this.token === undefined || this.tokenStale || now >= this.tokenExpiresAt) throw err;
        this.renewAt = now + 1000;
      }
    }
    return this.token;
  }

  /**
   * Runs fn with the current token; if a server answers that the token
   * expired (our clock and theirs may disagree), logs in and runs fn once more.
   */
  async withToken<T>(deadline: number, fn: (token: string | undefined) => Promise<T>): Promise<T> {
    try {
      return await fn(await this.authToken(deadline));
    } catch (e) {
      const err = fromServiceError(e);
      // Expiry or revocation (the cairn-error-reason trailer) are the auth failures a fresh login fixes; any other fails.
      if (!isExpiry(err) || !this.canLogin) throw err;
      this.tokenStale = true;
      return await fn(await this.authToken(deadline));
    }
  }

  /** MasterService.Login; concurrent callers share one login. */
  private login(deadline: number): Promise<void> {
    this.loggingIn ??= (async () => {
      try {
        const sent = Date.now();
        const res = await this.toMaster(() => call(this.master, this.master.login, { user: this.user!, password: this.password! }, { deadline }));
        const expires = Number(res.expiresAtMs);
        this.token = res.token;
        this.tokenExpiresAt = expires;
        this.renewAt = expires - Math.min(RENEW_MARGIN_MS, (expires - sent) / 5);
        this.tokenStale = false;
      } finally {
        this.loggingIn = undefined;
      }
    })();
    return this.loggingIn;
  }
}
