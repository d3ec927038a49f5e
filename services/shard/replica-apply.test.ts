/** The follower's side (replica-apply.ts): a piece of a split range waits for a message of the whole range still being applied. */
import { describe, expect, it } from '@jest/globals';
import type { ReplicateRequest, ReplicateResponse } from '../../proto/gen/cairn/v1/control.js';
import { HASH_SPACE_END } from '../common/hash.js';
import type { ClusterMap, MapRange } from '../common/map.js';
import { quietLogger } from '../../test/harness/inproc.js';
import { serveReplicate, type ReplicaHost } from './replica-apply.js';
import { RangeLogs } from './replica-log.js';

const MID = 1n << 63n;
const member = (start: bigint, end: bigint, version: bigint): MapRange => ({ start, end, shardId: 'p', replicas: ['p', 'f'], inSync: ['p', 'f'], version }) as MapRange;
const request = (r: MapRange, o: Partial<ReplicateRequest>): ReplicateRequest => ({
  start: r.start,
  end: r.end === HASH_SPACE_END ? 0n : r.end,
  version: r.version!,
  epoch: 0n,
  primary: 'p',
  prevLsn: 0n,
  prevTerm: 0n,
  entries: [],
  committedLsn: 0n,
  snapshotBegin: false,
  snapshotOps: [],
  snapshotEnd: false,
  snapshotLsn: 0n,
  snapshotTerm: 0n,
  ...o,
});

describe('serveReplicate', () => {
  it('a piece of a split range starts only after a message of the whole range, taken before the split, is applied', async () => {
    const events: string[] = [];
    let release!: () => void;
    const blocked = new Promise<void>((r) => (release = r));
    const whole = member(0n, HASH_SPACE_END, 1n);
    const logs = new RangeLogs(async () => undefined);
    const host = {
      log: quietLogger(),
      nodeId: 'f',
      map: { epoch: 1n, ranges: [whole] } as unknown as ClusterMap,
      rangeLogs: {
        get: (r: { start: bigint; end: bigint }) => {
          events.push(`log ${r.end === HASH_SPACE_END ? 'whole' : 'piece'}`);
          return logs.get(r);
        },
      },
      store: {
        metaOp: () => ({}),
        applyReplicated: async () => {
          events.push('apply whole: start');
          await blocked;
          events.push('apply whole: end');
        },
      },
      ensureEpoch: async () => undefined,
      heardFromPrimary: () => undefined,
    } as unknown as ReplicaHost;
    const answers: ReplicateResponse[] = [];
    const once = async function* (req: ReplicateRequest) {
      yield req;
    };
    const first = serveReplicate(host, once(request(whole, { entries: [{ lsn: 1n, term: 1n, ops: [], sync: false, packedOps: Buffer.alloc(0) }] })), async (r) => void answers.push(r));
    while (!events.includes('apply whole: start')) await new Promise((r) => setTimeout(r, 5));
    // The map splits the range; the piece's first message (a heartbeat from the new version) comes on another stream.
    const piece = member(0n, MID, 2n);
    (host as { map: ClusterMap }).map = { epoch: 2n, ranges: [piece, member(MID, HASH_SPACE_END, 2n)] } as unknown as ClusterMap;
    const second = serveReplicate(host, once(request(piece, {})), async (r) => void answers.push(r));
    await new Promise((r) => setTimeout(r, 50));
    expect(events).not.toContain('log piece');
    release();
    await Promise.all([first, second]);
    expect(events).toEqual(['log whole', 'apply whole: start', 'apply whole: end', 'log piece']);
    expect(answers.map((a) => a.outcome)).toEqual(['ACCEPTED', 'ACCEPTED']);
  });
});
