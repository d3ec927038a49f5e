/**
 * Polls the master for the dashboard every `intervalMs` (one call at a time)
 * while enabled. A failed poll keeps the last snapshot and reports why.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import type { Snapshot } from './model.js';
import { describeError, type AdminApi } from './session.js';

export interface DashboardState {
  snapshot?: Snapshot;
  error?: string;
  /** When the state last changed: the time ages are counted from. */
  now: number;
  /** Polls now instead of at the next tick. */
  refresh: () => void;
}

export function useDashboard(api: AdminApi, enabled: boolean, intervalMs = 1500): DashboardState {
  const [state, setState] = useState<{ snapshot?: Snapshot; error?: string; now: number }>({ now: Date.now() });
  const kick = useRef<() => void>(() => {});
  useEffect(() => {
    if (!enabled) return;
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let inFlight = false;
    let again = false;
    const poll = async () => {
      if (stopped) return;
      if (inFlight) {
        again = true;
        return;
      }
      inFlight = true;
      clearTimeout(timer);
      try {
        const snapshot = await api.snapshot();
        if (!stopped) setState({ snapshot, now: Date.now() });
      } catch (err) {
        if (!stopped) setState((s) => ({ ...s, error: describeError(err, api.master).line, now: Date.now() }));
      } finally {
        inFlight = false;
        if (!stopped) {
          if (again) {
            again = false;
            void poll();
          } else {
            timer = setTimeout(() => void poll(), intervalMs);
          }
        }
      }
    };
    kick.current = () => void poll();
    void poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
      kick.current = () => {};
    };
  }, [api, enabled, intervalMs]);
  const refresh = useCallback(() => kick.current(), []);
  return { ...state, refresh };
}
