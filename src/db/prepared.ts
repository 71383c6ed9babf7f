import { createHash } from "node:crypto";
import { sql } from "kysely";
import type pg from "pg";

/** Ends the text of a statement that the pg pool runs as a named prepared statement. */
export const PREPARED_MARK = "/* parley:prepared */";

/**
 * Marks a hot statement (Kysely: `.modifyEnd(prepared)`, or at the end of a
 * `sql` template) for a named prepared statement: each connection parses and
 * plans it once, not per call. Only statements whose text is one of a few fixed
 * shapes are marked (a connection keeps every statement it prepared), and only
 * those whose generic plan is the plan a custom one would be, checked with
 * plan_cache_mode = force_generic_plan: primary-key reads and writes, a
 * session's messages by seq (a LIMITed range of the (session_id, seq) index,
 * read in order whatever the limit and bounds: test/rpc/seq-race.test.ts), and
 * the Ask's claim (whose history window is bounded by the claimed row's
 * last_seq, which no plan knows in advance; a generic plan once fetched and
 * sorted the whole session there, so the window's range bounds what any plan
 * reads). ListSessions is not: its shapes vary with the filters, and with a
 * user's or agent's session count unknown a generic plan may pick an index
 * in the wrong order and sort.
 */
export const prepared = sql.raw(` ${PREPARED_MARK}`);

/** SQLSTATE of "cached plan must not change result type": a `select *` prepared before a newer replica's migration. */
const PLAN_RESULT_CHANGED = "0A000";

type Query = (text: unknown, values?: unknown, callback?: unknown) => unknown;

/**
 * Runs the statements marked with `prepared` as named prepared statements on
 * every connection of the pool (the name is a hash of the text). When a
 * migration changes a table under a prepared `select *` or `returning *`,
 * Postgres refuses it: that text then runs unprepared from then on, and the
 * call that met the refusal is retried unprepared unless it was inside a
 * transaction (which the refusal aborted: that call fails, once).
 */
export function usePreparedStatements(pool: pg.Pool): void {
  const names = new Map<string, string>();
  const unprepared = new Set<string>();
  const nameOf = (text: string): string => {
    let name = names.get(text);
    if (name === undefined) {
      name = `parley_${createHash("sha1").update(text).digest("hex").slice(0, 24)}`;
      names.set(text, name);
    }
    return name;
  };
  pool.on("connect", (client) => {
    const query = client.query.bind(client) as Query;
    (client as unknown as { query: Query }).query = (text, values, callback) => {
      if (typeof text !== "string" || callback !== undefined || !text.endsWith(PREPARED_MARK) || unprepared.has(text)) {
        return query(text, values, callback);
      }
      const outside = client.getTransactionStatus() === "I";
      return (query({ name: nameOf(text), text, values }) as Promise<unknown>).catch((err: unknown) => {
        if ((err as { code?: unknown } | undefined)?.code !== PLAN_RESULT_CHANGED) throw err;
        unprepared.add(text);
        if (!outside) throw err;
        return query(text, values);
      });
    };
  });
}
