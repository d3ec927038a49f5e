/**
 * The moves running on a shard: each transfer (source side), pull or drop
 * (destination side) is a MoveTask in the shard's MoveRegistry, which also
 * remembers aborted move ids and finished pulls. Used by both sides of the
 * transfer (transfer-source.ts, transfer-sink.ts) and by the shard's
 * handlers (AbortMove, AckTransfer, GetMoveState).
 */
import { TransferPhase, type TransferAck } from '../../proto/gen/cairn/v1/control.js';
import { CairnError } from '../common/errors.js';
import { rangesOverlap, type HashRange } from '../common/ranges.js';
import { showRange } from '../common/ranges.js';
import { coveredBy } from './fence.js';

export type TaskKind = 'transfer' | 'pull' | 'drop';

/** One transfer, pull or drop running on this shard. */
export class MoveTask {
  phase = TransferPhase.TRANSFER_PHASE_UNSPECIFIED;
  /** A source's transfer: takes the destination's AckTransfer (throws INVALID_ARGUMENT for one that does not fit). */
  onAck: ((ack: TransferAck) => void) | undefined;
  private reason: CairnError | undefined;
  private readonly onAbort: Array<() => void> = [];
  private finish!: () => void;
  readonly done = new Promise<void>((r) => (this.finish = r));

  constructor(
    readonly kind: TaskKind,
    readonly moveId: string,
    readonly range: HashRange,
    private readonly cancelled: () => boolean,
  ) {}

  get abortReason(): CairnError | undefined {
    return this.reason;
  }

  /** True once the caller of the RPC that runs this task has gone away. */
  get callerGone(): boolean {
    return this.cancelled();
  }

  abort(reason: CairnError): void {
    if (this.reason) return;
    this.reason = reason;
    for (const f of this.onAbort) f();
  }

  whenAborted(f: () => void): void {
    if (this.reason) f();
    else this.onAbort.push(f);
  }

  /** Throws when the move was aborted or the caller went away. */
  check(): void {
    if (this.reason) throw this.reason;
    if (this.cancelled()) throw new CairnError('CANCELLED', `move ${this.moveId}: the caller cancelled the ${this.kind}`);
  }

  /** Called once by the registry. */
  ended(): void {
    this.finish();
  }
}

const MAX_REMEMBERED_ABORTS = 10_000;

/**
 * The moves running on a shard. A source runs at most one transfer per range
 * (transfers may not overlap); a destination runs at most one pull or drop
 * per range. Aborted move ids are remembered, so a transfer that arrives after
 * its move was aborted cannot fence the range again.
 */
export class MoveRegistry {
  private readonly tasks = new Set<MoveTask>();
  private readonly aborted = new Set<string>();
  private readonly ready = new Map<string, HashRange>();

  begin(kind: TaskKind, moveId: string, range: HashRange, cancelled: () => boolean = () => false): MoveTask {
    const sourceSide = kind === 'transfer';
    for (const t of this.tasks) {
      if ((t.kind === 'transfer') !== sourceSide) continue;
      if (t.moveId === moveId || rangesOverlap(t.range, range)) {
        throw new CairnError('CONFLICT', `move ${moveId}: a ${t.kind} of move ${t.moveId} on ${showRange(t.range)} is already running on this shard`);
      }
    }
    const task = new MoveTask(kind, moveId, range, cancelled);
    this.tasks.add(task);
    return task;
  }

  finish(task: MoveTask): void {
    this.tasks.delete(task);
    task.ended();
  }

  find(kind: TaskKind, moveId: string): MoveTask | undefined {
    for (const t of this.tasks) if (t.kind === kind && t.moveId === moveId) return t;
    return undefined;
  }

  /** True while a transfer (source side) of the move runs here: it owns the move's fence. */
  transferRunning(moveId: string): boolean {
    return this.find('transfer', moveId) !== undefined;
  }

  /** Ranges this shard is receiving, dropping, or holds a finished copy of (for moves other than `except`): the janitor keeps away from them. */
  destinationRanges(except?: string): HashRange[] {
    return [
      ...[...this.tasks].filter((t) => t.kind !== 'transfer' && t.moveId !== except).map((t) => t.range),
      ...[...this.ready].filter(([id]) => id !== except).map(([, r]) => r),
    ];
  }

  wasAborted(moveId: string): boolean {
    return this.aborted.has(moveId);
  }

  /** Marks a move aborted and aborts its running transfer and pull; returns whether any was running. */
  abort(moveId: string): boolean {
    this.aborted.add(moveId);
    if (this.aborted.size > MAX_REMEMBERED_ABORTS) this.aborted.delete(this.aborted.values().next().value!);
    this.ready.delete(moveId);
    let any = false;
    for (const t of this.tasks) {
      if (t.moveId !== moveId || t.kind === 'drop') continue;
      t.abort(new CairnError('CONFLICT', `move ${moveId} was aborted`));
      any = true;
    }
    return any;
  }

  /**
   * Aborts the move's transfer or pull here and waits, at most maxWaitMs, for
   * it to stop: once AbortMove answers, the range is free for the next move
   * (a task still winding down would refuse it as "already running").
   */
  async abortAndWait(moveId: string, maxWaitMs: number): Promise<boolean> {
    const stopping = [...this.tasks].filter((t) => t.moveId === moveId && t.kind !== 'drop');
    const any = this.abort(moveId);
    if (stopping.length > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(stopping.map((t) => t.done)), new Promise((r) => (timer = setTimeout(r, maxWaitMs)))]);
      clearTimeout(timer);
    }
    return any;
  }

  /** Aborts transfers of ranges this shard no longer fully owns. */
  abortTransfersOutside(owned: readonly HashRange[]): void {
    for (const t of this.tasks) {
      if (t.kind === 'transfer' && !coveredBy(t.range, owned)) {
        t.abort(new CairnError('PRECONDITION', `move ${t.moveId}: this shard no longer owns all of ${showRange(t.range)}`));
      }
    }
  }

  markReady(moveId: string, range: HashRange): void {
    this.ready.set(moveId, range);
  }

  forgetReady(moveId: string): void {
    this.ready.delete(moveId);
  }

  /** Forgets finished pulls whose range the map now gives this shard (the move committed). */
  forgetReadyOwned(owned: readonly HashRange[]): void {
    for (const [id, r] of this.ready) if (owned.some((o) => rangesOverlap(o, r))) this.ready.delete(id);
  }

  /** The phase of this shard's side of a move, for GetMoveState. */
  phaseOf(moveId: string): { transfer: TransferPhase; pull: TransferPhase } {
    const t = this.find('transfer', moveId);
    const p = this.find('pull', moveId);
    return {
      transfer: t?.phase ?? TransferPhase.TRANSFER_PHASE_UNSPECIFIED,
      pull: p?.phase ?? (this.ready.has(moveId) ? TransferPhase.TRANSFER_PHASE_READY : TransferPhase.TRANSFER_PHASE_UNSPECIFIED),
    };
  }
}
