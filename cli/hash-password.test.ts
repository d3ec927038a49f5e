import { describe, expect, it } from '@jest/globals';
import { PassThrough } from 'node:stream';
import { isPasswordHash, verifyPassword } from '../services/common/auth.js';
import { HASH_PASSWORD_EXIT, runHashPassword } from './hash-password.js';

function collect(stream: PassThrough): () => string {
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return () => Buffer.concat(chunks).toString('utf8');
}

function pipeIO(input: string | Buffer) {
  const stdin = new PassThrough();
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out = collect(stdout);
  const err = collect(stderr);
  stdin.end(input);
  return { io: { stdin, stdout, stderr }, out, err };
}

/** A stand-in terminal: a PassThrough that says it is a TTY and records raw-mode switches. */
function ttyIO() {
  const stdin = Object.assign(new PassThrough(), { isTTY: true, rawModes: [] as boolean[] });
  const setRawMode = (mode: boolean) => {
    stdin.rawModes.push(mode);
    return stdin;
  };
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out = collect(stdout);
  const err = collect(stderr);
  return { io: { stdin: Object.assign(stdin, { setRawMode }), stdout, stderr }, stdin, out, err };
}

describe('runHashPassword from a pipe', () => {
  it('prints only the hash and a newline, and it verifies', async () => {
    const { io, out, err } = pipeIO('s3cret password\n');
    expect(await runHashPassword(io)).toBe(HASH_PASSWORD_EXIT.OK);
    const text = out();
    expect(text).toMatch(/^\$scrypt\$[^\n]+\n$/);
    const hash = text.trimEnd();
    expect(isPasswordHash(hash)).toBe(true);
    expect(verifyPassword('s3cret password', hash)).toBe(true);
    expect(verifyPassword('s3cret password\n', hash)).toBe(false);
    expect(err()).toBe('');
  });

  it('strips exactly one trailing newline (LF or CRLF) and nothing else', async () => {
    for (const [input, pw] of [
      ['pw\r\n', 'pw'],
      ['pw\n\n', 'pw\n'],
      [' pw ', ' pw '],
    ] as const) {
      const { io, out } = pipeIO(input);
      expect(await runHashPassword(io)).toBe(0);
      expect(verifyPassword(pw, out().trimEnd())).toBe(true);
    }
  });

  it('reads a password that arrives in several chunks', async () => {
    const stdin = new PassThrough();
    const stdout = new PassThrough();
    const out = collect(stdout);
    const done = runHashPassword({ stdin, stdout, stderr: new PassThrough() });
    stdin.write('päss');
    stdin.write(Buffer.from('wörd').subarray(0, 2)); // split inside "ö"
    stdin.end(Buffer.concat([Buffer.from('wörd').subarray(2), Buffer.from('\n')]));
    expect(await done).toBe(0);
    expect(verifyPassword('pässwörd', out().trimEnd())).toBe(true);
  });

  it('refuses an empty password with one error line and exit code 2', async () => {
    for (const input of ['', '\n']) {
      const { io, out, err } = pipeIO(input);
      expect(await runHashPassword(io)).toBe(2);
      expect(out()).toBe('');
      expect(err()).toMatch(/^error: empty password[^\n]*\n$/);
    }
  });
});

describe('runHashPassword on a terminal', () => {
  it('prompts twice on stderr with raw mode on, and prints a hash that verifies', async () => {
    const { io, stdin, out, err } = ttyIO();
    const done = runHashPassword(io);
    stdin.write('hunter2');
    stdin.write('x\u007f'); // typo, then backspace
    stdin.write('\r');
    stdin.write('hunter2\r');
    expect(await done).toBe(0);
    expect(verifyPassword('hunter2', out().trimEnd())).toBe(true);
    const prompts = err();
    expect(prompts).toContain('Password: ');
    expect(prompts).toContain('Repeat password: ');
    expect(prompts).not.toContain('hunter2'); // echo off
    expect(stdin.rawModes).toEqual([true, false]);
  });

  it('keeps keystrokes typed ahead of the second prompt', async () => {
    const { io, stdin, out } = ttyIO();
    const done = runHashPassword(io);
    stdin.write('typed-ahead\rtyped-ahead\r');
    expect(await done).toBe(0);
    expect(verifyPassword('typed-ahead', out().trimEnd())).toBe(true);
  });

  it('fails with exit code 2 when the two entries differ', async () => {
    const { io, stdin, out, err } = ttyIO();
    const done = runHashPassword(io);
    stdin.write('one\rtwo\r');
    expect(await done).toBe(2);
    expect(out()).toBe('');
    expect(err()).toContain('error: the passwords do not match');
  });

  it('refuses an empty password', async () => {
    const { io, stdin, out, err } = ttyIO();
    const done = runHashPassword(io);
    stdin.write('\r');
    expect(await done).toBe(2);
    expect(out()).toBe('');
    expect(err()).toContain('error: empty password');
    expect(stdin.rawModes).toEqual([true, false]);
  });

  it('stops on Ctrl-C', async () => {
    const { io, stdin, out } = ttyIO();
    const done = runHashPassword(io);
    stdin.write('abc\u0003');
    expect(await done).toBe(HASH_PASSWORD_EXIT.INTERRUPTED);
    expect(out()).toBe('');
  });
});
