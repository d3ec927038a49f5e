/**
 * Every RPC of every Cairn service, as a plain gRPC client in any language
 * sees it: loaded from proto/ with @grpc/proto-loader (field descriptors,
 * and serializers from plain objects with uint64 as decimal strings), and
 * called with a pass-through serializer so a test can send any bytes at
 * all: a valid message, the encoding of another message, garbage, nothing.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { resolve } from 'node:path';
import { AdminServiceService } from '../../proto/gen/cairn/v1/admin.js';
import { ShardControlServiceService } from '../../proto/gen/cairn/v1/control.js';
import { MasterServiceService } from '../../proto/gen/cairn/v1/master.js';
import { ShardServiceService } from '../../proto/gen/cairn/v1/shard.js';

/** The servers' own (ts-proto) codecs, by service and camelCase method. */
const SERVER_DEFS: Record<string, Record<string, grpc.MethodDefinition<any, any>>> = {
  MasterService: MasterServiceService,
  ShardService: ShardServiceService,
  ShardControlService: ShardControlServiceService,
  AdminService: AdminServiceService,
};

export type ServiceName = 'MasterService' | 'ShardService' | 'ShardControlService' | 'AdminService';

export interface FieldDesc {
  name: string;
  type: string;
  label: string;
  typeName: string;
}

export interface Rpc {
  service: ServiceName;
  /** The proto name, e.g. WriteRows. */
  name: string;
  path: string;
  responseStream: boolean;
  /** The request message's full name, e.g. cairn.v1.WriteRowsRequest. */
  requestType: string;
  /** Encodes a plain object (uint64 as decimal strings) as the request message. */
  encode(req: object): Buffer;
  /**
   * The request exactly as the server will see it: its own decoder (which
   * throws where it would refuse the bytes), and its encoder for such objects.
   */
  serverDecode(b: Buffer): any;
  serverEncode(req: any): Buffer;
}

export const SERVICE_NAMES: readonly ServiceName[] = ['MasterService', 'ShardService', 'ShardControlService', 'AdminService'];

let loaded: protoLoader.PackageDefinition | undefined;

export function packageDefinition(): protoLoader.PackageDefinition {
  loaded ??= protoLoader.loadSync(['cairn/v1/master.proto', 'cairn/v1/shard.proto', 'cairn/v1/control.proto', 'cairn/v1/admin.proto'], {
    includeDirs: [resolve('proto')],
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  });
  return loaded;
}

/** The fields of a message, by full name (cairn.v1.X) or by the short name used in type references. */
export function fieldsOf(typeName: string): FieldDesc[] {
  const full = typeName.startsWith('cairn.v1.') ? typeName : `cairn.v1.${typeName.replace(/^\./, '').replace(/^cairn\.v1\./, '')}`;
  const def = packageDefinition()[full] as protoLoader.MessageTypeDefinition<object, object> | undefined;
  if (!def) throw new Error(`unknown message ${typeName}`);
  return (def.type as { field: FieldDesc[] }).field;
}

export function allRpcs(): Rpc[] {
  const pkg = packageDefinition();
  const out: Rpc[] = [];
  for (const service of SERVICE_NAMES) {
    const def = pkg[`cairn.v1.${service}`] as protoLoader.ServiceDefinition;
    for (const [name, m] of Object.entries(def)) {
      const md = m as protoLoader.MethodDefinition<object, object> & { requestType: { type: { name: string } } };
      const server = SERVER_DEFS[service]![md.originalName!]!;
      out.push({
        serverDecode: (b) => server.requestDeserialize(b),
        serverEncode: (req) => server.requestSerialize(req),
        service,
        name,
        path: md.path,
        responseStream: md.responseStream,
        requestType: `cairn.v1.${md.requestType.type.name}`,
        encode: (req) => md.requestSerialize(req),
      });
    }
  }
  return out;
}

export function rpc(service: ServiceName, name: string): Rpc {
  const r = allRpcs().find((x) => x.service === service && x.name === name);
  if (!r) throw new Error(`no RPC ${service}.${name}`);
  return r;
}

/** Encodes a plain object as any message type (to send one RPC another's request). */
export function encodeAs(typeName: string, obj: object): Buffer {
  const def = packageDefinition()[typeName] as protoLoader.MessageTypeDefinition<object, object>;
  return def.serialize(obj);
}

export interface RawResult {
  code: grpc.status;
  details: string;
  /** Response messages received (raw bytes). */
  messages: Buffer[];
  /** The domain code from trailers (cairn-error-code), when sent. */
  errorCode?: string;
  /** A server stream that was still open, with nothing sent, after `idleMs` (then cancelled). */
  open?: boolean;
}

const passthrough = (b: Buffer) => b;

/**
 * Calls an RPC with these exact request bytes. `authorization` is the whole
 * header value (e.g. `Bearer <token>`); undefined sends none. A server
 * stream is cancelled after its first message (WatchMap never ends), or,
 * with `idleMs`, once it has been open that long with nothing sent.
 */
export function invokeRaw(client: grpc.Client, r: Rpc, payload: Buffer, authorization: string | undefined, timeoutMs = 10_000, idleMs?: number): Promise<RawResult> {
  const md = new grpc.Metadata();
  if (authorization !== undefined) md.set('authorization', authorization);
  const deadline = Date.now() + timeoutMs;
  const errorCodeOf = (e: grpc.ServiceError) => {
    const v = e.metadata?.get('cairn-error-code')[0];
    return v === undefined ? undefined : String(v);
  };
  return new Promise<RawResult>((done) => {
    if (!r.responseStream) {
      client.makeUnaryRequest(r.path, passthrough, passthrough, payload, md, { deadline }, (err, res) => {
        if (err) done({ code: err.code, details: err.details, messages: [], errorCode: errorCodeOf(err) });
        else done({ code: grpc.status.OK, details: '', messages: res ? [res] : [] });
      });
      return;
    }
    const stream = client.makeServerStreamRequest(r.path, passthrough, passthrough, payload, md, { deadline });
    const messages: Buffer[] = [];
    let settled = false;
    const finish = (res: RawResult) => {
      if (settled) return;
      settled = true;
      done(res);
    };
    if (idleMs !== undefined) {
      const idle = setTimeout(() => {
        finish({ code: grpc.status.OK, details: '', messages, open: true });
        stream.cancel();
      }, idleMs);
      stream.on('close', () => clearTimeout(idle));
      stream.on('error', () => clearTimeout(idle));
      stream.on('data', () => clearTimeout(idle));
    }
    stream.on('data', (m: Buffer) => {
      messages.push(m);
      finish({ code: grpc.status.OK, details: '', messages });
      stream.cancel();
    });
    stream.on('error', (err: grpc.ServiceError) => finish({ code: err.code, details: err.details, messages, errorCode: errorCodeOf(err) }));
    stream.on('end', () => finish({ code: grpc.status.OK, details: '', messages }));
  });
}

/** Calls a server-streaming RPC and reads it to its end (or error), keeping every message. */
export function invokeStream(client: grpc.Client, r: Rpc, payload: Buffer, authorization: string | undefined, timeoutMs = 60_000): Promise<RawResult> {
  const md = new grpc.Metadata();
  if (authorization !== undefined) md.set('authorization', authorization);
  return new Promise<RawResult>((done) => {
    const stream = client.makeServerStreamRequest(r.path, passthrough, passthrough, payload, md, { deadline: Date.now() + timeoutMs });
    const messages: Buffer[] = [];
    stream.on('data', (m: Buffer) => messages.push(m));
    stream.on('error', (err: grpc.ServiceError) => done({ code: err.code, details: err.details, messages }));
    stream.on('end', () => done({ code: grpc.status.OK, details: '', messages }));
  });
}

/** Decodes a response message by its type name (cairn.v1.X), with uint64 as strings. */
export function decode<T = any>(typeName: string, b: Buffer): T {
  return (packageDefinition()[typeName] as protoLoader.MessageTypeDefinition<object, object>).deserialize(b) as T;
}

/** One generic client per address (any service: the path names the method). */
export function rawClient(address: string): grpc.Client {
  return new grpc.Client(address, grpc.credentials.createInsecure(), {
    'grpc.max_send_message_length': -1,
    'grpc.max_receive_message_length': -1,
  });
}
