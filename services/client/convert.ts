/**
 * From the SDK's public shapes to the wire's and back, and the request ids
 * that make a write safe to retry. Pure: no I/O, no client state.
 */
import { randomBytes } from 'node:crypto';
import type { CellFilter, CellWrite, RowWrite, TimeRange as ProtoTimeRange } from '../../proto/gen/cairn/v1/common.js';
import { CairnError } from '../common/errors.js';
import type { Cell, CellsInput, ReadOptions, TimeRange, Value } from './types.js';

export function toBuffer(v: Value, what: string): Buffer {
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (v instanceof Uint8Array) return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new CairnError('INVALID_ARGUMENT', `${what}: expected a string or Uint8Array, got ${typeof v}`);
}

export function toCellWrites(cells: CellsInput): CellWrite[] {
  if (Array.isArray(cells)) {
    return cells.map((c) => ({ column: c.column, timestampUs: c.timestampUs ?? 0n, value: toBuffer(c.value, `value of column ${c.column}`) }));
  }
  return Object.entries(cells).map(([column, value]) => ({ column, timestampUs: 0n, value: toBuffer(value, `value of column ${column}`) }));
}

/** A left-out bound is 0 on the wire (no bound). */
export const toTimeRange = (t: TimeRange | undefined): ProtoTimeRange | undefined =>
  t ? { startUs: t.startUs ?? 0n, endUs: t.endUs ?? 0n } : undefined;

export function toFilter(o: ReadOptions, limit = o.limit): CellFilter {
  return {
    columns: o.columns ?? [],
    columnPrefix: o.columnPrefix ?? '',
    timeRange: toTimeRange(o.timeRange),
    allVersions: o.allVersions ?? false,
    limit: limit ?? 0,
  };
}

/** Decoded proto cells already have exactly the public shape: no copy. */
export const toCells = (cells: Array<{ column: string; timestampUs: bigint; value: Buffer }>): Cell[] => cells;

/** A row's size on the wire, near enough to keep a sub-batch under the message limit. */
export function rowWriteBytes(r: RowWrite): number {
  let n = Buffer.byteLength(r.row) + 16;
  for (const c of r.cells) n += Buffer.byteLength(c.column) + c.value.length + 16;
  return n;
}

/** 16 random bytes: unique enough that two logical writes never share one. */
export const newRequestId = (): string => randomBytes(16).toString('hex');

/**
 * Request ids from one client, in newRequestId's format (32 hex digits): 12
 * random bytes drawn once per 2^32 ids, then a 32-bit counter. As unique as
 * newRequestId in practice (two prefixes collide with probability 2^-96; one
 * prefix never repeats a counter), without a call into the CSPRNG and a hex
 * encode per write.
 */
export class RequestIds {
  private prefix = randomBytes(12).toString('hex');
  private seq = 0;
  next(): string {
    if (this.seq > 0xffffffff) {
      this.prefix = randomBytes(12).toString('hex');
      this.seq = 0;
    }
    return this.prefix + (this.seq++).toString(16).padStart(8, '0');
  }
}
