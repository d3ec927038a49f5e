/**
 * A line of input at a prompt, over Ink's useInput and the pure editor in
 * line-editor.ts. The editor state lives in a ref, so several key events in
 * one tick (a pasted chunk) see each other's effect; a counter re-renders.
 */
import { useInput } from 'ink';
import { useCallback, useRef, useState } from 'react';
import { applyKey, initialLine, type LineEvent, type LineState } from './line-editor.js';

export interface LineInputOptions {
  /** Only an active input reads keys. */
  active: boolean;
  /** Earlier entries, oldest first, for Up/Down. */
  history?: string[];
  complete?: (value: string) => { value: string; options: string[] };
  /** False for secrets: nothing typed is kept for Up/Down. */
  keepHistory?: boolean;
  onEvent: (e: LineEvent) => void;
}

export interface LineInput {
  value: string;
  options: string[];
}

export function useLineInput({ active, history, complete, keepHistory, onEvent }: LineInputOptions): LineInput {
  const state = useRef<LineState>(initialLine(history ?? []));
  const [, setTick] = useState(0);
  const handler = useCallback(
    (input: string, key: Parameters<Parameters<typeof useInput>[0]>[1]) => {
      const r = applyKey(state.current, input, key, { complete, keepHistory });
      const changed = r.state !== state.current;
      state.current = r.state;
      if (changed) setTick((t) => t + 1);
      for (const e of r.events) onEvent(e);
    },
    [complete, keepHistory, onEvent],
  );
  useInput(handler, { isActive: active });
  return { value: state.current.value, options: state.current.options };
}
