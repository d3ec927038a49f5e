/**
 * TLS by configuration (tlsCert, tlsKey, tlsCa), with certificates this test
 * makes with the system's `openssl`: a cluster CA, one certificate for the
 * servers, and a rogue CA with a certificate of its own.
 *
 * - With TLS on, a plaintext client is refused and a client that trusts the
 *   CA is served (ctl, the SDK's direct shard calls, `cairn health`).
 * - With mutual TLS between servers (tlsCa set), a shard whose certificate
 *   the CA did not sign cannot register, even with the right server
 *   credential; nor can a caller presenting no certificate at all. A shard with
 *   a good certificate joins.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as grpc from '@grpc/grpc-js';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MasterServiceClient } from '../proto/gen/cairn/v1/master.js';
import { deriveTokenKey, ServerTokenSource } from '../services/common/auth.js';
import { call } from '../services/common/grpc.js';
import { makeCa, makeLeaf, type CertFiles } from './harness/certs.js';
import { CAIRN_BIN, startProcCluster, waitUntil, type ProcCluster } from './harness/cluster.js';
import { TEST_CREDENTIAL } from './harness/inproc.js';

let dir: string;
let ca: CertFiles;
let node: CertFiles;
let rogue: CertFiles;
let cluster: ProcCluster;

function health(addr: string, extra: string[] = []) {
  return spawnSync(process.execPath, [CAIRN_BIN, 'health', '--addr', addr, '--timeout', '10000', ...extra], { encoding: 'utf8', env: { PATH: process.env.PATH } });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cairn-tls-'));
  ca = makeCa(dir, 'cluster-ca');
  node = makeLeaf(dir, 'node', ca);
  const rogueCa = makeCa(dir, 'rogue-ca');
  rogue = makeLeaf(dir, 'rogue', rogueCa);
  // ctl (run by the harness) trusts the cluster CA through CAIRN_TLS_CA, like the servers.
  process.env.CAIRN_TLS_CA = ca.cert;
  cluster = await startProcCluster({ shards: 2, env: { CAIRN_TLS_CERT: node.cert, CAIRN_TLS_KEY: node.key, CAIRN_TLS_CA: ca.cert } });
}, 90_000);

afterAll(async () => {
  delete process.env.CAIRN_TLS_CA;
  await cluster?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('TLS', () => {
  it('every process says it runs TLS with mutual TLS between servers', () => {
    for (const p of [cluster.master, ...cluster.shards]) {
      expect(p.logs.find((l) => l.message === 'listening')).toMatchObject({ tls: true, mutualTls: true });
    }
  });

  it('a plaintext client is refused, by the master and by the shards', async () => {
    const plain = await cluster.ctl(['servers', '--json', '--timeout', '3000'], { env: { CAIRN_TLS_CA: '' } });
    expect(plain.code).toBe(3);
    expect(plain.stdout).toBe('');

    for (const addr of [cluster.masterAddress, ...cluster.shards.map((s) => s.address)]) {
      const h = health(addr, ['--timeout', '3000']);
      expect([addr, h.status]).toEqual([addr, 3]);
    }
    const raw = new MasterServiceClient(cluster.masterAddress, grpc.credentials.createInsecure());
    const err = await new Promise<grpc.ServiceError | null>((done) =>
      raw.login({ user: 'admin', password: 'admin-pass' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e) => done(e)),
    );
    raw.close();
    expect(err?.code).toBe(grpc.status.UNAVAILABLE); // the TLS port does not speak plaintext
  });

  it('a client that trusts another CA is refused', async () => {
    const r = await cluster.ctl(['servers', '--json', '--timeout', '3000'], { env: { CAIRN_TLS_CA: join(dir, 'rogue-ca.crt') } });
    expect(r.code).toBe(3);
    expect(health(cluster.masterAddress, ['--tls-ca', join(dir, 'rogue-ca.crt'), '--timeout', '3000']).status).toBe(3);
  });

  it('a client that trusts the CA is served: ctl, the SDK talking to the shards, and cairn health', async () => {
    const s = await cluster.ctl(['servers', '--json']);
    expect(s.code).toBe(0);
    expect(s.json.servers.map((x: { status: string }) => x.status)).toEqual(['up', 'up']);
    const load = await cluster.ctl(['load', '--rows', '2000', '--json']);
    expect(load.json).toEqual({ written: 2000, errors: 0 });
    const verify = await cluster.ctl(['verify', '--rows', '2000', '--json']);
    expect(verify.json).toEqual({ checked: 2000, missing: 0, wrong: 0 });
    for (const addr of [cluster.masterAddress, ...cluster.shards.map((x) => x.address)]) {
      const h = health(addr, ['--tls-ca', ca.cert]);
      expect([addr, h.stdout.trim(), h.status]).toEqual([addr, 'SERVING', 0]);
    }
  }, 120_000);

  it('mutual TLS: a caller with the server credential but no client certificate cannot register a shard', async () => {
    const client = new MasterServiceClient(cluster.masterAddress, grpc.credentials.createSsl(readFileSync(ca.cert)));
    const token = new ServerTokenSource(deriveTokenKey(TEST_CREDENTIAL), 'impostor').get();
    const err = await call(client, client.registerShard, { shardId: '', address: '127.0.0.1:1', clusterId: '', epoch: 0n, generation: 1n, sessionId: 'impostor' }, { token, timeoutMs: 5000 }).catch((e: unknown) => e);
    client.close();
    expect(err).toMatchObject({ code: 'UNAUTHENTICATED', message: expect.stringContaining('client certificate signed by the cluster CA') });
  });

  it('mutual TLS: a shard whose certificate the CA did not sign cannot register', async () => {
    const bad = await cluster.addShard({ env: { CAIRN_TLS_CERT: rogue.cert, CAIRN_TLS_KEY: rogue.key } });
    await waitUntil(
      () => bad.logs.some((l) => l.message === 'the master refused this shard: check serverCredential' && String(l.error).includes('certificate')),
      30_000,
      'the master to refuse the shard with the rogue certificate',
    );
    const s = await cluster.ctl(['servers', '--json']);
    expect(s.json.servers).toHaveLength(2);
    expect(s.json.servers.map((x: { address: string }) => x.address)).not.toContain(bad.address);
    expect(bad.logs.some((l) => l.message === 'DataServer fully registered')).toBe(false);
    // Its own port cannot be reached by a client that trusts the cluster CA either.
    expect(health(bad.address, ['--tls-ca', ca.cert, '--timeout', '3000']).status).toBe(3);
    await cluster.stop(bad, 'SIGKILL');
  }, 60_000);

  it('mutual TLS: a shard with a certificate the CA signed joins', async () => {
    const good = await cluster.addShard();
    await waitUntil(async () => {
      const r = await cluster.ctl(['servers', '--json']);
      return r.json.servers.some((x: { address: string; status: string }) => x.address === good.address && x.status === 'up');
    }, 30_000, 'the shard with a good certificate to join');
    expect(health(good.address, ['--tls-ca', ca.cert]).stdout.trim()).toBe('SERVING');
  }, 60_000);
});
