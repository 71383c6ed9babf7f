import { Code, ConnectError } from "@connectrpc/connect";
import { type CompiledQuery, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { MessageRole } from "../../gen/parley/v1/common_pb.js";
import { lastMessages } from "../../src/repos/messages.js";
import { backends } from "../helpers/databases.js";
import { errorOf } from "../helpers/errors.js";
import { explain, planNodes, type PlanNode } from "../helpers/plans.js";
import { createRecordingApp, type RecordingApp } from "../helpers/recording-app.js";

const user = (content: string) => ({ role: MessageRole.USER, content });

describe.each(backends())("seq under concurrency and O(window) history on %s", (backend) => {
  let r: RecordingApp;
  let agentId: string;

  beforeAll(async () => {
    r = await createRecordingApp(backend);
    agentId = (await r.agents.createAgent({ agent: { name: "race" } })).agent!.id;
  });
  afterAll(async () => {
    await r?.close();
  });

  async function newSession(): Promise<string> {
    return (await r.sessions.createSession({ session: { agentId, userId: "racer" } })).session!.id;
  }

  async function storedSeqs(sessionId: string): Promise<number[]> {
    const rows = await r.base.selectFrom("messages").select("seq").where("session_id", "=", sessionId).orderBy("seq").execute();
    return rows.map((x) => x.seq);
  }

  it("keeps seq gap-free and unique under 100 concurrent appenders", async () => {
    const sessionId = await newSession();
    // Batches of 1 to 3 messages, so seq ranges of different sizes interleave.
    const sizes = Array.from({ length: 100 }, (_, i) => (i % 3) + 1);
    const results = await Promise.all(
      sizes.map((n, i) =>
        r.messages.appendMessages({
          sessionId,
          messages: Array.from({ length: n }, (_, j) => user(`caller ${i} message ${j}`)),
        }),
      ),
    );
    const total = sizes.reduce((a, b) => a + b, 0);

    // Every call got a consecutive range of its own, in its own order.
    for (const [i, res] of results.entries()) {
      const got = res.messages.map((m) => Number(m.seq));
      expect(got).toHaveLength(sizes[i]!);
      expect(got).toEqual(got.map((_, j) => got[0]! + j));
      expect(res.messages.map((m) => m.content)).toEqual(got.map((_, j) => `caller ${i} message ${j}`));
    }
    const all = results.flatMap((res) => res.messages.map((m) => Number(m.seq))).sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(await storedSeqs(sessionId)).toEqual(all);

    const { session } = await r.sessions.getSession({ sessionId });
    expect(session!.lastSeq).toBe(BigInt(total));
    expect(session!.messageCount).toBe(BigInt(total));
  });

  it("lets exactly one of the racing expected_last_seq callers win each round; the others are ABORTED", async () => {
    const sessionId = await newSession();
    const rounds = 5;
    const callers = 10;
    for (let round = 0; round < rounds; round++) {
      const expectedLastSeq = BigInt(round);
      const outcomes = await Promise.all(
        Array.from({ length: callers }, (_, i) =>
          errorOf(r.messages.appendMessages({ sessionId, messages: [user(`round ${round} caller ${i}`)], expectedLastSeq })),
        ),
      );
      const errors = outcomes.filter((e): e is ConnectError => e !== undefined);
      expect(errors).toHaveLength(callers - 1);
      for (const e of errors) {
        expect(Code[e.code]).toBe(Code[Code.Aborted]);
        expect(e.findDetails(ErrorInfoSchema)[0]?.reason).toBe("LAST_SEQ_MISMATCH");
      }
    }
    expect(await storedSeqs(sessionId)).toEqual([1, 2, 3, 4, 5]);
    const { session } = await r.sessions.getSession({ sessionId });
    expect(session!.lastSeq).toBe(BigInt(rounds));
    expect(session!.messageCount).toBe(BigInt(rounds));
  });

  it("stores identical racing requests with one request_id once and answers all with the same messages", async () => {
    const sessionId = await newSession();
    await r.messages.appendMessages({ sessionId, messages: [user("before")] });
    const req = { sessionId, messages: [user("q"), { role: MessageRole.ASSISTANT, content: "a" }], requestId: "same" };
    const results = await Promise.all(Array.from({ length: 20 }, () => r.messages.appendMessages(req)));
    const answers = results.map((res) => JSON.stringify(res.messages.map((m) => [m.id, Number(m.seq)])));
    expect(new Set(answers).size).toBe(1);
    expect(results[0]!.messages.map((m) => Number(m.seq))).toEqual([2, 3]);
    expect(await storedSeqs(sessionId)).toEqual([1, 2, 3]);
    const { session } = await r.sessions.getSession({ sessionId });
    expect(session!.lastSeq).toBe(3n);
    expect(session!.messageCount).toBe(3n);
    const records = await r.base.selectFrom("append_requests").selectAll().where("session_id", "=", sessionId).execute();
    expect(records).toHaveLength(1);
  });

  describe("history reads on a session of many messages", () => {
    const N = 20_000;
    let big: string;

    beforeAll(async () => {
      big = await newSession();
      const other = await newSession();
      // Bulk rows straight in SQL: the race tests above cover the append path.
      for (const sessionId of [big, other]) {
        await sql`
          insert into messages (id, tenant_id, session_id, seq, role, content, status)
          select gen_random_uuid(), ${r.tenantId}, ${sessionId}, g, 'user', 'm' || g, 'complete'
          from generate_series(1, ${N}::int) g`.execute(r.base);
        await r.base
          .updateTable("sessions")
          .set({ last_seq: N, message_count: N })
          .where("id", "=", sessionId)
          .execute();
      }
      await sql`analyze messages`.execute(r.base);
    }, 120_000);

    /** Runs an RPC and returns the statements it sent to the messages table. */
    async function messageQueries(call: () => Promise<unknown>): Promise<CompiledQuery[]> {
      r.queries.length = 0;
      await call();
      return r.queries.filter((q) => /\bfrom "messages"/.test(q.sql));
    }

    const explainRun = (q: CompiledQuery) => explain(r.base, q, { analyze: true });

    /**
     * The plan of q run as a prepared statement's generic plan (the one a
     * connection settles on after five runs), which knows neither the session,
     * the bounds nor the limit: the statements are prepared (src/db/prepared.ts).
     */
    async function explainGeneric(q: CompiledQuery): Promise<PlanNode> {
      const literal = (v: unknown) => (typeof v === "number" ? String(v) : `'${String(v).replaceAll("'", "''")}'`);
      return r.base.connection().execute(async (c) => {
        await sql`set plan_cache_mode = force_generic_plan`.execute(c);
        await sql.raw(`prepare parley_generic_check as ${q.sql}`).execute(c);
        try {
          const run = `execute parley_generic_check(${q.parameters.map(literal).join(", ")})`;
          return await explain(c, { ...q, sql: run, parameters: [] }, { analyze: true });
        } finally {
          await sql`deallocate parley_generic_check`.execute(c);
          await sql`reset plan_cache_mode`.execute(c);
        }
      });
    }

    /** The plan is a Limit over a range scan of the (session_id, seq) index that read at most `window` rows. */
    function expectWindowScan(plan: PlanNode, window: number, seqInIndexCond: boolean) {
      expect(plan["Node Type"]).toBe("Limit");
      const all = planNodes(plan);
      expect(all.map((n) => n["Node Type"])).not.toContain("Seq Scan");
      expect(all.map((n) => n["Node Type"])).not.toContain("Sort");
      const scan = all.find((n) => n["Node Type"] === "Index Scan");
      expect(scan?.["Index Name"]).toBe("messages_session_seq_uq");
      expect(scan!["Actual Rows"]).toBeLessThanOrEqual(window);
      expect(scan!["Rows Removed by Filter"] ?? 0).toBe(0);
      if (seqInIndexCond) expect(scan!["Index Cond"]).toMatch(/seq [<>]/);
    }

    it("ListMessages issues one LIMITed seq-range query, never a count, and it scans only the window", async () => {
      const first = await messageQueries(() => r.messages.listMessages({ sessionId: big, pageSize: 50 }));
      expect(first).toHaveLength(1);
      expect(first[0]!.sql).toMatch(/"session_id" = \$\d+/);
      expect(first[0]!.sql).toMatch(/"tenant_id" = \$\d+/);
      expect(first[0]!.sql).toMatch(/order by "seq" asc limit \$\d+\s+\/\* parley:prepared \*\/$/);
      expect(first[0]!.sql).not.toMatch(/count\(/i);
      expect(first[0]!.parameters.at(-1)).toBe(51);
      expectWindowScan(await explainRun(first[0]!), 51, false);

      // A page from the middle, both directions: the cursor is part of the index condition.
      const { nextPageToken } = await r.messages.listMessages({ sessionId: big, afterSeq: BigInt(N / 2), pageSize: 100 });
      const middle = await messageQueries(() =>
        r.messages.listMessages({ sessionId: big, afterSeq: BigInt(N / 2), pageSize: 100, pageToken: nextPageToken }),
      );
      expect(middle).toHaveLength(1);
      expect(middle[0]!.sql).toMatch(/"seq" > \$\d+/);
      expectWindowScan(await explainRun(middle[0]!), 101, true);

      const down = await messageQueries(() =>
        r.messages.listMessages({ sessionId: big, beforeSeq: BigInt(N / 2), descending: true, pageSize: 20 }),
      );
      expect(down).toHaveLength(1);
      expect(down[0]!.sql).toMatch(/"seq" < \$\d+/);
      expect(down[0]!.sql).toMatch(/order by "seq" desc limit \$\d+\s+\/\* parley:prepared \*\/$/);
      expectWindowScan(await explainRun(down[0]!), 21, true);

      // Their generic plans read the same window: each shape, with either bound and both.
      const both = await messageQueries(() =>
        r.messages.listMessages({ sessionId: big, afterSeq: BigInt(N / 4), beforeSeq: BigInt(N / 2), descending: true, pageSize: 30 }),
      );
      for (const [q, window, seqInIndexCond] of [
        [first[0]!, 51, false],
        [middle[0]!, 101, true],
        [down[0]!, 21, true],
        [both[0]!, 31, true],
      ] as const) {
        const plan = await explainGeneric(q);
        expect(JSON.stringify(plan)).toMatch(/\$\d/); // generic: the parameters are in the plan, not their values
        expectWindowScan(plan, window, seqInIndexCond);
      }
    });

    it("the Ask's history read (the last N messages) scans only the window", async () => {
      const recorded = r.app.db;
      r.queries.length = 0;
      const rows = await lastMessages(recorded, r.tenantId, big, 50);
      expect(rows.map((m) => m.seq)).toEqual(Array.from({ length: 50 }, (_, i) => N - i));
      const q = r.queries.filter((x) => /\bfrom "messages"/.test(x.sql));
      expect(q).toHaveLength(1);
      expectWindowScan(await explainRun(q[0]!), 50, false);
      expectWindowScan(await explainGeneric(q[0]!), 50, false);
    });
  });
});
