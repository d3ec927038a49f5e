import { describe, expect, it } from '@jest/globals';
import { render } from 'ink-testing-library';
import { Prompt } from './Prompt.js';

describe('Prompt', () => {
  it('reads like the seed: Manager(3 servers)> and what was typed', () => {
    expect(render(<Prompt label="Manager(3 servers)>" value="serv" />).lastFrame()).toBe('Manager(3 servers)> serv');
  });

  it('masks a password', () => {
    expect(render(<Prompt label="Password for ops@m:7000:" value="hunter2" mask />).lastFrame()).toBe('Password for ops@m:7000: *******');
  });

  it('lists completion candidates and a notice under the line', () => {
    const frame = render(<Prompt label="Manager(3 servers)>" value="re" options={['rebalance', 'remserver', 'recover']} notice="Press Ctrl-C again (or type exit) to leave." />).lastFrame()!;
    expect(frame.split('\n')).toEqual(['Manager(3 servers)> re', 'rebalance  remserver  recover', 'Press Ctrl-C again (or type exit) to leave.']);
  });
});
