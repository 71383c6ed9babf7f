import { sql, type Kysely, type Transaction } from "kysely";
import type { ConcurrencyPolicyText, Database } from "../db/schema.js";
import { claimSession } from "./asks.js";

type Db = Kysely<Database> | Transaction<Database>;

/** Queue priority of an INTERRUPT Ask: ahead of every waiting ENQUEUE Ask. */
export const PRIORITY_INTERRUPT = 0;
/** Queue priority of an ENQUEUE Ask. */
export const PRIORITY_ENQUEUE = 1;

/** An agent's concurrency defaults (null: the server's). */
export async function findAgentPolicy(
  db: Db,
  tenantId: string,
  agentId: string,
): Promise<{ policy: ConcurrencyPolicyText | null; enqueueTimeoutMs: number | null } | undefined> {
  const row = await db
    .selectFrom("agents")
    .select(["concurrency_policy", "enqueue_timeout_ms"])
    .where("id", "=", agentId)
    .where("tenant_id", "=", tenantId)
    .executeTakeFirst();
  return row && { policy: row.concurrency_policy, enqueueTimeoutMs: row.enqueue_timeout_ms };
}

export type OrderedClaim =
  | { readonly ok: true; /** The Ask whose expired lease was taken over, if any. */ readonly previousAskId: string | null }
  | { readonly ok: false; readonly reason: "missing" | "archived" }
  | {
      readonly ok: false;
      readonly reason: "busy";
      /** The Ask holding a live lease on the session, if any. */
      readonly activeAskId: string | null;
      /** The first Ask of the queue ahead of this one, if any. */
      readonly headAskId: string | null;
    };

/**
 * Claims a session for an Ask unless an Ask holds a live lease on it or an Ask
 * waits ahead of this one in its queue. With `queue` set, an Ask that cannot
 * claim now keeps (or takes) its place in the queue, and a kept place is
 * renewed until now() + ticketTtlMs. Runs under the session row's lock, so
 * places are taken, compared and given up one at a time per session: the
 * queue order is the order of arrival, on any replica.
 */
export async function claimInOrder(
  tx: Transaction<Database>,
  args: {
    readonly tenantId: string;
    readonly sessionId: string;
    readonly askId: string;
    readonly owner: string;
    readonly leaseMs: number;
    /** The queue priority of this Ask; undefined: it does not queue (REJECT) and yields to every waiting Ask. */
    readonly queue: { readonly priority: number; readonly ticketTtlMs: number } | undefined;
  },
): Promise<OrderedClaim> {
  const { tenantId, sessionId, askId } = args;
  const session = await tx
    .selectFrom("sessions")
    .select(["status", "active_ask_id", sql<boolean>`coalesce(lease_expire_time > now(), false)`.as("lease_live")])
    .where("id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .forUpdate()
    .executeTakeFirst();
  if (!session) return { ok: false, reason: "missing" };
  if (session.status !== "active") return { ok: false, reason: "archived" };

  // A waiter whose replica died stops blocking the queue once its place expires.
  await tx
    .deleteFrom("ask_queue")
    .where("session_id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .where("expire_time", "<=", sql<Date>`now()`)
    .execute();
  const mine = args.queue
    ? await tx
        .updateTable("ask_queue")
        .set({ expire_time: sql<Date>`now() + ${String(args.queue.ticketTtlMs)}::int * interval '1 millisecond'` })
        .where("ask_id", "=", askId)
        .where("tenant_id", "=", tenantId)
        .returning(["priority", "position"])
        .executeTakeFirst()
    : undefined;
  let ahead = tx
    .selectFrom("ask_queue")
    .select("ask_id")
    .where("session_id", "=", sessionId)
    .where("tenant_id", "=", tenantId)
    .where("ask_id", "<>", askId);
  if (mine) {
    ahead = ahead.where((eb) =>
      eb(eb.refTuple("priority", "position"), "<", eb.tuple(mine.priority, sql<string>`${mine.position}::bigint`)),
    );
  } else if (args.queue) {
    ahead = ahead.where("priority", "<=", args.queue.priority);
  }
  const head = await ahead.orderBy("priority").orderBy("position").limit(1).executeTakeFirst();
  const active = session.active_ask_id !== null && session.lease_live ? session.active_ask_id : null;

  if (active === null && head === undefined) {
    const claim = await claimSession(tx, tenantId, sessionId, askId, args.owner, args.leaseMs);
    if (claim.ok) {
      if (mine) await tx.deleteFrom("ask_queue").where("ask_id", "=", askId).where("tenant_id", "=", tenantId).execute();
      return { ok: true, previousAskId: claim.previousAskId };
    }
    // Not expected under the row lock; answered as busy rather than trusted blindly.
    return { ok: false, reason: "busy", activeAskId: claim.reason === "running" ? claim.activeAskId : null, headAskId: null };
  }
  if (args.queue && !mine) {
    await tx
      .insertInto("ask_queue")
      .values({
        ask_id: askId,
        tenant_id: tenantId,
        session_id: sessionId,
        priority: args.queue.priority,
        owner: args.owner,
        expire_time: sql<Date>`now() + ${String(args.queue.ticketTtlMs)}::int * interval '1 millisecond'`,
      })
      .execute();
  }
  return { ok: false, reason: "busy", activeAskId: active, headAskId: head?.ask_id ?? null };
}

/** Gives up an Ask's place in its session's queue (no-op when it has none). */
export async function leaveQueue(db: Db, tenantId: string, askId: string): Promise<void> {
  await db.deleteFrom("ask_queue").where("ask_id", "=", askId).where("tenant_id", "=", tenantId).execute();
}
