/**
 * The prompt's history, kept across runs in a file: $CAIRN_HISTORY_FILE, or
 * ~/.cairn_history. One command per line, oldest first, at most MAX_ENTRIES.
 * A file that cannot be read or written never stops the console: history is
 * then kept for this run only, and `problem` says why.
 */
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export const MAX_ENTRIES = 1000;

export interface History {
  readonly file: string;
  /** Entries, oldest first. */
  readonly entries: string[];
  /** Adds a submitted line (not a repeat of the last one) and saves it. */
  add(line: string): void;
  /** Why the file could not be used, if it could not. */
  readonly problem: string | undefined;
}

export function historyFile(env: NodeJS.ProcessEnv = process.env): string {
  return env.CAIRN_HISTORY_FILE || join(homedir(), '.cairn_history');
}

export function openHistory(file: string): History {
  let entries: string[] = [];
  let problem: string | undefined;
  try {
    entries = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '').slice(-MAX_ENTRIES);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') problem = `history file ${file}: ${(err as Error).message}`;
  }
  let sinceCompact = 0;
  return {
    file,
    entries,
    get problem() {
      return problem;
    },
    add(raw: string) {
      const line = raw.replace(/[\r\n]+/g, ' ').trim();
      if (!line || entries[entries.length - 1] === line) return;
      entries.push(line);
      if (entries.length > MAX_ENTRIES) entries.splice(0, entries.length - MAX_ENTRIES);
      if (problem) return;
      try {
        mkdirSync(dirname(file), { recursive: true });
        // Append as we go; rewrite the file once in a while so it stays bounded.
        if (++sinceCompact >= 100) {
          writeFileSync(file, entries.join('\n') + '\n', { mode: 0o600 });
          sinceCompact = 0;
        } else {
          appendFileSync(file, line + '\n', { mode: 0o600 });
        }
      } catch (err) {
        problem = `history file ${file}: ${(err as Error).message}`;
      }
    },
  };
}
