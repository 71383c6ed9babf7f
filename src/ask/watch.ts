import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import {
  WatchSessionResponseSchema,
  type AskEvent,
  type WatchSessionRequest,
  type WatchSessionResponse,
} from "../../gen/parley/v1/session_pb.js";
import { callerOf } from "../auth/caller.js";
import type { Database } from "../db/schema.js";
import { invalidArgument, notFound, ParleyError } from "../errors.js";
import { requireId } from "../ids.js";
import type { Logger } from "../log.js";
import { listMessages } from "../repos/messages.js";
import { findSession } from "../repos/sessions.js";
import { messageToProto } from "../services/converters.js";
import type { SessionFeed } from "./session-feed.js";

/** Messages read per query while catching up. */
const PAGE = 100;
/** A watcher looks again this often even when nothing woke it (notifications are the fast path, this the fallback). */
const RECHECK_MS = 15_000;

export interface SessionWatchDeps {
  readonly db: Kysely<Database>;
  readonly log: Logger;
  readonly feed: SessionFeed;
  /** The events of an Ask after afterSeq (replay, then live), as ResumeAsk streams them; the Ask belongs to the tenant. */
  readonly follow: (tenantId: string, askId: string, afterSeq: number, signal: AbortSignal) => AsyncIterable<AskEvent>;
}

/**
 * WatchSession: one cursor over a session. The cursor is the seq of the last
 * message delivered; every message with a seq up to it has been delivered
 * exactly once, in its final state (a message deleted before it was delivered
 * is skipped). Messages are delivered in seq order, each once, when it is
 * stored and no longer STREAMING; a STREAMING assistant message holds back
 * itself and every message after it until its Ask ends, so the cursor never
 * passes a message the client has not seen. Meanwhile the Ask's events arrive
 * as ask_event updates carrying the unchanged cursor: those are progress, not
 * messages, and an Ask that is running when a client (re)connects is replayed
 * from its first event so the client can rebuild the partial answer.
 * Reconnecting with the last cursor therefore delivers every message exactly
 * once. Later edits of a delivered message are not sent again.
 */
export function createSessionWatch(deps: SessionWatchDeps) {
  const { db, log, feed } = deps;

  return async function* watchSession(req: WatchSessionRequest, ctx: HandlerContext): AsyncGenerator<WatchSessionResponse> {
    const { tenantId } = callerOf(ctx);
    const sessionId = requireId("session_id", req.sessionId);
    if (req.afterSeq < 0n) throw invalidArgument("after_seq", "must not be negative", "OUT_OF_RANGE");
    const signal = ctx.signal;
    let cursor = req.afterSeq > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(req.afterSeq);

    // Subscribed before the first read: a change between a read and the wait still wakes the loop.
    let changed = false;
    let wake: (() => void) | undefined;
    const unsubscribe = await feed.subscribe(tenantId, sessionId, () => {
      changed = true;
      wake?.();
    });
    /** Asks whose events this stream has followed (each once per connection). */
    const followed = new Set<string>();
    const update = (u: WatchSessionResponse["update"]) => create(WatchSessionResponseSchema, { update: u, cursor: BigInt(cursor) });
    try {
      for (;;) {
        changed = false;
        const session = await findSession(db, tenantId, sessionId);
        // Unknown, another tenant's, or deleted while watched.
        if (!session) throw notFound("session", sessionId);

        for (let more = true; more; ) {
          const rows = await listMessages(db, tenantId, sessionId, { afterSeq: cursor, descending: false, limit: PAGE });
          more = rows.length === PAGE;
          for (const row of rows) {
            if (row.status === "streaming") {
              more = false;
              break;
            }
            cursor = row.seq;
            yield update({ case: "message", value: messageToProto(row) });
          }
        }

        const active = session.active_ask_id;
        if (active && !followed.has(active)) {
          followed.add(active);
          try {
            for await (const event of deps.follow(tenantId, active, 0, signal)) {
              yield update({ case: "askEvent", value: event });
            }
          } catch (err) {
            // An Ask this replica cannot follow (running elsewhere without a
            // shared event log, or gone): its messages still arrive when stored.
            if (!(err instanceof ParleyError) || (err.kind !== "unavailable" && err.kind !== "not_found")) throw err;
            log.debug({ err, askId: active, sessionId }, "WatchSession cannot follow the Ask's events");
          }
          continue;
        }
        if (signal.aborted) return;
        if (!changed) await sleep(RECHECK_MS, signal, (w) => (wake = w));
        wake = undefined;
        if (signal.aborted) return;
      }
    } finally {
      unsubscribe();
    }
  };
}

/** Waits ms, or until woken, or until the signal aborts. */
function sleep(ms: number, signal: AbortSignal, onWake: (wake: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    onWake(done);
  });
}
