/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha, the same answers on
 * both) serving the real files: `cairn/v1/shard.proto` and the rest as the
 * compiler saw them, with their imports and their comments (source code
 * info), so grpcurl, Postman or a Python reflection client shows the
 * documented API.
 *
 * Where the descriptors come from: `buf generate proto` (part of
 * `npm run build`) runs a plugin of ours, proto/protoc-gen-descriptor-set.mjs,
 * that writes the compiler's FileDescriptorSet, comments included, into
 * proto/gen/cairn/v1/descriptors.ts. It is compiled into dist/ with the rest
 * of the generated code, so an installed package or the image serves the same
 * bytes without buf or the .proto files at run time. The alternatives were
 * worse: @grpc/reflection is fed by proto-loader, which merges a package into
 * one synthetic file (`cairn_v1.proto`) and drops every comment; parsing the
 * .proto files at run time with protobufjs keeps comments but not their
 * source locations (paths and spans), which a descriptor's source code info
 * is made of and which we would have had to rebuild by hand; and shipping a
 * `buf build` output would need a build step outside `buf generate`.
 *
 * grpc.health.v1 comes from grpc-health-check's health.proto through
 * proto-loader (one file, no imports), under its usual name
 * `grpc/health/v1/health.proto`, without comments.
 *
 * The file descriptors are served as the compiler described them (decoded
 * and encoded again by @bufbuild/protobuf, which keeps every field); a
 * request for a file or a symbol returns that file first, then every file it
 * imports, transitively.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type DescriptorProto, type FieldDescriptorProto, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { protoPath as HEALTH_PROTO_PATH } from 'grpc-health-check';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { FILE_DESCRIPTOR_SET_BASE64 } from '../../proto/gen/cairn/v1/descriptors.js';

/** The name reflection gives grpc-health-check's health.proto. */
export const HEALTH_FILE = 'grpc/health/v1/health.proto';

interface IndexedFile {
  proto: FileDescriptorProto;
  bytes: Uint8Array;
}

/** Files by name, and which file declares each symbol and each extension. */
export class DescriptorIndex {
  readonly files = new Map<string, IndexedFile>();
  /** Fully-qualified name (no leading dot) → file name. */
  readonly symbols = new Map<string, string>();
  /** Extended message (no leading dot) → field number → file name. */
  readonly extensions = new Map<string, Map<number, string>>();

  constructor(files: Iterable<FileDescriptorProto | Uint8Array>) {
    for (const f of files) {
      const bytes = f instanceof Uint8Array ? f : toBinary(FileDescriptorProtoSchema, f);
      const proto = f instanceof Uint8Array ? fromBinary(FileDescriptorProtoSchema, f) : f;
      if (this.files.has(proto.name)) continue;
      this.files.set(proto.name, { proto, bytes });
      this.indexFile(proto);
    }
  }

  private indexFile(file: FileDescriptorProto): void {
    const name = file.name;
    const scoped = (scope: string, n: string) => (scope ? `${scope}.${n}` : n);
    const put = (fqn: string) => {
      if (!this.symbols.has(fqn)) this.symbols.set(fqn, name);
    };
    const extension = (scope: string, ext: FieldDescriptorProto) => {
      put(scoped(scope, ext.name));
      const extendee = ext.extendee.replace(/^\./, '');
      const byNumber = this.extensions.get(extendee) ?? new Map<number, string>();
      byNumber.set(ext.number, name);
      this.extensions.set(extendee, byNumber);
    };
    const enums = (scope: string, list: FileDescriptorProto['enumType']) => {
      for (const e of list) {
        put(scoped(scope, e.name));
        // Enum values are scoped like their enum's siblings, as in C++.
        for (const v of e.value) put(scoped(scope, v.name));
      }
    };
    const message = (scope: string, m: DescriptorProto) => {
      const fqn = scoped(scope, m.name);
      put(fqn);
      for (const f of m.field) put(`${fqn}.${f.name}`);
      for (const o of m.oneofDecl) put(`${fqn}.${o.name}`);
      for (const x of m.extension) extension(fqn, x);
      for (const n of m.nestedType) message(fqn, n);
      enums(fqn, m.enumType);
    };
    const pkg = file.package;
    for (const m of file.messageType) message(pkg, m);
    enums(pkg, file.enumType);
    for (const x of file.extension) extension(pkg, x);
    for (const s of file.service) {
      const fqn = scoped(pkg, s.name);
      put(fqn);
      for (const m of s.method) put(`${fqn}.${m.name}`);
    }
  }

  /** The file, then every file it imports (transitively), serialized; undefined for an unknown file. */
  withDependencies(name: string): Uint8Array[] | undefined {
    if (!this.files.has(name)) return undefined;
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const visit = (n: string) => {
      const f = this.files.get(n);
      if (!f || seen.has(n)) return;
      seen.add(n);
      out.push(f.bytes);
      for (const d of f.proto.dependency) visit(d);
    };
    visit(name);
    return out;
  }

  /** Every service declared in these files, fully qualified. */
  serviceNames(): string[] {
    const out: string[] = [];
    for (const { proto } of this.files.values()) for (const s of proto.service) out.push(proto.package ? `${proto.package}.${s.name}` : s.name);
    return out;
  }
}

/** The compiler's descriptors of cairn/v1/*.proto, with source code info (see the header). */
export function cairnFileDescriptors(): FileDescriptorProto[] {
  return fromBinary(FileDescriptorSetSchema, Buffer.from(FILE_DESCRIPTOR_SET_BASE64, 'base64')).file;
}

/** grpc.health.v1's descriptor, from grpc-health-check's health.proto. */
function healthFileDescriptor(): FileDescriptorProto {
  const def = protoLoader.loadSync(HEALTH_PROTO_PATH, {});
  // proto-loader keeps the file descriptors on the message types (the service has none).
  const protos: Buffer[] = (def['grpc.health.v1.HealthCheckRequest'] as { fileDescriptorProtos?: Buffer[] }).fileDescriptorProtos ?? [];
  const files = protos.map((b: Buffer) => fromBinary(FileDescriptorProtoSchema, b)).filter((f) => f.package === 'grpc.health.v1');
  if (files.length !== 1) throw new Error(`expected one grpc.health.v1 file from ${HEALTH_PROTO_PATH}, got ${files.length}`);
  return create(FileDescriptorProtoSchema, { ...files[0], name: HEALTH_FILE });
}

let cachedIndex: DescriptorIndex | undefined;

/** Every Cairn file and health's (built once). */
export function descriptorIndex(): DescriptorIndex {
  cachedIndex ??= new DescriptorIndex([...cairnFileDescriptors(), healthFileDescriptor()]);
  return cachedIndex;
}

// ---------------------------------------------------------------------------
// The service

interface ReflectionRequest {
  host?: string;
  message_request?: string;
  file_by_filename?: string;
  file_containing_symbol?: string;
  file_containing_extension?: { containing_type?: string; extension_number?: number };
  all_extension_numbers_of_type?: string;
  list_services?: string;
}

let cachedServices: grpc.ServiceDefinition[] | undefined;

/** grpc.reflection.v1 and v1alpha's ServerReflection, from the .proto files @grpc/reflection ships. */
function reflectionServices(): grpc.ServiceDefinition[] {
  if (cachedServices) return cachedServices;
  const dir = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection/package.json')), 'build', 'proto');
  const def = protoLoader.loadSync(['grpc/reflection/v1/reflection.proto', 'grpc/reflection/v1alpha/reflection.proto'], {
    includeDirs: [dir],
    keepCase: true,
    defaults: false,
    oneofs: true,
  });
  cachedServices = ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'].map((n) => {
    const s = def[n];
    if (!s) throw new Error(`${n} is missing from @grpc/reflection's protos`);
    return s as unknown as grpc.ServiceDefinition;
  });
  return cachedServices;
}

/** One answer of the reflection stream (the same shape in v1 and v1alpha). */
export function answer(index: DescriptorIndex, services: readonly string[], req: ReflectionRequest): object {
  const base = { valid_host: req.host ?? '', original_request: req };
  const files = (list: Uint8Array[] | undefined, what: string) =>
    list
      ? { ...base, file_descriptor_response: { file_descriptor_proto: list.map((b) => Buffer.from(b)) } }
      : { ...base, error_response: { error_code: grpc.status.NOT_FOUND, error_message: `${what} not found` } };
  switch (req.message_request) {
    case 'list_services':
      return { ...base, list_services_response: { service: services.map((name) => ({ name })) } };
    case 'file_by_filename':
      return files(index.withDependencies(req.file_by_filename ?? ''), `file ${req.file_by_filename}`);
    case 'file_containing_symbol': {
      const symbol = (req.file_containing_symbol ?? '').replace(/^\./, '');
      const file = index.symbols.get(symbol);
      return files(file === undefined ? undefined : index.withDependencies(file), `symbol ${symbol}`);
    }
    case 'file_containing_extension': {
      const type = (req.file_containing_extension?.containing_type ?? '').replace(/^\./, '');
      const n = req.file_containing_extension?.extension_number ?? 0;
      const file = index.extensions.get(type)?.get(n);
      return files(file === undefined ? undefined : index.withDependencies(file), `extension ${n} of ${type}`);
    }
    case 'all_extension_numbers_of_type': {
      const type = (req.all_extension_numbers_of_type ?? '').replace(/^\./, '');
      if (!index.symbols.has(type)) return { ...base, error_response: { error_code: grpc.status.NOT_FOUND, error_message: `type ${type} not found` } };
      return { ...base, all_extension_numbers_response: { base_type_name: type, extension_number: [...(index.extensions.get(type)?.keys() ?? [])].sort((a, b) => a - b) } };
    }
    default:
      return { ...base, error_response: { error_code: grpc.status.UNIMPLEMENTED, error_message: `unsupported reflection request ${req.message_request ?? '(none)'}` } };
  }
}

/**
 * Adds server reflection, v1 and v1alpha, to a server (before it binds).
 * `services` is what list_services answers: the services this process
 * serves; every Cairn file can be asked for whichever they are.
 */
export function addReflection(server: grpc.Server, services: readonly string[]): void {
  const index = descriptorIndex();
  const listed = [...services];
  for (const def of reflectionServices()) {
    server.addService(def, {
      ServerReflectionInfo: (call: grpc.ServerDuplexStream<ReflectionRequest, object>) => {
        call.on('data', (req: ReflectionRequest) => call.write(answer(index, listed, req)));
        call.on('end', () => call.end());
        call.on('error', () => undefined);
      },
    });
  }
}
