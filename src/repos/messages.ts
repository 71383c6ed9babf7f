import { sql, type Kysely, type Transaction } from "kysely";
import type { Database, JsonObject, MessageRoleText, MessageRow, MessageStatusText, SessionRow } from "../db/schema.js";
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
      last_message_time: sql<Date>`now()`,
      update_time: sql<Date>`now()`,
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
