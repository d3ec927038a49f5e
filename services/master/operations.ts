/**
 * The operator's commands that change where data lives or who is in the
 * cluster: plan and start a rebalance or the drain of a shard (the planner,
 * planner.ts, on exact bucket counts from the shards; the coordinator runs
 * the moves), and remove a shard that owns nothing. A caller-chosen
 * operation id makes each of them safe to retry (`answerOnce`).
 */
import type { Logger } from 'winston';
import { CairnError } from '../common/errors.js';
import { inSyncOf, isReplicated, learnersOf, rangesOf, replicasOf, type ClusterMap } from '../common/map.js';
import { showRange } from '../common/ranges.js';
import { dropReplica, handOver, mapOrThrow } from './replica-steps.js';
import type { ClusterState } from './cluster-state.js';
import type { MoveCoordinator, Operation } from './coordinator.js';
import type { Membership } from './membership.js';
import { DEFAULT_DISK_HIGH_WATER, diskRoomBytes, drainShortfallMessage, plan as planMoves, shardLoads, type Plan } from './planner.js';
import type { ShardCalls } from './shard-calls.js';
import type { MasterState } from './meta-store.js';

/** Admin answers kept in memory by operation id: far more than an operator retries at once. */
const ANSWERS_KEPT = 256;

export type StartedOperation = { op?: Operation; plan: Plan; before: Map<string, number>; after: Map<string, number> };

export interface OperationsParts {
  state: ClusterState;
  members: Membership;
  calls: ShardCalls;
  coordinator: MoveCoordinator;
  store: MasterState;
  log: Logger;
  /** The planner never gives a shard data that would take its disk's use past this fraction of its size. */
  diskHighWater?: number;
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
      // The replica planner (replica-planner.ts) is not driven yet: moving a replica with the single-copy protocol would break its group.
      throw new CairnError(
        'PRECONDITION',
        `this cluster keeps ${state.map.replicationFactor ?? 1} copies of each range, and ${drain ? 'dropserver' : 'rebalance'} does not move replicated ranges yet. ` +
          'The master places copies by itself: to retire a shard, `cairn ctl remserver` it (its copies are made again on the others); ' +
          'a new shard receives copies when a range is short of them',
      );
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
   * Plans and starts a rebalance (or the drain of `drain`). With an
   * `operationId`, a retry of the same call (the first answer was lost) gets
   * the first call's operation and starts nothing; the id used for another
   * kind of call is refused.
   */
  startRebalance(maxMbps: number, drain?: string, operationId = ''): Promise<StartedOperation> {
    const coordinator = this.p.coordinator;
    const what = drain ? `drain of ${drain}` : 'rebalance';
    return this.answerOnce(operationId, what, async () => {
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
      if (coordinator.busy()) throw new CairnError('CONFLICT', 'another rebalance or drain is still running; watch it with `cairn ctl moves`');
      const p = await this.planRebalance(drain);
      if (p.plan.moves.length === 0) return p;
      return { ...p, op: coordinator.start(p.plan, drain ? 'drain' : 'rebalance', maxMbps, operationId || undefined) };
    });
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
