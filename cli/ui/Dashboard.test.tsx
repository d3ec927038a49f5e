import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { HASH_SPACE_END } from '../../services/common/hash.js';
import { Dashboard } from './Dashboard.js';
import { groupRange, HALF, moveOf, replicatedCluster, server } from './fake-admin-api.js';
import { clock, type RangeRow, type Snapshot } from './model.js';

const squash = (s: string) => s.replace(/ +/g, ' ');

const snapshot: Snapshot = {
  epoch: 7n,
  servers: [
    server('s1', 0, { bytes: 1_048_576, rows: 5000, share: 0.5, opsPerSec: 41.6, lastHeartbeatMs: 9_700 }),
    server('s2', 1, { bytes: 2_097_152, rows: 10000, ranges: 2, share: 0.5, opsPerSec: 0, lastHeartbeatMs: 9_800 }),
    server('s3', 2, { status: 'down', bytes: 0, rows: 0, ranges: 0, share: 0, opsPerSec: 0, lastHeartbeatMs: 0, diskFreeBytes: 0, diskTotalBytes: 0 }),
  ],
  ranges: [
    { start: 0n, end: HALF, shard: 's1', address: '10.0.0.1:7001', bytes: 1_048_576, rows: 5000 },
    { start: HALF, end: HALF + HALF / 2n, shard: 's2', address: '10.0.0.2:7001', bytes: 1_048_576, rows: 5000 },
    { start: HALF + HALF / 2n, end: HASH_SPACE_END, shard: 's2', address: '10.0.0.2:7001', bytes: 1_048_576, rows: 5000 },
  ],
  moves: [moveOf({ id: 'mv-a', from: 's2', to: 's3', copiedBytes: 500_000, bytesPerSec: 250_000 }), moveOf({ id: 'mv-b', state: 'fenced', copiedBytes: 1_000_000 })],
  at: 10_000,
};

describe('Dashboard', () => {
  it('draws the shards table: id, address, up or down, bytes, rows, ranges, share, ops/s and last heartbeat', () => {
    const frame = squash(render(<Dashboard master="m:7000" user="ops" snapshot={snapshot} now={10_000} />).lastFrame()!);
    expect(frame).toMatch(/# ID ADDRESS STATUS BYTES ROWS RANGES SHARE OPS\/S HEARTBEAT/);
    expect(frame).toContain('0 s1 10.0.0.1:7001 up 1.0MB 5000 1 50% 42 0.3s ago');
    expect(frame).toContain('1 s2 10.0.0.2:7001 up 2.0MB 10000 2 50% 0 0.2s ago');
    expect(frame).toContain('2 s3 10.0.0.3:7001 down 0B 0 0 0% 0 never');
  });

  it('shows each shard\'s free disk, FULL while a full disk makes it refuse writes, n/a when it does not report', () => {
    const servers = [
      ...snapshot.servers.slice(0, 2),
      server('s3', 2, { diskFreeBytes: 0, diskTotalBytes: 16 * 2 ** 20, diskFull: true }),
      server('s4', 3, { diskFreeBytes: 0, diskTotalBytes: 0 }),
    ];
    const frame = squash(render(<Dashboard master="m:7000" user="ops" snapshot={{ ...snapshot, servers }} now={10_000} />).lastFrame()!);
    expect(frame).toMatch(/HEARTBEAT DISK FREE/);
    expect(frame).toContain('0.3s ago 8.0GB/16GB');
    expect(frame).toMatch(/s3 10\.0\.0\.3:7001 up .* 0B\/16MB FULL/);
    expect(frame).toMatch(/s4 10\.0\.0\.4:7001 up .* n\/a/);
  });

  it('shows the map epoch and the ranges as a strip of owners', () => {
    const frame = squash(render(<Dashboard master="m:7000" user="ops" snapshot={snapshot} now={10_000} stripWidth={8} />).lastFrame()!);
    expect(frame).toContain(`Cairn admin · master m:7000 · user ops · map epoch 7 · refreshed ${clock(10_000)}`);
    expect(frame).toContain('Map: 3 ranges |00001111| 0=s1 1=s2 2=s3');
  });

  it('lists the moves in flight with progress bars', () => {
    const frame = squash(render(<Dashboard master="m:7000" user="ops" snapshot={snapshot} now={10_000} />).lastFrame()!);
    expect(frame).toContain('Moves in flight: 2');
    expect(frame).toMatch(/mv-a s2 -> s3 █{10}░{10} 50% 488KB\/977KB 244KB\/s ETA 2s copy/);
    expect(frame).toMatch(/mv-b s1 -> s3 █{19}░ 99% 977KB\/977KB - ETA - cutover/);
  });

  it('counts, without listing again, the moves of the operation followed below', () => {
    const moves = [moveOf({ id: 'mv-a', operationId: 'op-1' }), moveOf({ id: 'mv-b', operationId: 'op-2' })];
    const frame = render(<Dashboard master="m:7000" user="ops" snapshot={{ ...snapshot, moves }} now={10_000} followed="op-1" />).lastFrame()!;
    expect(frame).toContain('Moves in flight: 2 (1 of op-1, followed below)');
    expect(frame).not.toContain('mv-a');
    expect(frame).toContain('mv-b');
  });

  it('says when no move is in flight', () => {
    const frame = render(<Dashboard master="m:7000" user="ops" snapshot={{ ...snapshot, moves: [] }} now={10_000} />).lastFrame()!;
    expect(frame).toContain('Moves in flight: none');
  });

  it('keeps a single-copy cluster\'s look: RANGES, no replication line', () => {
    const frame = render(<Dashboard master="m:7000" user="ops" snapshot={snapshot} now={10_000} />).lastFrame()!;
    expect(frame).not.toContain('P/F/L');
    expect(frame).not.toContain('Replication');
  });

  it('counts each shard\'s primaries, followers and learners in a replicated cluster, and says every range is in sync', () => {
    const replicated: Snapshot = { ...snapshot, ...replicatedCluster(), moves: [] };
    const frame = squash(render(<Dashboard master="m:7000" user="ops" snapshot={replicated} now={10_000} />).lastFrame()!);
    expect(frame).toMatch(/# ID ADDRESS STATUS BYTES ROWS P\/F\/L SHARE OPS\/S HEARTBEAT DISK FREE/);
    expect(frame).toContain('0 s1 10.0.0.1:7001 up 1.0MB 5000 1/2/0 33% 12');
    expect(frame).toContain('Replication: 3 copies wanted · all 3 ranges in sync P/F/L = primary/follower/learner copies');
    expect(frame).not.toContain('Under-replicated');
  });

  it('shows the ranges short of in-sync copies at a glance, and the learners copying', () => {
    const cluster = replicatedCluster();
    const [a, b, c] = cluster.ranges as [RangeRow, RangeRow, RangeRow];
    const ranges = [groupRange(a.start, a.end, ['s2', 's3', 's1'], { inSync: ['s2', 's3'] }), groupRange(b.start, b.end, ['s2', 's3'], { learners: ['s4'] }), c];
    const servers = [...cluster.servers, server('s4', 3, { ranges: 0, primaries: 0, followers: 0, learners: 1 })];
    const frame = squash(render(<Dashboard master="m:7000" user="ops" snapshot={{ ...snapshot, servers, ranges, moves: [], replicationFactor: 3 }} now={10_000} />).lastFrame()!);
    expect(frame).toContain('3 s4 10.0.0.4:7001 up 1.0MB 5000 0/0/1');
    expect(frame).toContain('Replication: 3 copies wanted · 2 of 3 ranges under-replicated · 1 learner copying');
    // The list wraps on the 100-column test screen.
    expect(frame).toContain(`Under-replicated: [0, ${a.end}) 2/3 in sync, [${b.start},`);
    expect(frame).toContain(`${b.end}) 2/3 in sync`);
  });

  it('waits for the first refresh, and shows why a refresh failed as one line', () => {
    expect(render(<Dashboard master="m:7000" user="ops" now={0} />).lastFrame()).toContain('Waiting for the first refresh…');
    expect(render(<Dashboard master="m:7000" user="ops" now={0} waiting="Not connected." />).lastFrame()).toContain('Not connected.');
    const failed = render(<Dashboard master="m:7000" user="ops" snapshot={snapshot} now={10_000} error="cannot reach the master at m:7000" />).lastFrame()!;
    expect(failed).toContain('✗ error: refresh failed: cannot reach the master at m:7000');
    expect(squash(failed)).toContain('0 s1 10.0.0.1:7001 up');
  });
});
