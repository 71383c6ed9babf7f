import type { Kysely } from "kysely";
import type { Database } from "../../src/db/schema.js";

type Table = "agents" | "sessions" | "messages" | "asks";

/** Every row of these tables as one string, to prove a rejected request changed nothing. */
export async function snapshot(db: Kysely<Database>, tables: readonly Table[]): Promise<string> {
  const rows = await Promise.all(tables.map((table) => db.selectFrom(table).selectAll().orderBy("id").execute()));
  return JSON.stringify(Object.fromEntries(tables.map((table, i) => [table, rows[i]])));
}
