import { describe, expect, it } from '@jest/globals';
import { CairnError } from '../../services/common/errors.js';
import { describeError } from './session.js';

describe('describeError', () => {
  it('gives one line with a hint, and flags a wrong password', () => {
    const d = describeError(new CairnError('UNAUTHENTICATED', 'login failed: unknown user or wrong password'), '127.0.0.1:7000');
    expect(d).toEqual({ line: 'login failed: unknown user or wrong password; hint: check --user/--password (or CAIRN_USER/CAIRN_PASSWORD)', auth: true });
  });

  it('says the master cannot be reached, keeping the cause', () => {
    const err = new CairnError('NOT_READY', 'No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: ');
    expect(describeError(err, '127.0.0.1:1')).toEqual({
      line: 'cannot reach the master at 127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1); hint: is the master running at 127.0.0.1:1? (--master HOST:PORT)',
      auth: false,
    });
  });

  it('passes a refused command through as one line, never a stack', () => {
    const d = describeError(new CairnError('PRECONDITION', 's1 still owns 2 ranges\n(4096 bytes)'), 'm:1');
    expect(d.line).toBe('s1 still owns 2 ranges (4096 bytes)');
    const e = new Error('boom');
    expect(describeError(e).line).toBe('boom');
    expect(describeError(e).line).not.toContain(' at ');
  });
});
