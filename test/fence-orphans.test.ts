/**
 * A fence belongs to a move the master has journaled (issue 10, item 5), on a
 * real in-process cluster (real master and shards, gRPC, LevelDB). The test
 * opens TransferRange on a shard by hand, with the server credential, as any
 * process holding it could:
 *
 * - a stream that is opened and never read nor acknowledged never gets the
 *   range fenced: the source waits for acknowledgements, unfenced;
 * - a stream that acknowledges up to the fence and then just goes away gets
 *   the fence lifted at once (nothing can have committed before the seal),
 *   and the move id cannot transfer again;
 * - a stream that goes all the way to the seal and goes away leaves a sealed
 *   fence of a move the master never journaled: the shard asks the master,
 *   which does not know it, and lifts it;
 * - a fence left in a stopped shard's data directory for a move the master
 *   does not know is loaded at the restart (the range is refused first), and
 *   lifted once the shard has registered and asked the master;
 * - a fence whose move the master reports in flight is kept (and no second
 *   transfer of that move may take it over), and lifted once the master
 *   reports it aborted.
 * After each, writes to the range succeed again.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { TransferPhase, type TransferRangeResponse } from '../proto/gen/cairn/v1/control.js';
import { deriveTokenKey, ServerTokenSource } from '../services/common/auth.js';
import { endToProto, rowHash } from '../services/common/hash.js';
import { rangesOf } from '../services/common/map.js';
import { BUCKET_SIZE, type HashRange } from '../services/common/ranges.js';
import { FenceTable } from '../services/shard/fence.js';
import type { RunningShard } from '../services/shard/server.js';
import { ShardStore } from '../services/shard/store.js';
import { controlClient, login, rawCall, rowsIn, shardClient } from './harness/raw.js';
import { startInProcCluster, TEST_CREDENTIAL, waitFor, type InProcCluster } from './harness/inproc.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: InProcCluster;
let a: RunningShard;
let token: string;
const serverToken = () => new ServerTokenSource(deriveTokenKey(TEST_CREDENTIAL), 'fence-orphans-test', { clusterId: () => cluster.master.master.clusterId }).get();

/** The k-th eighth (bucket-aligned) of the first range shard `s` owns: each case gets its own range. */
function eighthOf(s: RunningShard, k: number): HashRange {
  const own = rangesOf(s.node.map, s.node.id)[0]!;
  const size = ((own.end - own.start) / 8n / BUCKET_SIZE) * BUCKET_SIZE;
  return { start: own.start + BigInt(k) * size, end: own.start + BigInt(k + 1) * size };
}

async function write(row: string, value: string) {
  const c = shardClient(a.address);
  try {
    return await rawCall(c, c.writeRows, { epoch: 0n, requestId: '', sync: false, rows: [{ row, replace: false, cells: [{ column: 'c', timestampUs: 0n, value: Buffer.from(value) }] }] }, token);
  } finally {
    c.close();
  }
}

/** Fills a range with rows, enough for many 1 KiB chunks. */
async function preload(rows: string[]): Promise<void> {
  const c = shardClient(a.address);
  try {
    for (let i = 0; i < rows.length; i += 100) {
      const part = rows.slice(i, i + 100);
      const w = await rawCall(
        c,
        c.writeRows,
        { epoch: 0n, requestId: '', sync: false, rows: part.map((row) => ({ row, replace: false, cells: [{ column: 'p', timestampUs: 0n, value: Buffer.alloc(200, row) }] })) },
        token,
      );
      expect(w.err).toBeUndefined();
    }
  } finally {
    c.close();
  }
}

/** Opens TransferRange on shard `a` as a destination would; `ack` acknowledges with AckTransfer, as the destination does. */
function openTransfer(moveId: string, r: HashRange) {
  const client = controlClient(a.address);
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${serverToken()}`);
  const call = client.transferRange({ moveId, start: r.start, end: endToProto(r.end), epoch: a.node.map.epoch, chunkBytes: 1024, maxBytesPerSec: 0n }, md, { deadline: Date.now() + 60_000 });
  call.on('error', () => undefined); // a cancelled or failed call: what the test checks is the shard
  const ack = (seq: bigint, endVerified = false) => rawCall(client, client.ackTransfer, { moveId, ack: { appliedSeq: seq, endVerified } }, serverToken());
  return { client, call, ack };
}

const transferPhase = (moveId: string) => a.node.moves.phaseOf(moveId).transfer;

beforeAll(async () => {
  cluster = await startInProcCluster({ shards: 2 });
  a = cluster.shards[0]!;
  token = await login(cluster.masterAddress, 'writer', 'writer-pass');
});
afterAll(() => cluster.stop());

describe('orphan fences', () => {
  it('a TransferRange opened and never read nor acknowledged never fences the range', async () => {
    const R = eighthOf(a, 0);
    const rows = rowsIn(R, 'never-read', 300);
    await preload(rows); // ~60 KB: dozens of 1 KiB chunks, far more than the source may send unacknowledged
    const t = openTransfer('mv-never-read', R);
    try {
      await waitFor(() => transferPhase('mv-never-read') === TransferPhase.TRANSFER_PHASE_COPY, 5000, 'the transfer to start');
      // Longer than the whole range takes to hand to gRPC, and than maxFenceMs.
      for (const until = Date.now() + 2500; Date.now() < until; await sleep(50)) {
        expect((await write(rows[0]!, 'while-open')).err).toBeUndefined();
        expect(a.node.fences.size).toBe(0);
      }
      expect(transferPhase('mv-never-read')).toBe(TransferPhase.TRANSFER_PHASE_COPY); // still waiting for acknowledgements
    } finally {
      t.call.cancel();
      t.client.close();
    }
    await waitFor(() => transferPhase('mv-never-read') === TransferPhase.TRANSFER_PHASE_UNSPECIFIED, 5000, 'the transfer to end');
    expect(a.node.fences.size).toBe(0);
  });

  it('a stream that acknowledges up to the fence and goes away gets the fence lifted at once, and its move cannot transfer again', async () => {
    const R = eighthOf(a, 1);
    const rows = rowsIn(R, 'goes-away', 100);
    await preload(rows);
    // A bound far away: what lifts the fence here is the stream ending, not maxFenceMs.
    const maxFenceMs = a.node.opts.maxFenceMs;
    a.node.opts.maxFenceMs = 60_000;
    const t = openTransfer('mv-goes-away', R);
    let sawEnd = false;
    try {
      for await (const m of t.call as AsyncIterable<TransferRangeResponse>) {
        if (m.chunk) await t.ack(m.chunk.seq);
        if (m.end) {
          sawEnd = true;
          expect(a.node.fences.get('mv-goes-away')?.range).toEqual(R);
          t.call.cancel(); // the destination goes away without confirming the tail
          break;
        }
      }
    } finally {
      t.client.close();
      a.node.opts.maxFenceMs = maxFenceMs;
    }
    expect(sawEnd).toBe(true);
    await waitFor(() => a.node.fences.get('mv-goes-away') === undefined, 10_000, 'the fence to be lifted');
    expect((await write(rows[0]!, 'after')).err).toBeUndefined();
    expect(a.node.moves.wasAborted('mv-goes-away')).toBe(true);
    const again = openTransfer('mv-goes-away', R);
    const refused = await new Promise<grpc.ServiceError>((done) => again.call.on('error', done).resume());
    again.client.close();
    expect({ code: status[refused.code], details: refused.details }).toEqual({ code: 'ABORTED', details: expect.stringMatching(/move mv-goes-away was aborted on this shard/) });
    expect(a.node.fences.size).toBe(0);
  });

  it('a sealed fence of a move the master never journaled is lifted once the shard asks the master', async () => {
    const R = eighthOf(a, 2);
    const rows = rowsIn(R, 'sealed-orphan', 100);
    await preload(rows);
    const t = openTransfer('mv-sealed-orphan', R);
    let sealed = false;
    try {
      for await (const m of t.call as AsyncIterable<TransferRangeResponse>) {
        if (m.chunk) await t.ack(m.chunk.seq);
        if (m.end) await t.ack(m.end.chunks, true);
        if (m.sealed) {
          sealed = true;
          expect(a.node.fences.get('mv-sealed-orphan')?.range).toEqual(R); // sealed: only the move's outcome may lift it now
        }
      }
    } finally {
      t.client.close();
    }
    expect(sealed).toBe(true);
    expect((await write(rows[0]!, 'sealed')).err?.code).toBe(status.UNAVAILABLE);
    await waitFor(() => a.node.fences.get('mv-sealed-orphan') === undefined, 10_000, 'the orphan fence to be lifted');
    expect((await write(rows[0]!, 'after')).err).toBeUndefined();
  });

  it('a fence the master reports in flight is kept, and lifted once the master reports the move aborted', async () => {
    const R = eighthOf(a, 3);
    const coordinator = cluster.master.master.coordinator;
    const real = coordinator.moveStatus.bind(coordinator);
    let state = 'fenced';
    coordinator.moveStatus = (id) => (id === 'mv-in-flight' ? { known: true, state: state as 'fenced' } : real(id));
    try {
      const rows = rowsIn(R, 'in-flight', 100);
      await preload(rows);
      const t = openTransfer('mv-in-flight', R);
      try {
        for await (const m of t.call as AsyncIterable<TransferRangeResponse>) {
          if (m.chunk) await t.ack(m.chunk.seq);
          if (m.end) await t.ack(m.end.chunks, true);
        }
      } finally {
        t.client.close();
      }
      await sleep(2500); // more than two rounds of asking the master
      expect(a.node.fences.get('mv-in-flight')?.range).toEqual(R);
      expect((await write(rows[0]!, 'x')).err?.code).toBe(status.UNAVAILABLE);
      // No second transfer of the move may take the sealed fence over (and lift it when that transfer fails).
      const second = openTransfer('mv-in-flight', R);
      const refused = await new Promise<grpc.ServiceError>((done) => second.call.on('error', done).resume());
      second.client.close();
      expect({ code: status[refused.code], details: refused.details }).toEqual({ code: 'ABORTED', details: expect.stringMatching(/move mv-in-flight already fences/) });
      expect(a.node.fences.get('mv-in-flight')?.range).toEqual(R);
      state = 'aborted';
      await waitFor(() => a.node.fences.get('mv-in-flight') === undefined, 10_000, 'the fence of the aborted move to be lifted');
      expect((await write(rows[0]!, 'after')).err).toBeUndefined();
    } finally {
      coordinator.moveStatus = real;
    }
  });

  it('a fence left in a data directory for a move the master does not know is lifted after the restarted shard registers', async () => {
    const R = eighthOf(a, 4);
    const rows = rowsIn(R, 'left-behind', 50);
    await preload(rows);
    const dataDir = a.node.store.dir;
    await a.stop(1000);
    // What a crash in the critical section of a move that the master never journaled (or lost) leaves behind.
    const store = await ShardStore.open(dataDir);
    await (await FenceTable.load(store)).add('mv-left-behind', R);
    await store.close();

    const restarted = await cluster.restartShard(a);
    a = restarted;
    expect(a.node.fences.get('mv-left-behind')?.range).toEqual(R); // loaded before the server took calls
    await a.registered;
    await waitFor(() => a.node.fences.get('mv-left-behind') === undefined, 10_000, 'the fence to be lifted');
    await waitFor(() => a.node.map.epoch === cluster.master.master.epoch, 5000, 'the current map');
    expect((await write(rows[0]!, 'after-restart')).err).toBeUndefined();
    const c = shardClient(a.address);
    const read = await rawCall(c, c.readRow, { epoch: 0n, row: rows[1]!, filter: { columns: [], columnPrefix: '', timeRange: undefined, allVersions: false, limit: 0 } }, token);
    c.close();
    expect(read.res?.cells.length).toBe(1); // served with its data
  });
});
