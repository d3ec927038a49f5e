/** Raw gRPC clients for tests that act like a plain client in any language: no SDK, no routing. */
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { MasterServiceClient } from '../../proto/gen/cairn/v1/master.js';
import { ShardServiceClient } from '../../proto/gen/cairn/v1/shard.js';
import { call } from '../../services/common/grpc.js';

export async function login(master: string, user: string, password: string): Promise<string> {
  const c = new MasterServiceClient(master, credentials.createInsecure());
  try {
    return (await call(c, c.login, { user, password }, { timeoutMs: 5000 })).token;
  } finally {
    c.close();
  }
}

export function shardClient(address: string): ShardServiceClient {
  return new ShardServiceClient(address, credentials.createInsecure());
}

/** A unary call that resolves with the raw grpc-js error (status code, details, trailers) instead of throwing. */
export function rawCall<Req, Res>(
  client: ShardServiceClient,
  method: (req: Req, md: Metadata, opts: object, cb: (e: ServiceError | null, r: Res) => void) => unknown,
  req: Req,
  token?: string,
): Promise<{ res?: Res; err?: ServiceError }> {
  const md = new Metadata();
  if (token !== undefined) md.set('authorization', token.startsWith('Bearer') || token === '' ? token : `Bearer ${token}`);
  return new Promise((done) =>
    method.call(client, req, md, { deadline: Date.now() + 10_000 }, (err, res) => done(err ? { err } : { res })),
  );
}
