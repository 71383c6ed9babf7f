import { Code, type Client } from "@connectrpc/connect";
import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DocumentStatus, KnowledgeService, type Document } from "../../gen/parley/v1/knowledge_pb.js";
import type { Database } from "../../src/db/schema.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { expectRejected, failure, fieldsOf, reasonOf } from "../helpers/errors.js";
import { makePdf } from "../helpers/pdf.js";

/** Every row of the knowledge tables, to prove a rejected request left nothing behind. */
async function knowledgeRows(db: Kysely<Database>): Promise<string> {
  const [kbs, docs, chunks] = await Promise.all([
    db.selectFrom("knowledge_bases").selectAll().orderBy("id").execute(),
    db.selectFrom("documents").selectAll().orderBy("id").execute(),
    db.selectFrom("chunks").select(["id", "document_id", "content"]).orderBy("id").execute(),
  ]);
  return JSON.stringify({ kbs, docs, chunks });
}

async function chunkCount(db: Kysely<Database>, documentId: string): Promise<number> {
  const r = await db.selectFrom("chunks").select(sql<string>`count(*)`.as("n")).where("document_id", "=", documentId).executeTakeFirstOrThrow();
  return Number(r.n);
}

const MARKDOWN = `# Parley handbook

## Installing

Run npm install and then npm start. The server listens on port 8080.

## Configuring

Set DATABASE_URL to use a Postgres server instead of the embedded database.
`;

describe.each(backends())("KnowledgeService on %s", (backend) => {
  let t: TestApp;
  let kb: Client<typeof KnowledgeService>;
  let db: Kysely<Database>;

  beforeAll(async () => {
    t = await createTestApp({ backend });
    kb = t.client(KnowledgeService);
    db = t.app.db;
  });
  afterAll(async () => {
    await t?.close();
  });

  const rejects = (call: () => Promise<unknown>, code: Code, expected: { reason?: string; field?: string } = {}) =>
    expectRejected(() => knowledgeRows(db), call, code, expected);

  const newKb = async (name = "Docs", extra: { chunkSize?: number; chunkOverlap?: number } = {}) =>
    (await kb.createKnowledgeBase({ knowledgeBase: { name, ...extra } })).knowledgeBase!;

  it("creates, gets, lists (paged) and deletes knowledge bases, with chunking defaults", async () => {
    const a = await newKb("A");
    expect([a.chunkSize, a.chunkOverlap, a.documentCount]).toEqual([512, 64, 0n]);
    const b = await newKb("B", { chunkSize: 100, chunkOverlap: 0 });
    expect([b.chunkSize, b.chunkOverlap]).toEqual([100, 0]);
    const small = await newKb("C", { chunkSize: 64 });
    // The default overlap never exceeds half the chunk size.
    expect(small.chunkOverlap).toBe(32);
    expect((await kb.getKnowledgeBase({ knowledgeBaseId: a.id })).knowledgeBase).toEqual(a);

    const first = await kb.listKnowledgeBases({ pageSize: 2 });
    expect(first.knowledgeBases.map((k) => k.name)).toEqual(["C", "B"]);
    const second = await kb.listKnowledgeBases({ pageSize: 2, pageToken: first.nextPageToken });
    expect(second.knowledgeBases.map((k) => k.name)).toContain("A");

    await kb.deleteKnowledgeBase({ knowledgeBaseId: b.id });
    expect((await failure(kb.getKnowledgeBase({ knowledgeBaseId: b.id }))).code).toBe(Code.NotFound);
    expect((await failure(kb.deleteKnowledgeBase({ knowledgeBaseId: b.id }))).code).toBe(Code.NotFound);
  });

  it("rejects invalid knowledge bases naming the field", async () => {
    await rejects(() => kb.createKnowledgeBase({ knowledgeBase: { name: "" } }), Code.InvalidArgument, { field: "knowledge_base.name" });
    await rejects(() => kb.createKnowledgeBase({ knowledgeBase: { name: "x", chunkSize: 10 } }), Code.InvalidArgument, {
      field: "knowledge_base.chunk_size",
    });
    await rejects(() => kb.createKnowledgeBase({ knowledgeBase: { name: "x", chunkSize: 100, chunkOverlap: 51 } }), Code.InvalidArgument, {
      field: "knowledge_base.chunk_overlap",
    });
    await rejects(() => kb.getKnowledgeBase({ knowledgeBaseId: "nope" }), Code.InvalidArgument, { field: "knowledge_base_id" });
  });

  it("ingests Markdown, HTML, text and PDF documents: READY, chunked, listed, searchable; deleting removes the chunks", async () => {
    const base = await newKb("Handbook", { chunkSize: 64, chunkOverlap: 8 });
    const md = (await kb.createDocument({ knowledgeBaseId: base.id, document: { name: "handbook.md" }, source: { case: "text", value: MARKDOWN } })).document!;
    expect([md.status, md.mimeType, md.progress, md.error]).toEqual([DocumentStatus.READY, "text/markdown", 1, ""]);
    // One chunk per section: the headings split the document.
    expect(md.chunkCount).toBe(2n);
    const contents = (await db.selectFrom("chunks").select("content").where("document_id", "=", md.id).orderBy("ordinal").execute()).map(
      (c) => c.content,
    );
    expect(contents[0]).toContain("## Installing");
    expect(contents[1]).toMatch(/^## Configuring/);

    const html = (
      await kb.createDocument({
        knowledgeBaseId: base.id,
        document: { name: "page.html" },
        source: { case: "content", value: new TextEncoder().encode("<html><body><h1>Glossary</h1><p>A <b>tenant</b> owns everything.</p><script>x()</script></body></html>") },
      })
    ).document!;
    expect([html.status, html.mimeType]).toEqual([DocumentStatus.READY, "text/html"]);
    const htmlChunk = await db.selectFrom("chunks").select("content").where("document_id", "=", html.id).executeTakeFirstOrThrow();
    expect(htmlChunk.content).toContain("# Glossary");
    expect(htmlChunk.content).not.toContain("x()");

    const pdf = (
      await kb.createDocument({
        knowledgeBaseId: base.id,
        document: { name: "manual.pdf", metadata: { lang: "en" } },
        source: { case: "content", value: await makePdf([["The flux capacitor needs 1.21 gigawatts."]]) },
      })
    ).document!;
    expect([pdf.status, pdf.mimeType, pdf.metadata]).toEqual([DocumentStatus.READY, "application/pdf", { lang: "en" }]);

    const txt = (
      await kb.createDocument({ knowledgeBaseId: base.id, document: { name: "notes" }, mimeType: "text/plain; charset=utf-8", source: { case: "content", value: new TextEncoder().encode("# not a heading\n\nplain") } })
    ).document!;
    expect(txt.mimeType).toBe("text/plain");

    const listed = await kb.listDocuments({ knowledgeBaseId: base.id });
    expect(listed.documents.map((d) => d.name)).toEqual(["notes", "manual.pdf", "page.html", "handbook.md"]);
    expect((await kb.getKnowledgeBase({ knowledgeBaseId: base.id })).knowledgeBase!.documentCount).toBe(4n);

    const { chunks } = await kb.searchKnowledge({ knowledgeBaseIds: [base.id], query: "how much power does the flux capacitor need?" });
    expect(chunks[0]).toMatchObject({ documentId: pdf.id, documentName: "manual.pdf", knowledgeBaseId: base.id, citation: 0 });
    for (const c of chunks) {
      for (const x of [c.similarity, c.termSimilarity, c.vectorSimilarity]) expect(x >= 0 && x <= 1).toBe(true);
    }
    expect(chunks[0]!.similarity).toBe(1);

    await kb.deleteDocument({ documentId: pdf.id });
    expect(await chunkCount(db, pdf.id)).toBe(0);
    expect((await failure(kb.getDocument({ documentId: pdf.id }))).code).toBe(Code.NotFound);
    const after = await kb.searchKnowledge({ knowledgeBaseIds: [base.id], query: "flux capacitor gigawatts" });
    expect(after.chunks.map((c) => c.documentId)).not.toContain(pdf.id);

    // Deleting the knowledge base takes its documents and chunks with it.
    await kb.deleteKnowledgeBase({ knowledgeBaseId: base.id });
    expect(await chunkCount(db, md.id)).toBe(0);
    expect((await failure(kb.getDocument({ documentId: md.id }))).code).toBe(Code.NotFound);
  });

  it("rejects unsupported, malformed, empty and oversize documents with the documented codes, leaving nothing behind", async () => {
    const base = await newKb("Strict");
    const create = (init: Parameters<typeof kb.createDocument>[0]) => () => kb.createDocument(init);
    const bytes = (s: string) => new TextEncoder().encode(s);
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "a.docx" }, source: { case: "content", value: bytes("PK\u0003\u0004") } }), Code.InvalidArgument, {
      field: "content",
      reason: "UNSUPPORTED_MEDIA_TYPE",
    });
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "a" }, mimeType: "application/msword", source: { case: "content", value: bytes("x") } }), Code.InvalidArgument, {
      field: "mime_type",
      reason: "UNSUPPORTED_MEDIA_TYPE",
    });
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "blob" }, source: { case: "content", value: new Uint8Array([0, 1, 2, 255, 254, 0, 7]) } }), Code.InvalidArgument, {
      field: "content",
      reason: "UNSUPPORTED_MEDIA_TYPE",
    });
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "broken.pdf" }, source: { case: "content", value: bytes("%PDF-1.4 this is not a pdf") } }), Code.InvalidArgument, {
      field: "content",
      reason: "MALFORMED_DOCUMENT",
    });
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "blank.pdf" }, source: { case: "content", value: await makePdf([[]]) } }), Code.InvalidArgument, {
      field: "content",
      reason: "EMPTY_DOCUMENT",
    });
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "ws.md" }, source: { case: "text", value: " \n\n " } }), Code.InvalidArgument, {
      field: "text",
      reason: "EMPTY_DOCUMENT",
    });
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "big.md" }, source: { case: "text", value: "a".repeat(16 * 1024 * 1024 + 1) } }), Code.InvalidArgument, {
      field: "text",
      reason: "TOO_LARGE",
    });
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "x.md" }, source: { case: undefined } }), Code.InvalidArgument, { field: "source" });
    await rejects(create({ knowledgeBaseId: base.id, document: { name: "" }, source: { case: "text", value: "x" } }), Code.InvalidArgument, { field: "document.name" });
    await rejects(create({ knowledgeBaseId: "0190c0de-0000-7000-8000-000000000000", document: { name: "x.md" }, source: { case: "text", value: "x" } }), Code.NotFound);
  });

  it("validates searches: ids, query, top_k and threshold", async () => {
    const base = await newKb("Search");
    const unknown = "0190c0de-0000-7000-8000-000000000001";
    const search = (init: Parameters<typeof kb.searchKnowledge>[0]) => failure(kb.searchKnowledge(init));
    const cases: [Parameters<typeof kb.searchKnowledge>[0], Code, string | undefined][] = [
      [{ knowledgeBaseIds: [], query: "q" }, Code.InvalidArgument, "knowledge_base_ids"],
      [{ knowledgeBaseIds: ["bad"], query: "q" }, Code.InvalidArgument, "knowledge_base_ids[0]"],
      [{ knowledgeBaseIds: Array.from({ length: 17 }, () => base.id), query: "q" }, Code.InvalidArgument, "knowledge_base_ids"],
      [{ knowledgeBaseIds: [base.id], query: "" }, Code.InvalidArgument, "query"],
      [{ knowledgeBaseIds: [base.id], query: "   " }, Code.InvalidArgument, "query"],
      [{ knowledgeBaseIds: [base.id], query: "q".repeat(4097) }, Code.InvalidArgument, "query"],
      [{ knowledgeBaseIds: [base.id], query: "q", topK: 101 }, Code.InvalidArgument, "top_k"],
      [{ knowledgeBaseIds: [base.id], query: "q", topK: -1 }, Code.InvalidArgument, "top_k"],
      [{ knowledgeBaseIds: [base.id], query: "q", similarityThreshold: 1.5 }, Code.InvalidArgument, "similarity_threshold"],
      [{ knowledgeBaseIds: [base.id, unknown], query: "q" }, Code.NotFound, undefined],
    ];
    for (const [init, code, field] of cases) {
      const err = await search(init);
      expect([Code[err.code], field ? fieldsOf(err) : []]).toEqual([Code[code], field ? [field] : []]);
    }
    // Only stopwords, or nothing matching: no hits, not an error.
    expect((await kb.searchKnowledge({ knowledgeBaseIds: [base.id], query: "the of and" })).chunks).toEqual([]);
  });

  it("ingests large documents in the background with progress; a malformed large one ends FAILED with no chunks", async () => {
    const bg = await createTestApp({ backend, config: { knowledgeSyncMaxBytes: 16 } });
    try {
      const client = bg.client(KnowledgeService);
      const base = (await client.createKnowledgeBase({ knowledgeBase: { name: "Big", chunkSize: 64, chunkOverlap: 0 } })).knowledgeBase!;
      const text = Array.from({ length: 120 }, (_, i) => `## Section ${i}\n\nParagraph ${i} talks about topic number ${i} in some detail.`).join("\n\n");
      const created = (await client.createDocument({ knowledgeBaseId: base.id, document: { name: "big.md" }, source: { case: "text", value: text } })).document!;
      expect(created.status).toBe(DocumentStatus.PROCESSING);
      const done = await waitForDocument(client, created.id);
      expect([done.status, done.progress, Number(done.chunkCount)]).toEqual([DocumentStatus.READY, 1, 120]);

      const broken = (
        await client.createDocument({ knowledgeBaseId: base.id, document: { name: "broken.pdf" }, source: { case: "content", value: new TextEncoder().encode("%PDF-1.7 garbage garbage") } })
      ).document!;
      expect(broken.status).toBe(DocumentStatus.PROCESSING);
      const failed = await waitForDocument(client, broken.id);
      expect([failed.status, failed.chunkCount, failed.error !== ""]).toEqual([DocumentStatus.FAILED, 0n, true]);
      expect(await chunkCount(bg.app.db, broken.id)).toBe(0);
    } finally {
      await bg.close();
    }
  });

  it("with an embedding model: vector similarity where pgvector exists (PGlite), full text alone where it does not", async () => {
    const hybrid = await createTestApp({ backend, env: { PARLEY_EMBEDDING_MODEL: "builtin:hash" } });
    try {
      const client = hybrid.client(KnowledgeService);
      const id = (await client.createKnowledgeBase({ knowledgeBase: { name: "Vectors" } })).knowledgeBase!.id;
      const doc = (await client.createDocument({ knowledgeBaseId: id, document: { name: "h.md" }, source: { case: "text", value: MARKDOWN } })).document!;
      expect(doc.status).toBe(DocumentStatus.READY);
      const { chunks } = await client.searchKnowledge({ knowledgeBaseIds: [id], query: "which port does the server listen on" });
      expect(chunks.length).toBeGreaterThan(0);
      const hasPgvector = (await sql<{ ok: boolean }>`select to_regclass('chunk_embeddings') is not null as ok`.execute(hybrid.app.db)).rows[0]!.ok;
      expect(hasPgvector).toBe(backend === "pglite" ? true : hasPgvector);
      for (const c of chunks) expect(Number.isFinite(c.vectorSimilarity) && Number.isFinite(c.similarity)).toBe(true);
      expect(chunks.some((c) => c.vectorSimilarity > 0)).toBe(hasPgvector);
    } finally {
      await hybrid.close();
    }
  });

  it("marks a document whose ingestion was abandoned (its replica stopped) FAILED, without chunks", async () => {
    const base = await newKb("Abandoned");
    const id = "0190c0de-0000-7000-8000-0000000000aa";
    await db
      .insertInto("documents")
      .values({
        id,
        tenant_id: t.tenantId,
        knowledge_base_id: base.id,
        name: "stuck.md",
        mime_type: "text/markdown",
        status: "processing",
        size_bytes: 10,
        metadata: "{}",
        ingest_owner: "gone",
        heartbeat_time: sql<Date>`now() - interval '10 minutes'`,
      })
      .execute();
    await db.insertInto("chunks").values({ id: "0190c0de-0000-7000-8000-0000000000ab", tenant_id: t.tenantId, knowledge_base_id: base.id, document_id: id, ordinal: 0, content: "half", token_count: 1 }).execute();
    const doc = (await kb.getDocument({ documentId: id })).document!;
    expect([doc.status, doc.error !== "", doc.chunkCount]).toEqual([DocumentStatus.FAILED, true, 0n]);
    expect(await chunkCount(db, id)).toBe(0);
  });
});

async function waitForDocument(client: Client<typeof KnowledgeService>, id: string): Promise<Document> {
  for (let i = 0; i < 600; i++) {
    const d = (await client.getDocument({ documentId: id })).document!;
    if (d.status !== DocumentStatus.PROCESSING) return d;
    expect(d.progress >= 0 && d.progress < 1).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`document ${id} still PROCESSING`);
}
