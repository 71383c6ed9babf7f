import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { ReferenceChunkSchema, type ReferenceChunk } from "../../gen/parley/v1/common_pb.js";
import {
  DocumentSchema,
  DocumentStatus,
  KnowledgeBaseSchema,
  type Document,
  type KnowledgeBase,
  type KnowledgeService,
} from "../../gen/parley/v1/knowledge_pb.js";
import type { ServiceDeps } from "../app.js";
import { callerOf } from "../auth/caller.js";
import type { Kysely, Transaction } from "kysely";
import type { Database, DocumentRow, DocumentStatusText } from "../db/schema.js";
import { invalidArgument, notFound } from "../errors.js";
import { requireId } from "../ids.js";
import { CHUNKING } from "../knowledge/chunk.js";
import type { Ingestor } from "../knowledge/ingest.js";
import { DocumentParseError, resolveMimeType, type DocumentSource } from "../knowledge/parse.js";
import type { KnowledgeHit, KnowledgeSearch } from "../knowledge/search.js";
import { newId } from "../ids.js";
import { pageSize } from "../pagination.js";
import {
  deleteDocument,
  deleteKnowledgeBase,
  existingKnowledgeBaseIds,
  findDocument,
  findKnowledgeBase,
  insertKnowledgeBase,
  listDocuments,
  listKnowledgeBases,
  type KnowledgeBaseWithCount,
} from "../repos/knowledge.js";
import { structIn, structOut, ts } from "./convert.js";
import { checkAll, checkMetadata, checkText, LIMITS } from "./limits.js";

/** Limits of knowledge requests (knowledge.proto). */
export const KNOWLEDGE_LIMITS = {
  documentBytes: 16 * 1024 * 1024,
  queryChars: 4096,
  searchKnowledgeBases: 16,
  maxTopK: 100,
  defaultTopK: 8,
} as const;

const CURSOR_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

const statusToProto: Record<DocumentStatusText, DocumentStatus> = {
  processing: DocumentStatus.PROCESSING,
  ready: DocumentStatus.READY,
  failed: DocumentStatus.FAILED,
};

/** The proto KnowledgeBase of a stored row. */
export function knowledgeBaseToProto(row: KnowledgeBaseWithCount): KnowledgeBase {
  return create(KnowledgeBaseSchema, {
    id: row.id,
    name: row.name,
    description: row.description,
    chunkSize: row.chunk_size,
    chunkOverlap: row.chunk_overlap,
    metadata: structOut(row.metadata),
    documentCount: BigInt(row.document_count),
    createTime: ts(row.create_time),
    updateTime: ts(row.update_time),
  });
}

/** The proto Document of a stored row. */
export function documentToProto(row: DocumentRow): Document {
  return create(DocumentSchema, {
    id: row.id,
    knowledgeBaseId: row.knowledge_base_id,
    name: row.name,
    mimeType: row.mime_type,
    status: statusToProto[row.status],
    error: row.error,
    progress: row.status === "ready" ? 1 : Number(row.progress),
    sizeBytes: BigInt(row.size_bytes),
    chunkCount: BigInt(row.chunk_count),
    metadata: structOut(row.metadata),
    createTime: ts(row.create_time),
    updateTime: ts(row.update_time),
  });
}

/** A search hit as a proto ReferenceChunk (citation 0: not part of an answer). */
export function hitToProto(h: KnowledgeHit, citation = 0): ReferenceChunk {
  return create(ReferenceChunkSchema, {
    chunkId: h.chunk_id,
    content: h.content,
    documentId: h.document_id,
    documentName: h.document_name,
    knowledgeBaseId: h.knowledge_base_id,
    similarity: h.similarity,
    termSimilarity: h.term_similarity,
    vectorSimilarity: h.vector_similarity,
    citation,
  });
}

function decodeCursor(deps: ServiceDeps, query: string, token: string) {
  if (token === "") return undefined;
  const keyset = deps.pageTokens.decode(query, token);
  const [time, id] = keyset;
  if (keyset.length !== 2 || typeof time !== "string" || !CURSOR_TIME.test(time) || typeof id !== "string") {
    throw invalidArgument("page_token", "is not a page token of this query", "INVALID_PAGE_TOKEN");
  }
  return { createTime: time, id };
}

function isForeignKeyViolation(err: unknown): boolean {
  return (err as { code?: unknown } | undefined)?.code === "23503";
}

/** Checks SearchKnowledge-style arguments shared with Ask's retrieval settings. */
export function checkTopK(field: string, topK: number): number {
  if (!Number.isInteger(topK) || topK < 0 || topK > KNOWLEDGE_LIMITS.maxTopK) {
    throw invalidArgument(field, `must be between 1 and ${KNOWLEDGE_LIMITS.maxTopK} (0: the default, ${KNOWLEDGE_LIMITS.defaultTopK})`, "OUT_OF_RANGE");
  }
  return topK === 0 ? KNOWLEDGE_LIMITS.defaultTopK : topK;
}

/** Checks a similarity threshold (0 to 1). */
export function checkThreshold(field: string, value: number): number {
  if (!Number.isFinite(value) || value < 0 || value > 1) throw invalidArgument(field, "must be between 0 and 1", "OUT_OF_RANGE");
  return value;
}

export interface KnowledgeServiceDeps extends ServiceDeps {
  readonly ingestor: Ingestor;
  readonly search: KnowledgeSearch;
}

/** KnowledgeService: knowledge bases, their documents, and hybrid search. */
export function createKnowledgeService(deps: KnowledgeServiceDeps): ServiceImpl<typeof KnowledgeService> {
  const { db, ingestor, search } = deps;
  return {
    async createKnowledgeBase(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const kb = req.knowledgeBase;
      if (!kb) throw invalidArgument("knowledge_base", "is required", "REQUIRED");
      const size = kb.chunkSize === 0 ? CHUNKING.defaultSize : kb.chunkSize;
      const overlap = kb.chunkOverlap ?? Math.min(CHUNKING.defaultOverlap, Math.floor(size / 2));
      const metadata = structIn(kb.metadata);
      checkAll(
        () => checkText("knowledge_base.name", kb.name, LIMITS.nameChars, true),
        () => checkText("knowledge_base.description", kb.description, LIMITS.descriptionChars),
        () => {
          if (size < CHUNKING.minSize || size > CHUNKING.maxSize) {
            throw invalidArgument("knowledge_base.chunk_size", `must be between ${CHUNKING.minSize} and ${CHUNKING.maxSize} (0: the default)`, "OUT_OF_RANGE");
          }
        },
        () => {
          if (overlap < 0 || overlap > Math.floor(size / 2)) {
            throw invalidArgument("knowledge_base.chunk_overlap", "must be between 0 and half the chunk size", "OUT_OF_RANGE");
          }
        },
        () => checkMetadata("knowledge_base.metadata", metadata),
      );
      const row = await insertKnowledgeBase(db, {
        id: newId(),
        tenant_id: tenantId,
        name: kb.name,
        description: kb.description,
        chunk_size: size,
        chunk_overlap: overlap,
        metadata,
      });
      return { knowledgeBase: knowledgeBaseToProto(row) };
    },

    async getKnowledgeBase(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("knowledge_base_id", req.knowledgeBaseId);
      const row = await findKnowledgeBase(db, tenantId, id);
      if (!row) throw notFound("knowledge_base", id);
      return { knowledgeBase: knowledgeBaseToProto(row) };
    },

    async listKnowledgeBases(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const size = pageSize(req.pageSize);
      const query = JSON.stringify(["knowledge_bases", tenantId]);
      const after = decodeCursor(deps, query, req.pageToken);
      const rows = await listKnowledgeBases(db, tenantId, size + 1, after);
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      return {
        knowledgeBases: page.map(knowledgeBaseToProto),
        nextPageToken: rows.length > size && last ? deps.pageTokens.encode(query, [last.cursor, last.id]) : "",
      };
    },

    async deleteKnowledgeBase(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("knowledge_base_id", req.knowledgeBaseId);
      if (!(await deleteKnowledgeBase(db, tenantId, id))) throw notFound("knowledge_base", id);
      return {};
    },

    async createDocument(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const kbId = requireId("knowledge_base_id", req.knowledgeBaseId);
      const doc = req.document;
      if (!doc) throw invalidArgument("document", "is required", "REQUIRED");
      const metadata = structIn(doc.metadata);
      checkAll(
        () => checkText("document.name", doc.name, LIMITS.nameChars, true),
        () => checkMetadata("document.metadata", metadata),
        () => checkText("mime_type", req.mimeType, LIMITS.nameChars),
      );
      let source: DocumentSource;
      let sizeBytes: number;
      let field: "text" | "content";
      switch (req.source.case) {
        case "text": {
          field = "text";
          sizeBytes = Buffer.byteLength(req.source.value, "utf8");
          source = { kind: "text", text: req.source.value };
          break;
        }
        case "content": {
          field = "content";
          sizeBytes = req.source.value.byteLength;
          source = { kind: "bytes", bytes: req.source.value };
          break;
        }
        default:
          throw invalidArgument("source", "text or content is required", "REQUIRED");
      }
      if (sizeBytes === 0) throw invalidArgument(field, "must not be empty", "REQUIRED");
      if (sizeBytes > KNOWLEDGE_LIMITS.documentBytes) {
        throw invalidArgument(field, `is ${sizeBytes} bytes; at most ${KNOWLEDGE_LIMITS.documentBytes}`, "TOO_LARGE");
      }
      let mimeType;
      try {
        mimeType = resolveMimeType(req.mimeType, doc.name, source);
      } catch (err) {
        if (err instanceof DocumentParseError) throw invalidArgument(req.mimeType !== "" ? "mime_type" : field, err.message, err.reason);
        throw err;
      }
      const kb = await findKnowledgeBase(db, tenantId, kbId);
      if (!kb) throw notFound("knowledge_base", kbId);
      try {
        const row = await ingestor.add({ tenantId, knowledgeBase: kb, name: doc.name, mimeType, source, sizeBytes, metadata });
        return { document: documentToProto(row) };
      } catch (err) {
        if (err instanceof DocumentParseError) throw invalidArgument(field, err.message, err.reason);
        // The knowledge base was deleted while the document was being added.
        if (isForeignKeyViolation(err)) throw notFound("knowledge_base", kbId);
        throw err;
      }
    },

    async getDocument(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("document_id", req.documentId);
      let row = await findDocument(db, tenantId, id);
      if (!row) throw notFound("document", id);
      if (row.status === "processing") {
        await ingestor.failAbandoned({ tenantId, id });
        row = (await findDocument(db, tenantId, id)) ?? row;
      }
      return { document: documentToProto(row) };
    },

    async listDocuments(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const kbId = requireId("knowledge_base_id", req.knowledgeBaseId);
      const size = pageSize(req.pageSize);
      const query = JSON.stringify(["documents", tenantId, kbId]);
      const after = decodeCursor(deps, query, req.pageToken);
      if (!(await findKnowledgeBase(db, tenantId, kbId))) throw notFound("knowledge_base", kbId);
      const rows = await listDocuments(db, tenantId, kbId, size + 1, after);
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      return {
        documents: page.map(documentToProto),
        nextPageToken: rows.length > size && last ? deps.pageTokens.encode(query, [last.cursor, last.id]) : "",
      };
    },

    async deleteDocument(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("document_id", req.documentId);
      if (!(await deleteDocument(db, tenantId, id))) throw notFound("document", id);
      return {};
    },

    async searchKnowledge(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const ids = await checkKnowledgeBaseIds(db, tenantId, "knowledge_base_ids", req.knowledgeBaseIds, true);
      let topK: number = KNOWLEDGE_LIMITS.defaultTopK;
      let threshold = 0;
      checkAll(
        () => checkQuery("query", req.query),
        () => {
          topK = checkTopK("top_k", req.topK);
        },
        () => {
          threshold = checkThreshold("similarity_threshold", req.similarityThreshold);
        },
      );
      const hits = await search.search(tenantId, ids, req.query, { topK, threshold, signal: ctx.signal });
      return { chunks: hits.map((h) => hitToProto(h)) };
    },
  };
}

/** A search query: 1 to 4,096 characters, not only whitespace. */
export function checkQuery(field: string, query: string): void {
  checkText(field, query, KNOWLEDGE_LIMITS.queryChars, true);
}

/**
 * Checks a list of knowledge base ids (at most 16, UUIDs, no duplicates,
 * each a knowledge base of the tenant: an unknown one is NOT_FOUND) and
 * returns them normalized.
 */
export async function checkKnowledgeBaseIds(
  db: Kysely<Database> | Transaction<Database>,
  tenantId: string,
  field: string,
  ids: readonly string[],
  required: boolean,
): Promise<string[]> {
  if (required && ids.length === 0) throw invalidArgument(field, "is required", "REQUIRED");
  if (ids.length > KNOWLEDGE_LIMITS.searchKnowledgeBases) {
    throw invalidArgument(field, `has ${ids.length} ids; at most ${KNOWLEDGE_LIMITS.searchKnowledgeBases}`, "TOO_MANY");
  }
  const normalized = ids.map((id, i) => requireId(`${field}[${i}]`, id));
  const unique = [...new Set(normalized)];
  const found = await existingKnowledgeBaseIds(db, tenantId, unique);
  const missing = unique.find((id) => !found.has(id));
  if (missing) throw notFound("knowledge_base", missing);
  return unique;
}
