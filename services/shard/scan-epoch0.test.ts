/**
 * ScanRows with epoch 0, as a plain client in any language sends it: one shard
 * walks the map's ranges from hash_start, scanning what it owns and
 * forwarding the rest, and the client passes next_token back until it is
 * empty. Found by the Python example (examples/python): a page that filled
 * exactly where a range ended came back with an empty next_token, so the
 * rest of the hash space was silently skipped. Every page size, against
 * every shard as the walker, must see every row once: a full scan in hash
 * order, a prefix scan range by range (in hash order) with each range's rows
 * in row-key order (the row-key index).
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

async function walk(shardAddress: string, rowPrefix: string, limit: number): Promise<string[]> {
  const c = shardClient(shardAddress);
  try {
    const seen: string[] = [];
    let resumeToken = Buffer.alloc(0);
    for (let page = 0; page < 50; page++) {
      const r = await rawCall(c, c.scanRows, { epoch: 0n, rowPrefix, filter: undefined, limit, resumeToken, hashStart: 0n, hashEnd: 0n }, token);
      expect(r.err).toBeUndefined();
      seen.push(...r.res!.rows.map((x) => x.row));
      if (r.res!.nextToken.length === 0) break;
      resumeToken = Buffer.from(r.res!.nextToken);
    }
    return seen;
  } finally {
    c.close();
  }
}

const byHash = (a: string, b: string): number => (rowHash(a) < rowHash(b) ? -1 : rowHash(a) > rowHash(b) ? 1 : 0);

it('an epoch-0 full scan in pages of any size sees every row once, in hash order, whichever shard walks', async () => {
  const expected = [...ROWS].sort(byHash);
  for (const shard of cluster.shards) {
    for (let limit = 1; limit <= ROWS.length + 1; limit++) expect({ limit, seen: await walk(shard.address, '', limit) }).toEqual({ limit, seen: expected });
  }
});

it('an epoch-0 prefix scan in pages of any size sees every row once, range by range, in key order inside each', async () => {
  const ranges = cluster.shards[0]!.node.map.ranges;
  expect(ranges.length).toBeGreaterThan(1);
  const expected = ranges.flatMap((r) => ROWS.filter((row) => rowHash(row) >= r.start && rowHash(row) < r.end).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))));
  expect(expected).not.toEqual([...ROWS].sort(byHash)); // the two orders differ for these rows, so the check tells them apart
  for (const shard of cluster.shards) {
    for (let limit = 1; limit <= ROWS.length + 1; limit++) expect({ limit, seen: await walk(shard.address, 'scan0/', limit) }).toEqual({ limit, seen: expected });
  }
});
