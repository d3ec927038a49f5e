import { describe, expect, it } from '@jest/globals';
import { PassThrough } from 'node:stream';
import { CairnError } from './errors.js';
import { createLogger } from './log.js';

/** Collects what the logger writes and returns the lines once winston has flushed them. */
function sink(isTTY = false) {
  const stream = Object.assign(new PassThrough(), { isTTY });
  let text = '';
  stream.on('data', (c: Buffer) => (text += c.toString('utf8')));
  const lines = async (): Promise<string[]> => {
    await new Promise((r) => setImmediate(r));
    return text.split('\n').filter((l) => l !== '');
  };
  return { stream, lines };
}

describe('createLogger', () => {
  it('writes one JSON object per line with timestamp, level, component and message', async () => {
    const { stream, lines } = sink();
    const log = createLogger({ component: 'master', stream });
    log.info('listening', { address: '127.0.0.1:7000' });
    log.warn('shard down', { shard: 's2', epoch: 7n });
    const out = await lines();
    expect(out).toHaveLength(2);
    const [a, b] = out.map((l) => JSON.parse(l));
    expect(a).toEqual({ timestamp: expect.any(String), level: 'info', component: 'master', message: 'listening', address: '127.0.0.1:7000' });
    expect(new Date(a.timestamp).toString()).not.toBe('Invalid Date');
    expect(Object.keys(a).slice(0, 4)).toEqual(['timestamp', 'level', 'component', 'message']);
    expect(b).toMatchObject({ level: 'warn', component: 'master', message: 'shard down', shard: 's2', epoch: '7' });
  });

  it('respects the level', async () => {
    const { stream, lines } = sink();
    const log = createLogger({ component: 'shard', level: 'warn', stream });
    log.debug('no');
    log.info('no');
    log.warn('yes');
    log.error('yes too');
    expect((await lines()).map((l) => JSON.parse(l).message)).toEqual(['yes', 'yes too']);

    const dbg = sink();
    const d = createLogger({ component: 'shard', level: 'debug', stream: dbg.stream });
    d.debug('detail');
    expect(JSON.parse((await dbg.lines())[0]!)).toMatchObject({ level: 'debug', message: 'detail' });
  });

  it('rejects an unknown level', () => {
    expect(() => createLogger({ component: 'x', level: 'loud', stream: new PassThrough() })).toThrow(CairnError);
  });

  it('writes errors whole, as a field and as the message', async () => {
    const { stream, lines } = sink();
    const log = createLogger({ component: 'shard/transfer', stream });
    const err = new CairnError('FENCED', 'range fenced', { retryAfterMs: 50 });
    log.error('move failed', { err, move: 'm1' });
    log.error(new Error('boom'));
    const [a, b] = (await lines()).map((l) => JSON.parse(l));
    expect(a).toMatchObject({ level: 'error', component: 'shard/transfer', message: 'move failed', move: 'm1' });
    expect(a.err).toMatchObject({ name: 'CairnError', message: 'range fenced', code: 'FENCED', details: { retryAfterMs: 50 } });
    expect(a.err.stack).toContain('range fenced');
    expect(b).toMatchObject({ level: 'error', component: 'shard/transfer', message: 'boom', err: { name: 'Error', message: 'boom' } });
    expect(b.err.stack).toContain('boom');
  });

  it('survives cycles and buffers in fields', async () => {
    const { stream, lines } = sink();
    const log = createLogger({ component: 'x', stream });
    const cyc: Record<string, unknown> = { a: 1 };
    cyc.self = cyc;
    log.info('odd fields', { cyc, key: Buffer.from('abc') });
    const line = JSON.parse((await lines())[0]!);
    expect(line.cyc).toEqual({ a: 1, self: '[Circular]' });
    expect(line.key).toBe('<3 bytes>');
  });

  it('stays JSON with verbose when the stream is not a terminal', async () => {
    const { stream, lines } = sink(false);
    createLogger({ component: 'master', verbose: true, stream }).info('hello');
    expect(JSON.parse((await lines())[0]!)).toMatchObject({ component: 'master', message: 'hello' });
  });

  it('writes human-readable lines with verbose on a terminal', async () => {
    const { stream, lines } = sink(true);
    const log = createLogger({ component: 'master', verbose: true, stream });
    log.info('listening', { address: '127.0.0.1:7000' });
    log.error('failed', { err: new Error('boom') });
    const out = await lines();
    expect(() => JSON.parse(out[0]!)).toThrow();
    // eslint-disable-next-line no-control-regex
    const plain = out.map((l) => l.replace(/\u001b\[\d+m/g, ''));
    expect(plain[0]).toMatch(/^\d\d:\d\d:\d\d\.\d\d\d info \[master\] listening address=127\.0\.0\.1:7000$/);
    expect(plain[1]).toMatch(/error \[master\] failed$/);
    expect(plain[2]).toBe('Error: boom');
  });
});
