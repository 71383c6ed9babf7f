import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration that has shipped; add a new one.

/**
 * Concurrency policies of Asks (the agent's default policy and enqueue
 * timeout, the FIFO queue of Asks waiting for a busy session) and the
 * `parley_session` notifications that wake waiting Asks and WatchSession
 * streams on every replica when a session's messages or claim change.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable("agents")
    // null: REJECT (the default when unspecified); otherwise "reject", "enqueue" or "interrupt".
    .addColumn("concurrency_policy", "text")
    // null: the default enqueue timeout.
    .addColumn("enqueue_timeout_ms", "integer")
    .execute();

  // One row per Ask waiting for its session. The identity column orders the
  // queue: tickets are inserted while holding the session row's lock, so
  // position order is arrival order across replicas.
  await db.schema
    .createTable("ask_queue")
    .addColumn("ask_id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull())
    .addColumn("session_id", "uuid", (c) => c.notNull().references("sessions.id").onDelete("cascade"))
    // 0: INTERRUPT (goes before the waiting ENQUEUE Asks), 1: ENQUEUE.
    .addColumn("priority", "smallint", (c) => c.notNull())
    .addColumn("position", "bigint", (c) => c.notNull().generatedAlwaysAsIdentity())
    .addColumn("owner", "text", (c) => c.notNull())
    // The waiting replica renews it; a ticket whose replica died stops blocking the queue when it expires.
    .addColumn("expire_time", "timestamptz", (c) => c.notNull())
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema.createIndex("ask_queue_session_idx").on("ask_queue").columns(["session_id", "priority", "position"]).execute();

  // NOTIFY is delivered at commit, so a listener that re-reads after a
  // notification sees what caused it. Duplicates within one transaction are
  // collapsed by Postgres; flushes of partial content (no status change) do
  // not notify.
  await sql`
    create function parley_notify_session() returns trigger language plpgsql as $$
    begin
      if tg_table_name = 'sessions' then
        perform pg_notify('parley_session', coalesce(new.id, old.id)::text);
      else
        perform pg_notify('parley_session', coalesce(new.session_id, old.session_id)::text);
      end if;
      return null;
    end
    $$`.execute(db);
  await sql`
    create trigger messages_notify_insert after insert on messages
    for each row execute function parley_notify_session()`.execute(db);
  await sql`
    create trigger messages_notify_status after update of status on messages
    for each row when (old.status is distinct from new.status) execute function parley_notify_session()`.execute(db);
  await sql`
    create trigger sessions_notify_claim after update of active_ask_id on sessions
    for each row when (old.active_ask_id is distinct from new.active_ask_id) execute function parley_notify_session()`.execute(db);
  await sql`
    create trigger sessions_notify_delete after delete on sessions
    for each row execute function parley_notify_session()`.execute(db);
  await sql`
    create trigger ask_queue_notify_delete after delete on ask_queue
    for each row execute function parley_notify_session()`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop trigger if exists ask_queue_notify_delete on ask_queue`.execute(db);
  await sql`drop trigger if exists sessions_notify_delete on sessions`.execute(db);
  await sql`drop trigger if exists sessions_notify_claim on sessions`.execute(db);
  await sql`drop trigger if exists messages_notify_status on messages`.execute(db);
  await sql`drop trigger if exists messages_notify_insert on messages`.execute(db);
  await sql`drop function if exists parley_notify_session()`.execute(db);
  await db.schema.dropTable("ask_queue").ifExists().execute();
  await db.schema.alterTable("agents").dropColumn("enqueue_timeout_ms").dropColumn("concurrency_policy").execute();
}
