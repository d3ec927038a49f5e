/**
 * Issue 14: a master learns from any of its calls to a shard that it was
 * deposed. A shard refuses a master's call under a lower term than one it
 * has seen (FAILED_PRECONDITION, reason STALE_TERM); the master's shard
 * clients carry a watcher (watchRefusals, services/common/grpc.ts) that sees
 * every such refusal, unary or streaming, so its role steps down at once
 * instead of at the next check of etcd (master-role.ts, onStaleTerm).
 *
 * An in-process cluster (embedded master, two shards); the calls are made
 * with server tokens this test mints under chosen terms.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ShardControlServiceClient } from '../proto/gen/cairn/v1/control.js';
import { deriveTokenKey, mintToken } from '../services/common/auth.js';
import type { CairnError } from '../services/common/errors.js';
import { call, ClientPool, metadataFor, watchRefusals } from '../services/common/grpc.js';
import { endToProto } from '../services/common/hash.js';
import { mapToProto } from '../services/common/map.js';
import { startInProcCluster, TEST_CREDENTIAL, type InProcCluster } from './harness/inproc.js';

describe('STALE_TERM refusals reach the calling master', () => {
  let cluster: InProcCluster;
  const seen: CairnError[] = [];
  let pool: ClientPool<ShardControlServiceClient>;

  const tokenUnder = (term: string) => mintToken(deriveTokenKey(TEST_CREDENTIAL), 'master', 'server', 60_000, Date.now(), cluster.shards[0]!.node.clusterId, term).token;

  beforeAll(async () => {
    cluster = await startInProcCluster({ shards: 2 });
    pool = new ClientPool(ShardControlServiceClient, { maxMessageBytes: cluster.limits.maxMessageBytes, interceptors: [watchRefusals((err) => seen.push(err))] });
  }, 30_000);

  afterAll(async () => {
    pool?.close();
    await cluster?.stop();
  });

  it('a unary call and a stream under an older term are refused, and the watcher is told STALE_TERM; a call under the newest term is not', async () => {
    const shard = cluster.shards[0]!;
    const client = pool.get(shard.address);
    const map = mapToProto(shard.node.map);

    // A newer leader (term 9) calls first: from now on the shard refuses term 3.
    await call(client, client.pushMap, { map }, { token: tokenUnder('9'), timeoutMs: 3000 });
    expect(seen).toEqual([]);

    const unary = await call(client, client.pushMap, { map }, { token: tokenUnder('3'), timeoutMs: 3000 }).then(() => 'taken', (err: Error) => err.message);
    expect(unary).toMatch(/term 3.*seen term 9/);
    expect(seen.map((e) => [e.code, e.details.reason])).toEqual([['PRECONDITION', 'STALE_TERM']]);

    // The coordinator's stream, on the same clients.
    const other = cluster.shards[1]!;
    const range = other.node.map.ranges.find((r) => r.shardId === other.node.id)!;
    const stream = client.pullRange(
      { moveId: 'm-stale', start: range.start, end: endToProto(range.end), sourceShardId: other.node.id, sourceAddress: other.address, epoch: shard.node.map.epoch, chunkBytes: 0, maxBytesPerSec: 0n },
      metadataFor(tokenUnder('3')),
      { deadline: Date.now() + 3000 },
    );
    const streamed = await new Promise<string>((done) => {
      stream.on('data', () => undefined);
      stream.on('error', (err: Error) => done(err.message));
      stream.on('end', () => done('ended'));
    });
    expect(streamed).toMatch(/refused PullRange .* under term 3/);
    expect(seen.map((e) => e.details.reason)).toEqual(['STALE_TERM', 'STALE_TERM']);

    // The newest term still gets through, and tells the watcher nothing.
    await call(client, client.pushMap, { map }, { token: tokenUnder('9'), timeoutMs: 3000 });
    expect(seen).toHaveLength(2);
  }, 30_000);
});
