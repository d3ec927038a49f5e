/**
 * Request-id records: what a write with a request id committed, kept per row
 * so that a retry gets the same answer instead of writing twice; the digest of
 * each request, so that an id reused for another request is refused; and the
 * sweep that forgets records after their TTL. The records ride in the row's
 * own plan (same batch as the write they describe) and move with the row.
 */
import { writeDigestBytes } from '../common/hash.js';
import { CairnError, invalidArgument } from '../common/errors.js';
import { requestIdKey } from './keys.js';
import { entries, show, type BatchOp, type RawOp, type Subs } from './store-db.js';
import type { RowPlan } from './store-plan.js';
import type { CellIn, CheckAndMutateIn, TimeRangeIn } from './validate.js';

export const DEFAULT_REQUEST_ID_TTL_MS = 10 * 60 * 1000;

export interface Outcome {
  /** Which operation recorded it, so a request id reused for another operation is refused. */
  k: 'write' | 'deleteRow' | 'deleteCells' | 'cas' | 'lock';
  /** When it was recorded (ms), for the TTL sweep. */
  t: number;
  ts?: string;
  n?: number;
  ok?: boolean;
  id?: string;
  exp?: number;
  /**
   * The request's digest (requestDigest); absent in records written before
   * digests, which are honoured without a check.
   */
  d?: Buffer;
}

/** The outcome recorded for this request id on this row, if any; CONFLICT when it was recorded for a different request (digest). */
export async function priorOutcome(subs: Subs, prefix: Buffer, requestId: string, kind: Outcome['k'], row: string, digest?: Buffer): Promise<Outcome | undefined> {
  if (!requestId) return undefined;
  const v = subs.reqids.getSync(requestIdKey(prefix, requestId));
  return v === undefined ? undefined : parseOutcome(v, requestId, kind, row, digest);
}

/** Adds the request's outcome record to its row's plan (nothing without a request id). */
export function recordOutcome(plan: RowPlan, requestId: string, outcome: Omit<Outcome, 't'>): void {
  if (!requestId) return;
  plan.other.push({ sublevel: 'reqids', key: requestIdKey(plan.prefix, requestId), value: encodeOutcome(outcome, Date.now()) });
}

/**
 * Deletes the request-id records recorded before `cutoff` (ms), and any it
 * cannot read, 1000 per `del` call. Returns how many were deleted.
 */
export async function sweepRequestIds(subs: Subs, cutoff: number, del: (ops: BatchOp[], raw: RawOp[]) => Promise<void>): Promise<number> {
  let n = 0;
  let dels: Buffer[] = [];
  const flush = async (): Promise<void> => {
    if (dels.length === 0) return;
    const raw: RawOp[] = dels.map((key) => ({ sublevel: 'reqids', key }));
    await del(
      dels.map((key) => ({ type: 'del', sublevel: subs.reqids, key })),
      raw,
    );
    n += dels.length;
    dels = [];
  };
  for await (const [key, value] of entries(subs.reqids, {})) {
    let t = -Infinity;
    try {
      t = decodeOutcome(value).t;
    } catch {
      // An unreadable record cannot dedupe anything: drop it.
    }
    if (!(t >= cutoff)) dels.push(key);
    if (dels.length >= 1000) await flush();
  }
  await flush();
  return n;
}

/**
 * Request-id records, binary: version (u8), kind (u8), recorded at (ms, u48),
 * then in version 2 the request's digest (16 bytes; see requestDigest), then
 * per kind: write: ts (u64); cas: ok (u8), ts (u64); deleteRow and
 * deleteCells: n (u48); lock: exp (ms, u48), lease id (UTF-8). Version 1 is
 * the same without a digest (deleteRow records, which need none, are still
 * written so). Records from before the binary format are JSON (they start
 * with '{') and are still read. Moves copy records as raw bytes, digest and
 * all.
 */
const OUTCOME_KINDS: readonly Outcome['k'][] = ['write', 'deleteRow', 'deleteCells', 'cas', 'lock'];
const DIGEST_BYTES = 16;

/** The record header, with the digest when there is one; returns the offset of the kind's fields. */
function outcomeHeader(b: Buffer, kind: number, t: number, digest: Buffer | undefined): number {
  b[0] = digest ? 2 : 1;
  b[1] = kind;
  b.writeUIntBE(t, 2, 6);
  if (!digest) return 8;
  digest.copy(b, 8, 0, DIGEST_BYTES);
  return 8 + DIGEST_BYTES;
}

function encodeOutcome(o: Omit<Outcome, 't'>, t: number): Buffer {
  const h = o.d ? 8 + DIGEST_BYTES : 8;
  let b: Buffer;
  switch (o.k) {
    case 'write':
      b = Buffer.allocUnsafe(h + 8);
      b.writeBigUInt64BE(BigInt(o.ts ?? '0'), h);
      break;
    case 'cas':
      b = Buffer.allocUnsafe(h + 9);
      b[h] = o.ok ? 1 : 0;
      b.writeBigUInt64BE(BigInt(o.ts ?? '0'), h + 1);
      break;
    case 'deleteRow':
    case 'deleteCells':
      b = Buffer.allocUnsafe(h + 6);
      b.writeUIntBE(o.n ?? 0, h, 6);
      break;
    case 'lock': {
      const id = Buffer.from(o.id ?? '', 'utf8');
      b = Buffer.allocUnsafe(h + 6 + id.length);
      b.writeUIntBE(o.exp ?? 0, h, 6);
      id.copy(b, h + 6);
      break;
    }
  }
  outcomeHeader(b, OUTCOME_KINDS.indexOf(o.k), t, o.d);
  return b;
}

/** encodeOutcome of a write, without the string round trip of its timestamp. */
export function encodeWriteOutcome(ts: bigint, t: number, digest: Buffer): Buffer {
  const b = Buffer.allocUnsafe(8 + DIGEST_BYTES + 8);
  b.writeBigUInt64BE(ts, outcomeHeader(b, 0 /* OUTCOME_KINDS.indexOf('write') */, t, digest));
  return b;
}

function decodeOutcome(v: Buffer): Outcome {
  if (v[0] !== 1 && v[0] !== 2) return JSON.parse(v.toString('utf8')) as Outcome;
  const k = OUTCOME_KINDS[v[1]!];
  const t = v.readUIntBE(2, 6);
  const h = v[0] === 2 ? 8 + DIGEST_BYTES : 8;
  const d = v[0] === 2 ? { d: v.subarray(8, h) } : {};
  switch (k) {
    case 'write':
      return { k, t, ts: v.readBigUInt64BE(h).toString(), ...d };
    case 'cas':
      return { k, t, ok: v[h] === 1, ts: v.readBigUInt64BE(h + 1).toString(), ...d };
    case 'deleteRow':
    case 'deleteCells':
      return { k, t, n: v.readUIntBE(h, 6), ...d };
    case 'lock':
      return { k, t, exp: v.readUIntBE(h, 6), id: v.toString('utf8', h + 6), ...d };
    default:
      throw new Error(`unknown request-id record kind ${v[1]}`);
  }
}

/** How a refusal names each kind of request. */
const KIND_NAMES: Record<Outcome['k'], string> = { write: 'write', deleteRow: 'deleteRow', deleteCells: 'deleteCells', cas: 'checkAndMutate', lock: 'lockRow' };

/**
 * A stored request-id record. Refuses an id that was used for another kind
 * of operation (INVALID_ARGUMENT), and one used for the same kind with a
 * different request (CONFLICT: the request is well-formed, the stored record
 * is what it clashes with, and retrying it cannot help). A record without a
 * digest (older code) is honoured without that check.
 */
export function parseOutcome(v: Buffer, requestId: string, kind: Outcome['k'], row: string, digest: Buffer | undefined): Outcome {
  const prior = decodeOutcome(v);
  if (prior.k !== kind) throw invalidArgument(`requestId: ${JSON.stringify(requestId)} was already used for a ${prior.k} on row ${show(row)}`);
  if (prior.d && digest && !prior.d.equals(digest)) {
    const what = KIND_NAMES[kind];
    throw new CairnError(
      'CONFLICT',
      `requestId: ${JSON.stringify(requestId)} was already used for a different ${what} on row ${show(row)}; a retry must resend the same request, and a new ${what} needs a new request id`,
    );
  }
  return prior;
}

/**
 * The digest of what a request asks of one row (the row is the record's key):
 * the first 16 bytes of SHA-256 of a canonical encoding of the request's
 * content, whatever its framing on the wire. A retry of the same request has
 * the same digest however the caller regroups the rows of a WriteRows.
 */
function requestDigest(canonical: Buffer): Buffer {
  const d = Buffer.allocUnsafe(DIGEST_BYTES);
  writeDigestBytes('sha256', canonical, d, 0, DIGEST_BYTES);
  return d;
}

/** Cells in canonical form: per cell, column (u32 length, UTF-8), timestamp as sent (u64), value (u32 length, bytes). */
const cellsBytes = (cells: readonly CellIn[]): number => cells.reduce((n, c) => n + 16 + Buffer.byteLength(c.column, 'utf8') + c.value.length, 0);

function putCells(b: Buffer, o: number, cells: readonly CellIn[]): number {
  for (const c of cells) {
    const w = b.write(c.column, o + 4, 'utf8');
    b.writeUInt32BE(w, o);
    o += 4 + w;
    b.writeBigUInt64BE(c.timestampUs, o);
    b.writeUInt32BE(c.value.length, o + 8);
    b.set(c.value, o + 12);
    o += 12 + c.value.length;
  }
  return o;
}

/** Length-prefixed bytes or UTF-8 text, for the smaller digests. */
function lengthPrefixed(x: string | Uint8Array): Buffer {
  const body = typeof x === 'string' ? Buffer.from(x, 'utf8') : x;
  const b = Buffer.allocUnsafe(4 + body.length);
  b.writeUInt32BE(body.length, 0);
  b.set(body, 4);
  return b;
}

/** A row's entries in one WriteRows, in request order: per entry, replace (u8), cell count (u32), cells. */
export function writeDigest(segs: readonly { cells: readonly CellIn[]; replace: boolean }[]): Buffer {
  let n = 0;
  for (const s of segs) n += 5 + cellsBytes(s.cells);
  const b = Buffer.allocUnsafe(n);
  let o = 0;
  for (const s of segs) {
    b[o] = s.replace ? 1 : 0;
    b.writeUInt32BE(s.cells.length, o + 1);
    o = putCells(b, o + 5, s.cells);
  }
  return requestDigest(b);
}

/** CheckAndMutate: check column, expect absent (u8), expected value (only when not absent: it is ignored then), replace, cells. */
export function casDigest(req: CheckAndMutateIn): Buffer {
  const head = Buffer.concat([lengthPrefixed(req.checkColumn), Buffer.from([req.expectAbsent ? 1 : 0]), lengthPrefixed(req.expectAbsent ? Buffer.alloc(0) : req.expectedValue)]);
  const b = Buffer.allocUnsafe(head.length + 5 + cellsBytes(req.cells));
  head.copy(b, 0);
  b[head.length] = req.replace ? 1 : 0;
  b.writeUInt32BE(req.cells.length, head.length + 1);
  putCells(b, head.length + 5, req.cells);
  return requestDigest(b);
}

/** DeleteCells: the set of columns (sorted, each once), then the time range if any (start, end as u64). */
export function deleteCellsDigest(columns: readonly string[], timeRange: TimeRangeIn | undefined): Buffer {
  const parts = [...new Set(columns)].sort().map(lengthPrefixed);
  const tr = Buffer.alloc(17);
  if (timeRange) {
    tr[0] = 1;
    tr.writeBigUInt64BE(timeRange.startUs, 1);
    tr.writeBigUInt64BE(timeRange.endUs, 9);
  }
  return requestDigest(Buffer.concat([...parts, tr]));
}

/** LockRow: the lease length. */
export function lockDigest(leaseMs: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(leaseMs), 0);
  return requestDigest(b);
}

