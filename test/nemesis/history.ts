/**
 * A history of register operations, as clients saw them: one record per
 * operation with its invocation and its completion (Jepsen's :invoke and
 * :ok / :fail / :info). Pure data plus a recorder; no I/O except the
 * explicit save/load helpers.
 *
 * Each key is one register (one column of one row). Every write carries a
 * value no other write uses, so a read names the write it saw.
 *
 * Time is a single logical clock shared by every client of the process: an
 * event counter, bumped at each invocation (just before the request leaves)
 * and at each completion (just after the answer arrived). Op A precedes op B
 * in real time exactly when A.ret < B.call.
 */
import { readFileSync, writeFileSync } from 'node:fs';

export type OpKind = 'put' | 'get' | 'cas';

/**
 * - ok: the operation completed and the result is known;
 * - fail: it certainly took no effect (a failed read; a write refused before it was sent);
 * - unknown: it may or may not have taken effect, now or at any later time (a
 *   write whose call ended in an error or a timeout). Its completion is open-ended.
 */
export type Outcome = 'ok' | 'fail' | 'unknown';

export interface Op {
  /** Unique within the history. */
  id: number;
  /** The client (logical process) that ran it; each client runs one op at a time. */
  client: number;
  key: string;
  f: OpKind;
  /** put: the value written; cas: the value written when the check holds. */
  value?: string;
  /** cas: the value the check expects; null means "expect absent". */
  expected?: string | null;
  /**
   * put: a replacing put (the SDK's `replace: true`): the shard drops every
   * version of the column stored before it. Still a register write of the key.
   */
  replace?: boolean;
  /**
   * Timestamp (µs, decimal: histories are JSON) of the version involved, when
   * the client learnt it: put / writeRows, the one the write was given (as the
   * SDK returns it); get, the one of the version read. Absent for cas (the SDK
   * does not return it) and for ops not ok.
   */
  timestampUs?: string;
  /** get: the value read (null = absent); cas: whether the write happened. Set when outcome is ok. */
  result?: string | null | boolean;
  outcome: Outcome;
  /** Logical time of the invocation. */
  call: number;
  /** Logical time of the completion; absent (+∞) for unknown outcomes and ops still running. */
  ret?: number;
  /** Wall-clock ms, for people reading a history. */
  callMs?: number;
  retMs?: number;
  /** The error that ended a fail / unknown op. */
  error?: string;
}

/** Records invocations and completions from many concurrent clients of one process. */
export class HistoryRecorder {
  private clock = 0;
  private nextId = 0;
  readonly ops: Op[] = [];

  /** Call just before the request is sent. */
  invoke(client: number, key: string, f: OpKind, args: { value?: string; expected?: string | null; replace?: boolean } = {}): Op {
    const op: Op = { id: this.nextId++, client, key, f, outcome: 'unknown', call: ++this.clock, callMs: Date.now() };
    if (args.value !== undefined) op.value = args.value;
    if (args.expected !== undefined) op.expected = args.expected;
    if (args.replace) op.replace = true;
    this.ops.push(op);
    return op;
  }

  /** Call just after the answer arrived; `timestampUs` as on Op. */
  ok(op: Op, result?: string | null | boolean, timestampUs?: bigint): void {
    op.outcome = 'ok';
    if (result !== undefined) op.result = result;
    if (timestampUs !== undefined) op.timestampUs = String(timestampUs);
    op.ret = ++this.clock;
    op.retMs = Date.now();
  }

  /** The op certainly took no effect. */
  fail(op: Op, error: string): void {
    op.outcome = 'fail';
    op.error = error;
    op.ret = ++this.clock;
    op.retMs = Date.now();
  }

  /** The op may have taken effect, or may still take effect: its completion stays open (ret absent). */
  unknown(op: Op, error: string): void {
    op.outcome = 'unknown';
    op.error = error;
    op.retMs = Date.now();
  }
}

/** Human-readable one-liner for an op, as in Knossos reports. */
export function showOp(op: Op): string {
  const q = (v: string | null | undefined) => (v === null || v === undefined ? 'nil' : JSON.stringify(v));
  const span = `[${op.call}, ${op.ret ?? '∞'}]`;
  let what: string;
  switch (op.f) {
    case 'put':
      what = `${op.replace ? 'put-replace' : 'put'}(${q(op.value)})`;
      break;
    case 'get':
      what = op.outcome === 'ok' ? `get() -> ${q(op.result as string | null)}` : 'get()';
      break;
    case 'cas':
      what = `cas(${q(op.expected)} -> ${q(op.value)})${op.outcome === 'ok' ? ` -> ${op.result}` : ''}`;
      break;
  }
  return `#${op.id} c${op.client} ${op.key} ${span} ${what} ${op.outcome}${op.timestampUs ? ` @${op.timestampUs}` : ''}${op.error ? ` (${op.error})` : ''}`;
}

export function saveHistory(path: string, ops: readonly Op[]): void {
  writeFileSync(path, ops.map((o) => JSON.stringify(o)).join('\n') + '\n');
}

export function loadHistory(path: string): Op[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Op);
}
