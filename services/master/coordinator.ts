/**
 * The move coordinator: runs the moves of a rebalance or drain by driving the
 * steps declared in move-steps.ts (docs/design.md "Moving data"). Every change
 * of a move's state goes through `step`, which journals it (synced) before the
 * coordinator takes it in memory or acts on it; `stepsOn` says which states an
 * event leads to. The shard RPCs it makes are in move-calls.ts.
 *
 * - Before the commit, any failure aborts: the source lifts its fence
 *   (AbortMove) and the destination drops what it received (DropRange).
 * - The commit is one synced batch on the master: the new map (epoch + 1, the
 *   range owned by the destination) together with the move's `committed`.
 * - After the commit a move only finishes: the map is pushed until the source
 *   has taken it (the source then drops its copy and its fence).
 * - A restarted master resumes every journaled move to one of those ends.
 * - A master that stops (`close`) abandons the moves still running: their
 *   pulls are cancelled and nothing more is journaled, so each move stays at
 *   its last complete step and the restarted master carries it on from there.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'winston';
import { TransferPhase, type ShardControlServiceClient } from '../../proto/gen/cairn/v1/control.js';
import { CairnError, fromServiceError } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import type { ClientPool } from '../common/grpc.js';
import type { ServerTokenSource } from '../common/auth.js';
import { MoveCalls } from './move-calls.js';
import { cleanupRetryDelayMs, fenceReadyBoundMs, pullDeadline, RETRY_INTERVAL_MS, stepsOn, type MoveEvent } from './move-steps.js';
import { copiedFraction, isTerminal, RateWindow, moveFromJson, moveToJson, newMove, resumeAction, transition, withProgress, type Move, type MoveState } from './moves.js';
import type { Plan } from './planner.js';


/**
 * A durable write whose outcome is unknown: it failed, but it may have reached
 * the disk (an fsync error after the write). A move whose commit ends so is
 * never aborted: aborting would lift the source's fence and drop the
 * destination's copy while the durable map may already name the destination.
 * The master stops instead, and its restart reads what is really there.
 */
export class AmbiguousWrite extends CairnError {
  constructor(message: string) {
    super('NOT_READY', message, { retryAfterMs: 1000 });
    this.name = 'AmbiguousWrite';
  }
}

/** What the coordinator needs from the master. */
export interface CoordinatorHost {
  log: Logger;
  addressOf(shardId: string): string | undefined;
  /** The durable commit: map with the range reassigned + the move record, in one synced batch. */
  commitMove(move: Move, journal: unknown): Promise<void>;
  /** Pushes the current map to one shard; resolves true when it took it. */
  pushMapTo(shardId: string): Promise<boolean>;
  saveMove(id: string, journal: unknown): Promise<void>;
  epoch(): bigint;
}

export interface MoveProgress {
  /** How much of the planned bytes has been copied (bytes × fraction of the snapshot's rows received). */
  copiedBytes: number;
  /** Raw bytes received by the destination so far, log and request-id records included. */
  transferredBytes?: number;
  bytesPerSec: number;
  fenceStartedAt?: number;
  fenceMs: number;
  startedAt: number;
}

export interface Operation {
  id: string;
  kind: 'rebalance' | 'drain';
  moveIds: string[];
  done: Promise<void>;
  finished: boolean;
}

interface Journaled {
  move: unknown;
  operationId: string;
  /** Absent in journals written before operations were rebuilt from them. */
  kind?: Operation['kind'];
  /** For aborted moves: the shards have been told (fence lifted, copy dropped). */
  cleanupDone?: boolean;
  fenceMs?: number;
}

/** A journaled move as the coordinator holds it in memory: what its journal record says, plus the cleanup's backoff. */
interface MoveRecord {
  move: Move;
  operationId: string;
  kind: Operation['kind'];
  cleanupDone: boolean;
  cleanupFailures?: number;
  nextCleanupAt?: number;
}

export class MoveCoordinator {
  /** Moves as journaled: changed only after the journal write (`step`, `saveCleanupDone`). */
  private readonly moves = new Map<string, MoveRecord>();
  /** Moves of a starting operation not journaled yet: shown (WatchOperation), never acted on. */
  private readonly planned = new Map<string, Move>();
  private readonly progress = new Map<string, MoveProgress>();
  private readonly operations = new Map<string, Operation>();
  private readonly running = new Map<string, Promise<Move>>();
  private readonly finishing = new Map<string, Promise<Move>>();
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Pull streams open now; cancelled when the master stops. */
  private readonly streams = new Set<{ cancel(): void }>();
  /** Resumes and cleanup retries running now; awaited when the master stops. */
  private readonly background = new Set<Promise<unknown>>();

  private readonly calls: MoveCalls;

  constructor(
    private readonly host: CoordinatorHost,
    shards: ClientPool<ShardControlServiceClient>,
    token: ServerTokenSource,
    private readonly opts: { maxConcurrentMoves: number; moveMaxMbps: number },
  ) {
    this.calls = new MoveCalls(shards, token, (id) => host.addressOf(id));
  }

  private get log(): Logger {
    return this.host.log;
  }

  /** Loads the journal and carries every unfinished move to its end. */
  async resume(journal: unknown[]): Promise<void> {
    for (const j of journal as Journaled[]) {
      const move = moveFromJson(j.move as never);
      this.moves.set(move.id, { move, operationId: j.operationId, kind: j.kind ?? 'rebalance', cleanupDone: j.cleanupDone ?? isTerminal(move.state) });
      if (j.fenceMs) this.progress.set(move.id, { copiedBytes: move.copiedBytes, bytesPerSec: 0, fenceMs: j.fenceMs, startedAt: 0 });
    }
    const pending = [...this.moves.values()].filter((m) => resumeAction(m.move.state) !== 'none' || !m.cleanupDone);
    if (pending.length) this.log.info('resuming moves from the journal', { moves: pending.map((m) => `${m.move.id}:${m.move.state}`) });
    const resumed = new Map<string, Promise<unknown>>();
    for (const m of pending) {
      const p = this.recover(m.move.id).catch((err) => this.log.warn('resume failed; will retry', { moveId: m.move.id, error: (err as Error).message }));
      resumed.set(m.move.id, p);
      this.track(p);
    }
    // Operations come back from their moves' journal records, so a restarted master can still be watched
    // (WatchOperation) and a retried start with the same operation id finds the first one.
    const byOp = new Map<string, { kind: Operation['kind']; moveIds: string[] }>();
    for (const m of this.moves.values()) {
      const op = byOp.get(m.operationId) ?? { kind: m.kind, moveIds: [] };
      op.moveIds.push(m.move.id);
      byOp.set(m.operationId, op);
    }
    for (const [id, o] of byOp) {
      const waits = o.moveIds.map((mid) => resumed.get(mid)).filter((p): p is Promise<unknown> => !!p);
      const op: Operation = { id, kind: o.kind, moveIds: o.moveIds, finished: waits.length === 0, done: Promise.resolve() };
      op.done = Promise.allSettled(waits).then(() => void (op.finished = true));
      this.operations.set(id, op);
    }
    this.retryTimer = setInterval(() => this.track(this.retryCleanups()), RETRY_INTERVAL_MS);
    this.retryTimer.unref();
  }

  /** The journal record of a move as it will be once `move` and `cleanupDone` are taken. */
  private journal(rec: Pick<MoveRecord, 'operationId' | 'kind'>, move: Move, cleanupDone: boolean): Journaled {
    return { move: moveToJson(move), operationId: rec.operationId, kind: rec.kind, cleanupDone, fenceMs: this.progress.get(move.id)?.fenceMs };
  }

  private track(p: Promise<unknown>): void {
    const t = p.catch(() => undefined);
    this.background.add(t);
    void t.finally(() => this.background.delete(t));
  }

  /**
   * Enters the next step: the new state is journaled (synced) first, and only
   * then taken in memory and returned for the caller to act on. `committed` is
   * journaled together with the new map, in one batch (host.commitMove): if
   * that write fails, nothing changed. Refused, with nothing written, once the
   * master is stopping. `cleanupDone` is journaled with the state (cleaned).
   */
  private async step(id: string, to: MoveState, error?: string, cleanupDone?: boolean): Promise<Move> {
    if (this.closed) throw new CairnError('NOT_READY', `move ${id}: the master is stopping; the move stays at its last journaled step`);
    const rec = this.moves.get(id)!;
    const next = transition(rec.move, to, Date.now(), error || undefined);
    const done = cleanupDone ?? rec.cleanupDone;
    if (to === 'committed') await this.host.commitMove(next, this.journal(rec, next, done));
    else await this.host.saveMove(id, this.journal(rec, next, done));
    rec.move = next;
    rec.cleanupDone = done;
    return next;
  }

  /** Drives a move on an event: enters, in order, each step it leads to (stepsOn). */
  private async drive(id: string, event: MoveEvent, error?: string, cleanupDone?: boolean): Promise<Move> {
    let move = this.moves.get(id)!.move;
    for (const to of stepsOn(move.state, event)) move = await this.step(id, to, error, cleanupDone);
    return move;
  }

  /** Journals that an aborted move's shards were told (fence lifted, copy dropped), then takes it in memory. */
  private async saveCleanupDone(id: string): Promise<void> {
    const rec = this.moves.get(id)!;
    await this.host.saveMove(id, this.journal(rec, rec.move, true));
    rec.cleanupDone = true;
    rec.cleanupFailures = 0;
  }

  busy(): boolean {
    return [...this.operations.values()].some((o) => !o.finished);
  }

  /**
   * Starts the plan's moves, at most maxConcurrentMoves at once; returns at
   * once. `operationId` is the caller's (so its retry finds this operation),
   * or one is made.
   */
  start(plan: Plan, kind: Operation['kind'], maxMbps: number, operationId?: string): Operation {
    if (this.busy()) throw new CairnError('CONFLICT', 'another rebalance or drain is still running; watch it with `cairn ctl moves`');
    if (operationId && this.operations.has(operationId)) throw new CairnError('CONFLICT', `operation_id: "${operationId}" was already used for an earlier operation`);
    const opId = operationId || `op-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
    const moves = plan.moves.map((pm) => newMove({ id: `mv-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`, start: pm.start, end: pm.end, from: pm.from, to: pm.to, bytes: pm.bytes }));
    const ids = moves.map((m) => m.id);
    for (const m of moves) this.planned.set(m.id, m);
    const op: Operation = { id: opId, kind, moveIds: ids, finished: false, done: Promise.resolve() };
    op.done = (async () => {
      // Every move is journaled as planned before any starts, and held as journaled only once it is.
      for (const move of moves) {
        if (this.closed) return;
        const rec: MoveRecord = { move, operationId: opId, kind, cleanupDone: false };
        await this.host.saveMove(move.id, this.journal(rec, move, false));
        this.moves.set(move.id, rec);
        this.planned.delete(move.id);
      }
      let next = 0;
      const worker = async () => {
        while (next < ids.length && !this.closed) await this.run(ids[next++]!, maxMbps);
      };
      await Promise.all(Array.from({ length: Math.min(this.opts.maxConcurrentMoves, ids.length) }, worker));
    })()
      .catch((err: unknown) => void this.log.error('operation failed', { operationId: opId, error: (err as Error).message }))
      .finally(() => {
        op.finished = true;
        this.log.info('operation finished', { operationId: opId, moves: ids.map((id) => `${id}:${this.moves.get(id)?.move.state}`) });
      });
    this.operations.set(opId, op);
    return op;
  }

  private run(id: string, maxMbps: number): Promise<Move> {
    const existing = this.running.get(id);
    if (existing) return existing;
    const p = this.execute(id, maxMbps).finally(() => this.running.delete(id));
    this.running.set(id, p);
    return p;
  }

  /** One move from planned to cleaned, or to aborted. */
  private async execute(id: string, maxMbps: number): Promise<Move> {
    let move = this.moves.get(id)!.move;
    const prog: MoveProgress = { copiedBytes: 0, bytesPerSec: 0, fenceMs: 0, startedAt: Date.now() };
    this.progress.set(id, prog);
    try {
      move = await this.step(id, 'copying'); // the `start` event's one step (stepsOn)
      failpoint('master-after-copy-journaled');
      await this.pull(move, prog, maxMbps);
      failpoint('master-before-commit');
      move = this.moves.get(id)!.move;
    } catch (err) {
      const e = fromServiceError(err);
      if (this.closed) {
        const left = this.moves.get(id)!.move;
        this.log.info('master stopping: move abandoned at its last journaled step; it resumes when the master restarts', { moveId: id, state: left.state });
        return left;
      }
      this.log.warn('move failed before the commit; aborting', { moveId: id, error: e.message });
      return this.abort(id, e.message);
    }
    if (this.closed) {
      // Stopping before the point of no return: leave the move at its journaled step; the restarted master aborts it.
      this.log.info('master stopping: move abandoned before its commit; it is aborted when the master restarts', { moveId: id, state: move.state });
      return move;
    }
    // The point of no return: map and journal in one durable step. The move is
    // `committed` in memory only once that step is durable; if it fails, nothing
    // changed (the batch is atomic) and the move can still abort.
    const rec = this.moves.get(id)!;
    try {
      await this.drive(id, { kind: 'ready' });
    } catch (err) {
      if (err instanceof AmbiguousWrite) {
        // Committed or not, only the journal on disk can say: the restarted master finishes or aborts it from there.
        this.log.error('commit outcome unknown: the move is left at its journaled step for the restarted master', { moveId: id, error: err.message });
        return rec.move;
      }
      // Refused before anything was written (e.g. the range changed owner): nothing is durable, so the move can still abort.
      const e = fromServiceError(err);
      this.log.error('commit refused; aborting the move', { moveId: id, error: e.message });
      return this.abort(id, `commit failed: ${e.message}`);
    }
    this.log.info('move committed', { moveId: id, start: move.start.toString(), end: move.end.toString(), from: move.from, to: move.to, epoch: this.host.epoch().toString() });
    failpoint('master-after-commit');
    return this.finish(id);
  }

  /** Drives the destination's pull, journaling the phases it reports. */
  private async pull(move: Move, prog: MoveProgress, maxMbps: number): Promise<void> {
    const mbps = maxMbps || this.opts.moveMaxMbps;
    const stream = this.calls.pull(move, this.host.epoch(), mbps, pullDeadline(move.bytes, mbps));
    this.streams.add(stream);
    let ready = false;
    const rate = new RateWindow();
    rate.add(Date.now(), 0);
    // After FENCED the pull gets a bound of its own (fenceReadyBoundMs): after the seal only this master's outcome lifts the fence.
    let fenceBound: NodeJS.Timeout | undefined;
    let fenceBoundHit: CairnError | undefined;
    try {
      for await (const p of stream as AsyncIterable<{ phase: TransferPhase; bytesReceived: bigint; rowsReceived: bigint; sourceRows: bigint; maxFenceMs: number }>) {
        const now = Date.now();
        // Progress in the planned (live cell) bytes: the wire also carries request-id records
        // and key framing, so raw bytes overshoot. The snapshot's row count says how far the copy is.
        const copied = copiedFraction({ copying: p.phase === TransferPhase.TRANSFER_PHASE_COPY, rowsReceived: Number(p.rowsReceived), sourceRows: Number(p.sourceRows) });
        // Only forward: a report can arrive out of step with the last one, and a bar that shrinks lies.
        prog.copiedBytes = Math.max(prog.copiedBytes, Math.round(move.bytes * copied));
        prog.transferredBytes = Number(p.bytesReceived);
        prog.bytesPerSec = rate.add(now, prog.copiedBytes);
        // Progress is not a step: kept in memory, and journaled with the next one.
        const rec = this.moves.get(move.id)!;
        rec.move = withProgress(rec.move, prog.copiedBytes);
        if (p.phase === TransferPhase.TRANSFER_PHASE_COPY) failpoint('master-during-copy');
        // The report moves the move forward to the step it belongs to, journaling each step on the way.
        const path = stepsOn(rec.move.state, { kind: 'report', phase: p.phase });
        for (const to of path) {
          if (to === 'fenced') prog.fenceStartedAt ??= now;
          await this.step(move.id, to);
        }
        if (path.at(-1) === 'catching_up') failpoint('master-during-catch-up');
        if (path.at(-1) === 'fenced') failpoint('master-after-fence');
        if (p.phase === TransferPhase.TRANSFER_PHASE_FENCED && !fenceBound && p.maxFenceMs > 0) {
          const boundMs = fenceReadyBoundMs(p.maxFenceMs);
          fenceBound = setTimeout(() => {
            fenceBoundHit = new CairnError(
              'CONFLICT',
              `move ${move.id}: the destination did not report READY within ${boundMs} ms of reporting the fence (the source's maxFenceMs ${p.maxFenceMs} ms plus a margin); the pull is cancelled`,
            );
            stream.cancel();
          }, boundMs);
        }
        if (p.phase === TransferPhase.TRANSFER_PHASE_READY) {
          ready = true;
          clearTimeout(fenceBound);
        }
      }
    } catch (err) {
      throw fenceBoundHit ?? fromServiceError(err);
    } finally {
      clearTimeout(fenceBound);
      this.streams.delete(stream);
    }
    if (!ready) throw new CairnError('INTERNAL', `destination ${move.to} ended the pull before it was ready`);
  }

  /** After the commit: push the map until the source (and destination) took it, then `cleaned`. */
  /** One finish per move at a time: the resume, the retry timer and RecoverMove may all ask at once. */
  private finish(id: string): Promise<Move> {
    let p = this.finishing.get(id);
    if (!p) {
      p = this.finishOnce(id).finally(() => this.finishing.delete(id));
      this.finishing.set(id, p);
    }
    return p;
  }

  private async finishOnce(id: string): Promise<Move> {
    const rec = this.moves.get(id)!;
    if (rec.move.state === 'cleaned') return rec.move;
    const prog = this.progress.get(id);
    const [toOk, fromOk] = await Promise.all([this.host.pushMapTo(rec.move.to), this.host.pushMapTo(rec.move.from)]);
    if (prog?.fenceStartedAt && fromOk) prog.fenceMs = Date.now() - prog.fenceStartedAt;
    if (!fromOk || !toOk) {
      this.log.warn('committed move: a shard did not take the new map yet; will retry', { moveId: id, source: fromOk, destination: toOk });
      return rec.move;
    }
    if (this.closed) return rec.move; // committed: the restarted master pushes the map again and marks it cleaned
    failpoint('master-before-cleaned');
    return this.drive(id, { kind: 'mapTaken' }, undefined, true);
  }

  /** Before the commit: journal `aborted`, then tell both shards (retried until they answer). */
  private async abort(id: string, reason: string): Promise<Move> {
    const rec = this.moves.get(id)!;
    if (this.closed) return rec.move; // not journaled: the restarted master aborts it
    await this.drive(id, { kind: 'failed' }, reason);
    await this.cleanupAborted(id);
    return rec.move;
  }

  private async cleanupAborted(id: string): Promise<void> {
    if (this.closed) return;
    const rec = this.moves.get(id)!;
    const m = rec.move;
    try {
      await this.calls.abort(m, this.host.epoch());
      if (this.closed) return; // the shards were told; the restarted master tells them again (both calls are idempotent)
      await this.saveCleanupDone(id);
      this.log.info('move aborted and cleaned up', { moveId: id, reason: m.error });
    } catch (err) {
      // Backed off: a shard that refuses (a full disk) or is down is not asked every second for as long as that lasts.
      rec.cleanupFailures = (rec.cleanupFailures ?? 0) + 1;
      const retryInMs = cleanupRetryDelayMs(rec.cleanupFailures, (err as CairnError).details?.retryAfterMs);
      rec.nextCleanupAt = Date.now() + retryInMs;
      this.log.warn('abort cleanup not done yet; will retry', { moveId: id, error: (err as Error).message, failures: rec.cleanupFailures, retryInMs });
    }
  }

  /** Retries what a crash or a down shard left undone: cleanup of aborted moves, map pushes of committed ones. */
  private async retryCleanups(): Promise<void> {
    if (this.closed) return;
    for (const [id, rec] of this.moves) {
      if (this.running.has(id) || rec.cleanupDone) continue;
      if (rec.move.state === 'aborted' && Date.now() >= (rec.nextCleanupAt ?? 0)) await this.cleanupAborted(id);
      else if (rec.move.state === 'committed') await this.finish(id).catch(() => undefined);
    }
  }

  /**
   * Drives one move to its end: a move still running is awaited; one left
   * mid-way by a crash is aborted (before the commit) or finished (after).
   */
  async recover(id: string): Promise<{ move: Move; action: string }> {
    const rec = this.moves.get(id);
    if (!rec) throw new CairnError('NOT_FOUND', `no move ${id} in the journal`);
    const running = this.running.get(id);
    if (running) return { move: await running, action: 'the move was running; waited for it to end' };
    switch (resumeAction(rec.move.state)) {
      case 'abort': {
        const from = rec.move.state;
        const move = await this.abort(id, `recovered in state ${from}: the move had not committed`);
        return { move, action: `aborted from ${from}: source fence lifted, destination copy dropped${rec.cleanupDone ? '' : ' (cleanup pending: a shard did not answer)'}` };
      }
      case 'finish': {
        const move = await this.finish(id);
        return { move, action: move.state === 'cleaned' ? 'finished: the committed map reached both shards; the source dropped its copy' : 'committed; the map push is pending (a shard did not answer)' };
      }
      default:
        if (rec.move.state === 'aborted' && !rec.cleanupDone) {
          await this.cleanupAborted(id);
          return { move: rec.move, action: rec.cleanupDone ? 'aborted: cleanup completed' : 'aborted: cleanup still pending' };
        }
        return { move: rec.move, action: `nothing to do: already ${rec.move.state}` };
    }
  }

  listMoves(all: boolean): Array<{ move: Move; operationId: string; progress?: MoveProgress }> {
    return [...this.moves.values()]
      .filter((r) => all || !isTerminal(r.move.state) || (r.move.state === 'aborted' && !r.cleanupDone))
      .map((r) => ({ move: r.move, operationId: r.operationId, progress: this.progress.get(r.move.id) }));
  }

  operation(id: string): Operation | undefined {
    return this.operations.get(id);
  }

  movesOf(op: Operation) {
    return op.moveIds.map((id) => ({ move: this.moves.get(id)?.move ?? this.planned.get(id)!, operationId: op.id, progress: this.progress.get(id) }));
  }

  /**
   * Stops for a master shutdown: no new step is journaled from now on, open
   * pulls are cancelled, and this resolves once every running move, operation
   * and retry has settled (or after `waitMs`, when a shard is slow to answer:
   * nothing left running journals anything after this), so the store can
   * close with no write half-done. A commit already under way finishes (one
   * batch, awaited by the master before its store closes).
   */
  async close(waitMs = 10_000): Promise<void> {
    this.closed = true;
    clearInterval(this.retryTimer);
    for (const s of this.streams) s.cancel();
    const settled = Promise.allSettled([...this.running.values(), ...[...this.operations.values()].map((o) => o.done), ...this.background]);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([settled, new Promise((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
  }

  /**
   * What the journal says of a move, for a shard holding a fence no transfer
   * owns any more: a move the journal does not know (`unknown`) or has aborted
   * will never commit, so its fence may be lifted. The journal is loaded
   * before the master serves, so `unknown` is never a move not yet read back.
   */
  moveStatus(id: string): { known: boolean; state: MoveState | 'unknown' } {
    const rec = this.moves.get(id);
    return rec ? { known: true, state: rec.move.state } : { known: false, state: 'unknown' };
  }
}
