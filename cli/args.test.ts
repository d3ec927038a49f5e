import { describe, expect, it } from '@jest/globals';
import fc from 'fast-check';
import { CONFIG_BOOLEAN_FLAGS, CONFIG_REPEATABLE_FLAGS, loadConfig } from '../services/common/config.js';
import { hashPassword } from '../services/common/auth.js';
import { ArgsError, flagString, parseArgs, type ArgSpec } from './args.js';

const SPEC: ArgSpec = {
  booleans: ['json', 'yes', 'verbose', 'sync'],
  repeatable: ['client'],
  short: { y: 'yes', v: 'verbose', n: 'limit', c: 'config' },
};

describe('parseArgs', () => {
  it('parses flags before and after subcommands and positionals', () => {
    expect(parseArgs(['--config', 'a.yaml', 'ctl', 'servers', '--json', 'extra', '--limit=5'], SPEC)).toEqual({
      positionals: ['ctl', 'servers', 'extra'],
      flags: { config: 'a.yaml', json: true, limit: '5' },
    });
  });

  it('supports --flag value and --flag=value, keeping kebab-case keys', () => {
    const { flags } = parseArgs(['--expect-shards', '3', '--listen=0.0.0.0:7000', '--data-dir=a=b'], SPEC);
    expect(flags).toEqual({ 'expect-shards': '3', listen: '0.0.0.0:7000', 'data-dir': 'a=b' });
  });

  it('allows empty values with =', () => {
    expect(parseArgs(['--prefix='], SPEC).flags).toEqual({ prefix: '' });
  });

  it('treats declared booleans as switches that never take the next token', () => {
    expect(parseArgs(['--json', 'servers'], SPEC)).toEqual({ positionals: ['servers'], flags: { json: true } });
    expect(parseArgs(['--yes=false', '--sync=true'], SPEC).flags).toEqual({ yes: false, sync: true });
    expect(() => parseArgs(['--json=maybe'], SPEC)).toThrow('--json');
  });

  it('negates with --no-x', () => {
    expect(parseArgs(['--verbose', '--no-verbose'], SPEC).flags).toEqual({ verbose: false });
    // Undeclared --no-x is still a switch: it must not swallow the next positional.
    expect(parseArgs(['--no-color', 'servers'], SPEC)).toEqual({ positionals: ['servers'], flags: { color: false } });
    expect(() => parseArgs(['--no-json=1'], SPEC)).toThrow('--no-json');
    // A boolean declared as no-x stays itself.
    expect(parseArgs(['--no-wait'], { booleans: ['no-wait'] }).flags).toEqual({ 'no-wait': true });
  });

  it('ends flags at --', () => {
    expect(parseArgs(['get', '--json', '--', '--not-a-flag', '-y', '--'], SPEC)).toEqual({
      positionals: ['get', '--not-a-flag', '-y', '--'],
      flags: { json: true },
    });
  });

  it('accepts negative numbers as values and as positionals', () => {
    expect(parseArgs(['--offset', '-5', '--ratio', '-0.25', '-7', '--exp', '-1e3'], SPEC)).toEqual({
      positionals: ['-7'],
      flags: { offset: '-5', ratio: '-0.25', exp: '-1e3' },
    });
  });

  it('accepts a value that starts with a dash but is not a flag', () => {
    expect(parseArgs(['--prefix', '-abc'], SPEC).flags).toEqual({ prefix: '-abc' });
    expect(parseArgs(['-'], SPEC).positionals).toEqual(['-']);
  });

  it('collects repeatable flags and keeps the last of others', () => {
    const { flags } = parseArgs(['--client', 'a', '--limit', '1', '--client=b', '--limit', '2'], SPEC);
    expect(flags).toEqual({ client: ['a', 'b'], limit: '2' });
    expect(parseArgs(['--client', 'only'], SPEC).flags).toEqual({ client: ['only'] });
    expect(flagString(flags, 'client')).toBe('b');
    expect(flagString(flags, 'limit')).toBe('2');
    expect(flagString({ json: true }, 'json')).toBeUndefined();
  });

  it('throws naming the flag when a value flag has no value', () => {
    expect(() => parseArgs(['servers', '--limit'], SPEC)).toThrow(ArgsError);
    expect(() => parseArgs(['servers', '--limit'], SPEC)).toThrow('--limit needs a value');
    expect(() => parseArgs(['--limit', '--json'], SPEC)).toThrow('--limit needs a value');
    expect(() => parseArgs(['--limit', '-y'], SPEC)).toThrow('--limit needs a value');
    expect(() => parseArgs(['--limit', '--'], SPEC)).toThrow('--limit needs a value');
    expect(() => parseArgs(['-n'], SPEC)).toThrow('-n (--limit) needs a value');
  });

  it('supports short flags, clusters of boolean ones and short values', () => {
    expect(parseArgs(['-yv', 'rebalance', '-n', '3', '-c=x.yaml'], SPEC)).toEqual({
      positionals: ['rebalance'],
      flags: { yes: true, verbose: true, limit: '3', config: 'x.yaml' },
    });
    expect(parseArgs(['-yn', '4'], SPEC).flags).toEqual({ yes: true, limit: '4' });
    expect(() => parseArgs(['-ny', '4'], SPEC)).toThrow('-n (--limit) needs a value');
    expect(() => parseArgs(['-z'], SPEC)).toThrow('unknown flag -z');
  });

  it('rejects a bare --=x', () => {
    expect(() => parseArgs(['--=x'], SPEC)).toThrow('malformed flag');
  });

  it('does not let __proto__ pollute anything', () => {
    const { flags } = parseArgs(['--__proto__', 'x'], SPEC);
    expect(Object.prototype.hasOwnProperty.call(flags, '__proto__')).toBe(true);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });

  it('keeps positionals in order, whatever flags are interleaved (property)', () => {
    const positional = fc.string({ minLength: 1 }).filter((s) => !s.startsWith('-'));
    const flag = fc.oneof(
      fc.constant(['--json']),
      fc.constant(['-y']),
      fc.constant(['--no-sync']),
      fc.tuple(fc.constantFrom('--limit', '--client', '--other-flag'), fc.string()).map(([f, v]) => [`${f}=${v}`]),
      fc.tuple(fc.constantFrom('--limit', '--client', '-n'), positional).map(([f, v]) => [f, v]),
    );
    const item = fc.oneof(
      positional.map((p) => ({ pos: p as string | undefined, toks: [p] })),
      flag.map((toks) => ({ pos: undefined as string | undefined, toks })),
    );
    fc.assert(
      fc.property(fc.array(item), fc.array(fc.string()), (items, tail) => {
        const argv = [...items.flatMap((it) => it.toks), '--', ...tail];
        const want = [...items.flatMap((it) => (it.pos === undefined ? [] : [it.pos])), ...tail];
        expect(parseArgs(argv, SPEC).positionals).toEqual(want);
      }),
    );
  });

  it('feeds loadConfig: config switches, negations and repeated clients', () => {
    const h = hashPassword('pw-for-args-test');
    const { positionals, flags } = parseArgs(
      ['master', '--verbose', '--listen', '0.0.0.0:7000', '--clients', `a:${h}:rw`, '--clients', `b:${h}:r`, '--no-require-approval'],
      { booleans: [...CONFIG_BOOLEAN_FLAGS], repeatable: [...CONFIG_REPEATABLE_FLAGS] },
    );
    expect(positionals).toEqual(['master']);
    const c = loadConfig('master', {
      flags: { ...flags, 'server-credential': 'a-long-enough-server-credential' },
      env: { CAIRN_REQUIRE_APPROVAL: 'true' },
      cwd: '/tmp',
    });
    expect(c.verbose).toBe(true);
    expect(c.listen).toBe('0.0.0.0:7000');
    expect(c.requireApproval).toBe(false);
    expect(c.clients.map((x) => `${x.user}:${x.role}`)).toEqual(['a:rw', 'b:r']);
  });
});
