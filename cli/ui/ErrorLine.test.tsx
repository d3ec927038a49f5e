import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { ErrorLine } from './ErrorLine.js';

describe('ErrorLine', () => {
  it('shows one readable line', () => {
    expect(render(<ErrorLine message="login failed: unknown user or wrong password" />).lastFrame()).toBe('✗ error: login failed: unknown user or wrong password');
  });

  it('folds a multi-line message into one line', () => {
    const frame = render(<ErrorLine message={'first\n  second\nthird'} />).lastFrame()!;
    expect(frame).toBe('✗ error: first second third');
    expect(frame.split('\n')).toHaveLength(1);
  });

  it('wraps a message wider than the terminal rather than losing its hint', () => {
    const message = `${'word '.repeat(30)}; hint: check --master`;
    const frame = render(<ErrorLine message={message} />).lastFrame()!;
    expect(frame.split('\n').length).toBeGreaterThan(1);
    expect(frame.replace(/\s+/g, ' ')).toBe(`✗ error: ${message.replace(/\s+/g, ' ')}`);
  });
});
