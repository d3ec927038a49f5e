/**
 * The cluster map the client routes by: fetched from the master when a call
 * finds it stale (WRONG_SHARD, UNREACHABLE), or kept fresh by WatchMap when
 * the client was connected with `watch`.
 */
import type { ClientReadableStream } from '@grpc/grpc-js';
import type { WatchMapResponse } from '../../proto/gen/cairn/v1/master.js';
import { fromServiceError, type CairnError } from '../common/errors.js';
import { call, metadataFor } from '../common/grpc.js';
import { EMPTY_MAP, mapError, mapFromProto, type ClusterMap } from '../common/map.js';
import { backoffMs } from './retry.js';
import type { Session } from './session.js';

export class MapCache {
  /** Read on every call's send path: a plain field, not a getter. */
  current: ClusterMap = EMPTY_MAP;
  private refreshing: Promise<void> | undefined;
  private watchStream: ClientReadableStream<WatchMapResponse> | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private watchFailures = 0;

  constructor(private readonly session: Session) {}

  /** Installs a map unless it is older than ours. An equal epoch replaces ours (it may have been set by hand). */
  private install(next: ClusterMap): void {
    if (next.epoch === 0n || next.epoch < this.current.epoch) return;
    if (mapError(next)) return; // never route by a map that does not tile
    this.current = next;
  }

  /** Fetches the map from the master; concurrent callers share one GetMap. */
  refresh(deadline: number): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        const s = this.session;
        const until = Math.min(deadline, Date.now() + s.timeoutMs);
        const res = await s.withToken(until, (token) => s.toMaster(() => call(s.master, s.master.getMap, {}, { token, deadline: until })));
        this.install(mapFromProto(res.map));
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  /**
   * Keeps the map fresh from WatchMap. A broken stream is reopened after a
   * backoff; no stream error ever escapes (a client must not crash the
   * process that embeds it).
   */
  startWatch(): void {
    const s = this.session;
    if (s.closed) return;
    let over = false;
    const reopen = (err?: CairnError) => {
      if (over) return;
      over = true;
      this.watchStream = undefined;
      if (s.closed) return;
      if (err?.code === 'UNAUTHENTICATED') s.markStale();
      const delay = Math.max(50, backoffMs(this.watchFailures++));
      this.watchTimer = setTimeout(() => this.startWatch(), delay);
      this.watchTimer.unref();
    };
    void (async () => {
      let token = s.token;
      try {
        token = await s.authToken(Date.now() + s.timeoutMs);
      } catch {
        // Try with the token we have; the stream's own error will schedule a retry.
      }
      if (s.closed) return;
      const stream = s.master.watchMap({ minEpoch: this.current.epoch }, metadataFor(token));
      this.watchStream = stream;
      stream.on('data', (res: WatchMapResponse) => {
        this.watchFailures = 0;
        this.install(mapFromProto(res.map));
      });
      stream.on('error', (e) => {
        const err = fromServiceError(e);
        s.masters.follow(err); // a standby (or a master that stopped leading) names the leader: reopen there
        reopen(err);
      });
      stream.on('end', () => reopen());
    })().catch((e) => reopen(fromServiceError(e)));
  }

  /** Ends the watch for good; call after setting session.closed, so the cancel does not schedule a reopen. */
  stopWatch(): void {
    clearTimeout(this.watchTimer);
    this.watchStream?.cancel();
    this.watchStream = undefined;
  }
}
