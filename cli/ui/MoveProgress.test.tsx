import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { moveOf } from './fake-admin-api.js';
import { MoveLine, MoveList, TotalLine } from './MoveProgress.js';

const squash = (s: string) => s.replace(/ +/g, ' ').trim();

describe('MoveLine', () => {
  it('shows the bar, bytes, rate, ETA and phase while copying', () => {
    const frame = render(<MoveLine move={moveOf({ copiedBytes: 500_000, bytesPerSec: 100_000 })} label="#1" barWidth={10} />).lastFrame()!;
    expect(squash(frame)).toBe('#1 s1 -> s3 █████░░░░░ 50% 488KB/977KB 98KB/s ETA 5s copy');
  });

  it('names the catch-up and cutover phases', () => {
    expect(render(<MoveLine move={moveOf({ state: 'catching_up', copiedBytes: 1_000_000 })} />).lastFrame()).toMatch(/99%.*catch-up$/);
    expect(render(<MoveLine move={moveOf({ state: 'fenced', copiedBytes: 1_000_000 })} />).lastFrame()).toMatch(/99%.*cutover$/);
  });

  it('shows a finished move as done at 100%, and an aborted one with its reason', () => {
    expect(squash(render(<MoveLine move={moveOf({ state: 'cleaned', copiedBytes: 1_800_000 })} barWidth={4} />).lastFrame()!)).toBe('mv-1 s1 -> s3 ████ 100% 977KB/977KB done');
    expect(render(<MoveLine move={moveOf({ state: 'aborted', copiedBytes: 10, error: 'destination down' })} barWidth={8} />).lastFrame()).toMatch(/aborted: destination down$/);
  });
});

describe('TotalLine and MoveList', () => {
  it('adds a total bar under numbered moves', () => {
    const moves = [moveOf({ state: 'cleaned' }), moveOf({ id: 'mv-2', copiedBytes: 0 })];
    const lines = render(<MoveList moves={moves} total numbered barWidth={10} />).lastFrame()!.split('\n').map(squash);
    expect(lines).toEqual([
      '#1 s1 -> s3 ██████████ 100% 977KB/977KB done',
      '#2 s1 -> s3 ░░░░░░░░░░ 0% 0B/977KB - ETA - copy',
      'Total 2 moves █████░░░░░ 50% 977KB/1.9MB - ETA - 1/2 done',
    ]);
  });

  it('shows the total at 100% when every move is done', () => {
    const frame = render(<TotalLine moves={[moveOf({ state: 'committed' }), moveOf({ id: 'b', state: 'cleaned' })]} barWidth={4} />).lastFrame()!;
    expect(squash(frame)).toBe('Total 2 moves ████ 100% 1.9MB/1.9MB 2/2 done');
  });

  it('counts the moves it has no room for', () => {
    const moves = Array.from({ length: 5 }, (_, i) => moveOf({ id: `mv-${i}` }));
    expect(render(<MoveList moves={moves} limit={2} />).lastFrame()).toContain('… and 3 more');
  });
});
