import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type DatabaseHandle } from "../../src/db/database.js";
import { isDatabaseUnavailable } from "../../src/errors.js";
import { backends, createTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js";

// A Postgres connection that breaks while a request holds it (a query on the wire, or a
// transaction between two statements) must fail that request, not the process: pg emits
// "error" on a checked-out client, and pg-pool listens only while the client is idle.
describe.runIf(backends().includes("postgres"))("Postgres connections lost while checked out", () => {
  let database: TestDatabase;
  let proxy: TcpProxy;
  let handle: DatabaseHandle;
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);

  beforeAll(async () => {
    database = await createTestDatabase("postgres", { migrate: false });
    const url = new URL(database.url);
    proxy = await startTcpProxy(Number(url.port || 5432));
    url.hostname = "127.0.0.1";
    url.port = String(proxy.port);
    handle = await openDatabase({ url: url.toString(), dataDir: "", poolSize: 4 });
    // Seen here first, so the test can say what happened (vitest also reports it as an unhandled error).
    process.prependListener("uncaughtException", onUncaught);
  });

  afterAll(async () => {
    process.off("uncaughtException", onUncaught);
    await handle?.close();
    await proxy?.close();
    await database?.drop();
  });

  it("a query in flight and a transaction between statements fail as unavailable; the process lives and the pool recovers", async () => {
    const inFlight = sql`select pg_sleep(30)`.execute(handle.db).then(
      () => undefined,
      (err: unknown) => err,
    );
    let holding!: () => void;
    const held = new Promise<void>((resolve) => (holding = resolve));
    let resume!: () => void;
    const cutDone = new Promise<void>((resolve) => (resume = resolve));
    const inTransaction = handle.db
      .transaction()
      .execute(async (trx) => {
        await sql`select 1`.execute(trx);
        holding();
        await cutDone;
        await sql`select 2`.execute(trx);
      })
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    await held;
    // Let pg_sleep reach the server before the connections go.
    await new Promise((r) => setTimeout(r, 200));
    proxy.cut();
    await new Promise((r) => setTimeout(r, 200));
    resume();

    const [a, b] = await Promise.all([inFlight, inTransaction]);
    expect(uncaught).toEqual([]);
    expect(isDatabaseUnavailable(a), String(a)).toBe(true);
    expect(isDatabaseUnavailable(b), String(b)).toBe(true);
    // The broken clients left the pool: the next queries get new connections.
    const { rows } = await sql<{ n: number }>`select 42 as n`.execute(handle.db);
    expect(rows).toEqual([{ n: 42 }]);
    await handle.ping();
  });
});
