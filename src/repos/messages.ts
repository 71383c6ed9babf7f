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
}

/**
 * Appends messages to a session with consecutive seq numbers. Must run inside a
 * transaction: the UPDATE of the session row takes its row lock, so concurrent
 * appenders are serialized on that row and seq is gap-free (the counter and the
 * rows commit together or not at all).
 */
export async function appendMessages(
  tx: Transaction<Database>,
  tenantId: string,
  sessionId: string,
  inputs: readonly MessageInput[],
  options: AppendOptions = {},
): Promise<{ session: SessionRow; messages: MessageRow[] }> {
  const n = inputs.length;
  let q = tx
    .updateTable("sessions")
    .set((eb) => ({
      last_seq: eb("last_seq", "+", n),
      message_count: eb("message_count", "+", n),
      // clock_timestamp(): taken once this UPDATE holds the row lock, so
      // messages' times follow their seq order even when the transaction
      // began before an earlier appender committed.
      last_message_time: sql<Date>`clock_timestamp()`,
      update_time: sql<Date>`clock_timestamp()`,
      version: eb("version", "+", 1),
    }))
    .where("id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "active");
  if (options.expectedLastSeq !== undefined) q = q.where("last_seq", "=", options.expectedLastSeq);
  const session = await q.returningAll().executeTakeFirst();
  if (!session) {
    // Diagnose the miss (rare path): unknown, archived, or lost the race.
    const s = await tx
      .selectFrom("sessions")
      .select(["status", "last_seq"])
      .where("id", "=", sessionId)
      .where("tenant_id", "=", tenantId)
      .executeTakeFirst();
    if (!s) throw notFound("session", sessionId);
    if (s.status !== "active") {
      throw failedPrecondition(`session "${sessionId}" is archived; unarchive it first`, "SESSION_ARCHIVED", {
        session_id: sessionId,
      });
    }
    throw aborted(
      `session "${sessionId}" has last_seq ${s.last_seq}, not the expected ${options.expectedLastSeq}`,
      "LAST_SEQ_MISMATCH",
      { session_id: sessionId, last_seq: String(s.last_seq), expected_last_seq: String(options.expectedLastSeq) },
    );
  }
  const first = session.last_seq - n + 1;
  const messages = await tx
    .insertInto("messages")
    .values(
      inputs.map((m, i) => ({
        id: m.id ?? newId(),
        tenant_id: tenantId,
        session_id: sessionId,
        seq: first + i,
        role: m.role,
        content: m.content,
        status: m.status ?? "complete",
        metadata: JSON.stringify(m.metadata ?? {}),
        ask_id: m.askId ?? null,
        model: m.model ?? "",
        create_time: session.update_time,
        update_time: session.update_time,
      })),
    )
    .returningAll()
    .execute();
  messages.sort((a, b) => a.seq - b.seq);
  return { session, messages };
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
  return q.orderBy("seq", "desc").limit(limit).execute();
}

export interface ListRange {
  /** Only seq > afterSeq. */
  readonly afterSeq?: number;
  /** Only seq < beforeSeq. */
  readonly beforeSeq?: number;
  readonly descending: boolean;
  readonly limit: number;
}

/** One page of a session's messages by seq: one range scan on the (session_id, seq) index, never the whole session. */
export function listMessagesQuery(db: Db, tenantId: string, sessionId: string, range: ListRange) {
  let q = db
    .selectFrom("messages")
    .selectAll()
    .where("session_id", "=", sessionId)
    .where("tenant_id", "=", tenantId);
  if (range.afterSeq !== undefined) q = q.where("seq", ">", range.afterSeq);
  if (range.beforeSeq !== undefined) q = q.where("seq", "<", range.beforeSeq);
  return q.orderBy("seq", range.descending ? "desc" : "asc").limit(range.limit);
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

/** Records the messages an AppendMessages stored under its request_id (a duplicate raises the primary key's unique violation). */
export async function recordAppendRequest(
  tx: Transaction<Database>,
  tenantId: string,
  sessionId: string,
  requestId: string,
  requestHash: string,
  messageIds: readonly string[],
): Promise<void> {
  await tx
    .insertInto("append_requests")
    .values({
      tenant_id: tenantId,
      session_id: sessionId,
      request_id: requestId,
      request_hash: requestHash,
      message_ids: JSON.stringify(messageIds),
    })
    .execute();
}

/** True for the unique violation of append_requests' primary key: an identical request committed first. */
export function isDuplicateAppendRequest(err: unknown): boolean {
  const e = err as { code?: unknown; constraint?: unknown } | null;
  return !!e && e.code === "23505" && e.constraint === "append_requests_pk";
}
