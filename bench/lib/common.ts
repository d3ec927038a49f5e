/**
 * Helpers shared by the benchmarks: a seeded key generator, incompressible
 * values, CPU accounting from /proc, percentiles and medians, table printing.
 * Linux only (it reads /proc).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** xoshiro128** — a fast seeded PRNG, so every system gets the very same key sequence. */
export class KeyGen {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    let x = seed >>> 0 || 1;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  u32(): number {
    const s = this.s;
    const m = Math.imul(s[1]!, 5) >>> 0;
    const r = Math.imul(((m << 7) | (m >>> 25)) >>> 0, 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = ((s[3]! << 11) | (s[3]! >>> 21)) >>> 0;
    return r;
  }
  /** `prefix` + hex digits, `length` characters in all (16 by default: a 16-byte key). */
  next(prefix = '', length = 16): string {
    const hex = this.u32().toString(16).padStart(8, '0') + this.u32().toString(16).padStart(8, '0');
    return prefix + hex.slice(0, length - prefix.length);
  }
}

/** 1 MiB of random bytes; each value is a window of it (so compression gets nothing). */
const VALUE_POOL = randomBytes(1 << 20);
let valueCursor = 0;
export function nextValue(bytes: number): Buffer {
  valueCursor = (valueCursor + 7919) % (VALUE_POOL.length - bytes);
  return VALUE_POOL.subarray(valueCursor, valueCursor + bytes);
}

// ---------------------------------------------------------------------------
// CPU accounting: /proc/<pid>/stat utime + stime (fields 14 and 15, clock ticks)

function clockTicksPerSecond(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}
export const CLK_TCK = clockTicksPerSecond();

/** utime + stime of a process (all its threads), in clock ticks; NaN when it cannot be read. */
export function procTicks(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[11]) + Number(rest[12]);
  } catch {
    return NaN;
  }
}

/** CPU seconds of some processes, from /proc (10 ms resolution at CLK_TCK 100). */
export function procSeconds(pids: number[]): number {
  let t = 0;
  for (const pid of pids) {
    const x = procTicks(pid);
    if (!Number.isNaN(x)) t += x;
  }
  return t / CLK_TCK;
}

/** Busy clock ticks of the whole machine, all CPUs (the "cpu" line of /proc/stat); NaN when unreadable. */
export function machineBusyTicks(): number {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    return user! + nice! + system! + irq! + softirq! + steal!;
  } catch {
    return NaN;
  }
}

/** CPU seconds per wall second of this process and the given processes, measured over `ms`. */
export async function busyCores(pids: number[], ms: number): Promise<number> {
  const c0 = process.cpuUsage();
  const t0 = procSeconds(pids);
  const w0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const self = process.cpuUsage(c0);
  return ((self.user + self.system) / 1e6 + procSeconds(pids) - t0) / ((performance.now() - w0) / 1000);
}

/** Waits until this process and `pids` use under `quietCores`, at most maxSeconds. */
export async function settle(pids: number[], maxSeconds: number, quietCores = 0.2): Promise<{ seconds: number; quiet: boolean }> {
  const start = performance.now();
  while (maxSeconds > 0) {
    if ((await busyCores(pids, 250)) < quietCores) return { seconds: (performance.now() - start) / 1000, quiet: true };
    if (performance.now() - start >= maxSeconds * 1000) return { seconds: (performance.now() - start) / 1000, quiet: false };
  }
  return { seconds: 0, quiet: true };
}

/** Pids of this process's children (from /proc/self/task/* /children). */
export function childPids(): number[] {
  const out = new Set<number>();
  try {
    for (const tid of readdirSync('/proc/self/task')) {
      const s = readFileSync(`/proc/self/task/${tid}/children`, 'utf8').trim();
      for (const p of s.split(/\s+/)) if (p) out.add(Number(p));
    }
  } catch {
    /* not Linux: nothing to do */
  }
  return [...out];
}

/** A TCP port that was free a moment ago (for servers that cannot bind port 0 and report it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** `n` distinct TCP ports that were free a moment ago (the harness's: each held until all are found). */
export { freePorts } from '../../test/harness/compose.js';

// ---------------------------------------------------------------------------
// Statistics and printing

export function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

export function median(xs: number[]): number {
  const v = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

export const fmtInt = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
export const fmtMs = (n: number): string => (!Number.isFinite(n) ? '-' : n < 1 ? n.toFixed(3) : n < 100 ? n.toFixed(2) : n.toFixed(0));
export const fmtFix = (n: number, d: number): string => (Number.isFinite(n) ? n.toFixed(d) : '-');
export const fmtK = (n: number): string => (!Number.isFinite(n) ? '-' : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0));
export const fmtRatio = (n: number): string => (!Number.isFinite(n) ? '-' : n >= 10 ? `${n.toFixed(0)}x` : n >= 0.1 ? `${n.toFixed(2)}x` : `${n.toFixed(3)}x`);

export function table(header: string[], rows: string[][], rightAlign: boolean[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (rightAlign[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
