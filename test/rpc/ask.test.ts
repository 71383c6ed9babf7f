import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import {
  AgentService,
  type ContextPolicySchema,
  type GenerationConfigSchema,
} from "../../gen/parley/v1/agent_pb.js";
import { MessageRole, MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import {
  AskStatus,
  SessionService,
  type AskEvent,
  type AskRequestSchema,
} from "../../gen/parley/v1/session_pb.js";
import type { ModelRegistry } from "../../src/ask/models/registry.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { casesOf, collect, stepper } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { failure, fieldsOf, metadataOf, reasonOf } from "../helpers/errors.js";
import { controlledModel, createFakeModels, type ControlledModel } from "../helpers/fake-models.js";
import { snapshot } from "../helpers/snapshot.js";

interface AgentInit {
  model?: string;
  instructions?: string;
  generation?: MessageInitShape<typeof GenerationConfigSchema>;
  contextPolicy?: MessageInitShape<typeof ContextPolicySchema>;
}
type AskInit = MessageInitShape<typeof AskRequestSchema>;

const textOf = (events: AskEvent[]) =>
  events.map((e) => (e.event.case === "textDelta" ? e.event.value.text : "")).join("");

function expectGapFree(events: AskEvent[], askId: string) {
  expect(events.map((e) => Number(e.seq))).toEqual(events.map((_, i) => i + 1));
  for (const e of events) expect(e.askId).toBe(askId);
}

describe.each(backends())("Ask on %s", (backend) => {
  let t: TestApp;
  let agents: Client<typeof AgentService>;
  let sessions: Client<typeof SessionService>;
  let messages: Client<typeof MessageService>;
  /** The model behind `fake:ctl`, fresh for every test. */
  let ctl: ControlledModel;

  beforeAll(async () => {
    const base = createFakeModels();
    const models: ModelRegistry = {
      resolve: (m) => (m === "fake:ctl" ? { id: m, model: ctl.model } : base.resolve(m)),
    };
    t = await createTestApp({ backend, models, config: { flushIntervalMs: 5 } });
    agents = t.client(AgentService);
    sessions = t.client(SessionService);
    messages = t.client(MessageService);
  });
  afterAll(async () => {
    await t?.close();
  });
  beforeEach(() => {
    ctl = controlledModel();
  });

  async function newSession(agent: AgentInit = {}, key?: string): Promise<string> {
    const a = await t.client(AgentService, key).createAgent({ agent: { name: "bot", model: "fake:ctl", ...agent } });
    const s = await t.client(SessionService, key).createSession({ session: { agentId: a.agent!.id, userId: "u1" } });
    return s.session!.id;
  }

  async function history(sessionId: string) {
    return (await messages.listMessages({ sessionId, pageSize: 1000 })).messages;
  }

  it("streams Started, text deltas, Usage and Completed with gap-free seq, and stores both messages", async () => {
    const sessionId = await newSession({ model: "fake:hello" });
    const events = await collect(sessions.ask({ sessionId, content: "Hi there" }));
    expect(casesOf(events)).toEqual(["started", "textDelta", "textDelta", "textDelta", "textDelta", "usage", "completed"]);
    const started = events[0]!.event;
    if (started.case !== "started") throw new Error("first event is not Started");
    const askId = started.value.askId;
    expectGapFree(events, askId);
    expect(started.value.model).toBe("fake:hello");
    expect(started.value.userMessage?.content).toBe("Hi there");
    expect(started.value.userMessage?.role).toBe(MessageRole.USER);
    expect(started.value.userMessage?.status).toBe(MessageStatus.COMPLETE);
    expect(textOf(events)).toBe("Hello, world!");

    const done = events.at(-1)!.event;
    if (done.case !== "completed") throw new Error("last event is not Completed");
    expect(done.value.message?.id).toBe(started.value.assistantMessageId);
    expect(done.value.message?.status).toBe(MessageStatus.COMPLETE);
    expect(done.value.message?.content).toBe("Hello, world!");
    expect(done.value.message?.askId).toBe(askId);
    expect(done.value.message?.usage?.outputTokens).toBe(4n);

    const stored = await history(sessionId);
    expect(stored.map((m) => [m.role, m.status, m.content, Number(m.seq)])).toEqual([
      [MessageRole.USER, MessageStatus.COMPLETE, "Hi there", 1],
      [MessageRole.ASSISTANT, MessageStatus.COMPLETE, "Hello, world!", 2],
    ]);
    expect(stored[1]!.model).toBe("fake:hello");
    expect(stored[1]!.askId).toBe(askId);

    const ask = (await sessions.getAsk({ askId })).ask!;
    expect(ask.status).toBe(AskStatus.COMPLETED);
    expect(ask.sessionId).toBe(sessionId);
    expect(ask.userMessageId).toBe(started.value.userMessage?.id);
    expect(ask.assistantMessageId).toBe(started.value.assistantMessageId);
    expect(ask.usage?.totalTokens).toBe(14n);
    expect(ask.finishTime).toBeDefined();

    const session = (await sessions.getSession({ sessionId })).session!;
    expect(session.messageCount).toBe(2n);
    expect(session.lastSeq).toBe(2n);
    const row = await t.app.db.selectFrom("sessions").selectAll().where("id", "=", sessionId).executeTakeFirstOrThrow();
    expect([row.active_ask_id, row.lease_owner, row.lease_expire_time]).toEqual([null, null, null]);
    expect(t.app.asks.running()).toBe(0);
  });

  it("flushes the partial answer to the STREAMING assistant message while the model is still answering", async () => {
    const sessionId = await newSession();
    const s = stepper(sessions.ask({ sessionId, content: "Tell me" }));
    const started = await s.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    const assistantId = started.event.value.assistantMessageId;
    const call = await ctl.call(0);
    call.push("Hel");
    call.push("lo");
    expect((await s.next()).event).toEqual({ case: "textDelta", value: expect.objectContaining({ text: "Hel" }) });
    expect((await s.next()).event).toEqual({ case: "textDelta", value: expect.objectContaining({ text: "lo" }) });
    await vi.waitFor(
      async () => {
        const m = (await messages.getMessage({ messageId: assistantId })).message!;
        expect(m.content).toBe("Hello");
        expect(m.status).toBe(MessageStatus.STREAMING);
      },
      { timeout: 10_000, interval: 10 },
    );
    call.push(" there");
    call.finish();
    const rest = await s.rest();
    expect(casesOf(rest)).toEqual(["textDelta", "usage", "completed"]);
    const m = (await messages.getMessage({ messageId: assistantId })).message!;
    expect([m.content, m.status]).toEqual(["Hello there", MessageStatus.COMPLETE]);
  });

  it("rejects a second Ask while one runs: FAILED_PRECONDITION ASK_ALREADY_RUNNING with the running ask_id", async () => {
    const sessionId = await newSession();
    const s = stepper(sessions.ask({ sessionId, content: "first" }));
    const started = await s.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    const before = await snapshot(t.app.db, ["sessions", "messages", "asks"]);

    const err = await failure(collect(sessions.ask({ sessionId, content: "second" })));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(reasonOf(err)).toBe("ASK_ALREADY_RUNNING");
    expect(metadataOf(err).ask_id).toBe(started.event.value.askId);
    expect(await snapshot(t.app.db, ["sessions", "messages", "asks"])).toBe(before);

    (await ctl.call(0)).finish();
    expect(casesOf(await s.rest())).toEqual(["usage", "completed"]);
    // The claim is released: the session takes the next Ask.
    const next = stepper(sessions.ask({ sessionId, content: "third" }));
    expect((await next.next()).event.case).toBe("started");
    (await ctl.call(1)).finish();
    expect((await next.rest()).at(-1)?.event.case).toBe("completed");
  });

  it("makes Ask idempotent by request_id: a retry while running follows the same Ask live, after completion replays it", async () => {
    const sessionId = await newSession();
    const req: AskInit = { sessionId, content: "once", requestId: "req-1" };
    const first = stepper(sessions.ask(req));
    const started = await first.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    const call = await ctl.call(0);
    call.push("a");
    const deltaA = await first.next();

    const retry = stepper(sessions.ask(req));
    const replayed = await retry.next();
    expect(replayed).toEqual(started);
    expect(textOf([await retry.next()])).toBe("a");
    call.push("b");
    call.finish();
    const restFirst = await first.rest();
    const restRetry = await retry.rest();
    expect(restRetry).toEqual(restFirst);
    expect(casesOf(restFirst)).toEqual(["textDelta", "usage", "completed"]);

    const replay = await collect(sessions.ask(req));
    expect(replay).toEqual([started, deltaA, ...restFirst]);
    expectGapFree(replay, started.event.value.askId);
    expect(ctl.calls).toHaveLength(1);
    expect((await history(sessionId)).map((m) => m.content)).toEqual(["once", "ab"]);

    const err = await failure(collect(sessions.ask({ ...req, content: "other" })));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(fieldsOf(err)).toEqual(["request_id"]);
    expect(reasonOf(err)).toBe("REQUEST_ID_REUSED");
    expect(await history(sessionId)).toHaveLength(2);
  });

  it("ResumeAsk replays the events after a seq, then follows live; reassembled text is the model's output", async () => {
    const sessionId = await newSession();
    const first = stepper(sessions.ask({ sessionId, content: "resume me" }));
    const started = await first.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    const askId = started.event.value.askId;
    const call = await ctl.call(0);
    call.push("one ");
    const d1 = await first.next();

    // Attach after the first event: replays the delta, then follows what comes next.
    const resumed = stepper(sessions.resumeAsk({ askId, afterSeq: 1n }));
    expect(await resumed.next()).toEqual(d1);
    call.push("two");
    call.finish();
    const restFirst = await first.rest();
    const restResumed = await resumed.rest();
    expect(restResumed).toEqual(restFirst);
    expect(textOf([d1, ...restResumed])).toBe("one two");

    // After completion, from any seq: exactly the tail.
    const all = [started, d1, ...restFirst];
    for (const after of [0, 2, all.length]) {
      const tail = await collect(sessions.resumeAsk({ askId, afterSeq: BigInt(after) }));
      expect(tail).toEqual(all.slice(after));
    }

    const neg = await failure(collect(sessions.resumeAsk({ askId, afterSeq: -1n })));
    expect([neg.code, fieldsOf(neg)]).toEqual([Code.InvalidArgument, ["after_seq"]]);
    const other = await t.newTenant("resume-other");
    const foreign = await failure(collect(t.client(SessionService, other.key).resumeAsk({ askId })));
    expect(foreign.code).toBe(Code.NotFound);
  });

  it("CancelAsk aborts the model call and keeps the partial answer as CANCELLED", async () => {
    const sessionId = await newSession();
    const s = stepper(sessions.ask({ sessionId, content: "long story" }));
    const started = await s.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    const askId = started.event.value.askId;
    const call = await ctl.call(0);
    call.push("Once upon");
    const delta = await s.next();

    const cancelled = (await sessions.cancelAsk({ askId })).ask!;
    expect(cancelled.status).toBe(AskStatus.CANCELLED);
    expect(await call.aborted).toBe("cancel_ask");
    const rest = await s.rest();
    expect(casesOf(rest)).toEqual(["cancelled"]);
    const end = rest[0]!.event;
    if (end.case !== "cancelled") throw new Error("expected Cancelled");
    expect(end.value.reason).toBe("cancel_ask");
    expect(end.value.message?.status).toBe(MessageStatus.CANCELLED);
    expect(end.value.message?.content).toBe("Once upon");
    expectGapFree([started, delta, ...rest], askId);

    const stored = await history(sessionId);
    expect(stored.slice(0, 2).map((m) => [m.status, m.content])).toEqual([
      [MessageStatus.COMPLETE, "long story"],
      [MessageStatus.CANCELLED, "Once upon"],
    ]);
    // Cancelling a finished Ask returns it unchanged.
    expect((await sessions.cancelAsk({ askId })).ask).toEqual(cancelled);
  });

  it("cancels the run when the Ask's own client goes away, keeping the partial answer", async () => {
    const sessionId = await newSession();
    const abort = new AbortController();
    const req: AskInit = { sessionId, content: "go", requestId: "client-abort" };
    const s = stepper(sessions.ask(req, { signal: abort.signal }));
    const started = await s.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    const call = await ctl.call(0);
    call.push("partial");
    await s.next();
    const { askId, assistantMessageId } = started.event.value;
    abort.abort();
    expect(await call.aborted).toBe("client");
    await vi.waitFor(
      async () => expect((await sessions.getAsk({ askId })).ask?.status).toBe(AskStatus.CANCELLED),
      { timeout: 10_000, interval: 10 },
    );
    const m = (await messages.getMessage({ messageId: assistantMessageId })).message!;
    expect([m.status, m.content]).toEqual([MessageStatus.CANCELLED, "partial"]);
    // A retry of the same request replays the cancelled Ask, with who cancelled it.
    const replay = await collect(sessions.ask(req));
    const end = replay.at(-1)!.event;
    expect(end.case === "cancelled" && end.value.reason).toBe("client");
  });

  it("with store=false runs the turn on the history but stores no message (the Ask is recorded)", async () => {
    const sessionId = await newSession({ instructions: "Be brief." });
    await messages.appendMessages({
      sessionId,
      messages: [
        { role: MessageRole.USER, content: "earlier question" },
        { role: MessageRole.ASSISTANT, content: "earlier answer" },
      ],
    });
    const before = await history(sessionId);
    const s = stepper(sessions.ask({ sessionId, content: "ephemeral", store: false }));
    const started = await s.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    expect(started.event.value.assistantMessageId).toBe("");
    expect(started.event.value.userMessage?.id).toBe("");
    expect(started.event.value.userMessage?.content).toBe("ephemeral");
    const call = await ctl.call(0);
    expect(call.options.prompt.map((m) => m.role)).toEqual(["system", "user", "assistant", "user"]);
    expect(JSON.stringify(call.options.prompt.at(-1))).toContain("ephemeral");
    call.push("not kept");
    call.finish();
    const rest = await s.rest();
    const end = rest.at(-1)!.event;
    if (end.case !== "completed") throw new Error("expected Completed");
    expect(end.value.message?.content).toBe("not kept");
    expect(end.value.message?.id).toBe("");
    expect(await history(sessionId)).toEqual(before);
    const ask = (await sessions.getAsk({ askId: started.event.value.askId })).ask!;
    expect([ask.status, ask.userMessageId, ask.assistantMessageId]).toEqual([AskStatus.COMPLETED, "", ""]);
  });

  it("reports a model failure mid-stream as Failed (unavailable) with the partial answer FAILED, and the session takes new Asks", async () => {
    const sessionId = await newSession();
    const s = stepper(sessions.ask({ sessionId, content: "q" }));
    const started = await s.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    const call = await ctl.call(0);
    call.push("half an ");
    call.fail();
    const rest = await s.rest();
    expect(casesOf(rest)).toEqual(["textDelta", "failed"]);
    const end = rest.at(-1)!.event;
    if (end.case !== "failed") throw new Error("expected Failed");
    expect(end.value.code).toBe("unavailable");
    expect(end.value.assistantMessage?.status).toBe(MessageStatus.FAILED);
    expect(end.value.assistantMessage?.content).toBe("half an ");
    const ask = (await sessions.getAsk({ askId: started.event.value.askId })).ask!;
    expect([ask.status, ask.errorCode]).toEqual([AskStatus.FAILED, "unavailable"]);

    const again = stepper(sessions.ask({ sessionId, content: "again" }));
    expect((await again.next()).event.case).toBe("started");
    (await ctl.call(1)).finish();
    expect((await again.rest()).at(-1)?.event.case).toBe("completed");
  });

  it("reports a model that fails before any text as Failed with an empty FAILED assistant message", async () => {
    const sessionId = await newSession({ model: "fake:fail" });
    const events = await collect(sessions.ask({ sessionId, content: "q" }));
    expect(casesOf(events)).toEqual(["started", "failed"]);
    const end = events[1]!.event;
    if (end.case !== "failed") throw new Error("expected Failed");
    expect(end.value.code).toBe("unavailable");
    expect([end.value.assistantMessage?.status, end.value.assistantMessage?.content]).toEqual([MessageStatus.FAILED, ""]);
    expect((await history(sessionId)).map((m) => m.status)).toEqual([MessageStatus.COMPLETE, MessageStatus.FAILED]);
  });

  it("fails with FAILED_PRECONDITION MODEL_PROVIDER_NOT_CONFIGURED before storing anything", async () => {
    const sessionId = await newSession({ model: "openai:gpt-4o-mini" });
    const before = await snapshot(t.app.db, ["sessions", "messages", "asks"]);
    const err = await failure(collect(sessions.ask({ sessionId, content: "q" })));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(reasonOf(err)).toBe("MODEL_PROVIDER_NOT_CONFIGURED");
    expect(metadataOf(err).model).toBe("openai:gpt-4o-mini");
    expect(await snapshot(t.app.db, ["sessions", "messages", "asks"])).toBe(before);
  });

  it("validates the request before storing anything", async () => {
    const sessionId = await newSession();
    const before = await snapshot(t.app.db, ["sessions", "messages", "asks"]);
    const cases: Array<[AskInit, string]> = [
      [{ sessionId: "", content: "q" }, "session_id"],
      [{ sessionId: "not-a-uuid", content: "q" }, "session_id"],
      [{ sessionId, content: "" }, "content"],
      [{ sessionId, content: "é".repeat(512 * 1024 + 1) }, "content"],
      [{ sessionId, content: "q", requestId: "r".repeat(257) }, "request_id"],
      [{ sessionId, content: "q", overrides: { temperature: 2.5 } }, "overrides.temperature"],
      [{ sessionId, content: "q", overrides: { temperature: -0.1 } }, "overrides.temperature"],
      [{ sessionId, content: "q", overrides: { maxOutputTokens: 0 } }, "overrides.max_output_tokens"],
      [{ sessionId, content: "q", overrides: { maxOutputTokens: 1_000_001 } }, "overrides.max_output_tokens"],
      [{ sessionId, content: "q", metadata: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, i])) }, "metadata"],
      [{ sessionId, content: "q", metadata: { big: "x".repeat(17 * 1024) } }, "metadata"],
    ];
    for (const [req, field] of cases) {
      const err = await failure(collect(sessions.ask(req)));
      expect([err.code, fieldsOf(err)], JSON.stringify(field)).toEqual([Code.InvalidArgument, [field]]);
    }
    // At the limits: accepted.
    const ok = stepper(
      sessions.ask({ sessionId, content: "q", requestId: "r".repeat(256), overrides: { temperature: 2, maxOutputTokens: 1 } }),
    );
    expect((await ok.next()).event.case).toBe("started");
    (await ctl.call(0)).finish();
    expect((await ok.rest()).at(-1)?.event.case).toBe("completed");
  });

  it("answers NOT_FOUND for an unknown session, another tenant's session, and other tenants' Asks; FAILED_PRECONDITION when archived", async () => {
    const other = await t.newTenant();
    const theirs = await newSession({ model: "fake:hello" }, other.key);
    const mine = await newSession({ model: "fake:hello" });
    const before = await snapshot(t.app.db, ["sessions", "messages", "asks"]);
    for (const sessionId of [theirs, "0190a8a0-0000-7000-8000-000000000000"]) {
      const err = await failure(collect(sessions.ask({ sessionId, content: "q" })));
      expect(err.code).toBe(Code.NotFound);
    }
    expect(await snapshot(t.app.db, ["sessions", "messages", "asks"])).toBe(before);

    const events = await collect(t.client(SessionService, other.key).ask({ sessionId: theirs, content: "q" }));
    const askId = events[0]!.event.case === "started" ? events[0]!.event.value.askId : "";
    expect((await failure(sessions.getAsk({ askId }))).code).toBe(Code.NotFound);
    expect((await failure(sessions.cancelAsk({ askId }))).code).toBe(Code.NotFound);
    expect((await failure(sessions.getAsk({ askId: "0190a8a0-0000-7000-8000-000000000000" }))).code).toBe(Code.NotFound);
    expect((await failure(sessions.getAsk({ askId: "nope" }))).code).toBe(Code.InvalidArgument);
    // A retry of their request_id from this tenant is just an unknown session.
    expect((await failure(collect(sessions.ask({ sessionId: theirs, content: "q", requestId: "x" })))).code).toBe(Code.NotFound);

    await sessions.archiveSession({ sessionId: mine });
    const archived = await snapshot(t.app.db, ["sessions", "messages", "asks"]);
    const err = await failure(collect(sessions.ask({ sessionId: mine, content: "q" })));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(reasonOf(err)).toBe("SESSION_ARCHIVED");
    expect(await snapshot(t.app.db, ["sessions", "messages", "asks"])).toBe(archived);
  });

  it("sends the agent's instructions, the history window and the generation parameters (overrides win) to the model", async () => {
    const sessionId = await newSession({
      instructions: "You are terse.",
      generation: { temperature: 0.3, topP: 0.8, maxOutputTokens: 100, stop: ["END"] },
      contextPolicy: { maxHistoryMessages: 3 },
    });
    await messages.appendMessages({
      sessionId,
      messages: ["m1", "m2", "m3", "m4"].map((content, i) => ({
        role: i % 2 === 0 ? MessageRole.USER : MessageRole.ASSISTANT,
        content,
      })),
    });
    const s = stepper(sessions.ask({ sessionId, content: "m5", overrides: { temperature: 1.5 } }));
    await s.next();
    const call = await ctl.call(0);
    const prompt = call.options.prompt;
    expect(prompt[0]).toEqual({ role: "system", content: "You are terse." });
    expect(prompt.slice(1).map((m) => [m.role, JSON.stringify(m.content)])).toEqual([
      ["user", expect.stringContaining('"m3"')],
      ["assistant", expect.stringContaining('"m4"')],
      ["user", expect.stringContaining('"m5"')],
    ]);
    expect(call.options.temperature).toBe(1.5);
    expect(call.options.topP).toBe(0.8);
    expect(call.options.maxOutputTokens).toBe(100);
    expect(call.options.stopSequences).toEqual(["END"]);
    call.finish();
    await s.rest();
  });

  it("includes a previous turn's CANCELLED partial answer in the next turn's context", async () => {
    const sessionId = await newSession();
    const s = stepper(sessions.ask({ sessionId, content: "first" }));
    const started = await s.next();
    const call = await ctl.call(0);
    call.push("cut short");
    await s.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    await sessions.cancelAsk({ askId: started.event.value.askId });
    await s.rest();

    const next = stepper(sessions.ask({ sessionId, content: "second" }));
    await next.next();
    const call2 = await ctl.call(1);
    expect(call2.options.prompt.map((m) => [m.role, JSON.stringify(m.content)])).toEqual([
      ["user", expect.stringContaining('"first"')],
      ["assistant", expect.stringContaining('"cut short"')],
      ["user", expect.stringContaining('"second"')],
    ]);
    call2.finish();
    await next.rest();
  });
});
