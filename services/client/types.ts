/**
 * The public types of the SDK's API: what callers pass to and get back from
 * `CairnClient` (client.ts re-exports every one of them).
 */
import type { ClientTls } from '../common/grpc.js';

/** A cell value: strings are stored as UTF-8. */
export type Value = string | Uint8Array;

export interface CellInput {
  column: string;
  value: Value;
  /** Microseconds since the Unix epoch; leave out to let the shard's clock pick one. */
  timestampUs?: bigint;
}

/** `{ column: value }`, or a list of cells when timestamps are given. */
export type CellsInput = Record<string, Value> | CellInput[];

export interface Cell {
  column: string;
  /** Microseconds since the Unix epoch. */
  timestampUs: bigint;
  value: Buffer;
}

/** Versions with startUs <= timestamp < endUs; either bound may be left out. */
export interface TimeRange {
  startUs?: bigint;
  endUs?: bigint;
}

export interface CallOptions {
  /** Deadline for the whole call, retries included (default: the client's timeoutMs). */
  timeoutMs?: number;
}

export interface WriteOptions extends CallOptions {
  /** Delete every earlier version of each column written. */
  replace?: boolean;
  /** Acknowledge only once the write is on disk. */
  sync?: boolean;
}

export interface ReadOptions extends CallOptions {
  /** Exact column names; empty or absent (with no prefix) means every column. */
  columns?: string[];
  /** Only columns starting with this (ignored when `columns` is set). */
  columnPrefix?: string;
  timeRange?: TimeRange;
  /** Every matching version instead of only the newest of each column. */
  allVersions?: boolean;
  /** The most cells returned per row. */
  limit?: number;
}

export interface ScanOptions extends ReadOptions {
  /** Rows fetched per page (default 500). */
  pageSize?: number;
}

export interface ScanPageOptions extends ReadOptions {
  /** The most rows in this page (default 500). A page may hold fewer and still have a nextToken. */
  limit?: number;
  /** The nextToken of the previous page; absent starts a new scan. */
  resumeToken?: string;
  /** The most cells per row (ReadOptions.limit is the rows per page here). */
  cellLimit?: number;
}

export interface RowInput {
  row: string;
  cells: CellsInput;
  replace?: boolean;
}

export interface ScanRow {
  row: string;
  cells: Cell[];
}

export interface ScanPage {
  rows: ScanRow[];
  /** Pass as resumeToken for the next page; absent when the scan is complete. */
  nextToken?: string;
}

export interface Lease {
  leaseId: string;
  /** When the lease ends, ms since the Unix epoch. */
  expiresAtMs: number;
}

export interface CellCheck {
  column: string;
  /** The check holds when the column's newest value equals this. */
  equals?: Value;
  /** The check holds when the column has no version at all. */
  absent?: boolean;
}

export interface ServerInfo {
  id: string;
  address: string;
  /** "up" or "down". */
  status: string;
  bytes: number;
  rows: number;
  ranges: number;
  /** Fraction of the hash space owned, 0..1. */
  share: number;
  opsPerSec: number;
  /** ms since the Unix epoch; 0 = never. */
  lastHeartbeatMs: number;
  /** Free bytes on the shard's data directory's file system at its last heartbeat. */
  diskFreeBytes: number;
  /** Size of that file system; 0 = not reported (an older shard). */
  diskTotalBytes: number;
  /** The shard refuses writes because its disk is full (it resumes by itself once space is freed). */
  diskFull: boolean;
  /** Ranges it is the primary of (as `ranges`), holds as a follower, and is receiving as a learner. */
  primaries: number;
  followers: number;
  learners: number;
}

export interface RangeInfo {
  start: bigint;
  /** Exclusive; 2^64 for the last range. */
  end: bigint;
  /** The primary: it takes the range's reads and writes. */
  shardId: string;
  /** The primary's address. */
  address: string;
  bytes: number;
  rows: number;
  /** Every shard holding a full copy, the primary first ([shardId] with one copy). */
  replicas: string[];
  /** The replicas with every acknowledged write, the primary included. */
  inSync: string[];
  /** Shards receiving a copy that counts for nothing yet. */
  learners: string[];
  /** The replica group's version. */
  version: bigint;
}

export interface ConnectOptions {
  /** host:port of the master, or of every master (`a:7000,b:7000`): calls follow the one that leads. */
  master: string;
  user?: string;
  password?: string;
  /** A token from an earlier login; used as-is (it cannot be renewed without a password). */
  token?: string;
  /** Default deadline of each call, retries included, and of connect itself (default 10 s). */
  timeoutMs?: number;
  tls?: ClientTls;
  /** gRPC message limit (default 16 MiB, the servers' default). */
  maxMessageBytes?: number;
  /** Keep the map fresh with MasterService.WatchMap instead of only on WRONG_SHARD. */
  watch?: boolean;
  /**
   * Carry single-row calls (put, get, check-and-mutate, deletes, leases) to
   * each shard over one ShardService.Batch stream, the calls in flight
   * together in one message (default true). False sends each as its own
   * unary RPC, as clients in other languages do; results are the same.
   */
  batch?: boolean;
}
