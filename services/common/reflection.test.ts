/**
 * Server reflection serves the real files (services/common/reflection.ts):
 * a real gRPC server with a master's and a shard's services, set up as every
 * process does (ServingState.addToServer), asked over gRPC by a reflection
 * client (grpc-js with the reflection protos), v1 and v1alpha. The
 * descriptors it returns are cairn/v1/*.proto under their own names, with
 * their imports, and with the comments written in proto/cairn/v1/shard.proto.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MASTER_SERVICES } from '../master/server.js';
import { SHARD_SERVICES } from '../shard/server.js';
import { startServer, withPort } from './grpc.js';
import { HEALTH_SERVICE_NAME, ServingState } from './health.js';
import { HEALTH_FILE } from './reflection.js';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SHARD_PROTO = readFileSync(join(REPO, 'proto', 'cairn', 'v1', 'shard.proto'), 'utf8');

/**
 * The comment written right above the line that starts with `declaration` in
 * a .proto file, as protoc reports it: each `//` line without the `//`, then
 * a newline.
 */
function commentAbove(source: string, declaration: string): string {
  const lines = source.split('\n');
  const at = lines.findIndex((l) => l.trim().startsWith(declaration));
  if (at < 0) throw new Error(`${declaration} not in the .proto file`);
  const comment: string[] = [];
  for (let i = at - 1; i >= 0 && lines[i]!.trim().startsWith('//'); i--) comment.unshift(lines[i]!.trim().slice(2));
  return comment.map((l) => `${l}\n`).join('');
}

/** The leading comment at a source path (protoc's numbering: 4 message_type, 6 service, 2 field/method). */
function leadingComment(file: FileDescriptorProto, path: number[]): string | undefined {
  return file.sourceCodeInfo?.location.find((l) => l.path.join(',') === path.join(','))?.leadingComments;
}

type Reflector = { ask(req: object): Promise<any>; close(): void };

function reflector(address: string, version: 'v1' | 'v1alpha'): Reflector {
  const protos = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection/package.json')), 'build', 'proto');
  const pkg = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, { includeDirs: [protos], keepCase: true, defaults: true, oneofs: true });
  const Ctor = (grpc.loadPackageDefinition(pkg) as any).grpc.reflection[version].ServerReflection;
  const client = new Ctor(address, grpc.credentials.createInsecure());
  return {
    // One stream, several requests: answers come in order, as grpcurl uses it.
    ask: (req: object) =>
      new Promise<any>((done, fail) => {
        const call = client.ServerReflectionInfo();
        call.on('data', (d: unknown) => {
          done(d);
          call.end();
        });
        call.on('error', fail);
        call.write(req);
      }),
    close: () => client.close(),
  };
}

const decodeAll = (res: any): FileDescriptorProto[] =>
  (res.file_descriptor_response.file_descriptor_proto as Buffer[]).map((b) => fromBinary(FileDescriptorProtoSchema, b));

describe('server reflection over gRPC', () => {
  const servers: grpc.Server[] = [];
  const addresses: Record<'master' | 'shard', string> = { master: '', shard: '' };

  beforeAll(async () => {
    for (const [role, services] of [
      ['master', MASTER_SERVICES],
      ['shard', SHARD_SERVICES],
    ] as const) {
      const state = new ServingState(services);
      const started = await startServer('127.0.0.1:0', [], { maxMessageBytes: 1 << 20, register: (s) => state.addToServer(s) });
      servers.push(started.server);
      addresses[role] = withPort('127.0.0.1:0', started.port);
    }
  });
  afterAll(() => {
    for (const s of servers) s.forceShutdown();
  });

  it('lists every service a process serves, and health, on v1 and v1alpha', async () => {
    for (const version of ['v1', 'v1alpha'] as const) {
      for (const [role, services] of [
        ['master', MASTER_SERVICES],
        ['shard', SHARD_SERVICES],
      ] as const) {
        const r = reflector(addresses[role], version);
        const list = await r.ask({ list_services: '*' });
        r.close();
        const names = list.list_services_response.service.map((s: { name: string }) => s.name).sort();
        expect(names).toEqual([...services, HEALTH_SERVICE_NAME].sort());
      }
    }
  });

  it('file_containing_symbol cairn.v1.ShardService returns cairn/v1/shard.proto with its imports and comments', async () => {
    for (const version of ['v1', 'v1alpha'] as const) {
      const r = reflector(addresses.shard, version);
      const files = decodeAll(await r.ask({ file_containing_symbol: 'cairn.v1.ShardService' }));
      r.close();
      const shard = files[0]!;
      expect(shard.name).toBe('cairn/v1/shard.proto');
      expect(shard.package).toBe('cairn.v1');
      expect(shard.dependency).toEqual(['cairn/v1/common.proto']);
      // Every import is in the answer, and the files link: each type they name resolves.
      const names = files.map((f) => f.name);
      for (const f of files) for (const d of f.dependency) expect(names).toContain(d);
      const registry = createFileRegistry(shard, (name) => files.find((f) => f.name === name));
      const service = registry.getService('cairn.v1.ShardService');
      const write = service?.methods.find((m) => m.name === 'WriteRows');
      expect(write?.input.typeName).toBe('cairn.v1.WriteRowsRequest');
      expect(write?.output.typeName).toBe('cairn.v1.WriteRowsResponse');

      // The comments are the ones in the .proto file.
      const s = shard.service.findIndex((x) => x.name === 'ShardService');
      const m = shard.service[s]!.method.findIndex((x) => x.name === 'WriteRows');
      expect(m).toBeGreaterThanOrEqual(0);
      expect(leadingComment(shard, [6, s])).toBe(commentAbove(SHARD_PROTO, 'service ShardService'));
      expect(leadingComment(shard, [6, s])).toBe(' ShardService stores rows and serves them.\n');
      expect(leadingComment(shard, [6, s, 2, m])).toBe(commentAbove(SHARD_PROTO, 'rpc WriteRows('));
      const k = shard.messageType.findIndex((x) => x.name === 'WriteRowsRequest');
      const f = shard.messageType[k]!.field.findIndex((x) => x.name === 'sync');
      expect(leadingComment(shard, [4, k])).toBe(commentAbove(SHARD_PROTO, 'message WriteRowsRequest'));
      expect(leadingComment(shard, [4, k, 2, f])).toBe(commentAbove(SHARD_PROTO, 'bool sync = 3;'));
      // The file's own header comment (before `package`) is kept too.
      expect(shard.sourceCodeInfo!.location.find((l) => l.path.join(',') === '2')?.leadingComments).toContain('Routing:');
    }
  });

  it('file_by_filename, symbols inside files, health, and unknown names', async () => {
    const r = reflector(addresses.master, 'v1');
    const common = decodeAll(await r.ask({ file_by_filename: 'cairn/v1/common.proto' }));
    expect(common.map((f) => f.name)).toEqual(['cairn/v1/common.proto']);
    // Every Cairn file, whichever services this process lists.
    for (const name of ['admin', 'control', 'master', 'shard']) {
      const files = decodeAll(await r.ask({ file_by_filename: `cairn/v1/${name}.proto` }));
      expect(files.map((f) => f.name)).toEqual([`cairn/v1/${name}.proto`, 'cairn/v1/common.proto']);
      expect(files[0]!.sourceCodeInfo?.location.length).toBeGreaterThan(10);
    }
    const method = decodeAll(await r.ask({ file_containing_symbol: 'cairn.v1.ShardService.WriteRows' }));
    expect(method[0]!.name).toBe('cairn/v1/shard.proto');
    const message = decodeAll(await r.ask({ file_containing_symbol: 'cairn.v1.WriteRowsRequest' }));
    expect(message[0]!.name).toBe('cairn/v1/shard.proto');
    const admin = decodeAll(await r.ask({ file_containing_symbol: 'cairn.v1.AdminService' }));
    expect(admin[0]!.name).toBe('cairn/v1/admin.proto');
    const health = decodeAll(await r.ask({ file_containing_symbol: HEALTH_SERVICE_NAME }));
    expect(health.map((f) => f.name)).toEqual([HEALTH_FILE]);
    expect(health[0]!.service.map((s) => s.name)).toEqual(['Health']);

    const missing = await r.ask({ file_containing_symbol: 'cairn.v1.NoSuchThing' });
    expect(missing.error_response.error_code).toBe(grpc.status.NOT_FOUND);
    const noFile = await r.ask({ file_by_filename: 'cairn_v1.proto' });
    expect(noFile.error_response.error_code).toBe(grpc.status.NOT_FOUND);
    r.close();
  });
});
