/**
 * A minimal Redis client for the benchmark: RESP2 over one TCP connection,
 * pipelined (many commands in flight, answered in order). Enough for SET, GET,
 * MSET and PING; no dependency.
 */
import { connect, type Socket } from 'node:net';

export type RespValue = string | number | Buffer | null | RespValue[];

class RespError extends Error {}

const CRLF = Buffer.from('\r\n');

/** Parses one reply at `at`; returns it and the offset after it, or undefined when `b` holds only part of it. */
function parse(b: Buffer, at: number): [RespValue, number] | undefined {
  if (at >= b.length) return undefined;
  const eol = b.indexOf(CRLF, at);
  if (eol < 0) return undefined;
  const type = b[at];
  const line = b.toString('latin1', at + 1, eol);
  const next = eol + 2;
  switch (type) {
    case 0x2b: // '+'
      return [line, next];
    case 0x2d: // '-'
      return [new RespError(line) as unknown as RespValue, next];
    case 0x3a: // ':'
      return [Number(line), next];
    case 0x24: {
      // '$'
      const n = Number(line);
      if (n < 0) return [null, next];
      if (b.length < next + n + 2) return undefined;
      return [b.subarray(next, next + n), next + n + 2];
    }
    case 0x2a: {
      // '*'
      const n = Number(line);
      if (n < 0) return [null, next];
      const out: RespValue[] = [];
      let p = next;
      for (let i = 0; i < n; i++) {
        const r = parse(b, p);
        if (!r) return undefined;
        out.push(r[0]);
        p = r[1];
      }
      return [out, p];
    }
    default:
      throw new Error(`bad RESP reply type 0x${(type ?? 0).toString(16)}`);
  }
}

export class RespConnection {
  private buf: Buffer = Buffer.alloc(0);
  private readonly waiting: Array<{ resolve: (v: RespValue) => void; reject: (e: Error) => void }> = [];
  private head = 0;

  private constructor(private readonly sock: Socket) {
    sock.setNoDelay(true);
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => this.failAll(err));
    sock.on('close', () => this.failAll(new Error('redis connection closed')));
  }

  static open(port: number, host = '127.0.0.1'): Promise<RespConnection> {
    return new Promise((resolve, reject) => {
      const sock = connect(port, host, () => {
        sock.off('error', reject);
        resolve(new RespConnection(sock));
      });
      sock.once('error', reject);
    });
  }

  /** Sends one command; resolves with its reply (rejects on a Redis error reply). */
  send(args: Array<string | Buffer>): Promise<RespValue> {
    const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
    for (const a of args) {
      const b = typeof a === 'string' ? Buffer.from(a) : a;
      parts.push(Buffer.from(`$${b.length}\r\n`), b, CRLF);
    }
    this.sock.write(Buffer.concat(parts));
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    let at = 0;
    for (;;) {
      const r = parse(this.buf, at);
      if (!r) break;
      at = r[1];
      const w = this.waiting[this.head++];
      if (this.head > 1024) {
        this.waiting.splice(0, this.head);
        this.head = 0;
      }
      if (!w) continue;
      if (r[0] instanceof RespError) w.reject(r[0]);
      else w.resolve(r[0]);
    }
    this.buf = at >= this.buf.length ? Buffer.alloc(0) : this.buf.subarray(at);
  }

  private failAll(err: Error): void {
    for (let i = this.head; i < this.waiting.length; i++) this.waiting[i]!.reject(err);
    this.waiting.length = 0;
    this.head = 0;
  }
}
