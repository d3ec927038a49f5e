import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { AdminScreen, type AdminScreenProps } from './AdminScreen.js';
import { moveOf, server } from './fake-admin-api.js';
import type { ConsoleMode } from './model.js';

const props = (mode: ConsoleMode, extra: Partial<AdminScreenProps> = {}): AdminScreenProps => ({
  log: [
    { id: 0, kind: 'echo', prompt: 'Manager(2 servers)>', line: 'servers' },
    { id: 1, kind: 'lines', lines: ['Map epoch 3: 2 servers, 2 up'] },
  ],
  dashboard: { master: 'm:7000', user: 'ops', now: 2000, snapshot: { epoch: 3n, servers: [server('s1', 0), server('s2', 1)], ranges: [], moves: [], at: 2000 } },
  mode,
  prompt: { label: 'Manager(2 servers)>', value: 'ran' },
  ...extra,
});

describe('AdminScreen', () => {
  it('puts the log above the dashboard and the prompt at the bottom', () => {
    const lines = render(<AdminScreen {...props({ kind: 'prompt' })} />).lastFrame()!.split('\n');
    expect(lines[0]).toBe('Manager(2 servers)> servers');
    expect(lines[1]).toBe('Map epoch 3: 2 servers, 2 up');
    expect(lines[2]).toMatch(/^╭/);
    expect(lines.some((l) => l.includes('Cairn admin · master m:7000'))).toBe(true);
    expect(lines[lines.length - 1]).toBe('Manager(2 servers)> ran');
  });

  it('asks the question instead of showing the prompt', () => {
    const frame = render(<AdminScreen {...props({ kind: 'confirm', question: 'Proceed with re-sharding?' })} />).lastFrame()!;
    expect(frame).toContain('? Proceed with re-sharding? (y/n)');
    expect(frame).not.toContain('Manager(2 servers)> ran');
  });

  it('follows an operation with a bar per move and a total bar', () => {
    const frame = render(
      <AdminScreen {...props({ kind: 'following', title: 'Rebalance op-1', operationId: 'op-1', moves: [moveOf({ copiedBytes: 500_000 }), moveOf({ id: 'mv-2', state: 'planned' })] })} />,
    ).lastFrame()!;
    expect(frame).toContain('Rebalance op-1');
    expect(frame).toMatch(/#1\s+s1 -> s3\s+█{10}░{10}  50%/);
    expect(frame).toMatch(/#2\s+s1 -> s3\s+░{20}   0%.*waiting/);
    expect(frame).toMatch(/Total\s+2 moves\s+█{5}░{15}  25%/);
    expect(frame).toContain('Ctrl-C stops following; the moves keep running on the master.');
    expect(frame).not.toContain('Manager(2 servers)> ran');
  });

  it('says what it is doing while busy or connecting, and asks for a password masked', () => {
    expect(render(<AdminScreen {...props({ kind: 'busy', what: 'planning' })} />).lastFrame()).toContain('… planning');
    expect(render(<AdminScreen {...props({ kind: 'connecting' })} />).lastFrame()).toContain('… connecting to m:7000 as ops');
    const pw = render(<AdminScreen {...props({ kind: 'password' }, { prompt: { label: 'Password for ops@m:7000:', value: 'abc', mask: true } })} />).lastFrame()!;
    expect(pw.split('\n').pop()).toBe('Password for ops@m:7000: ***');
  });
});
