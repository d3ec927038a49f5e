/**
 * The one workload of the crash, under-load and chaos tests, and the check
 * that ends it. N concurrent SDK clients (each its own CairnClient, user
 * `writer`), each running one operation at a time — put, get and
 * checkAndMutate on one column, writeRows and getRows over a few keys — every
 * write with a value no other write to that key uses, each recorded in the
 * history (history.ts). Keys are a given set (registers, read and written by
 * every client), or fresh ones (`nextKey`: each key written once, so the end
 * shows whether every acknowledged write is still there).
 *
 * Outcomes: a read that fails took no effect (fail); a write that fails may
 * or may not have taken effect, now or later (unknown).
 *
 * With `replaceFraction`, that fraction of the single-key puts is sent with
 * `replace: true` (the shard drops the column's older versions), recorded as
 * `op.replace`. Puts and writeRows record the timestamp the SDK returns, reads
 * the timestamp of the version they read (`op.timestampUs`), so the end check
 * can tell a version a replace dropped from a lost one.
 *
 * `checkHistory` reads every key at the end (recorded, and all versions) and
 * runs the checker (checker.ts): per-key linearizability, and the final state
 * (every acknowledged write present, once, in timestamp order, unless a
 * replacing put applied after it dropped it).
 */
import { CairnClient } from '../../services/client/client.js';
import { fromServiceError } from '../../services/common/errors.js';
import { USERS } from '../harness/inproc.js';
import { checkFinal, linearizabilityAnomalies, type Anomaly, type FinalVersion, type KeyResult } from './checker.js';
import { HistoryRecorder, type Op } from './history.js';

export const COLUMN = 'v';

type Mix = { put: number; get: number; cas: number; writeRows?: number; getRows?: number };
const OPS = ['get', 'getRows', 'put', 'writeRows', 'cas'] as const;

export interface WorkloadOptions {
  master: string;
  /** The registers; with `nextKey`, only where reads and cas look. */
  keys: string[];
  clients: number;
  /** Deadline of each operation, retries included. */
  opTimeoutMs: number;
  /**
   * Self-test: client 0 writes with a timestamp from long ago, so its
   * acknowledged puts are never the latest: the checker must say so.
   */
  sabotage?: boolean;
  /** Mix of operations, weights (default put 3, get 4, cas 3). */
  mix?: Mix;
  random?: () => number;
  /** Writes go to a fresh key each: the `seq`th write of client `client`. */
  nextKey?: (client: number, seq: number) => string;
  /** Keys per writeRows / getRows (default 4). */
  batch?: number;
  /** Values are padded to this many bytes. */
  valueBytes?: number;
  /** Pause after each op, ms (default none; 50 ms after a failed one). */
  pauseMs?: number;
  /** Client ids (and values) start here, so workloads can share a recorder. */
  firstClient?: number;
  /**
   * Fraction (0..1) of the single-key puts sent with `replace: true`
   * (default 0: no replace, and no extra draw from `random`).
   */
  replaceFraction?: number;
}

export interface Workload {
  recorder: HistoryRecorder;
  /** Stops issuing ops; resolves once every client's last op has ended. */
  stop(): Promise<void>;
  /** Ops completed so far (any outcome). */
  completed(): number;
}

export function connectClient(master: string, timeoutMs: number, role: 'rw' | 'r' | 'admin' = 'rw'): Promise<CairnClient> {
  const u = USERS.find((x) => x.role === role)!;
  return CairnClient.connect({ master, user: u.user, password: u.password, timeoutMs });
}

export interface OpOptions {
  timeoutMs: number;
  staleTimestamp?: bigint;
  /** put: send it with `replace: true`. */
  replace?: boolean;
}

const outcomeOf = (rec: HistoryRecorder, ops: Op[], f: Op['f'], err: unknown) => {
  const e = fromServiceError(err);
  const msg = `${e.code}: ${e.message}`.slice(0, 300);
  for (const op of ops) (f === 'get' ? rec.fail : rec.unknown).call(rec, op, msg);
};

/** Runs one op through the SDK and records it. */
export async function runOp(
  client: CairnClient,
  rec: HistoryRecorder,
  id: number,
  key: string,
  f: Op['f'],
  args: { value?: string; expected?: string | null },
  o: OpOptions,
): Promise<Op> {
  const op = rec.invoke(id, key, f, f === 'put' && o.replace ? { ...args, replace: true } : args);
  const { timeoutMs } = o;
  try {
    if (f === 'get') {
      const cell = (await client.get(key, { columns: [COLUMN], timeoutMs })).find((c) => c.column === COLUMN);
      rec.ok(op, cell === undefined ? null : cell.value.toString('utf8'), cell?.timestampUs);
    } else if (f === 'put') {
      const cells = o.staleTimestamp ? [{ column: COLUMN, value: args.value!, timestampUs: o.staleTimestamp }] : { [COLUMN]: args.value! };
      const ts = await client.put(key, cells, { timeoutMs, replace: o.replace ?? false });
      // put returns the timestamp given to cells sent without one (0 when every cell had its own).
      rec.ok(op, undefined, o.staleTimestamp ?? ts);
    } else {
      const check = args.expected === null ? { column: COLUMN, absent: true } : { column: COLUMN, equals: args.expected! };
      const ok = await client.checkAndMutate(key, check, { [COLUMN]: args.value! }, { timeoutMs });
      rec.ok(op, ok);
    }
  } catch (err) {
    outcomeOf(rec, [op], f, err);
  }
  return op;
}

/**
 * One writeRows (f = put: `value` to every key) or one getRows (f = get) over
 * several keys, recorded as one op per key over the same span.
 */
export async function runBatch(client: CairnClient, rec: HistoryRecorder, id: number, keys: string[], f: 'put' | 'get', value: string | undefined, o: OpOptions): Promise<Op[]> {
  const ops = keys.map((key) => rec.invoke(id, key, f, f === 'put' ? { value } : {}));
  try {
    if (f === 'put') {
      const ts = await client.writeRows(keys.map((row) => ({ row, cells: { [COLUMN]: value! } })), { timeoutMs: o.timeoutMs });
      ops.forEach((op, i) => rec.ok(op, undefined, ts[i]));
    } else {
      const got = await client.getRows(keys, { columns: [COLUMN], timeoutMs: o.timeoutMs });
      for (const op of ops) {
        const cell = got.get(op.key)?.find((c) => c.column === COLUMN);
        rec.ok(op, cell?.value.toString('utf8') ?? null, cell?.timestampUs);
      }
    }
  } catch (err) {
    outcomeOf(rec, ops, f, err);
  }
  return ops;
}

export async function startWorkload(o: WorkloadOptions, rec = new HistoryRecorder()): Promise<Workload> {
  const random = o.random ?? Math.random;
  const mix: Mix = o.mix ?? { put: 3, get: 4, cas: 3 };
  const weights = OPS.map((f) => mix[f] ?? 0);
  const total = weights.reduce((a, b) => a + b, 0);
  const batch = o.batch ?? 4;
  const first = o.firstClient ?? 0;
  const clients = await Promise.all(Array.from({ length: o.clients }, () => connectClient(o.master, 30_000)));
  let stopping = false;
  let done = 0;

  const loop = async (id: number, client: CairnClient) => {
    // What this client last saw in each key: a good guess for the next cas.
    const seen = new Map<string, string | null>();
    const pick = () => o.keys[Math.floor(random() * o.keys.length)]!;
    const some = () => [...new Set(Array.from({ length: batch }, pick))];
    let seq = 0;
    while (!stopping) {
      let r = random() * total;
      const f = OPS[weights.findIndex((w) => (r -= w) < 0)] ?? 'get';
      seq++;
      const value = `c${id}-${seq}`.padEnd(o.valueBytes ?? 0, '.');
      const fresh = () => o.nextKey!(id, seq);
      const opts: OpOptions = { timeoutMs: o.opTimeoutMs, staleTimestamp: o.sabotage && id === 0 ? BigInt(seq) : undefined };
      if (f === 'put' && (o.replaceFraction ?? 0) > 0) opts.replace = random() < o.replaceFraction!;
      let ops: Op[];
      if (f === 'get') ops = [await runOp(client, rec, id, pick(), 'get', {}, opts)];
      else if (f === 'getRows') ops = await runBatch(client, rec, id, some(), 'get', undefined, opts);
      else if (f === 'put') ops = [await runOp(client, rec, id, o.nextKey ? fresh() : pick(), 'put', { value }, opts)];
      else if (f === 'writeRows') ops = await runBatch(client, rec, id, o.nextKey ? Array.from({ length: batch }, (_, i) => `${fresh()}/${i}`) : some(), 'put', value, opts);
      else {
        const key = pick();
        ops = [await runOp(client, rec, id, key, 'cas', { value, expected: seen.has(key) ? seen.get(key)! : null }, opts)];
      }
      for (const op of ops) {
        if (op.outcome !== 'ok') continue;
        if (op.f === 'get') seen.set(op.key, op.result as string | null);
        else if (op.f === 'put' || op.result === true) seen.set(op.key, op.value!);
      }
      done++;
      const failed = ops.some((op) => op.outcome !== 'ok');
      if (o.pauseMs || failed) await new Promise((r2) => setTimeout(r2, Math.max(o.pauseMs ?? 0, failed ? 50 : 0)));
    }
  };
  const loops = clients.map((c, i) => loop(first + i, c));
  return {
    recorder: rec,
    completed: () => done,
    async stop() {
      stopping = true;
      await Promise.all(loops);
      for (const c of clients) c.close();
    },
  };
}

export interface CheckResult {
  anomalies: Anomaly[];
  /** Per key, what the linearizability search did. */
  results: KeyResult[];
  /** The value each key ends with (undefined: absent). */
  finals: Map<string, string | undefined>;
}

/**
 * The end of a run, once the clients have stopped: a recorded read of every
 * key in the history (client `readerId`, …), and a read of all its versions;
 * then the checker. A final read that fails is an anomaly.
 */
export async function checkHistory(master: string, rec: HistoryRecorder, readerId: number, timeoutMs = 30_000): Promise<CheckResult> {
  const keys = [...new Set(rec.ops.map((op) => op.key))];
  const anomalies: Anomaly[] = [];
  const versions = new Map<string, FinalVersion[]>();
  const reader = await connectClient(master, timeoutMs);
  try {
    for (let i = 0; i < keys.length; i += 50) {
      const part = keys.slice(i, i + 50);
      for (const op of await runBatch(reader, rec, readerId, part, 'get', undefined, { timeoutMs })) {
        if (op.outcome !== 'ok') anomalies.push({ kind: 'other', key: op.key, message: `final read of ${op.key} failed: ${op.error}` });
      }
      // A failed read leaves its keys out: checkFinal reports each as not read.
      const all = await reader.getRows(part, { columns: [COLUMN], allVersions: true, timeoutMs }).catch((err: Error) => {
        anomalies.push({ kind: 'other', message: `final read of every version of ${part.join(', ')} failed: ${err.message}` });
        return undefined;
      });
      if (all) for (const k of part) versions.set(k, (all.get(k) ?? []).map((c) => ({ value: c.value.toString('utf8'), timestampUs: c.timestampUs })));
    }
  } finally {
    reader.close();
  }
  const lin = linearizabilityAnomalies(rec.ops);
  anomalies.push(...lin.anomalies, ...checkFinal(rec.ops, versions));
  const finals = new Map(keys.map((k) => [k, versions.get(k)?.[0]?.value]));
  return { anomalies, results: lin.results, finals };
}
