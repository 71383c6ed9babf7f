import type { Client } from "@connectrpc/connect";
import { sql, type CompiledQuery, type Kysely } from "kysely";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { createAskHeartbeat, type AskHeartbeat, type HeartbeatStop, type OpenAsk } from "../../src/ask/heartbeat.js";
import type { Database } from "../../src/db/schema.js";
import { newId } from "../../src/ids.js";
import { insertAsk, requestCancel } from "../../src/repos/asks.js";
import { appendMessages } from "../../src/repos/messages.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { casesOf, readUntilDeltas } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { controlledModel, createFakeModels } from "../helpers/fake-models.js";

const REPLICA = "heartbeat-test-replica";

describe.each(backends())("The Ask heartbeat on %s", (backend) => {
  let t: TestApp;
  let db: Kysely<Database>;
  /** The statements the heartbeat under test sent. */
  const queries: CompiledQuery[] = [];
  let agentId: string;
  let hb: AskHeartbeat | undefined;

  beforeAll(async () => {
    t = await createTestApp({ backend });
    const base = t.app.db;
    db = base.withPlugin({
      transformQuery(args) {
        queries.push(base.getExecutor().compileQuery(args.node, args.queryId));
        return args.node;
      },
      transformResult: async (args) => args.result,
    });
    agentId = (await t.client(AgentService).createAgent({ agent: { name: "bot", model: "fake:hello" } })).agent!.id;
  });
  afterEach(async () => {
    await hb?.stop();
    hb = undefined;
  });
  afterAll(async () => {
    await t?.close();
  });

  /** A heartbeat whose ticks never come on their own during a test: it is driven by renewNow and flushNow. */
  function heartbeat(batches: { renewBatch?: number; flushBatch?: number } = {}): AskHeartbeat {
    hb = createAskHeartbeat({ db, log: pino({ level: "silent" }), replicaId: REPLICA, leaseMs: 3_600_000, flushIntervalMs: 3_600_000, ...batches });
    return hb;
  }

  /** Stores a running Ask of this replica with a STREAMING assistant message, its claim expiring in a minute. */
  async function runningAsk() {
    const sessionId = (await t.client(SessionService).createSession({ session: { agentId, userId: "u" } })).session!.id;
    const askId = newId();
    const messageId = newId();
    await t.app.db.transaction().execute(async (tx) => {
      await insertAsk(tx, {
        id: askId,
        tenant_id: t.tenantId,
        session_id: sessionId,
        status: "running",
        request_id: null,
        request_hash: "x",
        user_message_id: null,
        assistant_message_id: messageId,
        model: "fake:hello",
        store: true,
        owner: REPLICA,
      });
      await appendMessages(tx, t.tenantId, sessionId, [
        { id: messageId, role: "assistant", content: "", status: "streaming", askId, model: "fake:hello" },
      ]);
      await tx
        .updateTable("sessions")
        .set({ active_ask_id: askId, lease_owner: REPLICA, lease_expire_time: sql<Date>`now() + interval '1 minute'` })
        .where("id", "=", sessionId)
        .execute();
    });
    return { tenantId: t.tenantId, sessionId, askId, assistantMessageId: messageId };
  }

  type Seeded = Awaited<ReturnType<typeof runningAsk>>;

  /** Joins the heartbeat, recording what it stops. */
  function join(h: AskHeartbeat, ask: Seeded, stops: Map<string, HeartbeatStop[]>, tenantId = ask.tenantId): OpenAsk {
    return h.join({
      ...ask,
      tenantId,
      onStop: (reason) => stops.set(ask.askId, [...(stops.get(ask.askId) ?? []), reason]),
    });
  }

  async function leaseSecondsLeft(sessionId: string): Promise<number> {
    const row = await t.app.db
      .selectFrom("sessions")
      .select(sql<number>`extract(epoch from lease_expire_time - now())::float8`.as("left"))
      .where("id", "=", sessionId)
      .executeTakeFirstOrThrow();
    return Number(row.left);
  }

  async function contentOf(messageId: string): Promise<{ content: string; status: string }> {
    return t.app.db.selectFrom("messages").select(["content", "status"]).where("id", "=", messageId).executeTakeFirstOrThrow();
  }

  it("renews the leases of all its Asks in one statement, and flushes exactly the changed partial answers in one", async () => {
    const asks = await Promise.all(Array.from({ length: 6 }, () => runningAsk()));
    const h = heartbeat();
    const stops = new Map<string, HeartbeatStop[]>();
    const open = asks.map((a) => join(h, a, stops));
    expect(h.size()).toBe(6);

    queries.length = 0;
    await h.renewNow();
    expect(queries).toHaveLength(1);
    for (const a of asks) expect(await leaseSecondsLeft(a.sessionId)).toBeGreaterThan(3_000);
    expect(stops.size).toBe(0);

    // Five answers grew; the sixth has nothing yet.
    open.forEach((o, i) => {
      if (i < 5) o.content = `partial ${i}`;
    });
    queries.length = 0;
    await h.flushNow();
    expect(queries).toHaveLength(1);
    for (const [i, a] of asks.entries()) {
      expect(await contentOf(a.assistantMessageId)).toEqual({ content: i < 5 ? `partial ${i}` : "", status: "streaming" });
    }

    // Nothing changed since: no statement at all.
    queries.length = 0;
    await h.flushNow();
    expect(queries).toHaveLength(0);

    // One answer grew: one statement, carrying that answer only.
    open[2]!.content += " and more";
    await h.flushNow();
    expect(queries).toHaveLength(1);
    expect(queries[0]!.parameters.filter((p) => Array.isArray(p) && p.includes("partial 2 and more"))).toHaveLength(1);
    expect(queries[0]!.parameters.flat()).not.toContain("partial 1");
    expect((await contentOf(asks[2]!.assistantMessageId)).content).toBe("partial 2 and more");
  });

  it("splits a large batch into statements of at most the batch size", async () => {
    const asks = await Promise.all(Array.from({ length: 5 }, () => runningAsk()));
    const h = heartbeat({ renewBatch: 2, flushBatch: 2 });
    const stops = new Map<string, HeartbeatStop[]>();
    for (const [i, a] of asks.entries()) join(h, a, stops).content = `answer ${i}`;
    queries.length = 0;
    await h.renewNow();
    expect(queries).toHaveLength(3);
    queries.length = 0;
    await h.flushNow();
    expect(queries).toHaveLength(3);
    expect(stops.size).toBe(0);
    for (const [i, a] of asks.entries()) expect((await contentOf(a.assistantMessageId)).content).toBe(`answer ${i}`);
  });

  it("stops exactly the Asks whose claim was lost or whose cancel was requested, and renews only the leases still held", async () => {
    const [kept, cancelled, interrupted, takenOver, released, gone, foreign] = await Promise.all(
      Array.from({ length: 7 }, () => runningAsk()),
    );
    const other = await t.newTenant();
    const h = heartbeat();
    const stops = new Map<string, HeartbeatStop[]>();
    for (const a of [kept!, cancelled!, interrupted!, takenOver!, released!]) join(h, a, stops);
    // An Ask that left (it is storing its outcome) is not stopped, whatever its claim shows.
    join(h, gone!, stops).leave();
    // The ids of this tenant's Ask under another tenant: the statement is confined to the tenant it names.
    join(h, foreign!, stops, other.tenantId).content = "not this tenant's";

    expect(await requestCancel(t.app.db, t.tenantId, cancelled!.askId)).toBe(true);
    expect(await requestCancel(t.app.db, t.tenantId, interrupted!.askId, "interrupt")).toBe(true);
    await t.app.db.updateTable("sessions").set({ lease_owner: "another-replica" }).where("id", "=", takenOver!.sessionId).execute();
    await t.app.db
      .updateTable("sessions")
      .set({ active_ask_id: null, lease_owner: null, lease_expire_time: null })
      .where("id", "in", [released!.sessionId, gone!.sessionId])
      .execute();

    queries.length = 0;
    await h.renewNow();
    expect(queries).toHaveLength(1);
    expect(Object.fromEntries(stops)).toEqual({
      [cancelled!.askId]: ["cancel_ask"],
      [interrupted!.askId]: ["interrupt"],
      [takenOver!.askId]: ["lease_lost"],
      [released!.askId]: ["lease_lost"],
      [foreign!.askId]: ["lease_lost"],
    });
    // A cancel request does not take the claim away: the lease is renewed until the Ask has stopped.
    for (const a of [kept!, cancelled!, interrupted!]) expect(await leaseSecondsLeft(a.sessionId)).toBeGreaterThan(3_000);
    for (const a of [takenOver!, foreign!]) expect(await leaseSecondsLeft(a.sessionId)).toBeLessThan(120);

    await h.flushNow();
    expect((await contentOf(foreign!.assistantMessageId)).content).toBe("");
  });

  it("never overwrites an answer that has left STREAMING", async () => {
    const a = await runningAsk();
    const h = heartbeat();
    const open = join(h, a, new Map());
    open.content = "partial";
    // The Ask stored its final answer while this flush was on its way (as finishAsk does: conditional on STREAMING).
    await t.app.db
      .updateTable("messages")
      .set({ content: "the final answer", status: "complete" })
      .where("id", "=", a.assistantMessageId)
      .execute();
    await h.flushNow();
    expect(await contentOf(a.assistantMessageId)).toEqual({ content: "the final answer", status: "complete" });
  });
});

describe.each(backends())("Asks kept alive by the replica's heartbeat on %s", (backend) => {
  let t: TestApp;
  let sessions: Client<typeof SessionService>;
  let messages: Client<typeof MessageService>;
  const ctl = controlledModel();

  beforeAll(async () => {
    const base = createFakeModels();
    // A short lease, so that the renewal tick (every lease / 3) comes within the test.
    t = await createTestApp({
      backend,
      models: { resolve: (m) => (m === "fake:ctl" ? { id: m, model: ctl.model } : base.resolve(m)) },
      config: { flushIntervalMs: 5, askLeaseMs: 1_500 },
    });
    sessions = t.client(SessionService);
    messages = t.client(MessageService);
  });
  afterAll(async () => {
    await t?.close();
  });

  it("a cancel request or a lost claim found by a tick stops exactly the affected Ask; the others stream on", async () => {
    const agentId = (await t.client(AgentService).createAgent({ agent: { name: "bot", model: "fake:ctl" } })).agent!.id;
    const runs = [];
    for (let i = 0; i < 3; i++) {
      const sessionId = (await sessions.createSession({ session: { agentId, userId: "u" } })).session!.id;
      const stream = sessions.ask({ sessionId, content: `q${i}` });
      const call = await ctl.call(i);
      call.push(`answer ${i}`);
      runs.push({ sessionId, call, ...(await readUntilDeltas(stream, 1)) });
    }
    const [kept, cancelled, lost] = runs as [(typeof runs)[0], (typeof runs)[0], (typeof runs)[0]];

    // Stored only: no pub/sub message reaches the runtime, so only the heartbeat can find these.
    expect(await requestCancel(t.app.db, t.tenantId, cancelled.askId)).toBe(true);
    await t.app.db.updateTable("sessions").set({ lease_owner: "another-replica" }).where("id", "=", lost.sessionId).execute();

    expect(await cancelled.call.aborted).toBe("cancel_ask");
    expect(await lost.call.aborted).toBe("lease_lost");
    const cancelEnd = (await cancelled.rest).at(-1)!.event;
    expect(cancelEnd).toMatchObject({ case: "cancelled", value: { reason: "cancel_ask", message: { content: "answer 1", status: MessageStatus.CANCELLED } } });
    const lostEnd = (await lost.rest).at(-1)!.event;
    expect(lostEnd).toMatchObject({ case: "failed", value: { code: "aborted" } });

    // The third Ask was never touched: it streams on and completes, its lease renewed all along.
    kept.call.push(" continued");
    kept.call.finish();
    expect(casesOf(await kept.rest)).toEqual(["textDelta", "usage", "completed"]);
    const kMsg = (await messages.listMessages({ sessionId: kept.sessionId })).messages.at(-1)!;
    expect([kMsg.content, kMsg.status]).toEqual(["answer 0 continued", MessageStatus.COMPLETE]);
    expect(t.app.asks.running()).toBe(0);
  });
});
