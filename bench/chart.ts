/**
 * Draws the bench:peers chart (SVG) from a results file, so the picture in the
 * README is always the numbers in bench/results/. peers-bench.ts calls
 * `renderChart`; to redraw an old run:
 *
 *   node dist/bench/chart.js bench/results/<date>.json docs/bench-peers.svg
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface ResultLine {
  system: 'cairn' | 'etcd' | 'redis' | 'level' | 'echo';
  /** Cairn rows: the cluster's replication factor (files from before issue 15 have none: 1). */
  replicationFactor?: number;
  /** etcd rows: the cluster's size (files from before issue 15 have none: 1). */
  members?: number;
  op: 'put' | 'get' | 'batch' | 'scan' | 'transfer';
  rowsPerCall: number;
  opsPerSec: number;
  rowsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  serverCpuUsPerOp: number;
  [k: string]: unknown;
}

export interface ResultsFile {
  date: string;
  machine?: string;
  results: ResultLine[];
  [k: string]: unknown;
}

/**
 * A row's series: its system, told apart by replication factor or cluster
 * size when not 1 — "cairn rf3", "etcd 3-member" — so that factor-3 rows are
 * bars of their own, never mistaken for the factor-1 ones.
 */
export function seriesLabel(r: { system: string; replicationFactor?: number; members?: number }): string {
  if (r.system === 'cairn' && (r.replicationFactor ?? 1) !== 1) return `cairn rf${r.replicationFactor}`;
  if (r.system === 'etcd' && (r.members ?? 1) !== 1) return `etcd ${r.members}-member`;
  return r.system;
}

const COLORS: Record<string, string> = {
  cairn: '#2f6f4f',
  'cairn rf3': '#7fb89a',
  etcd: '#4a78b5',
  'etcd 3-member': '#9dbbe3',
  redis: '#c0504d',
  level: '#8a8a8a',
  echo: '#d9a441',
};
/** Bar order within a group, and the legend's. */
const SERIES = ['cairn', 'cairn rf3', 'etcd', 'etcd 3-member', 'redis', 'level', 'echo'];
const colorOf = (series: string): string => COLORS[series] ?? '#555555';
const orderOf = (series: string): number => (SERIES.includes(series) ? SERIES.indexOf(series) : SERIES.length);
/** An ISO time as "2026-12-04 16:30 UTC"; a bare date (older files) as it is. */
const showDate = (d: string): string => (/^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(d) ? `${d.slice(0, 10)} ${d.slice(11, 16)} UTC` : d);

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const k = (n: number): string => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e4 ? `${(n / 1e3).toFixed(0)}k` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n >= 10 ? n.toFixed(0) : n.toFixed(1));

function groupLabel(r: ResultLine): string {
  // Lines of one workload share a group even when a system takes fewer rows per call (etcd's Txn limit).
  const m = typeof r.workload === 'string' ? /^batch(\d+)$/.exec(r.workload) : null;
  if (m) return `batch of ${Number(m[1]).toLocaleString('en-US')}`;
  if (r.workload === 'scan_all') return 'full scan (whole scans)';
  if (r.workload === 'prefix_scan') return 'prefix scan, 1 in 1,000';
  if (r.op === 'batch') return `batch of ${r.rowsPerCall.toLocaleString('en-US')}`;
  if (r.op === 'scan') return `scan (pages of ${r.rowsPerCall.toLocaleString('en-US')})`;
  if (r.op === 'transfer') return 'range transfer';
  return `${r.op} 1 row`;
}

/** One panel: grouped horizontal bars on a log scale. */
function panel(
  lines: ResultLine[],
  value: (r: ResultLine) => number,
  title: string,
  x0: number,
  width: number,
  y0: number,
): { svg: string; height: number } {
  const groups = new Map<string, ResultLine[]>();
  for (const r of lines) {
    if (!(value(r) > 0) || !Number.isFinite(value(r))) continue;
    const g = groupLabel(r);
    groups.set(g, [...(groups.get(g) ?? []), r]);
  }
  const vals = [...groups.values()].flat().map(value);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...vals, 1e9))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...vals, 1))));
  const labelW = 150;
  const plotW = width - labelW - 60;
  const xOf = (v: number) => x0 + labelW + (plotW * Math.log10(v / lo)) / Math.log10(hi / lo);
  const bar = 13;
  const out: string[] = [`<text x="${x0}" y="${y0 + 14}" class="t">${esc(title)}</text>`];
  let y = y0 + 30;
  const top = y;
  for (const [g, rs] of groups) {
    out.push(`<text x="${x0}" y="${y + 11}" class="g">${esc(g)}</text>`);
    const sorted = [...rs].sort((x, y) => orderOf(seriesLabel(x)) - orderOf(seriesLabel(y)));
    for (const r of sorted) {
      const v = value(r);
      const w = Math.max(1, xOf(v) - xOf(lo));
      const note = r.op === 'batch' && typeof r.workload === 'string' && !r.workload.endsWith(String(r.rowsPerCall)) ? ` (${r.rowsPerCall}/call)` : '';
      out.push(`<rect x="${xOf(lo).toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${bar}" fill="${colorOf(seriesLabel(r))}"/>`);
      out.push(`<text x="${(xOf(lo) + w + 4).toFixed(1)}" y="${y + 10}" class="v">${esc(`${seriesLabel(r)} ${k(v)}${note}`)}</text>`);
      y += bar + 2;
    }
    y += 8;
  }
  // decade grid lines
  for (let d = lo; d <= hi * 1.0001; d *= 10) {
    const x = xOf(d).toFixed(1);
    out.unshift(`<line x1="${x}" y1="${top - 4}" x2="${x}" y2="${y}" class="grid"/><text x="${x}" y="${y + 12}" class="ax">${k(d)}</text>`);
  }
  return { svg: out.join('\n'), height: y + 20 - y0 };
}

export function renderChart(file: ResultsFile): string {
  const lines = file.results;
  const W = 1000;
  const half = W / 2;
  const a = panel(lines, (r) => r.rowsPerSec, 'Throughput, rows/s (log scale; higher is better)', 10, half - 10, 40);
  const b = panel(
    lines,
    // Per row as measured (rows actually returned), else per op ÷ rows per call.
    (r) => (typeof r.serverCpuUsPerRow === 'number' ? r.serverCpuUsPerRow : r.serverCpuUsPerOp / Math.max(1, r.rowsPerCall)),
    'Server CPU per row, µs (log scale; lower is better)',
    half + 10,
    half - 10,
    40,
  );
  const present = [...new Set(lines.map(seriesLabel))].sort((x, y) => orderOf(x) - orderOf(y));
  const replicated = present.some((s) => s !== 'cairn' && s.startsWith('cairn')) || present.some((s) => s !== 'etcd' && s.startsWith('etcd'));
  const H = Math.max(a.height, b.height) + 70 + (replicated ? 14 : 0);
  const legend = present.map((s, i) => `<rect x="${10 + i * 125}" y="${H - 22}" width="12" height="12" fill="${colorOf(s)}"/><text x="${26 + i * 125}" y="${H - 12}" class="g">${esc(s)}</text>`).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">
<style>.t{font-size:13px;font-weight:bold}.g{font-size:11px}.v{font-size:10px;fill:#333}.ax{font-size:9px;fill:#777;text-anchor:middle}.grid{stroke:#ddd;stroke-width:1}.h{font-size:15px;font-weight:bold}.s{font-size:10px;fill:#555}</style>
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" class="h">bench:peers — ${esc(showDate(file.date))}</text>
<text x="10" y="34" class="s">${esc(file.machine ?? '')} · Cairn = master + 3 shards through the SDK; level = classic-level in process (server CPU = its whole process); echo = no-op grpc-js server</text>
${replicated ? `<text x="10" y="${H - 30}" class="s">cairn rf3 = a second Cairn cluster at replication factor 3 (3 shards); etcd 3-member = three local etcd processes, the client at the leader; server CPU = all their processes</text>` : ''}
${a.svg}
${b.svg}
${legend}
</svg>
`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [input, output] = process.argv.slice(2);
  if (!input || !output) {
    console.error('usage: node dist/bench/chart.js <results.json> <out.svg>');
    process.exit(2);
  }
  writeFileSync(output, renderChart(JSON.parse(readFileSync(input, 'utf8')) as ResultsFile));
  console.log(`wrote ${output}`);
}
