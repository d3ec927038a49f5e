import { afterAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { historyFile, MAX_ENTRIES, openHistory } from './history.js';

const dir = mkdtempSync(join(tmpdir(), 'cairn-history-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('history', () => {
  it('comes from $CAIRN_HISTORY_FILE, else ~/.cairn_history', () => {
    expect(historyFile({ CAIRN_HISTORY_FILE: '/x/h' })).toBe('/x/h');
    expect(historyFile({})).toMatch(/\.cairn_history$/);
  });

  it('is kept across runs, without repeats of the last line', () => {
    const file = join(dir, 'sub', 'h1');
    const a = openHistory(file);
    expect(a.entries).toEqual([]);
    a.add('servers');
    a.add('servers');
    a.add(' ranges ');
    expect(readFileSync(file, 'utf8')).toBe('servers\nranges\n');
    expect(openHistory(file).entries).toEqual(['servers', 'ranges']);
  });

  it('keeps at most MAX_ENTRIES', () => {
    const file = join(dir, 'h2');
    writeFileSync(file, Array.from({ length: MAX_ENTRIES + 10 }, (_, i) => `c${i}`).join('\n') + '\n');
    const h = openHistory(file);
    expect(h.entries.length).toBe(MAX_ENTRIES);
    expect(h.entries[0]).toBe('c10');
    for (let i = 0; i < 100; i++) h.add(`n${i}`);
    expect(openHistory(file).entries.length).toBeLessThanOrEqual(MAX_ENTRIES + 100);
    expect(h.entries.length).toBe(MAX_ENTRIES);
  });

  it('never stops the console when the file cannot be written', () => {
    writeFileSync(join(dir, 'blocker'), '');
    const h = openHistory(join(dir, 'blocker', 'h'));
    h.add('servers');
    expect(h.entries).toEqual(['servers']);
    expect(h.problem).toMatch(/history file/);
  });
});
