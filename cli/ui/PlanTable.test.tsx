import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { PLAN } from './fake-admin-api.js';
import { PlanTable } from './PlanTable.js';

describe('PlanTable', () => {
  it('lists the moves with their bytes, then the new share per shard', () => {
    const lines = render(<PlanTable plan={PLAN} />).lastFrame()!.split('\n');
    expect(lines[0]).toBe('The following moves will be made:');
    expect(lines[1]).toMatch(/#\s+FROM\s+TO\s+RANGE\s+BYTES\s+ROWS/);
    expect(lines[2]).toMatch(/^\s+1\s+s1\s+s3\s+\[00000000000000000000, 03074457345618258602\[\s+341KB\s+1666$/);
    expect(lines[3]).toMatch(/^\s+2\s+s2\s+s3\s+\[09223372036854775808, 12297829382473034410\[\s+341KB\s+1667$/);
    expect(lines[4]).toBe('Moves 683KB of 2.0MB (the least any balancing plan can move: 683KB).');
    expect(lines[5]).toBe('The new shares will be:');
    expect(lines[6]).toMatch(/SHARD\s+BEFORE\s+AFTER\s+SHARE/);
    expect(lines.slice(7)).toEqual([
      expect.stringMatching(/^\s+s1\s+1\.0MB\s+683KB\s+33%$/),
      expect.stringMatching(/^\s+s2\s+1\.0MB\s+683KB\s+33%$/),
      expect.stringMatching(/^\s+s3\s+0B\s+683KB\s+33%$/),
    ]);
  });

  it('says when there is nothing to move', () => {
    const frame = render(<PlanTable plan={{ ...PLAN, moves: [], movedBytes: 0 }} emptyText="s3 owns no range: nothing to move." />).lastFrame()!;
    expect(frame).toContain('s3 owns no range: nothing to move.');
    expect(frame).toContain('The shares stay:');
    expect(frame).not.toContain('The following moves');
  });
});
