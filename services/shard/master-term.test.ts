import { describe, expect, it } from '@jest/globals';
import type { Claims } from '../common/auth.js';
import { CairnError } from '../common/errors.js';
import { MasterTermFence } from './master-term.js';

const claims = (term?: string): Claims => ({ sub: 'master', role: 'server', iat: 0, exp: 1, cid: 'c-1', ...(term !== undefined ? { term } : {}) });

describe('a shard fences master calls by term', () => {
  it('takes equal or higher terms and refuses lower ones, naming the term it has seen', () => {
    const fence = new MasterTermFence({ info: () => undefined });
    fence.check(claims('7'), 'PushMap');
    fence.check(claims('7'), 'PushMap');
    fence.check(claims('12'), 'PullRange');
    expect(fence.highestTerm).toBe('12');
    let err: unknown;
    try {
      fence.check(claims('7'), 'DropRange');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).code).toBe('PRECONDITION');
    expect((err as CairnError).details.reason).toBe('STALE_TERM');
    expect((err as CairnError).message).toContain('has seen term 12');
  });

  it('compares terms as numbers, not text', () => {
    const fence = new MasterTermFence({ info: () => undefined });
    fence.check(claims('10'), 'PushMap');
    expect(() => fence.check(claims('9'), 'PushMap')).toThrow('has seen term 10');
  });

  it('lets calls with no term through (peer shards)', () => {
    const fence = new MasterTermFence({ info: () => undefined });
    fence.check(claims('5'), 'PushMap');
    fence.check(claims(), 'TransferRange');
    expect(fence.highestTerm).toBe('5');
  });
});
