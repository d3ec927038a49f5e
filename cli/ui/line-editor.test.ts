import { describe, expect, it } from '@jest/globals';
import { complete } from './commands.js';
import { applyKey, initialLine, type KeyLike, type LineEvent, type LineState } from './line-editor.js';

/** Feeds events in order, collecting what the editor asks for. */
function feed(s: LineState, ...steps: Array<string | [string, KeyLike]>): { state: LineState; events: LineEvent[] } {
  const events: LineEvent[] = [];
  for (const step of steps) {
    const [input, key] = typeof step === 'string' ? [step, {}] : step;
    const r = applyKey(s, input, key, { complete: (v) => complete(v) });
    s = r.state;
    events.push(...r.events);
  }
  return { state: s, events };
}

describe('line editor', () => {
  it('submits a line that arrives in one chunk with its carriage return', () => {
    const { state, events } = feed(initialLine(), 'servers\r');
    expect(events).toEqual([{ type: 'submit', line: 'servers' }]);
    expect(state.value).toBe('');
    expect(state.history).toEqual(['servers']);
  });

  it('submits each line of a pasted chunk in order (CRLF counts once)', () => {
    expect(feed(initialLine(), 'servers\r\nranges\rpl').events).toEqual([
      { type: 'submit', line: 'servers' },
      { type: 'submit', line: 'ranges' },
    ]);
  });

  it('handles keys one at a time: text, backspace, return', () => {
    const { events } = feed(initialLine(), 's', 'e', 'x', ['', { backspace: true }], ['\x7f', { delete: true }], 'ervers', ['\r', { return: true }]);
    expect(events).toEqual([{ type: 'submit', line: 'servers' }]);
  });

  it('completes with Tab, as a key or inside a chunk', () => {
    expect(feed(initialLine(), 'reb', ['\t', { tab: true }]).state.value).toBe('rebalance ');
    expect(feed(initialLine(), 'ser\t\r').events).toEqual([{ type: 'submit', line: 'servers ' }]);
    expect(feed(initialLine(), 're\t').state.options).toEqual(['rebalance', 'remserver', 'recover']);
  });

  it('walks the history with Up and Down, keeping the draft', () => {
    let { state } = feed(initialLine(['servers', 'ranges']), 'pl');
    state = feed(state, ['', { upArrow: true }]).state;
    expect(state.value).toBe('ranges');
    state = feed(state, ['', { upArrow: true }], ['', { upArrow: true }]).state;
    expect(state.value).toBe('servers');
    state = feed(state, ['', { downArrow: true }], ['', { downArrow: true }]).state;
    expect(state.value).toBe('pl');
  });

  it('does not repeat the last history entry, and keeps none for secrets', () => {
    expect(feed(initialLine(['servers']), 'servers\r').state.history).toEqual(['servers']);
    expect(applyKey(initialLine(), 'hunter2\r', {}, { keepHistory: false }).state.history).toEqual([]);
  });

  it('reports Ctrl-C (clearing the line) and Ctrl-D on an empty line', () => {
    expect(feed(initialLine(), 'abc', ['c', { ctrl: true }])).toMatchObject({ state: { value: '' }, events: [{ type: 'interrupt', hadText: true }] });
    expect(feed(initialLine(), ['c', { ctrl: true }]).events).toEqual([{ type: 'interrupt', hadText: false }]);
    expect(feed(initialLine(), ['d', { ctrl: true }]).events).toEqual([{ type: 'eof' }]);
    expect(feed(initialLine(), 'x', ['d', { ctrl: true }]).events).toEqual([]);
    expect(feed(initialLine(), 'two words', ['w', { ctrl: true }]).state.value).toBe('two ');
    expect(feed(initialLine(), 'abc', ['u', { ctrl: true }]).state.value).toBe('');
    expect(feed(initialLine(), 'abc', '\x15ser', 'x y\x17').state.value).toBe('serx ');
    expect(feed(initialLine(), 'abc\x03').events).toEqual([{ type: 'interrupt', hadText: true }]);
  });

  it('ignores other control characters and arrow keys', () => {
    expect(feed(initialLine(), 'a\x01b', ['', { leftArrow: true }], ['', { escape: true }]).state.value).toBe('ab');
  });
});
