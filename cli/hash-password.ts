/**
 * `cairn hash-password`: prints the hash to put in a client entry's
 * `passwordHash` (or in `user:<hash>:role`).
 *
 * - On a terminal: prompts twice on stderr with echo off and requires the two to match.
 * - Otherwise: reads the password from stdin (one trailing newline is stripped)
 *   and prints only the hash and a newline, for scripts:
 *     printf '%s' "$PW" | cairn hash-password
 */
import { hashPassword } from '../services/common/auth.js';

export interface HashPasswordIO {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

/** Exit codes of `cairn hash-password`. */
export const HASH_PASSWORD_EXIT = {
  OK: 0,
  /** Empty password, or the two entries differ. */
  INVALID_INPUT: 2,
  /** Ctrl-C at the prompt. */
  INTERRUPTED: 130,
} as const;

class Interrupted extends Error {}

async function readAll(stdin: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stdin) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Reads lines from a terminal in raw mode, echoing nothing. Handles backspace,
 * Ctrl-U, Enter, Ctrl-C (Interrupted) and Ctrl-D or end of input (ends the
 * line). Keystrokes typed ahead of the next prompt are kept for it.
 */
class HiddenLineReader {
  private line = '';
  private readonly lines: Array<string | Interrupted> = [];
  private pending = Buffer.alloc(0); // an incomplete UTF-8 sequence split across chunks
  private ended = false;
  private waiter: (() => void) | undefined;
  private readonly onData = (chunk: Buffer | string): void => this.feed(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  private readonly onEnd = (): void => {
    this.ended = true;
    this.wake();
  };

  constructor(private readonly io: HashPasswordIO) {
    io.stdin.setRawMode?.(true);
    io.stdin.on('data', this.onData);
    io.stdin.on('end', this.onEnd);
    io.stdin.resume();
  }

  close(): void {
    const { stdin } = this.io;
    stdin.removeListener('data', this.onData);
    stdin.removeListener('end', this.onEnd);
    stdin.setRawMode?.(false);
    stdin.pause();
  }

  async next(prompt: string): Promise<string> {
    this.io.stderr.write(prompt);
    while (this.lines.length === 0 && !this.ended) await new Promise<void>((r) => (this.waiter = r));
    this.io.stderr.write('\n');
    const got = this.lines.shift();
    if (got instanceof Interrupted) throw got;
    if (got !== undefined) return got;
    const rest = this.line; // end of input: whatever was typed
    this.line = '';
    return rest;
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private feed(chunk: Buffer): void {
    const buf = Buffer.concat([this.pending, chunk]);
    let end = buf.length;
    // Keep back a trailing partial multi-byte character.
    for (let i = Math.max(0, buf.length - 3); i < buf.length; i++) {
      const b = buf[i]!;
      const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
      if (need > 1 && i + need > buf.length) {
        end = i;
        break;
      }
    }
    this.pending = buf.subarray(end);
    for (const ch of buf.subarray(0, end).toString('utf8')) {
      if (ch === '\r' || ch === '\n' || ch === '\u0004') {
        this.lines.push(this.line);
        this.line = '';
      } else if (ch === '\u0003') {
        this.lines.push(new Interrupted());
        this.line = '';
      } else if (ch === '\u007f' || ch === '\b') {
        this.line = Array.from(this.line).slice(0, -1).join('');
      } else if (ch === '\u0015') {
        this.line = ''; // Ctrl-U clears the line
      } else if (ch >= ' ') {
        this.line += ch;
      }
    }
    this.wake();
  }
}

export async function runHashPassword(io: HashPasswordIO): Promise<number> {
  const fail = (msg: string): number => {
    io.stderr.write(`error: ${msg}\n`);
    return HASH_PASSWORD_EXIT.INVALID_INPUT;
  };
  let password: string;
  if (io.stdin.isTTY) {
    const reader = new HiddenLineReader(io);
    try {
      password = await reader.next('Password: ');
      if (password === '') return fail('empty password; type a password, or pipe one on stdin');
      const again = await reader.next('Repeat password: ');
      if (again !== password) return fail('the passwords do not match; run cairn hash-password again');
    } catch (e) {
      if (e instanceof Interrupted) {
        io.stderr.write('interrupted\n');
        return HASH_PASSWORD_EXIT.INTERRUPTED;
      }
      throw e;
    } finally {
      reader.close();
    }
  } else {
    password = (await readAll(io.stdin)).replace(/\r?\n$/, '');
    if (password === '') return fail(`empty password on stdin; pipe one in, e.g. printf '%s' "$PW" | cairn hash-password`);
  }
  io.stdout.write(`${hashPassword(password)}\n`);
  return HASH_PASSWORD_EXIT.OK;
}
