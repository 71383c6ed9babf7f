import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Kysely, PGliteDialect, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { usePreparedStatements } from "./prepared.js";
import { prioritizedPool } from "./priority.js";
import { createPgListen, type ListenFn, type Unlisten } from "./notifications.js";
import type { Database } from "./schema.js";

export interface DatabaseOptions {
  /** postgres://… → pg Pool; memory:// → ephemeral PGlite; undefined → PGlite persisted under dataDir. */
  readonly url: string | undefined;
  readonly dataDir: string;
  readonly poolSize?: number;
  /** Hot statements as named prepared statements on Postgres (default true; false behind a pooler that cannot keep them). */
  readonly preparedStatements?: boolean;
}

export interface DatabaseHandle {
  readonly db: Kysely<Database>;
  /** "postgres" or "pglite". */
  readonly kind: "postgres" | "pglite";
  /** Resolves when the database answers a trivial query; rejects otherwise. */
  ping(signal?: AbortSignal): Promise<void>;
  /** LISTENs to a NOTIFY channel: a dedicated, self-healing connection on Postgres; PGlite's own listener in-process. */
  readonly listen: ListenFn;
  close(): Promise<void>;
}

/** Opens the database named by the options: a pg pool or an embedded PGlite. */
export async function openDatabase(options: DatabaseOptions): Promise<DatabaseHandle> {
  const url = options.url;
  if (url && /^postgres(ql)?:\/\//.test(url)) {
    const size = options.poolSize ?? 10;
    const pool = new pg.Pool({
      connectionString: url,
      max: size,
      connectionTimeoutMillis: 5_000,
      idleTimeoutMillis: 30_000,
    });
    // A broken connection must not crash the process. The pool's "error" covers idle clients;
    // a checked-out client (a query on the wire, a transaction between statements) emits
    // "error" on itself, with no listener of the pool's: the request it serves fails with the
    // error instead, and the pool drops the client when it comes back.
    pool.on("error", () => {});
    pool.on("connect", (client) => client.on("error", () => {}));
    if (options.preparedStatements ?? true) usePreparedStatements(pool);
    // Requests take the pool's free connections before background work (see priority.ts).
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: prioritizedPool(pool, size) }) });
    return handle(db, "postgres", createPgListen(url, undefined));
  }
  const { PGlite } = await import("@electric-sql/pglite");
  // pgvector ships inside PGlite; loading it lets the knowledge migration create the vector table.
  const { vector } = await import("@electric-sql/pglite/vector");
  let dataDir: string | undefined;
  if (!url) {
    mkdirSync(options.dataDir, { recursive: true });
    dataDir = join(options.dataDir, "pgdata");
  }
  const pglite = await PGlite.create({ ...(dataDir ? { dataDir } : {}), extensions: { vector } });
  const db = new Kysely<Database>({ dialect: new PGliteDialect({ pglite }) });
  return handle(db, "pglite", async (channel, onPayload) => {
    const unlisten = await pglite.listen(channel, onPayload);
    return async () => {
      if (!pglite.closed) await unlisten();
    };
  });
}

function handle(db: Kysely<Database>, kind: "postgres" | "pglite", listen: ListenFn): DatabaseHandle {
  let closed = false;
  const listeners = new Set<Unlisten>();
  return {
    db,
    kind,
    async ping() {
      await sql`select 1`.execute(db);
    },
    async listen(channel, onPayload, onResync) {
      const unlisten = await listen(channel, onPayload, onResync);
      const stop = async () => {
        if (listeners.delete(stop)) await unlisten();
      };
      listeners.add(stop);
      return stop;
    },
    async close() {
      if (closed) return;
      closed = true;
      await Promise.all([...listeners].map((stop) => stop()));
      await db.destroy();
    },
  };
}
