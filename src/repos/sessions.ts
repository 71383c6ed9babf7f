import { sql, type Kysely, type RawBuilder, type Transaction } from "kysely";
import type { Database, NewSessionRow, SessionRow, SessionStatusText, SessionUpdate } from "../db/schema.js";
import { prepared } from "../db/prepared.js";

type Db = Kysely<Database> | Transaction<Database>;

/**
 * An Ask holds the session while its lease is valid; an expired lease means the
 * replica that ran it died, so it no longer protects the session. Evaluated with
 * the database clock, the one clock every replica shares.
 */
const askRunning = sql<boolean>`(active_ask_id is not null and lease_expire_time is not null and lease_expire_time > now())`;

/** A session row with whether an Ask currently holds it. */
export type SessionWithClaim = SessionRow & { ask_running: boolean };

export type SessionSort = "create_time" | "update_time" | "name";

export interface SessionFilter {
  readonly agentId?: string;
  readonly userId?: string;
  /** Case-insensitive substring of the name, matched literally (no wildcards). */
  readonly nameContains?: string;
  readonly status?: SessionStatusText;
}

/** The keyset position after which a page starts: the sort key as returned in `cursor`, and the id. */
export interface SessionCursor {
  readonly key: string;
  readonly id: string;
}

/** Timestamps as text with microseconds (a JS Date keeps milliseconds only, too coarse for a keyset). */
function timeCursor(column: "create_time" | "update_time"): RawBuilder<string> {
  return sql<string>`to_char(${sql.ref(column)} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;
}

/** Escapes LIKE wildcards so user text matches literally (backslash is Postgres's default LIKE escape). */
export function escapeLike(text: string): string {
  return text.replace(/[\\%_]/g, (c) => `\\${c}`);
}

/** Inserts a session and returns the stored row. */
export async function insertSession(db: Db, row: NewSessionRow): Promise<SessionRow> {
  return db.insertInto("sessions").values(row).returningAll().executeTakeFirstOrThrow();
}

/** The tenant's session with this id (and whether an Ask holds it), optionally locked FOR UPDATE. */
export async function findSession(
  db: Db,
  tenantId: string,
  id: string,
  lock = false,
): Promise<SessionWithClaim | undefined> {
  let q = db
    .selectFrom("sessions")
    .selectAll()
    .select(askRunning.as("ask_running"))
    .where("id", "=", id)
    .where("tenant_id", "=", tenantId);
  if (lock) q = q.forUpdate();
  return q.modifyEnd(prepared).executeTakeFirst();
}

/** One page of the tenant's sessions matching the filter, ordered by (sort, id), after the cursor of the previous page. */
export async function listSessions(
  db: Db,
  tenantId: string,
  filter: SessionFilter,
  sort: SessionSort,
  descending: boolean,
  limit: number,
  after?: SessionCursor,
): Promise<(SessionRow & { cursor: string })[]> {
  const cursor = sort === "name" ? sql<string>`name` : timeCursor(sort);
  let q = db
    .selectFrom("sessions")
    .selectAll()
    .select(cursor.as("cursor"))
    .where("tenant_id", "=", tenantId);
  if (filter.agentId !== undefined) q = q.where("agent_id", "=", filter.agentId);
  if (filter.userId !== undefined) q = q.where("user_id", "=", filter.userId);
  if (filter.status !== undefined) q = q.where("status", "=", filter.status);
  if (filter.nameContains !== undefined && filter.nameContains !== "") {
    q = q.where("name", "ilike", `%${escapeLike(filter.nameContains)}%`);
  }
  if (after) {
    const key = sort === "name" ? sql<string>`${after.key}::text` : sql<Date>`${after.key}::timestamptz`;
    q = q.where((eb) =>
      eb(eb.refTuple(sort, "id"), descending ? "<" : ">", eb.tuple(key, sql<string>`${after.id}::uuid`)),
    );
  }
  const dir = descending ? "desc" : "asc";
  return q.orderBy(sort, dir).orderBy("id", dir).limit(limit).execute();
}

/** Writes new values of a session, bumping its version; undefined when the row (of this tenant, at this version) is gone. */
export async function updateSession(
  db: Db,
  tenantId: string,
  id: string,
  expectedVersion: number,
  values: SessionUpdate,
): Promise<SessionRow | undefined> {
  return db
    .updateTable("sessions")
    .set((eb) => ({ ...values, version: eb("version", "+", 1), update_time: sql<Date>`now()` }))
    .where("id", "=", id)
    .where("tenant_id", "=", tenantId)
    .where("version", "=", expectedVersion)
    .returningAll()
    .executeTakeFirst();
}

/** A locked session and whether an Ask holds it. */
export interface SessionClaim {
  readonly id: string;
  readonly active_ask_id: string | null;
  readonly ask_running: boolean;
}

/**
 * Locks the tenant's sessions picked by ids, or by agent (and user), and says
 * which ones an Ask holds. Rows are locked in id order so that concurrent
 * batches cannot deadlock; ids of other tenants or of no session are absent.
 */
export async function lockSessions(
  db: Db,
  tenantId: string,
  by: { readonly ids: readonly string[] } | { readonly agentId: string; readonly userId?: string },
): Promise<SessionClaim[]> {
  let q = db
    .selectFrom("sessions")
    .select(["id", "active_ask_id", askRunning.as("ask_running")])
    .where("tenant_id", "=", tenantId);
  if ("ids" in by) {
    if (by.ids.length === 0) return [];
    q = q.where("id", "in", by.ids);
  } else {
    q = q.where("agent_id", "=", by.agentId);
    if (by.userId !== undefined) q = q.where("user_id", "=", by.userId);
  }
  return q.orderBy("id").forUpdate().execute();
}

/** Deletes the tenant's sessions with these ids (messages, asks and append records cascade); returns the deleted ids. */
export async function deleteSessions(db: Db, tenantId: string, ids: readonly string[]): Promise<string[]> {
  if (ids.length === 0) return [];
  const rows = await db
    .deleteFrom("sessions")
    .where("tenant_id", "=", tenantId)
    .where("id", "in", ids)
    .returning("id")
    .execute();
  return rows.map((r) => r.id);
}

/** Whether the agent has at least one session. */
export async function agentHasSessions(db: Db, tenantId: string, agentId: string): Promise<boolean> {
  const row = await db
    .selectFrom("sessions")
    .select("id")
    .where("tenant_id", "=", tenantId)
    .where("agent_id", "=", agentId)
    .limit(1)
    .executeTakeFirst();
  return row !== undefined;
}
