import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { MockLanguageModelV4 } from "ai/test";
import { pino } from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { ConcurrencyPolicy, MessageRole, MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { AskStatus, SessionService } from "../../gen/parley/v1/session_pb.js";
import { createApp, type App } from "../../src/app.js";
import type { ModelRegistry } from "../../src/ask/models/registry.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { AskRequestSchema } from "../../gen/parley/v1/session_pb.js";
import { bearer, createTestApp, type TestApp } from "../helpers/app.js";
import { collect, stepper } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { failure, fieldsOf, metadataOf, reasonOf } from "../helpers/errors.js";
import { controlledModel, createFakeModels, tokensModel, type ControlledModel } from "../helpers/fake-models.js";

const seconds = (s: number, nanos = 0) => create(DurationSchema, { seconds: BigInt(s), nanos });

/** A model that streams a few tokens and records how many of its calls ever ran at the same time. */
function countingModel(tokens: number, delayMs: number) {
  const base = tokensModel(
    Array.from({ length: tokens }, (_, i) => `t${i} `),
    { delayMs },
  );
  const stats = { active: 0, max: 0, calls: 0 };
  const model = new MockLanguageModelV4({
    provider: "fake",
    modelId: "counting",
    doStream: async (options) => {
      stats.calls++;
      stats.max = Math.max(stats.max, ++stats.active);
      let ended = false;
      const end = () => {
        if (!ended) stats.active--;
        ended = true;
      };
      options.abortSignal?.addEventListener("abort", end, { once: true });
      const r = await base.model.doStream(options);
      return { ...r, stream: r.stream.pipeThrough(new TransformStream({ flush: end })) };
    },
  });
  return { model, stats };
}

/** Polls until check() holds (bounded: the test fails rather than hangs). */
async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting until ${what}`);
}

type AskInit = MessageInitShape<typeof AskRequestSchema>;

describe.each(backends())("Ask concurrency policies on %s", (backend) => {
  let t: TestApp;
  const h = { ctl: controlledModel() as ControlledModel, counting: countingModel(3, 2) };
  let agents: Client<typeof AgentService>;
  let sessions: Client<typeof SessionService>;
  let messages: Client<typeof MessageService>;
  const models = (): ModelRegistry => {
    const base = createFakeModels();
    return {
      resolve: (m) =>
        m === "fake:ctl"
          ? { id: m, model: h.ctl.model }
          : m === "fake:counting"
            ? { id: m, model: h.counting.model }
            : base.resolve(m),
    };
  };

  beforeAll(async () => {
    t = await createTestApp({ backend, models: models(), config: { flushIntervalMs: 5, askLeaseMs: 2_000 } });
    agents = t.client(AgentService);
    sessions = t.client(SessionService);
    messages = t.client(MessageService);
  });
  afterAll(async () => {
    await t?.close();
  });
  beforeEach(() => {
    h.ctl = controlledModel();
    h.counting = countingModel(3, 2);
  });

  async function newSession(
    model = "fake:ctl",
    policy = ConcurrencyPolicy.UNSPECIFIED,
    enqueueTimeout?: ReturnType<typeof seconds>,
  ): Promise<string> {
    const a = await agents.createAgent({
      agent: { name: "bot", model, concurrencyPolicy: policy, ...(enqueueTimeout ? { enqueueTimeout } : {}) },
    });
    return (await sessions.createSession({ session: { agentId: a.agent!.id, userId: "u" } })).session!.id;
  }

  const queueLength = async (sessionId: string) =>
    Number(
      (
        await t.app.db
          .selectFrom("ask_queue")
          .select((eb) => eb.fn.countAll().as("n"))
          .where("session_id", "=", sessionId)
          .executeTakeFirstOrThrow()
      ).n,
    );

  /**
   * The stored proof that no two Asks of the session overlapped: its messages
   * come in (user, assistant) pairs of one Ask each, every Ask finished before
   * the next one started (asks table), and every final answer was written
   * before the next Ask's user message (messages table).
   */
  async function expectNoOverlap(sessionId: string): Promise<string[]> {
    const asks = await t.app.db
      .selectFrom("asks")
      .selectAll()
      .where("session_id", "=", sessionId)
      .orderBy("create_time")
      .orderBy("id")
      .execute();
    for (let i = 1; i < asks.length; i++) {
      expect(asks[i - 1]!.finish_time).not.toBeNull();
      expect(asks[i - 1]!.finish_time!.getTime()).toBeLessThanOrEqual(asks[i]!.create_time.getTime());
    }
    const rows = await t.app.db.selectFrom("messages").selectAll().where("session_id", "=", sessionId).orderBy("seq").execute();
    expect(rows.length).toBe(asks.length * 2);
    for (let i = 0; i < rows.length; i += 2) {
      const [u, a] = [rows[i]!, rows[i + 1]!];
      expect([u.role, a.role, a.ask_id]).toEqual(["user", "assistant", u.ask_id]);
      expect(asks[i / 2]!.id).toBe(a.ask_id);
      expect(a.status).not.toBe("streaming");
      const next = rows[i + 2];
      if (next) expect(a.update_time.getTime()).toBeLessThanOrEqual(next.create_time.getTime());
    }
    return rows.filter((r) => r.role === "user").map((r) => r.content);
  }

  async function runningAsk(sessionId: string, content: string, extra: AskInit = {}) {
    const s = stepper(sessions.ask({ sessionId, content, ...extra }));
    const started = await s.next();
    return { s, askId: started.askId };
  }

  describe("agent settings", () => {
    it("stores the agent's policy and enqueue timeout, updates them by mask, and reads back unset as unset", async () => {
      const { agent } = await agents.createAgent({
        agent: { name: "q", concurrencyPolicy: ConcurrencyPolicy.ENQUEUE, enqueueTimeout: seconds(5, 500_000_000) },
      });
      expect(agent!.concurrencyPolicy).toBe(ConcurrencyPolicy.ENQUEUE);
      expect(agent!.enqueueTimeout).toMatchObject({ seconds: 5n, nanos: 500_000_000 });
      const { agent: updated } = await agents.updateAgent({
        agent: { id: agent!.id, concurrencyPolicy: ConcurrencyPolicy.INTERRUPT },
        updateMask: { paths: ["concurrency_policy", "enqueue_timeout"] },
      });
      expect(updated!.concurrencyPolicy).toBe(ConcurrencyPolicy.INTERRUPT);
      expect(updated!.enqueueTimeout).toBeUndefined();
      const plain = (await agents.createAgent({ agent: { name: "p" } })).agent!;
      expect([plain.concurrencyPolicy, plain.enqueueTimeout]).toEqual([ConcurrencyPolicy.UNSPECIFIED, undefined]);
    });

    it.each([
      ["an unknown policy", { concurrencyPolicy: 7 as ConcurrencyPolicy }, "agent.concurrency_policy"],
      ["a timeout over 10 minutes", { enqueueTimeout: seconds(600, 1) }, "agent.enqueue_timeout"],
      ["a negative timeout", { enqueueTimeout: seconds(-1) }, "agent.enqueue_timeout"],
      ["a malformed duration", { enqueueTimeout: seconds(1, -5) }, "agent.enqueue_timeout"],
    ])("rejects %s naming the field", async (_, fields, field) => {
      const err = await failure(agents.createAgent({ agent: { name: "bad", ...fields } }));
      expect([Code[err.code], fieldsOf(err)]).toEqual([Code[Code.InvalidArgument], [field]]);
    });

    it.each([
      ["an unknown policy", { concurrencyPolicy: 9 as ConcurrencyPolicy }, "concurrency_policy"],
      ["a timeout over 10 minutes", { enqueueTimeout: seconds(601) }, "enqueue_timeout"],
    ])("rejects an Ask with %s naming the field, storing nothing", async (_, fields, field) => {
      const sessionId = await newSession("fake:hello");
      const err = await failure(collect(sessions.ask({ sessionId, content: "q", ...(fields as AskInit) })));
      expect([Code[err.code], fieldsOf(err)]).toEqual([Code[Code.InvalidArgument], [field]]);
      expect((await messages.listMessages({ sessionId })).messages).toEqual([]);
    });
  });

  describe("REJECT", () => {
    it("is the default: a second Ask gets ASK_ALREADY_RUNNING with the running Ask's id", async () => {
      const sessionId = await newSession();
      const first = await runningAsk(sessionId, "one");
      const err = await failure(collect(sessions.ask({ sessionId, content: "two" })));
      expect([Code[err.code], reasonOf(err), metadataOf(err).ask_id]).toEqual([
        Code[Code.FailedPrecondition],
        "ASK_ALREADY_RUNNING",
        first.askId,
      ]);
      (await h.ctl.call(0)).finish();
      expect((await first.s.rest()).at(-1)?.event.case).toBe("completed");
      expect(await expectNoOverlap(sessionId)).toEqual(["one"]);
    });

    it("on the request overrides an ENQUEUE agent, and a waiting queue counts as busy", async () => {
      const sessionId = await newSession("fake:ctl", ConcurrencyPolicy.ENQUEUE);
      const first = await runningAsk(sessionId, "one");
      const rejected = await failure(
        collect(sessions.ask({ sessionId, content: "two", concurrencyPolicy: ConcurrencyPolicy.REJECT })),
      );
      expect(reasonOf(rejected)).toBe("ASK_ALREADY_RUNNING");
      const queued = stepper(sessions.ask({ sessionId, content: "three" }));
      const queuedStart = queued.next();
      await until(async () => (await queueLength(sessionId)) === 1, "the ENQUEUE Ask is queued");
      (await h.ctl.call(0)).finish();
      await first.s.rest();
      const started = await queuedStart;
      (await h.ctl.call(1)).finish();
      expect((await queued.rest()).at(-1)?.event.case).toBe("completed");
      expect(started.event.case).toBe("started");
      expect(await expectNoOverlap(sessionId)).toEqual(["one", "three"]);
    });
  });

  describe("ENQUEUE", () => {
    it("runs waiting Asks one at a time in the order they arrived", async () => {
      const sessionId = await newSession("fake:ctl", ConcurrencyPolicy.ENQUEUE);
      const first = await runningAsk(sessionId, "a");
      const waiting: ReturnType<typeof stepper>[] = [];
      for (const [i, content] of ["b", "c", "d"].entries()) {
        waiting.push(stepper(sessions.ask({ sessionId, content })));
        // Arrival order is made unambiguous: the next one comes once this one holds its place.
        await until(async () => (await queueLength(sessionId)) === i + 1, `${content} is queued`);
      }
      const firstEvents = waiting.map((w) => w.next());
      for (const [i, content] of ["a", "b", "c", "d"].entries()) {
        const call = await h.ctl.call(i);
        const prompt = JSON.stringify(call.options.prompt.at(-1));
        expect(prompt).toContain(`"${content}"`);
        // Nobody else got the model while this one runs.
        expect(h.ctl.calls).toHaveLength(i + 1);
        call.push(`answer ${content}`);
        call.finish();
        if (i === 0) await first.s.rest();
        else {
          expect((await firstEvents[i - 1]!).event.case).toBe("started");
          expect((await waiting[i - 1]!.rest()).at(-1)?.event.case).toBe("completed");
        }
      }
      expect(await expectNoOverlap(sessionId)).toEqual(["a", "b", "c", "d"]);
      expect(await queueLength(sessionId)).toBe(0);
    });

    it("lets racing Asks all run, never two at once", async () => {
      const sessionId = await newSession("fake:counting", ConcurrencyPolicy.ENQUEUE);
      const results = await Promise.all(
        Array.from({ length: 6 }, (_, i) => collect(sessions.ask({ sessionId, content: `q${i}` }))),
      );
      expect(results.map((r) => r.at(-1)?.event.case)).toEqual(Array(6).fill("completed"));
      expect(h.counting.stats).toMatchObject({ calls: 6, max: 1, active: 0 });
      expect((await expectNoOverlap(sessionId)).sort()).toEqual(["q0", "q1", "q2", "q3", "q4", "q5"]);
    });

    it("gives up after the enqueue timeout with DEADLINE_EXCEEDED, storing nothing and leaving the queue", async () => {
      const sessionId = await newSession("fake:ctl", ConcurrencyPolicy.ENQUEUE, seconds(60));
      const first = await runningAsk(sessionId, "one");
      // The request's timeout overrides the agent's 60 s.
      const late = await failure(collect(sessions.ask({ sessionId, content: "two", enqueueTimeout: seconds(0, 200_000_000) })));
      expect([Code[late.code], reasonOf(late), metadataOf(late).ask_id]).toEqual([
        Code[Code.DeadlineExceeded],
        "ENQUEUE_TIMEOUT",
        first.askId,
      ]);
      const now = await failure(collect(sessions.ask({ sessionId, content: "three", enqueueTimeout: seconds(0) })));
      expect(Code[now.code]).toBe(Code[Code.DeadlineExceeded]);
      expect(await queueLength(sessionId)).toBe(0);
      (await h.ctl.call(0)).finish();
      await first.s.rest();
      expect(h.ctl.calls).toHaveLength(1);
      expect(await expectNoOverlap(sessionId)).toEqual(["one"]);
    });

    it("gives up its place when its client leaves, and a waiter whose replica died stops blocking once its place expires", async () => {
      const sessionId = await newSession("fake:ctl", ConcurrencyPolicy.ENQUEUE);
      const first = await runningAsk(sessionId, "one");
      const leaving = new AbortController();
      const gone = collect(sessions.ask({ sessionId, content: "leaves" }, { signal: leaving.signal })).catch((e: unknown) => e);
      await until(async () => (await queueLength(sessionId)) === 1, "the Ask is queued");
      leaving.abort();
      await gone;
      await until(async () => (await queueLength(sessionId)) === 0, "the place is given up");
      // A place held by a replica that stopped renewing it.
      await t.app.db
        .insertInto("ask_queue")
        .values({
          ask_id: crypto.randomUUID(),
          tenant_id: t.tenantId,
          session_id: sessionId,
          priority: 1,
          owner: "dead-replica",
          expire_time: new Date(Date.now() - 1_000),
        })
        .execute();
      const next = stepper(sessions.ask({ sessionId, content: "two" }));
      const nextStarted = next.next();
      (await h.ctl.call(0)).finish();
      await first.s.rest();
      expect((await nextStarted).event.case).toBe("started");
      (await h.ctl.call(1)).finish();
      await next.rest();
      expect(await expectNoOverlap(sessionId)).toEqual(["one", "two"]);
    });
  });

  describe("INTERRUPT", () => {
    it("cancels the running Ask keeping its partial answer (reason interrupt), then runs", async () => {
      const sessionId = await newSession();
      const first = await runningAsk(sessionId, "long question");
      const call0 = await h.ctl.call(0);
      call0.push("partial ");
      expect((await first.s.next()).event).toMatchObject({ case: "textDelta", value: { text: "partial " } });

      const second = stepper(sessions.ask({ sessionId, content: "never mind", concurrencyPolicy: ConcurrencyPolicy.INTERRUPT }));
      const started = await second.next();
      expect(started.event.case).toBe("started");
      const end = (await first.s.rest()).at(-1)!;
      expect(end.event.case).toBe("cancelled");
      expect(end.event.value).toMatchObject({ reason: "interrupt", message: { status: MessageStatus.CANCELLED, content: "partial " } });
      const ask = (await sessions.getAsk({ askId: first.askId })).ask!;
      expect(ask.status).toBe(AskStatus.CANCELLED);

      const call1 = await h.ctl.call(1);
      // The new turn sees the interrupted one's partial answer in its history.
      expect(JSON.stringify(call1.options.prompt)).toContain("partial ");
      call1.push("sure");
      call1.finish();
      expect((await second.rest()).at(-1)?.event.case).toBe("completed");
      const stored = (await messages.listMessages({ sessionId })).messages;
      expect(stored.map((m) => [m.role, m.content, m.status])).toEqual([
        [MessageRole.USER, "long question", MessageStatus.COMPLETE],
        [MessageRole.ASSISTANT, "partial ", MessageStatus.CANCELLED],
        [MessageRole.USER, "never mind", MessageStatus.COMPLETE],
        [MessageRole.ASSISTANT, "sure", MessageStatus.COMPLETE],
      ]);
      await expectNoOverlap(sessionId);
    });

    it("with racing interrupters: each one cancels whatever runs, the runs never overlap, and the last one finishes", async () => {
      h.counting = countingModel(40, 5);
      const sessionId = await newSession("fake:counting", ConcurrencyPolicy.INTERRUPT);
      const results = await Promise.all(
        Array.from({ length: 4 }, (_, i) => collect(sessions.ask({ sessionId, content: `q${i}` }))),
      );
      const ends = results.map((r) => r.at(-1)!);
      for (const e of ends) {
        if (e.event.case === "cancelled") expect(e.event.value.reason).toBe("interrupt");
        else expect(e.event.case).toBe("completed");
      }
      expect(ends.filter((e) => e.event.case === "completed").length).toBeGreaterThanOrEqual(1);
      expect(h.counting.stats.max).toBe(1);
      const order = await expectNoOverlap(sessionId);
      // Only the last Ask to run can have finished on its own.
      const asks = await t.app.db.selectFrom("asks").select("status").where("session_id", "=", sessionId).orderBy("create_time").execute();
      expect(asks.slice(0, -1).every((a) => a.status === "cancelled")).toBe(true);
      expect(asks.at(-1)!.status).toBe("completed");
      expect(order).toHaveLength(4);
    });
  });

  describe("across replicas", () => {
    let second: App;
    let sessions2: Client<typeof SessionService>;

    beforeAll(async () => {
      // A second app on the same database: another replica, with its own runtime, queue waiters and feed.
      second = await createApp(t.app.config, { database: t.database.handle, log: pino({ level: "silent" }), models: models() });
      sessions2 = createClient(
        SessionService,
        createRouterTransport(second.routes, {
          router: { interceptors: second.interceptors },
          transport: { interceptors: [bearer(t.adminKey)] },
        }),
      );
    });
    afterAll(async () => {
      await second?.close(0);
    });

    it("keeps ENQUEUE in arrival order whichever replica each Ask arrived on", async () => {
      const sessionId = await newSession("fake:ctl", ConcurrencyPolicy.ENQUEUE);
      const first = await runningAsk(sessionId, "a");
      const order: [Client<typeof SessionService>, string][] = [
        [sessions2, "b"],
        [sessions, "c"],
        [sessions2, "d"],
      ];
      const waiting = [];
      for (const [i, [client, content]] of order.entries()) {
        waiting.push(stepper(client.ask({ sessionId, content })));
        await until(async () => (await queueLength(sessionId)) === i + 1, `${content} is queued`);
      }
      const starts = waiting.map((w) => w.next());
      for (const [i, content] of ["a", "b", "c", "d"].entries()) {
        const call = await h.ctl.call(i);
        expect(JSON.stringify(call.options.prompt.at(-1))).toContain(`"${content}"`);
        expect(h.ctl.calls).toHaveLength(i + 1);
        call.finish();
        if (i === 0) await first.s.rest();
        else {
          await starts[i - 1];
          await waiting[i - 1]!.rest();
        }
      }
      const owners = await t.app.db.selectFrom("asks").select("owner").where("session_id", "=", sessionId).orderBy("create_time").execute();
      expect(owners.map((o) => o.owner)).toEqual([t.app.replicaId, second.replicaId, t.app.replicaId, second.replicaId]);
      expect(await expectNoOverlap(sessionId)).toEqual(["a", "b", "c", "d"]);
    });

    it("INTERRUPT on one replica stops the Ask another replica runs", async () => {
      const sessionId = await newSession();
      const first = await runningAsk(sessionId, "one");
      (await h.ctl.call(0)).push("half ");
      await first.s.next();
      const next = stepper(sessions2.ask({ sessionId, content: "two", concurrencyPolicy: ConcurrencyPolicy.INTERRUPT }));
      const started = next.next();
      const end = (await first.s.rest()).at(-1)!;
      expect(end.event.case).toBe("cancelled");
      expect((end.event.value as { message?: { content: string } }).message?.content).toBe("half ");
      // The reason travels with the cancel request to the replica that runs the Ask.
      expect((end.event.value as { reason?: string }).reason).toBe("interrupt");
      expect((await started).event.case).toBe("started");
      (await h.ctl.call(1)).finish();
      await next.rest();
      await expectNoOverlap(sessionId);
    });
  });
});


