import { Code, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageRole, MessageStatus, type Message } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService, type AskEvent, type WatchSessionResponse } from "../../gen/parley/v1/session_pb.js";
import type { ModelRegistry } from "../../src/ask/models/registry.js";
import { newId } from "../../src/ids.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { stepper } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { failure, fieldsOf, reasonOf } from "../helpers/errors.js";
import { controlledModel, createFakeModels, type ControlledModel } from "../helpers/fake-models.js";

/** A WatchSession stream read one update at a time, that can be disconnected. */
function watch(sessions: Client<typeof SessionService>, sessionId: string, afterSeq = 0n) {
  const abort = new AbortController();
  const it = sessions.watchSession({ sessionId, afterSeq }, { signal: abort.signal })[Symbol.asyncIterator]();
  return {
    async next(): Promise<WatchSessionResponse> {
      const r = await it.next();
      if (r.done) throw new Error("the watch ended");
      return r.value;
    },
    /** Reads updates until one satisfies pred; returns all read. */
    async until(pred: (u: WatchSessionResponse) => boolean): Promise<WatchSessionResponse[]> {
      const out: WatchSessionResponse[] = [];
      for (;;) {
        const u = await this.next();
        out.push(u);
        if (pred(u)) return out;
      }
    },
    /** The error the stream ends with. */
    async error() {
      return failure(
        (async () => {
          for (let r = await it.next(); !r.done; r = await it.next());
        })(),
      );
    },
    disconnect() {
      abort.abort();
    },
  };
}

const messagesOf = (us: WatchSessionResponse[]): Message[] =>
  us.flatMap((u) => (u.update.case === "message" ? [u.update.value] : []));
const eventsOf = (us: WatchSessionResponse[]): AskEvent[] =>
  us.flatMap((u) => (u.update.case === "askEvent" ? [u.update.value] : []));
const isMessage = (content: string, status = MessageStatus.COMPLETE) => (u: WatchSessionResponse) =>
  u.update.case === "message" && u.update.value.content === content && u.update.value.status === status;

describe.each(backends())("WatchSession on %s", (backend) => {
  let t: TestApp;
  const h = { ctl: controlledModel() as ControlledModel };
  let agents: Client<typeof AgentService>;
  let sessions: Client<typeof SessionService>;
  let messages: Client<typeof MessageService>;

  beforeAll(async () => {
    const base = createFakeModels();
    const models: ModelRegistry = { resolve: (m) => (m === "fake:ctl" ? { id: m, model: h.ctl.model } : base.resolve(m)) };
    t = await createTestApp({ backend, models, config: { flushIntervalMs: 5 } });
    agents = t.client(AgentService);
    sessions = t.client(SessionService);
    messages = t.client(MessageService);
  });
  afterAll(async () => {
    await t?.close();
  });
  beforeEach(() => {
    h.ctl = controlledModel();
  });

  async function newSession(prologue = ""): Promise<string> {
    const a = await agents.createAgent({ agent: { name: "bot", model: "fake:ctl", prologue } });
    return (await sessions.createSession({ session: { agentId: a.agent!.id, userId: "u" } })).session!.id;
  }

  it("catches up on the stored messages after the cursor, then follows an Ask live and the messages it creates", async () => {
    const sessionId = await newSession("Welcome");
    await messages.appendMessages({
      sessionId,
      messages: [
        { role: MessageRole.USER, content: "earlier" },
        { role: MessageRole.ASSISTANT, content: "earlier answer" },
      ],
    });
    const w = watch(sessions, sessionId, 1n);
    const caughtUp = [await w.next(), await w.next()];
    expect(caughtUp.map((u) => [u.update.case, (u.update.value as Message).content, u.cursor])).toEqual([
      ["message", "earlier", 2n],
      ["message", "earlier answer", 3n],
    ]);

    const ask = stepper(sessions.ask({ sessionId, content: "live question" }));
    await ask.next();
    const userSeen = await w.until(isMessage("live question"));
    expect(userSeen.at(-1)!.cursor).toBe(4n);
    const call = await h.ctl.call(0);
    call.push("live ");
    call.push("answer");
    call.finish();
    await ask.rest();
    const rest = await w.until(isMessage("live answer"));
    const events = eventsOf(rest);
    expect(events[0]!.event.case).toBe("started");
    expect(events.filter((e) => e.event.case === "textDelta").map((e) => (e.event.value as { text: string }).text).join("")).toBe(
      "live answer",
    );
    expect(events.at(-1)!.event.case).toBe("completed");
    // Events carry the cursor of the last message delivered: the streaming answer is not passed.
    expect(rest.filter((u) => u.update.case === "askEvent").every((u) => u.cursor === 4n)).toBe(true);
    expect(rest.at(-1)!.cursor).toBe(5n);
    expect(messagesOf(rest).map((m) => m.content)).toEqual(["live answer"]);

    // AppendMessages shows up too.
    await messages.appendMessages({ sessionId, messages: [{ role: MessageRole.USER, content: "appended" }] });
    const appended = await w.next();
    expect([appended.update.case, (appended.update.value as Message).content, appended.cursor]).toEqual(["message", "appended", 6n]);
    w.disconnect();
  });

  it("delivers every message exactly once across a reconnect in the middle of an Ask", async () => {
    const sessionId = await newSession("Hi");
    const seen: Message[] = [];
    const w1 = watch(sessions, sessionId);
    seen.push(...messagesOf([await w1.next()]));
    const ask = stepper(sessions.ask({ sessionId, content: "question" }));
    await ask.next();
    const call = await h.ctl.call(0);
    call.push("part one, ");
    const before = await w1.until((u) => u.update.case === "askEvent" && u.update.value.event.case === "textDelta");
    seen.push(...messagesOf(before));
    const cursor = before.at(-1)!.cursor;
    w1.disconnect();

    // While disconnected: more of the answer, and a message appended during the Ask (held behind the streaming answer).
    call.push("part two");
    await messages.appendMessages({ sessionId, messages: [{ role: MessageRole.SYSTEM, content: "note" }] });

    const w2 = watch(sessions, sessionId, cursor);
    // The running Ask is replayed from its start, so the partial answer can be rebuilt.
    const replay = await w2.until((u) => u.update.case === "askEvent" && u.update.value.event.case === "textDelta" && u.update.value.seq === 3n);
    const replayEvents = eventsOf(replay);
    expect(replayEvents[0]!.event.case).toBe("started");
    expect(messagesOf(replay)).toEqual([]);
    call.finish();
    await ask.rest();
    const after = await w2.until(isMessage("note"));
    seen.push(...messagesOf(after));
    w2.disconnect();

    const stored = (await messages.listMessages({ sessionId })).messages;
    expect(seen.map((m) => m.id)).toEqual(stored.map((m) => m.id));
    expect(seen.map((m) => [m.content, m.status])).toEqual([
      ["Hi", MessageStatus.COMPLETE],
      ["question", MessageStatus.COMPLETE],
      ["part one, part two", MessageStatus.COMPLETE],
      ["note", MessageStatus.COMPLETE],
    ]);
    expect(after.at(-1)!.cursor).toBe(BigInt(stored.at(-1)!.seq));

    // Reconnecting with the final cursor delivers nothing again; the next message is new.
    const w3 = watch(sessions, sessionId, after.at(-1)!.cursor);
    await messages.appendMessages({ sessionId, messages: [{ role: MessageRole.USER, content: "later" }] });
    const next = await w3.next();
    expect([(next.update.value as Message).content, next.cursor]).toEqual(["later", after.at(-1)!.cursor + 1n]);
    w3.disconnect();
  });

  it("delivers a cancelled answer once, in its final state", async () => {
    const sessionId = await newSession();
    const w = watch(sessions, sessionId);
    const ask = stepper(sessions.ask({ sessionId, content: "q" }));
    const started = await ask.next();
    (await h.ctl.call(0)).push("half");
    await w.until((u) => u.update.case === "askEvent" && u.update.value.event.case === "textDelta");
    await sessions.cancelAsk({ askId: started.askId });
    const rest = await w.until((u) => u.update.case === "message" && u.update.value.role === MessageRole.ASSISTANT);
    expect(messagesOf(rest).map((m) => [m.content, m.status])).toEqual([["half", MessageStatus.CANCELLED]]);
    expect(eventsOf(rest).at(-1)!.event.case).toBe("cancelled");
    w.disconnect();
  });

  it("ends with NOT_FOUND when the session is deleted while watched", async () => {
    const sessionId = await newSession("Hi");
    const w = watch(sessions, sessionId);
    await w.next();
    await sessions.deleteSession({ sessionId });
    const err = await w.error();
    expect(Code[err.code]).toBe(Code[Code.NotFound]);
  });

  it("answers bad input, unknown sessions and other tenants' sessions before streaming", async () => {
    const sessionId = await newSession("Hi");
    const bad = await failure(watch(sessions, "not-a-uuid").next());
    expect([Code[bad.code], fieldsOf(bad)]).toEqual([Code[Code.InvalidArgument], ["session_id"]]);
    const negative = await failure(watch(sessions, sessionId, -1n).next());
    expect([Code[negative.code], fieldsOf(negative)]).toEqual([Code[Code.InvalidArgument], ["after_seq"]]);
    const unknown = await failure(watch(sessions, newId()).next());
    const other = await t.newTenant();
    const foreign = await failure(watch(t.client(SessionService, other.key), sessionId).next());
    expect([Code[foreign.code], reasonOf(foreign)]).toEqual([Code[unknown.code], reasonOf(unknown)]);
    expect(Code[unknown.code]).toBe(Code[Code.NotFound]);
  });
});
