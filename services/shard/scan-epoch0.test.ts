/**
 * ScanRows with epoch 0, as a plain client in any language sends it: one shard
 * walks the map's ranges from hash_start, scanning what it owns and
 * forwarding the rest, and the client passes next_token back until it is
 * empty. Found by the Python example (examples/python): a page that filled
 * exactly where a range ended came back with an empty next_token, so the
 * rest of the hash space was silently skipped. Every page size, against
 * every shard as the walker, must see every row once, in storage order.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { rowHash } from '../common/hash.js';
import { startInProcCluster, type InProcCluster } from '../../test/harness/inproc.js';
import { login, rawCall, shardClient } from '../../test/harness/raw.js';

let cluster: InProcCluster;
let token: string;
const ROWS = Array.from({ length: 9 }, (_, i) => `scan0/${i}`);

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 3 });
  token = await login(cluster.masterAddress, 'writer', 'writer-pass');
  const c = shardClient(cluster.shards[0]!.address);
  const rows = ROWS.map((row) => ({ row, replace: false, cells: [{ column: 'c', timestampUs: 0n, value: Buffer.from(row) }] }));
  const w = await rawCall(c, c.writeRows, { epoch: 0n, requestId: 'scan0', sync: false, rows }, token);
  expect(w.err).toBeUndefined();
  c.close();
});
afterAll(async () => {
  await cluster?.stop();
});

it('an epoch-0 scan in pages of any size sees every row once, in hash order, whichever shard walks', async () => {
  const expected = [...ROWS].sort((a, b) => (rowHash(a) < rowHash(b) ? -1 : rowHash(a) > rowHash(b) ? 1 : 0));
  for (const shard of cluster.shards) {
    const c = shardClient(shard.address);
    for (let limit = 1; limit <= ROWS.length + 1; limit++) {
      const seen: string[] = [];
      let resumeToken = Buffer.alloc(0);
      for (let page = 0; page < 50; page++) {
        const r = await rawCall(c, c.scanRows, { epoch: 0n, rowPrefix: 'scan0/', filter: undefined, limit, resumeToken, hashStart: 0n, hashEnd: 0n }, token);
        expect(r.err).toBeUndefined();
        seen.push(...r.res!.rows.map((x) => x.row));
        if (r.res!.nextToken.length === 0) break;
        resumeToken = Buffer.from(r.res!.nextToken);
      }
      expect({ limit, seen }).toEqual({ limit, seen: expected });
    }
    c.close();
  }
});
