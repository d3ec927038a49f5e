/**
 * Taking a right away (issue: hardening, item 2). A user lowered from rw to
 * r, removed, or given a new password in the master's client list loses its
 * old tokens: on the master at once and on every shard within a few seconds
 * (they learn it with the heartbeat answer), after `cairn ctl reload`, after
 * SIGHUP, and after a master restart on the changed config. A bad config on
 * reload changes nothing. A token is bound to its cluster: two clusters that
 * share a server credential refuse each other's tokens. Real processes.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { status, type ServiceError } from '@grpc/grpc-js';
import { readFile, writeFile } from 'node:fs/promises';
import { parse, stringify } from 'yaml';
import { MasterServiceClient } from '../proto/gen/cairn/v1/master.js';
import { hashPassword } from '../services/common/auth.js';
import { startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';
import { login, rawCall, shardClient } from './harness/raw.js';
import { credentials } from '@grpc/grpc-js';

const EXTRA = [
  { user: 'lowered', password: 'lowered-pass', role: 'rw' as const },
  { user: 'removed', password: 'removed-pass', role: 'rw' as const },
  { user: 'rekeyed', password: 'rekeyed-pass', role: 'rw' as const },
  { user: 'restarted', password: 'restarted-pass', role: 'rw' as const },
  { user: 'steady', password: 'steady-pass', role: 'rw' as const },
];

const put = (address: string, token: string, row: string) => {
  const c = shardClient(address);
  return rawCall(c, c.writeRows, { epoch: 0n, requestId: '', sync: false, rows: [{ row, replace: false, cells: [{ column: 'c', timestampUs: 0n, value: Buffer.from('v') }] }] }, token).finally(() =>
    c.close(),
  );
};

const getMap = (master: string, token: string) => {
  const c = new MasterServiceClient(master, credentials.createInsecure());
  return rawCall(c as never, c.getMap as never, {}, token).finally(() => c.close());
};

/** The gRPC status name and cairn-error-reason of a call ('OK' when it succeeded). */
function outcome(r: { err?: ServiceError }): string {
  if (!r.err) return 'OK';
  const reason = r.err.metadata?.get('cairn-error-reason')[0];
  return `${status[r.err.code]}${reason ? ` ${String(reason)}` : ''}`;
}

let cluster: ProcCluster;

/** Rewrites the master's client list: `edit` gets the list as in the file (user, passwordHash, role). */
async function editClients(edit: (clients: Array<{ user: string; passwordHash: string; role: string }>) => typeof clients) {
  const doc = parse(await readFile(cluster.masterYaml, 'utf8'));
  const clients = doc.clients;
  doc.clients = edit(clients);
  await writeFile(cluster.masterYaml, stringify(doc));
}

/** Waits until every shard and the master give `expected` for the token. */
async function everywhere(token: string, expected: string, what: string): Promise<number> {
  const started = Date.now();
  await waitUntil(
    async () => {
      const results = await Promise.all([...cluster.shards.map((s) => put(s.address, token, `row-${what}`)), getMap(cluster.master.address, token)]);
      return results.every((r) => outcome(r) === expected);
    },
    15_000,
    `${what}: ${expected} on every shard and the master`,
  );
  return Date.now() - started;
}

beforeAll(async () => {
  cluster = await startProcCluster({ shards: 2, extraUsers: EXTRA });
}, 60_000);

afterAll(async () => {
  await cluster?.cleanup();
});

describe('revoking tokens', () => {
  it('ctl reload: lowered, removed and re-keyed users lose their tokens everywhere within seconds; others keep theirs', async () => {
    const tokens = Object.fromEntries(await Promise.all(EXTRA.map(async (u) => [u.user, await login(cluster.masterAddress, u.user, u.password)] as const)));
    for (const u of ['lowered', 'removed', 'rekeyed', 'steady']) await everywhere(tokens[u]!, 'OK', `${u} before`);

    await editClients((cs) =>
      cs
        .filter((c) => c.user !== 'removed')
        .map((c) => (c.user === 'lowered' ? { ...c, role: 'r' } : c.user === 'rekeyed' ? { ...c, passwordHash: hashPassword('rekeyed-new') } : c)),
    );
    const r = await cluster.ctl(['reload', '--json']);
    expect(r.code).toBe(0);
    expect(r.json).toMatchObject({ users: 7, removed: ['removed'], lowered: ['lowered'], passwordChanged: ['rekeyed'], revoked: ['lowered', 'rekeyed', 'removed'], restartNeeded: [] });

    const took: Record<string, number> = {};
    for (const u of ['lowered', 'removed', 'rekeyed']) took[u] = await everywhere(tokens[u]!, 'UNAUTHENTICATED TOKEN_REVOKED', `${u} after`);
    console.log(`revoked everywhere within ${JSON.stringify(took)} ms of the reload (heartbeat every 250 ms)`);
    await everywhere(tokens.steady!, 'OK', 'steady after');

    // A fresh login gives what the list now says.
    const lowered = await login(cluster.masterAddress, 'lowered', 'lowered-pass');
    expect(outcome(await put(cluster.shards[0]!.address, lowered, 'x'))).toBe('PERMISSION_DENIED');
    expect(outcome(await getMap(cluster.master.address, lowered))).toBe('OK');
    await expect(login(cluster.masterAddress, 'removed', 'removed-pass')).rejects.toThrow(/login failed/);
    await expect(login(cluster.masterAddress, 'rekeyed', 'rekeyed-pass')).rejects.toThrow(/login failed/);
    expect(outcome(await put(cluster.shards[1]!.address, await login(cluster.masterAddress, 'rekeyed', 'rekeyed-new'), 'y'))).toBe('OK');
  }, 90_000);

  it('SIGHUP reloads; a broken config changes nothing and says which key; a restart on a changed list revokes too', async () => {
    const steady = await login(cluster.masterAddress, 'steady', 'steady-pass');
    const restarted = await login(cluster.masterAddress, 'restarted', 'restarted-pass');

    // A broken list: refused by ctl reload and by SIGHUP, naming the key; the master keeps serving with the list in force.
    const good = await readFile(cluster.masterYaml, 'utf8');
    await editClients((cs) => cs.map((c) => (c.user === 'steady' ? { ...c, role: 'superuser' } : c)));
    const bad = await cluster.ctl(['reload']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/reload refused, nothing changed: .*clients.*role/);
    const logged = cluster.master.logs.length;
    cluster.master.child.kill('SIGHUP');
    await waitUntil(() => cluster.master.logs.slice(logged).some((l) => /SIGHUP: reload refused/.test(String(l.message))), 10_000, 'the SIGHUP refusal in the log');
    expect(cluster.master.child.exitCode).toBeNull();
    await everywhere(steady, 'OK', 'steady after a refused reload');

    // SIGHUP with a good list that removes `steady`.
    await writeFile(cluster.masterYaml, good);
    await editClients((cs) => cs.filter((c) => c.user !== 'steady'));
    cluster.master.child.kill('SIGHUP');
    await everywhere(steady, 'UNAUTHENTICATED TOKEN_REVOKED', 'steady after SIGHUP');
    expect(cluster.master.child.exitCode).toBeNull();

    // The issue's case: lower a user, restart the master; the old token must not keep writing until it expires.
    await editClients((cs) => cs.map((c) => (c.user === 'restarted' ? { ...c, role: 'r' } : c)));
    await cluster.stop(cluster.master);
    await cluster.restart(cluster.master);
    await everywhere(restarted, 'UNAUTHENTICATED TOKEN_REVOKED', 'restarted after a master restart');
  }, 120_000);

  it('two clusters sharing the server credential refuse each other\'s tokens', async () => {
    const other = await startProcCluster({ shards: 1 });
    try {
      const foreign = await login(other.masterAddress, 'writer', 'writer-pass');
      expect(outcome(await put(other.shards[0]!.address, foreign, 'mine'))).toBe('OK');
      for (const s of cluster.shards) expect(outcome(await put(s.address, foreign, 'theirs'))).toBe('UNAUTHENTICATED CLUSTER_MISMATCH');
      expect(outcome(await getMap(cluster.master.address, foreign))).toBe('UNAUTHENTICATED CLUSTER_MISMATCH');
      const ours = await login(cluster.masterAddress, 'writer', 'writer-pass');
      expect(outcome(await put(other.shards[0]!.address, ours, 'theirs'))).toBe('UNAUTHENTICATED CLUSTER_MISMATCH');
    } finally {
      await other.cleanup();
    }
  }, 90_000);
});
