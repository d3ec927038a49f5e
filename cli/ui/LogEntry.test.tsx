import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { moveOf, PLAN } from './fake-admin-api.js';
import { LogEntry } from './LogEntry.js';

describe('LogEntry', () => {
  it('echoes a command after its prompt', () => {
    expect(render(<LogEntry item={{ kind: 'echo', prompt: 'Manager(2 servers)>', line: 'servers' }} />).lastFrame()).toBe('Manager(2 servers)> servers');
  });

  it('prints output lines', () => {
    expect(render(<LogEntry item={{ kind: 'lines', lines: ['Map epoch 3: 2 servers, 2 up', 'Server 0 s1'] }} />).lastFrame()).toBe('Map epoch 3: 2 servers, 2 up\nServer 0 s1');
  });

  it('prints an error as one line', () => {
    expect(render(<LogEntry item={{ kind: 'error', message: 'unknown command "x": type help for the list' }} />).lastFrame()).toBe('✗ error: unknown command "x": type help for the list');
  });

  it('draws a plan', () => {
    const frame = render(<LogEntry item={{ kind: 'plan', plan: PLAN, heading: 'Draining s1 would make these moves:' }} />).lastFrame()!;
    expect(frame.split('\n')[0]).toBe('Draining s1 would make these moves:');
    expect(frame).toContain('The new shares will be:');
  });

  it('draws an operation\'s result: the moves, the total bar and a summary', () => {
    const frame = render(
      <LogEntry item={{ kind: 'moves', title: 'Rebalance op-1', moves: [moveOf({ state: 'cleaned' })], total: true, summary: 'Rebalance op-1: 1 moves committed, 0 aborted, 977KB moved.' }} />,
    ).lastFrame()!;
    const lines = frame.split('\n');
    expect(lines[0]).toBe('Rebalance op-1');
    expect(lines[1]).toMatch(/^#1\s+s1 -> s3\s+█{20} 100%.*done$/);
    expect(lines[2]).toMatch(/^Total\s+1 moves\s+█{20} 100%.*1\/1 done$/);
    expect(lines[3]).toBe('Rebalance op-1: 1 moves committed, 0 aborted, 977KB moved.');
    expect(render(<LogEntry item={{ kind: 'moves', title: 'Moves in flight:', moves: [] }} />).lastFrame()).toBe('Moves in flight:\nNo moves.');
  });
});
