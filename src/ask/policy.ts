import { create } from "@bufbuild/protobuf";
import { DurationSchema, type Duration } from "@bufbuild/protobuf/wkt";
import type { Kysely, Transaction } from "kysely";
import { ConcurrencyPolicy } from "../../gen/parley/v1/common_pb.js";
import type { ConcurrencyPolicyText, Database } from "../db/schema.js";
import { failedPrecondition, invalidArgument, notFound, ParleyError, unavailable } from "../errors.js";
import type { Logger } from "../log.js";
import { claimInOrder, leaveQueue, PRIORITY_ENQUEUE, PRIORITY_INTERRUPT } from "../repos/ask-queue.js";
import type { LockedSession } from "../repos/state.js";
import type { SessionFeed } from "./session-feed.js";

/** How long an ENQUEUE Ask waits when neither the request nor the agent says. */
export const DEFAULT_ENQUEUE_TIMEOUT_MS = 30_000;
/** The longest enqueue timeout a request or an agent may set. */
export const MAX_ENQUEUE_TIMEOUT_MS = 10 * 60 * 1000;

const MIN_POLL_MS = 25;
const MAX_POLL_MS = 1_000;

const policyOf: Partial<Record<ConcurrencyPolicy, ConcurrencyPolicyText>> = {
  [ConcurrencyPolicy.REJECT]: "reject",
  [ConcurrencyPolicy.ENQUEUE]: "enqueue",
  [ConcurrencyPolicy.INTERRUPT]: "interrupt",
};

const policyToProtoOf: Record<ConcurrencyPolicyText, ConcurrencyPolicy> = {
  reject: ConcurrencyPolicy.REJECT,
  enqueue: ConcurrencyPolicy.ENQUEUE,
  interrupt: ConcurrencyPolicy.INTERRUPT,
};

/** A ConcurrencyPolicy field in its stored form; undefined for UNSPECIFIED; InvalidArgument for unknown values. */
export function policyIn(field: string, p: ConcurrencyPolicy): ConcurrencyPolicyText | undefined {
  if (p === ConcurrencyPolicy.UNSPECIFIED) return undefined;
  const text = policyOf[p];
  if (!text) throw invalidArgument(field, "must be REJECT, ENQUEUE or INTERRUPT", "INVALID_ENUM");
  return text;
}

/** The proto enum of a stored policy (null: UNSPECIFIED). */
export function policyToProto(p: ConcurrencyPolicyText | null): ConcurrencyPolicy {
  return p ? policyToProtoOf[p] : ConcurrencyPolicy.UNSPECIFIED;
}

/** An enqueue timeout in milliseconds (rounded up); undefined when unset; InvalidArgument outside 0 to 10 minutes. */
export function enqueueTimeoutIn(field: string, d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  const nanosOk = d.nanos > -1e9 && d.nanos < 1e9 && !(d.seconds > 0n && d.nanos < 0) && !(d.seconds < 0n && d.nanos > 0);
  if (!nanosOk) throw invalidArgument(field, "is not a valid duration", "INVALID_DURATION");
  if (d.seconds < 0n || d.nanos < 0) throw invalidArgument(field, "must not be negative", "OUT_OF_RANGE");
  const max = BigInt(MAX_ENQUEUE_TIMEOUT_MS / 1000);
  if (d.seconds > max || (d.seconds === max && d.nanos > 0)) {
    throw invalidArgument(field, "must be at most 10 minutes", "OUT_OF_RANGE");
  }
  return Number(d.seconds) * 1000 + Math.ceil(d.nanos / 1e6);
}

/** A stored timeout as a proto Duration (null: unset). */
export function durationFromMs(ms: number | null): Duration | undefined {
  if (ms === null) return undefined;
  return create(DurationSchema, { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 });
}

/** The concurrency settings of one Ask request (undefined: the agent's). */
export interface AskPolicyRequest {
  readonly policy: ConcurrencyPolicyText | undefined;
  readonly enqueueTimeoutMs: number | undefined;
}

/** Reads and checks AskRequest.concurrency_policy and enqueue_timeout. */
export function askPolicyIn(req: { concurrencyPolicy: ConcurrencyPolicy; enqueueTimeout?: Duration | undefined }): AskPolicyRequest {
  return {
    policy: policyIn("concurrency_policy", req.concurrencyPolicy),
    enqueueTimeoutMs: enqueueTimeoutIn("enqueue_timeout", req.enqueueTimeout),
  };
}

export interface SessionGateDeps {
  readonly db: Kysely<Database>;
  readonly log: Logger;
  readonly feed: SessionFeed;
  /** Lease owner id of this process. */
  readonly replicaId: string;
  readonly leaseMs: number;
  /**
   * Asks the replica running an Ask to cancel it with reason "interrupt"
   * (keeping its partial answer). Resolves once the request is delivered, not
   * necessarily once the Ask has stopped; the gate waits for the session.
   */
  readonly interrupt: (tenantId: string, askId: string) => Promise<void>;
}

/** One Ask that wants its session. */
export interface GateRequest extends AskPolicyRequest {
  readonly tenantId: string;
  readonly sessionId: string;
  /** The agent's concurrency defaults (null: the server's), as read with the Ask's target. */
  readonly agentPolicy: { readonly policy: ConcurrencyPolicyText | null; readonly enqueueTimeoutMs: number | null };
  readonly askId: string;
  /** The client's signal: a client that leaves stops waiting and gives up its place. */
  readonly signal: AbortSignal;
}

/** Hands a session to one Ask at a time according to the concurrency policies. */
export interface SessionGate {
  /**
   * Claims the session for the Ask (per its policy: at once, after waiting in
   * the queue, or after interrupting the running Ask) and runs `store` in the
   * claiming transaction. Throws FAILED_PRECONDITION ASK_ALREADY_RUNNING
   * (REJECT), DEADLINE_EXCEEDED ENQUEUE_TIMEOUT (ENQUEUE/INTERRUPT waited too
   * long), NotFound / SESSION_ARCHIVED, or UNAVAILABLE SHUTTING_DOWN.
   */
  acquire<T>(
    req: GateRequest,
    store: (tx: Transaction<Database>, claim: { readonly previousAskId: string | null; readonly session: LockedSession }) => Promise<T>,
  ): Promise<T>;
  /** Ends every wait with UNAVAILABLE (the server is shutting down); later acquisitions wait no more. */
  shutdown(): void;
}

function sessionArchived(sessionId: string) {
  return failedPrecondition(`session "${sessionId}" is archived; unarchive it first`, "SESSION_ARCHIVED", {
    session_id: sessionId,
  });
}

/** Creates the gate of this process. */
export function createSessionGate(deps: SessionGateDeps): SessionGate {
  const { db, log, feed } = deps;
  const ticketTtlMs = deps.leaseMs;
  const maxPollMs = Math.max(MIN_POLL_MS, Math.min(MAX_POLL_MS, Math.floor(ticketTtlMs / 3)));
  const shutdown = new AbortController();

  return {
    shutdown() {
      shutdown.abort();
    },

    async acquire<T>(
      req: GateRequest,
      store: (tx: Transaction<Database>, claim: { readonly previousAskId: string | null; readonly session: LockedSession }) => Promise<T>,
    ): Promise<T> {
      const { tenantId, sessionId, askId } = req;
      const policy = req.policy ?? req.agentPolicy.policy ?? "reject";
      const enqueueTimeoutMs = req.enqueueTimeoutMs ?? req.agentPolicy.enqueueTimeoutMs ?? DEFAULT_ENQUEUE_TIMEOUT_MS;
      const queue =
        policy === "reject"
          ? undefined
          : { priority: policy === "interrupt" ? PRIORITY_INTERRUPT : PRIORITY_ENQUEUE, ticketTtlMs };
      const deadline = Date.now() + enqueueTimeoutMs;

      // Subscribed before the first look, so a release between the look and the wait still wakes it.
      // REJECT never waits, and a subscription costs a write (the session's watch mark).
      let changed = false;
      let wake: (() => void) | undefined;
      const unsubscribe = queue
        ? await feed.subscribe(tenantId, sessionId, () => {
            changed = true;
            wake?.();
          })
        : () => {};
      const interrupted = new Set<string>();
      let queued = false;
      try {
        for (let poll = MIN_POLL_MS; ; poll = Math.min(poll * 2, maxPollMs)) {
          if (shutdown.signal.aborted) throw unavailable("the server is shutting down; retry the Ask", "SHUTTING_DOWN");
          if (req.signal.aborted) throw new ParleyError("canceled", "the client cancelled the Ask while it waited", "CANCELED");
          changed = false;
          const attempt = await db.transaction().execute(async (tx) => {
            const claim = await claimInOrder(tx, { tenantId, sessionId, askId, owner: deps.replicaId, leaseMs: deps.leaseMs, queue });
            return claim.ok ? { stored: true as const, value: await store(tx, claim) } : { stored: false as const, claim };
          });
          if (attempt.stored) return attempt.value;
          const { claim } = attempt;
          if (claim.reason !== "busy") throw claim.reason === "missing" ? notFound("session", sessionId) : sessionArchived(sessionId);
          queued = queue !== undefined;
          const holder = claim.activeAskId ?? claim.headAskId ?? "";
          if (policy === "reject") {
            throw failedPrecondition(
              `session "${sessionId}" already has a running Ask (${holder}); wait for it to finish or cancel it`,
              "ASK_ALREADY_RUNNING",
              { session_id: sessionId, ask_id: holder },
            );
          }
          // An INTERRUPT Ask cancels whatever runs on the session until it gets it
          // (another INTERRUPT that got there first is interrupted in turn).
          if (policy === "interrupt" && claim.activeAskId && !interrupted.has(claim.activeAskId)) {
            interrupted.add(claim.activeAskId);
            try {
              await deps.interrupt(tenantId, claim.activeAskId);
            } catch (err) {
              log.warn({ err, askId: claim.activeAskId }, "could not interrupt the running Ask; waiting for it to end");
            }
            poll = MIN_POLL_MS / 2;
            continue;
          }
          const left = deadline - Date.now();
          if (left <= 0) {
            throw new ParleyError(
              "deadline_exceeded",
              `session "${sessionId}" stayed busy for the whole enqueue timeout (${enqueueTimeoutMs} ms)`,
              "ENQUEUE_TIMEOUT",
              { session_id: sessionId, ask_id: holder },
            );
          }
          if (!changed) await sleep(Math.min(poll, left), req.signal, shutdown.signal, (w) => (wake = w));
          wake = undefined;
          if (changed) poll = MIN_POLL_MS / 2;
        }
      } finally {
        unsubscribe();
        if (queued) {
          await leaveQueue(db, tenantId, askId).catch((err: unknown) => {
            // Its place expires after the ticket TTL anyway.
            log.warn({ err, askId }, "could not leave the session queue");
          });
        }
      }
    },
  };
}

/** Waits ms, or until woken, or until a signal aborts. */
function sleep(ms: number, a: AbortSignal, b: AbortSignal, onWake: (wake: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      a.removeEventListener("abort", done);
      b.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    a.addEventListener("abort", done, { once: true });
    b.addEventListener("abort", done, { once: true });
    onWake(done);
  });
}
