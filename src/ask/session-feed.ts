import { sql, type Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import type { ListenFn, Unlisten } from "../db/notifications.js";
import type { Logger } from "../log.js";

/** The channel the database triggers of migration 2026_11_22_010000 notify, with a session id as payload. */
export const SESSION_CHANNEL = "parley_session";

/** How long a subscription marks its session as watched without renewal. */
export const DEFAULT_WATCH_TTL_MS = 60_000;

/**
 * Wakes whoever waits on a session when it changes: a message was stored or
 * left STREAMING, an Ask claimed or released it, its queue moved, it was
 * deleted. The changes come from database triggers (NOTIFY, delivered at
 * commit), so every replica on the same Postgres hears every change, with or
 * without Redis, and a subscriber that re-reads after a call sees the change.
 * A call says "look again", never what changed.
 *
 * The triggers notify only for sessions marked as watched
 * (`sessions.watch_expire_time` ahead): a NOTIFY serializes the commits of all
 * notifying transactions, so the database does not send one for every message
 * of every session. subscribe marks the session before it resolves, and the
 * feed renews the mark of every session it has subscribers for.
 */
export interface SessionFeed {
  /**
   * Calls onChange after each change of the session (and after a reconnect,
   * when changes may have been missed). Resolves, with the unsubscribe, once
   * the session is marked as watched: changes committed after that are
   * notified; read the session after it to see the ones before.
   */
  subscribe(tenantId: string, sessionId: string, onChange: () => void): Promise<() => void>;
  /** Stops listening and renewing; subscribers are woken one last time. */
  close(): Promise<void>;
}

export interface SessionFeedOptions {
  readonly db: Kysely<Database>;
  readonly log: Logger;
  /** How long a mark lasts without renewal (renewed every third of it). Default 60 s. */
  readonly watchTtlMs?: number;
}

/** Sets the watch mark of the tenants' sessions to now + ttl (never shortening one); other tenants' sessions are left alone. */
async function markWatched(db: Kysely<Database>, sessions: readonly { tenantId: string; sessionId: string }[], ttlMs: number): Promise<void> {
  if (sessions.length === 0) return;
  await sql`
    update sessions s
    set watch_expire_time = greatest(s.watch_expire_time, now() + ${`${ttlMs} milliseconds`}::interval)
    from unnest(${sql.val(sessions.map((x) => x.sessionId))}::uuid[], ${sql.val(sessions.map((x) => x.tenantId))}::uuid[]) as w(id, tenant_id)
    where s.id = w.id and s.tenant_id = w.tenant_id`.execute(db);
}

/** Creates the feed on a database's LISTEN; resolves once listening (or trying to, while the database is down). */
export async function createSessionFeed(listen: ListenFn, options: SessionFeedOptions): Promise<SessionFeed> {
  const { db, log } = options;
  const ttlMs = options.watchTtlMs ?? DEFAULT_WATCH_TTL_MS;
  const subscribers = new Map<string, Set<() => void>>();
  /** The marks to renew: subscriptions per (tenant, session). */
  const marks = new Map<string, { tenantId: string; sessionId: string; count: number }>();
  const call = (fns: Iterable<() => void>) => {
    for (const fn of [...fns]) {
      try {
        fn();
      } catch (err) {
        log.error({ err }, "a session feed subscriber threw");
      }
    }
  };
  const wakeAll = () => {
    for (const set of subscribers.values()) call(set);
  };
  let unlisten: Unlisten | undefined = await listen(
    SESSION_CHANNEL,
    (sessionId) => {
      const set = subscribers.get(sessionId);
      if (set) call(set);
    },
    wakeAll,
  );

  // One statement a tick renews the marks of all sessions with subscribers here.
  let renewing: Promise<void> | undefined;
  const renew = async () => {
    try {
      await markWatched(db, [...marks.values()], ttlMs);
    } catch (err) {
      // Marks that lapse meanwhile only cost wake-ups: subscribers re-check on their own timers.
      log.warn({ err, sessions: marks.size }, "renewing the watch marks of sessions failed; retrying on the next tick");
    }
  };
  const timer = setInterval(() => {
    if (renewing || marks.size === 0) return;
    renewing = renew().finally(() => (renewing = undefined));
  }, Math.max(Math.floor(ttlMs / 3), 50));
  timer.unref();

  return {
    async subscribe(tenantId, sessionId, onChange) {
      let set = subscribers.get(sessionId);
      if (!set) subscribers.set(sessionId, (set = new Set()));
      set.add(onChange);
      // Marked as the caller's tenant's session: another tenant's id marks nothing (its caller gets NOT_FOUND).
      const key = `${tenantId}/${sessionId}`;
      const mark = marks.get(key) ?? { tenantId, sessionId, count: 0 };
      mark.count++;
      marks.set(key, mark);
      let subscribed = true;
      const unsubscribe = () => {
        if (!subscribed) return;
        subscribed = false;
        if (--mark.count === 0) marks.delete(key);
        const s = subscribers.get(sessionId);
        if (!s) return;
        s.delete(onChange);
        if (s.size === 0) subscribers.delete(sessionId);
      };
      try {
        await markWatched(db, [{ tenantId, sessionId }], ttlMs);
      } catch (err) {
        unsubscribe();
        throw err;
      }
      return unsubscribe;
    },
    async close() {
      clearInterval(timer);
      await renewing;
      const u = unlisten;
      unlisten = undefined;
      await u?.();
      wakeAll();
    },
  };
}
