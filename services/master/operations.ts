/**
 * The operator's commands that change where data lives or who is in the
 * cluster: plan and start a rebalance or the drain of a shard (the planner,
 * planner.ts, on exact bucket counts from the shards; the coordinator runs
 * the moves), and remove a shard that owns nothing. A caller-chosen
 * operation id makes each of them safe to retry (`answerOnce`).
 */
import type { Logger } from 'winston';
import { CairnError } from '../common/errors.js';
import { factorOf, inSyncOf, isReplicated, learnersOf, rangesOf, replicasOf, type ClusterMap } from '../common/map.js';
import { showRange } from '../common/ranges.js';
import { dropReplica, handOver, mapOrThrow } from './replica-steps.js';
import type { ClusterState } from './cluster-state.js';
import type { MoveCoordinator, Operation } from './coordinator.js';
import type { Membership } from './membership.js';
import { DEFAULT_DISK_HIGH_WATER, diskRoomBytes, drainShortfallMessage, plan as planMoves, shardLoads, type Plan } from './planner.js';
import type { ShardCalls } from './shard-calls.js';
import { bucketSpan } from '../common/ranges.js';
import { randomBytes } from 'node:crypto';
import { applyReplicaStep, planReplicas, type ReplicaPlan } from './replica-planner.js';
import type { ReplicaMoves, ReplicaOperation } from './replica-moves.js';
import type { PlannedMove } from './plan-types.js';
import { copyLoads } from './bucket-sums.js';
import type { MasterState } from './meta-store.js';

/** Admin answers kept in memory by operation id: far more than an operator retries at once. */
const ANSWERS_KEPT = 256;

export type StartedOperation = { op?: Pick<Operation, 'id' | 'kind' | 'done'>; plan: Plan; before: Map<string, number>; after: Map<string, number> };

export interface OperationsParts {
  state: ClusterState;
  members: Membership;
  calls: ShardCalls;
  coordinator: MoveCoordinator;
  store: MasterState;
  log: Logger;
  /** The planner never gives a shard data that would take its disk's use past this fraction of its size. */
  diskHighWater?: number;
  /** Runs replica plans on replicated clusters (absent: rebalance and drain refuse there). */
  replicaMoves?: ReplicaMoves;
}

export class Operations {
  /** Answers of admin calls by the caller's operation id (answerOnce). */
  private readonly answers = new Map<string, { what: string; answer: Promise<unknown> }>();

  constructor(private readonly p: OperationsParts) {}

  /** The planner's input: exact per-bucket counts from every shard that owns a range and is up. */
  private gatherBuckets(): Promise<Map<number, { bytes: number; rows: number }>> {
    const { state, members } = this.p;
    const owners = new Set(state.map.ranges.map((r) => r.shardId));
    return this.p.calls.bucketStats(state.shards.filter((s) => owners.has(s.id) && members.isUp(s.id)));
  }

  /** A dry run: the moves a rebalance (or the drain of `drain`) would make now. */
  async planRebalance(drain?: string): Promise<{ plan: Plan; before: Map<string, number>; after: Map<string, number> }> {
    const { state, members, coordinator } = this.p;
    if (state.map.epoch === 0n) throw new CairnError('PRECONDITION', 'the cluster has no map yet: waiting for expectShards shards to register');
    if (isReplicated(state.map)) {
      const { plan, before, after } = await this.planReplicated(drain);
      return { plan: asMovePlan(state.map.ranges, plan), before, after };
    }
    // A plan made while moves run is planned against a map about to change, and could not start anyway: refuse before showing one.
    if (coordinator.busy()) throw new CairnError('CONFLICT', 'another rebalance or drain is still running; watch it with `cairn ctl moves`');
    const draining = drain ? state.resolveShard(drain).id : undefined;
    if (draining && !state.shards.some((s) => s.id !== draining && members.isUp(s.id))) {
      throw new CairnError('PRECONDITION', `cannot drain ${draining}: no other shard is up to take its ranges`);
    }
    const buckets = await this.gatherBuckets();
    const map = state.map;
    const highWater = this.p.diskHighWater ?? DEFAULT_DISK_HIGH_WATER;
    const room = new Map(state.shards.map((s) => [s.id, diskRoomBytes(members.diskOf(s.id), highWater)]));
    const plan = planMoves({
      map,
      shards: state.shards.map((s) => ({ id: s.id, up: members.isUp(s.id), draining: s.id === draining, roomBytes: room.get(s.id) })),
      buckets,
    });
    const stuck = draining ? plan.targetMap.filter((r) => r.shardId === draining).length : 0;
    if (stuck) {
      const others = state.shards.filter((s) => s.id !== draining && members.isUp(s.id));
      // Every range of a draining shard goes somewhere unless the other shards' disks are at the mark.
      if (others.length && others.every((s) => room.get(s.id) !== undefined)) {
        const left = shardLoads(plan.targetMap, buckets).get(draining!)?.bytes ?? 0;
        const rooms = others.map((s) => ({ id: s.id, roomBytes: room.get(s.id)!, plannedBytes: plan.moves.filter((m) => m.to === s.id).reduce((n, m) => n + m.bytes, 0) }));
        throw new CairnError('PRECONDITION', drainShortfallMessage(draining!, left, highWater, rooms));
      }
      throw new CairnError('PRECONDITION', `cannot drain ${draining}: ${stuck} of its ranges have no shard up to take them`);
    }
    const loads = (ranges: typeof map.ranges) => new Map([...shardLoads(ranges, buckets)].map(([id, l]) => [id, l.bytes]));
    return { plan, before: loads(map.ranges), after: loads(plan.targetMap) };
  }

  /**
   * The replica planner's plan (replica-planner.ts) for a replicated cluster:
   * every copy's bytes balanced, no two copies of a range on one shard,
   * primaries even; with `drain`, every copy off that shard. Bytes per range
   * come from each range's primary (one copy each). Refused while moves run,
   * and when a drain would leave copies on the shard.
   */
  async planReplicated(drain?: string, byTheRunningOperation = false): Promise<{ plan: ReplicaPlan; before: Map<string, number>; after: Map<string, number> }> {
    const { state, members } = this.p;
    if (!byTheRunningOperation && this.busy()) throw new CairnError('CONFLICT', 'another rebalance or drain is still running; watch it with `cairn ctl moves`');
    const draining = drain ? state.resolveShard(drain).id : undefined;
    if (draining && !state.shards.some((s) => s.id !== draining && members.isUp(s.id))) {
      throw new CairnError('PRECONDITION', `cannot drain ${draining}: no other shard is up to take its copies`);
    }
    // Draining to fewer shards than the factor would leave ranges with fewer copies than wanted, which the
    // master's re-replication then puts back on the drained shard (defect: the chaos run's drains and
    // re-replication undid each other, dozens of map changes a minute). A dead machine goes by remserver.
    const factor = factorOf(state.map);
    const others = state.shards.filter((s) => s.id !== draining && members.isUp(s.id)).length;
    if (draining && others < factor) {
      throw new CairnError(
        'PRECONDITION',
        `cannot drain ${draining}: the cluster keeps ${factor} copies of each range and only ${others} other shard${others === 1 ? ' is' : 's are'} up to hold them; add a shard first, or lower the factor with \`cairn ctl factor ${others}\``,
      );
    }
    const buckets = await this.primaryBuckets();
    const map = state.map;
    const highWater = this.p.diskHighWater ?? DEFAULT_DISK_HIGH_WATER;
    const view = members.failoverView();
    const plan = planReplicas(
      {
        map,
        shards: state.shards.map((s) => ({ id: s.id, up: members.isUp(s.id), draining: s.id === draining, roomBytes: diskRoomBytes(members.diskOf(s.id), highWater) })),
        buckets,
      },
      { replaceDown: new Set(state.shards.filter((s) => view.givenUp(s.id)).map((s) => s.id)) },
    );
    if (draining) {
      const stuck = plan.targetMap.filter((r) => replicasOf(r).includes(draining) || learnersOf(r).includes(draining)).length;
      if (stuck) {
        throw new CairnError(
          'PRECONDITION',
          `cannot drain ${draining}: ${stuck} of its copies have no shard to go to (every other shard up holds a copy of the range, is down, or its disk is at the ${highWater} mark); add a shard or lower the replication factor`,
        );
      }
    }
    return { plan, before: copyLoads(map.ranges, buckets), after: copyLoads(plan.targetMap, buckets) };
  }

  /** Per-bucket counts of one copy of each range: each up primary's buckets of the ranges it is the primary of. */
  private async primaryBuckets(): Promise<Map<number, { bytes: number; rows: number }>> {
    const { state, members, calls } = this.p;
    const out = new Map<number, { bytes: number; rows: number }>();
    await Promise.all(
      state.shards
        .filter((s) => members.isUp(s.id) && state.map.ranges.some((r) => r.shardId === s.id))
        .map(async (s) => {
          const got = await calls.bucketStats([s]);
          for (const r of state.map.ranges) {
            if (r.shardId !== s.id) continue;
            const [from, to] = bucketSpan(r);
            for (let b = from; b < to; b++) {
              const stats = got.get(b);
              if (stats) out.set(b, stats);
            }
          }
        }),
    );
    return out;
  }

  /** A rebalance, a drain or a replica operation is running. */
  busy(): boolean {
    return this.p.coordinator.busy() || !!this.p.replicaMoves?.busy();
  }

  /**
   * Plans and starts a rebalance (or the drain of `drain`). With an
   * `operationId`, a retry of the same call (the first answer was lost) gets
   * the first call's operation and starts nothing; the id used for another
   * kind of call is refused.
   */
  startRebalance(maxMbps: number, drain?: string, operationId = ''): Promise<StartedOperation> {
    const coordinator = this.p.coordinator;
    const what = drain ? `drain of ${drain}` : 'rebalance';
    return this.answerOnce(operationId, what, async () => {
      const replicaOp = operationId ? this.p.replicaMoves?.operation(operationId) : undefined;
      if (replicaOp) {
        if (replicaOp.kind !== (drain ? 'drain' : 'rebalance')) throw reusedOperationId(operationId, replicaOp.kind, what);
        return { op: asOperation(replicaOp), plan: { moves: [], targetMap: [], totalBytes: 0, movedBytes: 0, minimumBytes: 0, basis: 'bytes' }, before: new Map(), after: new Map() };
      }
      if (isReplicated(this.p.state.map) && this.p.replicaMoves) return this.startReplicated(drain, operationId);
      const journaled = operationId ? coordinator.operation(operationId) : undefined;
      if (journaled) {
        // Started before this master restarted: its moves are in the journal, and so is what it planned.
        if (journaled.kind !== (drain ? 'drain' : 'rebalance')) throw reusedOperationId(operationId, journaled.kind, what);
        const moves = coordinator
          .movesOf(journaled)
          .map(({ move: m }) => ({ start: m.start, end: m.end, from: m.from, to: m.to, bytes: m.bytes, rows: 0 }))
          .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0)); // as a plan orders them
        const movedBytes = moves.reduce((n, m) => n + m.bytes, 0);
        return { op: journaled, plan: { moves, targetMap: [], totalBytes: 0, movedBytes, minimumBytes: 0, basis: 'bytes' }, before: new Map(), after: new Map() };
      }
      if (this.busy()) throw new CairnError('CONFLICT', 'another rebalance or drain is still running; watch it with `cairn ctl moves`');
      const p = await this.planRebalance(drain);
      if (p.plan.moves.length === 0) return p;
      return { ...p, op: coordinator.start(p.plan, drain ? 'drain' : 'rebalance', maxMbps, operationId || undefined) };
    });
  }

  /** Plans and starts a replica operation (replica-moves.ts); later plans have the same inputs. */
  private async startReplicated(drain: string | undefined, operationId: string): Promise<StartedOperation> {
    const moves = this.p.replicaMoves!;
    const first = await this.planReplicated(drain);
    const plan = asMovePlan(this.p.state.map.ranges, first.plan);
    if (first.plan.steps.length === 0) return { plan, before: first.before, after: first.after };
    const id = operationId || `op-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
    // Plans after the first: the shard drained is named by id (an address could be reused).
    const drained = drain ? this.p.state.resolveShard(drain).id : undefined;
    const replan = async () => (await this.planReplicated(drained, true)).plan;
    const op = moves.start(first.plan, drain ? 'drain' : 'rebalance', id, replan);
    this.p.log.info(`${drain ? 'drain' : 'rebalance'} of replicas started`, { operationId: id, steps: first.plan.steps.length, movedBytes: first.plan.movedBytes, minimumBytes: first.plan.minimumBytes });
    return { op: asOperation(op), plan, before: first.before, after: first.after };
  }

  /**
   * Runs an admin call once per caller-chosen operation id: a retry while the
   * first still runs, or after it answered, gets the same answer. A failed
   * call is forgotten, so its retry runs again. Kept for the last
   * ANSWERS_KEPT ids; what must outlive a restart is also in the store
   * (journaled moves, removals).
   */
  private answerOnce<T>(operationId: string, what: string, run: () => Promise<T>): Promise<T> {
    if (!operationId) return run();
    const seen = this.answers.get(operationId);
    if (seen) {
      if (seen.what !== what) return Promise.reject(reusedOperationId(operationId, seen.what, what));
      return seen.answer as Promise<T>;
    }
    const answer = run();
    this.answers.set(operationId, { what, answer });
    answer.catch(() => this.answers.get(operationId)?.answer === answer && this.answers.delete(operationId));
    if (this.answers.size > ANSWERS_KEPT) this.answers.delete(this.answers.keys().next().value!);
    return answer;
  }

  /**
   * Removes a shard that owns no range, then tells its process to stop. With
   * an `operationId`, the removal is recorded under it in the same durable
   * step, so a retry (even after a master restart) answers as the first call
   * did instead of NOT_FOUND.
   */
  removeServer(server: string, operationId = ''): Promise<{ shardId: string; stopped: boolean }> {
    return this.answerOnce(operationId, `removal of ${server}`, async () => {
      const recorded = operationId ? await this.p.store.loadAdminOp(operationId) : undefined;
      if (recorded) {
        if (recorded.what !== `removal of ${server}`) throw reusedOperationId(operationId, recorded.what, `removal of ${server}`);
        return { shardId: recorded.shardId, stopped: await this.p.calls.stopShard(recorded) };
      }
      return this.removeServerNow(server, operationId);
    });
  }

  private async removeServerNow(server: string, operationId: string): Promise<{ shardId: string; stopped: boolean }> {
    const { state, members } = this.p;
    const target = state.resolveShard(server);
    const record = { what: `removal of ${server}`, shardId: target.id, address: target.address };
    const removed = await state.serial.run(async () => {
      const owned = rangesOf(state.map, target.id);
      const ranges = isReplicated(state.map) ? withoutCopiesOn(state.map, target.id, (id) => members.isUp(id)) : undefined;
      if (ranges) {
        state.shards = state.shards.filter((s) => s.id !== target.id);
        members.forget(target.id);
        state.removed.add(target.id);
        const adminOps = operationId ? [{ id: operationId, json: record }] : [];
        await state.commitMap({ ...state.map, epoch: state.map.epoch + 1n, ranges, shards: state.shardRefs() }, adminOps);
        this.p.log.info('shard removed; its copies are made again on the other shards', { shardId: target.id, address: target.address, operationId: operationId || undefined });
        return target;
      }
      if (owned.length) {
        const { bytes, rows } = members.ownedCounts(target.id, owned);
        throw new CairnError(
          'PRECONDITION',
          `shard ${target.id} still owns ${owned.length} range${owned.length === 1 ? '' : 's'} (${bytes} bytes, ${rows} rows); drain it first: cairn ctl dropserver ${target.id}`,
        );
      }
      state.shards = state.shards.filter((s) => s.id !== target.id);
      members.forget(target.id);
      state.removed.add(target.id);
      const adminOps = operationId ? [{ id: operationId, json: record }] : [];
      if (state.map.epoch > 0n) await state.commitShards(adminOps);
      else await state.saveRegistry(`removing ${target.id}`, adminOps);
      this.p.log.info('shard removed', { shardId: target.id, address: target.address, operationId: operationId || undefined });
      return target;
    });
    return { shardId: removed.id, stopped: await this.p.calls.stopShard(record) };
  }
}

/**
 * The ranges once a shard's copies are gone (it is being removed): where it
 * is the primary, primacy goes first to an in-sync follower that is up. The
 * master's pass then makes the missing copies on other shards. Refused when
 * a range would be left with no in-sync member that is up.
 */
function withoutCopiesOn(map: ClusterMap, shard: string, isUp: (id: string) => boolean): ClusterMap['ranges'] {
  let next = map;
  for (const r of map.ranges) {
    if (!replicasOf(r).includes(shard) && !learnersOf(r).includes(shard)) continue;
    const range = { start: r.start, end: r.end };
    if (r.shardId === shard) {
      const heir = inSyncOf(r).find((id) => id !== shard && isUp(id));
      if (!heir) throw new CairnError('PRECONDITION', `shard ${shard} holds the only in-sync copy of ${showRange(r)} that is up: removing it would lose acknowledged writes`);
      next = mapOrThrow(handOver(next, range, heir));
    }
    next = mapOrThrow(dropReplica(next, range, shard));
  }
  return next.ranges;
}

function reusedOperationId(id: string, first: string, now: string): CairnError {
  return new CairnError('CONFLICT', `operation_id: "${id}" was already used for the ${first}, not the ${now}; use a new id for a new operation`);
}

/** A replica operation as the callers of startRebalance see an operation. */
function asOperation(op: ReplicaOperation): Pick<Operation, 'id' | 'kind' | 'done'> {
  return { id: op.id, kind: op.kind, done: op.done };
}


/**
 * A replica plan in the form plans are shown (PlanRebalance, the CLI): one
 * move per copy, from the copy it replaces (or, for a new copy, from the
 * range's primary, which sends it) to its new shard.
 */
export function asMovePlan(ranges: ClusterMap['ranges'], p: ReplicaPlan): Plan {
  const moves: PlannedMove[] = [];
  let now = ranges;
  for (const step of p.steps) {
    if (step.kind === 'addReplica' || step.kind === 'replaceReplica') {
      const primary = now.find((r) => r.start === step.range.start && r.end === step.range.end)?.shardId ?? '';
      moves.push({ start: step.range.start, end: step.range.end, from: step.kind === 'replaceReplica' ? step.from : primary, to: step.to, bytes: step.bytes, rows: 0 });
    }
    now = applyReplicaStep(now, step);
  }
  return { moves, targetMap: p.targetMap, totalBytes: p.totalBytes, movedBytes: p.movedBytes, minimumBytes: p.minimumBytes, basis: p.basis };
}
