import { randomBytes } from "node:crypto";
import pg from "pg";
import { openDatabase, type DatabaseHandle } from "../../src/db/database.js";
import { migrateToLatest } from "../../src/db/migrate.js";

export type Backend = "pglite" | "postgres";

/** The backends storage tests run against: PGlite always, Postgres when PARLEY_TEST_DATABASE_URL is set. */
export function backends(): Backend[] {
  const list: Backend[] = ["pglite"];
  if (process.env.PARLEY_TEST_DATABASE_URL) list.push("postgres");
  else if (process.env.PARLEY_REQUIRE_SERVICES === "1") {
    throw new Error("PARLEY_REQUIRE_SERVICES=1 but PARLEY_TEST_DATABASE_URL is not set");
  }
  return list;
}

/** The Redis URL for tests, or undefined (an error when PARLEY_REQUIRE_SERVICES=1). */
export function testRedisUrl(): string | undefined {
  const url = process.env.PARLEY_TEST_REDIS_URL;
  if (!url && process.env.PARLEY_REQUIRE_SERVICES === "1") {
    throw new Error("PARLEY_REQUIRE_SERVICES=1 but PARLEY_TEST_REDIS_URL is not set");
  }
  return url;
}

export interface TestDatabase {
  readonly backend: Backend;
  /** The URL an app or a child process can open (memory:// cannot be shared across processes). */
  readonly url: string;
  readonly handle: DatabaseHandle;
  drop(): Promise<void>;
}

/**
 * A new, empty, migrated database: an ephemeral PGlite, or a database of its own
 * on the test Postgres server (so test files can run in parallel).
 */
export async function createTestDatabase(backend: Backend, options: { migrate?: boolean } = {}): Promise<TestDatabase> {
  if (backend === "pglite") {
    const handle = await openDatabase({ url: "memory://", dataDir: "" });
    if (options.migrate !== false) await migrateToLatest(handle.db);
    return { backend, url: "memory://", handle, drop: () => handle.close() };
  }
  const base = process.env.PARLEY_TEST_DATABASE_URL;
  if (!base) throw new Error("PARLEY_TEST_DATABASE_URL is not set");
  const name = `parley_test_${Date.now().toString(36)}_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const u = new URL(base);
  u.pathname = `/${name}`;
  const url = u.toString();
  const handle = await openDatabase({ url, dataDir: "", poolSize: 20 });
  if (options.migrate !== false) await migrateToLatest(handle.db);
  return {
    backend,
    url,
    handle,
    async drop() {
      await handle.close();
      const c = new pg.Client({ connectionString: base });
      await c.connect();
      try {
        await c.query(`drop database if exists ${name} with (force)`);
      } finally {
        await c.end();
      }
    },
  };
}
