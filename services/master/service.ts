/**
 * Thin gRPC handlers for the Master and Admin services: validate, delegate to
 * Master, fill the header. Errors go through the one table in grpc.ts.
 */
import type { UntypedServiceImplementation } from '@grpc/grpc-js';
import type { AdminServiceServer, MoveInfo, Plan as PlanProto } from '../../proto/gen/cairn/v1/admin.js';
import type { MasterServiceServer } from '../../proto/gen/cairn/v1/master.js';
import { parseHostPort } from '../common/config.js';
import { CairnError, invalidArgument } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import { serverStream, unary, type HandlerEnv } from '../common/grpc.js';
import { endFromProto, endToProto } from '../common/hash.js';
import { groupVersionOf, inSyncOf, learnersOf, mapToProto, replicasOf } from '../common/map.js';
import type { Master } from './master.js';
import type { ReplicaOperation } from './replica-moves.js';
import type { MoveProgress } from './coordinator.js';
import type { Move } from './moves.js';
import type { Plan } from './planner.js';

/** A move throttle no link reaches (1 TB/s); above it the bytes-per-second figure stops fitting the wire's uint64. */
const MAX_MOVE_MBPS = 1_000_000;

function checkMaxMbps(mbps: number): void {
  if (!(mbps >= 0) || !(mbps <= MAX_MOVE_MBPS)) throw invalidArgument(`max_mbps: must be between 0 (no limit) and ${MAX_MOVE_MBPS}, got ${mbps}`);
}

const MAX_COUNT = Number.MAX_SAFE_INTEGER;

/** A DNS name (253) plus a colon and a port, with room for IPv6 brackets. */
const MAX_ADDRESS_CHARS = 262;

/** As the shards' move_id limit: a shard asks only about ids it accepted. */
const MAX_MOVE_ID_CHARS = 200;

/** Shard, cluster and session ids are short tokens the processes make themselves. */
const MAX_ID_CHARS = 64;

function checkId(field: string, value: string, required = false): void {
  if (required && !value) throw invalidArgument(`${field}: must not be empty (a shard makes one at each start)`);
  if (value.length > MAX_ID_CHARS) throw invalidArgument(`${field}: ${value.length} characters, over the limit of ${MAX_ID_CHARS}`);
}

/** A caller-chosen operation id: short, and made of characters that print and log plainly. */
const OPERATION_ID_RE = /^[A-Za-z0-9._:-]{1,64}$/;

function checkOperationId(value: string): void {
  if (value && !OPERATION_ID_RE.test(value)) {
    throw invalidArgument(`operation_id: expected up to 64 letters, digits, '.', '_', ':' or '-', got ${JSON.stringify(value.slice(0, 80))}`);
  }
}

/** A heartbeat's per-range counts, checked: a range inside the hash space, counts a master can add up and report. */
function heartbeatRanges(ranges: Array<{ start: bigint; end: bigint; rows: bigint; bytes: bigint }>) {
  return ranges.map((r, i) => {
    const end = endFromProto(r.end);
    if (r.start >= end) throw invalidArgument(`ranges[${i}]: start ${r.start} must be below end ${r.end === 0n ? '2^64' : r.end}`);
    if (r.rows > BigInt(MAX_COUNT)) throw invalidArgument(`ranges[${i}].rows: ${r.rows} is over ${MAX_COUNT}`);
    if (r.bytes > BigInt(MAX_COUNT)) throw invalidArgument(`ranges[${i}].bytes: ${r.bytes} is over ${MAX_COUNT}`);
    return { start: r.start, end, rows: Number(r.rows), bytes: Number(r.bytes) };
  });
}

/** A range of a heartbeat's replica reports; a bad one is refused naming the list. */
function rangeFromWire(start: bigint, protoEnd: bigint, field: string): { start: bigint; end: bigint } {
  const end = endFromProto(protoEnd);
  if (start >= end) throw invalidArgument(`${field}: start ${start} must be below end ${protoEnd === 0n ? '2^64' : protoEnd}`);
  return { start, end };
}

function planToProto(p: { plan: Plan; before: Map<string, number>; after: Map<string, number> }, shardIds: string[]): PlanProto {
  const total = [...p.after.values()].reduce((a, b) => a + b, 0);
  return {
    moves: p.plan.moves.map((m) => ({ start: m.start, end: endToProto(m.end), from: m.from, to: m.to, bytes: BigInt(m.bytes), rows: BigInt(m.rows) })),
    movedBytes: BigInt(p.plan.movedBytes),
    totalBytes: BigInt(p.plan.totalBytes),
    minimumBytes: BigInt(Math.round(p.plan.minimumBytes)),
    shards: shardIds.map((id) => ({
      shardId: id,
      bytesBefore: BigInt(p.before.get(id) ?? 0),
      bytesAfter: BigInt(p.after.get(id) ?? 0),
      shareAfter: total ? (p.after.get(id) ?? 0) / total : 0,
    })),
  };
}

export function moveToInfo(x: { move: Move; operationId: string; progress?: MoveProgress }): MoveInfo {
  const m = x.move;
  return {
    id: m.id,
    operationId: x.operationId,
    start: m.start,
    end: endToProto(m.end),
    from: m.from,
    to: m.to,
    bytes: BigInt(m.bytes),
    copiedBytes: BigInt(Math.round(x.progress?.copiedBytes ?? m.copiedBytes)),
    state: m.state,
    error: m.error ?? '',
    history: m.history.map((h) => ({ state: h.state, atMs: BigInt(h.at) })),
    bytesPerSec: x.progress?.bytesPerSec ?? 0,
    fenceMs: x.progress?.fenceMs ?? 0,
  };
}

/** The copies of a replica operation (replica-moves.ts), each shown as a move from the copy it replaces (or the primary) to its new shard. */
export function replicaCopiesToInfo(op: ReplicaOperation): MoveInfo[] {
  return op.copies.map((c) => ({
    id: c.id,
    operationId: op.id,
    start: c.range.start,
    end: endToProto(c.range.end),
    from: c.from ?? '',
    to: c.to,
    bytes: BigInt(c.bytes),
    copiedBytes: BigInt(c.state === 'committed' ? c.bytes : 0),
    state: c.state,
    error: c.error ?? '',
    history: c.history.map((h) => ({ state: h.state, atMs: BigInt(h.at) })),
    bytesPerSec: 0,
    fenceMs: 0,
  }));
}

/** `lead()`: the master that leads in this process, or a NOT_LEADER naming the leader (a standby). */
/** What GetMasterStatus answers: this master's own view of the leadership (MasterRole). */
export interface MasterStatusSource {
  status: { leading: boolean; leaderAddress: string; term: string; why: string };
  selfAddress: string;
}

export function masterServiceImpl(lead: () => Master, env: HandlerEnv, role: MasterStatusSource): MasterServiceServer & UntypedServiceImplementation {
  const header = () => {
    const m = lead();
    return { nodeId: m.nodeId, epoch: m.epoch };
  };
  return {
    registerShard: unary(env, 'RegisterShard', 'server', async (req) => {
      if (!req.address) throw invalidArgument('address: must be the host:port other processes use to reach the shard');
      if (req.address.length > MAX_ADDRESS_CHARS) throw invalidArgument(`address: ${req.address.length} characters, over the limit of ${MAX_ADDRESS_CHARS}`);
      checkId('shard_id', req.shardId);
      checkId('cluster_id', req.clusterId);
      checkId('session_id', req.sessionId, true);
      if (req.generation > BigInt(MAX_COUNT)) throw invalidArgument(`generation: ${req.generation} is over ${MAX_COUNT}`);
      const { shardId, map } = await lead().register({
        shardId: req.shardId,
        address: req.address,
        clusterId: req.clusterId,
        epoch: req.epoch,
        generation: Number(req.generation),
        sessionId: req.sessionId,
      });
      return { header: header(), shardId, map: mapToProto(map), heartbeatIntervalMs: lead().heartbeatIntervalMs, revocations: revocationsToProto(lead) };
    }),
    heartbeat: unary(env, 'Heartbeat', 'server', async (req) => {
      if (!req.shardId) throw invalidArgument('shard_id: must not be empty');
      if (!(req.opsPerSec >= 0) || !Number.isFinite(req.opsPerSec)) throw invalidArgument(`ops_per_sec: must be a finite number >= 0, got ${req.opsPerSec}`);
      const ranges = heartbeatRanges(req.ranges);
      checkId('session_id', req.sessionId, true);
      if (req.diskFreeBytes > req.diskTotalBytes) throw invalidArgument(`disk_free_bytes: ${req.diskFreeBytes} is more than disk_total_bytes (${req.diskTotalBytes})`);
      const disk = { freeBytes: Number(req.diskFreeBytes), totalBytes: Number(req.diskTotalBytes), full: req.diskFull };
      const range = (r: { start: bigint; end: bigint }) => rangeFromWire(r.start, r.end, 'replicas, overdue, caught_up or primary_unheard');
      const note = (n: { start: bigint; end: bigint; version: bigint; follower: string }) => ({ range: range(n), version: n.version, follower: n.follower });
      lead().heartbeat(req.shardId, {
        sessionId: req.sessionId,
        epoch: req.epoch,
        opsPerSec: req.opsPerSec,
        stopping: req.stopping,
        ranges,
        disk,
        replicas: req.replicas.map((p) => ({ range: range(p), lastLsn: p.lastLsn, lastTerm: p.lastTerm })),
        overdue: req.overdue.map(note),
        caughtUp: req.caughtUp.map(note),
        primaryUnheard: req.primaryUnheard.map((n) => {
          if (n.follower !== req.shardId) throw invalidArgument(`primary_unheard: a shard reports only what it heard itself; follower ${n.follower} is not ${req.shardId}`);
          return note(n);
        }),
      });
      return { header: header(), revocations: revocationsToProto(lead) };
    }),
    getMap: unary(env, 'GetMap', 'r', async () => ({ header: header(), map: mapToProto(lead().currentMap()) })),
    watchMap: serverStream(env, 'WatchMap', 'r', async (req, ctx, send) => {
      let pending: Promise<void> = Promise.resolve();
      let finish!: () => void;
      const ended = new Promise<void>((resolve) => (finish = resolve));
      const forward = (m: ReturnType<Master['currentMap']>) => {
        if (m.epoch <= req.minEpoch) return;
        pending = pending.then(() => send({ header: header(), map: mapToProto(m) })).catch(() => finish());
      };
      const leader = lead();
      const stop = leader.watch(forward);
      forward(leader.currentMap());
      // A master that stops leading ends the stream: the client asks again and finds the leader.
      const poll = setInterval(() => (ctx.cancelled() || leader.closed) && finish(), 500);
      try {
        await ended;
      } finally {
        clearInterval(poll);
        stop();
      }
    }),
    login: unary(env, 'Login', null, async (req, ctx) => {
      if (!req.user) throw invalidArgument('user: must not be empty');
      const t = await lead().login(req.user, req.password, { peer: ctx.peer, deadline: ctx.deadline, cancelled: ctx.cancelled });
      return { header: header(), token: t.token, expiresAtMs: BigInt(t.expiresAtMs), role: t.role };
    }),
    // No token and no lead(): a standby answers it too, saying who leads and why it does not.
    getMasterStatus: unary(env, 'GetMasterStatus', null, async () => {
      const s = role.status;
      return { leading: s.leading, leaderAddress: s.leaderAddress, term: s.term, why: s.why, address: role.selfAddress };
    }),
    getMoveStatus: unary(env, 'GetMoveStatus', 'server', async (req) => {
      if (!req.moveId) throw invalidArgument('move_id: must not be empty');
      if (req.moveId.length > MAX_MOVE_ID_CHARS) throw invalidArgument(`move_id: ${req.moveId.length} characters, over the limit of ${MAX_MOVE_ID_CHARS}`);
      const s = lead().coordinator.moveStatus(req.moveId);
      return { header: header(), known: s.known, state: s.state };
    }),
  };
}

export function adminServiceImpl(lead: () => Master, env: HandlerEnv): AdminServiceServer & UntypedServiceImplementation {
  const header = () => {
    const m = lead();
    return { nodeId: m.nodeId, epoch: m.epoch };
  };
  return {
    listServers: unary(env, 'ListServers', 'admin', async () => ({
      header: header(),
      servers: lead().listServers().map((s) => ({
        ...s,
        bytes: BigInt(s.bytes),
        rows: BigInt(s.rows),
        lastHeartbeatMs: BigInt(s.lastHeartbeatMs),
        diskFreeBytes: BigInt(s.diskFreeBytes),
        diskTotalBytes: BigInt(s.diskTotalBytes),
      })),
    })),
    planRebalance: unary(env, 'PlanRebalance', 'admin', async (req) => {
      const p = await lead().planRebalance(req.drain || undefined);
      return { header: header(), plan: planToProto(p, lead().listServers().map((s) => s.id)) };
    }),
    startRebalance: unary(env, 'StartRebalance', 'admin', async (req) => {
      checkMaxMbps(req.maxMbps);
      checkOperationId(req.operationId);
      const r = await lead().startRebalance(req.maxMbps, undefined, req.operationId);
      failpoint('master-admin-answer'); // `lose`: the operation started, its answer did not arrive
      return { header: header(), operationId: r.op?.id ?? '', plan: planToProto(r, lead().listServers().map((s) => s.id)) };
    }),
    dropServer: unary(env, 'DropServer', 'admin', async (req) => {
      if (!req.server) throw invalidArgument('server: name the shard by id or host:port');
      checkMaxMbps(req.maxMbps);
      checkOperationId(req.operationId);
      const r = await lead().startRebalance(req.maxMbps, req.server, req.operationId);
      failpoint('master-admin-answer');
      return { header: header(), operationId: r.op?.id ?? '', plan: planToProto(r, lead().listServers().map((s) => s.id)) };
    }),
    removeServer: unary(env, 'RemoveServer', 'admin', async (req) => {
      if (!req.server) throw invalidArgument('server: name the shard by id or host:port');
      checkOperationId(req.operationId);
      const r = await lead().removeServer(req.server, req.operationId);
      failpoint('master-admin-answer'); // `crash`: the removal is durable and the master dies before it answers
      return { header: header(), shardId: r.shardId, stopped: r.stopped };
    }),
    addServer: unary(env, 'AddServer', 'admin', async (req) => {
      if (req.address.length > MAX_ADDRESS_CHARS) throw invalidArgument(`address: ${req.address.length} characters, over the ${MAX_ADDRESS_CHARS} a host:port can have`);
      try {
        parseHostPort(req.address, { allowPortZero: false });
      } catch (err) {
        throw invalidArgument(`address: ${(err as Error).message}`);
      }
      return { header: header(), approvalRequired: await lead().addServer(req.address) };
    }),
    syncMap: unary(env, 'SyncMap', 'admin', async () => {
      const { failed } = await lead().pushMapToAll();
      return { header: header(), failed: failed.map((f) => ({ shardId: f.id, error: f.error })), synced: lead().listServers().length - failed.length };
    }),
    listMoves: unary(env, 'ListMoves', 'admin', async (req) => ({
      header: header(),
      moves: [
        ...lead().coordinator.listMoves(req.all).map(moveToInfo),
        ...lead().replicaOperations().flatMap((op) => replicaCopiesToInfo(op).filter((m) => req.all || m.state === 'planned' || m.state === 'copying')),
      ],
    })),
    watchOperation: serverStream(env, 'WatchOperation', 'admin', async (req, ctx, send) => {
      const replicaOp = lead().replicaOperation(req.operationId);
      if (replicaOp) {
        while (!ctx.cancelled()) {
          const done = replicaOp.finished;
          await send({ header: header(), moves: replicaCopiesToInfo(replicaOp), done });
          if (done) return;
          await Promise.race([replicaOp.done, new Promise((r) => setTimeout(r, 250))]);
        }
        return;
      }
      const op = lead().coordinator.operation(req.operationId);
      if (!op) throw new CairnError('NOT_FOUND', `operation_id: no operation "${req.operationId}" on this master`);
      let finished = false;
      void op.done.then(() => (finished = true));
      while (!ctx.cancelled()) {
        const done = finished;
        await send({ header: header(), moves: lead().coordinator.movesOf(op).map(moveToInfo), done });
        if (done) return;
        await Promise.race([op.done, new Promise((r) => setTimeout(r, 250))]);
      }
    }),
    recoverMove: unary(env, 'RecoverMove', 'admin', async (req) => {
      if (!req.moveId) throw invalidArgument('move_id: must not be empty');
      const r = await lead().coordinator.recover(req.moveId);
      const info = lead().coordinator.listMoves(true).find((x) => x.move.id === req.moveId)!;
      return { header: header(), move: moveToInfo({ ...info, move: r.move }), action: r.action };
    }),
    setReplicationFactor: unary(env, 'SetReplicationFactor', 'admin', async (req) => {
      if (req.factor < 1) throw invalidArgument(`factor: must be 1 or more, got ${req.factor}`);
      const r = await lead().setReplicationFactor(req.factor);
      return { header: header(), ...r };
    }),
    reload: unary(env, 'Reload', 'admin', async () => {
      const r = await lead().reload();
      const c = r.change;
      return {
        header: header(),
        users: r.users,
        added: c.added,
        removed: c.removed,
        lowered: c.lowered,
        raised: c.raised,
        passwordChanged: c.passwordChanged,
        restartNeeded: r.restartNeeded,
        revoked: c.revoked,
      };
    }),
    getRanges: unary(env, 'GetRanges', 'admin', async () => ({
      header: header(),
      ranges: lead().getRanges().map((r) => ({
        start: r.start,
        end: endToProto(r.end),
        shardId: r.shardId,
        address: r.address,
        bytes: BigInt(r.bytes),
        rows: BigInt(r.rows),
        replicas: [...replicasOf(r)],
        inSync: [...inSyncOf(r)],
        learners: [...learnersOf(r)],
        version: groupVersionOf(r),
      })),
    })),
  };
}

function revocationsToProto(lead: () => Master) {
  return lead().tokenRevocations().map((r) => ({ user: r.user, notBeforeMs: BigInt(r.notBeforeMs) }));
}
