import { randomBytes } from "node:crypto";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { prepared, usePreparedStatements } from "../../src/db/prepared.js";
import { backends } from "../helpers/databases.js";

// A pool of ONE connection, so that pg_prepared_statements (per connection) shows what the statements before did.
describe.runIf(backends().includes("postgres"))("hot statements as named prepared statements (Postgres)", () => {
  const base = process.env.PARLEY_TEST_DATABASE_URL!;
  const name = `parley_prep_${randomBytes(4).toString("hex")}`;
  let pool: pg.Pool;
  let db: Kysely<{ t: { id: number; a: string } }>;
  const preparedTexts = async () =>
    (await sql<{ statement: string }>`select statement from pg_prepared_statements`.execute(db)).rows.map((r) => r.statement);

  beforeAll(async () => {
    const admin = new pg.Client({ connectionString: base });
    await admin.connect();
    await admin.query(`create database ${name}`);
    await admin.end();
    const u = new URL(base);
    u.pathname = `/${name}`;
    pool = new pg.Pool({ connectionString: u.toString(), max: 1 });
    usePreparedStatements(pool);
    db = new Kysely({ dialect: new PostgresDialect({ pool }) });
    await sql`create table t (id int primary key, a text not null)`.execute(db);
    await sql`insert into t values (1, 'one'), (2, 'two')`.execute(db);
  });
  afterAll(async () => {
    await db?.destroy();
    const admin = new pg.Client({ connectionString: base });
    await admin.connect();
    await admin.query(`drop database if exists ${name} with (force)`);
    await admin.end();
  });

  it("prepares a marked statement once per connection and runs it with each call's values; unmarked ones stay unprepared", async () => {
    const read = (id: number) => db.selectFrom("t").selectAll().where("id", "=", id).modifyEnd(prepared).executeTakeFirst();
    expect(await read(1)).toEqual({ id: 1, a: "one" });
    expect(await read(2)).toEqual({ id: 2, a: "two" });
    await db.selectFrom("t").select("a").where("id", "=", 1).execute();
    const texts = await preparedTexts();
    expect(texts.filter((t) => t.includes('from "t"'))).toHaveLength(1);
    expect(texts[0]).toMatch(/parley:prepared/);
  });

  it("after a migration changes the table under a prepared select *, the statement runs unprepared (a call inside a transaction fails once)", async () => {
    const read = (q: Kysely<{ t: { id: number; a: string } }>) =>
      q.selectFrom("t").selectAll().where("id", "=", 1).modifyEnd(prepared).executeTakeFirst();
    // Another text than read's: a text met with the refusal runs unprepared everywhere from then on.
    const inTx = (id: number) =>
      db.transaction().execute((tx) => tx.selectFrom("t").selectAll().where("id", "=", id).where("a", "<>", "").modifyEnd(prepared).executeTakeFirst());
    expect(await inTx(2)).toEqual({ id: 2, a: "two" });
    await read(db);
    await sql`alter table t add column b text not null default 'b'`.execute(db);
    // Outside a transaction: retried unprepared at once.
    expect(await read(db)).toEqual({ id: 1, a: "one", b: "b" });
    // Inside one, Postgres has aborted the transaction: that call fails, the next runs unprepared.
    await expect(inTx(2)).rejects.toThrow(/cached plan must not change result type/);
    expect(await inTx(2)).toEqual({ id: 2, a: "two", b: "b" });
  });
});
