import type { Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import type { Logger } from "../log.js";
import { inBackground } from "../db/priority.js";
import { flushPartialAnswers, renewLeases, type PartialAnswer } from "../repos/ask-heartbeat.js";

/** Why a tick stops an Ask: a cancel request stored by another replica, or the loss of its claim on the session. */
export type HeartbeatStop = "cancel_ask" | "interrupt" | "lease_lost";

/** An Ask this replica runs, as it joins the heartbeat. */
export interface OpenAskInit {
  readonly tenantId: string;
  readonly sessionId: string;
  readonly askId: string;
  /** The stored assistant message whose partial answer is flushed; null when the Ask stores nothing. */
  readonly assistantMessageId: string | null;
  /** Called at most once, when a tick finds a cancel request or the claim lost; never after leave(). */
  readonly onStop: (reason: HeartbeatStop) => void;
}

/** An Ask's membership in the heartbeat. */
export interface OpenAsk {
  /** The answer so far: set it as it grows; the next flush tick writes it when it changed. */
  content: string;
  /** Leaves the heartbeat: no more renewals, flushes or onStop. Call it before storing the final answer. */
  leave(): void;
}

export interface AskHeartbeatOptions {
  readonly db: Kysely<Database>;
  readonly log: Logger;
  /** Lease owner id of this replica. */
  readonly replicaId: string;
  /** Length of a lease; leases are renewed every leaseMs / 3. */
  readonly leaseMs: number;
  /** Time between two flushes of the partial answers. */
  readonly flushIntervalMs: number;
  /** Asks per renewal statement (default 1,000). */
  readonly renewBatch?: number;
  /** Partial answers per flush statement (default 500), and their total characters (default 1 Mi). */
  readonly flushBatch?: number;
  readonly flushBatchChars?: number;
}

/** The one ticker of a replica that keeps all of its running Asks alive. */
export interface AskHeartbeat {
  /** Registers a running Ask: its lease is renewed and its partial answer flushed until it leaves. */
  join(ask: OpenAskInit): OpenAsk;
  /** Number of Asks registered. */
  size(): number;
  /** One lease renewal of every registered Ask now (what the renewal tick does). */
  renewNow(): Promise<void>;
  /** One flush of every changed partial answer now (what the flush tick does). */
  flushNow(): Promise<void>;
  /** Stops ticking and waits for a tick in flight. Call it once no Ask runs (after the drain). */
  stop(): Promise<void>;
}

class Member implements OpenAsk {
  content = "";
  /** Length of the content last written; content only grows. */
  flushed = 0;
  left = false;
  constructor(
    readonly init: OpenAskInit,
    private readonly onLeave: (m: Member) => void,
  ) {}
  leave(): void {
    if (this.left) return;
    this.left = true;
    this.onLeave(this);
  }
}

function chunks<T>(items: readonly T[], size: number, maxWeight = Infinity, weight: (t: T) => number = () => 0): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let w = 0;
  for (const item of items) {
    const iw = weight(item);
    if (cur.length > 0 && (cur.length >= size || w + iw > maxWeight)) {
      out.push(cur);
      cur = [];
      w = 0;
    }
    cur.push(item);
    w += iw;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/**
 * Creates the heartbeat of this replica: while Asks are registered, one
 * statement every leaseMs / 3 renews all of their leases (reporting cancel
 * requests and lost claims), and one every flushIntervalMs writes the partial
 * answers that changed since their last flush; with no Ask registered nothing
 * ticks. A failed tick is logged once and retried on the next.
 */
export function createAskHeartbeat(options: AskHeartbeatOptions): AskHeartbeat {
  const { db, log, replicaId, leaseMs } = options;
  const renewEveryMs = Math.max(Math.floor(leaseMs / 3), 50);
  const renewBatch = options.renewBatch ?? 1_000;
  const flushBatch = options.flushBatch ?? 500;
  const flushBatchChars = options.flushBatchChars ?? 1024 * 1024;
  const members = new Set<Member>();
  let stopped = false;

  async function renewNow(): Promise<void> {
    const batch = [...members];
    try {
      for (const chunk of chunks(batch, renewBatch)) {
        const held = await inBackground(() => renewLeases(db, replicaId, leaseMs, chunk.map((m) => m.init)));
        for (const m of chunk) {
          // An Ask that left meanwhile has stored (or is storing) its outcome and released its claim.
          if (m.left) continue;
          const found = held.get(m.init.askId);
          if (!found) m.init.onStop("lease_lost");
          // A CancelAsk (or an INTERRUPT) served by another replica whose pub/sub message did not arrive.
          else if (found.cancelRequested) m.init.onStop(found.cancelReason === "interrupt" ? "interrupt" : "cancel_ask");
        }
      }
    } catch (err) {
      log.warn({ err, asks: batch.length }, "renewing the leases of this replica's Asks failed; retrying on the next tick");
    }
  }

  async function flushNow(): Promise<void> {
    const dirty: { m: Member; answer: PartialAnswer }[] = [];
    for (const m of members) {
      const messageId = m.init.assistantMessageId;
      if (!messageId || m.content.length === m.flushed) continue;
      dirty.push({ m, answer: { tenantId: m.init.tenantId, messageId, content: m.content } });
    }
    try {
      for (const chunk of chunks(dirty, flushBatch, flushBatchChars, (d) => d.answer.content.length)) {
        await inBackground(() => flushPartialAnswers(db, chunk.map((d) => d.answer)));
        for (const d of chunk) d.m.flushed = d.answer.content.length;
      }
    } catch (err) {
      log.warn({ err, asks: dirty.length }, "flushing the partial answers of this replica's Asks failed; retrying on the next tick");
    }
  }

  /**
   * A tick loop: armed only while Asks are registered, so its first tick comes a
   * whole period after the first Ask joins; a tick never overlaps the previous one.
   */
  function ticker(everyMs: number, tick: () => Promise<void>) {
    let timer: NodeJS.Timeout | undefined;
    let running: Promise<void> | undefined;
    const fire = () => {
      timer = undefined;
      running = tick().finally(() => {
        running = undefined;
        arm();
      });
    };
    const arm = () => {
      if (stopped || timer || running || members.size === 0) return;
      timer = setTimeout(fire, everyMs);
      timer.unref();
    };
    return {
      arm,
      disarm() {
        clearTimeout(timer);
        timer = undefined;
      },
      async stop() {
        clearTimeout(timer);
        timer = undefined;
        await running;
      },
    };
  }
  const renewal = ticker(renewEveryMs, renewNow);
  const flush = ticker(options.flushIntervalMs, flushNow);
  const onLeave = (m: Member) => {
    members.delete(m);
    if (members.size > 0) return;
    renewal.disarm();
    flush.disarm();
  };

  return {
    join(init) {
      const m = new Member(init, onLeave);
      members.add(m);
      renewal.arm();
      flush.arm();
      return m;
    },
    size: () => members.size,
    renewNow,
    flushNow,
    async stop() {
      stopped = true;
      await Promise.all([renewal.stop(), flush.stop()]);
    },
  };
}
