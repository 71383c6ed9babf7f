import { sql, type ExpressionBuilder, type Kysely, type Transaction } from "kysely";
import type { Database, JsonObject, MemoryRow, MemoryTypeText } from "../db/schema.js";
import { fuseRankings } from "../search/fusion.js";

type Db = Kysely<Database> | Transaction<Database>;

/** Which memories a list, search or clear looks at. */
export interface MemoryFilter {
  readonly userId?: string;
  readonly sessionId?: string;
  readonly type?: MemoryTypeText;
}

/** A memory with its keyset cursor (create_time with microseconds). */
export type MemoryWithCursor = MemoryRow & { cursor: string };

/** A memory found by a search, with the fused and per-signal relevance (0 to 1). */
export interface MemoryHitRow {
  readonly memory: MemoryFields;
  readonly similarity: number;
  readonly termSimilarity: number;
  readonly vectorSimilarity: number;
}

/** What a search looks for. */
export interface MemorySearch {
  readonly query: string;
  readonly userId: string;
  /** The session whose short-term memories are included; without it, all of the user's short-term memories are. */
  readonly sessionId?: string;
  /** One type, or both when undefined. */
  readonly type?: MemoryTypeText;
  readonly minQuality: number;
  readonly limit: number;
  /** The query's embedding, when an embedding model is configured and memory_embeddings exists. */
  readonly embedding?: { readonly model: string; readonly vector: readonly number[] };
}

/** A stored memory as searches return it (without its derived tsvector). */
export type MemoryFields = Omit<MemoryRow, "tsv">;

/** A memory row with the score one search method gave it. */
type ScoredMemory = MemoryFields & { score: number };

// The tsvector is left out: it is derived from content and only searched.
const COLUMNS = sql.raw("m.id, m.tenant_id, m.type, m.user_id, m.session_id, m.content, m.quality, m.metadata, m.create_time");

const cursorOf = sql<string>`to_char(create_time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

/** Inserts a memory (and its embedding, when given) and returns the stored row. */
export async function insertMemory(
  db: Db,
  row: {
    id: string;
    tenant_id: string;
    type: MemoryTypeText;
    user_id: string;
    session_id: string | null;
    content: string;
    quality: number;
    metadata: JsonObject;
  },
  embedding?: { readonly model: string; readonly vector: readonly number[] },
): Promise<MemoryRow> {
  const stored = await db
    .insertInto("memories")
    .values({ ...row, metadata: JSON.stringify(row.metadata) })
    .returningAll()
    .executeTakeFirstOrThrow();
  if (embedding) {
    await db
      .insertInto("memory_embeddings")
      .values({ memory_id: row.id, tenant_id: row.tenant_id, model: embedding.model, embedding: vectorText(embedding.vector) })
      .execute();
  }
  return stored;
}

/** pgvector's text form of a vector. */
function vectorText(v: readonly number[]): string {
  return `[${v.map((x) => (Number.isFinite(x) ? x : 0)).join(",")}]`;
}

/** The WHERE conditions of a filter, tenant first. */
function conditions(tenantId: string, f: MemoryFilter) {
  return (eb: ExpressionBuilder<Database, "memories">) =>
    eb.and([
      eb("tenant_id", "=", tenantId),
      ...(f.userId !== undefined ? [eb("user_id", "=", f.userId)] : []),
      ...(f.sessionId !== undefined ? [eb("session_id", "=", f.sessionId)] : []),
      ...(f.type !== undefined ? [eb("type", "=", f.type)] : []),
    ]);
}

/** One page of the tenant's memories matching the filter, newest first, after the (create_time, id) cursor. */
export async function listMemories(
  db: Db,
  tenantId: string,
  filter: MemoryFilter,
  limit: number,
  after?: { readonly createTime: string; readonly id: string },
): Promise<MemoryWithCursor[]> {
  let q = db.selectFrom("memories").selectAll().select(cursorOf.as("cursor")).where(conditions(tenantId, filter));
  if (after) {
    q = q.where((eb) =>
      eb(eb.refTuple("create_time", "id"), "<", eb.tuple(sql<Date>`${after.createTime}::timestamptz`, sql<string>`${after.id}::uuid`)),
    );
  }
  return q.orderBy("create_time", "desc").orderBy("id", "desc").limit(limit).execute();
}

/** Deletes one memory of the tenant; true when it existed. */
export async function deleteMemory(db: Db, tenantId: string, id: string): Promise<boolean> {
  const r = await db.deleteFrom("memories").where("id", "=", id).where("tenant_id", "=", tenantId).executeTakeFirst();
  return r.numDeletedRows > 0n;
}

/** Deletes the tenant's memories matching the filter; returns how many. */
export async function clearMemories(db: Db, tenantId: string, filter: MemoryFilter): Promise<number> {
  const r = await db.deleteFrom("memories").where(conditions(tenantId, filter)).executeTakeFirst();
  return Number(r.numDeletedRows);
}

/** Whether the memory_embeddings table exists (it does only where pgvector is available). */
export async function memoryVectorsAvailable(db: Db): Promise<boolean> {
  const r = await sql<{ ok: boolean }>`select to_regclass('memory_embeddings') is not null as ok`.execute(db);
  return r.rows[0]?.ok === true;
}

/**
 * Hybrid search of a user's memories: Postgres full-text (websearch syntax;
 * plain terms are OR-ed so a natural question matches facts sharing any of
 * its words, ranked by ts_rank_cd) and, when an embedding is given, cosine
 * similarity over memory_embeddings; the two rankings are fused by
 * reciprocal rank fusion.
 */
export async function searchMemories(db: Db, tenantId: string, s: MemorySearch): Promise<MemoryHitRow[]> {
  const candidates = Math.min(Math.max(s.limit * 4, 40), 400);
  const where = sql.join(
    [
      sql`m.tenant_id = ${tenantId}`,
      sql`m.user_id = ${s.userId}`,
      sql`m.quality >= ${s.minQuality}`,
      ...(s.type !== undefined ? [sql`m.type = ${s.type}`] : []),
      ...(s.sessionId !== undefined ? [sql`(m.type = 'long' or m.session_id = ${s.sessionId})`] : []),
    ],
    sql` and `,
  );
  // websearch_to_tsquery ANDs plain terms; with no negation in the query the
  // ANDs become ORs (phrases, `<->`, stay phrases), and ts_rank_cd ranks
  // memories matching more of the terms first (as knowledge search does).
  const term = await sql<ScoredMemory>`
    with q as (
      select case when position('!' in w::text) > 0 then w
                  else replace(w::text, ' & ', ' | ')::tsquery end as query
      from websearch_to_tsquery('english', ${s.query}) as w
    )
    select ${COLUMNS}, ts_rank_cd(m.tsv, q.query, 32) as score
    from q, memories m
    where ${where} and m.tsv @@ q.query
    order by score desc, m.create_time desc, m.id
    limit ${candidates}`.execute(db);

  let vector: ScoredMemory[] = [];
  if (s.embedding) {
    const v = vectorText(s.embedding.vector);
    const r = await sql<ScoredMemory>`
      select ${COLUMNS}, 1 - (e.embedding <=> ${v}::vector) as score
      from memory_embeddings e
      join memories m on m.id = e.memory_id and m.tenant_id = e.tenant_id
      where ${where} and e.tenant_id = ${tenantId} and e.model = ${s.embedding.model}
        and vector_dims(e.embedding) = ${s.embedding.vector.length}
      order by e.embedding <=> ${v}::vector, m.id
      limit ${candidates}`.execute(db);
    vector = r.rows;
  }

  const rows = new Map<string, MemoryFields>();
  const ranked = (list: readonly ScoredMemory[]) => {
    const scores = new Map<string, number>();
    for (const { score, ...row } of list) {
      rows.set(row.id, row);
      const x = Number(score);
      scores.set(row.id, Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0);
    }
    return { ids: list.map((r) => r.id), scores };
  };
  const fused = fuseRankings([ranked(term.rows), ranked(vector)]);
  return fused.slice(0, s.limit).map((h) => ({
    memory: rows.get(h.id)!,
    similarity: h.similarity,
    termSimilarity: h.signals[0] ?? 0,
    vectorSimilarity: h.signals[1] ?? 0,
  }));
}
