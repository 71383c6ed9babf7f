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
 * Before issue 5 the same Ask issued 17, then 10; now: the target read, one
 * statement that claims the free session, stores the Ask and both messages and
 * returns the history window, and one statement that stores the outcome and
 * releases the session.
 */
const MAX_PLAIN_ASK_STATEMENTS = 3;

describe.each(backends())("SQL statements of one Ask on %s", (backend) => {
  let r: RecordingApp;
  let sessionId: string;

  beforeAll(async () => {
    r = await createRecordingApp(backend);
    const agentId = (
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
  async function waitFinished() {
    for (let i = 0; i < 200; i++) {
      const s = await r.base.selectFrom("sessions").select("active_ask_id").where("id", "=", sessionId).executeTakeFirstOrThrow();
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
    // Each of these would be a second read of something the Ask already has.
    expect(sql.filter((s) => /"agents"/.test(s))).toHaveLength(1);
    // A free session is claimed by a conditional UPDATE: no locked read first.
    expect(sql.filter((s) => /for update/i.test(s))).toHaveLength(0);
    // The queue is only looked at through the claim's NOT EXISTS when nobody waits.
    expect(sql.filter((s) => /^[^(]*"ask_queue"/.test(s))).toHaveLength(0);
    expect(sql.length).toBeLessThanOrEqual(MAX_PLAIN_ASK_STATEMENTS);
  });
});
