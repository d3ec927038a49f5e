/**
 * Who acknowledged each write, and under which replica-group version: what
 * the checker needs to tell whether two replicas of one range acknowledged
 * writes at the same version (two primaries at once).
 *
 * The SDK does not expose the ResponseHeader of its calls, so this wraps the
 * generated ShardServiceClient's writeRows and checkAndMutate, process-wide,
 * while a run lasts: every successful answer is recorded as (the rows of the
 * request, header.node_id, header.epoch: the map epoch the answering shard
 * held). A map log follows the master's WatchMap stream (reconnecting across
 * master restarts) and keeps every map it sees by epoch, so the checker can
 * find the range and its group version in the epoch the shard answered by.
 */
import { credentials, type ClientReadableStream } from '@grpc/grpc-js';
import { MasterServiceClient, type WatchMapResponse } from '../../proto/gen/cairn/v1/master.js';
import { ShardServiceClient } from '../../proto/gen/cairn/v1/shard.js';
import { metadataFor } from '../../services/common/grpc.js';
import { mapFromProto, type ClusterMap } from '../../services/common/map.js';
import type { AckRecord } from './checker.js';

type Callback = (err: unknown, res: { header?: { nodeId: string; epoch: bigint } }) => void;

/** Records the answering shard of every successful write of this process until `uninstall()`. */
export function recordAcks(): { acks: AckRecord[]; uninstall: () => void } {
  const acks: AckRecord[] = [];
  const proto = ShardServiceClient.prototype as unknown as Record<string, (...args: unknown[]) => unknown>;
  const originals = new Map<string, (...args: unknown[]) => unknown>();
  const rowsOf: Record<string, (req: unknown) => string[]> = {
    writeRows: (req) => (req as { rows: Array<{ row: string }> }).rows.map((r) => r.row),
    checkAndMutate: (req) => [(req as { row: string }).row],
  };
  for (const [method, rows] of Object.entries(rowsOf)) {
    const original = proto[method]!;
    originals.set(method, original);
    proto[method] = function (this: unknown, ...args: unknown[]) {
      const i = args.findIndex((a) => typeof a === 'function');
      if (i >= 0) {
        const cb = args[i] as Callback;
        const req = args[0];
        args[i] = (err: unknown, res: Parameters<Callback>[1]) => {
          if (!err && res?.header) acks.push({ rows: rows(req), nodeId: res.header.nodeId, epoch: res.header.epoch, atMs: Date.now() });
          cb(err, res);
        };
      }
      return original.apply(this, args);
    };
  }
  return {
    acks,
    uninstall: () => {
      for (const [m, f] of originals) proto[m] = f;
    },
  };
}

/** Every map the master publishes while it runs (WatchMap, reconnecting), by epoch. */
export class MapLog {
  readonly maps = new Map<bigint, ClusterMap>();
  private stopped = false;
  private stream: ClientReadableStream<WatchMapResponse> | undefined;
  private client: MasterServiceClient | undefined;
  private readonly loop: Promise<void>;

  constructor(
    private readonly master: () => string,
    private readonly token: () => Promise<string>,
  ) {
    this.loop = this.run();
  }

  private last(): bigint {
    let e = 0n;
    for (const k of this.maps.keys()) if (k > e) e = k;
    return e;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        const token = await this.token();
        this.client = new MasterServiceClient(this.master(), credentials.createInsecure());
        const s = this.client.watchMap({ minEpoch: this.last() }, metadataFor(token));
        this.stream = s;
        await new Promise<void>((resolve) => {
          s.on('data', (m: WatchMapResponse) => {
            const map = mapFromProto(m.map);
            if (map.epoch > 0n) this.maps.set(map.epoch, map);
          });
          s.on('error', () => resolve());
          s.on('end', () => resolve());
        });
      } catch {
        // The master is down: try again.
      } finally {
        this.client?.close();
      }
      if (!this.stopped) await new Promise((r) => setTimeout(r, 200));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stream?.cancel();
    this.client?.close();
    await this.loop;
  }
}
