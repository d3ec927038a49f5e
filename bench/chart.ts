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

const COLORS: Record<string, string> = { cairn: '#2f6f4f', etcd: '#4a78b5', redis: '#c0504d', level: '#8a8a8a', echo: '#d9a441' };
const SYSTEMS = ['cairn', 'etcd', 'redis', 'level', 'echo'] as const;

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
    const sorted = SYSTEMS.flatMap((s) => rs.filter((r) => r.system === s));
    for (const r of sorted) {
      const v = value(r);
      const w = Math.max(1, xOf(v) - xOf(lo));
      const note = r.op === 'batch' && typeof r.workload === 'string' && !r.workload.endsWith(String(r.rowsPerCall)) ? ` (${r.rowsPerCall}/call)` : '';
      out.push(`<rect x="${xOf(lo).toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${bar}" fill="${COLORS[r.system]}"/>`);
      out.push(`<text x="${(xOf(lo) + w + 4).toFixed(1)}" y="${y + 10}" class="v">${esc(`${r.system} ${k(v)}${note}`)}</text>`);
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
  const H = Math.max(a.height, b.height) + 70;
  const legend = SYSTEMS.map((s, i) => `<rect x="${10 + i * 110}" y="${H - 22}" width="12" height="12" fill="${COLORS[s]}"/><text x="${26 + i * 110}" y="${H - 12}" class="g">${s}</text>`).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">
<style>.t{font-size:13px;font-weight:bold}.g{font-size:11px}.v{font-size:10px;fill:#333}.ax{font-size:9px;fill:#777;text-anchor:middle}.grid{stroke:#ddd;stroke-width:1}.h{font-size:15px;font-weight:bold}.s{font-size:10px;fill:#555}</style>
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" class="h">bench:peers — ${esc(file.date)}</text>
<text x="10" y="34" class="s">${esc(file.machine ?? '')} · Cairn = master + 3 shards through the SDK; level = classic-level in process (server CPU = its whole process); echo = no-op grpc-js server</text>
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
