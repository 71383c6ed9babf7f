import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { Code, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { KnowledgeService } from "../../gen/parley/v1/knowledge_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { collect } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { failure, fieldsOf } from "../helpers/errors.js";
import { makePdf } from "../helpers/pdf.js";
import { tokensModel } from "../helpers/fake-models.js";
import { createModelRegistry } from "../../src/ask/models/registry.js";
import { loadConfig } from "../../src/config.js";

const GUIDE_MD = `# Greenhouse guide

## Watering

Water the seedlings every morning with rain water collected in the barrel.

## Ventilation

Open the roof windows when the temperature inside rises above 27 degrees.
`;

const MANUAL_PDF_PAGES = [
  ["Heating manual for the greenhouse.", "The boiler uses wood pellets and must be cleaned every 14 days."],
  ["Frost protection: when the outside temperature drops below minus 5 degrees, the boiler switches to the night program automatically."],
];

function textOf(events: AskEvent[]): string {
  return events.map((e) => (e.event.case === "textDelta" ? e.event.value.text : "")).join("");
}

describe.each(backends())("Ask with knowledge on %s (embedded defaults: builtin:extractive)", (backend) => {
  let t: TestApp;
  let agents: Client<typeof AgentService>;
  let sessions: Client<typeof SessionService>;
  let messages: Client<typeof MessageService>;
  let kb: Client<typeof KnowledgeService>;
  let kbId: string;
  let pdfId: string;

  beforeAll(async () => {
    // No provider configured, no models injected: agents with an empty model get builtin:extractive.
    t = await createTestApp({ backend });
    agents = t.client(AgentService);
    sessions = t.client(SessionService);
    messages = t.client(MessageService);
    kb = t.client(KnowledgeService);
    kbId = (await kb.createKnowledgeBase({ knowledgeBase: { name: "Greenhouse" } })).knowledgeBase!.id;
    await kb.createDocument({ knowledgeBaseId: kbId, document: { name: "guide.md" }, source: { case: "content", value: new TextEncoder().encode(GUIDE_MD) } });
    pdfId = (
      await kb.createDocument({ knowledgeBaseId: kbId, document: { name: "heating.pdf" }, source: { case: "content", value: await makePdf(MANUAL_PDF_PAGES) } })
    ).document!.id;
  });
  afterAll(async () => {
    await t?.close();
  });

  const newSession = async (agent: Parameters<typeof agents.createAgent>[0]["agent"]) => {
    const a = (await agents.createAgent({ agent })).agent!;
    return (await sessions.createSession({ session: { agentId: a.id, userId: "u1" } })).session!.id;
  };

  it("answers a question from the PDF: References before the first delta cite the PDF chunk, the answer cites it, history has the same references", async () => {
    const sessionId = await newSession({ name: "Gardener", knowledgeBaseIds: [kbId] });
    const events = await collect(sessions.ask({ sessionId, content: "How often must the pellet boiler be cleaned?" }));
    const cases = events.map((e) => e.event.case);
    const refIndex = cases.indexOf("references");
    expect(refIndex).toBeGreaterThan(0);
    expect(refIndex).toBeLessThan(cases.indexOf("textDelta"));
    expect(cases.at(-1)).toBe("completed");
    const started = events[0]!.event;
    if (started.case !== "started") throw new Error("expected Started");
    expect(started.value.model).toBe("builtin:extractive");

    const refs = events[refIndex]!.event.value as { references?: { chunks: { citation: number; documentId: string; content: string }[]; docAggs: unknown[] } };
    const chunks = refs.references!.chunks;
    expect(chunks.map((c) => c.citation)).toEqual(chunks.map((_, i) => i + 1));
    const pdfChunk = chunks.find((c) => c.documentId === pdfId);
    expect(pdfChunk).toBeDefined();
    expect(pdfChunk!.content).toContain("cleaned every 14 days");
    expect(refs.references!.docAggs).toContainEqual(expect.objectContaining({ documentId: pdfId, documentName: "heating.pdf" }));

    const answer = textOf(events);
    expect(answer).toContain("14 days");
    expect(answer).toContain(`[${pdfChunk!.citation}]`);

    const completed = events.at(-1)!.event;
    if (completed.case !== "completed") throw new Error("expected Completed");
    expect(completed.value.message!.references).toEqual(refs.references);
    const history = (await messages.listMessages({ sessionId })).messages;
    const assistant = history.find((m) => m.id === completed.value.message!.id)!;
    expect(assistant.content).toBe(answer);
    expect(assistant.references).toEqual(refs.references);
    // The user's message carries no references.
    expect(history.find((m) => m.role !== assistant.role)!.references).toBeUndefined();
  });

  it("store=false: the Completed message carries the same references as the event", async () => {
    const sessionId = await newSession({ name: "Unstored", knowledgeBaseIds: [kbId] });
    const events = await collect(sessions.ask({ sessionId, content: "How often must the pellet boiler be cleaned?", store: false }));
    const refs = events.find((e) => e.event.case === "references")!.event.value as { references?: unknown };
    const completed = events.at(-1)!.event;
    if (completed.case !== "completed") throw new Error("expected Completed");
    expect(completed.value.message!.references).toEqual(refs.references);
  });

  it("says plainly when nothing relevant is found, with how to configure an LLM", async () => {
    const sessionId = await newSession({ name: "Gardener 2", knowledgeBaseIds: [kbId] });
    const events = await collect(sessions.ask({ sessionId, content: "Who won the football world cup in 1954?" }));
    const answer = textOf(events);
    expect(answer).toMatch(/nothing relevant/i);
    expect(answer).toContain("OPENAI_API_KEY");
    expect(events.at(-1)!.event.case).toBe("completed");
  });

  it("cite=false answers without citation marks; agents without knowledge bases get no References event", async () => {
    const quiet = await newSession({ name: "No cites", knowledgeBaseIds: [kbId], retrieval: { cite: false } });
    const answer = textOf(await collect(sessions.ask({ sessionId: quiet, content: "When should the roof windows be opened?" })));
    expect(answer).toContain("27 degrees");
    expect(answer).not.toMatch(/\[\d+\]/);

    const plain = await newSession({ name: "Plain" });
    const events = await collect(sessions.ask({ sessionId: plain, content: "When should the roof windows be opened?" }));
    expect(events.map((e) => e.event.case)).not.toContain("references");
  });

  it("stores, validates and updates the agent's knowledge settings", async () => {
    const { agent } = await agents.createAgent({
      agent: { name: "Cfg", knowledgeBaseIds: [kbId], retrieval: { topK: 3, similarityThreshold: 0.2, maxContextTokens: 500, cite: false } },
    });
    expect(agent!.knowledgeBaseIds).toEqual([kbId]);
    expect(agent!.retrieval).toMatchObject({ topK: 3, similarityThreshold: 0.2, maxContextTokens: 500, cite: false });
    const updated = await agents.updateAgent({
      agent: { id: agent!.id, retrieval: { topK: 5 }, knowledgeBaseIds: [] },
      updateMask: create(FieldMaskSchema, { paths: ["retrieval.top_k", "knowledge_base_ids"] }),
    });
    expect(updated.agent!.knowledgeBaseIds).toEqual([]);
    expect(updated.agent!.retrieval).toMatchObject({ topK: 5, similarityThreshold: 0.2, cite: false });

    const unknown = "0190c0de-0000-7000-8000-0000000000ff";
    expect((await failure(agents.createAgent({ agent: { name: "x", knowledgeBaseIds: [unknown] } }))).code).toBe(Code.NotFound);
    const other = await t.newTenant("kb-other");
    const foreign = await failure(t.client(AgentService, other.key).createAgent({ agent: { name: "x", knowledgeBaseIds: [kbId] } }));
    expect(foreign.code).toBe(Code.NotFound);
    for (const [retrieval, field] of [
      [{ topK: 101 }, "agent.retrieval.top_k"],
      [{ similarityThreshold: 2 }, "agent.retrieval.similarity_threshold"],
      [{ maxContextTokens: 1_000_001 }, "agent.retrieval.max_context_tokens"],
    ] as const) {
      const err = await failure(agents.createAgent({ agent: { name: "x", retrieval } }));
      expect([err.code, fieldsOf(err)]).toEqual([Code.InvalidArgument, [field]]);
    }
    const many = await failure(agents.createAgent({ agent: { name: "x", knowledgeBaseIds: Array.from({ length: 17 }, () => kbId) } }));
    expect([many.code, fieldsOf(many)]).toEqual([Code.InvalidArgument, ["agent.knowledge_base_ids"]]);
  });

  it("a replay rebuilt from storage (the event log let the events go) carries the same References event", async () => {
    const app = await createTestApp({ backend, config: { askEventLogMaxBytes: 0 } });
    try {
      const k = app.client(KnowledgeService);
      const id = (await k.createKnowledgeBase({ knowledgeBase: { name: "Replay" } })).knowledgeBase!.id;
      await k.createDocument({ knowledgeBaseId: id, document: { name: "guide.md" }, source: { case: "text", value: GUIDE_MD } });
      const a = (await app.client(AgentService).createAgent({ agent: { name: "R", knowledgeBaseIds: [id] } })).agent!;
      const s = app.client(SessionService);
      const sessionId = (await s.createSession({ session: { agentId: a.id, userId: "u" } })).session!.id;
      const live = await collect(s.ask({ sessionId, content: "When are the roof windows opened?", requestId: "r1" }));
      const replay = await collect(s.ask({ sessionId, content: "When are the roof windows opened?", requestId: "r1" }));
      const refsOf = (events: AskEvent[]) => events.find((e) => e.event.case === "references")?.event.value;
      expect(replay.map((e) => e.event.case).slice(0, 3)).toEqual(["started", "references", "textDelta"]);
      expect(refsOf(replay)).toEqual(refsOf(live));
    } finally {
      await app.close();
    }
  });

  it("fits knowledge into the token budget: instructions, knowledge and the question within max_input_tokens", async () => {
    const recorder = tokensModel(["ok"]);
    const models = createModelRegistry(loadConfig({}));
    const app = await createTestApp({
      backend,
      models: { resolve: (m) => (m === "fake:rec" ? { id: m, model: recorder.model } : models.resolve(m)) },
    });
    try {
      const k = app.client(KnowledgeService);
      const id = (await k.createKnowledgeBase({ knowledgeBase: { name: "Big", chunkSize: 200, chunkOverlap: 0 } })).knowledgeBase!.id;
      const filler = Array.from({ length: 40 }, (_, i) => `## Boiler note ${i}\n\n${"The boiler pellets note ".repeat(30)}${i}.`).join("\n\n");
      await k.createDocument({ knowledgeBaseId: id, document: { name: "notes.md" }, source: { case: "text", value: filler } });
      const a = (
        await app.client(AgentService).createAgent({
          agent: { name: "Tight", model: "fake:rec", knowledgeBaseIds: [id], retrieval: { topK: 50 }, contextPolicy: { maxInputTokens: 1000 } },
        })
      ).agent!;
      const s = app.client(SessionService);
      const sessionId = (await s.createSession({ session: { agentId: a.id, userId: "u" } })).session!.id;
      const events = await collect(s.ask({ sessionId, content: "boiler pellets note" }));
      const refs = events.find((e) => e.event.case === "references")!.event.value as { references?: { chunks: unknown[] } };
      // Many chunks match, but only those that fit the window are used.
      expect(refs.references!.chunks.length).toBeGreaterThan(0);
      expect(refs.references!.chunks.length).toBeLessThan(10);
      const prompt = recorder.calls[0]!.prompt;
      const text = prompt.map((m) => (typeof m.content === "string" ? m.content : m.content.map((p) => ("text" in p ? p.text : "")).join(""))).join("\n");
      const { createTokenCounter } = await import("../../src/ask/context.js");
      expect(createTokenCounter().count(text)).toBeLessThanOrEqual(1000);
      expect(text).toContain("[1] (notes.md)");
    } finally {
      await app.close();
    }
  });
});
