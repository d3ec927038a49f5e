/**
 * The chaos run itself fails when it should: with --self-test one client
 * writes with timestamps from 1970, so its acknowledged puts are never the
 * latest value. The CLI must then report anomalies, save the smallest
 * offending history to a file, print `chaos: ops=N faults=N anomalies=N`
 * with N > 0 last, and exit 1. (A passing run is test/nemesis/chaos.test.ts.)
 */
import { describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { FaultDeck } from './nemesis.js';
import { parseDuration } from './run.js';

describe('chaos CLI', () => {
  it('parses durations', () => {
    expect(parseDuration('10m')).toBe(600_000);
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration('1500ms')).toBe(1500);
    expect(parseDuration('45')).toBe(45_000);
    expect(() => parseDuration('ten minutes')).toThrow(/--duration/);
  });

  it('deals every fault kind once first, then by weight; a fault put back never stalls the deck', () => {
    let seed = 7;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    const deck = new FaultDeck<string>([['a', 1], ['b', 2], ['lose', 2]], random);
    expect([deck.draw(), deck.draw(), deck.draw()].sort()).toEqual(['a', 'b', 'lose']);
    // Whatever the order, a kind that keeps being put back (a machine loss that must wait) lets the others through.
    const drawn: string[] = [];
    for (let i = 0; i < 30; i++) {
      const k = deck.draw();
      drawn.push(k);
      if (k === 'lose') deck.putBack(k);
    }
    expect(drawn.filter((k) => k === 'a').length).toBeGreaterThanOrEqual(5);
    expect(drawn.filter((k) => k === 'b').length).toBeGreaterThanOrEqual(10);
  });

  it('exits 1 and saves the smallest offending history when a client writes behind the clock', async () => {
    const out = mkdtempSync(join(tmpdir(), 'cairn-chaos-selftest-'));
    try {
      const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((done) => {
        const child = spawn(process.execPath, [resolve('dist/test/nemesis/run.js'), '--duration', '6s', '--shards', '3', '--clients', '4', '--keys', '2', '--self-test', '--no-partitions', '--out', out], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let text = '';
        child.stdout.on('data', (d) => (text += d));
        child.stderr.on('data', (d) => (text += d));
        child.on('exit', (c) => done({ code: c, stdout: text }));
      });
      const lines = stdout.trim().split('\n');
      expect(lines.at(-1)).toMatch(/^chaos: ops=\d+ faults=\d+ anomalies=[1-9]\d*$/);
      expect(code).toBe(1);
      expect(stdout).toMatch(/partitions: SKIPPED — turned off/);
      const [runDir] = readdirSync(out);
      const files = readdirSync(join(out, runDir!));
      expect(files).toContain('history.jsonl');
      const lin = files.filter((f) => /^anomaly-\d+-nonlinearizable-.*\.txt$/.test(f));
      expect(lin.length).toBeGreaterThan(0);
      // Minimized: a handful of ops that still prove it, one per line after the message.
      const body = readFileSync(join(out, runDir!, lin[0]!), 'utf8').trim().split('\n');
      expect(body[0]).toMatch(/not linearizable/);
      const ops = body.slice(2);
      expect(ops.length).toBeGreaterThan(0);
      expect(ops.length).toBeLessThanOrEqual(8);
      for (const op of ops) expect(op).toMatch(/^#\d+ c\d+ \S+ \[\d+, (\d+|∞)\] (put|get|cas)/);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 180_000);
});
