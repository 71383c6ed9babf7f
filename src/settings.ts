import { randomBytes } from "node:crypto";
import type { Kysely } from "kysely";
import type { Database } from "./db/schema.js";

/** The server-wide secret that signs page tokens: generated once and shared by every replica through the database. */
export async function loadOrCreateTokenSecret(db: Kysely<Database>): Promise<string> {
  const fresh = randomBytes(32).toString("base64url");
  await db
    .insertInto("server_settings")
    .values({ key: "page_token_secret", value: fresh })
    .onConflict((oc) => oc.column("key").doNothing())
    .execute();
  const row = await db
    .selectFrom("server_settings")
    .select("value")
    .where("key", "=", "page_token_secret")
    .executeTakeFirstOrThrow();
  return row.value;
}
