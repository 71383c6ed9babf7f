import type { Kysely } from "kysely";
import type { Database, ReferenceChunkJson } from "../db/schema.js";
import type { Logger } from "../log.js";
import { hasVectorTable, searchFullText, searchVector, type ChunkHit } from "../repos/knowledge.js";
import type { Embedder } from "./embeddings.js";

/** Reciprocal rank fusion's constant (Cormack et al.): damps the weight of the very first ranks. */
export const RRF_K = 60;

/** A search hit: a chunk with its fused and per-method similarities (all 0..1, never NaN). */
export type KnowledgeHit = Omit<ReferenceChunkJson, "citation"> & { readonly ordinal: number };

/** Searches knowledge bases: full text always, plus vectors where an embedder and pgvector are available. */
export interface KnowledgeSearch {
  search(
    tenantId: string,
    knowledgeBaseIds: readonly string[],
    query: string,
    options: { readonly topK: number; readonly threshold: number; readonly signal?: AbortSignal },
  ): Promise<KnowledgeHit[]>;
  /** The embedder used for chunks, when vector search is on (checked once). */
  vectorEmbedder(): Promise<Embedder | undefined>;
}

/** Creates the hybrid search of a database. */
export function createKnowledgeSearch(db: Kysely<Database>, log: Logger, embedder: Embedder | undefined): KnowledgeSearch {
  let vectors: Promise<Embedder | undefined> | undefined;
  const vectorEmbedder = () =>
    (vectors ??= (async () => {
      if (!embedder) return undefined;
      if (await hasVectorTable(db)) return embedder;
      log.warn(
        { embeddingModel: embedder.model },
        "an embedding model is configured but the database has no pgvector extension: knowledge is searched by full text only",
      );
      return undefined;
    })());

  return {
    vectorEmbedder,
    async search(tenantId, knowledgeBaseIds, query, { topK, threshold, signal }) {
      if (knowledgeBaseIds.length === 0) return [];
      // Each method proposes more candidates than asked for, so that fusion can promote a chunk both rank well.
      const candidates = Math.min(Math.max(topK * 4, 20), 400);
      const emb = await vectorEmbedder();
      const [text, vector] = await Promise.all([
        searchFullText(db, tenantId, knowledgeBaseIds, query, candidates),
        emb
          ? emb
              .embed([query], signal)
              .then(([v]) => (v && v.length > 0 ? searchVector(db, tenantId, knowledgeBaseIds, emb.model, v, candidates) : []))
              .catch((err: unknown) => {
                if (signal?.aborted) throw err;
                // The embedding service failing degrades the search to full text; it does not fail it.
                log.warn({ err, embeddingModel: emb.model }, "embedding the query failed; searching by full text only");
                return [] as ChunkHit[];
              })
          : Promise.resolve<ChunkHit[]>([]),
      ]);
      return fuse([text, ...(emb ? [vector] : [])], topK, threshold);
    },
  };
}

/**
 * Reciprocal rank fusion of ranked lists (lists[0]: full text, lists[1]:
 * vectors). A chunk's fused score is the sum of 1/(RRF_K + rank) over the
 * lists it is in, normalized by the best possible score so that `similarity`
 * is 1 for a chunk ranked first by every method.
 */
export function fuse(lists: readonly (readonly ChunkHit[])[], topK: number, threshold: number): KnowledgeHit[] {
  const byId = new Map<string, { hit: ChunkHit; rrf: number; term: number; vector: number }>();
  lists.forEach((list, method) => {
    list.forEach((hit, i) => {
      const entry = byId.get(hit.chunk_id) ?? { hit, rrf: 0, term: 0, vector: 0 };
      entry.rrf += 1 / (RRF_K + i + 1);
      if (method === 0) entry.term = hit.score;
      else entry.vector = hit.score;
      byId.set(hit.chunk_id, entry);
    });
  });
  const best = lists.length / (RRF_K + 1);
  return [...byId.values()]
    .map((e) => ({
      chunk_id: e.hit.chunk_id,
      content: e.hit.content,
      document_id: e.hit.document_id,
      document_name: e.hit.document_name,
      knowledge_base_id: e.hit.knowledge_base_id,
      ordinal: e.hit.ordinal,
      similarity: best > 0 ? Math.min(1, e.rrf / best) : 0,
      term_similarity: e.term,
      vector_similarity: e.vector,
    }))
    .sort((a, b) => b.similarity - a.similarity || b.term_similarity - a.term_similarity || (a.chunk_id < b.chunk_id ? -1 : 1))
    .filter((h) => h.similarity >= threshold)
    .slice(0, topK);
}
