import { CompiledQuery, type Kysely } from "kysely";

/** A node of Postgres' JSON query plan (the fields the tests read). */
export interface PlanNode {
  "Node Type": string;
  "Index Name"?: string;
  "Index Cond"?: string;
  "Relation Name"?: string;
  "Actual Rows"?: number;
  "Rows Removed by Filter"?: number;
  Plans?: PlanNode[];
}

/** The plan of exactly this compiled query (EXPLAIN ANALYZE runs it: only for reads). */
export async function explain(db: Kysely<any>, q: CompiledQuery, options: { analyze?: boolean } = {}): Promise<PlanNode> {
  const res = await db.executeQuery<Record<string, unknown>>(
    CompiledQuery.raw(`explain (${options.analyze ? "analyze, " : ""}format json) ${q.sql}`, [...q.parameters]),
  );
  const raw = Object.values(res.rows[0]!)[0];
  // The json column arrives parsed or as text, depending on the driver.
  const doc = (typeof raw === "string" ? JSON.parse(raw) : raw) as { Plan: PlanNode }[];
  return doc[0]!.Plan;
}

/** The plan's nodes, depth first. */
export function planNodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(planNodes)];
}
