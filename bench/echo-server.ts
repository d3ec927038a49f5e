/**
 * The no-op gRPC echo server of bench:peers: the transport floor. It is served
 * the way Cairn's servers are — ts-proto generated code with the same options
 * (bench/buf.gen.yaml), services/common/grpc.ts `startServer` (same channel
 * options) and its `unary` handler wrapper — minus authentication and storage.
 *
 *   node dist/bench/echo-server.js [--listen 127.0.0.1:0]
 *
 * Prints `listening <port>` on stdout once bound; exits on SIGTERM or SIGINT.
 */
import winston from 'winston';
import type { UntypedServiceImplementation } from '@grpc/grpc-js';
import { startServer, unary, type HandlerEnv } from '../services/common/grpc.js';
import { EchoServiceService, type EchoRequest, type EchoResponse } from './gen/cairnbench/echo/v1/echo.js';

const REPLY = Buffer.alloc(64 * 1024, 0x61);

async function main(): Promise<void> {
  const i = process.argv.indexOf('--listen');
  const listen = i > 0 ? process.argv[i + 1]! : '127.0.0.1:0';
  const env: HandlerEnv = {
    service: 'EchoService',
    log: winston.createLogger({ silent: true, transports: [new winston.transports.Console()] }),
    tokenKey: Buffer.alloc(32),
  };
  const impl: UntypedServiceImplementation = {
    echo: unary<EchoRequest, EchoResponse>(env, 'Echo', null, async (req) => ({
      payload: req.replyBytes > 0 ? REPLY.subarray(0, Math.min(req.replyBytes, REPLY.length)) : req.payload,
    })),
  };
  const { server, port } = await startServer(listen, [[EchoServiceService, impl]], { maxMessageBytes: 16 * 1024 * 1024 });
  process.stdout.write(`listening ${port}\n`);
  const stop = () => server.tryShutdown(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`echo-server: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
