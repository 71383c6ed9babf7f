import { sql, type Kysely, type Transaction } from "kysely";
import type { Database } from "../db/schema.js";

type Db = Kysely<Database> | Transaction<Database>;

/** The claim a running Ask holds on its session, as its replica renews it. */
export interface HeldClaim {
  readonly tenantId: string;
  readonly sessionId: string;
  readonly askId: string;
}

/** What a renewal found of one Ask whose claim is still this replica's. */
export interface RenewedClaim {
  /** A CancelAsk (or an INTERRUPT Ask) served by another replica asked the Ask to stop. */
  readonly cancelRequested: boolean;
  /** The pending cancel request's reason ("cancel_ask", "interrupt"), or null. */
  readonly cancelReason: string | null;
}

/**
 * Extends the leases of many running Asks in one statement: a lease is
 * extended only while its session's claim is still that Ask's and this owner's. Returns the Asks whose
 * claim was held, by ask id, with any pending cancel request; an Ask missing
 * from the result has lost its claim (released, or taken over after it expired).
 */
export async function renewLeases(
  db: Db,
  owner: string,
  leaseMs: number,
  claims: readonly HeldClaim[],
): Promise<Map<string, RenewedClaim>> {
  const held = new Map<string, RenewedClaim>();
  if (claims.length === 0) return held;
  // A running Ask's error_code holds the reason of a pending cancel request (see requestCancel).
  const { rows } = await sql<{ ask_id: string; cancel_requested: boolean; cancel_reason: string | null }>`
    update sessions as s
    set lease_expire_time = now() + ${String(leaseMs)}::int * interval '1 millisecond'
    from unnest(
      ${claims.map((c) => c.tenantId)}::uuid[], ${claims.map((c) => c.sessionId)}::uuid[], ${claims.map((c) => c.askId)}::uuid[]
    ) as c(tenant_id, session_id, ask_id)
    left join asks as a on a.id = c.ask_id and a.tenant_id = c.tenant_id
    where s.id = c.session_id and s.tenant_id = c.tenant_id and s.active_ask_id = c.ask_id and s.lease_owner = ${owner}
    returning c.ask_id, a.cancel_request_time is not null as cancel_requested, a.error_code as cancel_reason`.execute(db);
  for (const r of rows) held.set(r.ask_id, { cancelRequested: r.cancel_requested === true, cancelReason: r.cancel_reason });
  return held;
}

/** The partial answer of one streaming assistant message. */
export interface PartialAnswer {
  readonly tenantId: string;
  readonly messageId: string;
  readonly content: string;
}

/**
 * Writes the partial answers of many streaming assistant messages in one
 * statement: a message that has left STREAMING
 * (its Ask stored its final content) is left as it is, so a late flush never
 * overwrites a final answer.
 */
export async function flushPartialAnswers(db: Db, answers: readonly PartialAnswer[]): Promise<void> {
  if (answers.length === 0) return;
  await sql`
    update messages as m
    set content = p.content, update_time = now()
    from unnest(
      ${answers.map((a) => a.tenantId)}::uuid[], ${answers.map((a) => a.messageId)}::uuid[], ${answers.map((a) => a.content)}::text[]
    ) as p(tenant_id, id, content)
    where m.id = p.id and m.tenant_id = p.tenant_id and m.status = 'streaming'`.execute(db);
}
