/** Raw gRPC clients for tests that act like a plain client in any language: no SDK, no routing. */
import { credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { MasterServiceClient } from '../../proto/gen/cairn/v1/master.js';
import { ShardControlServiceClient } from '../../proto/gen/cairn/v1/control.js';
import { ShardServiceClient } from '../../proto/gen/cairn/v1/shard.js';
import { deriveTokenKey, ServerTokenSource } from '../../services/common/auth.js';
import { call } from '../../services/common/grpc.js';
import { rowHash } from '../../services/common/hash.js';
import type { HashRange } from '../../services/common/ranges.js';
import { TEST_CREDENTIAL } from './inproc.js';

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

/** A raw client of a shard's internal control service (ShardControlService). */
export function controlClient(address: string): ShardControlServiceClient {
  return new ShardControlServiceClient(address, credentials.createInsecure());
}

/** A unary call that resolves with the raw grpc-js error (status code, details, trailers) instead of throwing. */
export function rawCall<Req, Res>(
  client: ShardServiceClient | ShardControlServiceClient,
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

const testServerToken = new ServerTokenSource(deriveTokenKey(TEST_CREDENTIAL), 'test');

/** ShardControlService.DescribeShard with a server token of no cluster (as `cairn master rebuild` asks): the shard's identity and last map. */
export async function describeShard(address: string) {
  const c = controlClient(address);
  try {
    return await call(c, c.describeShard, {}, { token: testServerToken.get(), timeoutMs: 5000 });
  } finally {
    c.close();
  }
}

/** The first `n` row keys `tag/0`, `tag/1`, … whose hash falls in the range. */
export function rowsIn(range: HashRange, tag: string, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) {
    const row = `${tag}/${i}`;
    const h = rowHash(row);
    if (h >= range.start && h < range.end) out.push(row);
  }
  return out;
}
