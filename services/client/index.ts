/**
 * The Cairn TypeScript SDK: `CairnClient` and the types of its API.
 *
 *   const db = await CairnClient.connect({ master: 'localhost:7000', user, password });
 *   await db.put('aff4:/C.1234', { 'metadata:hostname': 'box' });
 *   const cells = await db.get('aff4:/C.1234', { columnPrefix: 'metadata:' });
 *
 * Errors are CairnError with a stable `code` (services/common/errors.ts).
 */
export {
  CairnClient,
  newRequestId,
  type CallOptions,
  type Cell,
  type CellCheck,
  type CellInput,
  type CellsInput,
  type ConnectOptions,
  type Lease,
  type RangeInfo,
  type ReadOptions,
  type RowInput,
  type ScanOptions,
  type ScanPage,
  type ScanPageOptions,
  type ScanRow,
  type ServerInfo,
  type TimeRange,
  type Value,
  type WriteOptions,
} from './client.js';
export { backoffMs, classify, retryLoop, type RetryAction, type RetryOptions } from './retry.js';
export { groupByShard, planScan, routeRow, type Route, type ScanSegment, type ShardGroup } from './router.js';
export { CairnError, RETRYABLE, type ErrorCode, type ErrorDetails } from '../common/errors.js';
export type { ClusterMap, ShardRef } from '../common/map.js';
export type { ClientTls } from '../common/grpc.js';
