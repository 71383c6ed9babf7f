import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration that has shipped; add a new one.

/** Memories, the user and app state scopes, and agents' memory settings. */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable("agents")
    .addColumn("memory", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .execute();

  await db.schema
    .createTable("memories")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull().references("tenants.id").onDelete("cascade"))
    .addColumn("type", "text", (c) => c.notNull())
    .addColumn("user_id", "text", (c) => c.notNull())
    // Short-term memories live and die with their session.
    .addColumn("session_id", "uuid", (c) => c.references("sessions.id").onDelete("cascade"))
    .addColumn("content", "text", (c) => c.notNull())
    .addColumn("quality", "double precision", (c) => c.notNull().defaultTo(1))
    .addColumn("metadata", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    // The same English configuration as chunks.tsv, so one query syntax finds both.
    .addColumn("tsv", sql`tsvector`, (c) => c.generatedAlwaysAs(sql`to_tsvector('english', content)`).stored())
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  // Lists and searches filter by user (and session) within the tenant, newest first.
  await db.schema
    .createIndex("memories_tenant_user_idx")
    .on("memories")
    .columns(["tenant_id", "user_id", "create_time", "id"])
    .execute();
  await db.schema
    .createIndex("memories_tenant_session_idx")
    .on("memories")
    .columns(["tenant_id", "session_id", "create_time", "id"])
    .execute();
  await db.schema.createIndex("memories_tenant_create_idx").on("memories").columns(["tenant_id", "create_time", "id"]).execute();
  // Deleting a session cascades to its memories by session_id alone.
  await db.schema.createIndex("memories_session_idx").on("memories").column("session_id").execute();
  // btree_gin lets the full-text index lead with tenant_id like every other
  // index; where the server lacks it, the GIN index covers the text alone.
  if (await tryExtension(db, "btree_gin")) {
    await sql`create index memories_tenant_tsv_idx on memories using gin (tenant_id, tsv)`.execute(db);
  } else {
    await db.schema.createIndex("memories_tsv_idx").on("memories").using("gin").column("tsv").execute();
  }
  if (await tryExtension(db, "vector")) {
    // Like chunk_embeddings: untyped dimension, each row records its model.
    await db.schema
      .createTable("memory_embeddings")
      .addColumn("memory_id", "uuid", (c) => c.primaryKey().references("memories.id").onDelete("cascade"))
      .addColumn("tenant_id", "uuid", (c) => c.notNull())
      .addColumn("model", "text", (c) => c.notNull())
      .addColumn("embedding", sql`vector`, (c) => c.notNull())
      .execute();
    await db.schema.createIndex("memory_embeddings_tenant_model_idx").on("memory_embeddings").columns(["tenant_id", "model"]).execute();
  }

  // Google ADK's `user:` scope: shared by all sessions of a user within the tenant.
  await db.schema
    .createTable("user_states")
    .addColumn("tenant_id", "uuid", (c) => c.notNull().references("tenants.id").onDelete("cascade"))
    .addColumn("user_id", "text", (c) => c.notNull())
    .addColumn("state", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("version", "integer", (c) => c.notNull().defaultTo(1))
    .addColumn("update_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint("user_states_pk", ["tenant_id", "user_id"])
    .execute();

  // The `app:` scope: shared by all sessions of an agent.
  await db.schema
    .createTable("app_states")
    .addColumn("tenant_id", "uuid", (c) => c.notNull().references("tenants.id").onDelete("cascade"))
    .addColumn("agent_id", "uuid", (c) => c.notNull().references("agents.id").onDelete("cascade"))
    .addColumn("state", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("version", "integer", (c) => c.notNull().defaultTo(1))
    .addColumn("update_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint("app_states_pk", ["tenant_id", "agent_id"])
    .execute();
  // Deleting an agent cascades to its app state by agent_id alone.
  await db.schema.createIndex("app_states_agent_idx").on("app_states").column("agent_id").execute();
}

/**
 * Creates an extension when the server has it. A savepoint keeps a refused
 * CREATE EXTENSION (not installed, no privilege) from aborting the migration.
 */
async function tryExtension(db: Kysely<any>, name: string): Promise<boolean> {
  const available = await sql<{ ok: boolean }>`
    select exists (select 1 from pg_available_extensions where name = ${name}) as ok`.execute(db);
  if (!available.rows[0]?.ok) return false;
  await sql`savepoint parley_extension`.execute(db);
  try {
    await sql`create extension if not exists ${sql.id(name)}`.execute(db);
  } catch {
    await sql`rollback to savepoint parley_extension`.execute(db);
    return false;
  }
  await sql`release savepoint parley_extension`.execute(db);
  return true;
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const t of ["app_states", "user_states", "memory_embeddings", "memories"]) await db.schema.dropTable(t).ifExists().execute();
  await db.schema.alterTable("agents").dropColumn("memory").execute();
}
