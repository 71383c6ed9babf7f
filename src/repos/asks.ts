import { sql, type Kysely, type Transaction } from "kysely";
import type {
  AgentRow,
  AskRow,
  AskStatusText,
  Database,
  MessageRow,
  MessageStatusText,
  NewAskRow,
  SessionRow,
  UsageJson,
} from "../db/schema.js";

type Db = Kysely<Database> | Transaction<Database>;

/** now() + ms, in SQL. */
function leaseEnd(ms: number) {
  return sql<Date>`now() + ${String(ms)}::int * interval '1 millisecond'`;
}

/** What an Ask needs of its session and agent. */
export interface AskTarget {
  readonly session: Pick<SessionRow, "id" | "tenant_id" | "agent_id" | "status">;
  readonly agent: Pick<
    AgentRow,
    | "id"
    | "instructions"
    | "model"
    | "generation"
    | "context_policy"
    | "memory"
    | "concurrency_policy"
    | "enqueue_timeout_ms"
    | "knowledge_base_ids"
    | "retrieval"
  >;
}

/** The session and everything an Ask reads of its agent (one read per Ask), in the tenant; undefined when the session does not exist there. */
export async function findAskTarget(db: Db, tenantId: string, sessionId: string): Promise<AskTarget | undefined> {
  const row = await db
    .selectFrom("sessions as s")
    .innerJoin("agents as a", (j) => j.onRef("a.id", "=", "s.agent_id").onRef("a.tenant_id", "=", "s.tenant_id"))
    .select([
      "s.id as session_id",
      "s.tenant_id",
      "s.agent_id",
      "s.status",
      "a.instructions",
      "a.model",
      "a.generation",
      "a.context_policy",
      "a.memory",
      "a.concurrency_policy",
      "a.enqueue_timeout_ms",
      "a.knowledge_base_ids",
      "a.retrieval",
    ])
    .where("s.id", "=", sessionId)
    .where("s.tenant_id", "=", tenantId)
    .executeTakeFirst();
  if (!row) return undefined;
  return {
    session: { id: row.session_id, tenant_id: row.tenant_id, agent_id: row.agent_id, status: row.status },
    agent: {
      id: row.agent_id,
      instructions: row.instructions,
      model: row.model,
      generation: row.generation,
      context_policy: row.context_policy,
      memory: row.memory,
      concurrency_policy: row.concurrency_policy,
      enqueue_timeout_ms: row.enqueue_timeout_ms,
      knowledge_base_ids: row.knowledge_base_ids,
      retrieval: row.retrieval,
    },
  };
}

/** An Ask of the tenant, or undefined. */
export async function getAsk(db: Db, tenantId: string, askId: string): Promise<AskRow | undefined> {
  return db.selectFrom("asks").selectAll().where("id", "=", askId).where("tenant_id", "=", tenantId).executeTakeFirst();
}

/** The Ask a session ran for a request_id (unique per session), or undefined. */
export async function findAskByRequest(
  db: Db,
  tenantId: string,
  sessionId: string,
  requestId: string,
): Promise<AskRow | undefined> {
  return db
    .selectFrom("asks")
    .selectAll()
    .where("session_id", "=", sessionId)
    .where("request_id", "=", requestId)
    .where("tenant_id", "=", tenantId)
    .executeTakeFirst();
}

/**
 * Claims a session for an Ask: a lease on the session row (active_ask_id,
 * lease_owner, lease_expire_time). The conditional UPDATE succeeds only when no
 * Ask holds the session or its lease has expired (its replica stopped renewing
 * it), so two replicas can never run two Asks on one session. The caller has
 * locked the session row in this transaction and read its active_ask_id
 * (`previousAskId`, the holder to mark if its lease expired), so the read and
 * the UPDATE are one atomic step; runs in the transaction that stores the Ask,
 * so a failed start leaves no claim behind. False when the claim was refused.
 */
export async function claimLockedSession(
  tx: Transaction<Database>,
  tenantId: string,
  sessionId: string,
  askId: string,
  owner: string,
  leaseMs: number,
): Promise<boolean> {
  const claimed = await tx
    .updateTable("sessions")
    .set({ active_ask_id: askId, lease_owner: owner, lease_expire_time: leaseEnd(leaseMs) })
    .where("id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "active")
    .where((eb) =>
      eb.or([eb("active_ask_id", "is", null), eb("lease_expire_time", "is", null), eb("lease_expire_time", "<=", sql<Date>`now()`)]),
    )
    .returning("id")
    .executeTakeFirst();
  return claimed !== undefined;
}

/** Stores a new Ask (status running). */
export async function insertAsk(tx: Transaction<Database>, row: NewAskRow): Promise<AskRow> {
  // clock_timestamp(), not now(): the transaction may have begun before it
  // waited for the session lock, and an Ask starts when it holds the claim, after
  // the previous one finished.
  return tx
    .insertInto("asks")
    .values({ create_time: sql<Date>`clock_timestamp()`, ...row })
    .returningAll()
    .executeTakeFirstOrThrow();
}

/**
 * Extends the lease of a running Ask; false when the claim is no longer ours
 * (released, or taken over after it expired).
 */
export async function renewLease(
  db: Db,
  tenantId: string,
  sessionId: string,
  askId: string,
  owner: string,
  leaseMs: number,
): Promise<boolean> {
  const row = await db
    .updateTable("sessions")
    .set({ lease_expire_time: leaseEnd(leaseMs) })
    .where("id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .where("active_ask_id", "=", askId)
    .where("lease_owner", "=", owner)
    .returning("id")
    .executeTakeFirst();
  return row !== undefined;
}

/** Writes the partial answer of a streaming assistant message (no-op once it has left STREAMING). */
export async function flushContent(db: Db, tenantId: string, messageId: string, content: string): Promise<void> {
  await db
    .updateTable("messages")
    .set({ content, update_time: sql<Date>`now()` })
    .where("id", "=", messageId)
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "streaming")
    .execute();
}

/** How an Ask ended. */
export interface AskOutcome {
  readonly status: Exclude<AskStatusText, "running">;
  readonly usage: UsageJson | null;
  /** For failed: the Connect code; for cancelled: who cancelled ("cancel_ask", "client", "shutdown"). */
  readonly errorCode: string | null;
  readonly errorMessage: string | null;
}

const messageStatusOf: Record<AskOutcome["status"], MessageStatusText> = {
  completed: "complete",
  failed: "failed",
  cancelled: "cancelled",
  interrupted: "interrupted",
};

/**
 * Finishes a running Ask in one transaction: the assistant message gets its
 * final content, status and usage; the Ask its status; the session is released
 * (only if the claim is still this Ask's) and marked changed. Each write is
 * conditional on the row still being in progress, so an Ask already marked
 * INTERRUPTED by a replica that took the session over is left as it is.
 */
export async function finishAsk(
  tx: Transaction<Database>,
  args: {
    readonly tenantId: string;
    readonly sessionId: string;
    readonly askId: string;
    readonly assistantMessageId: string | null;
    readonly content: string;
    readonly outcome: AskOutcome;
  },
): Promise<{ ask: AskRow | undefined; message: MessageRow | undefined }> {
  const { tenantId, sessionId, askId, outcome } = args;
  let message: MessageRow | undefined;
  if (args.assistantMessageId) {
    message = await tx
      .updateTable("messages")
      .set({
        content: args.content,
        status: messageStatusOf[outcome.status],
        usage: outcome.usage ? JSON.stringify(outcome.usage) : null,
        update_time: sql<Date>`now()`,
      })
      .where("id", "=", args.assistantMessageId)
      .where("tenant_id", "=", tenantId)
      .where("status", "=", "streaming")
      .returningAll()
      .executeTakeFirst();
  }
  const ask = await tx
    .updateTable("asks")
    .set({
      status: outcome.status,
      usage: outcome.usage ? JSON.stringify(outcome.usage) : null,
      error_code: outcome.errorCode,
      error_message: outcome.errorMessage,
      finish_time: sql<Date>`now()`,
    })
    .where("id", "=", askId)
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "running")
    .returningAll()
    .executeTakeFirst();
  await releaseClaim(tx, tenantId, sessionId, askId);
  return { ask, message };
}

/**
 * Marks an abandoned Ask (its replica stopped renewing the lease) INTERRUPTED,
 * with its assistant message keeping what was flushed.
 */
export async function interruptAsk(tx: Transaction<Database>, tenantId: string, askId: string): Promise<void> {
  const ask = await tx
    .updateTable("asks")
    .set({
      status: "interrupted",
      error_message: "the replica running the Ask stopped before it finished",
      finish_time: sql<Date>`now()`,
    })
    .where("id", "=", askId)
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "running")
    .returning(["assistant_message_id"])
    .executeTakeFirst();
  if (ask?.assistant_message_id) {
    await tx
      .updateTable("messages")
      .set({ status: "interrupted", update_time: sql<Date>`now()` })
      .where("id", "=", ask.assistant_message_id)
      .where("tenant_id", "=", tenantId)
      .where("status", "=", "streaming")
      .execute();
  }
}

/**
 * Finishes a running Ask whose lease has expired (or that holds no claim):
 * INTERRUPTED, and the session released when it still points at it. Returns
 * false when the Ask's lease is still live (another replica is running it).
 */
export async function interruptIfAbandoned(db: Kysely<Database>, tenantId: string, ask: AskRow): Promise<boolean> {
  return db.transaction().execute(async (tx) => {
    const s = await tx
      .selectFrom("sessions")
      .select(["active_ask_id", sql<boolean>`coalesce(lease_expire_time > now(), false)`.as("lease_live")])
      .where("id", "=", ask.session_id)
      .where("tenant_id", "=", tenantId)
      .forUpdate()
      .executeTakeFirst();
    if (s && s.active_ask_id === ask.id && s.lease_live) return false;
    await interruptAsk(tx, tenantId, ask.id);
    if (s && s.active_ask_id === ask.id) {
      await releaseClaim(tx, tenantId, ask.session_id, ask.id);
    }
    return true;
  });
}

/** Messages of the tenant by id (any session), e.g. an Ask's user and assistant messages. */
export async function messagesByIds(db: Db, tenantId: string, ids: readonly string[]): Promise<MessageRow[]> {
  if (ids.length === 0) return [];
  return db.selectFrom("messages").selectAll().where("id", "in", ids).where("tenant_id", "=", tenantId).execute();
}

/**
 * Renews the lease like renewLease and tells whether a CancelAsk served by
 * another replica asked for the Ask to stop (one round trip per renewal).
 */
export async function renewLeaseAndCheckCancel(
  db: Db,
  tenantId: string,
  sessionId: string,
  askId: string,
  owner: string,
  leaseMs: number,
): Promise<{ readonly held: boolean; readonly cancelRequested: boolean; readonly cancelReason: string | null }> {
  const row = await db
    .updateTable("sessions")
    .set({ lease_expire_time: leaseEnd(leaseMs) })
    .where("id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .where("active_ask_id", "=", askId)
    .where("lease_owner", "=", owner)
    .returning((eb) => [
      eb
        .selectFrom("asks")
        .select(sql<boolean>`cancel_request_time is not null`.as("c"))
        .where("asks.id", "=", askId)
        .where("asks.tenant_id", "=", tenantId)
        .as("cancel_requested"),
      // A running Ask's error_code holds the reason of a pending cancel request.
      eb
        .selectFrom("asks")
        .select("error_code")
        .where("asks.id", "=", askId)
        .where("asks.tenant_id", "=", tenantId)
        .as("cancel_reason"),
    ])
    .executeTakeFirst();
  return {
    held: row !== undefined,
    cancelRequested: row?.cancel_requested === true,
    cancelReason: row?.cancel_reason ?? null,
  };
}

/**
 * Records a cancel request on a running Ask, with its reason in error_code (for its
 * replica's lease renewal to notice); false when it is not running.
 */
export async function requestCancel(db: Db, tenantId: string, askId: string, reason = "cancel_ask"): Promise<boolean> {
  const row = await db
    .updateTable("asks")
    .set({ cancel_request_time: sql<Date>`now()`, error_code: reason })
    .where("id", "=", askId)
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "running")
    .returning("id")
    .executeTakeFirst();
  return row !== undefined;
}

/** A claim whose lease has expired: its replica stopped renewing it. */
export interface ExpiredClaim {
  readonly tenantId: string;
  readonly sessionId: string;
  readonly askId: string;
}

/**
 * Claims whose lease has expired, oldest first, across tenants: the sweeper's
 * periodic query (the partial index sessions_lease_expire_idx makes it a short
 * range scan of claimed sessions only). Each result is then handled in its tenant.
 */
export async function findExpiredClaims(db: Db, limit: number): Promise<ExpiredClaim[]> {
  const rows = await db
    .selectFrom("sessions")
    .select(["tenant_id", "id", "active_ask_id"])
    .where("active_ask_id", "is not", null)
    .where("lease_expire_time", "<=", sql<Date>`now()`)
    .orderBy("lease_expire_time")
    .limit(limit)
    .execute();
  return rows.map((r) => ({ tenantId: r.tenant_id, sessionId: r.id, askId: r.active_ask_id! }));
}

/**
 * Marks the Ask of an expired claim INTERRUPTED (its message keeps what was
 * flushed) and frees the session, if the claim is still that Ask's and still
 * expired. A row another replica is sweeping is skipped, not waited for.
 * True when this call did it.
 */
export async function sweepExpiredClaim(db: Kysely<Database>, claim: ExpiredClaim): Promise<boolean> {
  return db.transaction().execute(async (tx) => {
    const s = await tx
      .selectFrom("sessions")
      .select("id")
      .where("id", "=", claim.sessionId)
      .where("tenant_id", "=", claim.tenantId)
      .where("active_ask_id", "=", claim.askId)
      .where("lease_expire_time", "<=", sql<Date>`now()`)
      .forUpdate()
      .skipLocked()
      .executeTakeFirst();
    if (!s) return false;
    await interruptAsk(tx, claim.tenantId, claim.askId);
    await releaseClaim(tx, claim.tenantId, claim.sessionId, claim.askId);
    return true;
  });
}

/**
 * Frees a session whose claim is still held by askId (finished, or interrupted
 * after its replica died); the session's version moves, as for any change.
 */
async function releaseClaim(tx: Transaction<Database>, tenantId: string, sessionId: string, askId: string): Promise<void> {
  await tx
    .updateTable("sessions")
    .set((eb) => ({
      active_ask_id: null,
      lease_owner: null,
      lease_expire_time: null,
      update_time: sql<Date>`now()`,
      version: eb("version", "+", 1),
    }))
    .where("id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .where("active_ask_id", "=", askId)
    .execute();
}
