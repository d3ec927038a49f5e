/**
 * Wires a master process: Master state plus the Master and Admin gRPC
 * services, on the shared server assembly (services/common/server.ts: health,
 * reflection, the call gate, and with `metricsListen` Prometheus metrics).
 * The master reports SERVING as soon as it is bound.
 *
 * stop(): NOT_SERVING at once; new calls are refused (retryable UNAVAILABLE)
 * while those in flight get `graceMs` to finish; then the server closes, the
 * move coordinator abandons what still runs at its last journaled step, and
 * the LevelDB store is closed (flushed).
 */
import type { Server } from '@grpc/grpc-js';
import { AdminServiceService } from '../../proto/gen/cairn/v1/admin.js';
import { MasterServiceService } from '../../proto/gen/cairn/v1/master.js';
import type { HandlerEnv } from '../common/grpc.js';
import type { ServingState } from '../common/health.js';
import { deriveTokenKey } from '../common/auth.js';
import { DURATION_BUCKETS, type Metrics } from '../common/metrics.js';
import { serverOptionsOf, startProcessServer, type ServerOptions } from '../common/server.js';
import type { Master, MasterOptions } from './master.js';
import { MasterRole, type EtcdSettings } from './master-role.js';
import { isTerminal } from './moves.js';
import { adminServiceImpl, masterServiceImpl } from './service.js';

/** `mutualTls`: shards' calls must come with a client certificate the CA signed. */
export interface MasterServerOptions extends MasterOptions, ServerOptions {
  /** The address shards and clients dial (default: the bound address): a standby names the leader by it. */
  advertise?: string;
  /** The state in etcd, with standby masters (unset: embedded, or `openState`). */
  etcd?: EtcdSettings;
}

export interface RunningMaster {
  /** Whether this process leads, and its Master while it does. */
  role: MasterRole;
  /** The Master while this process leads; throws NOT_LEADER on a standby. */
  readonly master: Master;
  server: Server;
  /** host:port the server is bound to (the port resolved when listen used :0). */
  address: string;
  /** host:port of the metrics endpoint, when metricsListen was set. */
  metricsAddress?: string;
  /** Health status and the call gate. */
  serving: ServingState;
  metrics?: Metrics;
  stop(graceMs?: number): Promise<void>;
}

export const MASTER_SERVICES = ['cairn.v1.MasterService', 'cairn.v1.AdminService'];

/** A standby's Master and Admin services report NOT_SERVING (with why) while the process is SERVING: a liveness probe never restarts it. */
const LEADER_ONLY_SERVICES = MASTER_SERVICES;

export async function startMasterServer(opts: MasterServerOptions): Promise<RunningMaster> {
  const { etcd, openState, ...masterOpts } = opts;
  // Tests that hold the leadership themselves pass openState: an embedded-style role on that state.
  const role = await MasterRole.open({ master: openState ? ({ ...masterOpts, openState } as MasterOptions) : masterOpts, etcd, log: opts.log });
  const lead = () => role.lead();
  const running = await startProcessServer({
    role: 'master',
    log: opts.log,
    ...serverOptionsOf(opts),
    healthServices: MASTER_SERVICES,
    maxMessageBytes: opts.maxMessageBytes,
    registerMetrics: (metrics) => registerMasterMetrics(metrics, role),
    services: (assembled) => {
      const env: HandlerEnv = {
        ...assembled,
        service: 'master',
        tokenKey: deriveTokenKey(opts.serverCredential),
        // A standby answers NOT_LEADER (naming the leader) before anything else.
        checkClientCall: (claims) => lead().checkClientCall(claims),
        checkServerCall: (claims, method) => lead().checkServerCall(claims, method),
      };
      return [
        [MasterServiceService, masterServiceImpl(lead, env, role)],
        [AdminServiceService, adminServiceImpl(lead, { ...env, service: 'admin' })],
      ];
    },
    servingOnceBound: true,
    // First thing on SIGTERM: a draining master refuses heartbeats, so it must stop judging shards by them.
    onStop: () => role.stopActing(),
    close: () => role.close(),
  });
  const { server, address, metricsAddress, serving, metrics, stop } = running;
  role.begin(opts.advertise && !opts.advertise.endsWith(':0') ? opts.advertise : address);
  role.onStatus((s) => {
    const held = s.leading ? (s.why || null) : s.why || 'standby';
    for (const service of LEADER_ONLY_SERVICES) serving.holdService(service, held);
  });
  return {
    role,
    get master() {
      return role.lead();
    },
    server,
    address,
    metricsAddress,
    serving,
    metrics,
    stop,
  };
}

/** The master's view: the map epoch, every shard's size, and the moves. */
export function registerMasterMetrics(metrics: Metrics, role: MasterRole): void {
  metrics.gauge('cairn_master_leader', '1 while this master leads (a standby, or a leader that lost etcd: 0).', [], (set) => set({}, role.status.leading && !role.status.why ? 1 : 0));
  metrics.gauge('cairn_master_term', 'The term this master leads under (its etcd leadership key\'s create revision; 0 embedded or standby).', [], (set) => set({}, Number(role.status.term || 0)));
  // A standby has no map or moves of its own: those series appear while it leads.
  metrics.gauge('cairn_map_epoch', 'Epoch of the cluster map this process holds.', [], (set) => set({}, Number(role.master()?.epoch ?? 0n)));
  const servers = () => role.master()?.listServers() ?? [];
  metrics.gauge('cairn_shard_bytes', 'Live bytes (keys + values) in the ranges the map gives each shard, from its last heartbeat.', ['shard'], (set) => {
    for (const s of servers()) set({ shard: s.id }, s.bytes);
  });
  metrics.gauge('cairn_shard_rows', 'Live rows in the ranges the map gives each shard, from its last heartbeat.', ['shard'], (set) => {
    for (const s of servers()) set({ shard: s.id }, s.rows);
  });
  metrics.gauge('cairn_shard_ranges', 'Ranges the map gives each shard.', ['shard'], (set) => {
    for (const s of servers()) set({ shard: s.id }, s.ranges);
  });
  metrics.gauge('cairn_shard_up', '1 when the shard is up (heartbeats arrive, not stopping), else 0.', ['shard'], (set) => {
    for (const s of servers()) set({ shard: s.id }, s.status === 'up' ? 1 : 0);
  });

  // Moves, from the coordinator's list (journal + live progress). Moves already
  // in the journal when the master started are not counted again.
  const moves = () => role.master()?.coordinator.listMoves(true) ?? [];
  const copied = new Map<string, number>();
  const fenceSeen = new Set<string>();
  const endSeen = new Set<string>();
  for (const m of moves()) {
    copied.set(m.move.id, m.progress?.transferredBytes ?? m.progress?.copiedBytes ?? m.move.copiedBytes);
    if (isTerminal(m.move.state)) {
      fenceSeen.add(m.move.id);
      endSeen.add(m.move.id);
    }
  }
  // On a replicated cluster a rebalance or drain makes copies (replica-moves.ts): each is a move here too,
  // its bytes counted once it has joined (a learner's snapshot is streamed by its primary, not tracked).
  const copies = () => role.master()?.replicaOperations().flatMap((op) => op.copies) ?? [];
  metrics.gauge('cairn_moves_in_flight', 'Range moves (and replica copies) planned or running: not yet cleaned (committed and the map taken) or aborted.', [], (set) =>
    set({}, moves().filter((m) => !isTerminal(m.move.state)).length + copies().filter((c) => c.state === 'planned' || c.state === 'copying').length),
  );
  metrics.counter('cairn_move_bytes_transferred_total', 'Bytes of range data the destinations have received in moves (and replica copies that joined).', [], (c) => {
    const seen = (id: string, now: number) => {
      const before = copied.get(id) ?? 0;
      if (now > before) c.inc(now - before);
      copied.set(id, Math.max(now, before));
    };
    for (const m of moves()) seen(m.move.id, m.progress?.transferredBytes ?? m.progress?.copiedBytes ?? m.move.copiedBytes);
    for (const x of copies()) seen(x.id, x.state === 'committed' ? x.bytes : 0);
  });
  metrics.counter('cairn_moves_finished_total', 'Range moves that ended, by end state (cleaned or aborted).', ['state'], (c) => {
    for (const m of moves()) {
      if (!isTerminal(m.move.state) || endSeen.has(m.move.id)) continue;
      endSeen.add(m.move.id);
      c.inc({ state: m.move.state });
    }
  });
  metrics.histogram(
    'cairn_move_fence_duration_seconds',
    'Each committed move\'s critical section as the master saw it (destination reported the fenced tail → source took the new map); the source shard\'s cairn_shard_fence_duration_seconds is the time the range refused requests.',
    [],
    DURATION_BUCKETS,
    (h) => {
      for (const m of moves()) {
        if (fenceSeen.has(m.move.id) || m.move.state !== 'cleaned' || !m.progress?.fenceMs) continue;
        fenceSeen.add(m.move.id);
        h.observe(m.progress.fenceMs / 1000);
      }
    },
  );
}
