/**
 * Health, reflection and draining (services/common/health.ts) on a real gRPC
 * server in this process, asked through `cairn health` (cli/health.ts):
 * SERVING while healthy, NOT_SERVING while it drains (a call held in flight
 * keeps it draining, so nothing here depends on timing), new calls refused
 * with a retryable UNAVAILABLE, the call in flight finished, and no answer
 * once the server is gone.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import winston from 'winston';
import { runHealth } from '../../cli/health.js';
import { EXIT } from '../../cli/exit.js';
import { shutdownServer } from './server.js';
import { checkHealth, HEALTH_SERVICE_NAME, ServingState } from './health.js';
import { startServer, unary, withPort } from './grpc.js';

const log = winston.createLogger({ silent: true, transports: [new winston.transports.Console()] });
const json = {
  serialize: (x: unknown) => Buffer.from(JSON.stringify(x ?? {})),
  deserialize: (b: Buffer) => (b.length ? JSON.parse(b.toString()) : {}),
};
/** A one-method service whose calls wait until the test lets them go. */
const SLOW: grpc.ServiceDefinition = {
  wait: {
    path: '/cairn.test.Slow/Wait',
    requestStream: false,
    responseStream: false,
    originalName: 'wait',
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
} as unknown as grpc.ServiceDefinition;
type SlowClient = grpc.Client & { wait(req: object, cb: (err: grpc.ServiceError | null, res: { ok: boolean }) => void): void };
const SlowClientCtor = grpc.makeGenericClientConstructor(SLOW, 'Slow') as unknown as new (a: string, c: grpc.ChannelCredentials) => SlowClient;

function io() {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, io: { out: (l: string) => out.push(l), err: (l: string) => err.push(l), env: {} as NodeJS.ProcessEnv } };
}

async function health(address: string, extra: Record<string, string | boolean> = {}) {
  const c = io();
  const code = await runHealth({ addr: address, timeout: '10000', ...extra }, c.io);
  return { code, out: c.out.join('\n'), err: c.err.join('\n') };
}

describe('ServingState', () => {
  it('starts NOT_SERVING, serves when told, and stays NOT_SERVING once it drains', async () => {
    const s = new ServingState(['cairn.v1.ShardService']);
    expect(s.status).toBe('NOT_SERVING');
    s.setServing(true);
    expect(s.status).toBe('SERVING');
    const leave = s.enter('Put');
    expect(s.inFlightCalls).toBe(1);
    leave();
    leave(); // idempotent
    expect(s.inFlightCalls).toBe(0);
    expect(await s.drain(10)).toBe(true);
    expect(s.status).toBe('NOT_SERVING');
    s.setServing(true);
    expect(s.status).toBe('NOT_SERVING');
    expect(() => s.enter('Put')).toThrow(expect.objectContaining({ code: 'NOT_READY', message: expect.stringContaining('shutting down') }));
  });

  it('drain waits for the calls in flight, or gives up after its timeout', async () => {
    const s = new ServingState([], 'SERVING');
    const a = s.enter('A');
    const b = s.enter('B');
    let drained: boolean | undefined;
    const d = s.drain(60_000).then((r) => (drained = r));
    a();
    await new Promise((r) => setImmediate(r));
    expect(drained).toBeUndefined();
    b();
    await d;
    expect(drained).toBe(true);

    const t = new ServingState([], 'SERVING');
    t.enter('stuck');
    expect(await t.drain(1)).toBe(false);
  });
});

describe('health and reflection over gRPC', () => {
  let server: grpc.Server;
  let address: string;
  const state = new ServingState(['cairn.v1.ShardService']);
  const releases: Array<() => void> = [];

  beforeAll(async () => {
    const env = { service: 'test', log, tokenKey: Buffer.alloc(32), gate: state };
    const impl = {
      wait: unary(env, 'Wait', null, async () => {
        await new Promise<void>((r) => releases.push(r));
        return { ok: true };
      }),
    };
    const started = await startServer('127.0.0.1:0', [[SLOW, impl]], { maxMessageBytes: 1 << 20, register: (s) => state.addToServer(s) });
    server = started.server;
    address = withPort('127.0.0.1:0', started.port);
  });
  afterAll(() => server?.forceShutdown());

  it('reports NOT_SERVING before the process says it serves, then SERVING', async () => {
    const before = await health(address);
    expect(before).toMatchObject({ code: EXIT.ERROR, out: 'NOT_SERVING' });
    state.setServing(true);
    expect(await health(address)).toMatchObject({ code: EXIT.OK, out: 'SERVING' });
    expect(await checkHealth(address, { service: 'cairn.v1.ShardService' })).toBe('SERVING');
    const j = await health(address, { json: true });
    expect(JSON.parse(j.out)).toEqual({ address, service: '', status: 'SERVING' });
  });

  it('reflection lists the process services and health, and describes them', async () => {
    const reflectionProto = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection/package.json')), 'build', 'proto');
    const pkg = protoLoader.loadSync('grpc/reflection/v1/reflection.proto', { includeDirs: [reflectionProto], keepCase: true, defaults: true, oneofs: true });
    const loaded = grpc.loadPackageDefinition(pkg) as any;
    const client = new loaded.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
    const ask = (req: object) =>
      new Promise<any>((done, fail) => {
        const call = client.ServerReflectionInfo();
        call.on('data', (d: unknown) => {
          done(d);
          call.end();
        });
        call.on('error', fail);
        call.write(req);
      });
    const list = await ask({ list_services: '' });
    const names = list.list_services_response.service.map((s: { name: string }) => s.name);
    expect(names.sort()).toEqual(['cairn.v1.ShardService', HEALTH_SERVICE_NAME].sort());
    const file = await ask({ file_containing_symbol: 'cairn.v1.ShardService' });
    const protos = file.file_descriptor_response.file_descriptor_proto as Buffer[];
    expect(protos.length).toBeGreaterThan(0);
    expect(Buffer.concat(protos).toString('latin1')).toContain('WriteRows');
    client.close();
    // The descriptors themselves, comments and all, are checked in reflection.test.ts.
  });

  it('while it drains: NOT_SERVING, new calls refused with UNAVAILABLE, the call in flight finishes', async () => {
    const client = new SlowClientCtor(address, grpc.credentials.createInsecure());
    const inFlight = new Promise<{ ok: boolean }>((done, fail) => client.wait({}, (err, res) => (err ? fail(err) : done(res))));
    await new Promise<void>(async (ok) => {
      while (releases.length === 0) await new Promise((r) => setTimeout(r, 10));
      ok();
    });
    expect(state.inFlightCalls).toBe(1);

    let drained: boolean | undefined;
    const draining = state.drain(120_000).then((r) => (drained = r));
    const during = await health(address);
    expect(during).toMatchObject({ code: EXIT.ERROR, out: 'NOT_SERVING' });
    expect(await checkHealth(address, { service: 'cairn.v1.ShardService' })).toBe('NOT_SERVING');

    const refused = await new Promise<grpc.ServiceError>((done) => client.wait({}, (err) => done(err!)));
    expect(refused.code).toBe(grpc.status.UNAVAILABLE);
    expect(refused.details).toContain('shutting down');
    expect(drained).toBeUndefined();

    releases.shift()!();
    await expect(inFlight).resolves.toEqual({ ok: true });
    await draining;
    expect(drained).toBe(true);
    client.close();

    await shutdownServer(server, 5000);
    const gone = await health(address, { timeout: '2000' });
    expect(gone.code).toBe(EXIT.UNAVAILABLE);
    expect(gone.err).toContain('no health answer');
  });

  it('bad arguments exit 2', async () => {
    const c = io();
    await expect(runHealth({}, c.io)).rejects.toMatchObject({ exitCode: EXIT.BAD_ARGS });
    await expect(runHealth({ addr: 'nohost' }, c.io)).rejects.toMatchObject({ exitCode: EXIT.BAD_ARGS });
  });
});
