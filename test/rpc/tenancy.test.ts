import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport, type Client, type Interceptor } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { FeedbackRating, MessageRole } from "../../gen/parley/v1/common_pb.js";
import { KnowledgeService } from "../../gen/parley/v1/knowledge_pb.js";
import { MemoryService, MemoryType } from "../../gen/parley/v1/memory_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { AskStatus, SessionService, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import { StateService } from "../../gen/parley/v1/state_pb.js";
import { newId } from "../../src/ids.js";
import { createApiKey, revokeApiKey } from "../../src/repos/api-keys.js";
import { bearer, createTestApp, type TestApp } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { errorOf } from "../helpers/errors.js";
import { controlledModel, createFakeModels } from "../helpers/fake-models.js";

interface Clients {
  agents: Client<typeof AgentService>;
  sessions: Client<typeof SessionService>;
  messages: Client<typeof MessageService>;
}

/** Reads a whole Ask stream. */
async function drain(stream: AsyncIterable<{ event?: AskEvent }>): Promise<AskEvent[]> {
  const events: AskEvent[] = [];
  for await (const r of stream) if (r.event) events.push(r.event);
  return events;
}

const user = (content: string) => ({ role: MessageRole.USER, content });

describe.each(backends())("tenancy on %s", (backend) => {
  const controlled = controlledModel();
  let t: TestApp;
  /** The first tenant, owner of every resource below. */
  let a: Clients;
  /** A second tenant, probing the first one's ids. */
  let b: Clients;

  // The first tenant's resources.
  let agentId: string;
  let controlledAgentId: string;
  let sessionId: string;
  let userMessageId: string;
  let assistantMessageId: string;
  let askId: string;
  let sessionsToken: string;
  let agentsToken: string;
  let messagesToken: string;
  const askRequestId = "a-ask-1";
  const appendRequestId = "a-append-1";

  const clients = (key?: string): Clients => ({
    agents: t.client(AgentService, key),
    sessions: t.client(SessionService, key),
    messages: t.client(MessageService, key),
  });

  /** Every row of the first tenant: what the second one must not be able to change. */
  async function snapshotOfA(): Promise<unknown> {
    const db = t.app.db;
    const tables = ["agents", "sessions", "messages", "asks", "append_requests"] as const;
    const out: Record<string, unknown> = {};
    for (const table of tables) {
      out[table] = await db
        .selectFrom(table)
        .selectAll()
        .where("tenant_id", "=", t.tenantId)
        .execute()
        .then((rows) => rows.map((r) => JSON.stringify(r)).sort());
    }
    return out;
  }

  beforeAll(async () => {
    t = await createTestApp({ backend, models: createFakeModels({ controlled }) });
    a = clients();
    const other = await t.newTenant("intruder");
    b = clients(other.key);

    agentId = (await a.agents.createAgent({ agent: { name: "A", model: "fake:hello", prologue: "Welcome" } })).agent!.id;
    controlledAgentId = (await a.agents.createAgent({ agent: { name: "A controlled", model: "fake:controlled" } })).agent!.id;
    sessionId = (await a.sessions.createSession({ session: { agentId, userId: "alice" } })).session!.id;
    await a.sessions.createSession({ session: { agentId, userId: "alice", name: "second" } });
    const appended = await a.messages.appendMessages({
      sessionId,
      messages: [user("from A"), { role: MessageRole.ASSISTANT, content: "answer to A" }],
      requestId: appendRequestId,
    });
    userMessageId = appended.messages[0]!.id;
    assistantMessageId = appended.messages[1]!.id;
    await a.messages.setFeedback({ messageId: assistantMessageId, rating: FeedbackRating.THUMBS_UP, comment: "A's" });
    const events = await drain(a.sessions.ask({ sessionId, content: "hello", requestId: askRequestId }));
    askId = events[0]!.askId;
    expect(events.at(-1)!.event.case).toBe("completed");

    sessionsToken = (await a.sessions.listSessions({ pageSize: 1 })).nextPageToken;
    agentsToken = (await a.agents.listAgents({ pageSize: 1 })).nextPageToken;
    messagesToken = (await a.messages.listMessages({ sessionId, pageSize: 1 })).nextPageToken;
    expect([sessionsToken, agentsToken, messagesToken].every((x) => x !== "")).toBe(true);
  });
  afterAll(async () => {
    await t?.close();
  });

  it("answers every RPC on the first tenant's ids with NotFound, exactly like unknown ids, and changes nothing", async () => {
    const covered = new Set<string>();
    const failures: string[] = [];

    /**
     * Runs `call` once with the first tenant's ids and once with unknown ids,
     * both with the second tenant's key: both must be NotFound with one reason.
     */
    async function sameAsUnknown<I>(
      rpc: string,
      ids: I,
      unknown: I,
      call: (ids: I) => Promise<unknown>,
    ): Promise<void> {
      covered.add(rpc);
      const foreign = await errorOf(call(ids));
      const missing = await errorOf(call(unknown));
      const describe = (e: ConnectError | undefined) =>
        e ? `${Code[e.code]} ${e.findDetails(ErrorInfoSchema)[0]?.reason ?? "(no ErrorInfo)"}` : "OK";
      const got = describe(foreign);
      const want = describe(missing);
      if (got !== want || foreign?.code !== Code.NotFound) failures.push(`${rpc}: first tenant's id → ${got}, unknown id → ${want}`);
    }

    const before = await snapshotOfA();
    const mine = { agentId, sessionId, userMessageId, assistantMessageId, askId };
    const none = { agentId: newId(), sessionId: newId(), userMessageId: newId(), assistantMessageId: newId(), askId: newId() };
    type Ids = typeof mine;

    // AgentService
    await sameAsUnknown("GetAgent", mine, none, (x: Ids) => b.agents.getAgent({ agentId: x.agentId }));
    await sameAsUnknown("UpdateAgent", mine, none, (x: Ids) =>
      b.agents.updateAgent({ agent: { id: x.agentId, name: "taken over" }, updateMask: { paths: ["name"] } }),
    );
    await sameAsUnknown("DeleteAgent", mine, none, (x: Ids) => b.agents.deleteAgent({ agentId: x.agentId, force: true }));
    await sameAsUnknown("DeleteAgent", mine, none, (x: Ids) => b.agents.deleteAgent({ agentId: x.agentId }));
    // Creating takes no id to probe: what the second tenant creates is its own, invisible to the first.
    covered.add("CreateAgent");
    const { agent: bAgent } = await b.agents.createAgent({ agent: { name: "B's own" } });
    expect((await b.agents.getAgent({ agentId: bAgent!.id })).agent!.name).toBe("B's own");
    await expectNotFound(a.agents.getAgent({ agentId: bAgent!.id }));
    await b.agents.deleteAgent({ agentId: bAgent!.id });

    // SessionService
    await sameAsUnknown("CreateSession", mine, none, (x: Ids) =>
      b.sessions.createSession({ session: { agentId: x.agentId, userId: "alice" } }),
    );
    await sameAsUnknown("GetSession", mine, none, (x: Ids) => b.sessions.getSession({ sessionId: x.sessionId }));
    await sameAsUnknown("UpdateSession", mine, none, (x: Ids) =>
      b.sessions.updateSession({
        session: { id: x.sessionId, name: "taken over", state: { owned: true } },
        updateMask: { paths: ["name", "state"] },
      }),
    );
    await sameAsUnknown("ArchiveSession", mine, none, (x: Ids) => b.sessions.archiveSession({ sessionId: x.sessionId }));
    await sameAsUnknown("UnarchiveSession", mine, none, (x: Ids) => b.sessions.unarchiveSession({ sessionId: x.sessionId }));
    await sameAsUnknown("DeleteSession", mine, none, (x: Ids) => b.sessions.deleteSession({ sessionId: x.sessionId }));
    await sameAsUnknown("Ask", mine, none, (x: Ids) => drain(b.sessions.ask({ sessionId: x.sessionId, content: "hi" })));
    // The first tenant's request_id must not replay the first tenant's Ask.
    await sameAsUnknown("Ask", mine, none, (x: Ids) =>
      drain(b.sessions.ask({ sessionId: x.sessionId, content: "hello", requestId: askRequestId })),
    );
    await sameAsUnknown("CancelAsk", mine, none, (x: Ids) => b.sessions.cancelAsk({ askId: x.askId }));
    await sameAsUnknown("GetAsk", mine, none, (x: Ids) => b.sessions.getAsk({ askId: x.askId }));
    await sameAsUnknown("ResumeAsk", mine, none, (x: Ids) => drain(b.sessions.resumeAsk({ askId: x.askId })));
    // A watch of a real session never ends by itself: the first update (or error) is the answer.
    await sameAsUnknown("WatchSession", mine, none, (x: Ids) => firstOf(b.sessions.watchSession({ sessionId: x.sessionId })));

    // MessageService
    await sameAsUnknown("ListMessages", mine, none, (x: Ids) => b.messages.listMessages({ sessionId: x.sessionId }));
    await sameAsUnknown("GetMessage", mine, none, (x: Ids) => b.messages.getMessage({ messageId: x.userMessageId }));
    await sameAsUnknown("AppendMessages", mine, none, (x: Ids) =>
      b.messages.appendMessages({ sessionId: x.sessionId, messages: [user("intruder")] }),
    );
    // The first tenant's request_id must not replay the first tenant's messages.
    await sameAsUnknown("AppendMessages", mine, none, (x: Ids) =>
      b.messages.appendMessages({
        sessionId: x.sessionId,
        messages: [user("from A"), { role: MessageRole.ASSISTANT, content: "answer to A" }],
        requestId: appendRequestId,
      }),
    );
    await sameAsUnknown("AppendMessages", mine, none, (x: Ids) =>
      b.messages.appendMessages({ sessionId: x.sessionId, messages: [user("intruder")], expectedLastSeq: 0n }),
    );
    await sameAsUnknown("UpdateMessage", mine, none, (x: Ids) =>
      b.messages.updateMessage({ message: { id: x.userMessageId, content: "changed" }, updateMask: { paths: ["*"] } }),
    );
    await sameAsUnknown("DeleteMessage", mine, none, (x: Ids) => b.messages.deleteMessage({ messageId: x.userMessageId }));
    await sameAsUnknown("SetFeedback", mine, none, (x: Ids) =>
      b.messages.setFeedback({ messageId: x.assistantMessageId, rating: FeedbackRating.THUMBS_DOWN }),
    );
    await sameAsUnknown("SetFeedback", mine, none, (x: Ids) => b.messages.setFeedback({ messageId: x.assistantMessageId }));

    expect(failures).toEqual([]);

    // The RPCs that take no id of a resource: the second tenant sees none of the first one's.
    const aIds = new Set([agentId, controlledAgentId, sessionId, userMessageId, assistantMessageId, askId]);
    const leaks = (ids: string[]) => ids.filter((id) => aIds.has(id));

    covered.add("ListAgents");
    expect(leaks((await b.agents.listAgents({ pageSize: 1000 })).agents.map((x) => x.id))).toEqual([]);
    const agentsWithToken = await errorOrValue(b.agents.listAgents({ pageToken: agentsToken }));
    if (!(agentsWithToken instanceof ConnectError)) expect(leaks(agentsWithToken.agents.map((x) => x.id))).toEqual([]);
    else expect(Code[agentsWithToken.code]).toBe(Code[Code.InvalidArgument]);

    covered.add("ListSessions");
    for (const filter of [{}, { userId: "alice" }, { agentId }]) {
      const res = await errorOrValue(b.sessions.listSessions({ ...filter, pageSize: 1000 }));
      if (res instanceof ConnectError) {
        // Filtering by the first tenant's agent is answered like an unknown agent.
        const unknown = await errorOf(b.sessions.listSessions({ agentId: newId() }));
        expect(unknown && Code[unknown.code]).toBe(Code[res.code]);
      } else {
        expect(leaks(res.sessions.map((x) => x.id))).toEqual([]);
      }
    }
    const sessionsWithToken = await errorOrValue(b.sessions.listSessions({ pageToken: sessionsToken }));
    if (!(sessionsWithToken instanceof ConnectError)) expect(leaks(sessionsWithToken.sessions.map((x) => x.id))).toEqual([]);
    else expect(Code[sessionsWithToken.code]).toBe(Code[Code.InvalidArgument]);

    // A page token of the first tenant's history does not open it to the second.
    const historyWithToken = await errorOf(b.messages.listMessages({ sessionId, pageToken: messagesToken }));
    expect(historyWithToken && Code[historyWithToken.code]).toBe(Code[Code.NotFound]);

    covered.add("DeleteSessions");
    const byIds = await b.sessions.deleteSessions({ sessionIds: [sessionId, none.sessionId] });
    expect(byIds.deletedSessionIds).toEqual([]);
    expect(byIds.failures.map((f) => [f.sessionId, f.code])).toEqual([
      [sessionId, "not_found"],
      [none.sessionId, "not_found"],
    ]);
    const byUser = await errorOrValue(b.sessions.deleteSessions({ agentId, userId: "alice" }));
    const byUnknown = await errorOrValue(b.sessions.deleteSessions({ agentId: none.agentId, userId: "alice" }));
    if (byUser instanceof ConnectError || byUnknown instanceof ConnectError) {
      expect(byUser instanceof ConnectError && byUnknown instanceof ConnectError).toBe(true);
      expect(Code[(byUser as ConnectError).code]).toBe(Code[(byUnknown as ConnectError).code]);
    } else {
      expect(byUser.deletedSessionIds).toEqual([]);
      expect(byUser.failures).toEqual(byUnknown.failures);
    }

    // Every RPC of the three services was tried.
    const all = [AgentService, SessionService, MessageService].flatMap((s: DescService) => s.methods.map((m) => m.name));
    expect([...covered].sort()).toEqual([...all].sort());

    // And the first tenant's data is exactly as it was.
    expect(await snapshotOfA()).toEqual(before);
    expect((await a.sessions.getSession({ sessionId })).session!.name).toBe("New session");
  });

  it("keeps memories and state to their tenant: another tenant's ids are NotFound, its user ids see nothing", async () => {
    const memA = t.client(MemoryService);
    const stateA = t.client(StateService);
    const otherKey = (await t.newTenant("memory-intruder")).key;
    const memB = t.client(MemoryService, otherKey);
    const stateB = t.client(StateService, otherKey);
    const longId = (await memA.addMemory({ memory: { type: MemoryType.LONG, userId: "alice", content: "Alice speaks Portuguese" } })).memory!.id;
    await memA.addMemory({ memory: { type: MemoryType.SHORT, sessionId, content: "Alice asked about Portuguese verbs" } });
    await stateA.updateState({ sessionId, delta: { set: { topic: "verbs", "user:lang": "pt", "app:tier": "gold" } } });

    const snapshot = async () => {
      const db = t.app.db;
      const rows = await Promise.all([
        db.selectFrom("memories").select(["id", "content", "session_id"]).where("tenant_id", "=", t.tenantId).orderBy("id").execute(),
        db.selectFrom("user_states").select(["user_id", "state"]).where("tenant_id", "=", t.tenantId).orderBy("user_id").execute(),
        db.selectFrom("app_states").select(["agent_id", "state"]).where("tenant_id", "=", t.tenantId).orderBy("agent_id").execute(),
        db.selectFrom("sessions").select(["id", "state"]).where("tenant_id", "=", t.tenantId).orderBy("id").execute(),
      ]);
      return JSON.stringify(rows);
    };
    const before = await snapshot();
    const covered = new Set<string>();
    const failures: string[] = [];
    async function sameAsUnknown(rpc: string, call: (ids: { sessionId: string; memoryId: string }) => Promise<unknown>) {
      covered.add(rpc);
      const describe = (e: ConnectError | undefined) =>
        e ? `${Code[e.code]} ${e.findDetails(ErrorInfoSchema)[0]?.reason ?? "(no ErrorInfo)"}` : "OK";
      const got = await errorOf(call({ sessionId, memoryId: longId }));
      const want = await errorOf(call({ sessionId: newId(), memoryId: newId() }));
      if (describe(got) !== describe(want) || got?.code !== Code.NotFound) {
        failures.push(`${rpc}: first tenant's id → ${describe(got)}, unknown id → ${describe(want)}`);
      }
    }
    await sameAsUnknown("AddMemory", (x) => memB.addMemory({ memory: { type: MemoryType.SHORT, sessionId: x.sessionId, content: "intruder" } }));
    await sameAsUnknown("SearchMemory", (x) => memB.searchMemory({ query: "Portuguese", userId: "alice", sessionId: x.sessionId }));
    await sameAsUnknown("ListMemories", (x) => memB.listMemories({ sessionId: x.sessionId }));
    await sameAsUnknown("DeleteMemory", (x) => memB.deleteMemory({ memoryId: x.memoryId }));
    await sameAsUnknown("ClearMemories", (x) => memB.clearMemories({ sessionId: x.sessionId }));
    await sameAsUnknown("GetMemoryContext", (x) => memB.getMemoryContext({ query: "Portuguese", userId: "alice", sessionId: x.sessionId }));
    await sameAsUnknown("GetState", (x) => stateB.getState({ sessionId: x.sessionId }));
    await sameAsUnknown("UpdateState", (x) => stateB.updateState({ sessionId: x.sessionId, delta: { set: { "user:lang": "xx" } } }));
    expect(failures).toEqual([]);

    // The second tenant's user "alice" is another person: she sees none of the first one's memories or user: keys.
    expect((await memB.searchMemory({ query: "Portuguese verbs", userId: "alice" })).hits).toEqual([]);
    expect((await memB.listMemories({ userId: "alice" })).memories).toEqual([]);
    expect((await memB.listMemories({})).memories).toEqual([]);
    expect((await memB.getMemoryContext({ query: "Portuguese", userId: "alice" })).context).toBe("");
    expect((await memB.clearMemories({ userId: "alice" })).deletedCount).toBe(0n);
    const bAgent = (await t.client(AgentService, otherKey).createAgent({ agent: { name: "b" } })).agent!.id;
    const bSession = (await t.client(SessionService, otherKey).createSession({ session: { agentId: bAgent, userId: "alice" } })).session!.id;
    expect((await stateB.getState({ sessionId: bSession })).state).toEqual({});
    await stateB.updateState({ sessionId: bSession, delta: { set: { "user:lang": "en" } } });
    await memB.addMemory({ memory: { type: MemoryType.LONG, userId: "alice", content: "Alice speaks Portuguese too" } });
    expect((await stateA.getState({ sessionId })).state).toEqual({ topic: "verbs", "user:lang": "pt", "app:tier": "gold" });
    expect((await memA.listMemories({ userId: "alice" })).memories.map((m) => m.content).sort()).toEqual([
      "Alice asked about Portuguese verbs",
      "Alice speaks Portuguese",
    ]);

    const all = [MemoryService, StateService].flatMap((s: DescService) => s.methods.map((m) => m.name));
    expect([...covered].sort()).toEqual([...all].sort());
    expect(await snapshot()).toBe(before);
  });

  it("keeps knowledge to its tenant: another tenant's knowledge base and document ids are NotFound, like unknown ones", async () => {
    const kbA = t.client(KnowledgeService);
    const otherKey = (await t.newTenant("knowledge-intruder")).key;
    const kbB = t.client(KnowledgeService, otherKey);
    const knowledgeBaseId = (await kbA.createKnowledgeBase({ knowledgeBase: { name: "A's" } })).knowledgeBase!.id;
    const documentId = (
      await kbA.createDocument({ knowledgeBaseId, document: { name: "secret.md" }, source: { case: "text", value: "# Secret\n\nThe vault code is 1234." } })
    ).document!.id;
    const snapshot = async () => {
      const db = t.app.db;
      const rows = await Promise.all([
        db.selectFrom("knowledge_bases").select(["id", "name"]).where("tenant_id", "=", t.tenantId).orderBy("id").execute(),
        db.selectFrom("documents").select(["id", "status"]).where("tenant_id", "=", t.tenantId).orderBy("id").execute(),
        db.selectFrom("chunks").select(["id", "content"]).where("tenant_id", "=", t.tenantId).orderBy("id").execute(),
      ]);
      return JSON.stringify(rows);
    };
    const before = await snapshot();
    const covered = new Set<string>();
    const failures: string[] = [];
    type KIds = { knowledgeBaseId: string; documentId: string };
    async function sameAsUnknown(rpc: string, call: (ids: KIds) => Promise<unknown>) {
      covered.add(rpc);
      const describe = (e: ConnectError | undefined) =>
        e ? `${Code[e.code]} ${e.findDetails(ErrorInfoSchema)[0]?.reason ?? "(no ErrorInfo)"}` : "OK";
      const got = await errorOf(call({ knowledgeBaseId, documentId }));
      const want = await errorOf(call({ knowledgeBaseId: newId(), documentId: newId() }));
      if (describe(got) !== describe(want) || got?.code !== Code.NotFound) {
        failures.push(`${rpc}: first tenant's id → ${describe(got)}, unknown id → ${describe(want)}`);
      }
    }
    await sameAsUnknown("GetKnowledgeBase", (x) => kbB.getKnowledgeBase({ knowledgeBaseId: x.knowledgeBaseId }));
    await sameAsUnknown("DeleteKnowledgeBase", (x) => kbB.deleteKnowledgeBase({ knowledgeBaseId: x.knowledgeBaseId }));
    await sameAsUnknown("CreateDocument", (x) =>
      kbB.createDocument({ knowledgeBaseId: x.knowledgeBaseId, document: { name: "x.md" }, source: { case: "text", value: "intruder" } }),
    );
    await sameAsUnknown("GetDocument", (x) => kbB.getDocument({ documentId: x.documentId }));
    await sameAsUnknown("ListDocuments", (x) => kbB.listDocuments({ knowledgeBaseId: x.knowledgeBaseId }));
    await sameAsUnknown("DeleteDocument", (x) => kbB.deleteDocument({ documentId: x.documentId }));
    await sameAsUnknown("SearchKnowledge", (x) => kbB.searchKnowledge({ knowledgeBaseIds: [x.knowledgeBaseId], query: "vault code" }));
    // Agents of the second tenant cannot be pointed at the first tenant's knowledge base either.
    await sameAsUnknown("CreateAgent", (x) => t.client(AgentService, otherKey).createAgent({ agent: { name: "b", knowledgeBaseIds: [x.knowledgeBaseId] } }));
    expect(failures).toEqual([]);

    covered.add("ListKnowledgeBases");
    expect((await kbB.listKnowledgeBases({ pageSize: 1000 })).knowledgeBases.map((k) => k.id)).not.toContain(knowledgeBaseId);
    covered.add("CreateKnowledgeBase");
    const own = (await kbB.createKnowledgeBase({ knowledgeBase: { name: "B's" } })).knowledgeBase!.id;
    expect((await kbB.searchKnowledge({ knowledgeBaseIds: [own], query: "vault code" })).chunks).toEqual([]);

    const all = KnowledgeService.methods.map((m) => m.name);
    expect([...covered].filter((m) => all.includes(m)).sort()).toEqual([...all].sort());
    expect(await snapshot()).toBe(before);
  });

  it("keeps a running Ask out of the second tenant's reach: no cancel, no peek, no 'already running'", async () => {
    const running = (await a.sessions.createSession({ session: { agentId: controlledAgentId, userId: "alice" } })).session!.id;
    const stream = a.sessions.ask({ sessionId: running, content: "take your time" })[Symbol.asyncIterator]();
    const first = await stream.next();
    const started = (first.value as { event?: AskEvent }).event!;
    expect(started.event.case).toBe("started");
    const call = await controlled.call(0);
    call.push("partial ");

    const probes: [string, (askId: string, sessionId: string) => Promise<unknown>][] = [
      ["CancelAsk", (askId) => b.sessions.cancelAsk({ askId })],
      ["GetAsk", (askId) => b.sessions.getAsk({ askId })],
      // Another tenant's second Ask must not learn that one is running (FAILED_PRECONDITION would tell).
      ["Ask", (_, sessionId) => drain(b.sessions.ask({ sessionId, content: "me too" }))],
      ["WatchSession", (_, sessionId) => firstOf(b.sessions.watchSession({ sessionId }))],
    ];
    for (const [rpc, probe] of probes) {
      const f = await errorOf(probe(started.askId, running));
      const u = await errorOf(probe(newId(), newId()));
      expect({ rpc, code: f && Code[f.code], reason: f?.findDetails(ErrorInfoSchema)[0]?.reason }).toEqual({
        rpc,
        code: Code[Code.NotFound],
        reason: u?.findDetails(ErrorInfoSchema)[0]?.reason,
      });
    }

    expect((await a.sessions.getAsk({ askId: started.askId })).ask!.status).toBe(AskStatus.RUNNING);
    call.push("answer");
    call.finish();
    const rest: AskEvent[] = [];
    for (let r = await stream.next(); !r.done; r = await stream.next()) {
      const ev = (r.value as { event?: AskEvent }).event;
      if (ev) rest.push(ev);
    }
    expect(rest.at(-1)!.event.case).toBe("completed");
    expect((await a.sessions.getAsk({ askId: started.askId })).ask!.status).toBe(AskStatus.COMPLETED);
  });

  describe("authentication", () => {
    const unauthenticatedKinds: [string, () => Interceptor[]][] = [
      ["no Authorization header", () => []],
      ["an unknown key", () => [bearer("pk_not_a_key_0000000000000000000000")]],
      ["a malformed header", () => [header("Basic dXNlcjpwYXNz")]],
      ["an empty bearer", () => [header("Bearer ")]],
    ];

    function header(value: string): Interceptor {
      return (next) => (req) => {
        req.header.set("authorization", value);
        return next(req);
      };
    }

    function clientsWith(interceptors: Interceptor[]): Clients {
      const transport = createRouterTransport(t.app.routes, {
        router: { interceptors: t.app.interceptors },
        transport: { interceptors },
      });
      return {
        agents: createClient(AgentService, transport),
        sessions: createClient(SessionService, transport),
        messages: createClient(MessageService, transport),
      };
    }

    function sample(c: Clients): [string, () => Promise<unknown>][] {
      return [
        ["GetAgent", () => c.agents.getAgent({ agentId })],
        ["ListAgents", () => c.agents.listAgents({})],
        ["CreateSession", () => c.sessions.createSession({ session: { agentId, userId: "mallory" } })],
        ["ListSessions", () => c.sessions.listSessions({})],
        ["Ask", () => drain(c.sessions.ask({ sessionId, content: "hi" }))],
        ["GetAsk", () => c.sessions.getAsk({ askId })],
        ["ListMessages", () => c.messages.listMessages({ sessionId })],
        ["AppendMessages", () => c.messages.appendMessages({ sessionId, messages: [user("anonymous")] })],
        ["DeleteMessage", () => c.messages.deleteMessage({ messageId: userMessageId })],
      ];
    }

    it.each(unauthenticatedKinds)("is Unauthenticated with %s, and changes nothing", async (_, interceptors) => {
      const before = await snapshotOfA();
      for (const [rpc, call] of sample(clientsWith(interceptors()))) {
        const err = await errorOf(call());
        expect({ rpc, code: err && Code[err.code], reason: err?.findDetails(ErrorInfoSchema)[0]?.reason }).toEqual({
          rpc,
          code: Code[Code.Unauthenticated],
          reason: "UNAUTHENTICATED",
        });
      }
      expect(await snapshotOfA()).toEqual(before);
    });

    it("is Unauthenticated with a revoked key", async () => {
      const { key, row } = await createApiKey(t.app.db, t.tenantId, "revoked", "service");
      expect(await revokeApiKey(t.app.db, row.id)).toBe(1);
      const err = await errorOf(clients(key).messages.listMessages({ sessionId }));
      expect(err && Code[err.code]).toBe(Code[Code.Unauthenticated]);
      // The second tenant's key itself is valid: its NotFound answers above are about the ids.
      await b.agents.listAgents({});
    });
  });
});

/** The first response of a server stream (then the stream is closed). */
async function firstOf<T>(stream: AsyncIterable<T>): Promise<T | undefined> {
  for await (const r of stream) return r;
  return undefined;
}

async function expectNotFound(call: Promise<unknown>): Promise<void> {
  const err = await errorOf(call);
  expect(err && Code[err.code]).toBe(Code[Code.NotFound]);
}

async function errorOrValue<T>(call: Promise<T>): Promise<T | ConnectError> {
  return call.catch((e: unknown) => ConnectError.from(e));
}
