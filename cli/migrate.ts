/**
 * `cairn master migrate-to-etcd --config master.yaml`: moves an embedded
 * master's state (the LevelDB in dataDir) into etcd (etcdEndpoints,
 * etcdPrefix), so the cluster can run standby masters. The config is the one
 * the masters will run with (metaStore: etcd), still naming the old dataDir.
 *
 * Run it with the master stopped (its LevelDB is locked while it runs) and
 * the shards left running. It refuses an etcd prefix that already holds a
 * cluster's state, or one a master leads. It writes as a leader would, under
 * a leadership it takes for the copy (every write fenced by its term) and
 * gives up at the end: the map, the shard registry, the cluster id and the
 * removed ids; the move journal; the applied client list with its
 * revocations; approvals. The LevelDB is left as it was. The records that let
 * a RemoveServer retried with the same operation id answer as before are not
 * carried (the store cannot list them): retry such a call before migrating.
 */
import { hostname } from 'node:os';
import { Etcd3 } from 'etcd3';
import { loadConfig } from '../services/common/config.js';
import { Leadership } from '../services/master/etcd-leadership.js';
import { EtcdStore } from '../services/master/etcd-store.js';
import { MasterStore } from '../services/master/store.js';
import type { FlagValue } from './flags.js';
import type { Io } from './ctl.js';
import { CliError, EXIT } from './exit.js';
import { etcdSettingsOf } from './servers.js';

export async function runMigrateToEtcd(flags: Record<string, FlagValue>, io: Io): Promise<number> {
  const c = loadConfig('master', { flags });
  const etcd = etcdSettingsOf(c);
  if (!etcd || etcd.endpoints.length === 0) {
    throw new CliError('master migrate-to-etcd: the config must say where the state goes: metaStore: etcd and etcdEndpoints', EXIT.BAD_ARGS, 'the same config the masters will run with; dataDir still names the embedded state');
  }
  let source: MasterStore;
  try {
    source = await MasterStore.open(c.dataDir);
  } catch (err) {
    throw new CliError(`master migrate-to-etcd: cannot open the embedded state in ${c.dataDir}: ${(err as Error).message}`, EXIT.ERROR, 'stop the master first: its LevelDB is locked while it runs');
  }
  const client = new Etcd3({ hosts: etcd.endpoints, dialTimeout: 5000 });
  const leadership = new Leadership(client, etcd.prefix, `migrate-to-etcd@${hostname()}`, { ttlSeconds: etcd.leaseSeconds });
  try {
    const state = await source.load();
    if (!state.map && !state.clusterId) throw new CliError(`master migrate-to-etcd: ${c.dataDir} holds no cluster state (no map, no cluster id): nothing to move`, EXIT.ERROR);
    const moves = (await source.loadMoves()) as Array<{ id: string }>;
    const clients = await source.loadClientState();
    const approvals = await source.loadApprovals();

    const leader = await leadership.leader().catch((err: Error) => {
      throw new CliError(`master migrate-to-etcd: etcd at ${etcd.endpoints.join(',')} does not answer: ${err.message}`, EXIT.UNAVAILABLE);
    });
    if (leader) throw new CliError(`master migrate-to-etcd: a master (${leader.id}) leads under ${etcd.prefix} already; the state there is in use`, EXIT.ERROR, 'stop every master on etcd first, or pick another etcdPrefix');
    const term = await leadership.campaign(AbortSignal.timeout(10_000));
    const target = new EtcdStore(client, etcd.prefix, { term: () => term, callTimeoutMs: etcd.callTimeoutMs, settleTimeoutMs: etcd.settleTimeoutMs });
    const there = await target.load();
    if (there.map || there.clusterId || there.shards.length) {
      throw new CliError(
        `master migrate-to-etcd: ${etcd.prefix} in etcd holds a cluster's state already (cluster ${there.clusterId || '(no id)'}, map epoch ${there.map?.epoch ?? 0n}); nothing was written`,
        EXIT.ERROR,
        'pick another etcdPrefix, or remove that state (etcdctl del --prefix) if it is not in use',
      );
    }
    // The journal first and the map last: a copy cut short leaves no map, so the prefix reads as empty and the command can run again.
    for (const m of moves) await target.saveMove(m.id, m);
    if (clients.clients) await target.saveClientState(clients.clients, clients.revocations);
    await target.saveApprovals(approvals);
    await target.save({ clusterId: state.clusterId, shards: state.shards, nextShardNumber: state.nextShardNumber, removed: state.removed, ...(state.map ? { map: state.map } : {}) });
    await target.close();
    io.out(`Moved cluster ${state.clusterId} (map epoch ${state.map?.epoch ?? 0n}, ${state.shards.length} shards, ${moves.length} journaled moves, ${clients.clients?.length ?? 0} users) from ${c.dataDir} into etcd under ${etcd.prefix}.`);
    io.out('Start the masters with this config (metaStore: etcd), then check the data: cairn ctl verify');
    return EXIT.OK;
  } finally {
    await leadership.close().catch(() => undefined);
    client.close();
    await source.close();
  }
}
