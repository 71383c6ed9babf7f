import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KnowledgeService } from "../../gen/parley/v1/knowledge_pb.js";
import { createTestApp, type TestApp } from "../helpers/app.js";

const FIXTURES = join(import.meta.dirname, "../fixtures/retrieval");
const docs = readdirSync(join(FIXTURES, "docs")).filter((f) => f.endsWith(".md")).sort();
const questions = JSON.parse(readFileSync(join(FIXTURES, "questions.json"), "utf8")) as { question: string; document: string }[];

interface Figures {
  readonly recallAt5: number;
  readonly mrr: number;
  /** Hits that carried a vector similarity (0 for full text alone). */
  readonly vectorHits: number;
}

/** Loads the corpus into a fresh knowledge base and measures recall@5 and MRR (over the top 10) of SearchKnowledge. */
async function measure(kb: Client<typeof KnowledgeService>): Promise<Figures> {
  const id = (await kb.createKnowledgeBase({ knowledgeBase: { name: "Retrieval corpus" } })).knowledgeBase!.id;
  for (const name of docs) {
    await kb.createDocument({ knowledgeBaseId: id, document: { name }, source: { case: "content", value: readFileSync(join(FIXTURES, "docs", name)) } });
  }
  let found = 0;
  let reciprocal = 0;
  let vectorHits = 0;
  for (const q of questions) {
    const { chunks } = await kb.searchKnowledge({ knowledgeBaseIds: [id], query: q.question, topK: 10 });
    vectorHits += chunks.filter((c) => c.vectorSimilarity > 0).length;
    const rank = chunks.findIndex((c) => c.documentName === q.document);
    if (rank >= 0 && rank < 5) found++;
    if (rank >= 0) reciprocal += 1 / (rank + 1);
  }
  return { recallAt5: found / questions.length, mrr: reciprocal / questions.length, vectorHits };
}

describe("retrieval quality on the shipped corpus (PGlite)", () => {
  let fullText: TestApp;
  let hybrid: TestApp;
  beforeAll(async () => {
    fullText = await createTestApp();
    // builtin:hash: the deterministic test embedding model, through pgvector bundled with PGlite.
    hybrid = await createTestApp({ env: { PARLEY_EMBEDDING_MODEL: "builtin:hash" } });
  });
  afterAll(async () => {
    await fullText?.close();
    await hybrid?.close();
  });

  it("has a corpus of at least 40 documents and 30 labelled questions, each label a document of the corpus", () => {
    expect(docs.length).toBeGreaterThanOrEqual(40);
    expect(questions.length).toBeGreaterThanOrEqual(30);
    for (const q of questions) expect(docs).toContain(q.document);
  });

  it("finds the labelled document in the top 5 for at least 85% of the questions by full text alone; reports hybrid too", async () => {
    const ft = await measure(fullText.client(KnowledgeService));
    const hy = await measure(hybrid.client(KnowledgeService));
    const fmt = (f: Figures) => `recall@5 ${f.recallAt5.toFixed(3)}, MRR ${f.mrr.toFixed(3)}`;
    console.log(
      `retrieval quality (${docs.length} documents, ${questions.length} questions): full text ${fmt(ft)}; hybrid (full text + builtin:hash vectors, RRF) ${fmt(hy)}`,
    );
    expect(ft.recallAt5).toBeGreaterThanOrEqual(0.85);
    expect(ft.vectorHits).toBe(0);
    // The hybrid app really searched vectors (pgvector in PGlite).
    expect(hy.vectorHits).toBeGreaterThan(0);
    expect(hy.recallAt5).toBeGreaterThanOrEqual(0.85);
  });
});
