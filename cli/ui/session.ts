/**
 * The console's service layer: the Admin calls it makes, behind an interface
 * (`AdminApi`) that hooks depend on and tests replace with a fake. The real
 * one wraps the SDK's CairnClient, as `cairn ctl` does, and turns errors into
 * one readable line (`describeError`), never a stack.
 */
import { CairnClient } from '../../services/client/index.js';
import { CairnError } from '../../services/common/errors.js';
import type { ClientTls } from '../../services/common/grpc.js';
import { endFromProto } from '../../services/common/hash.js';
import { asCliError } from '../ctl.js';
import { moveView, planView, type MoveView, type PlanView, type Snapshot } from './model.js';

export interface OperationStart {
  /** Empty when there was nothing to move. */
  operationId: string;
  plan: PlanView;
}

export interface OperationUpdate {
  moves: MoveView[];
  done: boolean;
}

export interface Recovered {
  move: MoveView & { start: bigint; end: bigint; history: Array<{ state: string; atMs: number }> };
  action: string;
}

export interface AdminApi {
  readonly master: string;
  readonly user: string;
  /** Logs in and fetches the map; throws on a wrong password or an unreachable master. */
  connect(password: string): Promise<void>;
  readonly connected: boolean;
  snapshot(): Promise<Snapshot>;
  plan(drain?: string): Promise<PlanView>;
  start(kind: 'rebalance' | 'dropserver', opts: { server?: string; maxMbps?: number }): Promise<OperationStart>;
  /** Progress snapshots of an operation until every move has ended. */
  watch(operationId: string): AsyncIterable<OperationUpdate>;
  moves(all: boolean): Promise<MoveView[]>;
  removeServer(server: string): Promise<{ shardId: string; stopped: boolean }>;
  addServer(address: string): Promise<{ approvalRequired: boolean }>;
  sync(): Promise<{ epoch: bigint; synced: number; failed: Array<{ shardId: string; error: string }> }>;
  recover(moveId: string): Promise<Recovered>;
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

export class ClientAdminApi implements AdminApi {
  private client: CairnClient | undefined;

  constructor(private readonly opts: { master: string; user: string; timeoutMs?: number; tls?: ClientTls }) {}

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
    this.client = await CairnClient.connect({ master: this.opts.master, user: this.opts.user, password, timeoutMs: this.opts.timeoutMs, tls: this.opts.tls });
  }

  private get c(): CairnClient {
    if (!this.client) throw new CairnError('NOT_READY', `not connected to the master at ${this.opts.master}`);
    return this.client;
  }

  async snapshot(): Promise<Snapshot> {
    const c = this.c;
    const [servers, ranges, moves] = await Promise.all([c.listServers(), c.getRanges(), c.admin((a) => a.listMoves, { all: false })]);
    return {
      epoch: moves.header?.epoch ?? c.map.epoch,
      servers,
      ranges: ranges.map((r) => ({ ...r, shard: r.shardId })),
      moves: moves.moves.map(moveView),
      at: Date.now(),
    };
  }

  async plan(drain?: string): Promise<PlanView> {
    return planView((await this.c.admin((a) => a.planRebalance, { drain: drain ?? '' })).plan);
  }

  async start(kind: 'rebalance' | 'dropserver', o: { server?: string; maxMbps?: number }): Promise<OperationStart> {
    const maxMbps = o.maxMbps ?? 0;
    const r =
      kind === 'rebalance'
        ? await this.c.startRebalance({ maxMbps })
        : await this.c.dropServer(o.server ?? '', { maxMbps });
    return { operationId: r.operationId, plan: planView(r.plan) };
  }

  async *watch(operationId: string): AsyncIterable<OperationUpdate> {
    for await (const snap of this.c.watchOperation(operationId)) yield { moves: snap.moves.map(moveView), done: snap.done };
  }

  async moves(all: boolean): Promise<MoveView[]> {
    return (await this.c.admin((a) => a.listMoves, { all })).moves.map(moveView);
  }

  async removeServer(server: string): Promise<{ shardId: string; stopped: boolean }> {
    const r = await this.c.removeServer(server);
    return { shardId: r.shardId, stopped: r.stopped };
  }

  async addServer(address: string): Promise<{ approvalRequired: boolean }> {
    return { approvalRequired: (await this.c.admin((a) => a.addServer, { address })).approvalRequired };
  }

  async sync(): Promise<{ epoch: bigint; synced: number; failed: Array<{ shardId: string; error: string }> }> {
    const r = await this.c.admin((a) => a.syncMap, {});
    return { epoch: r.header?.epoch ?? 0n, synced: r.synced, failed: r.failed.map((f) => ({ shardId: f.shardId, error: f.error })) };
  }

  async recover(moveId: string): Promise<Recovered> {
    const r = await this.c.admin((a) => a.recoverMove, { moveId });
    const m = r.move!;
    return {
      move: { ...moveView(m), start: m.start, end: endFromProto(m.end), history: m.history.map((h) => ({ state: h.state, atMs: Number(h.atMs) })) },
      action: r.action,
    };
  }

  close(): void {
    this.client?.close();
    this.client = undefined;
  }
}
