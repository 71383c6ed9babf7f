import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { sql } from "kysely";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { create } from "@bufbuild/protobuf";
import { AskRequestSchema, AskStatus, SessionService, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import { validateAsk } from "../../src/ask/runtime.js";
import type { ModelRegistry } from "../../src/ask/models/registry.js";
import type { Config } from "../../src/config.js";
import { newId } from "../../src/ids.js";
import { insertAsk } from "../../src/repos/asks.js";
import { appendMessages } from "../../src/repos/messages.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { casesOf, collect, stepper } from "../helpers/ask-stream.js";
import { backends, type Backend } from "../helpers/databases.js";
import { failure, reasonOf } from "../helpers/errors.js";
import { controlledModel, createFakeModels, type ControlledModel } from "../helpers/fake-models.js";

function startedOf(e: AskEvent) {
  if (e.event.case !== "started") throw new Error(`expected Started, got ${e.event.case}`);
  return e.event.value;
}

/** A test app whose `fake:ctl` model is the current `ctl` of the returned handle. */
async function appWithControlledModel(backend: Backend, config: Partial<Config> = {}) {
  const handle = { ctl: controlledModel() as ControlledModel };
  const base = createFakeModels();
  const models: ModelRegistry = {
    resolve: (m) => (m === "fake:ctl" ? { id: m, model: handle.ctl.model } : base.resolve(m)),
  };
  const t = await createTestApp({ backend, models, config: { flushIntervalMs: 5, ...config } });
  const agents = t.client(AgentService);
  const sessions = t.client(SessionService);
  const messages = t.client(MessageService);
  async function newSession(model = "fake:ctl"): Promise<string> {
    const a = await agents.createAgent({ agent: { name: "bot", model } });
    return (await sessions.createSession({ session: { agentId: a.agent!.id, userId: "u" } })).session!.id;
  }
  return { t, handle, sessions, messages, newSession };
}

describe.each(backends())("Ask lifecycle on %s", (backend) => {
  let t: TestApp;
  let h: { ctl: ControlledModel };
  let sessions: Client<typeof SessionService>;
  let messages: Client<typeof MessageService>;
  let newSession: (model?: string) => Promise<string>;

  beforeAll(async () => {
    ({ t, handle: h, sessions, messages, newSession } = await appWithControlledModel(backend));
  });
  afterAll(async () => {
    await t?.close();
  });
  beforeEach(() => {
    h.ctl = controlledModel();
  });

  it("lets exactly one of many concurrent Asks on a session run; the others get ASK_ALREADY_RUNNING with its id", async () => {
    const sessionId = await newSession();
    const streams = Array.from({ length: 8 }, (_, i) => stepper(sessions.ask({ sessionId, content: `q${i}` })));
    const firsts = await Promise.allSettled(streams.map((s) => s.next()));
    const winners = firsts.flatMap((r, i) => (r.status === "fulfilled" ? [{ i, started: startedOf(r.value) }] : []));
    expect(winners).toHaveLength(1);
    const winner = winners[0]!;
    for (const r of firsts) {
      if (r.status === "fulfilled") continue;
      const err = ConnectError.from(r.reason);
      expect([err.code, reasonOf(err)]).toEqual([Code.FailedPrecondition, "ASK_ALREADY_RUNNING"]);
      expect(err.findDetails(ErrorInfoSchema)[0]?.metadata.ask_id).toBe(winner.started.askId);
    }
    (await h.ctl.call(0)).finish();
    expect((await streams[winner.i]!.rest()).at(-1)?.event.case).toBe("completed");
    expect(h.ctl.calls).toHaveLength(1);
    const stored = (await messages.listMessages({ sessionId })).messages;
    expect(stored.map((m) => m.content)).toEqual([`q${winner.i}`, ""]);
  });

  it("folds concurrent requests with one request_id into one Ask that they all follow", async () => {
    const sessionId = await newSession();
    const streams = Array.from({ length: 6 }, () => stepper(sessions.ask({ sessionId, content: "same", requestId: "dup" })));
    const starts = (await Promise.all(streams.map((s) => s.next()))).map(startedOf);
    expect(new Set(starts.map((s) => s.askId)).size).toBe(1);
    const call = await h.ctl.call(0);
    call.push("one answer");
    call.finish();
    const rests = await Promise.all(streams.map((s) => s.rest()));
    for (const r of rests) expect(r).toEqual(rests[0]);
    expect(h.ctl.calls).toHaveLength(1);
    expect((await messages.listMessages({ sessionId })).messages.map((m) => m.content)).toEqual(["same", "one answer"]);
  });

  /** Stores an Ask as a replica that then died would have left it: running, its session claimed until `leaseEnd`. */
  async function abandonedAsk(sessionId: string, leaseEnd: "past" | "future", requestId: string | null = null) {
    const askId = newId();
    const assistantId = newId();
    await t.app.db.transaction().execute(async (tx) => {
      await insertAsk(tx, {
        id: askId,
        tenant_id: t.tenantId,
        session_id: sessionId,
        status: "running",
        request_id: requestId,
        request_hash: "x",
        user_message_id: null,
        assistant_message_id: assistantId,
        model: "fake:ctl",
        store: true,
        owner: "dead-replica",
      });
      await appendMessages(tx, t.tenantId, sessionId, [
        { id: assistantId, role: "assistant", content: "flushed so far", status: "streaming", askId, model: "fake:ctl" },
      ]);
      await tx
        .updateTable("sessions")
        .set({
          active_ask_id: askId,
          lease_owner: "dead-replica",
          lease_expire_time: leaseEnd === "past" ? sql<Date>`now() - interval '1 second'` : sql<Date>`now() + interval '1 hour'`,
        })
        .where("id", "=", sessionId)
        .execute();
    });
    return { askId, assistantId };
  }

  it("takes over a session whose Ask's lease expired, marking that Ask and its message INTERRUPTED with what was flushed", async () => {
    const sessionId = await newSession();
    const dead = await abandonedAsk(sessionId, "past");
    expect((await sessions.getAsk({ askId: dead.askId })).ask?.status).toBe(AskStatus.RUNNING);

    const s = stepper(sessions.ask({ sessionId, content: "next" }));
    startedOf(await s.next());
    const old = (await sessions.getAsk({ askId: dead.askId })).ask!;
    expect(old.status).toBe(AskStatus.INTERRUPTED);
    expect(old.finishTime).toBeDefined();
    const m = (await messages.getMessage({ messageId: dead.assistantId })).message!;
    expect([m.status, m.content]).toEqual([MessageStatus.INTERRUPTED, "flushed so far"]);
    (await h.ctl.call(0)).finish();
    expect((await s.rest()).at(-1)?.event.case).toBe("completed");
  });

  it("respects a live lease held by another replica, and CancelAsk finishes such an Ask once its lease has expired", async () => {
    const sessionId = await newSession();
    const other = await abandonedAsk(sessionId, "future", "elsewhere");
    const busy = await failure(collect(sessions.ask({ sessionId, content: "q" })));
    expect([busy.code, reasonOf(busy)]).toEqual([Code.FailedPrecondition, "ASK_ALREADY_RUNNING"]);
    // CancelAsk of an Ask another replica runs stores the request (for that replica's lease
    // renewal), publishes it, and waits for the Ask to end: here nobody runs it, so the caller's
    // deadline ends the wait and the request stays recorded.
    const remote = await failure(sessions.cancelAsk({ askId: other.askId }, { timeoutMs: 300 }));
    expect(remote.code).toBe(Code.DeadlineExceeded);
    const requested = await t.app.db.selectFrom("asks").select("cancel_request_time").where("id", "=", other.askId).executeTakeFirstOrThrow();
    expect(requested.cancel_request_time).not.toBeNull();

    await t.app.db
      .updateTable("sessions")
      .set({ lease_expire_time: sql<Date>`now() - interval '1 second'` })
      .where("id", "=", sessionId)
      .execute();
    const ask = (await sessions.cancelAsk({ askId: other.askId })).ask!;
    expect(ask.status).toBe(AskStatus.INTERRUPTED);
    const row = await t.app.db.selectFrom("sessions").selectAll().where("id", "=", sessionId).executeTakeFirstOrThrow();
    expect(row.active_ask_id).toBeNull();
    const m = (await messages.getMessage({ messageId: other.assistantId })).message!;
    expect([m.status, m.content]).toEqual([MessageStatus.INTERRUPTED, "flushed so far"]);

    // A retry of the interrupted Ask replays it ending in its own terminal event.
    const retry = create(AskRequestSchema, { sessionId, content: "q", requestId: "elsewhere" });
    await t.app.db.updateTable("asks").set({ request_hash: validateAsk(retry).hash }).where("id", "=", other.askId).execute();
    const replay = await collect(sessions.ask(retry));
    expect(replay.map((e) => e.event.case)).toEqual(["started", "textDelta", "interrupted"]);
    expect(replay.at(-1)!.event.value).toMatchObject({ message: { status: MessageStatus.INTERRUPTED, content: "flushed so far" } });
  });
});

describe.each(backends())("Ask event replay once the log has let the events go, on %s", (backend) => {
  let app: Awaited<ReturnType<typeof appWithControlledModel>>;

  beforeAll(async () => {
    // Nothing of a finished Ask stays in memory: every replay is rebuilt from storage.
    app = await appWithControlledModel(backend, { askEventLogMaxBytes: 0 });
  });
  afterAll(async () => {
    await app?.t.close();
  });

  it("rebuilds a completed Ask: Started, the whole answer as one delta, Usage, Completed", async () => {
    const sessionId = await app.newSession("fake:hello");
    const live = await collect(app.sessions.ask({ sessionId, content: "hi", requestId: "r" }));
    const replay = await collect(app.sessions.ask({ sessionId, content: "hi", requestId: "r" }));
    expect(casesOf(replay)).toEqual(["started", "textDelta", "usage", "completed"]);
    expect(replay.map((e) => Number(e.seq))).toEqual([1, 2, 3, 4]);
    expect(replay[0]).toEqual(live[0]);
    expect(replay[1]!.event.value).toMatchObject({ text: "Hello, world!" });
    expect(replay.at(-1)).toMatchObject({ event: { case: "completed" } });
    const liveEnd = live.at(-1)!.event;
    const replayEnd = replay.at(-1)!.event;
    if (liveEnd.case !== "completed" || replayEnd.case !== "completed") throw new Error("expected Completed");
    expect(replayEnd.value.message?.content).toBe(liveEnd.value.message?.content);
    expect(replayEnd.value.message?.id).toBe(liveEnd.value.message?.id);
    expect(replay[2]!.event.value).toEqual(live.find((e) => e.event.case === "usage")!.event.value);
    expect((await app.messages.listMessages({ sessionId })).messages).toHaveLength(2);
  });

  it("rebuilds a cancelled Ask with who cancelled it, and a failed one with its code", async () => {
    const sessionId = await app.newSession();
    const s = stepper(app.sessions.ask({ sessionId, content: "a", requestId: "c" }));
    const { askId } = startedOf(await s.next());
    const call = await app.handle.ctl.call(0);
    call.push("part");
    await s.next();
    await app.sessions.cancelAsk({ askId });
    await s.rest();
    const replay = await collect(app.sessions.ask({ sessionId, content: "a", requestId: "c" }));
    expect(casesOf(replay)).toEqual(["started", "textDelta", "cancelled"]);
    expect(replay[2]!.event.value).toMatchObject({ reason: "cancel_ask", message: { content: "part", status: MessageStatus.CANCELLED } });

    const failing = await app.newSession("fake:fail-midway");
    await collect(app.sessions.ask({ sessionId: failing, content: "b", requestId: "f" }));
    const failed = await collect(app.sessions.ask({ sessionId: failing, content: "b", requestId: "f" }));
    expect(casesOf(failed)).toEqual(["started", "textDelta", "failed"]);
    expect(failed[2]!.event.value).toMatchObject({ code: "unavailable", assistantMessage: { content: "Hello, " } });
  });
});

describe.each(backends())("Ask drain on shutdown, on %s", (backend) => {
  it("lets a running Ask finish within the grace period, then refuses new Asks", async () => {
    const app = await appWithControlledModel(backend);
    try {
      const sessionId = await app.newSession();
      const s = stepper(app.sessions.ask({ sessionId, content: "q" }));
      startedOf(await s.next());
      const call = await app.handle.ctl.call(0);
      const drained = app.t.app.asks.drain(60_000);
      call.push("done in time");
      call.finish();
      await drained;
      expect(app.t.app.asks.running()).toBe(0);
      const end = (await s.rest()).at(-1)!.event;
      expect(end.case === "completed" && end.value.message?.content).toBe("done in time");
      const err = await failure(collect(app.sessions.ask({ sessionId, content: "late" })));
      expect([err.code, reasonOf(err)]).toEqual([Code.Unavailable, "SHUTTING_DOWN"]);
    } finally {
      await app.t.close();
    }
  });

  it("cancels what is still running after the grace period (reason shutdown), keeping the partial answer", async () => {
    const app = await appWithControlledModel(backend);
    try {
      const sessionId = await app.newSession();
      const s = stepper(app.sessions.ask({ sessionId, content: "q" }));
      const started = startedOf(await s.next());
      const call = await app.handle.ctl.call(0);
      call.push("half");
      await s.next();
      await app.t.app.asks.drain(20);
      expect(await call.aborted).toBe("shutdown");
      expect(app.t.app.asks.running()).toBe(0);
      const end = (await s.rest()).at(-1)!.event;
      if (end.case !== "cancelled") throw new Error("expected Cancelled");
      expect(end.value.reason).toBe("shutdown");
      const m = (await app.messages.getMessage({ messageId: started.assistantMessageId })).message!;
      expect([m.status, m.content]).toEqual([MessageStatus.CANCELLED, "half"]);
      expect((await app.sessions.getAsk({ askId: started.askId })).ask?.status).toBe(AskStatus.CANCELLED);
    } finally {
      await app.t.close();
    }
  });
});
