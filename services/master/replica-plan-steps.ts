/**
 * The replica-aware planner's steps and plan (replica-planner.ts plans), and
 * applyReplicaStep: the map change each step stands for once it has run.
 * Pure. Every step but a split is one change of a range's group and bumps its
 * version by one; a split copies the group to both halves, version unchanged.
 */
import { CairnError } from '../common/errors.js';
import { groupVersionOf, inSyncOf, learnersOf, replicasOf, type MapRange } from '../common/map.js';
import { findRangeIndex, showRange, type HashRange } from '../common/ranges.js';
import type { Plan, PlanOptions } from './plan-types.js';

export interface ReplicaPlanOptions extends PlanOptions {
  /**
   * Down shards given up on (down longer than replicaDownTimeoutMs): their
   * copies are rebuilt elsewhere. Copies on other down shards stay put, and
   * the ranges holding one are left as they are.
   */
  replaceDown?: ReadonlySet<string>;
}

/** One step of a replica plan; `range` is a range of the map as it is when the step runs (after the steps before it). */
export type ReplicaStep =
  /** A pure map change: both halves keep the whole group. */
  | { kind: 'split'; range: HashRange; at: bigint }
  /** `to` joins as a learner, receives a copy from the primary, then joins the in-sync set. */
  | { kind: 'addReplica'; range: HashRange; to: string; bytes: number }
  /** `to` becomes a learner and catches up; then one map step adds it and removes `from` (taking its place, primacy too when `from` was the only in-sync replica). */
  | { kind: 'replaceReplica'; range: HashRange; from: string; to: string; bytes: number }
  /** Primacy moves to `to`, an in-sync replica; no bytes move. */
  | { kind: 'handOver'; range: HashRange; from: string; to: string }
  /** A follower's copy is removed (the factor was lowered, or the range has a copy too many). */
  | { kind: 'dropReplica'; range: HashRange; shard: string };

export interface ReplicaPlan {
  /** In the order they must run; each is valid on the map the steps before it leave. */
  steps: ReplicaStep[];
  /** The map after every step (ranges that were split stay split: merging is not planned). */
  targetMap: MapRange[];
  /** Live bytes of one copy of every range. */
  totalBytes: number;
  /** Bytes copied: the sum over addReplica and replaceReplica steps. */
  movedBytes: number;
  /**
   * A lower bound on the bytes any plan must copy (see replica-planner.ts):
   * the larger of the bytes of the copies that are missing or must leave,
   * and Σ over eligible shards of what each lacks to reach its target load.
   */
  minimumBytes: number;
  basis: Plan['basis'];
}

/** A range with its group written out in full (what every step but a split leaves). */
export function withGroup(r: HashRange, replicas: readonly string[], inSync: readonly string[], learners: readonly string[], version: bigint): MapRange {
  const out: MapRange = { start: r.start, end: r.end, shardId: replicas[0]!, replicas: [...replicas], inSync: [...inSync], version };
  if (learners.length > 0) out.learners = [...learners];
  return out;
}

const fail = (step: ReplicaStep, why: string): never => {
  throw new CairnError('INVALID_ARGUMENT', `${step.kind} on ${showRange(step.range)}: ${why}`);
};

/**
 * The ranges after `step`. Throws CairnError('INVALID_ARGUMENT') when the
 * step does not fit the map: no such range, a shard given a second copy, a
 * hand-over to a replica that is not in sync, a drop of the primary.
 */
export function applyReplicaStep(ranges: readonly MapRange[], step: ReplicaStep): MapRange[] {
  const i = findRangeIndex(ranges, step.range.start);
  const r = ranges[i];
  if (!r || r.start !== step.range.start || r.end !== step.range.end) return fail(step, 'no such range in the map');
  const replicas = [...replicasOf(r)];
  const inSync = inSyncOf(r);
  const learners = learnersOf(r);
  const holds = (s: string): boolean => replicas.includes(s) || learners.includes(s);
  const next = groupVersionOf(r) + 1n;
  let out: MapRange[];
  switch (step.kind) {
    case 'split':
      if (!(step.at > r.start && step.at < r.end)) return fail(step, `${step.at} is not inside the range`);
      out = [{ ...r, end: step.at }, { ...r, start: step.at }];
      break;
    case 'addReplica':
      if (holds(step.to)) return fail(step, `${step.to} already holds a copy`);
      out = [withGroup(r, [...replicas, step.to], [...inSync, step.to], learners, next)];
      break;
    case 'replaceReplica': {
      const at = replicas.indexOf(step.from);
      if (at < 0) return fail(step, `${step.from} is not a replica`);
      if (holds(step.to)) return fail(step, `${step.to} already holds a copy`);
      if (at === 0 && inSync.some((s) => s !== step.from)) return fail(step, `${step.from} is the primary and must hand over first`);
      replicas[at] = step.to;
      out = [withGroup(r, replicas, [...inSync.filter((s) => s !== step.from), step.to], learners, next)];
      break;
    }
    case 'handOver':
      if (replicas[0] !== step.from) return fail(step, `${step.from} is not the primary`);
      if (step.to === step.from || !inSync.includes(step.to)) return fail(step, `${step.to} is not another in-sync replica`);
      out = [withGroup(r, [step.to, ...replicas.filter((s) => s !== step.to)], inSync, learners, next)];
      break;
    case 'dropReplica':
      if (replicas[0] === step.shard) return fail(step, `${step.shard} is the primary`);
      if (!replicas.includes(step.shard)) return fail(step, `${step.shard} is not a replica`);
      out = [withGroup(r, replicas.filter((s) => s !== step.shard), inSync.filter((s) => s !== step.shard), learners, next)];
      break;
  }
  return [...ranges.slice(0, i), ...out, ...ranges.slice(i + 1)];
}
