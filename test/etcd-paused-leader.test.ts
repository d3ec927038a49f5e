/**
 * Issue 14, item 2: the deposed leader that does not know it. Leader A runs
 * in a process of its own (the built dist/ store and leadership) with a short
 * lease; it is paused (SIGSTOP) past its lease, as a long GC pause or a
 * stopped VM would. B, in this process, campaigns meanwhile and wins once A's
 * lease expires. When A resumes it still holds its old term and tries to
 * write at once: etcd refuses (NOT_LEADER), and etcd's data shows only B's
 * writes since B won.
 *
 * Skipped, saying why, when etcd is not installed (unless CI=true).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { Etcd3 } from 'etcd3';
import { Leadership } from '../services/master/etcd-leadership.js';
import { EtcdStore } from '../services/master/etcd-store.js';
import { EtcdCluster, etcdSkipReason } from './harness/etcd.js';

const skip = etcdSkipReason();
if (skip) console.warn(`SKIPPED test/etcd-paused-leader.test.ts (a paused leader's writes on etcd): ${skip}`);
const withEtcd = skip ? describe.skip : describe;

const dist = (path: string): string => pathToFileURL(resolve('dist', path)).href;

/** Leader A: campaigns, prints its term, then saves each stdin line as the approvals and prints the outcome, with the term it holds. */
const LEADER_SCRIPT = `
import { Etcd3 } from 'etcd3';
import { createInterface } from 'node:readline';
import { Leadership } from '${dist('services/master/etcd-leadership.js')}';
import { EtcdStore } from '${dist('services/master/etcd-store.js')}';
const [hosts, prefix, ttl] = process.argv.slice(1);
const client = new Etcd3({ hosts: hosts.split(',') });
const leadership = new Leadership(client, prefix, 'master-a', { ttlSeconds: Number(ttl) });
const store = new EtcdStore(client, prefix, { term: () => leadership.term });
console.log(JSON.stringify({ term: await leadership.campaign() }));
for await (const line of createInterface({ input: process.stdin })) {
  try {
    await store.saveApprovals([line]);
    console.log(JSON.stringify({ wrote: line, term: leadership.term }));
  } catch (err) {
    console.log(JSON.stringify({ error: err.code ?? String(err), term: leadership.term }));
  }
}
`;

/** A's process, answering one JSON line per request. */
function startLeader(hosts: string[], prefix: string, ttlSeconds: number) {
  const child: ChildProcess = spawn(process.execPath, ['--input-type=module', '-e', LEADER_SCRIPT, hosts.join(','), prefix, String(ttlSeconds)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async (): Promise<Record<string, unknown>> => {
    const r = await lines.next();
    if (r.done) throw new Error('leader A exited');
    return JSON.parse(r.value) as Record<string, unknown>;
  };
  return {
    child,
    next,
    write: (value: string) => {
      child.stdin!.write(`${value}\n`);
      return next();
    },
  };
}

withEtcd('a leader paused past its lease', () => {
  let etcd: EtcdCluster;
  let a: ReturnType<typeof startLeader> | undefined;
  let client: Etcd3;
  let b: Leadership | undefined;

  beforeAll(async () => {
    etcd = await EtcdCluster.start();
    client = new Etcd3({ hosts: etcd.endpoints });
  });
  afterAll(async () => {
    a?.child.kill('SIGCONT');
    a?.child.kill('SIGKILL');
    await b?.close();
    client?.close();
    await etcd?.close();
  });

  it('still holds its old term when it resumes, and etcd refuses its writes', async () => {
    const prefix = '/paused';
    a = startLeader(etcd.endpoints, prefix, 2);
    const termA = (await a.next()).term as string;
    expect(await a.write('a-1')).toEqual({ wrote: 'a-1', term: termA });

    a.child.kill('SIGSTOP');
    b = new Leadership(client, prefix, 'master-b', { ttlSeconds: 10, retryMs: 100 });
    const lead = b;
    const storeB = new EtcdStore(client, prefix, { term: () => lead.term });
    const termB = await b.campaign(); // wins only once A's lease has expired in etcd
    expect(BigInt(termB)).toBeGreaterThan(BigInt(termA));
    await storeB.saveApprovals(['b-1']);
    const afterB = (await client.getAll().prefix(`${prefix}/`).exec()).kvs;

    a.child.kill('SIGCONT');
    // A's first act after the pause is a write: it has not learnt anything yet.
    expect(await a.write('a-2')).toEqual({ error: 'NOT_LEADER', term: termA });
    expect(await storeB.loadApprovals()).toEqual(['b-1']);
    expect((await client.getAll().prefix(`${prefix}/`).exec()).kvs).toEqual(afterB);
  });
});
