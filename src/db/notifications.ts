import pg from "pg";
import type { Logger } from "../log.js";

/** Stops listening. */
export type Unlisten = () => Promise<void>;

/** Receives NOTIFY payloads of one channel, delivered when the notifying transaction commits. */
export type ListenFn = (
  channel: string,
  onPayload: (payload: string) => void,
  /** Called after notifications may have been missed (the listening connection was lost and is back). */
  onResync: () => void,
) => Promise<Unlisten>;

const MIN_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5_000;

/**
 * LISTEN on a dedicated connection to a Postgres server (a pooled connection
 * cannot listen: it goes back to the pool). The connection is re-opened with
 * backoff whenever it drops; each reconnect calls onResync, since NOTIFYs sent
 * while it was down are lost. Never throws: a server that is down only delays
 * the first connection.
 */
export function createPgListen(url: string, log: Logger | undefined): ListenFn {
  return async (channel, onPayload, onResync) => {
    if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error(`invalid channel name "${channel}"`);
    let closed = false;
    let client: pg.Client | undefined;
    let timer: NodeJS.Timeout | undefined;
    let backoff = MIN_BACKOFF_MS;
    // Set when a connection failed: whatever was notified meanwhile is lost.
    let missed = false;

    const schedule = () => {
      if (closed || timer) return;
      timer = setTimeout(() => {
        timer = undefined;
        void connect();
      }, backoff);
      timer.unref();
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    };

    async function connect(): Promise<void> {
      const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000, keepAlive: true });
      client = c;
      let failed = false;
      const fail = (err?: unknown) => {
        if (failed) return;
        failed = true;
        missed = true;
        if (!closed) log?.warn({ err, channel }, "lost the LISTEN connection to Postgres; reconnecting");
        c.removeAllListeners("notification");
        c.end().catch(() => {});
        if (client === c) client = undefined;
        schedule();
      };
      c.on("error", fail);
      c.on("end", () => fail());
      c.on("notification", (n) => {
        if (n.channel === channel && n.payload !== undefined) onPayload(n.payload);
      });
      try {
        await c.connect();
        await c.query(`LISTEN ${channel}`);
      } catch (err) {
        fail(err);
        return;
      }
      if (closed) {
        await c.end().catch(() => {});
        return;
      }
      backoff = MIN_BACKOFF_MS;
      if (missed) {
        missed = false;
        onResync();
      }
    }

    await connect();
    return async () => {
      closed = true;
      clearTimeout(timer);
      const c = client;
      client = undefined;
      c?.removeAllListeners();
      c?.on("error", () => {});
      await c?.end().catch(() => {});
    };
  };
}
