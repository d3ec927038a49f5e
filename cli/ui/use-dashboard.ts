/**
 * Polls the master for the dashboard every `intervalMs` (one call at a time)
 * while enabled. A failed poll keeps the last snapshot and reports why.
 * Each poll's replica groups are compared with the previous poll's, and what
 * changed (failovers, re-replication) is told to `onReplicaEvents`.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import { replicaEvents, type Snapshot } from './model.js';
import { describeError, type AdminApi } from './session.js';

export interface DashboardState {
  snapshot?: Snapshot;
  error?: string;
  /** When the state last changed: the time ages are counted from. */
  now: number;
  /** Polls now instead of at the next tick. */
  refresh: () => void;
}

/** Told the lines of what changed in the replica groups since the last poll, and when the poll answered. */
export type ReplicaEventsListener = (lines: string[], at: number) => void;

export function useDashboard(api: AdminApi, enabled: boolean, intervalMs = 1500, onReplicaEvents?: ReplicaEventsListener): DashboardState {
  const [state, setState] = useState<{ snapshot?: Snapshot; error?: string; now: number }>({ now: Date.now() });
  const kick = useRef<() => void>(() => {});
  const listener = useRef(onReplicaEvents);
  listener.current = onReplicaEvents;
  // Kept across reconnections: what changed while disconnected is told at the first poll back.
  const previous = useRef<Snapshot | undefined>(undefined);
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
        if (!stopped) {
          const before = previous.current;
          previous.current = snapshot;
          setState({ snapshot, now: Date.now() });
          const lines = before ? replicaEvents(before.ranges, snapshot.ranges) : [];
          if (lines.length) listener.current?.(lines, snapshot.at);
        }
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
