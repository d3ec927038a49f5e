/**
 * The prompt's line editor as a pure function of key events. A key event is
 * what Ink's useInput reports: one key (with flags such as `return` or `tab`)
 * or a whole chunk of text, as when a paste or a terminal multiplexer sends
 * `servers\r` in one read. Control characters inside a chunk act like the
 * keys they stand for, so that chunk submits `servers`.
 */

/** The subset of Ink's Key this editor reads. */
export interface KeyLike {
  return?: boolean;
  tab?: boolean;
  backspace?: boolean;
  delete?: boolean;
  upArrow?: boolean;
  downArrow?: boolean;
  leftArrow?: boolean;
  rightArrow?: boolean;
  escape?: boolean;
  ctrl?: boolean;
  meta?: boolean;
}

export interface LineState {
  value: string;
  /** Entries, oldest first. */
  history: string[];
  /** Position in history while walking it; history.length means the line being typed. */
  index: number;
  /** The line being typed, kept while walking the history. */
  draft: string;
  /** Candidates from the last Tab with several matches. */
  options: string[];
}

export type LineEvent = { type: 'submit'; line: string } | { type: 'interrupt'; hadText: boolean } | { type: 'eof' };

export interface LineEditorOptions {
  complete?: (value: string) => { value: string; options: string[] };
  /** False for secrets: submitted lines are not kept for Up/Down. */
  keepHistory?: boolean;
}

export function initialLine(history: string[] = []): LineState {
  return { value: '', history, index: history.length, draft: '', options: [] };
}

function edit(s: LineState, value: string): LineState {
  return { ...s, value, index: s.history.length, draft: value, options: [] };
}

function submit(s: LineState, events: LineEvent[], o: LineEditorOptions): LineState {
  events.push({ type: 'submit', line: s.value });
  const line = s.value.trim();
  const keep = o.keepHistory !== false && line !== '' && s.history[s.history.length - 1] !== line;
  const history = keep ? [...s.history, line] : s.history;
  return { value: '', history, index: history.length, draft: '', options: [] };
}

function tab(s: LineState, o: LineEditorOptions): LineState {
  if (!o.complete) return s;
  const c = o.complete(s.value);
  return { ...s, value: c.value, draft: c.value, index: s.history.length, options: c.options };
}

function backspace(s: LineState): LineState {
  return edit(s, [...s.value].slice(0, -1).join(''));
}

function deleteWord(s: LineState): LineState {
  return edit(s, s.value.replace(/\S*\s*$/, ''));
}

function walk(s: LineState, step: -1 | 1): LineState {
  const index = Math.max(0, Math.min(s.history.length, s.index + step));
  if (index === s.index) return s;
  const value = index === s.history.length ? s.draft : s.history[index]!;
  return { ...s, index, value, options: [] };
}

/** Applies one Ink key event; returns the new state and what the caller must act on. */
export function applyKey(s: LineState, input: string, key: KeyLike, o: LineEditorOptions = {}): { state: LineState; events: LineEvent[] } {
  const events: LineEvent[] = [];
  if (key.ctrl && input === 'c') {
    events.push({ type: 'interrupt', hadText: s.value.length > 0 });
    return { state: edit(s, ''), events };
  }
  if (key.ctrl && input === 'd') {
    if (s.value === '') events.push({ type: 'eof' });
    return { state: s, events };
  }
  if (key.ctrl && input === 'u') return { state: edit(s, ''), events };
  if (key.ctrl && input === 'w') return { state: deleteWord(s), events };
  if (key.return) return { state: submit(s, events, o), events };
  if (key.tab) return { state: tab(s, o), events };
  if (key.backspace || key.delete) return { state: backspace(s), events };
  if (key.upArrow) return { state: walk(s, -1), events };
  if (key.downArrow) return { state: walk(s, 1), events };
  if (key.ctrl || key.escape || key.leftArrow || key.rightArrow) return { state: s, events };
  // Text, possibly a whole chunk with control characters inside.
  let state = s;
  let text = '';
  const flush = () => {
    if (text) state = edit(state, state.value + text);
    text = '';
  };
  let prev = '';
  for (const ch of input) {
    const crlf = prev === '\r' && ch === '\n';
    prev = ch;
    if (crlf) continue;
    if (ch === '\r' || ch === '\n') {
      flush();
      state = submit(state, events, o);
    } else if (ch === '\t') {
      flush();
      state = tab(state, o);
    } else if (ch === '\x7f' || ch === '\b') {
      flush();
      state = backspace(state);
    } else if (ch === '\x15') {
      text = '';
      state = edit(state, '');
    } else if (ch === '\x17') {
      flush();
      state = deleteWord(state);
    } else if (ch === '\x03') {
      flush();
      events.push({ type: 'interrupt', hadText: state.value.length > 0 });
      state = edit(state, '');
    } else if (ch >= ' ') {
      text += ch;
    }
  }
  flush();
  return { state, events };
}
