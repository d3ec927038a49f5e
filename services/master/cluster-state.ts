/**
 * The master's durable state in memory: the cluster map, the cluster id and
 * the shard registry, and the one way they change. State changes are
 * serialized (`serial`) and written durably (MasterState: synced, or committed by etcd) before they
 * take effect, are acknowledged or are pushed; the map always tiles
 * [0, 2^64) once it exists (docs/design.md "The map and epochs").
 *
 * A durable write that fails halts the master (`durably`): its outcome is
 * unknown, so the master acts no more and the process exits.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'winston';
import { CairnError } from '../common/errors.js';
import { failpoint } from '../common/failpoints.js';
import { EMPTY_MAP, mapError, type ClusterMap } from '../common/map.js';
import { reassign, rangesOverlap } from '../common/ranges.js';
import { AmbiguousWrite } from './coordinator.js';
import type { Move } from './moves.js';
import type { AdminOpRecord, MasterState, Registry, ShardRecord } from './meta-store.js';

/** Serializes async state changes so each is one durable step after the previous. */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}

/** What the state tells the rest of the master. */
export interface ClusterStateHooks {
  /** A durable write failed: stop acting (the coordinator abandons its moves). */
  onHalt(): void;
  /** Called once with the error of the first failed durable write (MasterOptions.onFatal). */
  onFatal?(err: Error): void;
  /** A new map was committed and the watchers told: push it to the shards. */
  onCommit(): void;
}

export class ClusterState {
  map: ClusterMap = EMPTY_MAP;
  /** Made once when the cluster forms; '' until then. */
  clusterId = '';
  shards: ShardRecord[] = [];
  /** Ids removed with remserver; a process still holding one may not register again with it. */
  removed = new Set<string>();
  nextShardNumber = 1;
  readonly serial = new Serial();
  closed = false;
  /** Set once a durable write failed: the master acts no more (see MasterOptions.onFatal). */
  private halted: Error | undefined;
  private readonly watchers = new Set<(m: ClusterMap) => void>();

  constructor(
    private readonly store: MasterState,
    private readonly log: Logger,
    private readonly hooks: ClusterStateHooks,
  ) {}

  /**
   * Reads the stored map and registry. State written before clusters had
   * ids gets one now (durably); its shards adopt it when they register.
   */
  async load(): Promise<void> {
    const state = await this.store.load();
    this.shards = state.shards;
    this.nextShardNumber = state.nextShardNumber;
    this.removed = new Set(state.removed);
    this.clusterId = state.clusterId;
    if (state.map) {
      const err = mapError(state.map);
      if (err) throw new Error(`stored map is invalid: ${err}`);
      this.map = state.map;
    }
    if (this.map.epoch > 0n && !this.clusterId) {
      this.clusterId = newClusterId();
      await this.store.save({ ...this.registry() });
      this.log.info('cluster id minted for a cluster formed before cluster ids', { clusterId: this.clusterId, epoch: this.map.epoch.toString() });
    }
    this.map = { ...this.map, clusterId: this.clusterId };
  }

  /** Throws NOT_READY once a durable write failed (a call that would change state). */
  checkNotHalted(): void {
    if (this.halted) throw new CairnError('NOT_READY', 'the master stopped after a failed durable write; it must be restarted', { retryAfterMs: 1000 });
  }

  /** Subscribes to committed maps; returns the unsubscribe function. */
  watch(fn: (m: ClusterMap) => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  /**
   * Runs one durable write of the master's state. A write that fails has an
   * unknown outcome (an fsync error may follow a write that reached the disk),
   * so the master halts instead of guessing: it acts no more, and the process
   * exits (onFatal); the restarted master reads what is really on disk.
   */
  async durably<T>(what: string, write: () => Promise<T>): Promise<T> {
    if (this.halted) throw new AmbiguousWrite(`the master stopped after a failed durable write (${this.halted.message}); restart it`);
    try {
      return await write();
    } catch (err) {
      const e = err as Error;
      this.halted = e;
      this.closed = true;
      this.log.error('a durable write of the master state failed; its outcome is unknown, so the master stops: restart it to carry on from what is on disk', {
        write: what,
        error: e.message,
      });
      this.hooks.onHalt();
      this.hooks.onFatal?.(e);
      throw new AmbiguousWrite(`${what}: the durable write failed (${e.message}); its outcome is unknown and the master stopped`);
    }
  }

  /** Tells each watcher; a watcher that throws is logged, never allowed to fail the step that committed. */
  private publish(next: ClusterMap): void {
    for (const w of this.watchers) {
      try {
        w(next);
      } catch (err) {
        this.log.warn('a map watcher failed', { epoch: next.epoch.toString(), error: (err as Error).message });
      }
    }
    this.hooks.onCommit();
  }

  /** The one place a new map becomes current: validate, persist (synced), publish. */
  async commitMap(next: ClusterMap, adminOps: Array<{ id: string; json: AdminOpRecord }> = []): Promise<void> {
    const err = mapError(next);
    if (err) throw new CairnError('INTERNAL', `refusing to commit an invalid map: ${err}`);
    if (next.epoch !== this.map.epoch + 1n) throw new CairnError('INTERNAL', `map epoch must grow by one: ${this.map.epoch} -> ${next.epoch}`);
    await this.durably(`map epoch ${next.epoch}`, () => this.store.save({ map: next, ...this.registry(), adminOps }));
    this.map = next;
    this.log.info('map committed', { epoch: next.epoch.toString(), ranges: next.ranges.length });
    this.publish(next);
  }

  /** The current map again, one epoch on, with the registry's shards (after a shard joined, moved or left). */
  commitShards(adminOps: Array<{ id: string; json: AdminOpRecord }> = []): Promise<void> {
    return this.commitMap({ ...this.map, epoch: this.map.epoch + 1n, shards: this.shardRefs() }, adminOps);
  }

  /** Saves the registry alone (no map change). */
  saveRegistry(what: string, adminOps: Array<{ id: string; json: AdminOpRecord }> = []): Promise<void> {
    return this.durably(`registry (${what})`, () => this.store.save({ ...this.registry(), adminOps }));
  }

  /**
   * A move's commit: the map with the range given to the destination, and
   * the move's journal record, in ONE synced batch (docs/design.md "Moving data", step 5).
   */
  commitMove(move: Move, journal: unknown): Promise<void> {
    return this.serial.run(async () => {
      const r = { start: move.start, end: move.end };
      const stray = this.map.ranges.find((x) => rangesOverlap(x, r) && x.shardId !== move.from);
      if (stray) throw new CairnError('INTERNAL', `cannot commit move ${move.id}: [${stray.start}, ${stray.end}) is owned by ${stray.shardId}, not ${move.from}`);
      const next: ClusterMap = { ...this.map, epoch: this.map.epoch + 1n, ranges: reassign(this.map.ranges, r, move.to) };
      const err = mapError(next);
      if (err) throw new CairnError('INTERNAL', `refusing to commit an invalid map: ${err}`);
      await this.durably(`commit of move ${move.id}`, async () => {
        await this.store.save({ map: next, ...this.registry(), moves: [{ id: move.id, json: journal }] });
        failpoint('master-after-commit-write'); // `error` here: the batch is durable but the write reports a failure (an fsync error)
      });
      this.map = next;
      this.log.info('map committed', { epoch: next.epoch.toString(), ranges: next.ranges.length, moveId: move.id });
      this.publish(next);
    });
  }

  registry(): Registry {
    return { clusterId: this.clusterId, shards: this.shards, nextShardNumber: this.nextShardNumber, removed: [...this.removed] };
  }

  shardRefs() {
    return this.shards.map((s) => ({ id: s.id, address: s.address }));
  }

  shard(id: string): ShardRecord | undefined {
    return this.shards.find((s) => s.id === id);
  }

  /** Finds a shard by id or by advertised host:port. */
  resolveShard(server: string): ShardRecord {
    const s = this.shards.find((x) => x.id === server || x.address === server);
    if (!s) throw new CairnError('NOT_FOUND', `no shard "${server}"; \`cairn ctl servers\` lists ids and addresses`);
    return s;
  }

  /** Stops taking watchers and waits for the state change under way. */
  async close(): Promise<void> {
    this.closed = true;
    this.watchers.clear();
    await this.serial.run(async () => undefined);
  }
}

/** A cluster id: made once when a cluster forms, kept by the master and every shard. */
export const newClusterId = (): string => `c-${randomBytes(8).toString('hex')}`;
