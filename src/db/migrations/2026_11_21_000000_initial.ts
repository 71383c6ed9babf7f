import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration that has shipped; add a new one.

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable("tenants")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();

  await db.schema
    .createTable("server_settings")
    .addColumn("key", "text", (c) => c.primaryKey())
    .addColumn("value", "text", (c) => c.notNull())
    .execute();

  await db.schema
    .createTable("api_keys")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull().references("tenants.id").onDelete("cascade"))
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("prefix", "text", (c) => c.notNull())
    .addColumn("key_hash", "text", (c) => c.notNull().unique())
    .addColumn("role", "text", (c) => c.notNull())
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("revoke_time", "timestamptz")
    .execute();
  await db.schema.createIndex("api_keys_tenant_idx").on("api_keys").columns(["tenant_id", "create_time"]).execute();

  await db.schema
    .createTable("agents")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull().references("tenants.id").onDelete("cascade"))
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("description", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("instructions", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("model", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("generation", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("prologue", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("context_policy", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("metadata", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("version", "integer", (c) => c.notNull().defaultTo(1))
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("update_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema.createIndex("agents_tenant_create_idx").on("agents").columns(["tenant_id", "create_time", "id"]).execute();

  await db.schema
    .createTable("sessions")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull().references("tenants.id").onDelete("cascade"))
    .addColumn("agent_id", "uuid", (c) => c.notNull().references("agents.id").onDelete("cascade"))
    .addColumn("user_id", "text", (c) => c.notNull())
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("metadata", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("state", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("status", "text", (c) => c.notNull().defaultTo("active"))
    .addColumn("message_count", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("last_seq", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("last_message_time", "timestamptz")
    .addColumn("version", "integer", (c) => c.notNull().defaultTo(1))
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("update_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    // The claim on the session: one running Ask at a time, held as a lease
    // renewed by the replica that runs it (so an expired lease frees a session
    // whose replica died).
    .addColumn("active_ask_id", "uuid")
    .addColumn("lease_owner", "text")
    .addColumn("lease_expire_time", "timestamptz")
    .execute();
  // Every list query leads with the tenant; filters by agent/user come next;
  // the sort key and id close the keyset.
  await db.schema.createIndex("sessions_tenant_create_idx").on("sessions").columns(["tenant_id", "create_time", "id"]).execute();
  await db.schema.createIndex("sessions_tenant_update_idx").on("sessions").columns(["tenant_id", "update_time", "id"]).execute();
  await db.schema.createIndex("sessions_tenant_name_idx").on("sessions").columns(["tenant_id", "name", "id"]).execute();
  await db.schema
    .createIndex("sessions_tenant_agent_user_idx")
    .on("sessions")
    .columns(["tenant_id", "agent_id", "user_id", "create_time", "id"])
    .execute();
  await db.schema
    .createIndex("sessions_tenant_user_idx")
    .on("sessions")
    .columns(["tenant_id", "user_id", "create_time", "id"])
    .execute();
  // The same filters ordered by last change (a chat UI's "recent sessions"),
  // and an agent's sessions alone; with a name order, the filtered set is sorted.
  await db.schema
    .createIndex("sessions_tenant_agent_user_update_idx")
    .on("sessions")
    .columns(["tenant_id", "agent_id", "user_id", "update_time", "id"])
    .execute();
  await db.schema
    .createIndex("sessions_tenant_user_update_idx")
    .on("sessions")
    .columns(["tenant_id", "user_id", "update_time", "id"])
    .execute();
  await db.schema
    .createIndex("sessions_tenant_agent_create_idx")
    .on("sessions")
    .columns(["tenant_id", "agent_id", "create_time", "id"])
    .execute();
  await db.schema
    .createIndex("sessions_tenant_agent_update_idx")
    .on("sessions")
    .columns(["tenant_id", "agent_id", "update_time", "id"])
    .execute();
  // Deleting an agent cascades to its sessions by agent_id alone.
  await db.schema.createIndex("sessions_agent_idx").on("sessions").column("agent_id").execute();

  await db.schema
    .createTable("messages")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull())
    .addColumn("session_id", "uuid", (c) => c.notNull().references("sessions.id").onDelete("cascade"))
    .addColumn("seq", "integer", (c) => c.notNull())
    .addColumn("role", "text", (c) => c.notNull())
    .addColumn("content", "text", (c) => c.notNull())
    .addColumn("status", "text", (c) => c.notNull())
    .addColumn("metadata", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("usage", "jsonb")
    .addColumn("feedback", "jsonb")
    .addColumn("ask_id", "uuid")
    .addColumn("model", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("update_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  // History reads are "the last N by seq" of one session: O(window) through this index.
  await db.schema.createIndex("messages_session_seq_uq").on("messages").columns(["session_id", "seq"]).unique().execute();

  await db.schema
    .createTable("append_requests")
    .addColumn("session_id", "uuid", (c) => c.notNull().references("sessions.id").onDelete("cascade"))
    .addColumn("request_id", "text", (c) => c.notNull())
    .addColumn("tenant_id", "uuid", (c) => c.notNull())
    .addColumn("message_ids", "jsonb", (c) => c.notNull())
    // Fingerprint of the request: a request_id reused for other messages is rejected.
    .addColumn("request_hash", "text", (c) => c.notNull())
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint("append_requests_pk", ["session_id", "request_id"])
    .execute();

  await db.schema
    .createTable("asks")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull())
    .addColumn("session_id", "uuid", (c) => c.notNull().references("sessions.id").onDelete("cascade"))
    .addColumn("status", "text", (c) => c.notNull())
    .addColumn("request_id", "text")
    .addColumn("request_hash", "text", (c) => c.notNull())
    .addColumn("user_message_id", "uuid")
    .addColumn("assistant_message_id", "uuid")
    .addColumn("model", "text", (c) => c.notNull())
    .addColumn("store", "boolean", (c) => c.notNull())
    .addColumn("usage", "jsonb")
    .addColumn("error_code", "text")
    .addColumn("error_message", "text")
    .addColumn("owner", "text")
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("finish_time", "timestamptz")
    .execute();
  await db.schema.createIndex("asks_session_idx").on("asks").columns(["session_id", "create_time"]).execute();
  await db.schema
    .createIndex("asks_session_request_uq")
    .on("asks")
    .columns(["session_id", "request_id"])
    .unique()
    .where(sql.ref("request_id"), "is not", null)
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const t of ["asks", "append_requests", "messages", "sessions", "agents", "api_keys", "server_settings", "tenants"]) {
    await db.schema.dropTable(t).ifExists().execute();
  }
}
