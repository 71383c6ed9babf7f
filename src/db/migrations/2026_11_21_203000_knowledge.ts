import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration that has shipped; add a new one.

/**
 * Knowledge bases, documents and chunks (full-text indexed), the agents'
 * knowledge settings and the references of assistant messages. Chunk
 * embeddings live in a table of their own that exists only where pgvector is
 * available, so a Postgres server without it migrates the same way and
 * searches by full text alone.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable("knowledge_bases")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull().references("tenants.id").onDelete("cascade"))
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("description", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("chunk_size", "integer", (c) => c.notNull())
    .addColumn("chunk_overlap", "integer", (c) => c.notNull())
    .addColumn("metadata", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("update_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema
    .createIndex("knowledge_bases_tenant_create_idx")
    .on("knowledge_bases")
    .columns(["tenant_id", "create_time", "id"])
    .execute();

  await db.schema
    .createTable("documents")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull())
    .addColumn("knowledge_base_id", "uuid", (c) => c.notNull().references("knowledge_bases.id").onDelete("cascade"))
    .addColumn("name", "text", (c) => c.notNull())
    .addColumn("mime_type", "text", (c) => c.notNull())
    .addColumn("status", "text", (c) => c.notNull())
    .addColumn("error", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("progress", "double precision", (c) => c.notNull().defaultTo(0))
    .addColumn("size_bytes", "bigint", (c) => c.notNull())
    .addColumn("chunk_count", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("metadata", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    // The replica ingesting a PROCESSING document and when it last reported
    // progress: a document whose heartbeat stopped was abandoned by a crash.
    .addColumn("ingest_owner", "text")
    .addColumn("heartbeat_time", "timestamptz")
    .addColumn("create_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("update_time", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema
    .createIndex("documents_kb_create_idx")
    .on("documents")
    .columns(["knowledge_base_id", "create_time", "id"])
    .execute();
  await db.schema
    .createIndex("documents_processing_idx")
    .on("documents")
    .column("heartbeat_time")
    .where(sql.ref("status"), "=", "processing")
    .execute();

  await db.schema
    .createTable("chunks")
    .addColumn("id", "uuid", (c) => c.primaryKey())
    .addColumn("tenant_id", "uuid", (c) => c.notNull())
    .addColumn("knowledge_base_id", "uuid", (c) => c.notNull())
    .addColumn("document_id", "uuid", (c) => c.notNull().references("documents.id").onDelete("cascade"))
    .addColumn("ordinal", "integer", (c) => c.notNull())
    .addColumn("content", "text", (c) => c.notNull())
    .addColumn("token_count", "integer", (c) => c.notNull())
    // English stemming: "configure" finds "configuring". Generated, so it can never disagree with content.
    .addColumn("tsv", sql`tsvector`, (c) => c.generatedAlwaysAs(sql`to_tsvector('english', content)`).stored())
    .execute();
  await db.schema.createIndex("chunks_document_idx").on("chunks").columns(["document_id", "ordinal"]).execute();
  await db.schema.createIndex("chunks_kb_idx").on("chunks").column("knowledge_base_id").execute();
  await db.schema.createIndex("chunks_tsv_idx").on("chunks").using("gin").column("tsv").execute();

  await db.schema
    .alterTable("agents")
    .addColumn("knowledge_base_ids", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .execute();
  await db.schema
    .alterTable("agents")
    .addColumn("retrieval", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .execute();
  await db.schema.alterTable("messages").addColumn("references", "jsonb").execute();

  await createEmbeddingTableIfPossible(db);
}

/**
 * Creates chunk_embeddings when the vector extension can be had. A savepoint
 * keeps a refused CREATE EXTENSION (not installed, no privilege) from
 * aborting the migration's transaction.
 */
async function createEmbeddingTableIfPossible(db: Kysely<any>): Promise<void> {
  const available = await sql<{ ok: boolean }>`
    select exists (select 1 from pg_available_extensions where name = 'vector') as ok`.execute(db);
  if (!available.rows[0]?.ok) return;
  await sql`savepoint parley_vector`.execute(db);
  try {
    await sql`create extension if not exists vector`.execute(db);
  } catch {
    await sql`rollback to savepoint parley_vector`.execute(db);
    return;
  }
  await sql`release savepoint parley_vector`.execute(db);
  // Dimensions differ per embedding model: the column is untyped and each row
  // records its model; searches compare only vectors of the configured model.
  await db.schema
    .createTable("chunk_embeddings")
    .addColumn("chunk_id", "uuid", (c) => c.primaryKey().references("chunks.id").onDelete("cascade"))
    .addColumn("tenant_id", "uuid", (c) => c.notNull())
    .addColumn("knowledge_base_id", "uuid", (c) => c.notNull())
    .addColumn("model", "text", (c) => c.notNull())
    .addColumn("embedding", sql`vector`, (c) => c.notNull())
    .execute();
  await db.schema
    .createIndex("chunk_embeddings_kb_model_idx")
    .on("chunk_embeddings")
    .columns(["knowledge_base_id", "model"])
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable("chunk_embeddings").ifExists().execute();
  await db.schema.alterTable("messages").dropColumn("references").execute();
  await db.schema.alterTable("agents").dropColumn("retrieval").execute();
  await db.schema.alterTable("agents").dropColumn("knowledge_base_ids").execute();
  for (const t of ["chunks", "documents", "knowledge_bases"]) await db.schema.dropTable(t).ifExists().execute();
}
