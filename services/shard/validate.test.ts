import { describe, expect, test } from '@jest/globals';
import { CairnError, grpcStatusOf } from '../common/errors.js';
import { HASH_SPACE_END } from '../common/hash.js';
import { status } from '@grpc/grpc-js';
import { encodeScanToken, rowPrefix } from './keys.js';
import {
  DEFAULT_LIMITS,
  checkCellFilter,
  checkCheckAndMutate,
  checkColumn,
  checkDeleteCells,
  checkLease,
  checkLeaseId,
  checkReadRows,
  checkRequestId,
  checkRowKey,
  checkScan,
  checkTimeRange,
  checkWriteRows,
  MAX_WRITE_TIMESTAMP_US,
  type CellFilterIn,
  type Limits,
  type RowWriteIn,
  type ScanIn,
} from './validate.js';

/** Runs fn and returns the CairnError it throws (failing the test when it does not). */
function caught(fn: () => void): CairnError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CairnError);
    return err as CairnError;
  }
  throw new Error('expected a CairnError, nothing was thrown');
}

const cell = (column = 'c', value: Uint8Array = Buffer.from('v'), timestampUs = 0n) => ({ column, timestampUs, value });
const row = (r = 'r', cells = [cell()], replace = false): RowWriteIn => ({ row: r, cells, replace });
const filter = (f: Partial<CellFilterIn> = {}): CellFilterIn => ({ columns: [], columnPrefix: '', allVersions: false, limit: 0, ...f });
const scan = (s: Partial<ScanIn> = {}): ScanIn => ({ rowPrefix: '', filter: filter(), limit: 0, hashStart: 0n, hashEnd: HASH_SPACE_END, ...s });

describe('limits', () => {
  test('defaults are the documented ones', () => {
    expect(DEFAULT_LIMITS).toEqual({ maxKeyBytes: 4096, maxColumnBytes: 1024, maxValueBytes: 1048576, maxCellsPerCall: 10000, maxMessageBytes: 16777216 });
  });
});

describe('checkRowKey', () => {
  test('accepts a key at the limit, counting UTF-8 bytes', () => {
    expect(checkRowKey('x'.repeat(4096))).toBe(4096);
    expect(checkRowKey('é'.repeat(2048))).toBe(4096);
  });

  test('names the field, the size and the limit', () => {
    const e = caught(() => checkRowKey('x'.repeat(5000), DEFAULT_LIMITS, 'rows[3].row'));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(grpcStatusOf(e.code)).toBe(status.INVALID_ARGUMENT);
    expect(e.message).toBe('rows[3].row: row key is 5000 bytes, over the maxKeyBytes limit of 4096');
    expect(caught(() => checkRowKey('é'.repeat(2049))).message).toBe('row: row key is 4098 bytes, over the maxKeyBytes limit of 4096');
  });

  test('refuses empty keys and lone surrogates', () => {
    expect(caught(() => checkRowKey('')).message).toBe('row: must not be empty');
    expect(caught(() => checkRowKey('a\uD800b')).message).toMatch(/^row: is not valid UTF-8/);
    expect(checkRowKey('\u{1F600}')).toBe(4); // a proper pair is fine
  });

  test('honours configured limits, but never past the key format', () => {
    const small: Limits = { ...DEFAULT_LIMITS, maxKeyBytes: 10 };
    expect(caught(() => checkRowKey('x'.repeat(11), small)).message).toBe('row: row key is 11 bytes, over the maxKeyBytes limit of 10');
    const huge: Limits = { ...DEFAULT_LIMITS, maxKeyBytes: 1 << 20 };
    expect(caught(() => checkRowKey('x'.repeat(70000), huge)).message).toBe('row: row key is 70000 bytes, over the limit of 65535');
  });
});

describe('checkWriteRows', () => {
  test('accepts a normal write', () => {
    expect(() => checkWriteRows([row('a'), row('b', [cell('x'), cell('y', Buffer.alloc(0), 123n)], true)])).not.toThrow();
  });

  test('refuses empty rows and empty cells', () => {
    expect(caught(() => checkWriteRows([])).message).toBe('rows: must contain at least one row');
    expect(caught(() => checkWriteRows([row('a', [])])).message).toBe('rows[0].cells: must contain at least one cell');
    expect(caught(() => checkWriteRows([row('a'), row('')])).message).toBe('rows[1].row: must not be empty');
  });

  test('names the cell whose column or value is too big', () => {
    const e = caught(() => checkWriteRows([row('a'), row('b', [cell(), cell('c'.repeat(1025))])]));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toBe('rows[1].cells[1].column: column name is 1025 bytes, over the maxColumnBytes limit of 1024');
    const v = caught(() => checkWriteRows([row('a', [cell('c', Buffer.alloc(1048577))])]));
    expect(v.code).toBe('INVALID_ARGUMENT');
    expect(v.message).toBe('rows[0].cells[0].value: value is 1048577 bytes, over the maxValueBytes limit of 1048576');
    expect(caught(() => checkWriteRows([row('a', [cell('')])])).message).toBe('rows[0].cells[0].column: must not be empty');
  });

  test('counts cells across rows against maxCellsPerCall (RESOURCE_EXHAUSTED)', () => {
    const rows = Array.from({ length: 11 }, (_, i) => row(`r${i}`, Array.from({ length: 1000 }, () => cell())));
    rows[10]!.cells.push(cell());
    const e = caught(() => checkWriteRows(rows));
    expect(e.code).toBe('LIMIT_EXCEEDED');
    expect(grpcStatusOf(e.code)).toBe(status.RESOURCE_EXHAUSTED);
    expect(e.message).toBe('cells: 11001 cells in one call, over the maxCellsPerCall limit of 10000');
    rows.pop();
    rows[9]!.cells.pop();
    expect(() => checkWriteRows(rows.slice(0, 10))).not.toThrow();
  });

  test('refuses a call over maxMessageBytes', () => {
    const limits: Limits = { ...DEFAULT_LIMITS, maxMessageBytes: 3 * 1024 * 1024 };
    const big = () => cell('c', Buffer.alloc(1024 * 1024));
    const e = caught(() => checkWriteRows([row('a', [big(), big(), big()])], limits));
    expect(e.code).toBe('LIMIT_EXCEEDED');
    expect(e.message).toMatch(/^rows: about \d+ bytes in one call, over the maxMessageBytes limit of 3145728$/);
  });

  test('refuses timestamps that are not u64', () => {
    expect(caught(() => checkWriteRows([row('a', [cell('c', Buffer.from('v'), -1n)])])).message).toBe(
      'rows[0].cells[0].timestampUs: -1 is not an unsigned 64-bit integer',
    );
    expect(caught(() => checkWriteRows([row('a', [cell('c', Buffer.from('v'), 1n << 64n)])])).code).toBe('INVALID_ARGUMENT');
  });

  test('refuses write timestamps above 2^63 - 1, which would leave the clock no room', () => {
    expect(() => checkWriteRows([row('a', [cell('c', Buffer.from('v'), MAX_WRITE_TIMESTAMP_US)])])).not.toThrow();
    for (const ts of [MAX_WRITE_TIMESTAMP_US + 1n, (1n << 64n) - 1n]) {
      expect(caught(() => checkWriteRows([row('a', [cell('c'), cell('d', Buffer.from('v'), ts)])])).message).toBe(
        `rows[0].cells[1].timestampUs: ${ts} is above 9223372036854775807 (2^63 - 1), the largest a write may carry`,
      );
    }
    expect(caught(() => checkCheckAndMutate({ row: 'r', checkColumn: 'c', expectedValue: Buffer.from('old'), expectAbsent: false, replace: false, cells: [cell('c', Buffer.from('v'), (1n << 64n) - 1n)] })).message).toMatch(/^cells\[0\]\.timestampUs: .* is above/);
  });
});

describe('checkTimeRange', () => {
  test('accepts ordered and open-ended ranges', () => {
    expect(() => checkTimeRange({ startUs: 100n, endUs: 500n })).not.toThrow();
    expect(() => checkTimeRange({ startUs: 500n, endUs: 0n })).not.toThrow();
    expect(() => checkTimeRange({ startUs: 0n, endUs: 0n })).not.toThrow();
  });

  test('refuses inverted and empty ranges', () => {
    const e = caught(() => checkTimeRange({ startUs: 500n, endUs: 100n }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toBe('timeRange: start_us 500 is after end_us 100');
    expect(caught(() => checkTimeRange({ startUs: 7n, endUs: 7n })).message).toBe('timeRange: start_us 7 equals end_us 7, an empty range');
  });
});

describe('checkCellFilter / checkReadRows', () => {
  test('accepts the common filters', () => {
    expect(() => checkCellFilter(filter())).not.toThrow();
    expect(() => checkCellFilter(filter({ columns: ['a', 'b'], allVersions: true, limit: 5, timeRange: { startUs: 1n, endUs: 0n } }))).not.toThrow();
  });

  test('names the bad part of a filter', () => {
    expect(caught(() => checkCellFilter(filter({ columns: ['a', 'x'.repeat(2000)] }))).message).toBe(
      'filter.columns[1]: column name is 2000 bytes, over the maxColumnBytes limit of 1024',
    );
    expect(caught(() => checkCellFilter(filter({ columnPrefix: 'p'.repeat(1025) }))).message).toBe(
      'filter.columnPrefix: column prefix is 1025 bytes, over the maxColumnBytes limit of 1024',
    );
    expect(caught(() => checkCellFilter(filter({ timeRange: { startUs: 9n, endUs: 3n } }))).message).toBe('filter.timeRange: start_us 9 is after end_us 3');
    expect(caught(() => checkCellFilter(filter({ limit: -1 }))).message).toBe('filter.limit: -1 is not a non-negative integer');
  });

  test('checkReadRows checks rows and the filter', () => {
    expect(() => checkReadRows(['a', 'b'], filter())).not.toThrow();
    expect(caught(() => checkReadRows([], filter())).message).toBe('rows: must contain at least one row');
    expect(caught(() => checkReadRows(['a', ''], filter())).message).toBe('rows[1]: must not be empty');
    const many = Array.from({ length: 10001 }, (_, i) => `r${i}`);
    const e = caught(() => checkReadRows(many, filter()));
    expect(e.code).toBe('LIMIT_EXCEEDED');
    expect(e.message).toBe('rows: 10001 rows in one call, over the maxCellsPerCall limit of 10000');
    expect(caught(() => checkReadRows(['a'], filter({ limit: 1.5 }))).code).toBe('INVALID_ARGUMENT');
  });
});

describe('checkScan', () => {
  test('accepts a full-space scan and a token', () => {
    expect(() => checkScan(scan())).not.toThrow();
    expect(() => checkScan(scan({ resumeToken: encodeScanToken(rowPrefix('abc')), limit: 100 }))).not.toThrow();
    expect(() => checkScan(scan({ resumeToken: Buffer.alloc(0) }))).not.toThrow();
  });

  test('refuses bad windows, limits and tokens', () => {
    expect(caught(() => checkScan(scan({ hashStart: 10n, hashEnd: 10n }))).message).toBe('hashEnd: 10 must be above hashStart 10 and at most 2^64');
    expect(caught(() => checkScan(scan({ hashEnd: HASH_SPACE_END + 1n }))).code).toBe('INVALID_ARGUMENT');
    expect(caught(() => checkScan(scan({ hashStart: -1n }))).message).toBe('hashStart: -1 is outside [0, 2^64)');
    const l = caught(() => checkScan(scan({ limit: 20000 })));
    expect(l.code).toBe('LIMIT_EXCEEDED');
    expect(l.message).toBe('limit: 20000 rows per page, over the maxCellsPerCall limit of 10000');
    const t = caught(() => checkScan(scan({ resumeToken: Buffer.from('garbage!!garbage') })));
    expect(t.code).toBe('INVALID_ARGUMENT');
    expect(t.message).toMatch(/^resumeToken: malformed resume token/);
    expect(caught(() => checkScan(scan({ rowPrefix: 'p'.repeat(5000) }))).message).toBe('rowPrefix: row prefix is 5000 bytes, over the maxKeyBytes limit of 4096');
  });
});

describe('checkDeleteCells', () => {
  test('needs a row and at least one column', () => {
    expect(() => checkDeleteCells('r', ['a'], undefined)).not.toThrow();
    expect(() => checkDeleteCells('r', ['a'], { startUs: 1n, endUs: 2n })).not.toThrow();
    expect(caught(() => checkDeleteCells('r', [], undefined)).message).toBe('columns: must contain at least one column');
    expect(caught(() => checkDeleteCells('', ['a'], undefined)).message).toBe('row: must not be empty');
    expect(caught(() => checkDeleteCells('r', ['a', ''], undefined)).message).toBe('columns[1]: must not be empty');
    expect(caught(() => checkDeleteCells('r', ['a'], { startUs: 500n, endUs: 100n })).message).toBe('timeRange: start_us 500 is after end_us 100');
  });
});

describe('checkCheckAndMutate', () => {
  const cas = { row: 'r', checkColumn: 'c', expectedValue: Buffer.from('old'), expectAbsent: false, cells: [cell('c', Buffer.from('new'))], replace: false };

  test('accepts a normal check-and-set', () => {
    expect(() => checkCheckAndMutate(cas)).not.toThrow();
  });

  test('names the bad field', () => {
    expect(caught(() => checkCheckAndMutate({ ...cas, checkColumn: '' })).message).toBe('checkColumn: must not be empty');
    expect(caught(() => checkCheckAndMutate({ ...cas, cells: [] })).message).toBe('cells: must contain at least one cell');
    expect(caught(() => checkCheckAndMutate({ ...cas, expectedValue: Buffer.alloc(1048577) })).message).toBe(
      'expectedValue: value is 1048577 bytes, over the maxValueBytes limit of 1048576',
    );
    expect(caught(() => checkCheckAndMutate({ ...cas, cells: [cell('x'.repeat(1025))] })).message).toBe(
      'cells[0].column: column name is 1025 bytes, over the maxColumnBytes limit of 1024',
    );
    const many = caught(() => checkCheckAndMutate({ ...cas, cells: Array.from({ length: 10001 }, () => cell()) }));
    expect(many.code).toBe('LIMIT_EXCEEDED');
    expect(many.message).toBe('cells: 10001 cells in one call, over the maxCellsPerCall limit of 10000');
  });
});

describe('leases and request ids', () => {
  test('lease length is 1 ms to 1 hour', () => {
    expect(() => checkLease(1)).not.toThrow();
    expect(() => checkLease(3_600_000)).not.toThrow();
    expect(caught(() => checkLease(0)).message).toBe('leaseMs: 0 is outside the allowed 1..3600000 ms (1 hour)');
    expect(caught(() => checkLease(3_600_001)).code).toBe('INVALID_ARGUMENT');
    expect(caught(() => checkLease(1.5)).code).toBe('INVALID_ARGUMENT');
  });

  test('lease ids are not empty', () => {
    expect(() => checkLeaseId('abc')).not.toThrow();
    expect(caught(() => checkLeaseId('')).message).toBe('leaseId: must not be empty');
  });

  test('request ids are at most 128 bytes and may be empty', () => {
    expect(() => checkRequestId('')).not.toThrow();
    expect(() => checkRequestId('r'.repeat(128))).not.toThrow();
    expect(caught(() => checkRequestId('r'.repeat(129))).message).toBe('requestId: request id is 129 bytes, over the limit of 128');
  });

  test('checkColumn names the limit', () => {
    expect(checkColumn('abc')).toBe(3);
    expect(caught(() => checkColumn('x'.repeat(1025))).message).toBe('column: column name is 1025 bytes, over the maxColumnBytes limit of 1024');
  });
});
