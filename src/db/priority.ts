import { AsyncLocalStorage } from "node:async_hooks";
import type pg from "pg";

const background = new AsyncLocalStorage<true>();

/**
 * Runs `fn` as background work: while the pool is busy, its statements take a
 * connection only after every waiting request's (or once they have waited
 * maxBackgroundWaitMs). For the bookkeeping nobody waits on to see a first
 * token: an Ask's outcome, lease renewals, sweeps, ingestion.
 */
export function inBackground<T>(fn: () => Promise<T>): Promise<T> {
  return background.run(true, fn);
}

/** A pool as Kysely's PostgresDialect uses it. */
export interface PrioritizedPool {
  readonly Client: typeof pg.Client;
  readonly options: object;
  connect(): Promise<pg.PoolClient>;
  end(): Promise<void>;
  /** Checkouts waiting for a connection, by kind (for tests and metrics). */
  waiting(): { foreground: number; background: number };
}

interface Waiter {
  readonly since: number;
  readonly grant: () => void;
  readonly fail: (err: Error) => void;
}

/**
 * Hands out `pool`'s connections (at most `size` at once, the pool's max) to
 * waiting requests before waiting background work. pg-pool serves its queue in
 * arrival order, so under load a request's statement (an Ask's claim, a read)
 * would wait behind the background statements queued before it; here a
 * background checkout still goes first once it has waited maxBackgroundWaitMs,
 * so a steady stream of requests cannot starve it.
 */
export function prioritizedPool(pool: pg.Pool, size: number, maxBackgroundWaitMs = 100): PrioritizedPool {
  let active = 0;
  let ended = false;
  const foreground: Waiter[] = [];
  const backgrounds: Waiter[] = [];

  const next = (): Waiter | undefined => {
    const oldBackground = backgrounds[0];
    if (oldBackground && (foreground.length === 0 || performance.now() - oldBackground.since >= maxBackgroundWaitMs)) {
      return backgrounds.shift();
    }
    return foreground.shift();
  };
  const free = () => {
    const w = next();
    if (w) w.grant();
    else active--;
  };
  const acquire = (): Promise<void> => {
    // pg-pool's own connect() then says the pool has ended.
    if (active < size || ended) {
      active++;
      return Promise.resolve();
    }
    return new Promise<void>((grant, fail) => {
      (background.getStore() ? backgrounds : foreground).push({ since: performance.now(), grant, fail });
    });
  };

  return {
    Client: (pool as unknown as { Client: typeof pg.Client }).Client,
    options: pool.options,
    async connect() {
      await acquire();
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (err) {
        free();
        throw err;
      }
      // pg-pool gives each checkout its own release function, which throws when called twice
      // (before the slot could be freed twice); this one also frees the slot.
      const release = client.release;
      client.release = (err?: Error | boolean) => {
        release.call(client, err);
        free();
      };
      return client;
    },
    async end() {
      // Nobody waits for a connection that will never come.
      ended = true;
      const err = new Error("the database pool has ended");
      for (const w of [...foreground.splice(0), ...backgrounds.splice(0)]) w.fail(err);
      await pool.end();
    },
    waiting: () => ({ foreground: foreground.length, background: backgrounds.length }),
  };
}
