import { CompiledQuery, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionOrderBy } from "../../gen/parley/v1/session_pb.js";
import { backends } from "../helpers/databases.js";
import { explain, planNodes, type PlanNode } from "../helpers/plans.js";
import { createRecordingApp, type RecordingApp } from "../helpers/recording-app.js";

// Every stored message moves its session's update_time, so each append writes an entry into
// every index of `sessions`: the table keeps only the indexes its queries need, and each
// query that lists or deletes sessions still finds its rows through one of them.
describe.each(backends())("the indexes of sessions on %s", (backend) => {
  let r: RecordingApp;
  let agentId: string;
  let otherAgentId: string;

  beforeAll(async () => {
    r = await createRecordingApp(backend);
    agentId = (await r.agents.createAgent({ agent: { name: "a", model: "fake:echo" } })).agent!.id;
    otherAgentId = (await r.agents.createAgent({ agent: { name: "b", model: "fake:echo" } })).agent!.id;
    // Many sessions of the other agent and of many users, a few of the agent and user asked for.
    await sql`
      insert into sessions (id, tenant_id, agent_id, user_id, name, create_time, update_time)
      select gen_random_uuid(), ${r.tenantId}, case when g % 50 = 0 then ${agentId}::uuid else ${otherAgentId}::uuid end,
             'user-' || (g % 400), 'session ' || g, now() - g * interval '1 second', now() - g * interval '1 second'
      from generate_series(1, 20000) g`.execute(r.base);
    await sql`analyze sessions`.execute(r.base);
  }, 120_000);
  afterAll(async () => {
    await r?.close();
  });

  it("writes nine indexes per session update", async () => {
    const rows = await sql<{ n: number }>`select count(*)::int as n from pg_indexes where tablename = 'sessions'`.execute(r.base);
    expect(rows.rows[0]!.n).toBe(9);
  });

  const plan = async (q: CompiledQuery): Promise<PlanNode[]> => planNodes(await explain(r.base, q));

  /** The plan of the sessions query a ListSessions call sends. */
  async function listPlan(req: Parameters<RecordingApp["sessions"]["listSessions"]>[0]): Promise<PlanNode[]> {
    r.queries.length = 0;
    const res = await r.sessions.listSessions(req);
    expect(res.sessions.length).toBeGreaterThan(0);
    const q = r.queries.filter((c) => /from "sessions"/.test(c.sql));
    expect(q).toHaveLength(1);
    return plan(q[0]!);
  }

  const indexOf = (p: PlanNode[]) => p.find((n) => n["Index Name"] !== undefined)?.["Index Name"];
  const types = (p: PlanNode[]) => p.map((n) => n["Node Type"]);

  it.each([
    [SessionOrderBy.CREATE_TIME, "sessions_agent_create_idx"],
    [SessionOrderBy.UPDATE_TIME, "sessions_agent_update_idx"],
  ])("lists an agent's sessions (order %s) through %s, without sorting", async (orderBy, index) => {
    const p = await listPlan({ agentId, orderBy, descending: true, pageSize: 20 });
    expect(indexOf(p)).toBe(index);
    expect(types(p)).not.toContain("Sort");
    expect(types(p)).not.toContain("Seq Scan");
  });

  it.each([SessionOrderBy.CREATE_TIME, SessionOrderBy.UPDATE_TIME])(
    "lists an agent's sessions of one user (order %s) through the user's indexes, sorting at most that user's sessions",
    async (orderBy) => {
      const p = await listPlan({ agentId, userId: "user-50", orderBy, pageSize: 20 });
      expect(indexOf(p)).toMatch(/^sessions_tenant_user(_update)?_idx$/);
      expect(types(p)).not.toContain("Seq Scan");
    },
  );

  it("finds an agent's sessions by agent_id alone (the cascade of its deletion) through an index", async () => {
    const p = await plan(CompiledQuery.raw(`delete from sessions where agent_id = $1`, [agentId]));
    expect(types(p)).not.toContain("Seq Scan");
    expect(indexOf(p)).toMatch(/^sessions_agent_(create|update)_idx$/);
  });
});
