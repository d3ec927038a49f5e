import { describe, expect, it } from '@jest/globals';
import { diskFree, formatRanges, formatServers, rangesJson, replicaNote, serversJson, type RangeRow, type ServerRow } from './format.js';

const row = (o: Partial<ServerRow> = {}): ServerRow => ({ id: 's1', address: '127.0.0.1:7001', status: 'up', bytes: 2048, rows: 3, ranges: 1, share: 1, opsPerSec: 0, ...o });

describe('free disk in ctl servers', () => {
  it('says free of total, FULL while the shard refuses writes, n/a when the shard does not report it', () => {
    expect(diskFree({ diskFreeBytes: 12 * 2 ** 20, diskTotalBytes: 16 * 2 ** 20 })).toBe('12MB of 16MB');
    expect(diskFree({ diskFreeBytes: 0, diskTotalBytes: 16 * 2 ** 20, diskFull: true })).toBe('0B of 16MB FULL');
    expect(diskFree({ diskFreeBytes: 12 * 2 ** 20, diskTotalBytes: 16 * 2 ** 20 }, true)).toBe('12MB/16MB');
    expect(diskFree({})).toBe('n/a');
  });

  it('ends each server line with its free disk, and says that a full shard refuses writes', () => {
    const lines = formatServers([row({ diskFreeBytes: 2 ** 30, diskTotalBytes: 4 * 2 ** 30 }), row({ id: 's2', diskFreeBytes: 0, diskTotalBytes: 2 ** 30, diskFull: true })], 3n);
    expect(lines[1]).toBe('Server 0 s1 127.0.0.1:7001 up (Size: 2.0KB, Rows: 3, Ranges: 1, Share: 100%, Load: 0 ops/s, Disk free: 1.0GB of 4.0GB)');
    expect(lines[2]).toBe('Server 1 s2 127.0.0.1:7001 up (Size: 2.0KB, Rows: 3, Ranges: 1, Share: 100%, Load: 0 ops/s, Disk free: 0B of 1.0GB FULL: writes refused until space is freed)');
  });

  it('gives the disk numbers to scripts in --json, 0 when not reported', () => {
    const j = serversJson([row({ diskFreeBytes: 5, diskTotalBytes: 10, diskFull: true }), row({ id: 's2' })], 1n);
    expect(j.servers.map((s) => [s.diskFreeBytes, s.diskTotalBytes, s.diskFull])).toEqual([
      [5, 10, true],
      [0, 0, false],
    ]);
  });
});

describe('replica groups in ctl ranges and ctl servers', () => {
  const range = (o: Partial<RangeRow> = {}): RangeRow => ({ start: 0n, end: 1n << 64n, shard: 's1', address: 'a1', bytes: 1024, rows: 2, ...o });

  it('a single copy: the seed\'s lines unchanged; --json names the primary alone', () => {
    expect(formatRanges([{ id: 's1', share: 1 }], [range()])).toEqual(['Server 0 100% [00000000000000000000, 18446744073709551616[  2 rows, 1.0KB']);
    expect(rangesJson([range()], 4n).ranges[0]).toMatchObject({ shard: 's1', address: 'a1', primary: 's1', replicas: ['s1'], inSync: ['s1'], learners: [] });
    expect(serversJson([row()], 1n).servers[0]).toMatchObject({ ranges: 1, primaries: 1, followers: 0, learners: 0 });
    expect(formatServers([row({ primaries: 1 })], 1n)[1]).toContain('Ranges: 1, Share');
  });

  it('a replicated range: followers in sync or catching up, learners, and how many copies are in sync', () => {
    const r = range({ replicas: ['s1', 's2', 's3'], inSync: ['s1', 's3'], learners: ['s4'] });
    expect(replicaNote(r)).toBe('  followers s2 (catching up), s3; learners s4; 2 in sync');
    expect(formatRanges([{ id: 's1', share: 1 }], [r])[0]).toMatch(/1\.0KB  followers s2 \(catching up\), s3; learners s4; 2 in sync$/);
    expect(rangesJson([r], 4n).ranges[0]).toMatchObject({ shard: 's1', primary: 's1', replicas: ['s1', 's2', 's3'], inSync: ['s1', 's3'], learners: ['s4'] });
  });

  it('a shard that follows or learns says so beside its primaries', () => {
    expect(formatServers([row({ primaries: 1, followers: 2, learners: 1 })], 1n)[1]).toContain('Ranges: 1 as primary, following 2, learning 1, Share');
    expect(serversJson([row({ primaries: 1, followers: 2, learners: 1 })], 1n).servers[0]).toMatchObject({ primaries: 1, followers: 2, learners: 1 });
  });
});
