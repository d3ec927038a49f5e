/**
 * ShardService.Batch: many data calls per message over one long-lived
 * bidirectional stream (TiKV's BatchCommands). A grpc-js unary call costs
 * ~100 µs of server CPU whatever it carries; on this stream a message of N
 * calls pays the HTTP/2 and grpc-js cost once.
 *
 * Each call is served by the very handler its unary RPC uses (service.ts
 * `handlers`): the same validation, routing (epochs, WRONG_SHARD with the
 * owner, forwarding for epoch 0), fences, replication acknowledgement and
 * store call. What the unary wrapper (grpc.ts `unary`) does once per call is
 * done here per call too: the call gate (NOT_READY while draining), the
 * token and role check, the metrics observer under the call's own method
 * name, and errors through the one table, as a per-call CallStatus instead
 * of trailers. One call's error never ends the stream.
 *
 * Answers are sent as they finish, gathered per turn of the event loop: the
 * answers that complete together (a group commit, a burst of reads) leave in
 * one message, and none waits for a slower one.
 */
import type * as grpc from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import type { BatchAnswer, BatchCall, BatchRequest, BatchResponse } from '../../proto/gen/cairn/v1/shard.js';
import { CairnError, toCallStatus } from '../common/errors.js';
import { authorizeCaller, meter, peerOf, reportError, UndecodableRequest, type HandlerEnv, type RpcContext } from '../common/grpc.js';
import { takeUnderBudget, type Sized } from '../common/message-budget.js';
import type { Handler } from './service.js';

/** The calls a Batch message may carry: BatchCall's oneof, by field, and the handler that serves each. */
export const BATCH_KINDS = ['writeRows', 'readRow', 'readRows', 'deleteRow', 'deleteCells', 'checkAndMutate', 'lockRow', 'extendLease', 'unlockRow'] as const;
export type BatchKind = (typeof BATCH_KINDS)[number];
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type BatchHandlers = Record<BatchKind, Handler<any, any>>;

/** What an OK answer costs on the wire beyond its cells, near enough to cut messages under the limit. */
const ANSWER_OVERHEAD_BYTES = 64;

/** The bytes an answer's cells take, to keep each BatchResponse under the message limit. */
function answerBytes(a: BatchAnswer): number {
  let n = ANSWER_OVERHEAD_BYTES;
  const cells = a.readRow?.cells ?? [];
  for (const c of cells) n += c.column.length + c.value.length + 16;
  for (const r of a.readRows?.rows ?? []) {
    n += r.row.length + 8;
    for (const c of r.cells) n += c.column.length + c.value.length + 16;
  }
  n += (a.writeRows?.timestampsUs.length ?? 0) * 10;
  return n;
}

export function batchService(
  env: HandlerEnv,
  maxMessageBytes: number,
  handlers: BatchHandlers,
  traffic: { messages: number; calls: number },
): grpc.handleBidiStreamingCall<BatchRequest, BatchResponse> {
  // Half the limit per message: room for the envelope, and a big answer never waits behind a full message for long.
  const messageBudget = Math.max(64 * 1024, Math.floor(maxMessageBytes / 2));
  return (stream) => {
    // Metered (its status and length observed) but never held in the call gate: it would hold a shutdown for
    // its whole life. Each call it carries is gated.
    const { done: streamDone } = meter(env, 'Batch');
    let cancelled = false;
    let ended = false; // the caller half-closed: end once every call is answered
    let draining = false; // the process is stopping: answer what is in flight, then end
    let inFlight = 0;
    // Each answer with its size, measured once when it is queued.
    let outbox: Sized<BatchAnswer>[] = [];
    let outboxBytes = 0;
    let flushScheduled = false;
    let blocked = false; // the transport is full: wait for 'drain' before writing more
    let finished = false;
    let stopDrainWatch: (() => void) | undefined;
    const peer = peerOf(stream);

    const finish = (err?: unknown) => {
      if (finished) return;
      finished = true;
      stopDrainWatch?.();
      if (err === undefined) {
        streamDone(Status.OK);
        if (!cancelled) stream.end();
        return;
      }
      const se = reportError(env, 'Batch', err);
      streamDone(se.code);
      if (!cancelled) stream.emit('error', se);
    };
    const maybeFinish = () => {
      if ((ended || draining) && inFlight === 0 && outbox.length === 0 && !blocked) finish();
    };

    const flush = () => {
      flushScheduled = false;
      while (!blocked && !cancelled && outbox.length > 0) {
        const { taken: answers, rest, bytes } = takeUnderBudget(outbox, messageBudget);
        outbox = rest;
        outboxBytes -= bytes;
        if (!stream.write({ answers })) {
          blocked = true;
          stream.once('drain', () => {
            blocked = false;
            flush();
          });
        }
      }
      if (cancelled) outbox = [];
      maybeFinish();
    };
    const answer = (a: BatchAnswer) => {
      if (cancelled || finished) return;
      const bytes = answerBytes(a);
      if (bytes > maxMessageBytes - 1024) {
        // Alone it would break the caller's stream (past its receive limit), and every call on it with it.
        a = {
          id: a.id,
          status: toCallStatus(new CairnError('LIMIT_EXCEEDED', `response: about ${bytes} bytes, over the ${maxMessageBytes}-byte message limit; read fewer cells per call`)),
        };
      }
      outbox.push({ item: a, bytes });
      outboxBytes += bytes;
      if (outboxBytes >= messageBudget) flush();
      else if (!flushScheduled) {
        flushScheduled = true;
        setImmediate(flush);
      }
    };

    /** Serves one call; `refusal` (a string field that is not UTF-8) refuses it after the checks a unary call passes first. */
    const serve = (c: BatchCall, refusal?: string) => {
      const kind = BATCH_KINDS.find((k) => c[k] !== undefined);
      const h = kind ? handlers[kind] : undefined;
      const method = h?.method ?? 'Batch';
      const { enter, done } = meter(env, method);
      inFlight += 1;
      let result: Promise<unknown>;
      try {
        enter();
        if (!kind || !h) throw new CairnError('INVALID_ARGUMENT', `calls[id ${c.id}]: no request set (one of ${BATCH_KINDS.join(', ')})`);
        const { claims, token } = authorizeCaller(env, stream, method, h.need);
        if (refusal !== undefined) throw new CairnError('INVALID_ARGUMENT', refusal);
        const deadline = c.timeoutMs > 0 ? Date.now() + c.timeoutMs : Infinity;
        const ctx: RpcContext = { method, claims, token, deadline, peer, cancelled: () => cancelled || Date.now() >= deadline };
        result = h.run(c[kind], ctx);
      } catch (err) {
        result = Promise.reject(err);
      }
      result.then(
        (res) => {
          done(Status.OK);
          inFlight -= 1;
          answer({ id: c.id, status: undefined, [kind!]: res });
        },
        (err) => {
          const se = reportError(env, method, err);
          done(se.code);
          inFlight -= 1;
          answer({ id: c.id, status: toCallStatus(err) });
        },
      );
    };

    // The stream is opened with the token its calls are made under: a caller without a valid one (or of another
    // cluster, or revoked) is refused at once, as each of its unary calls would be. Each call is checked again
    // (role, expiry, revocation) when it comes, so a token that lapses mid-stream fails only the calls after it.
    try {
      authorizeCaller(env, stream, 'Batch', 'r');
    } catch (err) {
      finish(err);
      return;
    }

    stream.on('data', (msg: BatchRequest | UndecodableRequest) => {
      // After the stream ended (draining), later calls go unanswered: the caller retries them elsewhere.
      if (finished) return;
      let refused: Map<number, string> | undefined;
      if (msg instanceof UndecodableRequest) {
        if (!msg.partial) {
          // Not a Batch message at all: which calls it held is unknown, so the stream ends (the caller fails what it sent).
          finish(new CairnError('INVALID_ARGUMENT', msg.message ?? `request: the bytes are not a valid Batch request message (${msg.reason})`));
          return;
        }
        // Strings that are not UTF-8: each call holding one is refused as its unary call would be
        // (`rows[1].row: is not valid UTF-8 (…)`, the path inside its request), the others are served.
        refused = new Map();
        for (const r of msg.partial.refusals) {
          const m = /^calls\[(\d+)\]\.(\w+)\.(.*)$/s.exec(r.message);
          const i = m ? Number(m[1]) : -1;
          if (!refused.has(i)) refused.set(i, m ? m[3]! : r.message);
        }
        msg = msg.partial.message as BatchRequest;
        if (refused.has(-1)) {
          finish(new CairnError('INVALID_ARGUMENT', refused.get(-1)!));
          return;
        }
      }
      traffic.messages += 1;
      traffic.calls += msg.calls.length;
      msg.calls.forEach((c, i) => serve(c, refused?.get(i)));
    });
    stream.on('end', () => {
      ended = true;
      maybeFinish();
    });
    stream.on('cancelled', () => {
      cancelled = true;
      finish(new CairnError('CANCELLED', 'the caller cancelled the stream'));
    });
    stream.on('error', () => {
      // The transport broke: nothing more can be sent; the handlers still finish their work.
      cancelled = true;
    });
    stopDrainWatch = env.gate?.onDrain?.(() => {
      // Answer what is in flight, then end: the caller opens a new stream (on another process, or after the restart).
      draining = true;
      maybeFinish();
    });
  };
}
