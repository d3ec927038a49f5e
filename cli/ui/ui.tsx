/**
 * The one door between commands and Ink (as Shopify cli-kit's ui.tsx is):
 * commands call these functions and never import Ink or React themselves.
 */
import { render } from 'ink';
import type { ClientTls } from '../../services/common/grpc.js';
import { AdminApp } from './AdminApp.js';
import { openHistory } from './history.js';
import { ClientAdminApi, type AdminApi } from './session.js';

export interface AdminUiOptions {
  master: string;
  user: string;
  /** Asked for at the prompt when absent. */
  password?: string;
  timeoutMs?: number;
  tls?: ClientTls;
  historyFile: string;
  /** For tests: a fake Admin API instead of a real connection. */
  api?: AdminApi;
}

/** Runs `cairn admin` until the operator leaves; resolves to the exit code. */
export async function runAdminUi(o: AdminUiOptions): Promise<number> {
  const api = o.api ?? new ClientAdminApi({ master: o.master, user: o.user, timeoutMs: o.timeoutMs, tls: o.tls });
  let code = 0;
  const app = render(<AdminApp api={api} password={o.password} history={openHistory(o.historyFile)} onExit={(c) => (code = c)} />, {
    exitOnCtrlC: false,
  });
  try {
    await app.waitUntilExit();
  } finally {
    api.close();
  }
  return code;
}
