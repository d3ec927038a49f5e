import { describe, expect, it } from '@jest/globals';
import { CairnError } from '../common/errors.js';
import { controlPlaneStatus, masterLine, masterView } from './master-status.js';

const leader = masterView('a:7000', { leading: true, leaderAddress: 'a:7000', term: '42', why: '' });
const standby = masterView('b:7000', { leading: false, leaderAddress: 'a:7000', term: '', why: 'standby: a:7000 leads with term 42' });
const cutOff = masterView('a:7000', { leading: true, leaderAddress: 'a:7000', term: '42', why: 'etcd does not answer (no answer within 2000 ms): the map cannot change until it does' });
const gone = masterView('c:7000', new CairnError('UNREACHABLE', 'nothing answered at c:7000 (connection refused)'));

describe('how an operator reads the masters', () => {
  it('a leader, a standby naming it, and an unreachable master keep their why', () => {
    expect([leader.status, standby.status, gone.status]).toEqual(['leader', 'standby', 'unreachable']);
    expect(masterLine(standby)).toBe('b:7000  standby: a:7000 leads with term 42');
    expect(masterLine(leader)).toBe('a:7000  leader (term 42)');
    expect(masterLine(gone)).toBe('c:7000  unreachable: nothing answered at c:7000 (connection refused)');
  });

  it('the control plane serves only while a master leads and can change the map', () => {
    expect(controlPlaneStatus([gone, standby, leader])).toBe('SERVING');
    // A leader cut off from etcd still leads on paper, but the map cannot change.
    expect(controlPlaneStatus([cutOff, standby])).toBe('NOT_SERVING');
    expect(controlPlaneStatus([standby])).toBe('NOT_SERVING');
    expect(controlPlaneStatus([gone])).toBe('UNREACHABLE');
  });
});
