/**
 * Prefix scans through the SDK on an in-process cluster (three shards, real
 * gRPC and LevelDB): a prefix scan by the row-key indexes returns exactly the
 * rows a full scan filtered by the prefix returns, once each, ranges in hash
 * order and each range's rows in row-key order, through resume tokens of any
 * page size; a token from a prefix scan is refused by a full scan, naming it.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { CairnClient } from '../client/index.js';
import { rowHash } from '../common/hash.js';
import { startInProcCluster, type InProcCluster } from '../../test/harness/inproc.js';
import { login, rawCall, shardClient } from '../../test/harness/raw.js';

let cluster: InProcCluster;
let db: CairnClient;
// GRR's layout: clients, each with a file tree; the prefix of one client's directory is selective.
const ROWS = [
  ...Array.from({ length: 400 }, (_, i) => `aff4:/C.${1000 + (i % 20)}/fs/os/${i}`),
  ...Array.from({ length: 30 }, (_, i) => `aff4:/C.1234/fs/os/dir/${i}`),
  'aff4:/C.1234',
  'aff4:/C.12345/x',
  'other/1',
];

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 3 });
  db = await CairnClient.connect({ master: cluster.masterAddress, user: 'writer', password: 'writer-pass' });
  await db.writeRows(ROWS.map((row) => ({ row, cells: { v: row } })));
});
afterAll(async () => {
  db?.close();
  await cluster?.stop();
});

const keyOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

async function scanAll(prefix: string, pageSize: number): Promise<string[]> {
  const out: string[] = [];
  for await (const r of db.scan(prefix, { pageSize })) out.push(r.row);
  return out;
}

it('a prefix scan returns what a filtered full scan returns, range by range in key order, at any page size', async () => {
  const all = await scanAll('', 1000);
  expect([...all].sort(keyOrder)).toEqual([...ROWS].sort(keyOrder));
  const ranges = db.map.ranges;
  expect(ranges.length).toBe(3);
  for (const prefix of ['aff4:/C.1234', 'aff4:/C.1234/', 'aff4:/C.10', 'aff4:/', 'o', 'nothing']) {
    const want = ranges.flatMap((r) => all.filter((row) => row.startsWith(prefix) && rowHash(row) >= r.start && rowHash(row) < r.end).sort(keyOrder));
    for (const pageSize of [1, 7, 1000]) expect({ prefix, pageSize, rows: await scanAll(prefix, pageSize) }).toEqual({ prefix, pageSize, rows: want });
  }
});

it('scanPage resumes from its tokens, a page at a time, every row once', async () => {
  const seen: string[] = [];
  let resumeToken: string | undefined;
  let pages = 0;
  do {
    const page = await db.scanPage('aff4:/C.1234/', { limit: 4, resumeToken });
    expect(page.rows.length).toBeLessThanOrEqual(4);
    seen.push(...page.rows.map((r) => r.row));
    resumeToken = page.nextToken;
    expect(++pages).toBeLessThan(100);
  } while (resumeToken);
  expect([...seen].sort(keyOrder)).toEqual(ROWS.filter((r) => r.startsWith('aff4:/C.1234/')).sort(keyOrder));
  expect(new Set(seen).size).toBe(seen.length);
});

it('a prefix scan token sent without the prefix is INVALID_ARGUMENT naming resumeToken', async () => {
  const token = await login(cluster.masterAddress, 'writer', 'writer-pass');
  const c = shardClient(cluster.shards[0]!.address);
  try {
    const first = await rawCall(c, c.scanRows, { epoch: 0n, rowPrefix: 'aff4:/', filter: undefined, limit: 2, resumeToken: Buffer.alloc(0), hashStart: 0n, hashEnd: 0n }, token);
    expect(first.err).toBeUndefined();
    expect(first.res!.nextToken.length).toBeGreaterThan(0);
    const bad = await rawCall(c, c.scanRows, { epoch: 0n, rowPrefix: '', filter: undefined, limit: 2, resumeToken: Buffer.from(first.res!.nextToken), hashStart: 0n, hashEnd: 0n }, token);
    expect(bad.err?.code).toBe(3); // INVALID_ARGUMENT
    expect(bad.err?.details).toMatch(/^resumeToken: this token continues a scan with a rowPrefix/);
  } finally {
    c.close();
  }
});
