import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { percentOf, ProgressBar } from './ProgressBar.js';

describe('ProgressBar', () => {
  it('draws 0%: an empty bar', () => {
    expect(render(<ProgressBar fraction={0} width={10} />).lastFrame()).toBe('░░░░░░░░░░   0%');
  });

  it('draws 50%: half full', () => {
    expect(render(<ProgressBar fraction={0.5} width={10} />).lastFrame()).toBe('█████░░░░░  50%');
  });

  it('draws 100%: full', () => {
    expect(render(<ProgressBar fraction={1} width={10} />).lastFrame()).toBe('██████████ 100%');
  });

  it('never shows 100% or a full bar before the end, and clamps nonsense', () => {
    expect(render(<ProgressBar fraction={0.999} width={10} />).lastFrame()).toBe('█████████░  99%');
    expect(render(<ProgressBar fraction={7} width={4} />).lastFrame()).toBe('████ 100%');
    expect(render(<ProgressBar fraction={-1} width={4} />).lastFrame()).toBe('░░░░   0%');
    expect([percentOf(NaN), percentOf(0.505), percentOf(0.9999)]).toEqual([0, 50, 99]);
  });
});
