import { sql, type Kysely, type Transaction } from "kysely";
import type { AgentRow, AgentUpdate, Database, NewAgentRow } from "../db/schema.js";

type Db = Kysely<Database> | Transaction<Database>;

/**
 * create_time as text with microseconds, in UTC: a JS Date keeps only
 * milliseconds, so a keyset cursor built from it would skip or repeat rows
 * created within the same millisecond.
 */
export const createTimeCursor = sql<string>`to_char(create_time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

/** Inserts an agent and returns the stored row. */
export async function insertAgent(db: Db, row: NewAgentRow): Promise<AgentRow> {
  return db.insertInto("agents").values(row).returningAll().executeTakeFirstOrThrow();
}

/** The tenant's agent with this id, optionally locked (`update` for writers, `key share` to keep it from being deleted). */
export async function findAgent(
  db: Db,
  tenantId: string,
  id: string,
  lock?: "update" | "key share",
): Promise<AgentRow | undefined> {
  let q = db.selectFrom("agents").selectAll().where("id", "=", id).where("tenant_id", "=", tenantId);
  if (lock === "update") q = q.forUpdate();
  else if (lock === "key share") q = q.forKeyShare();
  return q.executeTakeFirst();
}

/** One page of the tenant's agents, newest first, after the (create_time, id) cursor of the previous page's last row. */
export async function listAgents(
  db: Db,
  tenantId: string,
  limit: number,
  after?: { readonly createTime: string; readonly id: string },
): Promise<(AgentRow & { cursor: string })[]> {
  let q = db
    .selectFrom("agents")
    .selectAll()
    .select(createTimeCursor.as("cursor"))
    .where("tenant_id", "=", tenantId);
  if (after) {
    q = q.where((eb) =>
      eb(eb.refTuple("create_time", "id"), "<", eb.tuple(sql<Date>`${after.createTime}::timestamptz`, sql<string>`${after.id}::uuid`)),
    );
  }
  return q.orderBy("create_time", "desc").orderBy("id", "desc").limit(limit).execute();
}

/** Writes new values of an agent, bumping its version; undefined when the row (of this tenant, at this version) is gone. */
export async function updateAgent(
  db: Db,
  tenantId: string,
  id: string,
  expectedVersion: number,
  values: AgentUpdate,
): Promise<AgentRow | undefined> {
  return db
    .updateTable("agents")
    .set((eb) => ({ ...values, version: eb("version", "+", 1), update_time: sql<Date>`now()` }))
    .where("id", "=", id)
    .where("tenant_id", "=", tenantId)
    .where("version", "=", expectedVersion)
    .returningAll()
    .executeTakeFirst();
}

/** Deletes an agent; its sessions, their messages and asks go with it by foreign-key cascade. True when a row was deleted. */
export async function deleteAgent(db: Db, tenantId: string, id: string): Promise<boolean> {
  const r = await db.deleteFrom("agents").where("id", "=", id).where("tenant_id", "=", tenantId).executeTakeFirst();
  return r.numDeletedRows > 0n;
}
