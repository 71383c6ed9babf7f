import { Code, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageRole } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { StateService } from "../../gen/parley/v1/state_pb.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { expectRejected, failure, reasonOf } from "../helpers/errors.js";

describe.each(backends())("StateService on %s", (backend) => {
  let t: TestApp;
  let state: Client<typeof StateService>;
  let sessions: Client<typeof SessionService>;
  let messages: Client<typeof MessageService>;
  let agents: Client<typeof AgentService>;

  /** Every stored state row and every message: what a rejected request must leave as it was. */
  const stored = async () => {
    const db = t.app.db;
    const [s, u, a, m] = await Promise.all([
      db.selectFrom("sessions").select(["id", "state", "last_seq"]).orderBy("id").execute(),
      db.selectFrom("user_states").select(["tenant_id", "user_id", "state"]).orderBy("user_id").execute(),
      db.selectFrom("app_states").select(["tenant_id", "agent_id", "state"]).orderBy("agent_id").execute(),
      db.selectFrom("messages").select(["id"]).orderBy("id").execute(),
    ]);
    return JSON.stringify({ s, u, a, m });
  };

  beforeAll(async () => {
    t = await createTestApp({ backend });
    state = t.client(StateService);
    sessions = t.client(SessionService);
    messages = t.client(MessageService);
    agents = t.client(AgentService);
  });
  afterAll(async () => {
    await t?.close();
  });

  const newAgent = async () => (await agents.createAgent({ agent: { name: "s", model: "fake:hello" } })).agent!.id;
  const newSession = async (agentId: string, userId: string) =>
    (await sessions.createSession({ session: { agentId, userId } })).session!.id;

  it("merges session, user: and app: scopes, sharing user: across the user's sessions and app: across the agent's", async () => {
    const agent = await newAgent();
    const otherAgent = await newAgent();
    const a1 = await newSession(agent, "ann");
    const a2 = await newSession(otherAgent, "ann");
    const b1 = await newSession(agent, "ben");

    const empty = await state.getState({ sessionId: a1 });
    expect(empty.state).toEqual({});
    expect(empty.etag).not.toBe("");

    const updated = await state.updateState({
      sessionId: a1,
      delta: { set: { step: 2, "user:name": "Ann", "app:plan": { tier: "pro" } } },
      etag: empty.etag,
    });
    expect(updated.state).toEqual({ step: 2, "user:name": "Ann", "app:plan": { tier: "pro" } });
    expect(updated.etag).not.toBe(empty.etag);
    expect(await state.getState({ sessionId: a1 })).toMatchObject({ state: updated.state, etag: updated.etag });

    // Ann's other session (another agent): her user: keys, not a1's session keys nor the first agent's app: keys.
    expect((await state.getState({ sessionId: a2 })).state).toEqual({ "user:name": "Ann" });
    // Ben's session of the same agent: the app: keys only.
    expect((await state.getState({ sessionId: b1 })).state).toEqual({ "app:plan": { tier: "pro" } });
    // The session resource shows its own scope.
    expect((await sessions.getSession({ sessionId: a1 })).session!.state).toEqual({ step: 2 });

    // Removing keys, and a change made from another session seen here.
    await state.updateState({ sessionId: a2, delta: { set: { "user:name": "Annie" } } });
    const after = await state.updateState({ sessionId: a1, delta: { remove: ["step", "app:plan"] } });
    expect(after.state).toEqual({ "user:name": "Annie" });
    expect((await state.getState({ sessionId: b1 })).state).toEqual({});
  });

  it("applies a patch only with a current etag: a stale one is ABORTED and changes nothing", async () => {
    const s = await newSession(await newAgent(), "cat");
    const v1 = await state.updateState({ sessionId: s, delta: { set: { n: 1 } } });
    await state.updateState({ sessionId: s, delta: { set: { n: 2 } } });
    const err = await expectRejected(
      stored,
      () => state.updateState({ sessionId: s, delta: { set: { n: 3 } }, etag: v1.etag }),
      Code.Aborted,
      { reason: "ETAG_MISMATCH" },
    );
    expect(err).toBeDefined();
    expect((await state.getState({ sessionId: s })).state).toEqual({ n: 2 });
  });

  it("lets exactly one of concurrent updates holding the same etag win", async () => {
    const agent = await newAgent();
    const s = await newSession(agent, "dan");
    const { etag } = await state.getState({ sessionId: s });
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => state.updateState({ sessionId: s, delta: { set: { winner: i, "user:last": i } }, etag })),
    );
    const won = results.filter((r) => r.status === "fulfilled");
    expect(won).toHaveLength(1);
    for (const r of results) {
      if (r.status === "rejected") expect(reasonOf(await failure(Promise.reject(r.reason)))).toBe("ETAG_MISMATCH");
    }
    const winner = (won[0] as PromiseFulfilledResult<{ state?: Record<string, unknown> }>).value.state!.winner;
    expect((await state.getState({ sessionId: s })).state).toEqual({ winner, "user:last": winner });

    // Two sessions of one user, each with its own current etag, racing on a user: key: one wins.
    const s2 = await newSession(agent, "dan");
    const [e1, e2] = await Promise.all([state.getState({ sessionId: s }), state.getState({ sessionId: s2 })]);
    const race = await Promise.allSettled([
      state.updateState({ sessionId: s, delta: { set: { "user:color": "red" } }, etag: e1.etag }),
      state.updateState({ sessionId: s2, delta: { set: { "user:color": "blue" } }, etag: e2.etag }),
    ]);
    expect(race.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const color = (await state.getState({ sessionId: s })).state!["user:color"];
    expect(["red", "blue"]).toContain(color);
  });

  it("rejects bad keys, temp: keys, conflicts and oversize scopes, naming the field and storing nothing", async () => {
    const s = await newSession(await newAgent(), "eve");
    await state.updateState({ sessionId: s, delta: { set: { keep: true } } });
    const bad = (delta: Parameters<typeof state.updateState>[0]["delta"], field: string, reason?: string) =>
      expectRejected(stored, () => state.updateState({ sessionId: s, delta: delta! }), Code.InvalidArgument, {
        field,
        ...(reason ? { reason } : {}),
      });
    await expectRejected(stored, () => state.updateState({ sessionId: s }), Code.InvalidArgument, { field: "delta" });
    await bad({ set: { "bad key": 1 } }, "delta.set", "INVALID_STATE_KEY");
    await bad({ set: { "other:x": 1 } }, "delta.set", "INVALID_STATE_KEY");
    await bad({ set: { "user:": 1 } }, "delta.set", "INVALID_STATE_KEY");
    await bad({ set: { [`k${"x".repeat(128)}`]: 1 } }, "delta.set", "INVALID_STATE_KEY");
    await bad({ remove: ["ok", "1abc"] }, "delta.remove[1]", "INVALID_STATE_KEY");
    await bad({ set: { "temp:x": 1 } }, "delta.set", "TEMP_KEY_NOT_ALLOWED");
    await bad({ set: { a: 1 }, remove: ["a"] }, "delta.remove[0]", "CONFLICTING_STATE_KEY");
    await bad({ set: { a: "\u0000" } }, "delta.set.a");
    const big = "x".repeat(200 * 1024);
    await bad({ set: { "user:a": big, "user:b": big } }, "delta.set", "STATE_TOO_LARGE");
    // One scope may be full while another is too: the limit is per scope.
    await state.updateState({ sessionId: s, delta: { set: { "user:a": big, "app:a": big } } });
    expect((await state.getState({ sessionId: s })).state!.keep).toBe(true);

    // Session.state is the session scope: prefixed keys go through UpdateState or a state_delta.
    const agentId = (await sessions.getSession({ sessionId: s })).session!.agentId;
    await expectRejected(stored, () => sessions.createSession({ session: { agentId, userId: "eve", state: { "user:x": 1 } } }), Code.InvalidArgument, {
      field: "session.state",
      reason: "SCOPED_STATE_KEY",
    });
    await expectRejected(
      stored,
      () => sessions.updateSession({ session: { id: s, state: { "app:x": 1 } }, updateMask: { paths: ["state"] } }),
      Code.InvalidArgument,
      { field: "session.state", reason: "SCOPED_STATE_KEY" },
    );
  });

  it("applies AppendMessages' state delta with the messages, or not at all", async () => {
    const s = await newSession(await newAgent(), "fay");
    const user = (content: string) => ({ role: MessageRole.USER, content });
    const res = await messages.appendMessages({
      sessionId: s,
      messages: [user("hello")],
      stateDelta: { set: { greeted: true, "user:lang": "fr", "temp:scratch": 1 } },
    });
    expect(res.session!.state).toEqual({ greeted: true });
    expect((await state.getState({ sessionId: s })).state).toEqual({ greeted: true, "user:lang": "fr" });

    // The append fails (stale expected_last_seq): the delta is not applied.
    await expectRejected(
      stored,
      () => messages.appendMessages({ sessionId: s, messages: [user("again")], expectedLastSeq: 0n, stateDelta: { set: { greeted: false } } }),
      Code.Aborted,
      { reason: "LAST_SEQ_MISMATCH" },
    );
    // The delta fails (too large for its scope): the messages are not appended.
    await expectRejected(
      stored,
      () => messages.appendMessages({ sessionId: s, messages: [user("big")], stateDelta: { set: { "user:blob": "x".repeat(300 * 1024) } } }),
      Code.InvalidArgument,
      { reason: "STATE_TOO_LARGE", field: "state_delta.set" },
    );
    await expectRejected(
      stored,
      () => messages.appendMessages({ sessionId: s, messages: [user("bad")], stateDelta: { remove: ["no spaces"] } }),
      Code.InvalidArgument,
      { field: "state_delta.remove[0]" },
    );
    // The same request_id with another delta is another request.
    await messages.appendMessages({ sessionId: s, messages: [user("x")], requestId: "r1", stateDelta: { set: { v: 1 } } });
    const reused = await failure(messages.appendMessages({ sessionId: s, messages: [user("x")], requestId: "r1", stateDelta: { set: { v: 2 } } }));
    expect(reasonOf(reused)).toBe("REQUEST_ID_REUSED");
    expect((await state.getState({ sessionId: s })).state!.v).toBe(1);
  });

  it("answers unknown sessions with NotFound", async () => {
    const id = "01900000-0000-7000-8000-000000000000";
    expect(Code[(await failure(state.getState({ sessionId: id }))).code]).toBe(Code[Code.NotFound]);
    await expectRejected(stored, () => state.updateState({ sessionId: id, delta: { set: { a: 1 } } }), Code.NotFound);
    expect(Code[(await failure(state.getState({ sessionId: "x" }))).code]).toBe(Code[Code.InvalidArgument]);
  });
});
