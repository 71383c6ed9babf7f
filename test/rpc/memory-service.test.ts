import { Code, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MemoryService, MemoryType } from "../../gen/parley/v1/memory_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { newId } from "../../src/ids.js";
import { memoryVectorsAvailable } from "../../src/repos/memories.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { expectRejected, failure, reasonOf } from "../helpers/errors.js";

describe.each(backends())("MemoryService on %s", (backend) => {
  let t: TestApp;
  let memory: Client<typeof MemoryService>;
  let sessions: Client<typeof SessionService>;
  let agentId: string;

  const memoriesSnapshot = async () =>
    JSON.stringify(await t.app.db.selectFrom("memories").select(["id", "content", "quality", "user_id", "session_id"]).orderBy("id").execute());

  beforeAll(async () => {
    t = await createTestApp({ backend });
    memory = t.client(MemoryService);
    sessions = t.client(SessionService);
    agentId = (await t.client(AgentService).createAgent({ agent: { name: "m", model: "fake:hello" } })).agent!.id;
  });
  afterAll(async () => {
    await t?.close();
  });

  async function newSession(userId: string, key?: string, agent = agentId): Promise<string> {
    return (await t.client(SessionService, key).createSession({ session: { agentId: agent, userId } })).session!.id;
  }

  const long = (userId: string, content: string, quality?: number) =>
    memory.addMemory({ memory: { type: MemoryType.LONG, userId, content, ...(quality !== undefined ? { quality } : {}) } });

  it("finds a long-term memory from a new session of the same user, never from another user or tenant", async () => {
    const first = await newSession("alice");
    const stored = (await long("alice", "Alice is allergic to peanuts and prefers vegetarian dishes")).memory!;
    expect(stored.type).toBe(MemoryType.LONG);
    expect(stored.quality).toBe(1);
    expect(stored.sessionId).toBe("");
    const short = (
      await memory.addMemory({ memory: { type: MemoryType.SHORT, sessionId: first, userId: "ignored", content: "Alice is planning a peanut-free dinner tonight" } })
    ).memory!;
    expect(short.userId).toBe("alice");
    expect(short.sessionId).toBe(first);

    const second = await newSession("alice");
    const found = await memory.searchMemory({ query: "what dinner can I cook with peanuts?", userId: "alice", sessionId: second });
    // The long-term fact is there; the first session's short-term one is not.
    expect(found.hits.map((h) => h.memory!.id)).toEqual([stored.id]);
    expect(found.hits[0]!.similarity).toBeGreaterThan(0);
    expect(found.hits[0]!.similarity).toBeLessThanOrEqual(1);

    const inFirst = await memory.searchMemory({ query: "peanut dinner", userId: "alice", sessionId: first });
    expect(inFirst.hits.map((h) => h.memory!.id).sort()).toEqual([stored.id, short.id].sort());

    // Another user of the same tenant, with a session of their own.
    const bobs = await newSession("bob");
    expect((await memory.searchMemory({ query: "peanuts dinner", userId: "bob", sessionId: bobs })).hits).toEqual([]);
    expect((await memory.getMemoryContext({ query: "peanuts", userId: "bob" })).context).toBe("");

    // Another tenant, with a user of the same name.
    const other = await t.newTenant("memory-other");
    const otherMemory = t.client(MemoryService, other.key);
    const otherAgent = (await t.client(AgentService, other.key).createAgent({ agent: { name: "o" } })).agent!.id;
    const otherSession = await newSession("alice", other.key, otherAgent);
    expect((await otherMemory.searchMemory({ query: "peanuts dinner", userId: "alice", sessionId: otherSession })).hits).toEqual([]);
    expect((await otherMemory.listMemories({ userId: "alice" })).memories).toEqual([]);
    expect((await otherMemory.getMemoryContext({ query: "peanuts", userId: "alice" })).hits).toEqual([]);
  });

  it("builds the memory context block Ask injects, with the hits it came from", async () => {
    await long("carol", "Carol lives in Lisbon");
    await long("carol", "Carol works as a marine biologist");
    await long("carol", "Carol dislikes rainy weather", 0.2);
    const res = await memory.getMemoryContext({ query: "what is the weather like in Lisbon where I live?", userId: "carol", maxItems: 2 });
    expect(res.hits).toHaveLength(2);
    expect(res.hits.map((h) => h.memory!.content)).toContain("Carol lives in Lisbon");
    for (const h of res.hits) expect(res.context).toContain(h.memory!.content);
    expect(res.context).not.toContain("marine biologist");
    const nothing = await memory.getMemoryContext({ query: "quantum chromodynamics", userId: "carol" });
    expect(nothing).toMatchObject({ context: "", hits: [] });
  });

  it("filters by min_quality and type, and honours limit", async () => {
    const s = await newSession("dave");
    await long("dave", "Dave plays chess on weekends", 0.9);
    await long("dave", "Dave might like chess puzzles", 0.3);
    await memory.addMemory({ memory: { type: MemoryType.SHORT, sessionId: s, content: "Dave asked about chess openings today" } });
    const all = await memory.searchMemory({ query: "chess", userId: "dave", sessionId: s });
    expect(all.hits).toHaveLength(3);
    const good = await memory.searchMemory({ query: "chess", userId: "dave", sessionId: s, minQuality: 0.5 });
    expect(good.hits.map((h) => h.memory!.content).sort()).toEqual(["Dave asked about chess openings today", "Dave plays chess on weekends"]);
    const shortOnly = await memory.searchMemory({ query: "chess", userId: "dave", sessionId: s, type: MemoryType.SHORT });
    expect(shortOnly.hits.map((h) => h.memory!.type)).toEqual([MemoryType.SHORT]);
    const longOnly = await memory.searchMemory({ query: "chess", userId: "dave", type: MemoryType.LONG });
    expect(longOnly.hits.map((h) => h.memory!.type)).toEqual([MemoryType.LONG, MemoryType.LONG]);
    expect((await memory.searchMemory({ query: "chess", userId: "dave", sessionId: s, limit: 1 })).hits).toHaveLength(1);
  });

  it("lists newest first with keyset page tokens bound to the query", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await long("erin", `Erin fact number ${i}`)).memory!.id);
    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await memory.listMemories({ userId: "erin", pageSize: 2, pageToken });
      expect(page.memories.length).toBeLessThanOrEqual(2);
      seen.push(...page.memories.map((m) => m.id));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    expect(seen).toEqual([...ids].reverse());
    const first = await memory.listMemories({ userId: "erin", pageSize: 2 });
    const err = await failure(memory.listMemories({ userId: "frank", pageSize: 2, pageToken: first.nextPageToken }));
    expect(Code[err.code]).toBe(Code[Code.InvalidArgument]);
    expect(reasonOf(err)).toBe("INVALID_PAGE_TOKEN");
  });

  it("deletes one memory, and clears by session, by user and by type", async () => {
    const s1 = await newSession("gina");
    const s2 = await newSession("gina");
    const one = (await long("gina", "Gina likes tea")).memory!;
    await long("gina", "Gina likes jazz");
    await memory.addMemory({ memory: { type: MemoryType.SHORT, sessionId: s1, content: "Gina is in a hurry" } });
    await memory.addMemory({ memory: { type: MemoryType.SHORT, sessionId: s2, content: "Gina is relaxed" } });

    await memory.deleteMemory({ memoryId: one.id });
    expect(Code[(await failure(memory.deleteMemory({ memoryId: one.id }))).code]).toBe(Code[Code.NotFound]);

    expect((await memory.clearMemories({ sessionId: s1 })).deletedCount).toBe(1n);
    expect((await memory.clearMemories({ userId: "gina", type: MemoryType.SHORT })).deletedCount).toBe(1n);
    expect((await memory.listMemories({ userId: "gina" })).memories.map((m) => m.content)).toEqual(["Gina likes jazz"]);
    expect((await memory.clearMemories({ userId: "gina" })).deletedCount).toBe(1n);
    expect((await memory.listMemories({ userId: "gina" })).memories).toEqual([]);

    // Deleting a session takes its short-term memories with it.
    await memory.addMemory({ memory: { type: MemoryType.SHORT, sessionId: s2, content: "Gina is back" } });
    await sessions.deleteSession({ sessionId: s2 });
    expect((await memory.listMemories({ userId: "gina" })).memories).toEqual([]);
  });

  it("rejects bad input with the documented codes and stores nothing", async () => {
    const s = await newSession("hank");
    const reject = (call: () => Promise<unknown>, code: Code, field: string) =>
      expectRejected(memoriesSnapshot, call, code, { field });
    await reject(() => memory.addMemory({}), Code.InvalidArgument, "memory");
    await reject(() => memory.addMemory({ memory: { userId: "hank", content: "x" } }), Code.InvalidArgument, "memory.type");
    await reject(() => memory.addMemory({ memory: { type: MemoryType.LONG, userId: "hank", content: " " } }), Code.InvalidArgument, "memory.content");
    await reject(
      () => memory.addMemory({ memory: { type: MemoryType.LONG, userId: "hank", content: "x".repeat(16_385) } }),
      Code.InvalidArgument,
      "memory.content",
    );
    await reject(() => memory.addMemory({ memory: { type: MemoryType.LONG, content: "x" } }), Code.InvalidArgument, "memory.user_id");
    for (const quality of [-0.1, 1.5, Number.NaN]) {
      await reject(
        () => memory.addMemory({ memory: { type: MemoryType.LONG, userId: "hank", content: "x", quality } }),
        Code.InvalidArgument,
        "memory.quality",
      );
    }
    await reject(() => memory.addMemory({ memory: { type: MemoryType.SHORT, content: "x" } }), Code.InvalidArgument, "memory.session_id");
    await reject(
      () => memory.addMemory({ memory: { type: MemoryType.LONG, userId: "hank", sessionId: s, content: "x" } }),
      Code.InvalidArgument,
      "memory.session_id",
    );
    await reject(() => memory.addMemory({ memory: { type: 7 as MemoryType, userId: "hank", content: "x" } }), Code.InvalidArgument, "memory.type");
    const missing = newId();
    await expectRejected(memoriesSnapshot, () => memory.addMemory({ memory: { type: MemoryType.SHORT, sessionId: missing, content: "x" } }), Code.NotFound);

    await reject(() => memory.searchMemory({ query: "", userId: "hank" }), Code.InvalidArgument, "query");
    await reject(() => memory.searchMemory({ query: "   ", userId: "hank" }), Code.InvalidArgument, "query");
    await reject(() => memory.searchMemory({ query: "q".repeat(4097), userId: "hank" }), Code.InvalidArgument, "query");
    await reject(() => memory.searchMemory({ query: "tea", userId: "" }), Code.InvalidArgument, "user_id");
    for (const limit of [-1, 101]) await reject(() => memory.searchMemory({ query: "tea", userId: "hank", limit }), Code.InvalidArgument, "limit");
    await reject(() => memory.searchMemory({ query: "tea", userId: "hank", minQuality: 2 }), Code.InvalidArgument, "min_quality");
    await reject(() => memory.searchMemory({ query: "tea", userId: "someone-else", sessionId: s }), Code.InvalidArgument, "session_id");
    await reject(() => memory.getMemoryContext({ query: "tea", userId: "hank", maxItems: 101 }), Code.InvalidArgument, "max_items");
    await reject(() => memory.getMemoryContext({ query: "", userId: "hank" }), Code.InvalidArgument, "query");
    await reject(() => memory.listMemories({ pageSize: -1 }), Code.InvalidArgument, "page_size");
    await reject(() => memory.clearMemories({}), Code.InvalidArgument, "user_id");
    await reject(() => memory.deleteMemory({ memoryId: "nope" }), Code.InvalidArgument, "memory_id");
  });

  it("adds vector similarity where an embedding model and pgvector are configured", async () => {
    const h = await createTestApp({ backend, config: { embeddingModel: "builtin:hash" } });
    try {
      const m = h.client(MemoryService);
      const stored = (await m.addMemory({ memory: { type: MemoryType.LONG, userId: "ivy", content: "Ivy adores photography" } })).memory!;
      await m.addMemory({ memory: { type: MemoryType.LONG, userId: "ivy", content: "Ivy commutes by bicycle" } });
      // "photographer" and "photography" stem differently: only the vectors (shared character n-grams) relate them.
      const hits = (await m.searchMemory({ query: "photographer", userId: "ivy" })).hits;
      if (await memoryVectorsAvailable(h.app.db)) {
        expect(hits[0]?.memory?.id).toBe(stored.id);
        expect(hits[0]!.similarity).toBeGreaterThan(0);
        const rows = await h.app.db.selectFrom("memory_embeddings").select(["memory_id", "model"]).execute();
        expect(rows.map((r) => r.model)).toEqual(["builtin:hash", "builtin:hash"]);
      } else {
        expect(hits).toEqual([]);
      }
      // Full text still finds what it matches, fused with the vectors.
      expect((await m.searchMemory({ query: "bicycle", userId: "ivy" })).hits[0]?.memory?.content).toBe("Ivy commutes by bicycle");
    } finally {
      await h.close();
    }
  });
});
