import { describe, expect, it } from '@jest/globals';
import { COMMAND_NAMES, complete, helpLines, parseCommandLine } from './commands.js';

describe('parseCommandLine', () => {
  it('accepts every manager command', () => {
    expect(COMMAND_NAMES).toEqual(['servers', 'ranges', 'plan', 'rebalance', 'dropserver', 'remserver', 'addserver', 'sync', 'moves', 'recover', 'help', 'exit']);
    for (const line of ['servers', 'ranges', 'plan', 'rebalance', 'recover mv-1', 'addserver h:1', 'dropserver s1', 'remserver s1', 'sync', 'moves', 'exit', 'help']) {
      expect(parseCommandLine(line)).toMatchObject({ ok: true, command: { name: line.split(' ')[0] } });
    }
  });

  it('parses arguments and flags, and is lenient about case and spaces', () => {
    expect(parseCommandLine('  REBALANCE   --max-mbps 2 ')).toEqual({ ok: true, command: { name: 'rebalance', args: [], flags: { 'max-mbps': '2' } } });
    expect(parseCommandLine('moves --all')).toEqual({ ok: true, command: { name: 'moves', args: [], flags: { all: true } } });
    expect(parseCommandLine('quit')).toMatchObject({ ok: true, command: { name: 'exit' } });
    expect(parseCommandLine('   ')).toEqual({ ok: true, command: undefined });
  });

  it('explains an unknown command or a missing argument in one line', () => {
    expect(parseCommandLine('frobnicate')).toEqual({ ok: false, error: 'unknown command "frobnicate": type help for the list' });
    expect(parseCommandLine('recover')).toEqual({ ok: false, error: 'recover: missing argument; usage: recover <move-id>' });
    expect(parseCommandLine('plan --drain')).toEqual({ ok: false, error: 'plan: --drain needs a value' });
  });

  it('refuses a flag the command does not take, suggesting the nearest (issue 12: never ignored)', () => {
    expect(parseCommandLine('rebalance --max-mbs 5')).toEqual({ ok: false, error: 'rebalance: unknown flag --max-mbs (did you mean --max-mbps?); usage: rebalance [--max-mbps X]' });
    expect(parseCommandLine('servers --verbose yes')).toEqual({ ok: false, error: 'servers: unknown flag --verbose; usage: servers' });
    expect(parseCommandLine('dropserver s1 --max-mbps 1')).toMatchObject({ ok: true, command: { flags: { 'max-mbps': '1' } } });
  });

  it('has a help line for every command', () => {
    const help = helpLines().join('\n');
    for (const n of COMMAND_NAMES) expect(help).toContain(`  ${n}`);
  });
});

describe('complete', () => {
  it('completes a unique command name with a space', () => {
    expect(complete('ser')).toEqual({ value: 'servers ', options: [] });
    expect(complete('  reb')).toEqual({ value: '  rebalance ', options: [] });
  });

  it('extends to the common prefix and lists the candidates', () => {
    expect(complete('re')).toEqual({ value: 're', options: ['rebalance', 'remserver', 'recover'] });
    expect(complete('rem')).toEqual({ value: 'remserver ', options: [] });
    expect(complete('')).toEqual({ value: '', options: COMMAND_NAMES });
  });

  it('completes shard ids after dropserver and remserver, and nothing else', () => {
    expect(complete('dropserver s', ['s1', 's2'])).toEqual({ value: 'dropserver s', options: ['s1', 's2'] });
    expect(complete('remserver s2', ['s1', 's2'])).toEqual({ value: 'remserver s2 ', options: [] });
    expect(complete('servers x', ['s1'])).toEqual({ value: 'servers x', options: [] });
    expect(complete('zzz')).toEqual({ value: 'zzz', options: [] });
  });
});
