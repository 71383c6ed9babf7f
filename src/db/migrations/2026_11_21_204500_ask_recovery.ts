import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration that has shipped; add a new one.

export async function up(db: Kysely<any>): Promise<void> {
  // A CancelAsk served by another replica is stored here too, so that the
  // running replica's lease renewal stops the Ask when the pub/sub message is lost.
  await db.schema.alterTable("asks").addColumn("cancel_request_time", "timestamptz").execute();
  // The sweeper's query: claimed sessions ordered by lease end, claimed ones only.
  await db.schema
    .createIndex("sessions_lease_expire_idx")
    .on("sessions")
    .column("lease_expire_time")
    .where(sql.ref("active_ask_id"), "is not", null)
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex("sessions_lease_expire_idx").execute();
  await db.schema.alterTable("asks").dropColumn("cancel_request_time").execute();
}
