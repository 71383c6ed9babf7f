import type { ListenFn, Unlisten } from "../db/notifications.js";
import type { Logger } from "../log.js";

/** The channel the database triggers of migration 2026_11_21_204000 notify, with a session id as payload. */
export const SESSION_CHANNEL = "parley_session";

/**
 * Wakes whoever waits on a session when it changes: a message was stored or
 * left STREAMING, an Ask claimed or released it, its queue moved, it was
 * deleted. The changes come from database triggers (NOTIFY, delivered at
 * commit), so every replica on the same Postgres hears every change, with or
 * without Redis, and a subscriber that re-reads after a call sees the change.
 * A call says "look again", never what changed.
 */
export interface SessionFeed {
  /** Calls onChange after each change of the session (and after a reconnect, when changes may have been missed); returns the unsubscribe. */
  subscribe(sessionId: string, onChange: () => void): () => void;
  /** Stops listening; subscribers are woken one last time. */
  close(): Promise<void>;
}

/** Creates the feed on a database's LISTEN; resolves once listening (or trying to, while the database is down). */
export async function createSessionFeed(listen: ListenFn, log: Logger): Promise<SessionFeed> {
  const subscribers = new Map<string, Set<() => void>>();
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
  return {
    subscribe(sessionId, onChange) {
      let set = subscribers.get(sessionId);
      if (!set) subscribers.set(sessionId, (set = new Set()));
      set.add(onChange);
      return () => {
        const s = subscribers.get(sessionId);
        if (!s) return;
        s.delete(onChange);
        if (s.size === 0) subscribers.delete(sessionId);
      };
    },
    async close() {
      const u = unlisten;
      unlisten = undefined;
      await u?.();
      wakeAll();
    },
  };
}
