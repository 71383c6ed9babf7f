import { inBackground } from "../db/priority.js";
import type { Kysely } from "kysely";
import type { AskEvent } from "../../gen/parley/v1/session_pb.js";
import { EventLogSequenceError, type EventLog } from "../bus/event-log.js";
import type { Database } from "../db/schema.js";
import type { Logger } from "../log.js";
import { findExpiredClaims, getAsk, messagesByIds, sweepExpiredClaim } from "../repos/asks.js";
import { messageToProto } from "../services/converters.js";
import { askEvent, unstoredMessage } from "./convert.js";

/**
 * Appends the Interrupted terminal event of an Ask that was marked INTERRUPTED
 * (its replica died) to the log that still holds its stream, and ends it, so
 * that followers and later resumers see how it ended. No-op when the log does
 * not hold the stream or it has ended (someone else did it first).
 */
export async function logInterrupted(
  db: Kysely<Database>,
  events: EventLog<AskEvent>,
  log: Logger,
  tenantId: string,
  askId: string,
): Promise<void> {
  try {
    const at = await events.last(askId);
    if (!at || at.ended) return;
    const row = await getAsk(db, tenantId, askId);
    if (!row || row.status !== "interrupted") return;
    const [stored] = row.assistant_message_id ? await messagesByIds(db, tenantId, [row.assistant_message_id]) : [];
    const message = stored
      ? messageToProto(stored)
      : unstoredMessage({
          sessionId: row.session_id,
          askId,
          role: "assistant",
          content: "",
          status: "interrupted",
          model: row.model,
          time: row.finish_time ?? new Date(),
        });
    const seq = at.seq + 1;
    await events.append(askId, seq, askEvent(askId, seq, { case: "interrupted", value: { message } }));
    await events.end(askId);
  } catch (err) {
    // Lost a race with another sweeper (or the producer came back): its terminal event stands.
    if (err instanceof EventLogSequenceError) return;
    log.warn({ err, askId }, "could not log the Interrupted event of an abandoned Ask");
  }
}

export interface SweeperDeps {
  readonly db: Kysely<Database>;
  readonly log: Logger;
  /** The log where other replicas' Asks live (the shared one when there is one). */
  readonly events: EventLog<AskEvent>;
  /** Time between two sweeps. */
  readonly intervalMs: number;
  /** True for an Ask this process runs: its own run notices the lost lease and finishes it. */
  readonly isLocal: (askId: string) => boolean;
  /** Claims handled per sweep. */
  readonly batch?: number;
}

/** Finds Asks whose replica died and finishes them. */
export interface Sweeper {
  /** One sweep now; resolves with the number of Asks it marked INTERRUPTED. */
  sweepNow(): Promise<number>;
  stop(): void;
}

/**
 * Starts the periodic sweep of expired leases: every intervalMs one indexed
 * query for claimed sessions whose lease has expired; each Ask found is marked
 * INTERRUPTED with its flushed content, its session freed, and its Interrupted
 * event logged. Every replica sweeps; row locks (SKIP LOCKED) keep them apart.
 */
export function startSweeper(deps: SweeperDeps): Sweeper {
  const { db, log } = deps;
  let stopped = false;
  let running: Promise<number> | undefined;
  let timer: NodeJS.Timeout | undefined;

  async function sweep(): Promise<number> {
    let n = 0;
    const claims = await findExpiredClaims(db, deps.batch ?? 100);
    for (const claim of claims) {
      if (stopped) break;
      if (deps.isLocal(claim.askId)) continue;
      if (!(await sweepExpiredClaim(db, claim))) continue;
      n++;
      log.warn({ askId: claim.askId, sessionId: claim.sessionId }, "the replica running an Ask stopped renewing its lease: marked INTERRUPTED");
      await logInterrupted(db, deps.events, log, claim.tenantId, claim.askId);
    }
    return n;
  }

  function sweepNow(): Promise<number> {
    running ??= inBackground(sweep)
      .catch((err: unknown) => {
        // The database may be down: the next tick tries again.
        log.debug({ err }, "sweeping expired Ask leases failed");
        return 0;
      })
      .finally(() => (running = undefined));
    return running;
  }

  function schedule(): void {
    if (stopped) return;
    timer = setTimeout(() => void sweepNow().then(schedule), deps.intervalMs);
    timer.unref();
  }
  schedule();

  return {
    sweepNow,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
