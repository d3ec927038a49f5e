import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { Confirm } from './Confirm.js';

describe('Confirm', () => {
  it('asks a y/n question and says that cancelling changes nothing', () => {
    const frame = render(<Confirm question="Proceed with re-sharding?" />).lastFrame()!;
    expect(frame.split('\n')).toEqual(['? Proceed with re-sharding? (y/n)', '  y starts it; n or Ctrl-C cancels, and nothing is changed.']);
  });
});
