import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration that has shipped; add a new one.

/**
 * `parley_session` notifications only for sessions someone waits on.
 *
 * A NOTIFY serializes the commits of every notifying transaction on one
 * database-wide queue lock; sent for every stored message it halved the
 * database's insert rate. Now a replica whose WatchSession stream or ENQUEUE
 * waiter subscribes to a session first sets `sessions.watch_expire_time` (and
 * renews it while subscribed), and the triggers notify only while it lies
 * ahead. That cannot miss a change: every statement that stores a message or
 * changes a claim updates the session row, so it holds the row lock that the
 * subscriber's UPDATE needs; whichever commits first, either the trigger sees
 * the subscription or the subscriber's first read (after its UPDATE) sees the
 * change. Inserted messages notify once per statement and session.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("sessions").addColumn("watch_expire_time", "timestamptz").execute();

  await sql`
    create or replace function parley_notify_session() returns trigger language plpgsql as $$
    begin
      if tg_table_name = 'sessions' then
        if tg_op = 'DELETE' then
          if old.watch_expire_time > now() then
            perform pg_notify('parley_session', old.id::text);
          end if;
        elsif new.watch_expire_time > now() then
          perform pg_notify('parley_session', new.id::text);
        end if;
      else
        perform pg_notify('parley_session', s.id::text)
          from sessions s
          where s.id = coalesce(new.session_id, old.session_id) and s.watch_expire_time > now();
      end if;
      return null;
    end
    $$`.execute(db);

  await sql`
    create function parley_notify_inserted_messages() returns trigger language plpgsql as $$
    begin
      perform pg_notify('parley_session', s.id::text)
        from sessions s
        where s.id in (select distinct session_id from inserted_messages) and s.watch_expire_time > now();
      return null;
    end
    $$`.execute(db);
  await sql`drop trigger messages_notify_insert on messages`.execute(db);
  await sql`
    create trigger messages_notify_insert after insert on messages
    referencing new table as inserted_messages
    for each statement execute function parley_notify_inserted_messages()`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop trigger messages_notify_insert on messages`.execute(db);
  await sql`drop function parley_notify_inserted_messages()`.execute(db);
  await sql`
    create or replace function parley_notify_session() returns trigger language plpgsql as $$
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
  await db.schema.alterTable("sessions").dropColumn("watch_expire_time").execute();
}
