/**
 * The Admin calls a manager command makes, their answers as plain views
 * (numbers instead of the wire's bigint byte counts), and their
 * implementation on the SDK. `cairn ctl` and the console both run
 * operations through `OperationsApi` (cli/operations.ts); the console's tests
 * put a scripted one in its place.
 */
import type { MoveInfo, Plan } from '../proto/gen/cairn/v1/admin.js';
import type { CairnClient } from '../services/client/index.js';
import { endFromProto } from '../services/common/hash.js';

/** One move as the CLI shows it. */
export interface MoveView {
  id: string;
  operationId: string;
  from: string;
  to: string;
  /** planned, copying, catching_up, fenced, committed, cleaned or aborted. */
  state: string;
  bytes: number;
  copiedBytes: number;
  bytesPerSec: number;
  error?: string;
}

export interface PlanMoveView {
  start: bigint;
  end: bigint;
  from: string;
  to: string;
  bytes: number;
  rows: number;
}

export interface PlanView {
  moves: PlanMoveView[];
  movedBytes: number;
  totalBytes: number;
  minimumBytes: number;
  shards: Array<{ id: string; bytesBefore: number; bytesAfter: number; shareAfter: number }>;
}

export function moveView(m: MoveInfo): MoveView {
  return {
    id: m.id,
    operationId: m.operationId,
    from: m.from,
    to: m.to,
    state: m.state,
    bytes: Number(m.bytes),
    copiedBytes: Number(m.copiedBytes),
    bytesPerSec: m.bytesPerSec,
    error: m.error || undefined,
  };
}

export function planView(p: Plan | undefined): PlanView {
  const moves = (p?.moves ?? []).map((m) => ({ start: m.start, end: endFromProto(m.end), from: m.from, to: m.to, bytes: Number(m.bytes), rows: Number(m.rows) }));
  return {
    moves,
    movedBytes: Number(p?.movedBytes ?? 0n) || moves.reduce((n, m) => n + m.bytes, 0),
    totalBytes: Number(p?.totalBytes ?? 0n),
    minimumBytes: Number(p?.minimumBytes ?? 0n),
    shards: (p?.shards ?? []).map((s) => ({ id: s.shardId, bytesBefore: Number(s.bytesBefore), bytesAfter: Number(s.bytesAfter), shareAfter: s.shareAfter })),
  };
}

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

export interface Removed {
  shardId: string;
  stopped: boolean;
}

/** The calls of the manager commands. */
export interface OperationsApi {
  /** Dry run: the moves a rebalance, or the drain of `drain`, would make. */
  plan(drain?: string): Promise<PlanView>;
  /** Plans and starts; a retry under the same operation id gets the first answer. */
  start(kind: 'rebalance' | 'dropserver', o: { server?: string; maxMbps?: number; operationId?: string }): Promise<OperationStart>;
  /** Progress snapshots of an operation until every move has ended. */
  watch(operationId: string): AsyncIterable<OperationUpdate>;
  removeServer(server: string, o?: { operationId?: string }): Promise<Removed>;
  addServer(address: string): Promise<{ approvalRequired: boolean }>;
  recover(moveId: string): Promise<Recovered>;
}

/** OperationsApi on a CairnClient; `sdk()` is the client to call (subclasses may connect lazily). */
export class SdkOperations implements OperationsApi {
  constructor(private readonly given?: CairnClient) {}

  protected sdk(): CairnClient {
    return this.given!;
  }

  async plan(drain?: string): Promise<PlanView> {
    return planView((await this.sdk().admin((a) => a.planRebalance, { drain: drain ?? '' })).plan);
  }

  async start(kind: 'rebalance' | 'dropserver', o: { server?: string; maxMbps?: number; operationId?: string }): Promise<OperationStart> {
    const opts = { maxMbps: o.maxMbps ?? 0, operationId: o.operationId };
    const r = kind === 'rebalance' ? await this.sdk().startRebalance(opts) : await this.sdk().dropServer(o.server ?? '', opts);
    return { operationId: r.operationId, plan: planView(r.plan) };
  }

  async *watch(operationId: string): AsyncIterable<OperationUpdate> {
    for await (const snap of this.sdk().watchOperation(operationId)) yield { moves: snap.moves.map(moveView), done: snap.done };
  }

  async removeServer(server: string, o: { operationId?: string } = {}): Promise<Removed> {
    const r = await this.sdk().removeServer(server, { operationId: o.operationId });
    return { shardId: r.shardId, stopped: r.stopped };
  }

  async addServer(address: string): Promise<{ approvalRequired: boolean }> {
    return { approvalRequired: (await this.sdk().admin((a) => a.addServer, { address })).approvalRequired };
  }

  async recover(moveId: string): Promise<Recovered> {
    const r = await this.sdk().admin((a) => a.recoverMove, { moveId });
    const m = r.move!;
    return {
      move: { ...moveView(m), start: m.start, end: endFromProto(m.end), history: m.history.map((h) => ({ state: h.state, atMs: Number(h.atMs) })) },
      action: r.action,
    };
  }
}
