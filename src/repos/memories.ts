import { sql, type Kysely, type Transaction } from "kysely";
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
  readonly memory: MemoryRow;
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

function filtered<Q extends { where: (...args: any[]) => Q }>(q: Q, tenantId: string, f: MemoryFilter): Q {
  let out = q.where("tenant_id", "=", tenantId);
  if (f.userId !== undefined) out = out.where("user_id", "=", f.userId);
  if (f.sessionId !== undefined) out = out.where("session_id", "=", f.sessionId);
  if (f.type !== undefined) out = out.where("type", "=", f.type);
  return out;
}

/** One page of the tenant's memories matching the filter, newest first, after the (create_time, id) cursor. */
export async function listMemories(
  db: Db,
  tenantId: string,
  filter: MemoryFilter,
  limit: number,
  after?: { readonly createTime: string; readonly id: string },
): Promise<MemoryWithCursor[]> {
  let q = filtered(db.selectFrom("memories").selectAll().select(cursorOf.as("cursor")), tenantId, filter);
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
  const r = await filtered(db.deleteFrom("memories"), tenantId, filter).executeTakeFirst();
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
  const scope = (q: any) => {
    let out = q
      .where("m.tenant_id", "=", tenantId)
      .where("m.user_id", "=", s.userId)
      .where("m.quality", ">=", s.minQuality);
    if (s.type !== undefined) out = out.where("m.type", "=", s.type);
    if (s.sessionId !== undefined) {
      const sessionId = s.sessionId;
      out = out.where((eb: any) => eb.or([eb("m.type", "=", "long"), eb("m.session_id", "=", sessionId)]));
    }
    return out;
  };
  // websearch_to_tsquery ANDs plain terms; with no negation in the query the
  // ANDs become ORs (phrases, `<->`, stay phrases), and ts_rank_cd ranks
  // memories matching more of the terms first.
  const tsquery = sql`(select case when strpos(w::text, '!') > 0 then w else replace(w::text, ' & ', ' | ')::tsquery end
    from websearch_to_tsquery('english', ${s.query}) as w)`;
  const termRows: (MemoryRow & { score: number })[] = await scope(
    db
      .selectFrom("memories as m")
      .selectAll("m")
      .select(sql<number>`ts_rank_cd(m.tsv, ${tsquery}, 32)`.as("score"))
      .where(sql<boolean>`m.tsv @@ ${tsquery}`),
  )
    .orderBy("score", "desc")
    .orderBy("m.create_time", "desc")
    .limit(candidates)
    .execute();

  let vectorRows: (MemoryRow & { score: number })[] = [];
  if (s.embedding) {
    const v = vectorText(s.embedding.vector);
    vectorRows = await scope(
      db
        .selectFrom("memories as m")
        .innerJoin("memory_embeddings as e", (j: any) => j.onRef("e.memory_id", "=", "m.id").onRef("e.tenant_id", "=", "m.tenant_id"))
        .selectAll("m")
        .select(sql<number>`1 - (e.embedding <=> ${v}::vector)`.as("score"))
        .where("e.model", "=", s.embedding.model)
        .where(sql<boolean>`vector_dims(e.embedding) = ${s.embedding.vector.length}`),
    )
      .orderBy(sql`e.embedding <=> ${v}::vector`)
      .limit(candidates)
      .execute();
  }

  const rows = new Map<string, MemoryRow>();
  const ranked = (list: (MemoryRow & { score: number })[]) => {
    const scores = new Map<string, number>();
    for (const { score, ...row } of list) {
      rows.set(row.id, row as MemoryRow);
      const x = Number(score);
      scores.set(row.id, Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0);
    }
    return { ids: list.map((r) => r.id), scores };
  };
  const fused = fuseRankings([ranked(termRows), ranked(vectorRows)]);
  return fused.slice(0, s.limit).map((h) => ({
    memory: rows.get(h.id)!,
    similarity: h.similarity,
    termSimilarity: h.signals[0] ?? 0,
    vectorSimilarity: h.signals[1] ?? 0,
  }));
}
