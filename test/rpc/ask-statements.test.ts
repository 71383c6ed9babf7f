import { ConcurrencyPolicy } from "../../gen/parley/v1/common_pb.js";
import { AskStatus } from "../../gen/parley/v1/session_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { collect } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { createRecordingApp, type RecordingApp } from "../helpers/recording-app.js";

/**
 * The round trips of one plain Ask (REJECT, no knowledge base, no memory, no
 * state delta): a structural bound, so that a later change cannot quietly add
 * reads of the agent, second session locks or queue work back to the hot path.
 * BEGIN and COMMIT are not counted (they are not queries of the query builder).
 * Before issue 5 the same Ask issued 17, then 10, then 3; now: one statement that
 * claims the free session (if its agent is still the version this replica read for
 * the session's last Ask), stores the Ask and both messages and returns the history
 * window, and one statement that stores the outcome and releases the session. The
 * first Ask a replica runs in a session reads the session and its agent first.
 */
const MAX_PLAIN_ASK_STATEMENTS = 2;
const MAX_FIRST_ASK_STATEMENTS = 3;

describe.each(backends())("SQL statements of one Ask on %s", (backend) => {
  let r: RecordingApp;
  let sessionId: string;
  let agentId: string;

  beforeAll(async () => {
    r = await createRecordingApp(backend);
    agentId = (
      await r.agents.createAgent({ agent: { name: "plain", model: "fake:hello", concurrencyPolicy: ConcurrencyPolicy.REJECT } })
    ).agent!.id;
    sessionId = (await r.sessions.createSession({ session: { agentId, userId: "u" } })).session!.id;
    // A first Ask warms whatever is cached per process (keys, prepared plans); the second is measured.
    await collect(r.sessions.ask({ sessionId, content: "warm up" }));
    await waitFinished();
  });
  afterAll(async () => {
    await r?.close();
  });

  /** The finish transaction may commit just after the terminal event; wait for the released session. */
  async function waitFinished(id = sessionId) {
    for (let i = 0; i < 200; i++) {
      const s = await r.base.selectFrom("sessions").select("active_ask_id").where("id", "=", id).executeTakeFirstOrThrow();
      if (s.active_ask_id === null) return;
      await new Promise((res) => setTimeout(res, 10));
    }
    throw new Error("the Ask never released its session");
  }

  it(`a plain Ask issues at most ${MAX_PLAIN_ASK_STATEMENTS} statements`, async () => {
    r.queries.length = 0;
    const events = await collect(r.sessions.ask({ sessionId, content: "Hi there" }));
    await waitFinished();
    const sql = r.queries.map((q) => q.sql);
    r.queries.length = 0;

    expect(events.at(-1)?.event.case).toBe("completed");
    const asks = await r.sessions.getAsk({ askId: events.at(-1)!.askId });
    expect(asks.ask?.status).toBe(AskStatus.COMPLETED);
    if (process.env.PARLEY_PRINT_ASK_SQL) console.log(sql.join("\n"));
    // The agent is not read again: the claim checks its version.
    expect(sql.filter((s) => /"agents"/.test(s))).toHaveLength(0);
    // A free session is claimed by a conditional UPDATE: no locked read first.
    expect(sql.filter((s) => /for update/i.test(s))).toHaveLength(0);
    // The queue is only looked at through the claim's NOT EXISTS when nobody waits.
    expect(sql.filter((s) => /^[^(]*"ask_queue"/.test(s))).toHaveLength(0);
    expect(sql.length).toBeLessThanOrEqual(MAX_PLAIN_ASK_STATEMENTS);
  });

  it(`the first Ask in a session issues at most ${MAX_FIRST_ASK_STATEMENTS} statements, one of them the agent's read`, async () => {
    const fresh = (await r.sessions.createSession({ session: { agentId, userId: "u" } })).session!.id;
    r.queries.length = 0;
    const events = await collect(r.sessions.ask({ sessionId: fresh, content: "Hi there" }));
    await waitFinished(fresh);
    const sql = r.queries.map((q) => q.sql);
    r.queries.length = 0;

    expect(events.at(-1)?.event.case).toBe("completed");
    expect(sql.filter((s) => /"agents"/.test(s))).toHaveLength(1);
    expect(sql.filter((s) => /for update/i.test(s))).toHaveLength(0);
    expect(sql.length).toBeLessThanOrEqual(MAX_FIRST_ASK_STATEMENTS);
  });
});
