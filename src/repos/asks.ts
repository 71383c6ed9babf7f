import { sql, type Kysely, type Transaction } from "kysely";
import type {
  AgentRow,
  AskRow,
  AskStatusText,
  Database,
  JsonObject,
  MessageRow,
  MessageStatusText,
  NewAskRow,
  SessionRow,
  UsageJson,
} from "../db/schema.js";
import { insertAfterSession, type MessageInput } from "./messages.js";
import type { LockedSession } from "./state.js";
import { prepared } from "../db/prepared.js";

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
    | "version"
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
      "a.version",
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
    .modifyEnd(prepared)
    .executeTakeFirst();
  if (!row) return undefined;
  return {
    session: { id: row.session_id, tenant_id: row.tenant_id, agent_id: row.agent_id, status: row.status },
    agent: {
      id: row.agent_id,
      version: row.version,
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
 * Finishes a running Ask in ONE statement (so it needs no transaction): the
 * assistant message gets its final content, status and usage; the Ask its
 * status; the session is released (only if the claim is still this Ask's) and
 * marked changed. Each write is conditional on the row still being in
 * progress, so an Ask already marked INTERRUPTED by a replica that took the
 * session over is left as it is. Returns the assistant message as stored (undefined
 * when it was not stored, or no longer streaming).
 */
export async function finishAsk(
  db: Db,
  args: {
    readonly tenantId: string;
    readonly sessionId: string;
    readonly askId: string;
    readonly assistantMessageId: string | null;
    readonly content: string;
    readonly outcome: AskOutcome;
  },
): Promise<{ message: MessageRow | undefined }> {
  const { tenantId, sessionId, askId, outcome } = args;
  const usage = outcome.usage ? JSON.stringify(outcome.usage) : null;
  const { rows } = await sql<MessageRow>`
    with m as (
      update messages
      set content = ${args.content}, status = ${messageStatusOf[outcome.status]}, usage = ${usage}::jsonb, update_time = now()
      where id = ${args.assistantMessageId}::uuid and tenant_id = ${tenantId} and status = 'streaming'
      returning *
    ), a as (
      update asks
      set status = ${outcome.status}, usage = ${usage}::jsonb, error_code = ${outcome.errorCode}, error_message = ${outcome.errorMessage},
          finish_time = now()
      where id = ${askId} and tenant_id = ${tenantId} and status = 'running'
      returning id
    ), r as (
      ${releaseClaimStatement(tenantId, sessionId, askId)}
      returning id
    )
    select m.* from m${prepared}`.execute(db);
  return { message: rows[0] };
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
  await releaseClaimStatement(tenantId, sessionId, askId).execute(tx);
}

function releaseClaimStatement(tenantId: string, sessionId: string, askId: string) {
  return sql`
    update sessions
    set active_ask_id = null, lease_owner = null, lease_expire_time = null, update_time = now(), version = version + 1
    where id = ${sessionId} and tenant_id = ${tenantId} and active_ask_id = ${askId}`;
}

/** What claimFreeSession stored: the Ask's start time, the user message (when stored) and the state the turn renders. */
export interface FreeClaim {
  readonly askCreateTime: Date;
  readonly user: MessageRow | undefined;
  readonly state: LockedSession;
  /**
   * The last `historyLimit` messages before this Ask's own, newest first;
   * undefined when the statement's snapshot may have missed one (an append
   * committed while the claim waited for the session row), so read it again.
   */
  readonly history: HistoryRow[] | undefined;
}

/** What a turn's context needs of a message of its history. */
export type HistoryRow = Pick<MessageRow, "id" | "role" | "content" | "status">;

/**
 * The fast path of starting an Ask, in ONE statement and no transaction: claims
 * the session only if it is active, free (no Ask holds it, even with an
 * expired lease) and nobody waits in its queue, and in the same statement
 * stores the Ask and, with `messages`, the user message and the assistant's
 * streaming placeholder (seq from the session row, as appendMessages does).
 * The UPDATE takes the session row lock, so it serializes with every claim,
 * queue place and append like the locked read of claimInOrder does; the
 * user's and agent's state scopes are read, not locked, as claimInOrder reads
 * them. Undefined when the session is not free, missing or archived: the
 * caller then goes through the concurrency gate (policy.ts), which tells
 * those apart, waits, queues or interrupts.
 */
export async function claimFreeSession(
  db: Db,
  args: {
    readonly ask: NewAskRow & { readonly id: string; readonly tenant_id: string; readonly session_id: string };
    readonly leaseMs: number;
    /** How many of the messages before this Ask's own to return as its history. */
    readonly historyLimit: number;
    /** The user message and the assistant's placeholder (their ask_id is the Ask's); none when it stores nothing. */
    readonly messages: readonly (MessageInput & { readonly id: string })[];
    /**
     * Claims only when the session still belongs to this agent and the agent is still at this
     * version: the Ask then runs with an agent read earlier (a replica's cache) without reading it again.
     */
    readonly agent?: { readonly id: string; readonly version: number };
  },
): Promise<FreeClaim | undefined> {
  const { ask, messages } = args;
  const n = messages.length;
  // `u.*` is the stored user message; the row is there (with nulls for u.*) when nothing is stored.
  const { rows } = await sql<MessageRow & {
    ask_create_time: Date;
    s_user_id: string;
    s_agent_id: string;
    s_state: JsonObject;
    user_state: JsonObject | null;
    app_state: JsonObject | null;
    history: (HistoryRow & { seq: number })[];
  }>`
    with s as (
      update sessions
      set active_ask_id = ${ask.id}, lease_owner = ${ask.owner ?? null}, lease_expire_time = ${leaseEnd(args.leaseMs)},
          last_seq = last_seq + ${n}, message_count = message_count + ${n},
          last_message_time = case when ${n} > 0 then clock_timestamp() else last_message_time end,
          update_time = case when ${n} > 0 then clock_timestamp() else update_time end,
          version = version + case when ${n} > 0 then 1 else 0 end
      where id = ${ask.session_id} and tenant_id = ${ask.tenant_id} and status = 'active' and active_ask_id is null${
        args.agent
          ? sql`
        and agent_id = ${args.agent.id}
        and exists (select 1 from agents ag where ag.id = ${args.agent.id} and ag.tenant_id = ${ask.tenant_id} and ag.version = ${args.agent.version})`
          : sql``
      }
        and not exists (select 1 from ask_queue q where q.session_id = sessions.id and q.tenant_id = sessions.tenant_id)
      returning id, tenant_id, user_id, agent_id, state, last_seq, update_time
    ), a as (
      -- clock_timestamp(): the Ask starts when it holds the claim.
      insert into asks (id, tenant_id, session_id, status, request_id, request_hash, user_message_id, assistant_message_id, model, store, owner, create_time)
      select ${ask.id}, s.tenant_id, s.id, ${ask.status}, ${ask.request_id ?? null}, ${ask.request_hash}, ${ask.user_message_id ?? null},
             ${ask.assistant_message_id ?? null}, ${ask.model}, ${ask.store}, ${ask.owner ?? null}, clock_timestamp()
      from s
      returning create_time
    ), m as (
      ${insertAfterSession(messages.map((m) => ({ ...m, askId: ask.id })))}
    )
    select u.*, a.create_time as ask_create_time, s.user_id as s_user_id, s.agent_id as s_agent_id, s.state as s_state,
           (select us.state from user_states us where us.tenant_id = s.tenant_id and us.user_id = s.user_id) as user_state,
           (select aps.state from app_states aps where aps.tenant_id = s.tenant_id and aps.agent_id = s.agent_id) as app_state,
           -- The history as of the statement's snapshot (which never holds the rows m inserts): one range scan.
           (select coalesce(json_agg(json_build_object('id', h.id, 'seq', h.seq, 'role', h.role, 'content', h.content, 'status', h.status)
                                     order by h.seq desc), '[]'::json)
            -- The seq range bounds what any plan reads (a generic plan may scan by bitmap and sort):
            -- at most twice the window, which holds it unless deletions thinned the range.
            from (select id, seq, role, content, status from messages
                  where session_id = s.id and tenant_id = s.tenant_id and seq <= s.last_seq - ${n}
                    and seq > s.last_seq - ${n} - ${2 * args.historyLimit}
                  order by seq desc limit ${args.historyLimit}) h) as history,
           s.last_seq - ${n} as previous_seq
    from s cross join a left join m u on u.role = 'user'${prepared}`.execute(db);
  const row = rows[0];
  if (!row) return undefined;
  const { ask_create_time, s_user_id, s_agent_id, s_state, user_state, app_state, history, previous_seq, ...user } = row as typeof row & {
    previous_seq: number;
  };
  // Complete when its newest message is the one right before this Ask's (or the session had none),
  // and it is the whole window or the range reached the session's first seq.
  const complete =
    args.historyLimit === 0 ||
    ((history[0]?.seq ?? 0) === previous_seq && (history.length === args.historyLimit || previous_seq <= 2 * args.historyLimit));
  return {
    askCreateTime: ask_create_time,
    history: complete ? history.map(({ id, role, content, status }) => ({ id, role, content, status })) : undefined,
    user: user.id ? (user as MessageRow) : undefined,
    state: {
      owner: { sessionId: ask.session_id, userId: s_user_id, agentId: s_agent_id },
      state: s_state,
      user: user_state ?? {},
      app: app_state ?? {},
    },
  };
}
