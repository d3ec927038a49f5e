import { describe, expect, it } from '@jest/globals';
import { buildProgram } from '../commands.js';
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

describe('the same declarations as ctl (issue 12)', () => {
  /** What `cairn ctl <words>` says on stderr, parsed by the real command tree; nothing runs. */
  async function ctlRefusal(words: string[]): Promise<string> {
    const err: string[] = [];
    const never = async () => {
      throw new Error('ran');
    };
    const program = buildProgram({ out: () => {}, err: (l) => err.push(l), env: {} }, { master: never, shard: never, rebuild: never, migrateToEtcd: never, dev: never, ctl: never, admin: never, health: never, hashPassword: never }, () => {});
    await expect(program.parseAsync(['ctl', ...words], { from: 'user' })).rejects.toThrow();
    return err.join('\n');
  }

  it.each([
    ['rebalance --max-mbs 5', '--max-mbs', '--max-mbps'],
    ['dropserver s1 --max-mpbs 5', '--max-mpbs', '--max-mbps'],
    ['plan --drian s1', '--drian', '--drain'],
    ['moves --al', '--al', '--all'],
    ['servers --bogus-flag', '--bogus-flag', undefined],
  ])('%s: the flag and the suggestion ctl names', async (line, flag, near) => {
    const ctl = await ctlRefusal(line.split(' '));
    expect(ctl).toContain(`'${flag}'`);
    if (near) expect(ctl).toContain(`Did you mean ${near}?`);
    else expect(ctl).not.toContain('Did you mean');
    const r = parseCommandLine(line);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.error).toMatch(new RegExp(`^${line.split(' ')[0]}: unknown flag ${flag}${near ? ` \\(did you mean ${near}\\?\\)` : ''}; usage: `));
  });

  it('refuses --yes (the console asks) and extra arguments, and takes --help', () => {
    expect(parseCommandLine('rebalance --yes')).toEqual({ ok: false, error: 'rebalance: unknown flag --yes; usage: rebalance [--max-mbps X]' });
    expect(parseCommandLine('servers s1')).toEqual({ ok: false, error: 'servers: too many arguments; usage: servers' });
    expect(parseCommandLine('dropserver --help')).toEqual({ ok: true, command: { name: 'help', args: ['dropserver'], flags: {} } });
    expect(helpLines('dropserver')).toEqual(['usage: dropserver <id|host:port> [--max-mbps X]', '  drain every range of a shard to the others']);
  });
});
