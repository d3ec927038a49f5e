/**
 * The console's service layer: the Admin calls it makes, behind an interface
 * (`AdminApi`) that hooks depend on and tests replace with a fake. The real
 * one wraps the SDK's CairnClient, as `cairn ctl` does, and turns errors into
 * one readable line (`describeError`), never a stack.
 */
import { CairnClient } from '../../services/client/index.js';
import { CairnError } from '../../services/common/errors.js';
import type { ClientTls } from '../../services/common/grpc.js';
import { factorOf } from '../../services/common/map.js';
import { asCliError } from '../ctl.js';
import { FollowLostError, TEXT } from '../operations.js';
import { moveView, SdkOperations, type MoveView, type OperationsApi } from '../operations-api.js';
import type { Snapshot } from './model.js';

export type { OperationStart, OperationUpdate, Recovered } from '../operations-api.js';

/** The operations (cli/operations-api.ts), and what the console needs besides: logging in and the dashboard's reads. */
export interface AdminApi extends OperationsApi {
  readonly master: string;
  readonly user: string;
  /** Logs in and fetches the map; throws on a wrong password or an unreachable master. */
  connect(password: string): Promise<void>;
  readonly connected: boolean;
  snapshot(): Promise<Snapshot>;
  moves(all: boolean): Promise<MoveView[]>;
  sync(): Promise<{ epoch: bigint; synced: number; failed: Array<{ shardId: string; error: string }> }>;
  close(): void;
}

export interface ErrorDescription {
  /** One line: what went wrong, and a hint when there is one. */
  line: string;
  /** A wrong user or password: the console asks for the password again. */
  auth: boolean;
}

const oneLine = (s: string): string => s.replace(/\s+/g, ' ').trim();

/** The one line the console shows for an error (the CLI's own hints, via ctl's asCliError). */
export function describeError(err: unknown, master?: string): ErrorDescription {
  if (err instanceof FollowLostError) {
    const d = describeError(err.cause, master);
    return { ...d, line: `${d.line} ${TEXT.followLost}` };
  }
  const auth = err instanceof CairnError && err.code === 'UNAUTHENTICATED';
  let message = (err as Error)?.message ?? String(err);
  if (err instanceof CairnError && (err.code === 'NOT_READY' || err.code === 'DEADLINE_EXCEEDED')) {
    // grpc-js says "No connection established. Last error: Error: connect ECONNREFUSED …": keep the cause.
    const cause = /connect E[A-Z]+(?: \S+)?/.exec(message);
    if (cause && master) message = `cannot reach the master at ${master} (${cause[0].replace(/\.$/, '')})`;
  }
  const e = asCliError(err instanceof CairnError ? new CairnError(err.code, message, err.details) : err, master);
  return { line: oneLine(e.hint ? `${e.message}; hint: ${e.hint}` : e.message), auth };
}

export class ClientAdminApi extends SdkOperations implements AdminApi {
  private client: CairnClient | undefined;

  constructor(private readonly opts: { master: string; user: string; timeoutMs?: number; tls?: ClientTls }) {
    super();
  }

  get master(): string {
    return this.opts.master;
  }

  get user(): string {
    return this.opts.user;
  }

  get connected(): boolean {
    return this.client !== undefined;
  }

  async connect(password: string): Promise<void> {
    this.client?.close();
    this.client = undefined;
    // watch: the dashboard reads the replication factor from the client's map, and the factor may change while the console runs.
    this.client = await CairnClient.connect({ master: this.opts.master, user: this.opts.user, password, timeoutMs: this.opts.timeoutMs, tls: this.opts.tls, watch: true });
  }

  protected override sdk(): CairnClient {
    if (!this.client) throw new CairnError('NOT_READY', `not connected to the master at ${this.opts.master}`);
    return this.client;
  }

  async snapshot(): Promise<Snapshot> {
    const c = this.sdk();
    const [servers, ranges, moves] = await Promise.all([c.listServers(), c.getRanges(), c.admin((a) => a.listMoves, { all: false })]);
    return {
      epoch: moves.header?.epoch ?? c.map.epoch,
      servers,
      ranges: ranges.map((r) => ({ ...r, shard: r.shardId })),
      moves: moves.moves.map(moveView),
      at: Date.now(),
      // From the client's map, kept current by WatchMap: GetRanges does not carry the factor.
      replicationFactor: c.map.epoch > 0n ? factorOf(c.map) : undefined,
    };
  }

  async moves(all: boolean): Promise<MoveView[]> {
    return (await this.sdk().admin((a) => a.listMoves, { all })).moves.map(moveView);
  }

  async sync(): Promise<{ epoch: bigint; synced: number; failed: Array<{ shardId: string; error: string }> }> {
    const r = await this.sdk().admin((a) => a.syncMap, {});
    return { epoch: r.header?.epoch ?? 0n, synced: r.synced, failed: r.failed.map((f) => ({ shardId: f.shardId, error: f.error })) };
  }

  close(): void {
    this.client?.close();
    this.client = undefined;
  }
}
