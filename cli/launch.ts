/**
 * Starting one `cairn` server (master or shard) as a child process: what
 * `cairn dev` and the tests' process driver (test/harness/procs.ts) share.
 * The child's stderr — its JSON log lines — is appended to a log file and
 * handed to a callback; `listening` resolves with the address the process
 * reports in its "listening" line, or rejects at once, naming the cause
 * (its own error line), when it exits first.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The CLI entry point, as seen from the built dist/cli/. */
export const DIST_CAIRN_BIN = fileURLToPath(new URL('../../bin/cairn.js', import.meta.url));

export interface LaunchOptions {
  name: string;
  /** Arguments after `cairn`. */
  args: string[];
  /** The child's whole environment. */
  env: NodeJS.ProcessEnv;
  /** Path of bin/cairn.js (default: the one beside this build). */
  bin?: string;
  /** Every stderr line is appended here, between `--- start` and `--- exit` markers. */
  logFile?: string;
  /** A line written to the log file after the start marker. */
  note?: string;
  /** Each stderr line as it arrives. */
  onLine?: (line: string) => void;
  /** Rewrites the command line (e.g. to run it in a network namespace). */
  wrap?: (argv: string[]) => string[];
  /** How long `listening` waits, ms (default 30 s). */
  readyTimeoutMs?: number;
}

export interface Launched {
  name: string;
  child: ChildProcess;
  /** Resolves when the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The address from its "listening" line; rejects with the cause if it exits (or times out) first. */
  listening: Promise<string>;
  /** The last lines of its stderr. */
  tail: string[];
}

export function launchCairn(o: LaunchOptions): Launched {
  const argv = o.wrap ? o.wrap([process.execPath, o.bin ?? DIST_CAIRN_BIN, ...o.args]) : [process.execPath, o.bin ?? DIST_CAIRN_BIN, ...o.args];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env: o.env });
  const log = o.logFile ? createWriteStream(o.logFile, { flags: 'a' }) : undefined;
  log?.write(`--- start pid ${child.pid} ${new Date().toISOString()}\n${o.note ? o.note + '\n' : ''}`);
  const tail: string[] = [];
  const lines = createInterface({ input: child.stderr! });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    // 'close': every stderr line has been read by then, so the cause is in the tail.
    child.once('close', (code, signal) => {
      log?.end(`--- exit code=${code} signal=${signal} ${new Date().toISOString()}\n`);
      done({ code, signal });
    }),
  );
  const listening = new Promise<string>((resolve, reject) => {
    const ms = o.readyTimeoutMs ?? 30_000;
    const timer = setTimeout(() => reject(new Error(`${o.name} did not report "listening" within ${ms / 1000} s ${lastLines(tail)}`)), ms);
    lines.on('line', (line) => {
      log?.write(line + '\n');
      if (tail.push(line) > 20) tail.shift();
      o.onLine?.(line);
      if (!line.includes('"listening"')) return;
      try {
        const rec = JSON.parse(line) as { message?: string; address?: string };
        if (rec.message === 'listening' && rec.address) {
          clearTimeout(timer);
          resolve(rec.address);
        }
      } catch {
        /* not a log record */
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      const cause = causeOf(tail);
      reject(new Error(`${o.name} exited (${signal ?? code}) before listening${cause ? `: ${cause}` : ''} ${lastLines(tail)}`));
    });
  });
  listening.catch(() => undefined); // a caller that only watches `exited` must not see an unhandled rejection
  return { name: o.name, child, exited, listening, tail };
}

const lastLines = (tail: string[]) => `(last lines: ${tail.slice(-8).map((l) => l.slice(0, 300)).join(' | ').slice(-1500)})`;

/**
 * Why a child stopped, from the last lines of its stderr: its own `error:`
 * line (main.ts), else the last JSON log record at level error.
 */
export function causeOf(lines: string[]): string | undefined {
  const plain = lines.filter((l) => l.startsWith('error: ')).pop();
  if (plain) return plain.slice('error: '.length);
  for (const l of [...lines].reverse()) {
    try {
      const rec = JSON.parse(l) as { level?: string; message?: string; error?: string };
      if (rec.level === 'error') return rec.error ? `${rec.message}: ${rec.error}` : rec.message;
    } catch {
      /* not a log record */
    }
  }
  return undefined;
}
