import { describe, expect, it } from '@jest/globals';
import { CairnError } from './errors.js';
import { MasterAddresses, masterList } from './masters.js';

describe('following the leading master', () => {
  it('reads a list from text or a list, without blanks or duplicates', () => {
    expect(masterList(' a:1, b:2,,a:1 ')).toEqual(['a:1', 'b:2']);
    expect(masterList(['a:1', 'b:2'])).toEqual(['a:1', 'b:2']);
    expect(() => new MasterAddresses('')).toThrow('expected host:port');
  });

  it('goes to the leader a standby names, even one not in the list', () => {
    const m = new MasterAddresses('a:1,b:2');
    expect(m.follow(new CairnError('NOT_LEADER', 'standby', { leaderAddress: 'b:2' }))).toBe(true);
    expect(m.current).toBe('b:2');
    expect(m.follow(new CairnError('NOT_LEADER', 'standby', { leaderAddress: 'c:3' }))).toBe(true);
    expect(m.current).toBe('c:3');
    expect(m.all).toEqual(['a:1', 'b:2', 'c:3']);
  });

  it('moves round the list when a master does not answer or knows no leader', () => {
    const m = new MasterAddresses('a:1,b:2');
    expect(m.follow(new CairnError('UNREACHABLE', 'down'))).toBe(true);
    expect(m.current).toBe('b:2');
    expect(m.follow(new CairnError('NOT_LEADER', 'election under way'))).toBe(true);
    expect(m.current).toBe('a:1');
  });

  it('stays put on other errors, and with one master', () => {
    const m = new MasterAddresses('a:1,b:2');
    expect(m.follow(new CairnError('INVALID_ARGUMENT', 'bad'))).toBe(false);
    expect(m.current).toBe('a:1');
    const one = new MasterAddresses('a:1');
    expect(one.follow(new CairnError('UNREACHABLE', 'down'))).toBe(false);
  });
});
