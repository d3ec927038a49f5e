/**
 * Scans: the map's ranges walked in hash order, one page at a time, each
 * page's rows fetched owner by owner until the page is full. Where the walk
 * stands is a hash position (router.ts ScanCursor), so a resume token stays
 * valid when ranges move between pages.
 */
import { CairnError } from '../common/errors.js';
import { endToProto } from '../common/hash.js';
import type { Calls } from './calls.js';
import { toFilter } from './convert.js';
import { cursorAfter, cursorInWindow, decodeScanToken, encodeScanToken, FULL_WINDOW, segmentAt, type ScanCursor } from './router.js';
import type { ScanOptions, ScanPage, ScanPageOptions, ScanRow } from './types.js';

const DEFAULT_PAGE_SIZE = 500;

export async function* scan(c: Calls, prefix: string, o: ScanOptions): AsyncGenerator<ScanRow> {
  let resumeToken: string | undefined;
  do {
    const page = await scanPage(c, prefix, { ...o, limit: o.pageSize ?? DEFAULT_PAGE_SIZE, cellLimit: o.limit, resumeToken });
    for (const r of page.rows) yield r;
    resumeToken = page.nextToken;
  } while (resumeToken !== undefined);
}

export async function scanPage(c: Calls, prefix: string, o: ScanPageOptions): Promise<ScanPage> {
  const limit = o.limit ?? DEFAULT_PAGE_SIZE;
  if (!Number.isInteger(limit) || limit < 1) throw new CairnError('INVALID_ARGUMENT', `limit: must be a positive integer, got ${limit}`);
  const window = FULL_WINDOW;
  const filter = toFilter(o, o.cellLimit);
  const deadline = c.deadlineOf(o);
  let cursor: ScanCursor = o.resumeToken ? decodeScanToken(o.resumeToken) : { hash: window.start };
  const rows: ScanRow[] = [];
  while (rows.length < limit && cursorInWindow(cursor, window)) {
    const at = cursor;
    // Re-planned on every attempt: after a map refresh the same hash may have a new owner.
    const { res, segmentEnd } = await c.attempt(deadline, async (token, map) => {
      const seg = segmentAt(map, at.hash, window.end);
      const shard = c.session.shard(seg.address);
      const req = {
        epoch: map.epoch,
        rowPrefix: prefix,
        filter,
        limit: limit - rows.length,
        resumeToken: at.shardToken ?? Buffer.alloc(0),
        hashStart: at.hash,
        hashEnd: endToProto(seg.end),
      };
      return { res: await c.unary(shard, shard.scanRows, req, { token, deadline }), segmentEnd: seg.end };
    });
    for (const r of res.rows) rows.push(r); // decoded RowCells have the ScanRow shape: no copy
    cursor = cursorAfter(res.nextToken, segmentEnd);
  }
  return cursorInWindow(cursor, window) ? { rows, nextToken: encodeScanToken(cursor) } : { rows };
}
