import { inBackground } from "../db/priority.js";
import type { Kysely } from "kysely";
import type { Database, DocumentRow, JsonObject, KnowledgeBaseRow } from "../db/schema.js";
import { newId } from "../ids.js";
import type { Logger } from "../log.js";
import {
  failAbandonedDocuments,
  insertChunks,
  insertDocument,
  markDocumentFailed,
  markDocumentReady,
  reportProgress,
  type NewChunk,
} from "../repos/knowledge.js";
import { chunkDocument, type TextChunk } from "./chunk.js";
import type { Embedder } from "./embeddings.js";
import { DocumentParseError, parseDocument, type DocumentSource, type SupportedMimeType } from "./parse.js";

/** A document ingestion has stopped reporting progress for this long: its replica is gone. */
export const ABANDONED_AFTER_MS = 60_000;
const HEARTBEAT_MS = 10_000;
/** Chunks embedded and stored per transaction of a background ingestion. */
const BATCH = 32;

/** A document to add, validated by the service. */
export interface NewDocument {
  readonly tenantId: string;
  readonly knowledgeBase: KnowledgeBaseRow;
  readonly name: string;
  readonly mimeType: SupportedMimeType;
  readonly source: DocumentSource;
  readonly sizeBytes: number;
  readonly metadata: JsonObject;
}

/** Adds documents to knowledge bases: parse, chunk, embed, index. */
export interface Ingestor {
  /**
   * Stores the document and ingests it. A small document is ingested before
   * this returns (READY, or FAILED with nothing searchable); a large one is
   * returned PROCESSING and ingested in the background.
   */
  add(doc: NewDocument): Promise<DocumentRow>;
  /** Marks FAILED a document whose ingesting replica stopped (or all such documents). */
  failAbandoned(only?: { tenantId: string; id: string }): Promise<void>;
  /** Stops background ingestions, marking their documents FAILED, and waits for them. */
  close(): Promise<void>;
}

export interface IngestorDeps {
  readonly db: Kysely<Database>;
  readonly log: Logger;
  /** The embedder when vector search is on. */
  readonly embedder: () => Promise<Embedder | undefined>;
  readonly syncMaxBytes: number;
  readonly replicaId: string;
}

/** Creates the ingestor of this process. */
export function createIngestor(deps: IngestorDeps): Ingestor {
  const { db, log } = deps;
  const stop = new AbortController();
  const running = new Set<Promise<void>>();

  async function prepare(doc: NewDocument, signal: AbortSignal, progress: (p: number) => void): Promise<TextChunk[]> {
    const parsed = await parseDocument(doc.mimeType, doc.source);
    progress(0.1);
    const chunks = await chunkDocument(parsed.text, {
      size: doc.knowledgeBase.chunk_size,
      overlap: doc.knowledgeBase.chunk_overlap,
      markdown: parsed.markdown,
      signal,
    });
    if (chunks.length === 0) throw new DocumentParseError("the document has no text", "EMPTY_DOCUMENT");
    progress(0.2);
    return chunks;
  }

  async function embedAll(chunks: readonly TextChunk[], embedder: Embedder | undefined, signal: AbortSignal) {
    const vectors = embedder ? await embedder.embed(chunks.map((c) => c.content), signal) : [];
    return chunks.map(
      (c, i): NewChunk => ({
        id: newId(),
        ordinal: i,
        content: c.content,
        tokenCount: c.tokens,
        ...(vectors[i] ? { embedding: vectors[i] } : {}),
      }),
    );
  }

  /** Small documents: everything in one transaction, so the document is never visible half indexed. */
  async function addNow(doc: NewDocument): Promise<DocumentRow> {
    const id = newId();
    let rows: NewChunk[];
    let embedderId: string | undefined;
    try {
      const chunks = await prepare(doc, stop.signal, () => {});
      const embedder = await deps.embedder();
      embedderId = embedder?.model;
      rows = await embedAll(chunks, embedder, stop.signal);
    } catch (err) {
      if (err instanceof DocumentParseError) throw err;
      // The input was fine but indexing failed (e.g. the embedding service): keep a FAILED record saying why.
      log.warn({ err, document: doc.name }, "ingesting a document failed");
      return db.transaction().execute(async (tx) => {
        await insertDocument(tx, { ...base(doc, id), status: "processing", ingest_owner: null });
        return (await markDocumentFailed(tx, doc.tenantId, id, describe(err)))!;
      });
    }
    return db.transaction().execute(async (tx) => {
      await insertDocument(tx, { ...base(doc, id), status: "processing", ingest_owner: deps.replicaId });
      await insertChunks(tx, { tenantId: doc.tenantId, knowledgeBaseId: doc.knowledgeBase.id, documentId: id }, rows, embedderId);
      return (await markDocumentReady(tx, doc.tenantId, id))!;
    });
  }

  /** Large documents: stored PROCESSING, then indexed batch by batch with progress. */
  async function addInBackground(doc: NewDocument): Promise<DocumentRow> {
    const id = newId();
    const row = await insertDocument(db, { ...base(doc, id), status: "processing", ingest_owner: deps.replicaId });
    let progress = 0;
    const heartbeat = setInterval(() => {
      inBackground(() => reportProgress(db, doc.tenantId, id, progress)).catch((err: unknown) =>
        log.warn({ err, documentId: id }, "reporting progress failed"),
      );
    }, HEARTBEAT_MS);
    heartbeat.unref();
    // Background priority: requests take the pool's connections first (see db/priority.ts).
    const task = inBackground(async () => {
      try {
        const chunks = await prepare(doc, stop.signal, (p) => {
          progress = p;
        });
        await reportProgress(db, doc.tenantId, id, progress);
        const embedder = await deps.embedder();
        for (let i = 0; i < chunks.length; i += BATCH) {
          stop.signal.throwIfAborted();
          const batch = chunks.slice(i, i + BATCH);
          const rows = (await embedAll(batch, embedder, stop.signal)).map((r, j) => ({ ...r, ordinal: i + j }));
          progress = 0.2 + (0.8 * Math.min(i + BATCH, chunks.length)) / chunks.length;
          const alive = await db.transaction().execute(async (tx) => {
            // Deleted (or failed by a sweep) meanwhile: stop quietly.
            if (!(await reportProgress(tx, doc.tenantId, id, Math.min(progress, 0.99)))) return false;
            await insertChunks(tx, { tenantId: doc.tenantId, knowledgeBaseId: doc.knowledgeBase.id, documentId: id }, rows, embedder?.model);
            return true;
          });
          if (!alive) return;
        }
        await markDocumentReady(db, doc.tenantId, id);
      } catch (err) {
        const why = stop.signal.aborted ? "ingestion was interrupted (the server stopped); add the document again" : describe(err);
        if (!(err instanceof DocumentParseError) && !stop.signal.aborted) log.warn({ err, documentId: id }, "ingesting a document failed");
        await markDocumentFailed(db, doc.tenantId, id, why).catch((e: unknown) =>
          log.warn({ err: e, documentId: id }, "could not mark a document failed; the abandoned-ingestion sweep will"),
        );
      } finally {
        clearInterval(heartbeat);
      }
    });
    running.add(task);
    void task.finally(() => running.delete(task));
    return row;
  }

  return {
    add(doc) {
      return doc.sizeBytes > deps.syncMaxBytes ? addInBackground(doc) : addNow(doc);
    },
    async failAbandoned(only) {
      const n = await failAbandonedDocuments(db, ABANDONED_AFTER_MS, only);
      if (n > 0 && !only) log.warn({ documents: n }, "marked documents whose ingestion was interrupted as FAILED");
    },
    async close() {
      stop.abort();
      await Promise.allSettled([...running]);
    },
  };
}

function base(doc: NewDocument, id: string) {
  return {
    id,
    tenant_id: doc.tenantId,
    knowledge_base_id: doc.knowledgeBase.id,
    name: doc.name,
    mime_type: doc.mimeType,
    size_bytes: doc.sizeBytes,
    metadata: doc.metadata,
  };
}

/** A failure as a sentence for Document.error. */
function describe(err: unknown): string {
  if (err instanceof DocumentParseError) return err.message;
  const message = err instanceof Error ? err.message : String(err);
  return `indexing failed: ${message.slice(0, 500)}`;
}
