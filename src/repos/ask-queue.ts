import { sql, type Kysely, type Transaction } from "kysely";
import type { Database, JsonObject } from "../db/schema.js";
import { claimLockedSession } from "./asks.js";
import type { LockedSession } from "./state.js";

type Db = Kysely<Database> | Transaction<Database>;

/** Queue priority of an INTERRUPT Ask: ahead of every waiting ENQUEUE Ask. */
export const PRIORITY_INTERRUPT = 0;
/** Queue priority of an ENQUEUE Ask. */
export const PRIORITY_ENQUEUE = 1;

export type OrderedClaim =
  | {
      readonly ok: true;
      /** The Ask whose expired lease was taken over, if any. */
      readonly previousAskId: string | null;
      /** The session row as locked by the claim, for the rest of the transaction (e.g. updateState) to reuse. */
      readonly session: LockedSession;
    }
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
  // One locked read gives the claim everything it needs: the holder, whether
  // anyone waits (most Asks find an empty queue and skip it), and the state the
  // Ask renders (its user's and agent's scopes are read, not locked, as loadState does).
  const session = await tx
    .selectFrom("sessions as s")
    .select((eb) => [
      "s.id",
      "s.status",
      "s.active_ask_id",
      "s.user_id",
      "s.agent_id",
      "s.state",
      sql<boolean>`coalesce(s.lease_expire_time > now(), false)`.as("lease_live"),
      eb
        .exists(eb.selectFrom("ask_queue as q").select("q.ask_id").whereRef("q.session_id", "=", "s.id").whereRef("q.tenant_id", "=", "s.tenant_id"))
        .as("queued"),
      eb
        .selectFrom("user_states as u")
        .select("u.state")
        .whereRef("u.tenant_id", "=", "s.tenant_id")
        .whereRef("u.user_id", "=", "s.user_id")
        .as("user_state"),
      eb
        .selectFrom("app_states as a")
        .select("a.state")
        .whereRef("a.tenant_id", "=", "s.tenant_id")
        .whereRef("a.agent_id", "=", "s.agent_id")
        .as("app_state"),
    ])
    .where("s.id", "=", sessionId)
    .where("s.tenant_id", "=", tenantId)
    .forUpdate()
    .executeTakeFirst();
  if (!session) return { ok: false, reason: "missing" };
  if (session.status !== "active") return { ok: false, reason: "archived" };
  const locked: LockedSession = {
    owner: { sessionId: session.id, userId: session.user_id, agentId: session.agent_id },
    state: session.state,
    user: (session.user_state as JsonObject | null) ?? {},
    app: (session.app_state as JsonObject | null) ?? {},
  };
  const active = session.active_ask_id !== null && session.lease_live ? session.active_ask_id : null;

  // Nobody waits (an Ask's own place counts as waiting): no queue to clean, keep or look ahead in.
  if (!session.queued) {
    if (active === null) return claimOrBusy(tx, args, session.active_ask_id, locked, false);
    if (args.queue) await takePlace(tx, args, args.queue);
    return { ok: false, reason: "busy", activeAskId: active, headAskId: null };
  }

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

  if (active === null && head === undefined) return claimOrBusy(tx, args, session.active_ask_id, locked, mine !== undefined);
  if (args.queue && !mine) await takePlace(tx, args, args.queue);
  return { ok: false, reason: "busy", activeAskId: active, headAskId: head?.ask_id ?? null };
}

interface ClaimArgs {
  readonly tenantId: string;
  readonly sessionId: string;
  readonly askId: string;
  readonly owner: string;
  readonly leaseMs: number;
}

/** Claims the locked session; gives up the Ask's place in the queue when it had one. */
async function claimOrBusy(
  tx: Transaction<Database>,
  args: ClaimArgs,
  previousAskId: string | null,
  session: LockedSession,
  hadPlace: boolean,
): Promise<OrderedClaim> {
  if (await claimLockedSession(tx, args.tenantId, args.sessionId, args.askId, args.owner, args.leaseMs)) {
    if (hadPlace) await tx.deleteFrom("ask_queue").where("ask_id", "=", args.askId).where("tenant_id", "=", args.tenantId).execute();
    return { ok: true, previousAskId, session };
  }
  // Not expected under the row lock; answered as busy rather than trusted blindly.
  return { ok: false, reason: "busy", activeAskId: previousAskId, headAskId: null };
}

/** Puts the Ask at the end of its priority in the session's queue. */
async function takePlace(
  tx: Transaction<Database>,
  args: ClaimArgs,
  queue: { readonly priority: number; readonly ticketTtlMs: number },
): Promise<void> {
  await tx
    .insertInto("ask_queue")
    .values({
      ask_id: args.askId,
      tenant_id: args.tenantId,
      session_id: args.sessionId,
      priority: queue.priority,
      owner: args.owner,
      expire_time: sql<Date>`now() + ${String(queue.ticketTtlMs)}::int * interval '1 millisecond'`,
    })
    .execute();
}

/** Gives up an Ask's place in its session's queue (no-op when it has none). */
export async function leaveQueue(db: Db, tenantId: string, askId: string): Promise<void> {
  await db.deleteFrom("ask_queue").where("ask_id", "=", askId).where("tenant_id", "=", tenantId).execute();
}
