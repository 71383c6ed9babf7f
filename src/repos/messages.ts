import { sql, type Kysely, type Transaction } from "kysely";
import type {
  Database,
  FeedbackJson,
  JsonObject,
  MessageRoleText,
  MessageRow,
  MessageStatusText,
  SessionRow,
} from "../db/schema.js";
import { aborted, failedPrecondition, notFound } from "../errors.js";
import { prepared } from "../db/prepared.js";
import { newId } from "../ids.js";

type Db = Kysely<Database> | Transaction<Database>;

/** A message to append; seq, ids and times are assigned here. */
export interface MessageInput {
  readonly role: MessageRoleText;
  readonly content: string;
  readonly metadata?: JsonObject;
  readonly status?: MessageStatusText;
  readonly askId?: string | null;
  readonly model?: string;
  /** A pre-assigned id (the Ask announces its assistant message id before it is stored). */
  readonly id?: string;
}

export interface AppendOptions {
  /** Compare-and-swap on sessions.last_seq: ABORTED when another append came first. */
  readonly expectedLastSeq?: number;
  /**
   * Records the appended ids under an AppendMessages request_id in the same
   * statement; a request_id already recorded raises append_requests' unique
   * violation (see isDuplicateAppendRequest) and nothing is stored.
   */
  readonly record?: { readonly requestId: string; readonly requestHash: string };
}

/** Every column of sessions, returned by the append statement with an `s_` prefix next to each message row. */
const SESSION_COLUMNS = [
  "id",
  "tenant_id",
  "agent_id",
  "user_id",
  "name",
  "metadata",
  "state",
  "status",
  "message_count",
  "last_seq",
  "last_message_time",
  "version",
  "create_time",
  "update_time",
  "active_ask_id",
  "lease_owner",
  "lease_expire_time",
  "watch_expire_time",
] as const satisfies readonly (keyof SessionRow)[];
// Compile-time check that the list names every column: a column added to sessions must be added here.
const sessionColumnsComplete: [Exclude<keyof SessionRow, (typeof SESSION_COLUMNS)[number]>] extends [never] ? true : never = true;
void sessionColumnsComplete;

const sessionSelection = sql.join(SESSION_COLUMNS.map((c) => sql`s.${sql.ref(c)} as ${sql.ref(`s_${c}`)}`));

type AppendedRow = MessageRow & { [K in (typeof SESSION_COLUMNS)[number] as `s_${K}`]: SessionRow[K] };

/**
 * The INSERT of a data-modifying CTE that stores `inputs` right after the
 * session row of a CTE named `s` (an UPDATE that moved its last_seq by
 * inputs.length, RETURNING id, tenant_id, last_seq and update_time): consecutive
 * seq ending at s.last_seq, the session's update_time as their times, RETURNING *.
 * Nothing is inserted when `s` is empty. Used by appendMessages and by the Ask's claim.
 */
export function insertAfterSession(inputs: readonly (MessageInput & { readonly id: string })[]) {
  const n = inputs.length;
  return sql`
      insert into messages (id, tenant_id, session_id, seq, role, content, status, metadata, ask_id, model, create_time, update_time)
      select v.id, s.tenant_id, s.id, s.last_seq - ${n} + v.ord::int, v.role, v.content, v.status, v.metadata,
             v.ask_id, v.model, s.update_time, s.update_time
      from s, unnest(
        ${inputs.map((m) => m.id)}::uuid[], ${inputs.map((m) => m.role)}::text[], ${inputs.map((m) => m.content)}::text[],
        ${inputs.map((m) => m.status ?? "complete")}::text[], ${inputs.map((m) => JSON.stringify(m.metadata ?? {}))}::jsonb[],
        ${inputs.map((m) => m.askId ?? null)}::uuid[], ${inputs.map((m) => m.model ?? "")}::text[]
      ) with ordinality as v(id, role, content, status, metadata, ask_id, model, ord)
      returning *`;
}

/**
 * Appends messages to a session with consecutive seq numbers, in ONE
 * statement (a data-modifying CTE), so it needs no transaction of its own and
 * costs one round trip: the UPDATE of the session row takes its row lock, so
 * concurrent appenders are serialized on that row, and the counter, the rows
 * (and the request_id record) commit together or not at all. Inside a
 * transaction it joins it like any statement.
 */
export async function appendMessages(
  db: Db,
  tenantId: string,
  sessionId: string,
  inputs: readonly MessageInput[],
  options: AppendOptions = {},
): Promise<{ session: SessionRow; messages: MessageRow[] }> {
  const n = inputs.length;
  const ids = inputs.map((m) => m.id ?? newId());
  const cas = options.expectedLastSeq !== undefined ? sql`and last_seq = ${options.expectedLastSeq}` : sql``;
  const record = options.record
    ? sql`, r as (
        insert into append_requests (tenant_id, session_id, request_id, request_hash, message_ids)
        select s.tenant_id, s.id, ${options.record.requestId}, ${options.record.requestHash}, ${JSON.stringify(ids)}::jsonb from s
      )`
    : sql``;
  // clock_timestamp(): taken once the UPDATE holds the row lock, so messages'
  // times follow their seq order even when the statement (or its transaction)
  // began before an earlier appender committed.
  const { rows } = await sql<AppendedRow>`
    with s as (
      update sessions
      set last_seq = last_seq + ${n}, message_count = message_count + ${n},
          last_message_time = clock_timestamp(), update_time = clock_timestamp(), version = version + 1
      where id = ${sessionId} and tenant_id = ${tenantId} and status = 'active' ${cas}
      returning *
    ), m as (
      ${insertAfterSession(
        inputs.map((m, i) => ({ ...m, id: ids[i]! })),
      )}
    )${record}
    select m.*, ${sessionSelection} from m, s order by m.seq${prepared}`.execute(db);
  const first = rows[0];
  if (!first) throw await diagnoseMiss(db, tenantId, sessionId, options);
  const session = Object.fromEntries(SESSION_COLUMNS.map((c) => [c, first[`s_${c}`]])) as unknown as SessionRow;
  // The message's own columns copied, not the session's deleted: deleting properties turns
  // an object into a slow dictionary for everything that reads it afterwards.
  const messages = rows.map((r) => {
    const m: Record<string, unknown> = {};
    for (const k in r) if (!k.startsWith("s_")) m[k] = r[k as keyof AppendedRow];
    return m as unknown as MessageRow;
  });
  return { session, messages };
}

/** Why an append matched no session (rare path): unknown, archived, or lost the expected_last_seq race. */
async function diagnoseMiss(db: Db, tenantId: string, sessionId: string, options: AppendOptions): Promise<Error> {
  const s = await db
    .selectFrom("sessions")
    .select(["status", "last_seq"])
    .where("id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .executeTakeFirst();
  if (!s) return notFound("session", sessionId);
  if (s.status !== "active") {
    return failedPrecondition(`session "${sessionId}" is archived; unarchive it first`, "SESSION_ARCHIVED", {
      session_id: sessionId,
    });
  }
  return aborted(
    `session "${sessionId}" has last_seq ${s.last_seq}, not the expected ${options.expectedLastSeq}`,
    "LAST_SEQ_MISMATCH",
    { session_id: sessionId, last_seq: String(s.last_seq), expected_last_seq: String(options.expectedLastSeq) },
  );
}

/** The last `limit` messages of a session (seq descending), optionally below a seq: one index range scan on (session_id, seq). */
export async function lastMessages(
  db: Db,
  tenantId: string,
  sessionId: string,
  limit: number,
  beforeSeq?: number,
): Promise<MessageRow[]> {
  let q = db
    .selectFrom("messages")
    .selectAll()
    .where("session_id", "=", sessionId)
    .where("tenant_id", "=", tenantId);
  if (beforeSeq !== undefined) q = q.where("seq", "<", beforeSeq);
  return q.orderBy("seq", "desc").limit(limit).modifyEnd(prepared).execute();
}

export interface ListRange {
  /** Only seq > afterSeq. */
  readonly afterSeq?: number;
  /** Only seq < beforeSeq. */
  readonly beforeSeq?: number;
  readonly descending: boolean;
  readonly limit: number;
}

/**
 * One page of a session's messages by seq: one range scan on the (session_id,
 * seq) index, never the whole session. Prepared: its eight shapes' generic
 * plans read that range in order too (test/rpc/seq-race.test.ts checks them).
 */
export function listMessagesQuery(db: Db, tenantId: string, sessionId: string, range: ListRange) {
  let q = db
    .selectFrom("messages")
    .selectAll()
    .where("session_id", "=", sessionId)
    .where("tenant_id", "=", tenantId);
  if (range.afterSeq !== undefined) q = q.where("seq", ">", range.afterSeq);
  if (range.beforeSeq !== undefined) q = q.where("seq", "<", range.beforeSeq);
  return q
    .orderBy("seq", range.descending ? "desc" : "asc")
    .limit(range.limit)
    .modifyEnd(prepared);
}

/** Executes listMessagesQuery. */
export async function listMessages(db: Db, tenantId: string, sessionId: string, range: ListRange): Promise<MessageRow[]> {
  return listMessagesQuery(db, tenantId, sessionId, range).execute();
}

/** A message of the tenant, or undefined. */
export async function getMessage(db: Db, tenantId: string, messageId: string): Promise<MessageRow | undefined> {
  return db
    .selectFrom("messages")
    .selectAll()
    .where("id", "=", messageId)
    .where("tenant_id", "=", tenantId)
    .executeTakeFirst();
}

/** Messages of the tenant by id, in seq order; ids that no longer exist are skipped. */
export async function getMessagesByIds(db: Db, tenantId: string, sessionId: string, ids: readonly string[]): Promise<MessageRow[]> {
  if (ids.length === 0) return [];
  return db
    .selectFrom("messages")
    .selectAll()
    .where("id", "in", ids)
    .where("session_id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .orderBy("seq")
    .execute();
}

/** Marks a session changed because one of its messages changed (update_time and etag move on). */
async function touchSession(tx: Transaction<Database>, tenantId: string, sessionId: string, countDelta = 0): Promise<void> {
  await tx
    .updateTable("sessions")
    .set((eb) => ({
      message_count: eb("message_count", "+", countDelta),
      update_time: sql<Date>`now()`,
      version: eb("version", "+", 1),
    }))
    .where("id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .execute();
}

/** Throws NotFound for a missing message, FAILED_PRECONDITION for one an Ask is still writing. */
function checkNotStreaming(row: Pick<MessageRow, "status"> | undefined, messageId: string): void {
  if (!row) throw notFound("message", messageId);
  if (row.status === "streaming") {
    throw failedPrecondition(
      `message "${messageId}" is being written by an Ask; wait for it to finish or cancel it`,
      "MESSAGE_STREAMING",
      { message_id: messageId },
    );
  }
}

/** The message row of the tenant, locked FOR UPDATE until the transaction ends; undefined when there is none. */
async function lockMessage(tx: Transaction<Database>, tenantId: string, messageId: string): Promise<MessageRow | undefined> {
  return tx
    .selectFrom("messages")
    .selectAll()
    .where("id", "=", messageId)
    .where("tenant_id", "=", tenantId)
    .forUpdate()
    .executeTakeFirst();
}

/**
 * Updates content and/or metadata of a message that no Ask is writing. The row
 * is locked before the session (the order the Ask uses when it finishes) and
 * `check` runs on the locked row before anything is written.
 */
export async function updateMessage(
  tx: Transaction<Database>,
  tenantId: string,
  messageId: string,
  patch: { readonly content?: string; readonly metadata?: JsonObject },
  check: (row: MessageRow) => void = () => {},
): Promise<MessageRow> {
  const current = await lockMessage(tx, tenantId, messageId);
  checkNotStreaming(current, messageId);
  check(current!);
  const row = await tx
    .updateTable("messages")
    .set({
      ...(patch.content !== undefined ? { content: patch.content } : {}),
      ...(patch.metadata !== undefined ? { metadata: JSON.stringify(patch.metadata) } : {}),
      update_time: sql<Date>`now()`,
    })
    .where("id", "=", messageId)
    .where("tenant_id", "=", tenantId)
    .returningAll()
    .executeTakeFirstOrThrow();
  await touchSession(tx, tenantId, row.session_id);
  return row;
}

/** Deletes a message that no Ask is writing and decrements its session's message_count; last_seq stays, so seq is never reused. */
export async function deleteMessage(tx: Transaction<Database>, tenantId: string, messageId: string): Promise<MessageRow> {
  const row = await tx
    .deleteFrom("messages")
    .where("id", "=", messageId)
    .where("tenant_id", "=", tenantId)
    .where("status", "<>", "streaming")
    .returningAll()
    .executeTakeFirst();
  if (!row) {
    checkNotStreaming(await getMessage(tx, tenantId, messageId), messageId);
    // Deleted concurrently between the two statements: gone either way.
    throw notFound("message", messageId);
  }
  await touchSession(tx, tenantId, row.session_id, -1);
  return row;
}

/** Sets (or, with null, clears) the feedback of a message; `check` runs on the locked row before the write. */
export async function setFeedback(
  tx: Transaction<Database>,
  tenantId: string,
  messageId: string,
  feedback: { readonly rating: FeedbackJson["rating"]; readonly comment: string } | null,
  check: (row: MessageRow) => void = () => {},
): Promise<MessageRow> {
  const current = await lockMessage(tx, tenantId, messageId);
  if (!current) throw notFound("message", messageId);
  check(current);
  const row = await tx
    .updateTable("messages")
    .set({
      feedback: feedback
        ? sql<FeedbackJson>`jsonb_build_object('rating', ${feedback.rating}::text, 'comment', ${feedback.comment}::text, 'update_time', now())`
        : null,
      update_time: sql<Date>`now()`,
    })
    .where("id", "=", messageId)
    .where("tenant_id", "=", tenantId)
    .returningAll()
    .executeTakeFirstOrThrow();
  await touchSession(tx, tenantId, row.session_id);
  return row;
}

/** The message ids stored by an earlier AppendMessages with this request_id, or undefined. */
export async function findAppendRequest(
  db: Db,
  tenantId: string,
  sessionId: string,
  requestId: string,
): Promise<{ messageIds: string[]; requestHash: string } | undefined> {
  const row = await db
    .selectFrom("append_requests")
    .select(["message_ids", "request_hash"])
    .where("session_id", "=", sessionId)
    .where("request_id", "=", requestId)
    .where("tenant_id", "=", tenantId)
    .executeTakeFirst();
  return row && { messageIds: row.message_ids, requestHash: row.request_hash };
}

/** True for the unique violation of append_requests' primary key: an identical request committed first. */
export function isDuplicateAppendRequest(err: unknown): boolean {
  const e = err as { code?: unknown; constraint?: unknown } | null;
  return !!e && e.code === "23505" && e.constraint === "append_requests_pk";
}
