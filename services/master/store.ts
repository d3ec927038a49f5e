/**
 * The master's durable state in its own LevelDB: the map, the shard registry,
 * approvals, and the move journal. Every write is synced: an acknowledged map
 * change or journal step survives a crash. A move's commit writes the new map
 * and the move's `committed` state in ONE batch, so there is no moment where
 * one is durable without the other.
 */
import { Level } from 'level';
import { openDataDir } from '../common/datadir.js';
import type { AppliedClient, Revocation } from './client-list.js';
import type { AdminOpRecord, ClientState, MasterState, StateSave, StoredState } from './meta-store.js';
import * as form from './state-form.js';

const puts = (entries: Array<[string, string]>) => entries.map(([key, value]) => ({ type: 'put' as const, key, value }));

/** The embedded implementation of MasterState (meta-store.ts): the default, needing nothing but a directory. */
export class MasterStore implements MasterState {
  private constructor(private readonly db: Level<string, string>) {}

  static async open(dir: string): Promise<MasterStore> {
    // Refuses a file, unrelated files, a shard's directory or a damaged LevelDB, naming what it found (DataDirError).
    const db = await openDataDir(dir, 'master', () => new Level<string, string>(dir, { valueEncoding: 'utf8' }));
    return new MasterStore(db);
  }

  async load(): Promise<StoredState> {
    return form.decodeState(await this.db.getMany([...form.STATE_KEYS]));
  }

  /** Writes the registry, and optionally a new map and journal records, in one synced batch. */
  async save(state: StateSave): Promise<void> {
    await this.db.batch(puts(form.saveEntries(state)), { sync: true });
  }

  async loadAdminOp(id: string): Promise<AdminOpRecord | undefined> {
    return form.decodeAdminOp(await this.db.get(form.adminOpKey(id)));
  }

  /** Journals one move record (synced) before the step it describes is acted on. */
  async saveMove(id: string, json: unknown): Promise<void> {
    await this.db.put(form.moveKey(id), JSON.stringify(json), { sync: true });
  }

  async loadMoves(): Promise<unknown[]> {
    const out: unknown[] = [];
    // 'move0' is the first key after every 'move/…' ('0' follows '/').
    for await (const v of this.db.values({ gte: form.MOVE_PREFIX, lt: 'move0' })) out.push(JSON.parse(v));
    return out;
  }

  async loadClientState(): Promise<ClientState> {
    return form.decodeClientState(await this.db.getMany([...form.CLIENT_KEYS]));
  }

  /** Writes the applied client list and the revocations in one synced batch: a revocation never outlives a crash unsaved. */
  async saveClientState(clients: AppliedClient[], revocations: Revocation[]): Promise<void> {
    await this.db.batch(puts(form.clientEntries(clients, revocations)), { sync: true });
  }

  async loadApprovals(): Promise<string[]> {
    return form.decodeApprovals(await this.db.get(form.APPROVALS_KEY));
  }

  async saveApprovals(addresses: string[]): Promise<void> {
    await this.db.put(form.APPROVALS_KEY, JSON.stringify(addresses), { sync: true });
  }

  close(): Promise<void> {
    return this.db.close();
  }
}
