/**
 * The clients: N concurrent SDK clients (each its own CairnClient, user
 * `writer`), each running one operation at a time on a small set of hot keys
 * — put, get and checkAndMutate on one column, every write with a value no
 * other write uses — and recording each in the history.
 *
 * Outcomes: a read that fails took no effect (fail); a write that fails may
 * or may not have taken effect, now or later (unknown).
 */
import { CairnClient } from '../../services/client/client.js';
import { fromServiceError } from '../../services/common/errors.js';
import { USERS } from '../harness/inproc.js';
import { HistoryRecorder, type Op } from './history.js';

export const COLUMN = 'v';

export interface WorkloadOptions {
  master: string;
  keys: string[];
  clients: number;
  /** Deadline of each operation, retries included. */
  opTimeoutMs: number;
  /**
   * Self-test: client 0 writes with a timestamp from long ago, so its
   * acknowledged puts are never the latest: the checker must say so.
   */
  sabotage?: boolean;
  /** Mix of operations, weights. */
  mix?: { put: number; get: number; cas: number };
  random?: () => number;
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

/** Runs one op through the SDK and records it. */
export async function runOp(
  client: CairnClient,
  rec: HistoryRecorder,
  id: number,
  key: string,
  f: Op['f'],
  args: { value?: string; expected?: string | null },
  timeoutMs: number,
  staleTimestamp?: bigint,
): Promise<Op> {
  const op = rec.invoke(id, key, f, args);
  try {
    if (f === 'get') {
      const v = await client.getValue(key, COLUMN, { timeoutMs });
      rec.ok(op, v === undefined ? null : v.toString('utf8'));
    } else if (f === 'put') {
      await client.put(key, staleTimestamp ? [{ column: COLUMN, value: args.value!, timestampUs: staleTimestamp }] : { [COLUMN]: args.value! }, { timeoutMs });
      rec.ok(op);
    } else {
      const check = args.expected === null ? { column: COLUMN, absent: true } : { column: COLUMN, equals: args.expected! };
      const ok = await client.checkAndMutate(key, check, { [COLUMN]: args.value! }, { timeoutMs });
      rec.ok(op, ok);
    }
  } catch (err) {
    const e = fromServiceError(err);
    const msg = `${e.code}: ${e.message}`.slice(0, 300);
    if (f === 'get') rec.fail(op, msg);
    else rec.unknown(op, msg);
  }
  return op;
}

export async function startWorkload(o: WorkloadOptions, rec = new HistoryRecorder()): Promise<Workload> {
  const random = o.random ?? Math.random;
  const mix = o.mix ?? { put: 3, get: 4, cas: 3 };
  const total = mix.put + mix.get + mix.cas;
  const clients = await Promise.all(Array.from({ length: o.clients }, () => connectClient(o.master, 30_000)));
  let stopping = false;
  let done = 0;

  const loop = async (id: number, client: CairnClient) => {
    // What this client last saw in each key: a good guess for the next cas.
    const seen = new Map<string, string | null>();
    let seq = 0;
    while (!stopping) {
      const key = o.keys[Math.floor(random() * o.keys.length)]!;
      const r = random() * total;
      const value = `c${id}-${++seq}`;
      let op: Op;
      if (r < mix.get) {
        op = await runOp(client, rec, id, key, 'get', {}, o.opTimeoutMs);
        if (op.outcome === 'ok') seen.set(key, op.result as string | null);
      } else if (r < mix.get + mix.put) {
        op = await runOp(client, rec, id, key, 'put', { value }, o.opTimeoutMs, o.sabotage && id === 0 ? BigInt(seq) : undefined);
        if (op.outcome === 'ok') seen.set(key, value);
      } else {
        const expected = seen.has(key) ? seen.get(key)! : null;
        op = await runOp(client, rec, id, key, 'cas', { value, expected }, o.opTimeoutMs);
        if (op.outcome === 'ok' && op.result === true) seen.set(key, value);
      }
      done++;
      if (op.outcome !== 'ok') await new Promise((r2) => setTimeout(r2, 50));
    }
  };
  const loops = clients.map((c, i) => loop(i, c));
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
