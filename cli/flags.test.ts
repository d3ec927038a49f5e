import { describe, expect, it } from '@jest/globals';
import { flagString } from './flags.js';

describe('flagString', () => {
  it('takes the last of a repeated flag, and nothing of a switch or an absent flag', () => {
    expect(flagString({ client: ['a', 'b'] }, 'client')).toBe('b');
    expect(flagString({ limit: '2' }, 'limit')).toBe('2');
    expect(flagString({ json: true }, 'json')).toBeUndefined();
    expect(flagString({}, 'json')).toBeUndefined();
  });
});
