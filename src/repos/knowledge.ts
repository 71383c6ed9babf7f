import { sql, type Kysely, type Transaction } from "kysely";
import type {
  Database,
  DocumentRow,
  DocumentStatusText,
  JsonObject,
  KnowledgeBaseRow,
  ReferencesJson,
} from "../db/schema.js";
import { createTimeCursor } from "./agents.js";

type Db = Kysely<Database> | Transaction<Database>;

/** A knowledge base with its number of documents. */
export type KnowledgeBaseWithCount = KnowledgeBaseRow & { document_count: string | number };

const documentCount = sql<string>`(select count(*) from documents d where d.knowledge_base_id = knowledge_bases.id and d.tenant_id = knowledge_bases.tenant_id)`;

/** Inserts a knowledge base. */
export async function insertKnowledgeBase(
  db: Db,
  row: { id: string; tenant_id: string; name: string; description: string; chunk_size: number; chunk_overlap: number; metadata: JsonObject },
): Promise<KnowledgeBaseWithCount> {
  const r = await db
    .insertInto("knowledge_bases")
    .values({ ...row, metadata: JSON.stringify(row.metadata) })
    .returningAll()
    .executeTakeFirstOrThrow();
  return { ...r, document_count: 0 };
}

/** The tenant's knowledge base with this id, optionally locked against deletion. */
export async function findKnowledgeBase(
  db: Db,
  tenantId: string,
  id: string,
  lock?: "key share",
): Promise<KnowledgeBaseWithCount | undefined> {
  let q = db
    .selectFrom("knowledge_bases")
    .selectAll()
    .select(documentCount.as("document_count"))
    .where("id", "=", id)
    .where("tenant_id", "=", tenantId);
  if (lock) q = q.forKeyShare();
  return q.executeTakeFirst();
}

/** The ids among `ids` that are knowledge bases of the tenant. */
export async function existingKnowledgeBaseIds(db: Db, tenantId: string, ids: readonly string[]): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await db
    .selectFrom("knowledge_bases")
    .select("id")
    .where("tenant_id", "=", tenantId)
    .where("id", "in", [...ids])
    .execute();
  return new Set(rows.map((r) => r.id));
}

/** One page of the tenant's knowledge bases, newest first, after a (create_time, id) cursor. */
export async function listKnowledgeBases(
  db: Db,
  tenantId: string,
  limit: number,
  after?: { readonly createTime: string; readonly id: string },
): Promise<(KnowledgeBaseWithCount & { cursor: string })[]> {
  let q = db
    .selectFrom("knowledge_bases")
    .selectAll()
    .select(documentCount.as("document_count"))
    .select(createTimeCursor.as("cursor"))
    .where("tenant_id", "=", tenantId);
  if (after) {
    q = q.where((eb) =>
      eb(eb.refTuple("create_time", "id"), "<", eb.tuple(sql<Date>`${after.createTime}::timestamptz`, sql<string>`${after.id}::uuid`)),
    );
  }
  return q.orderBy("create_time", "desc").orderBy("id", "desc").limit(limit).execute();
}

/** Deletes a knowledge base; its documents, chunks and vectors go by cascade. True when a row was deleted. */
export async function deleteKnowledgeBase(db: Db, tenantId: string, id: string): Promise<boolean> {
  const r = await db.deleteFrom("knowledge_bases").where("id", "=", id).where("tenant_id", "=", tenantId).executeTakeFirst();
  return r.numDeletedRows > 0n;
}

/** Inserts a document. */
export async function insertDocument(
  db: Db,
  row: {
    id: string;
    tenant_id: string;
    knowledge_base_id: string;
    name: string;
    mime_type: string;
    status: DocumentStatusText;
    size_bytes: number;
    metadata: JsonObject;
    ingest_owner: string | null;
  },
): Promise<DocumentRow> {
  return db
    .insertInto("documents")
    .values({ ...row, metadata: JSON.stringify(row.metadata), heartbeat_time: sql<Date>`now()` })
    .returningAll()
    .executeTakeFirstOrThrow();
}

/** The tenant's document with this id. */
export async function findDocument(db: Db, tenantId: string, id: string): Promise<DocumentRow | undefined> {
  return db.selectFrom("documents").selectAll().where("id", "=", id).where("tenant_id", "=", tenantId).executeTakeFirst();
}

/** One page of a knowledge base's documents, newest first, after a (create_time, id) cursor. */
export async function listDocuments(
  db: Db,
  tenantId: string,
  knowledgeBaseId: string,
  limit: number,
  after?: { readonly createTime: string; readonly id: string },
): Promise<(DocumentRow & { cursor: string })[]> {
  let q = db
    .selectFrom("documents")
    .selectAll()
    .select(createTimeCursor.as("cursor"))
    .where("tenant_id", "=", tenantId)
    .where("knowledge_base_id", "=", knowledgeBaseId);
  if (after) {
    q = q.where((eb) =>
      eb(eb.refTuple("create_time", "id"), "<", eb.tuple(sql<Date>`${after.createTime}::timestamptz`, sql<string>`${after.id}::uuid`)),
    );
  }
  return q.orderBy("create_time", "desc").orderBy("id", "desc").limit(limit).execute();
}

/** Deletes a document; its chunks and vectors go by cascade. True when a row was deleted. */
export async function deleteDocument(db: Db, tenantId: string, id: string): Promise<boolean> {
  const r = await db.deleteFrom("documents").where("id", "=", id).where("tenant_id", "=", tenantId).executeTakeFirst();
  return r.numDeletedRows > 0n;
}

/** Records ingestion progress (and that the ingesting replica is alive). False when the document is gone or no longer processing. */
export async function reportProgress(db: Db, tenantId: string, id: string, progress: number): Promise<boolean> {
  const r = await db
    .updateTable("documents")
    .set({ progress, heartbeat_time: sql<Date>`now()`, update_time: sql<Date>`now()` })
    .where("id", "=", id)
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "processing")
    .executeTakeFirst();
  return r.numUpdatedRows > 0n;
}

/** Marks a processing document READY with its chunk count. */
export async function markDocumentReady(db: Db, tenantId: string, id: string): Promise<DocumentRow | undefined> {
  return db
    .updateTable("documents")
    .set({
      status: "ready",
      progress: 1,
      error: "",
      ingest_owner: null,
      heartbeat_time: null,
      update_time: sql<Date>`now()`,
      chunk_count: sql<number>`(select count(*) from chunks c where c.document_id = documents.id and c.tenant_id = documents.tenant_id)`,
    })
    .where("id", "=", id)
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "processing")
    .returningAll()
    .executeTakeFirst();
}

/** Marks a document FAILED and deletes whatever chunks it had: a failed document is never half searchable. */
export async function markDocumentFailed(db: Db, tenantId: string, id: string, error: string): Promise<DocumentRow | undefined> {
  await db.deleteFrom("chunks").where("document_id", "=", id).where("tenant_id", "=", tenantId).execute();
  return db
    .updateTable("documents")
    .set({
      status: "failed",
      error,
      chunk_count: 0,
      ingest_owner: null,
      heartbeat_time: null,
      update_time: sql<Date>`now()`,
    })
    .where("id", "=", id)
    .where("tenant_id", "=", tenantId)
    .returningAll()
    .executeTakeFirst();
}

/**
 * Marks FAILED the documents whose ingestion stopped reporting progress for
 * staleMs (the replica ingesting them stopped), deleting their chunks. Scoped
 * to one document when id is given. Returns how many were marked.
 */
export async function failAbandonedDocuments(
  db: Kysely<Database>,
  staleMs: number,
  only?: { readonly tenantId: string; readonly id: string },
): Promise<number> {
  return db.transaction().execute(async (tx) => {
    let q = tx
      .selectFrom("documents")
      .select(["id", "tenant_id"])
      .where("status", "=", "processing")
      .where("heartbeat_time", "<", sql<Date>`now() - ${`${staleMs} milliseconds`}::interval`);
    if (only) q = q.where("id", "=", only.id).where("tenant_id", "=", only.tenantId);
    const stale = await q.forUpdate().skipLocked().execute();
    for (const d of stale) {
      await markDocumentFailed(tx, d.tenant_id, d.id, "ingestion was interrupted (the server stopped); add the document again");
    }
    return stale.length;
  });
}

/** A chunk to store. */
export interface NewChunk {
  readonly id: string;
  readonly ordinal: number;
  readonly content: string;
  readonly tokenCount: number;
  readonly embedding?: readonly number[];
}

/** Stores chunks of a document (and their vectors, when given, under the embedding model's id). */
export async function insertChunks(
  db: Db,
  doc: { readonly tenantId: string; readonly knowledgeBaseId: string; readonly documentId: string },
  chunks: readonly NewChunk[],
  embeddingModel?: string,
): Promise<void> {
  if (chunks.length === 0) return;
  await db
    .insertInto("chunks")
    .values(
      chunks.map((c) => ({
        id: c.id,
        tenant_id: doc.tenantId,
        knowledge_base_id: doc.knowledgeBaseId,
        document_id: doc.documentId,
        ordinal: c.ordinal,
        content: c.content,
        token_count: c.tokenCount,
      })),
    )
    .execute();
  const withVectors = chunks.filter((c) => c.embedding && c.embedding.length > 0);
  if (embeddingModel && withVectors.length > 0) {
    await db
      .insertInto("chunk_embeddings")
      .values(
        withVectors.map((c) => ({
          chunk_id: c.id,
          tenant_id: doc.tenantId,
          knowledge_base_id: doc.knowledgeBaseId,
          model: embeddingModel,
          embedding: vectorLiteral(c.embedding!),
        })),
      )
      .execute();
  }
}

/** pgvector's text form of a vector. */
export function vectorLiteral(v: readonly number[]): string {
  return `[${v.map((x) => (Number.isFinite(x) ? x : 0)).join(",")}]`;
}

/** True when the vector table exists (the migration found pgvector). */
export async function hasVectorTable(db: Db): Promise<boolean> {
  const r = await sql<{ ok: boolean }>`select to_regclass('chunk_embeddings') is not null as ok`.execute(db);
  return r.rows[0]?.ok === true;
}

/** A chunk found by one retrieval method, with that method's similarity (0 to 1). */
export interface ChunkHit {
  readonly chunk_id: string;
  readonly content: string;
  readonly document_id: string;
  readonly document_name: string;
  readonly knowledge_base_id: string;
  readonly ordinal: number;
  readonly score: number;
}

/**
 * Full-text hits among the READY documents of the knowledge bases, best
 * first. The query is parsed by websearch_to_tsquery (quotes, OR, -) and its
 * AND between words relaxed to OR, so that a question's words need not all
 * occur in one chunk; ts_rank_cd (cover density, normalized to 0..1) ranks
 * chunks where more of them occur close together first.
 */
export async function searchFullText(
  db: Db,
  tenantId: string,
  knowledgeBaseIds: readonly string[],
  query: string,
  limit: number,
): Promise<ChunkHit[]> {
  const r = await sql<ChunkHit>`
    with q as (
      select case when position('!' in w::text) > 0 then w
                  else replace(w::text, ' & ', ' | ')::tsquery end as query
      from websearch_to_tsquery('english', ${query}) as w
    )
    select c.id as chunk_id, c.content, c.document_id, d.name as document_name, c.knowledge_base_id, c.ordinal,
           ts_rank_cd(c.tsv, q.query, 32) as score
    from q, chunks c
    join documents d on d.id = c.document_id and d.tenant_id = c.tenant_id
    where c.tenant_id = ${tenantId}
      and c.knowledge_base_id in (${sql.join(knowledgeBaseIds.map((id) => sql`${id}::uuid`))})
      and d.status = 'ready'
      and c.tsv @@ q.query
    order by score desc, c.id
    limit ${limit}`.execute(db);
  return r.rows.map((h) => ({ ...h, score: unit(Number(h.score)) }));
}

/** Vector hits (cosine similarity, clamped to 0..1) among the READY documents, best first. */
export async function searchVector(
  db: Db,
  tenantId: string,
  knowledgeBaseIds: readonly string[],
  model: string,
  vector: readonly number[],
  limit: number,
): Promise<ChunkHit[]> {
  const v = vectorLiteral(vector);
  const r = await sql<ChunkHit>`
    select c.id as chunk_id, c.content, c.document_id, d.name as document_name, c.knowledge_base_id, c.ordinal,
           1 - (e.embedding <=> ${v}::vector) as score
    from chunk_embeddings e
    join chunks c on c.id = e.chunk_id and c.tenant_id = e.tenant_id
    join documents d on d.id = c.document_id and d.tenant_id = c.tenant_id
    where e.tenant_id = ${tenantId}
      and e.knowledge_base_id in (${sql.join(knowledgeBaseIds.map((id) => sql`${id}::uuid`))})
      and e.model = ${model}
      and vector_dims(e.embedding) = ${vector.length}
      and d.status = 'ready'
    order by e.embedding <=> ${v}::vector, c.id
    limit ${limit}`.execute(db);
  return r.rows.map((h) => ({ ...h, score: unit(Number(h.score)) }));
}

/** A similarity as a finite number in 0..1 (a zero vector's cosine is NaN). */
function unit(x: number): number {
  if (!Number.isFinite(x)) return 0;
  return Math.min(1, Math.max(0, x));
}

/** Stores the references of an assistant message. */
export async function setMessageReferences(db: Db, tenantId: string, messageId: string, refs: ReferencesJson): Promise<void> {
  await db
    .updateTable("messages")
    .set({ references: JSON.stringify(refs) })
    .where("id", "=", messageId)
    .where("tenant_id", "=", tenantId)
    .execute();
}
