/**
 * Checkers for a history of register operations (history.ts). Pure: no I/O.
 *
 * 1. Per-key linearizability (`checkKey`, `checkLinearizable`): the
 *    Wing–Gong search with Lowe's memoization, as in Porcupine's
 *    `checkSingle` and Knossos' `wgl`: walk the events in time order, try to
 *    linearize each pending call, undo on reaching a completion whose op is
 *    not linearized yet, and never revisit a (set of linearized ops, register
 *    state) pair. Keys are independent registers, so each key is checked on
 *    its own (P-compositionality).
 *
 *    Unknown outcomes (the call ended in an error or a timeout) have an
 *    open-ended completion (+∞): the op may be linearized at any point after
 *    its invocation, or never (which is the same as "after everything").
 *    A cas of unknown outcome, if it ran, ran deterministically.
 *
 *    A replacing put (`op.replace`) is modelled as a plain put: it is a
 *    register write of the key. Replace only drops the column's older
 *    *versions*; the newest version after it is still its own value (its
 *    clock timestamp is above every version stored), so every read of the
 *    latest value sees exactly what it would after a put. The versions it
 *    drops matter only to the end check (3).
 *
 *    Two exact reductions keep unknown writes from blowing up the search:
 *    - an unknown write whose value nobody ever observed (no read returned
 *      it, no cas expected it) is indistinguishable from any other such
 *      write: all are collapsed into one anonymous value ⊥, and the search
 *      linearizes same-kind anonymous writes in invocation order only
 *      (swapping two of them never changes what anyone saw);
 *    - such a write is dropped altogether when no failed cas completes after
 *      its invocation: a linearization that places it can place it last
 *      instead, since until the next write nobody reads ⊥ anyway.
 *
 *    The memo table is keyed by a 64-bit Zobrist hash of the linearized set
 *    plus the state. A hash collision can only prune a branch, so at worst it
 *    reports a spurious anomaly (then minimized and shown); it can never hide
 *    a real one.
 *
 * 2. `minimize`: delta debugging down to a small history that is still not
 *    linearizable, removing only ops whose removal keeps any linearizable
 *    history linearizable (reads, failed cas, and writes nobody observed
 *    with no failed cas after them), so the small history proves the
 *    anomaly of the big one.
 *
 * 3. `checkFinal`: what must hold at the end, from an all-versions read of
 *    every key: every acknowledged write is present, no value was written
 *    twice (a retried write applied once), no value appears that no write
 *    wrote or whose cas said "not applied", and acknowledged writes that
 *    followed each other in real time have growing timestamps (else "latest"
 *    would go back).
 *
 *    Replace: an acknowledged write W missing at the end is not lost when a
 *    replacing put R of the key (the workload writes one column) is known to
 *    have been applied — acknowledged, its value read or expected by a cas
 *    that succeeded, or present at the end — and was applied after W: R's
 *    timestamp is above W's. See `droppedByReplace` for how that order is
 *    established when a timestamp is not known.
 */
import { rowHash } from '../../services/common/hash.js';
import type { ClusterMap, MapRange } from '../../services/common/map.js';
import { showOp, type Op } from './history.js';

export type AnomalyKind =
  | 'nonlinearizable'
  | 'inconclusive'
  | 'lost-write'
  | 'duplicate-write'
  | 'phantom-value'
  | 'timestamp-order'
  | 'ownership'
  | 'split-brain'
  | 'other';

export interface Anomaly {
  kind: AnomalyKind;
  key?: string;
  message: string;
  /** The offending history (minimized where that applies), by invocation. */
  ops?: Op[];
}

export interface KeyResult {
  key: string;
  linearizable: boolean;
  /** The search hit its step budget: neither proven nor refuted. */
  inconclusive: boolean;
  /** Ops given for the key, and ops the search had to place after the reductions. */
  ops: number;
  searched: number;
  steps: number;
  /** On failure: the op whose completion came before it could be linearized, on the deepest path. */
  stuckAt?: Op;
  /** On failure: how many ops the deepest path had linearized. */
  deepest?: number;
}

export interface CheckOptions {
  /** Search steps per key before giving up (inconclusive); default `defaultMaxSteps` of the ops searched. */
  maxSteps?: number;
}

/**
 * The search's budget grows with the history: a fixed 20M steps gave up on
 * one key of a 10-minute run (7,954 ops searched), which 35M steps (4.5 s)
 * then showed linearizable.
 */
export const defaultMaxSteps = (ops: number): number => Math.max(20_000_000, 25_000 * ops);

const INF = Number.POSITIVE_INFINITY;
const ABSENT = 0;
const ANON = 1;

const retOf = (o: Op): number => (o.outcome === 'ok' || o.outcome === 'fail' ? (o.ret ?? INF) : INF);
const isWrite = (o: Op): boolean => o.f === 'put' || o.f === 'cas';
const isFailedCas = (o: Op): boolean => o.f === 'cas' && o.outcome === 'ok' && o.result === false;

interface Prepared {
  ops: Op[];
  /** Per op: the anonymity class (-1 = a named value), and its position in that class by invocation. */
  cls: Int32Array;
  pos: Int32Array;
  classes: number;
}

/**
 * Drops what cannot constrain the search (failed ops, reads of unknown
 * outcome), and applies the two reductions for unobserved unknown writes.
 */
function prepare(all: readonly Op[]): Prepared {
  const live = all.filter((o) => o.outcome === 'ok' || (o.outcome === 'unknown' && isWrite(o)));
  const observed = new Set<string>();
  for (const o of live) {
    if (o.f === 'get' && o.outcome === 'ok' && typeof o.result === 'string') observed.add(o.result);
    if (o.f === 'cas' && typeof o.expected === 'string') observed.add(o.expected);
  }
  let lastFailedCasRet = -INF;
  for (const o of live) if (isFailedCas(o)) lastFailedCasRet = Math.max(lastFailedCasRet, retOf(o));
  const anonymous = (o: Op) => o.outcome === 'unknown' && isWrite(o) && !observed.has(o.value ?? '');
  const ops = live.filter((o) => !(anonymous(o) && lastFailedCasRet <= o.call)).sort((a, b) => a.call - b.call);
  const cls = new Int32Array(ops.length).fill(-1);
  const pos = new Int32Array(ops.length);
  const classIds = new Map<string, number>();
  const sizes: number[] = [];
  ops.forEach((o, i) => {
    if (!anonymous(o)) return;
    const name = o.f === 'put' ? 'put' : `cas:${o.expected === null ? '\u0000nil' : o.expected}`;
    let c = classIds.get(name);
    if (c === undefined) {
      c = sizes.length;
      classIds.set(name, c);
      sizes.push(0);
    }
    cls[i] = c;
    pos[i] = sizes[c]!++;
  });
  return { ops, cls, pos, classes: sizes.length };
}

/** An open-addressing set of (h1, h2, state) triples of int32. */
class TripleSet {
  private cap = 1 << 16;
  private a = new Int32Array(this.cap);
  private b = new Int32Array(this.cap);
  private s = new Int32Array(this.cap).fill(-1);
  size = 0;

  /** Adds the triple; returns false if it was already there. */
  add(h1: number, h2: number, state: number): boolean {
    if (this.size * 2 >= this.cap) this.grow();
    let i = (Math.imul(h1 ^ Math.imul(state, 0x9e3779b1), 0x85ebca6b) ^ h2) & (this.cap - 1);
    for (;;) {
      if (this.s[i] === -1) {
        this.a[i] = h1;
        this.b[i] = h2;
        this.s[i] = state;
        this.size++;
        return true;
      }
      if (this.a[i] === h1 && this.b[i] === h2 && this.s[i] === state) return false;
      i = (i + 1) & (this.cap - 1);
    }
  }

  private grow(): void {
    const { a, b, s } = this;
    this.cap *= 2;
    this.a = new Int32Array(this.cap);
    this.b = new Int32Array(this.cap);
    this.s = new Int32Array(this.cap).fill(-1);
    this.size = 0;
    for (let i = 0; i < s.length; i++) if (s[i] !== -1) this.add(a[i]!, b[i]!, s[i]!);
  }
}

/** A deterministic 32-bit generator (mulberry32) for the Zobrist keys. */
function rng(seed: number): () => number {
  let t = seed >>> 0;
  return () => {
    t = (t + 0x6d2b79f5) >>> 0;
    let r = Math.imul(t ^ (t >>> 15), 1 | t);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return (r ^ (r >>> 14)) | 0;
  };
}

/** Checks one key's history (every op must be on the same key). */
export function checkKey(all: readonly Op[], opts: CheckOptions = {}): KeyResult {
  const key = all[0]?.key ?? '';
  const { ops, cls, pos, classes } = prepare(all);
  const n = ops.length;
  const maxSteps = opts.maxSteps ?? defaultMaxSteps(n);
  const result: KeyResult = { key, linearizable: true, inconclusive: false, ops: all.length, searched: n, steps: 0 };
  if (n === 0) return result;

  // Register values as small ints: 0 = absent, 1 = ⊥ (anonymous), then every named value.
  const ids = new Map<string, number>();
  const idOf = (v: string | null | undefined): number => {
    if (v === null || v === undefined) return ABSENT;
    let id = ids.get(v);
    if (id === undefined) ids.set(v, (id = ids.size + 2));
    return id;
  };
  const kind = new Uint8Array(n); // 0 get, 1 put, 2 cas-true, 3 cas-false, 4 cas-unknown
  const arg = new Int32Array(n); // get: value read; cas: expected
  const out = new Int32Array(n); // put / cas: value written
  ops.forEach((o, i) => {
    if (o.f === 'get') {
      kind[i] = 0;
      arg[i] = idOf(o.result as string | null);
    } else if (o.f === 'put') {
      kind[i] = 1;
      out[i] = cls[i]! >= 0 ? ANON : idOf(o.value);
    } else {
      kind[i] = o.outcome === 'unknown' ? 4 : o.result === true ? 2 : 3;
      arg[i] = idOf(o.expected);
      out[i] = cls[i]! >= 0 ? ANON : idOf(o.value);
    }
  });
  /** The state after op i from state s, or -1 when op i cannot happen in state s. */
  const step = (i: number, s: number): number => {
    switch (kind[i]) {
      case 0:
        return s === arg[i] ? s : -1;
      case 1:
        return out[i]!;
      case 2:
        return s === arg[i] ? out[i]! : -1;
      case 3:
        return s !== arg[i] ? s : -1;
      default:
        return s === arg[i] ? out[i]! : s;
    }
  };

  // Events: entry 0 is the head sentinel; call of op i is 1 + 2i, its return 2 + 2i.
  const events: Array<{ e: number; t: number; call: boolean }> = [];
  ops.forEach((o, i) => {
    events.push({ e: 1 + 2 * i, t: o.call, call: true });
    events.push({ e: 2 + 2 * i, t: retOf(o), call: false });
  });
  events.sort((x, y) => x.t - y.t || (x.call === y.call ? x.e - y.e : x.call ? -1 : 1));
  const size = 2 * n + 1;
  const next = new Int32Array(size).fill(-1);
  const prev = new Int32Array(size).fill(-1);
  let last = 0;
  for (const ev of events) {
    next[last] = ev.e;
    prev[ev.e] = last;
    last = ev.e;
  }
  const lift = (c: number) => {
    next[prev[c]!] = next[c]!;
    if (next[c]! !== -1) prev[next[c]!] = prev[c]!;
    const r = c + 1;
    next[prev[r]!] = next[r]!;
    if (next[r]! !== -1) prev[next[r]!] = prev[r]!;
  };
  const unlift = (c: number) => {
    const r = c + 1;
    next[prev[r]!] = r;
    if (next[r]! !== -1) prev[next[r]!] = r;
    next[prev[c]!] = c;
    if (next[c]! !== -1) prev[next[c]!] = c;
  };

  const rand = rng(0x5eed ^ n);
  const z1 = new Int32Array(n).map(() => rand());
  const z2 = new Int32Array(n).map(() => rand());
  const classDone = new Int32Array(classes);
  const seen = new TripleSet();
  const stackEntry: number[] = [];
  const stackState: number[] = [];
  let h1 = 0;
  let h2 = 0;
  let state = ABSENT;
  let entry = next[0]!;
  /** The depth at which stuckAt was recorded: the deepest path's first dead end. */
  let recorded = 0;
  let steps = 0;

  while (next[0] !== -1) {
    if (++steps > maxSteps) {
      return { ...result, linearizable: false, inconclusive: true, steps };
    }
    if (entry % 2 === 1) {
      const i = (entry - 1) >> 1;
      const c = cls[i]!;
      const s2 = c >= 0 && classDone[c] !== pos[i] ? -1 : step(i, state);
      if (s2 !== -1 && seen.add(h1 ^ z1[i]!, h2 ^ z2[i]!, s2)) {
        stackEntry.push(entry);
        stackState.push(state);
        state = s2;
        h1 ^= z1[i]!;
        h2 ^= z2[i]!;
        if (c >= 0) classDone[c]!++;
        lift(entry);
        entry = next[0]!;
      } else {
        entry = next[entry]!;
      }
    } else {
      // A completion whose op is not linearized yet: undo the last choice.
      if (stackEntry.length > recorded) {
        recorded = stackEntry.length;
        result.stuckAt = ops[(entry - 2) >> 1];
        result.deepest = recorded;
      } else if (result.stuckAt === undefined) {
        result.stuckAt = ops[(entry - 2) >> 1];
        result.deepest = 0;
      }
      if (stackEntry.length === 0) return { ...result, linearizable: false, steps };
      const e = stackEntry.pop()!;
      state = stackState.pop()!;
      const i = (e - 1) >> 1;
      h1 ^= z1[i]!;
      h2 ^= z2[i]!;
      if (cls[i]! >= 0) classDone[cls[i]!]!--;
      unlift(e);
      entry = next[e]!;
    }
  }
  return { ...result, stuckAt: undefined, deepest: undefined, steps };
}

/** Groups a history by key. */
export function byKey(ops: readonly Op[]): Map<string, Op[]> {
  const m = new Map<string, Op[]>();
  for (const o of ops) {
    const list = m.get(o.key);
    if (list) list.push(o);
    else m.set(o.key, [o]);
  }
  return m;
}

/** Checks every key. */
export function checkLinearizable(ops: readonly Op[], opts: CheckOptions = {}): KeyResult[] {
  return [...byKey(ops).values()].map((list) => checkKey(list, opts));
}

// ---------------------------------------------------------------------------
// Minimization

/**
 * Shrinks a non-linearizable single-key history to a small one that is still
 * not linearizable, by delta debugging. Only removals that keep any
 * linearizable history linearizable are made, so the result is a proof of
 * the anomaly: reads and failed cas always go; a write goes only when no
 * remaining op observed its value and no failed cas completes after its
 * invocation. Each trial search gets `maxSteps`; a trial that runs out
 * counts as linearizable (the removal is not made).
 */
export function minimize(all: readonly Op[], opts: { maxSteps?: number; maxTrials?: number } = {}): Op[] {
  const maxSteps = opts.maxSteps ?? 2_000_000;
  let trials = opts.maxTrials ?? 3000;
  const fails = (h: Op[]) => {
    trials--;
    const r = checkKey(h, { maxSteps });
    return !r.linearizable && !r.inconclusive;
  };
  let cur = prepare(all).ops.slice();
  if (!fails(cur)) return all.slice();

  /** Removes what it may of `chunk` from `h`, to a fixpoint. */
  const removeChunk = (h: Op[], chunk: Set<Op>): Op[] => {
    let keep = h.filter((o) => !(chunk.has(o) && (o.f === 'get' || isFailedCas(o))));
    for (;;) {
      const observers = new Map<string, number>();
      let lastFailedCasRet = -INF;
      for (const o of keep) {
        if (o.f === 'get' && typeof o.result === 'string') observers.set(o.result, (observers.get(o.result) ?? 0) + 1);
        if (o.f === 'cas' && typeof o.expected === 'string') observers.set(o.expected, (observers.get(o.expected) ?? 0) + 1);
        if (isFailedCas(o)) lastFailedCasRet = Math.max(lastFailedCasRet, retOf(o));
      }
      // Latest first: a later cas may be the only observer of an earlier write.
      const victim = [...keep]
        .reverse()
        .find((o) => chunk.has(o) && isWrite(o) && !observers.get(o.value ?? '') && lastFailedCasRet <= o.call);
      if (!victim) return keep;
      keep = keep.filter((o) => o !== victim);
    }
  };

  let granularity = 2;
  while (cur.length > 1 && trials > 0) {
    const size = Math.ceil(cur.length / granularity);
    let shrunk = false;
    for (let start = 0; start < cur.length && trials > 0; start += size) {
      const trial = removeChunk(cur, new Set(cur.slice(start, start + size)));
      if (trial.length < cur.length && fails(trial)) {
        cur = trial;
        shrunk = true;
        break;
      }
    }
    if (shrunk) granularity = Math.max(2, granularity - 1);
    else if (size <= 1) break;
    else granularity = Math.min(cur.length, granularity * 2);
  }
  return cur;
}

// ---------------------------------------------------------------------------
// Final state

export interface FinalVersion {
  value: string;
  timestampUs: bigint;
}

/**
 * Whether the missing acknowledged write `w` is explained by a replacing put
 * known to be applied (`replaces`): one applied after `w`, which drops every
 * version of the column stored before it. "After w" is established, in this
 * order, by
 *  1. timestamps, when both are known (`tsOf`: from the write's ack, a read
 *     of its value, or the final read): R's above W's. Nothing else is
 *     consulted then: a replace whose timestamp is not above W's does not
 *     excuse W (were it applied later in real time, the timestamps went back,
 *     itself a bug);
 *  2. real time: W was acknowledged before R was invoked;
 *  3. for a successful cas W (whose timestamp the SDK does not return): W
 *     was applied while its expected value E was the latest. Values are
 *     unique and the workload never deletes, so once R is applied the latest
 *     is R or a write applied after R, never an earlier value, and never
 *     "absent": hence W precedes R when E is absent, or when E ≠ R's value
 *     and E's write precedes R (by the same rules, recursively).
 * Anything else (unknown timestamps and concurrent ops) does not excuse W.
 */
function droppedByReplace(w: Op, replaces: readonly Op[], tsOf: ReadonlyMap<string, bigint>, writers: ReadonlyMap<string, Op>): boolean {
  const precedes = (x: Op, r: Op, depth: number): boolean => {
    const tx = tsOf.get(x.value!);
    const tr = tsOf.get(r.value!);
    if (tx !== undefined && tr !== undefined) return tx < tr;
    if (x.outcome === 'ok' && x.ret !== undefined && x.ret < r.call) return true;
    if (x.f === 'cas' && !isFailedCas(x) && depth < 1000) {
      if (x.expected === null) return true;
      if (x.expected === undefined || x.expected === r.value) return false;
      const e = writers.get(x.expected);
      return e !== undefined && e !== x && precedes(e, r, depth + 1);
    }
    return false;
  };
  return replaces.some((r) => r !== w && precedes(w, r, 0));
}

/**
 * Checks the all-versions read of each key made at the end against the
 * history: every acknowledged write is there (unless a replacing put applied
 * after it dropped it: `droppedByReplace`), once; nothing is there that no
 * write wrote (or whose cas said it did not write); and acknowledged writes
 * ordered in real time have growing timestamps.
 */
export function checkFinal(ops: readonly Op[], finals: ReadonlyMap<string, readonly FinalVersion[]>): Anomaly[] {
  const anomalies: Anomaly[] = [];
  for (const [key, list] of byKey(ops)) {
    const versions = finals.get(key);
    if (!versions) {
      anomalies.push({ kind: 'other', key, message: `no final read of ${key}` });
      continue;
    }
    /** One anomaly per kind and key: how many, the first few, and the ops of the first. */
    const found = new Map<AnomalyKind, Array<{ message: string; ops?: Op[] }>>();
    const note = (kind: AnomalyKind, message: string, o?: Op[]) => {
      const xs = found.get(kind) ?? [];
      xs.push({ message, ops: o });
      found.set(kind, xs);
    };
    const writers = new Map<string, Op>();
    for (const o of list) if (isWrite(o) && o.value !== undefined) writers.set(o.value, o);

    const tsOf = new Map<string, bigint>();
    for (const v of versions) {
      if (tsOf.has(v.value)) {
        const w = writers.get(v.value);
        note('duplicate-write', `value ${JSON.stringify(v.value)} is stored twice (timestamps ${tsOf.get(v.value)} and ${v.timestampUs}): a write was applied more than once`, w ? [w] : undefined);
      }
      tsOf.set(v.value, v.timestampUs);
    }
    for (const v of versions) {
      const w = writers.get(v.value);
      if (!w) note('phantom-value', `value ${JSON.stringify(v.value)} is stored but no write in the history wrote it`);
      else if (isFailedCas(w)) note('phantom-value', `value ${JSON.stringify(v.value)} is stored but its cas answered "not applied"`, [w]);
    }
    const acked = list.filter((o) => o.outcome === 'ok' && (o.f === 'put' || (o.f === 'cas' && o.result === true)));
    const missing = acked.filter((w) => !tsOf.has(w.value!));
    if (missing.length > 0) {
      // Which replacing puts certainly ran, and every timestamp known for a value (the final read's first).
      const appliedValues = new Set<string>(tsOf.keys());
      const known = new Map<string, bigint>();
      for (const o of list) {
        if (o.outcome !== 'ok') continue;
        if (isWrite(o) && o.result !== false) appliedValues.add(o.value!);
        if (o.f === 'get' && typeof o.result === 'string') appliedValues.add(o.result);
        if (o.f === 'cas' && o.result === true && typeof o.expected === 'string') appliedValues.add(o.expected);
        const v = o.f === 'get' ? o.result : o.value;
        if (typeof v === 'string' && o.timestampUs !== undefined && o.timestampUs !== '0' && !known.has(v)) known.set(v, BigInt(o.timestampUs));
      }
      for (const [v, t] of tsOf) known.set(v, t);
      const replaces = list.filter((o) => o.f === 'put' && o.replace === true && o.value !== undefined && appliedValues.has(o.value) && writers.get(o.value) === o);
      for (const w of missing) {
        if (droppedByReplace(w, replaces, known, writers)) continue;
        note('lost-write', `acknowledged write ${showOp(w)} is missing at the end${replaces.length ? ', and no replacing put known to be applied came after it' : ''}`, [w]);
      }
    }

    // Real-time order → timestamp order, among acknowledged writes that are present.
    const present = acked.filter((w) => tsOf.has(w.value!));
    const byRet = [...present].sort((a, b) => a.ret! - b.ret!);
    const byCall = [...present].sort((a, b) => a.call - b.call);
    let j = 0;
    let maxTs = -1n;
    let maxOp: Op | undefined;
    for (const b of byCall) {
      while (j < byRet.length && byRet[j]!.ret! < b.call) {
        const t = tsOf.get(byRet[j]!.value!)!;
        if (t > maxTs) {
          maxTs = t;
          maxOp = byRet[j];
        }
        j++;
      }
      const tb = tsOf.get(b.value!)!;
      if (maxOp && tb <= maxTs) {
        note(
          'timestamp-order',
          `${showOp(b)} got timestamp ${tb}, not above ${maxTs} of ${showOp(maxOp)}, which completed before it began: a read of the latest value would return the older write`,
          [maxOp, b],
        );
      }
    }
    for (const [kind, xs] of found) {
      const more = xs.length > 1 ? ` (${xs.length} in all; the first: ${xs.slice(0, 3).map((x) => x.message).join('; ')})` : `: ${xs[0]!.message}`;
      const ops = kind === 'lost-write' ? xs.slice(0, 50).flatMap((x) => x.ops ?? []) : xs[0]!.ops;
      anomalies.push({ kind, key, message: `${key}: ${xs.length === 1 ? kind : `${xs.length} × ${kind}`}${more}`, ops });
    }
  }
  return anomalies;
}

/** Every per-key linearizability failure, minimized, as anomalies. */
export function linearizabilityAnomalies(ops: readonly Op[], opts: CheckOptions & { minimize?: boolean } = {}): { results: KeyResult[]; anomalies: Anomaly[] } {
  const results: KeyResult[] = [];
  const anomalies: Anomaly[] = [];
  for (const list of byKey(ops).values()) {
    const r = checkKey(list, opts);
    results.push(r);
    if (r.inconclusive) {
      anomalies.push({ kind: 'inconclusive', key: r.key, message: `${r.key}: the search gave up after ${r.steps} steps (${r.searched} ops)` });
    } else if (!r.linearizable) {
      const small = opts.minimize === false ? prepare(list).ops : minimize(list);
      anomalies.push({
        kind: 'nonlinearizable',
        key: r.key,
        message: `${r.key}: not linearizable (${r.ops} ops; the deepest linearization placed ${r.deepest} before ${r.stuckAt ? showOp(r.stuckAt) : '?'} completed); smallest offending history: ${small.length} ops`,
        ops: small,
      });
    }
  }
  return { results, anomalies };
}

// ---------------------------------------------------------------------------
// Replicas: two primaries at once

/** One successful write answer: the rows of the request, the answering shard, and the map epoch it answered by. */
export interface AckRecord {
  rows: string[];
  nodeId: string;
  epoch: bigint;
  atMs?: number;
}

/**
 * Fails a run in which two replicas of one range acknowledged writes at the
 * same group version: each acknowledgement is placed, by the epoch its
 * header names, in that epoch's map (the range holding the row, and that
 * range's version); then no (range, version) may have acknowledgements from
 * two shards. An epoch the map log missed is placed when the maps just
 * before and after it agree on the range and its version (versions only
 * grow); otherwise it is counted as unplaced and left out.
 */
export function checkAcks(acks: readonly AckRecord[], maps: ReadonlyMap<bigint, ClusterMap>): { anomalies: Anomaly[]; placed: number; unplaced: number } {
  const epochs = [...maps.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const rangeIn = (m: ClusterMap | undefined, h: bigint): MapRange | undefined => m?.ranges.find((r) => h >= r.start && (h < r.end || r.end === 0n));
  const keyOf = (r: MapRange) => `[${r.start}, ${r.end}) v${r.version ?? 0n}`;
  const placeOf = (epoch: bigint, row: string): string | undefined => {
    const h = rowHash(row);
    const exact = maps.get(epoch);
    if (exact) {
      const r = rangeIn(exact, h);
      return r && keyOf(r);
    }
    let before: bigint | undefined;
    let after: bigint | undefined;
    for (const e of epochs) {
      if (e < epoch) before = e;
      else if (e > epoch && after === undefined) after = e;
    }
    if (before === undefined || after === undefined) return undefined;
    const a = rangeIn(maps.get(before), h);
    const b = rangeIn(maps.get(after), h);
    return a && b && keyOf(a) === keyOf(b) ? keyOf(a) : undefined;
  };
  const by = new Map<string, Map<string, { count: number; example: string }>>();
  let placed = 0;
  let unplaced = 0;
  for (const ack of acks) {
    for (const row of ack.rows) {
      const place = placeOf(ack.epoch, row);
      if (!place) {
        unplaced++;
        continue;
      }
      placed++;
      const nodes = by.get(place) ?? new Map<string, { count: number; example: string }>();
      by.set(place, nodes);
      const n = nodes.get(ack.nodeId) ?? { count: 0, example: `${JSON.stringify(row)} at epoch ${ack.epoch}${ack.atMs ? ` (${new Date(ack.atMs).toISOString()})` : ''}` };
      n.count++;
      nodes.set(ack.nodeId, n);
    }
  }
  const anomalies: Anomaly[] = [];
  for (const [place, nodes] of by) {
    if (nodes.size < 2) continue;
    anomalies.push({
      kind: 'split-brain',
      message: `range ${place}: writes acknowledged by ${nodes.size} replicas at the same version: ${[...nodes].map(([id, n]) => `${id} (${n.count}, e.g. ${n.example})`).join('; ')}`,
    });
  }
  return { anomalies, placed, unplaced };
}
