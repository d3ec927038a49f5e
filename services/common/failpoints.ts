/**
 * Named failpoints for crash tests, like TiKV's FAILPOINTS. They are inert
 * unless CAIRN_FAILPOINTS names them:
 *
 *   CAIRN_FAILPOINTS="master-after-commit=crash,source-after-fence=error"
 *
 * `crash` kills this process at once with SIGKILL (no cleanup, no flush: what
 * a power cut or OOM kill looks like); `error` throws a CairnError INTERNAL so
 * the surrounding step fails as if a peer had broken; `pause` stops this
 * process with SIGSTOP the first time the point is reached (a frozen VM, a
 * long GC pause, a laptop lid: its connections stay open and nothing answers),
 * and after a SIGCONT it runs on as if nothing happened, the point disarmed;
 * `lose` throws a retryable UNAVAILABLE the first time only, where a step has
 * been done but its answer is lost on the way back (a reset connection), so
 * the caller's retry meets the step already done. A bare name means crash.
 */
import { writeSync } from 'node:fs';
import { CairnError } from './errors.js';

export type FailAction = 'crash' | 'error' | 'pause' | 'lose';

export function parseFailpoints(spec: string | undefined): Map<string, FailAction> {
  const out = new Map<string, FailAction>();
  for (const part of (spec ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
    const [name, action = 'crash'] = part.split('=');
    if (action !== 'crash' && action !== 'error' && action !== 'pause' && action !== 'lose') {
      throw new Error(`CAIRN_FAILPOINTS: ${name}: expected "crash", "error", "pause" or "lose", got "${action}"`);
    }
    out.set(name!, action);
  }
  return out;
}

let active: Map<string, FailAction> | undefined;

/** Replaces the active failpoints (tests in one process); defaults to CAIRN_FAILPOINTS. */
export function setFailpoints(spec: string | undefined): void {
  active = parseFailpoints(spec);
}

/** Triggers the named failpoint if it is enabled. */
export function failpoint(name: string): void {
  active ??= parseFailpoints(process.env.CAIRN_FAILPOINTS);
  const action = active.get(name);
  if (!action) return;
  if (action === 'error') throw new CairnError('INTERNAL', `failpoint ${name} fired`);
  if (action === 'lose') {
    active.delete(name);
    process.stderr.write(JSON.stringify({ level: 'warn', message: 'failpoint: losing the answer', failpoint: name, pid: process.pid }) + '\n');
    throw new CairnError('UNREACHABLE', `failpoint ${name}: the answer was lost`);
  }
  if (action === 'pause') {
    active.delete(name);
    // Synchronous, so the line is out before the process stops: a test waits for it to know the point was reached.
    writeSync(2, JSON.stringify({ level: 'error', message: 'failpoint: pausing', failpoint: name, pid: process.pid }) + '\n');
    process.kill(process.pid, 'SIGSTOP');
    return;
  }
  process.stderr.write(JSON.stringify({ level: 'error', message: 'failpoint: crashing', failpoint: name, pid: process.pid }) + '\n');
  process.kill(process.pid, 'SIGKILL');
}
