/**
 * `cairn master rebuild --config master.yaml --from HOST:PORT,...`: writes a
 * lost master's state (cluster id, map, shard registry) into its empty
 * dataDir from what the running shards hold, so that `cairn master` can start
 * on it. See services/master/rebuild.ts for the rules.
 */
import { readFileSync } from 'node:fs';
import { ShardControlServiceClient } from '../proto/gen/cairn/v1/control.js';
import { deriveTokenKey, ServerTokenSource } from '../services/common/auth.js';
import { loadConfig, parseHostPort, type MasterConfig } from '../services/common/config.js';
import { call, ClientPool } from '../services/common/grpc.js';
import { mapFromProto } from '../services/common/map.js';
import { rebuildState, RebuildError, type ShardDescription } from '../services/master/rebuild.js';
import { MasterStore } from '../services/master/store.js';
import { flagString, type FlagValue } from './flags.js';
import type { Io } from './ctl.js';
import { CliError, EXIT } from './exit.js';

export async function runRebuild(flags: Record<string, FlagValue>, io: Io): Promise<number> {
  const from = flagString(flags, 'from');
  if (!from) throw new CliError('master rebuild: --from HOST:PORT[,HOST:PORT...] is required (the shards to read)', EXIT.BAD_ARGS);
  const addresses = from.split(',').map((a) => a.trim()).filter(Boolean);
  for (const a of addresses) {
    try {
      parseHostPort(a, { allowPortZero: false });
    } catch (err) {
      throw new CliError(`master rebuild: --from: ${(err as Error).message}`, EXIT.BAD_ARGS);
    }
  }
  const c = loadConfig('master', { flags });

  const store = await MasterStore.open(c.dataDir);
  try {
    const held = await store.load();
    if (held.map || held.clusterId || held.shards.length) {
      throw new CliError(
        `master rebuild: ${c.dataDir} already holds master state (cluster ${held.clusterId || '(no id)'}, map epoch ${held.map?.epoch ?? 0n}, ${held.shards.length} shards); rebuild writes only into an empty directory`,
        EXIT.ERROR,
        'if this is the right state, start the master on it; if not, move it aside first',
      );
    }
    const described = await describeAll(addresses, c);
    let state;
    try {
      state = rebuildState(described, { allowMissing: flags['allow-missing'] === true });
    } catch (err) {
      if (err instanceof RebuildError) throw new CliError(`master rebuild: ${err.message}`, EXIT.ERROR);
      throw err;
    }
    await store.save(state);
    io.out(`Rebuilt cluster ${state.clusterId} at map epoch ${state.map.epoch} into ${c.dataDir} from ${described.length} shard${described.length === 1 ? '' : 's'}:`);
    for (const s of state.shards) io.out(`  ${s.id} ${s.address}${state.missing.some((m) => m.startsWith(`${s.id} `)) ? ' (did not answer)' : ''}`);
    io.out('Start the master on it: cairn master --config <the same file>');
    return EXIT.OK;
  } finally {
    await store.close();
  }
}

async function describeAll(addresses: string[], c: MasterConfig): Promise<ShardDescription[]> {
  const tls = c.tlsCa ? { ca: readFileSync(c.tlsCa), cert: c.tlsCert ? readFileSync(c.tlsCert) : undefined, key: c.tlsKey ? readFileSync(c.tlsKey) : undefined } : undefined;
  const pool = new ClientPool(ShardControlServiceClient, { tls, maxMessageBytes: c.maxMessageBytes });
  const token = new ServerTokenSource(deriveTokenKey(c.serverCredential), 'rebuild');
  try {
    return await Promise.all(
      addresses.map(async (address) => {
        const client = pool.get(address);
        try {
          const res = await call(client, client.describeShard, {}, { token: token.get(), timeoutMs: 5000 });
          return { address, clusterId: res.clusterId, shardId: res.shardId, generation: Number(res.generation), map: mapFromProto(res.map) };
        } catch (err) {
          throw new CliError(`master rebuild: shard at ${address} did not answer: ${(err as Error).message}`, EXIT.UNAVAILABLE, 'every shard named with --from must be running');
        }
      }),
    );
  } finally {
    pool.close();
  }
}
