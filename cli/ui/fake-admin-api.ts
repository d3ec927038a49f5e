/**
 * A scripted AdminApi for the console's tests: a cluster held in memory, a
 * call log, errors on demand, and operations whose progress the test pushes.
 */
import { CairnError } from '../../services/common/errors.js';
import { HASH_SPACE_END } from '../../services/common/hash.js';
import type { MoveView, PlanView, RangeRow, ServerRow, Snapshot } from './model.js';
import type { AdminApi, OperationStart, OperationUpdate, Recovered } from './session.js';

export const HALF = HASH_SPACE_END / 2n;

export function server(id: string, i: number, o: Partial<ServerRow> = {}): ServerRow {
  return { id, address: `10.0.0.${i + 1}:7001`, status: 'up', bytes: 1024 * 1024, rows: 5000, ranges: 1, share: 0.5, opsPerSec: 12, lastHeartbeatMs: 1_000, diskFreeBytes: 8 * 2 ** 30, diskTotalBytes: 16 * 2 ** 30, diskFull: false, ...o };
}

/** A range held by `replicas` (the primary first), every copy in sync unless `o.inSync` says which are. */
export function groupRange(start: bigint, end: bigint, replicas: string[], o: { inSync?: string[]; learners?: string[] } = {}): RangeRow {
  const primary = replicas[0]!;
  return { start, end, shard: primary, address: `10.0.0.${primary.slice(1)}:7001`, bytes: 1_048_576, rows: 5000, replicas, inSync: o.inSync ?? replicas, learners: o.learners ?? [] };
}

/** A shard's copies as the master counts them from the map: the test changes the groups, the counts follow. */
function copiesOf(id: string, ranges: RangeRow[]): Pick<ServerRow, 'primaries' | 'followers' | 'learners'> {
  const count = (has: (r: RangeRow) => boolean) => ranges.filter(has).length;
  return {
    primaries: count((r) => r.shard === id),
    followers: count((r) => r.shard !== id && (r.replicas ?? []).includes(id)),
    learners: count((r) => (r.learners ?? []).includes(id)),
  };
}

/**
 * A replicated cluster for FakeAdminApi (`Object.assign(api, replicatedCluster())`):
 * three shards, factor 3, three ranges each held by all three, each shard the
 * primary of one. The tests then change a group to stage a failover or a
 * re-replication.
 */
export function replicatedCluster(): Pick<FakeAdminApi, 'servers' | 'ranges' | 'replicationFactor'> {
  const third = HASH_SPACE_END / 3n;
  const ids = ['s1', 's2', 's3'];
  return {
    servers: ids.map((id, i) => server(id, i, { ranges: 1, share: 1 / 3, primaries: 1, followers: 2, learners: 0 })),
    ranges: [groupRange(0n, third, ['s1', 's2', 's3']), groupRange(third, 2n * third, ['s2', 's3', 's1']), groupRange(2n * third, HASH_SPACE_END, ['s3', 's1', 's2'])],
    replicationFactor: 3,
  };
}

export function moveOf(o: Partial<MoveView> = {}): MoveView {
  return { id: 'mv-1', operationId: 'op-1', from: 's1', to: 's3', state: 'copying', bytes: 1_000_000, copiedBytes: 0, bytesPerSec: 0, ...o };
}

export const PLAN: PlanView = {
  moves: [
    { start: 0n, end: HALF / 3n, from: 's1', to: 's3', bytes: 349_525, rows: 1666 },
    { start: HALF, end: HALF + HALF / 3n, from: 's2', to: 's3', bytes: 349_525, rows: 1667 },
  ],
  movedBytes: 699_050,
  totalBytes: 2_097_152,
  minimumBytes: 699_050,
  shards: [
    { id: 's1', bytesBefore: 1_048_576, bytesAfter: 699_051, shareAfter: 1 / 3 },
    { id: 's2', bytesBefore: 1_048_576, bytesAfter: 699_051, shareAfter: 1 / 3 },
    { id: 's3', bytesBefore: 0, bytesAfter: 699_050, shareAfter: 1 / 3 },
  ],
};

/** An async queue: the test pushes updates, the console reads them. */
class Channel<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: Array<(r: IteratorResult<T>) => void> = [];
  private ended = false;
  returned = false;
  push(item: T): void {
    const w = this.waiting.shift();
    if (w) w({ value: item, done: false });
    else this.items.push(item);
  }
  end(): void {
    this.ended = true;
    for (const w of this.waiting.splice(0)) w({ value: undefined as never, done: true });
  }
  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.items.length) return Promise.resolve({ value: this.items.shift()!, done: false });
        if (this.ended) return Promise.resolve({ value: undefined as never, done: true });
        return new Promise((resolve) => this.waiting.push(resolve));
      },
      return: () => {
        this.returned = true;
        return Promise.resolve({ value: undefined as never, done: true });
      },
    };
  }
}

export class FakeAdminApi implements AdminApi {
  readonly master = '127.0.0.1:7000';
  readonly user = 'ops';
  password = 'secret';
  reachable = true;
  connected = false;
  /** Every call, in order: `connect`, `snapshot`, `plan:s1`, `start:rebalance`… */
  calls: string[] = [];
  /** Errors to throw instead of answering, by call name. */
  refuse = new Map<string, CairnError>();
  epoch = 3n;
  servers: ServerRow[] = [server('s1', 0), server('s2', 1)];
  ranges: RangeRow[] = [
    { start: 0n, end: HALF, shard: 's1', address: '10.0.0.1:7001', bytes: 1_048_576, rows: 5000 },
    { start: HALF, end: HASH_SPACE_END, shard: 's2', address: '10.0.0.2:7001', bytes: 1_048_576, rows: 5000 },
  ];
  inFlight: MoveView[] = [];
  /** As the real console reads it from the client's map (undefined: not known). */
  replicationFactor: number | undefined;
  planResult: PlanView = PLAN;
  /** When set, plan() waits for it (a slow master). */
  planGate: Promise<void> | undefined;
  /** The progress of the operations started, by id. */
  operations = new Map<string, Channel<OperationUpdate>>();

  private check(name: string): void {
    this.calls.push(name);
    const err = this.refuse.get(name.split(':')[0]!);
    if (err) throw err;
    if (name !== 'connect' && !this.connected) throw new CairnError('NOT_READY', 'not connected');
  }

  async connect(password: string): Promise<void> {
    this.check('connect');
    if (!this.reachable) throw new CairnError('NOT_READY', `No connection established. Last error: Error: connect ECONNREFUSED ${this.master}. Resolution note: `);
    if (password !== this.password) throw new CairnError('UNAUTHENTICATED', 'login failed: unknown user or wrong password');
    this.connected = true;
  }

  async snapshot(): Promise<Snapshot> {
    this.check('snapshot');
    const at = Date.now();
    const servers = this.servers.map((s) => ({ ...s, ...copiesOf(s.id, this.ranges), lastHeartbeatMs: s.lastHeartbeatMs && at - 200 }));
    return { epoch: this.epoch, servers, ranges: this.ranges, moves: this.inFlight, at, replicationFactor: this.replicationFactor };
  }

  async plan(drain?: string): Promise<PlanView> {
    this.check(`plan:${drain ?? ''}`);
    await this.planGate;
    return this.planResult;
  }

  async start(kind: 'rebalance' | 'dropserver', o: { server?: string; maxMbps?: number }): Promise<OperationStart> {
    this.check(`start:${kind}:${o.server ?? ''}:${o.maxMbps ?? ''}`);
    const id = `op-${this.operations.size + 1}`;
    this.operations.set(id, new Channel());
    return { operationId: id, plan: this.planResult };
  }

  watch(operationId: string): AsyncIterable<OperationUpdate> {
    this.calls.push(`watch:${operationId}`);
    return this.operations.get(operationId)!;
  }

  async moves(all: boolean): Promise<MoveView[]> {
    this.check(`moves:${all}`);
    return this.inFlight;
  }

  async removeServer(s: string): Promise<{ shardId: string; stopped: boolean }> {
    this.check(`removeServer:${s}`);
    return { shardId: s, stopped: true };
  }

  async addServer(address: string): Promise<{ approvalRequired: boolean }> {
    this.check(`addServer:${address}`);
    return { approvalRequired: true };
  }

  async sync(): Promise<{ epoch: bigint; synced: number; failed: Array<{ shardId: string; error: string }> }> {
    this.check('sync');
    return { epoch: this.epoch, synced: 2, failed: [] };
  }

  async recover(moveId: string): Promise<Recovered> {
    this.check(`recover:${moveId}`);
    return {
      move: { ...moveOf({ id: moveId, state: 'aborted' }), start: 0n, end: HALF, history: [{ state: 'planned', atMs: 0 }, { state: 'aborted', atMs: 1000 }] },
      action: 'aborted: source fence lifted, destination copy dropped',
    };
  }

  close(): void {
    this.calls.push('close');
    this.connected = false;
  }
}
