/**
 * Runs replica plans (replica-planner.ts) on a replicated cluster: the moves
 * of `rebalance` and `dropserver` when ranges have more than one copy
 * (docs/design.md "Moving replicas"). Every change is one durable map step
 * (replica-steps.ts) committed through the master's serialized
 * compare-and-set; the shards do the copying (a learner gets a snapshot and
 * the log from its primary, replicator.ts).
 *
 * - split, handOver, dropReplica: one map step each, at once.
 * - addReplica / replaceReplica ("copies"): the target becomes a learner;
 *   once its primary reports it caught up at the range's current version
 *   (the heartbeat's caughtUp note, as failover.ts uses), one step makes it
 *   in sync and drops the replaced copy (promoteLearner with `replacing`). A
 *   replaced copy that is the primary by then: the learner joins, primacy
 *   passes to it, then the old copy is dropped (three steps, no copy made
 *   twice). `decideCopy` is that decision, pure.
 * - Progress: each copy is shown as a move (ListMoves, WatchOperation,
 *   `ctl moves`): planned, copying (a learner), committed or aborted.
 * - At most `maxCopies` copies at once; a step waits for the copies under
 *   way on any range it overlaps (steps are valid in order).
 * - The failover pass leaves the ranges of copies under way alone
 *   (`FailoverView.ownedByMoves`): it neither joins their learners nor
 *   trims them, which could drop a copy other than the replaced one.
 * - After the plan's steps (or the first refused one: the map changed under
 *   it, e.g. a failover), the executor plans again on the map as it is and
 *   goes on, until a plan has no steps. The planner is idempotent on its
 *   target, so after a master restart the same command plans the remaining
 *   steps; a learner left behind by the dead master is joined (and the
 *   range trimmed) by the failover pass, so every range ends with its copies.
 */
import type { Logger } from 'winston';
import { CairnError } from '../common/errors.js';
import { inSyncOf, learnersOf, mapError, replicasOf, type ClusterMap, type MapRange } from '../common/map.js';
import { rangeKey, showRange, type HashRange } from '../common/ranges.js';
import { applyReplicaStep, type ReplicaPlan, type ReplicaStep } from './replica-planner.js';
import { addLearner, dropReplica, handOver, promoteLearner, type StepResult } from './replica-steps.js';

/** How often a copy under way looks at the map and the heartbeats. */
const COPY_POLL_MS = 200;
/** Plans in one operation at most: the planner converges in one or two; more means something keeps changing the map. */
const MAX_ROUNDS = 8;

/** One copy of a plan: `to` gets a copy of `range`, replacing `from`'s when given. */
export interface CopyTask {
  range: HashRange;
  to: string;
  from?: string;
  bytes: number;
}

/** What a copy under way does next. */
export type CopyAction =
  | { kind: 'step'; what: string; step: (map: ClusterMap) => StepResult }
  | { kind: 'wait'; why: string }
  | { kind: 'done' }
  | { kind: 'abandon'; why: string };

/**
 * The next action of a copy, from the range as the map has it now and
 * whether the primary reported `to` caught up at the range's version. Pure.
 * `started`: the learner step was taken (a learner gone since was dropped,
 * by the failover pass when its shard went down: the copy is abandoned and
 * the next plan decides again).
 */
export function decideCopy(r: MapRange | undefined, task: CopyTask, started: boolean, caughtUp: boolean): CopyAction {
  const where = showRange(task.range);
  if (!r) return { kind: 'abandon', why: `range ${where} is no longer in the map` };
  const range = task.range;
  const replicas = replicasOf(r);
  const from = task.from !== undefined && replicas.includes(task.from) ? task.from : undefined;
  if (learnersOf(r).includes(task.to)) {
    if (!caughtUp) return { kind: 'wait', why: `learner ${task.to} of ${where} is catching up` };
    if (from !== undefined && from !== r.shardId) {
      return { kind: 'step', what: `${where}: learner ${task.to} caught up; in sync in place of ${from}`, step: (m) => promoteLearner(m, range, task.to, from) };
    }
    // No copy to replace, or the primary's: the learner joins first (primacy passes to it next).
    return { kind: 'step', what: `${where}: learner ${task.to} caught up; in sync`, step: (m) => promoteLearner(m, range, task.to) };
  }
  if (replicas.includes(task.to)) {
    if (from === undefined) return { kind: 'done' };
    if (from === r.shardId) {
      if (!inSyncOf(r).includes(task.to)) return { kind: 'abandon', why: `${task.to} left the in-sync set of ${where} before primacy could pass to it` };
      return { kind: 'step', what: `${where}: primacy passes from ${from} to ${task.to}`, step: (m) => handOver(m, range, task.to) };
    }
    return { kind: 'step', what: `${where}: ${from}'s copy dropped (${task.to} replaced it)`, step: (m) => dropReplica(m, range, from) };
  }
  if (started) return { kind: 'abandon', why: `learner ${task.to} of ${where} was dropped (its shard went down?)` };
  return { kind: 'step', what: `${where}: a new copy on ${task.to}${task.from ? ` (to replace ${task.from})` : ''}`, step: (m) => addLearner(m, range, task.to) };
}

/** A plan step other than a copy, as one map change on the map as it is now. */
export function mapStepFor(step: Exclude<ReplicaStep, { kind: 'addReplica' | 'replaceReplica' }>): (map: ClusterMap) => StepResult {
  switch (step.kind) {
    case 'handOver':
      return (m) => handOver(m, step.range, step.to);
    case 'dropReplica':
      return (m) => dropReplica(m, step.range, step.shard);
    case 'split':
      return (m) => {
        // Both halves keep the group and its version: a split changes no group (docs/design.md "Splitting a replicated range").
        try {
          const next: ClusterMap = { ...m, epoch: m.epoch + 1n, ranges: applyReplicaStep(m.ranges, step) };
          const err = mapError(next);
          return err ? { ok: false, code: 'INTERNAL', reason: `the split would give an invalid map: ${err}` } : { ok: true, map: next };
        } catch (err) {
          return { ok: false, code: 'CONFLICT', reason: (err as Error).message };
        }
      };
  }
}

/** True when two hash ranges share a hash. */
const overlaps = (a: HashRange, b: HashRange): boolean => a.start < b.end && b.start < a.end;

export interface ReplicaMovesHost {
  log: Logger;
  map(): ClusterMap;
  /** One durable map step on the current map (serialized with every other map change); refused steps throw. */
  commit(step: (map: ClusterMap) => StepResult, what: string): Promise<void>;
  /** Whether the primary of `range` reported `shard` caught up at `version`. */
  caughtUp(range: HashRange, version: bigint, shard: string): boolean;
}

/** A replica operation's record, as `ctl moves` and WatchOperation show it. */
export interface ReplicaOperation {
  id: string;
  kind: 'rebalance' | 'drain';
  startedAt: number;
  copies: Array<CopyTask & { id: string; state: 'planned' | 'copying' | 'committed' | 'aborted'; error?: string; history: Array<{ state: string; at: number }> }>;
  steps: number;
  done: Promise<void>;
  finished: boolean;
  error?: string;
}

export class ReplicaMoves {
  private current: ReplicaOperation | undefined;
  private readonly operations = new Map<string, ReplicaOperation>();
  /** Ranges with a copy under way: the failover pass leaves them alone. */
  private readonly owned = new Map<string, HashRange>();
  private closed = false;

  constructor(
    private readonly host: ReplicaMovesHost,
    private readonly maxCopies: number,
  ) {}

  busy(): boolean {
    return !!this.current && !this.current.finished;
  }

  operation(id: string): ReplicaOperation | undefined {
    return this.operations.get(id);
  }

  list(): ReplicaOperation[] {
    return [...this.operations.values()];
  }

  /** Whether a copy under way changes `range` (FailoverView.ownedByMoves). */
  owns(range: HashRange): boolean {
    for (const r of this.owned.values()) if (overlaps(r, range)) return true;
    return false;
  }

  /** Starts running `first` (and the plans after it) as operation `id`. */
  start(first: ReplicaPlan, kind: ReplicaOperation['kind'], id: string, replan: () => Promise<ReplicaPlan>): ReplicaOperation {
    if (this.busy()) throw new CairnError('CONFLICT', 'another rebalance or drain is still running; watch it with `cairn ctl moves`');
    const op: ReplicaOperation = { id, kind, startedAt: Date.now(), copies: [], steps: 0, done: Promise.resolve(), finished: false };
    op.done = this.run(op, first, replan).then(
      () => {
        op.finished = true;
        this.host.log.info('replica operation finished', { operationId: id, kind, steps: op.steps, copies: op.copies.length });
      },
      (err: Error) => {
        op.finished = true;
        op.error = err.message;
        this.host.log.error('replica operation stopped', { operationId: id, kind, error: err.message });
      },
    );
    this.current = op;
    this.operations.set(id, op);
    return op;
  }

  close(): void {
    this.closed = true;
  }

  private async run(op: ReplicaOperation, first: ReplicaPlan, replan: () => Promise<ReplicaPlan>): Promise<void> {
    let plan = first;
    for (let round = 0; round < MAX_ROUNDS && plan.steps.length > 0 && !this.closed; round++) {
      await this.runSteps(op, plan.steps);
      if (this.closed) return;
      plan = await replan();
    }
    if (plan.steps.length > 0 && !this.closed) throw new CairnError('INTERNAL', `still ${plan.steps.length} steps to make after ${MAX_ROUNDS} plans: the map keeps changing; run the command again`);
  }

  /** Runs steps in order until the end or the first one the map refuses; waits for the copies it started. */
  private async runSteps(op: ReplicaOperation, steps: readonly ReplicaStep[]): Promise<void> {
    const running = new Map<Promise<void>, HashRange>();
    const waitFor = async (blocked: () => boolean): Promise<void> => {
      while (blocked() && running.size > 0) await Promise.race(running.keys());
    };
    try {
      for (const step of steps) {
        if (this.closed) return;
        await waitFor(() => [...running.values()].some((r) => overlaps(r, step.range)));
        if (step.kind === 'addReplica' || step.kind === 'replaceReplica') {
          await waitFor(() => running.size >= this.maxCopies);
          const task: CopyTask = { range: step.range, to: step.to, from: step.kind === 'replaceReplica' ? step.from : undefined, bytes: step.bytes };
          const copy = { ...task, id: `${op.id}-${op.copies.length + 1}`, state: 'planned' as const, history: [{ state: 'planned', at: Date.now() }] };
          op.copies.push(copy);
          const key = `${copy.id}`;
          this.owned.set(key, step.range);
          const p = this.runCopy(op, copy).finally(() => {
            running.delete(p);
            this.owned.delete(key);
          });
          running.set(p, step.range);
          continue;
        }
        try {
          await this.host.commit(mapStepFor(step), `${step.kind} of ${showRange(step.range)}`);
          op.steps++;
        } catch (err) {
          // The map changed under the plan (a failover, a copy abandoned): plan again once the copies end.
          this.host.log.info('a planned replica step no longer fits the map; planning again', { operationId: op.id, step: step.kind, range: showRange(step.range), reason: (err as Error).message });
          return;
        }
      }
    } finally {
      await Promise.allSettled([...running.keys()]);
    }
  }

  private async runCopy(op: ReplicaOperation, copy: ReplicaOperation['copies'][number]): Promise<void> {
    const set = (state: typeof copy.state, error?: string) => {
      copy.state = state;
      if (error) copy.error = error;
      copy.history.push({ state, at: Date.now() });
    };
    let started = false;
    while (!this.closed) {
      const map = this.host.map();
      const r = map.ranges.find((x) => rangeKey(x) === rangeKey(copy.range));
      const caughtUp = !!r && this.host.caughtUp(copy.range, r.version ?? 0n, copy.to);
      const action = decideCopy(r, copy, started, caughtUp);
      if (action.kind === 'done') return set('committed');
      if (action.kind === 'abandon') {
        this.host.log.warn('a replica copy was abandoned; the next plan decides again', { operationId: op.id, range: showRange(copy.range), to: copy.to, why: action.why });
        return set('aborted', action.why);
      }
      if (action.kind === 'wait') {
        await new Promise((res) => setTimeout(res, COPY_POLL_MS).unref());
        continue;
      }
      try {
        await this.host.commit(action.step, action.what);
        op.steps++;
        if (!started) set('copying');
        started = true;
      } catch (err) {
        this.host.log.warn('a replica copy step was refused; the next plan decides again', { operationId: op.id, range: showRange(copy.range), to: copy.to, error: (err as Error).message });
        return set('aborted', (err as Error).message);
      }
    }
  }
}
