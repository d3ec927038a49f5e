/**
 * The manager commands as one flow that `cairn ctl` and the console both
 * run: the request (with its operation id, so that a retried start never
 * starts a second operation), the plan, the question, the start, and the
 * progress to the end; and every sentence they say about it. The frontends
 * only draw: ctl on stdout and stderr with exit codes, the console into its
 * Ink state (each through an `OperationUi`).
 *
 * Nothing changes before the operator's "yes": a plan is a dry run, and an
 * operation that is not confirmed is never started.
 */
import type { ReloadResponse } from '../proto/gen/cairn/v1/admin.js';
import { newOperationId } from '../services/client/client.js';
import { formatHash } from '../services/common/ranges.js';
import { CliError, EXIT } from './exit.js';
import { humanBytes } from './format.js';
import type { MoveView, OperationsApi, PlanView, Recovered, Removed } from './operations-api.js';
import { phaseName } from '../services/master/move-steps.js';

export type OperationKind = 'rebalance' | 'dropserver' | 'remserver';

export interface OperationRequest {
  kind: OperationKind;
  /** The shard to drain or remove (id or host:port). */
  server?: string;
  /** MB/s per move; undefined leaves the master's moveMaxMbps. */
  maxMbps?: number;
  /** Made once here: every retry of the start carries it. */
  operationId: string;
}

/** From a parsed command line: `server` is the first argument, `--max-mbps` the throttle. */
export function operationRequest(kind: OperationKind, args: string[], flags: Record<string, unknown>): OperationRequest {
  const v = flags['max-mbps'];
  let maxMbps: number | undefined;
  if (v !== undefined) {
    maxMbps = Number(v);
    if (typeof v !== 'string' || !(maxMbps >= 0)) throw new CliError(`--max-mbps: expected a number >= 0, got "${String(v)}"`, EXIT.BAD_ARGS);
  }
  return { kind, server: kind === 'rebalance' ? undefined : args[0], maxMbps, operationId: newOperationId() };
}

// ---------------------------------------------------------------------------
// What the commands say

const TITLES = { rebalance: 'Rebalance', dropserver: 'Drain' } as const;

export const TEXT = {
  balanced: 'The cluster is balanced: nothing to move.',
  movesHeading: 'The following moves will be made:',
  planMoves: (p: Pick<PlanView, 'movedBytes' | 'totalBytes' | 'minimumBytes'>) =>
    `Moves ${humanBytes(p.movedBytes)} of ${humanBytes(p.totalBytes)} (the least any balancing plan can move: ${humanBytes(p.minimumBytes)}).`,
  sharesHeading: (moves: number) => (moves ? 'The new shares will be:' : 'The shares stay:'),
  ownsNothing: (server: string) => `${server} owns no range: nothing to move.`,
  wouldDrain: (server: string) => `${server} still owns ranges; draining it ("dropserver ${server}") would make these moves:`,
  stillOwns: (server: string) => `remserver: ${server} still owns ranges (the moves above); drain it first with "dropserver ${server}"`,
  question(r: OperationRequest): string {
    if (r.kind === 'rebalance') return 'Proceed with re-sharding?';
    return r.kind === 'dropserver' ? `Drain ${r.server}?` : `Remove server ${r.server} from the cluster and stop it?`;
  },
  planning: (r: OperationRequest) => (r.server ? `planning the drain of ${r.server}` : 'planning'),
  cancelled: 'Cancelled: nothing was changed.',
  nothingStarted: 'Nothing to move.',
  started: (operationId: string) => `Started ${operationId}; following its moves (Ctrl-C leaves them running on the master).`,
  removed: (r: Removed) => `Removed ${r.shardId}${r.stopped ? '; its process is stopping' : '; it did not answer the stop request (stop it by hand)'}.`,
  detached: (operationId: string) => [
    `Stopped following ${operationId}: its moves keep running on the master.`,
    'The dashboard shows them under "Moves in flight" (here and on the next start); "moves" lists them.',
  ],
  followLost: '(the moves keep running on the master; "moves" shows them)',
  synced: (r: { synced: number; failed: unknown[] }, epoch: bigint | undefined) =>
    r.failed.length ? `Sync incomplete: ${r.synced} shards took map epoch ${epoch}.` : `Sync done: ${r.synced} shards hold map epoch ${epoch}.`,
  notSynced: (f: { shardId: string; error: string }) => `${f.shardId} did not answer: ${f.error}`,
  /** `rebalance` is how the frontend names that command: "cairn ctl rebalance" or "rebalance". */
  addServer: (address: string, approvalRequired: boolean, rebalance: string) =>
    approvalRequired
      ? `Approved ${address}: start the shard with --advertise ${address} and it will join at 0%; then run "${rebalance}".`
      : `Noted ${address}. This cluster does not require approval: any shard with the server credential joins at 0%.`,
};

/** A move's state in the operator's words, with its progress while it copies: `mv-1 s1 -> s3 copy 40%`. */
export function moveLine(m: MoveView): string {
  const pct = m.bytes > 0 ? Math.min(100, Math.round((m.copiedBytes * 100) / m.bytes)) : 100;
  return `${m.id} ${m.from} -> ${m.to} ${phaseName(m.state)}${m.state === 'copying' || m.state === 'catching_up' ? ` ${pct}%` : ''}${m.error ? `: ${m.error}` : ''}`;
}

export function recoverLines(r: Recovered): string[] {
  const m = r.move;
  return [
    `Move ${m.id}: ${m.from} -> ${m.to} [${formatHash(m.start)}, ${formatHash(m.end)}[`,
    ...m.history.map((h) => `  ${new Date(h.atMs).toISOString()} ${h.state}`),
    `Now ${m.state} (${phaseName(m.state)}): ${r.action}`,
  ];
}

export function reloadLines(r: ReloadResponse): string[] {
  const list = (what: string, users: string[]) => (users.length ? [`  ${what}: ${users.join(', ')}`] : []);
  return [
    `Reloaded the client list: ${r.users} user${r.users === 1 ? '' : 's'}.`,
    ...list('added', r.added),
    ...list('removed', r.removed),
    ...list('lowered', r.lowered),
    ...list('raised', r.raised),
    ...list('new password', r.passwordChanged),
    r.revoked.length ? `Tokens of ${r.revoked.join(', ')} no longer work on the master, and on every shard after its next heartbeat.` : 'No token was revoked.',
    ...(r.restartNeeded.length ? [`Changed, and taking effect only at a restart: ${r.restartNeeded.join(', ')}.`] : []),
  ];
}

// ---------------------------------------------------------------------------
// Following

export interface FollowUpdate {
  moves: MoveView[];
  /** One line per move whose phase changed since the last update (`moveLine`). */
  changed: string[];
}

export interface Followed {
  moves: MoveView[];
  /** The operator stopped following: the moves run on. */
  detached: boolean;
}

/** The stream of progress broke off; `cause` says why. The moves keep running on the master. */
export class FollowLostError extends Error {
  constructor(readonly cause: unknown) {
    super(`${(cause as Error)?.message ?? String(cause)} ${TEXT.followLost}`);
    this.name = 'FollowLostError';
  }
}

/**
 * Follows an operation until every move has ended (or its stream does),
 * telling `onUpdate` each snapshot. `stop()` ends it at once, leaving the
 * moves running on the master.
 */
export function followOperation(api: Pick<OperationsApi, 'watch'>, operationId: string, onUpdate: (u: FollowUpdate) => void): { done: Promise<Followed>; stop: () => void } {
  let stop = () => {};
  const stopped = new Promise<'stopped'>((resolve) => (stop = () => resolve('stopped')));
  const run = async (): Promise<Followed> => {
    const it = api.watch(operationId)[Symbol.asyncIterator]();
    const seen = new Map<string, string>();
    let moves: MoveView[] = [];
    try {
      for (;;) {
        const r = await Promise.race([it.next(), stopped]);
        if (r === 'stopped') {
          it.return?.()?.catch(() => {});
          return { moves, detached: true };
        }
        if (r.done) break;
        moves = r.value.moves;
        const changed = moves.filter((m) => seen.get(m.id) !== phaseName(m.state)).map((m) => (seen.set(m.id, phaseName(m.state)), moveLine(m)));
        onUpdate({ moves, changed });
        if (r.value.done) break;
      }
    } catch (err) {
      throw new FollowLostError(err);
    }
    return { moves, detached: false };
  };
  return { done: run(), stop };
}

export interface OperationResult {
  operationId: string;
  title: string;
  plan: PlanView;
  moves: MoveView[];
  committed: number;
  aborted: number;
  movedBytes: number;
  detached: boolean;
  /** `Rebalance op-1: 2 moves committed, 0 aborted, 1.9MB moved.`, and whether the stream ended early. */
  summary: string;
}

function result(kind: 'rebalance' | 'dropserver', operationId: string, plan: PlanView, f: Followed): OperationResult {
  const title = `${TITLES[kind]} ${operationId}`;
  const committed = f.moves.filter((m) => m.state === 'committed' || m.state === 'cleaned');
  const aborted = f.moves.filter((m) => m.state === 'aborted').length;
  const movedBytes = committed.reduce((n, m) => n + m.bytes, 0);
  const unfinished = f.moves.length - committed.length - aborted;
  const summary =
    `${title}: ${committed.length} moves committed, ${aborted} aborted, ${humanBytes(movedBytes)} moved.` +
    (unfinished && !f.detached ? ` The progress stream ended early: ${unfinished} still running on the master ("moves" shows them).` : '');
  return { operationId, title, plan, moves: f.moves, committed: committed.length, aborted, movedBytes, detached: f.detached, summary };
}

// ---------------------------------------------------------------------------
// The flow

/** What a frontend draws as the operation goes. */
export interface OperationUi {
  /**
   * remserver: plan the drain first and refuse when the shard still owns
   * ranges (the console), or let the master refuse with its own words (ctl).
   */
  previewRemoval: boolean;
  /** What is being waited for (`planning`, `starting the moves`). */
  busy(what: string): void;
  /** The plan, with what to say above its moves, or instead of them. */
  plan(plan: PlanView, text: { heading?: string; emptyText?: string }): void;
  /** Asks the question; true only for yes. */
  confirm(question: string): Promise<boolean>;
  /** Moves are running: `stop` stops following them. */
  following(o: { operationId: string; title: string; stop: () => void }): void;
  progress(u: FollowUpdate): void;
}

export type OperationOutcome =
  | { kind: 'nothing'; plan: PlanView; started: boolean }
  | { kind: 'cancelled' }
  | { kind: 'removed'; removed: Removed }
  | { kind: 'followed'; result: OperationResult };

/** Plan, confirm, start, follow. Throws CliError for a refusal; the frontend says it. */
export async function runOperation(api: OperationsApi, req: OperationRequest, ui: OperationUi): Promise<OperationOutcome> {
  if (req.kind !== 'remserver' || ui.previewRemoval) {
    ui.busy(TEXT.planning(req));
    const plan = await api.plan(req.server);
    if (req.kind === 'remserver') {
      ui.plan(plan, { emptyText: TEXT.ownsNothing(req.server!), heading: TEXT.wouldDrain(req.server!) });
      if (plan.moves.length) throw new CliError(TEXT.stillOwns(req.server!), EXIT.ERROR);
    } else {
      ui.plan(plan, { emptyText: req.server ? TEXT.ownsNothing(req.server) : TEXT.balanced });
      if (!plan.moves.length) return { kind: 'nothing', plan, started: false };
    }
  }
  if (!(await ui.confirm(TEXT.question(req)))) return { kind: 'cancelled' };
  if (req.kind === 'remserver') {
    ui.busy(`removing ${req.server}`);
    return { kind: 'removed', removed: await api.removeServer(req.server!, { operationId: req.operationId }) };
  }
  ui.busy('starting the moves');
  const started = await api.start(req.kind, { server: req.server, maxMbps: req.maxMbps, operationId: req.operationId });
  if (!started.operationId) return { kind: 'nothing', plan: started.plan, started: true };
  const f = followOperation(api, started.operationId, (u) => ui.progress(u));
  ui.following({ operationId: started.operationId, title: `${TITLES[req.kind]} ${started.operationId}`, stop: f.stop });
  return { kind: 'followed', result: result(req.kind, started.operationId, started.plan, await f.done) };
}
