/**
 * The console's root: wires the hooks (connection and commands, dashboard
 * polling) to the screen, and the dashboard's replica events (failovers,
 * re-replication) into the log. All drawing is AdminScreen's, from props.
 */
import { useApp } from 'ink';
import { useCallback, useRef } from 'react';
import { AdminScreen } from './AdminScreen.js';
import type { History } from './history.js';
import { capLines, clock } from './model.js';
import type { AdminApi } from './session.js';
import { useConsole } from './use-console.js';
import { useDashboard } from './use-dashboard.js';

export interface AdminAppProps {
  api: AdminApi;
  password?: string;
  history: History;
  /** Told the exit code when the operator leaves. */
  onExit?: (code: number) => void;
  /** Dashboard poll period (ms). */
  refreshMs?: number;
}

/** The most replica events logged per refresh: a shard going down may change every range it holds at once. */
export const EVENTS_PER_REFRESH = 12;

export function promptLabel(servers: number | undefined): string {
  return servers === undefined ? 'Manager>' : `Manager(${servers} server${servers === 1 ? '' : 's'})>`;
}

export function AdminApp({ api, password, history, onExit, refreshMs = 1500 }: AdminAppProps) {
  const app = useApp();
  const servers = useRef<string[] | undefined>(undefined);
  const refresh = useRef<() => void>(() => {});
  const exit = useCallback(
    (code: number) => {
      onExit?.(code);
      app.exit();
    },
    [app, onExit],
  );
  const con = useConsole({
    api,
    password,
    history,
    exit,
    promptLabel: () => promptLabel(servers.current?.length),
    serverIds: () => servers.current ?? [],
    refresh: () => refresh.current(),
  });
  // useDashboard holds the latest listener in a ref: a new function each render is fine.
  const logReplicaEvents = (lines: string[], at: number) => {
    const shown = capLines(lines, EVENTS_PER_REFRESH, (n) => `… and ${n} more replica changes (\`ranges\` shows every group)`);
    con.note({ kind: 'lines', lines: shown.map((l) => `${clock(at)} ${l}`) });
  };
  const dash = useDashboard(api, con.connected, refreshMs, logReplicaEvents);
  servers.current = dash.snapshot?.servers.map((s) => s.id);
  refresh.current = dash.refresh;
  return (
    <AdminScreen
      log={con.log}
      dashboard={{
        master: api.master,
        user: api.user,
        snapshot: dash.snapshot,
        now: dash.now,
        error: dash.error,
        followed: con.mode.kind === 'following' ? con.mode.operationId : undefined,
        waiting: con.connected || con.mode.kind === 'connecting' ? undefined : 'Not connected: the next command tries again.',
      }}
      mode={con.mode}
      prompt={{
        label: con.input.label ?? promptLabel(servers.current?.length),
        value: con.input.value,
        mask: con.input.mask,
        options: con.input.options,
        notice: con.notice,
      }}
    />
  );
}
