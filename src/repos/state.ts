import { sql, type Kysely, type Transaction } from "kysely";
import type { Database, JsonObject } from "../db/schema.js";
import { notFound, staleEtag } from "../errors.js";
import { applyDelta, isEmptyDelta, stateEtag, type StateScopes, type ValidDelta } from "../state/scopes.js";

type Db = Kysely<Database> | Transaction<Database>;

/** The session a state belongs to: its own scope's owner and the user and agent whose scopes it shares. */
export interface StateOwner {
  readonly sessionId: string;
  readonly userId: string;
  readonly agentId: string;
}

/** A session's state scopes with the etag of their merged view. */
export interface LoadedState extends StateScopes {
  readonly owner: StateOwner;
  readonly etag: string;
}

/** The session's state scopes, or undefined when the session does not exist in the tenant. */
export async function loadState(db: Db, tenantId: string, sessionId: string): Promise<LoadedState | undefined> {
  const row = await db
    .selectFrom("sessions as s")
    .leftJoin("user_states as u", (j) => j.onRef("u.tenant_id", "=", "s.tenant_id").onRef("u.user_id", "=", "s.user_id"))
    .leftJoin("app_states as a", (j) => j.onRef("a.tenant_id", "=", "s.tenant_id").onRef("a.agent_id", "=", "s.agent_id"))
    .select(["s.id", "s.user_id", "s.agent_id", "s.state as session_state", "u.state as user_state", "a.state as app_state"])
    .where("s.id", "=", sessionId)
    .where("s.tenant_id", "=", tenantId)
    .executeTakeFirst();
  if (!row) return undefined;
  const scopes = { session: row.session_state, user: row.user_state ?? {}, app: row.app_state ?? {} };
  return { ...scopes, owner: { sessionId: row.id, userId: row.user_id, agentId: row.agent_id }, etag: stateEtag(scopes) };
}

/** A session row its caller has locked in the transaction (FOR UPDATE), with its user's and agent's scopes as read (not locked). */
export interface LockedSession {
  readonly owner: StateOwner;
  readonly state: JsonObject;
  readonly user: JsonObject;
  readonly app: JsonObject;
}

/** Locks the user's and the agent's scope rows, creating empty ones first so that there is a row to lock. */
async function lockShared(tx: Transaction<Database>, tenantId: string, owner: StateOwner): Promise<{ user: JsonObject; app: JsonObject }> {
  // ON CONFLICT DO NOTHING waits for a concurrent creator to commit, so the
  // SELECT … FOR UPDATE after it always sees (and locks) the one row.
  await tx
    .insertInto("user_states")
    .values({ tenant_id: tenantId, user_id: owner.userId, state: "{}" })
    .onConflict((oc) => oc.columns(["tenant_id", "user_id"]).doNothing())
    .execute();
  await tx
    .insertInto("app_states")
    .values({ tenant_id: tenantId, agent_id: owner.agentId, state: "{}" })
    .onConflict((oc) => oc.columns(["tenant_id", "agent_id"]).doNothing())
    .execute();
  const user = await tx
    .selectFrom("user_states")
    .select("state")
    .where("tenant_id", "=", tenantId)
    .where("user_id", "=", owner.userId)
    .forUpdate()
    .executeTakeFirstOrThrow();
  const app = await tx
    .selectFrom("app_states")
    .select("state")
    .where("tenant_id", "=", tenantId)
    .where("agent_id", "=", owner.agentId)
    .forUpdate()
    .executeTakeFirstOrThrow();
  return { user: user.state, app: app.state };
}

/**
 * Applies a delta to a session's state scopes inside the caller's transaction,
 * checking `etag` (when given) against the merged view under the locks: the
 * session row first, then the user's and the agent's rows, always in that
 * order, so concurrent updates serialize without deadlocks and exactly one of
 * several updates holding the same etag wins. Returns the scopes after the
 * change with the temp: keys of the delta.
 */
export async function updateState(
  tx: Transaction<Database>,
  tenantId: string,
  sessionId: string,
  delta: ValidDelta,
  options: {
    readonly etag?: string;
    readonly field: string;
    /** The session row, already locked by the caller in this transaction (saves locking it again). */
    readonly locked?: LockedSession;
  },
): Promise<LoadedState & { temp: JsonObject }> {
  const session =
    options.locked ??
    (await tx
      .selectFrom("sessions")
      .select(["id", "user_id", "agent_id", "state"])
      .where("id", "=", sessionId)
      .where("tenant_id", "=", tenantId)
      .forUpdate()
      .executeTakeFirst()
      .then((row) => row && { owner: { sessionId: row.id, userId: row.user_id, agentId: row.agent_id }, state: row.state }));
  if (!session) throw notFound("session", sessionId);
  const { owner } = session;
  const touchesShared =
    Object.keys(delta.set.user).length + delta.remove.user.length + Object.keys(delta.set.app).length + delta.remove.app.length > 0;
  let shared: { user: JsonObject; app: JsonObject };
  if (touchesShared || options.etag) {
    shared = await lockShared(tx, tenantId, owner);
  } else if (options.locked) {
    shared = { user: options.locked.user, app: options.locked.app };
  } else {
    const loaded = await loadState(tx, tenantId, sessionId);
    shared = { user: loaded?.user ?? {}, app: loaded?.app ?? {} };
  }
  const current: StateScopes = { session: session.state, ...shared };
  if (options.etag && options.etag !== stateEtag(current)) throw staleEtag("state", sessionId);
  if (isEmptyDelta(delta)) return { ...current, temp: {}, owner, etag: stateEtag(current) };

  const next = applyDelta(options.field, current, delta);
  const changed = (a: JsonObject, b: JsonObject) => JSON.stringify(a) !== JSON.stringify(b);
  if (changed(current.session, next.session)) {
    await tx
      .updateTable("sessions")
      .set((eb) => ({ state: JSON.stringify(next.session), version: eb("version", "+", 1), update_time: sql<Date>`now()` }))
      .where("id", "=", sessionId)
      .where("tenant_id", "=", tenantId)
      .execute();
  }
  if (changed(current.user, next.user)) {
    await tx
      .updateTable("user_states")
      .set((eb) => ({ state: JSON.stringify(next.user), version: eb("version", "+", 1), update_time: sql<Date>`now()` }))
      .where("tenant_id", "=", tenantId)
      .where("user_id", "=", owner.userId)
      .execute();
  }
  if (changed(current.app, next.app)) {
    await tx
      .updateTable("app_states")
      .set((eb) => ({ state: JSON.stringify(next.app), version: eb("version", "+", 1), update_time: sql<Date>`now()` }))
      .where("tenant_id", "=", tenantId)
      .where("agent_id", "=", owner.agentId)
      .execute();
  }
  const scopes = { session: next.session, user: next.user, app: next.app };
  return { ...scopes, temp: next.temp, owner, etag: stateEtag(scopes) };
}
