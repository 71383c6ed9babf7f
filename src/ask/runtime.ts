import { create } from "@bufbuild/protobuf";
import { LRUCache } from "lru-cache";
import { fingerprint } from "../fingerprint.js";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  ResumeAskResponseSchema,
  AskResponseSchema,
  type AskEvent,
  type AskRequest,
  type SessionService,
} from "../../gen/parley/v1/session_pb.js";
import type { ServiceDeps } from "../app.js";
import { callerOf } from "../auth/caller.js";
import { createMemoryEventLog } from "../bus/memory.js";
import { createMemoryCancelBus, type CancelBus } from "../bus/cancel.js";
import { EventLogUnavailableError, type EventLog } from "../bus/event-log.js";
import type { AskRow, JsonObject, MessageRow } from "../db/schema.js";
import { failedPrecondition, invalidArgument, notFound, ParleyError, unavailable } from "../errors.js";
import { newId, requireId } from "../ids.js";
import {
  claimFreeSession,
  findAskByRequest,
  type AskTarget,
  findAskTarget,
  finishAsk,
  getAsk,
  insertAsk,
  interruptAsk,
  interruptIfAbandoned,
  messagesByIds,
  requestCancel,
} from "../repos/asks.js";
import { appendMessages } from "../repos/messages.js";
import { updateState } from "../repos/state.js";
import { stateDeltaIn } from "../services/state-service.js";
import { isEmptyDelta, type ValidDelta } from "../state/scopes.js";
import type { MemorySearcher } from "./memory.js";
import { structIn } from "../services/convert.js";
import { messageToProto, referencesToProto, usageToProto } from "../services/converters.js";
import { checkContent, checkMetadata, checkText, LIMITS } from "../services/limits.js";
import { createTokenCounter, historyWindow, type HistoryMessage } from "./context.js";
import { askEvent, askToProto, eventSize, unstoredMessage, type AskEventInit } from "./convert.js";
import type { ModelRegistry } from "./models/registry.js";
import { askPolicyIn, createSessionGate, type AskPolicyRequest } from "./policy.js";
import type { KnowledgeSearch } from "../knowledge/search.js";
import type { AskHeartbeat } from "./heartbeat.js";
import { startRun, type AskRun, type RunDeps, type RunSpec } from "./run.js";
import type { SessionFeed } from "./session-feed.js";
import { createSessionWatch } from "./watch.js";
import { logInterrupted, startSweeper } from "./sweeper.js";

export interface AskRuntimeDeps extends ServiceDeps {
  readonly models: ModelRegistry;
  /** Lease owner id of this process. */
  readonly replicaId: string;
  /** Where Ask events are logged for followers and replays; default: an in-process log bounded by config. */
  readonly events?: EventLog<AskEvent>;
  /** Memory search for agents with memory enabled; default: none (no memories injected). */
  readonly memories?: MemorySearcher;
  /** The log other replicas read (Redis), where the sweeper ends the Asks of dead replicas; default: events. */
  readonly sharedEvents?: EventLog<AskEvent>;
  /** Carries CancelAsk to the replica that runs the Ask; default: this process only. */
  readonly cancels?: CancelBus;
  /** Wakes Asks waiting for a session and WatchSession streams when a session changes (any replica). */
  readonly feed: SessionFeed;
  /** Knowledge search for agents with knowledge bases; default: none (no knowledge retrieved). */
  readonly knowledge?: KnowledgeSearch;
  /** Renews the leases of this replica's running Asks and flushes their partial answers (one ticker per replica). */
  readonly heartbeat: AskHeartbeat;
}

/** Runs Asks: the three SessionService handlers and the shutdown drain. */
export interface AskRuntime {
  readonly handlers: Pick<
    ServiceImpl<typeof SessionService>,
    "ask" | "cancelAsk" | "getAsk" | "resumeAsk" | "watchSession"
  >;
  /** Number of Asks running in this process. */
  running(): number;
  /** Waits up to graceMs for running Asks to finish, then cancels the rest (reason "shutdown"), keeping partial answers. */
  drain(graceMs: number): Promise<void>;
}

/** An Ask request that passed validation. */
export interface ValidAsk extends AskPolicyRequest {
  readonly sessionId: string;
  readonly content: string;
  readonly requestId: string | null;
  readonly temperature: number | undefined;
  readonly maxOutputTokens: number | undefined;
  readonly store: boolean;
  readonly metadata: JsonObject;
  /** Fingerprint of what the request asks for: a reused request_id must come with the same one. */
  readonly hash: string;
  /** State changes stored with the user message; temp: keys for this turn only. */
  readonly stateDelta: ValidDelta;
  /** Keep running when the client that started it disconnects. */
  readonly background: boolean;
}

const MAX_OUTPUT_TOKENS = 1_000_000;


/** Checks an Ask request and computes its fingerprint; throws InvalidArgument naming the field. */
export function validateAsk(req: AskRequest): ValidAsk {
  const sessionId = requireId("session_id", req.sessionId);
  checkContent("content", req.content, false);
  checkText("request_id", req.requestId, LIMITS.requestIdChars);
  const temperature = req.overrides?.temperature;
  if (temperature !== undefined && !(Number.isFinite(temperature) && temperature >= 0 && temperature <= 2)) {
    throw invalidArgument("overrides.temperature", "must be between 0 and 2", "OUT_OF_RANGE");
  }
  const maxOutputTokens = req.overrides?.maxOutputTokens;
  if (maxOutputTokens !== undefined && (maxOutputTokens < 1 || maxOutputTokens > MAX_OUTPUT_TOKENS)) {
    throw invalidArgument("overrides.max_output_tokens", `must be between 1 and ${MAX_OUTPUT_TOKENS}`, "OUT_OF_RANGE");
  }
  const metadata = structIn(req.metadata);
  checkMetadata("metadata", metadata);
  const store = req.store ?? true;
  const stateDelta = stateDeltaIn("state_delta", req.stateDelta, true);
  const hash = fingerprint([
    req.content,
    temperature ?? null,
    maxOutputTokens ?? null,
    store,
    metadata,
    ...(isEmptyDelta(stateDelta) ? [] : [stateDelta]),
  ]);
  return {
    ...askPolicyIn(req),
    sessionId,
    content: req.content,
    requestId: req.requestId === "" ? null : req.requestId,
    temperature,
    maxOutputTokens,
    store,
    metadata,
    hash,
    stateDelta,
    background: req.background,
  };
}

function sessionArchived(sessionId: string) {
  return failedPrecondition(`session "${sessionId}" is archived; unarchive it first`, "SESSION_ARCHIVED", {
    session_id: sessionId,
  });
}

function askOnOtherReplica(askId: string, redisDown: boolean) {
  return new ParleyError(
    "unavailable",
    redisDown
      ? `ask "${askId}" is running on another replica and the shared event log (Redis) is unreachable; retry, or resume on the replica that runs it`
      : `ask "${askId}" is running on another replica whose events are not in the shared event log (it started without REDIS_URL or while Redis was unreachable); retry on the replica that runs it`,
    redisDown ? "EVENT_LOG_UNAVAILABLE" : "ASK_ON_OTHER_REPLICA",
    { ask_id: askId },
  );
}

function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: unknown } | undefined)?.code === "23505";
}

function isTerminal(e: AskEvent): boolean {
  const c = e.event.case;
  return c === "completed" || c === "failed" || c === "cancelled" || c === "interrupted";
}

/** Creates the Ask runtime of this process. */
export function createAskRuntime(deps: AskRuntimeDeps): AskRuntime {
  const { db, log, config, models, replicaId } = deps;
  const events =
    deps.events ??
    createMemoryEventLog<AskEvent>({
      retentionMs: config.askEventRetentionMs,
      maxRetainedBytes: config.askEventLogMaxBytes,
      sizeOf: eventSize,
    });
  const shared = deps.sharedEvents ?? events;
  const cancels = deps.cancels ?? createMemoryCancelBus();
  const runDeps: RunDeps = {
    db,
    log,
    events,
    tokens: createTokenCounter(),
    heartbeat: deps.heartbeat,
    coalesceMs: config.askDeltaCoalesceMs,
    ...(deps.knowledge ? { knowledge: deps.knowledge } : {}),
    ...(deps.memories ? { memories: deps.memories } : {}),
  };
  /** Asks running in this process. */
  const runs = new Map<string, AskRun>();
  // The agents of the sessions this replica has run Asks in, as last read: the next Ask in such a
  // session claims it in its first statement, which checks that the session still has that agent
  // and the agent is still at the version read (an update on any replica bumps it).
  /** Agent id by tenant/session. */
  const sessionAgents = new LRUCache<string, string>({ max: 20_000 });
  /** Agent by tenant/agent, bounded by size too (instructions can be long). */
  const agents = new LRUCache<string, AskTarget["agent"]>({
    max: 2_000,
    maxSize: 32 * 1024 * 1024,
    sizeCalculation: (a) => 2 * a.instructions.length + 4096,
  });
  // A CancelAsk served by any replica reaches the one that runs the Ask here.
  const unsubscribeCancels = cancels.subscribe((askId, reason) =>
    runs.get(askId)?.cancel(reason === "interrupt" ? "interrupt" : "cancel_ask"),
  );
  const sweeper = startSweeper({
    db,
    log,
    events: shared,
    intervalMs: Math.min(Math.max(Math.floor(config.askLeaseMs / 4), 250), 5_000),
    isLocal: (askId) => runs.has(askId) || starting.has(askId),
  });
  /** Asks whose rows are committed (or being committed) but whose run is not registered yet. */
  const starting = new Map<string, Promise<void>>();
  let draining = false;
  const gate = createSessionGate({
    db,
    log,
    feed: deps.feed,
    replicaId,
    leaseMs: config.askLeaseMs,
    async interrupt(tenantId, askId) {
      await starting.get(askId);
      const run = runs.get(askId);
      if (run && run.spec.tenantId === tenantId) {
        run.cancel("interrupt");
        await run.done;
        return;
      }
      if (await requestCancel(db, tenantId, askId, "interrupt")) await cancels.publish(askId, "interrupt");
    },
  });
  const watchSession = createSessionWatch({ db, log, feed: deps.feed, follow: (t, a, s, signal) => follow(t, a, s, signal) });

  /** Starts a new Ask, or finds the one a retried request_id already started. */
  async function begin(tenantId: string, v: ValidAsk, signal: AbortSignal): Promise<{ askId: string; owned: boolean }> {
    const sessionKey = `${tenantId}/${v.sessionId}`;
    // A session this replica has run an Ask in: its agent as read then, checked (by version) by the claim itself.
    const knownAgentId = sessionAgents.get(sessionKey);
    const known = knownAgentId === undefined ? undefined : agents.get(`${tenantId}/${knownAgentId}`);
    if (known && !draining && isEmptyDelta(v.stateDelta)) {
      const started = await start(tenantId, v, signal, known, true);
      if (started) return started;
    }
    const target = await findAskTarget(db, tenantId, v.sessionId);
    if (!target) {
      sessionAgents.delete(sessionKey);
      throw notFound("session", v.sessionId);
    }
    sessionAgents.set(sessionKey, target.agent.id);
    const agentKey = `${tenantId}/${target.agent.id}`;
    // Reads that raced an update may land in either order: the newer version stays.
    if ((agents.get(agentKey)?.version ?? 0) <= target.agent.version) agents.set(agentKey, target.agent);
    if (v.requestId) {
      const prior = await findAskByRequest(db, tenantId, v.sessionId, v.requestId);
      if (prior) return attach(prior, v);
    }
    if (target.session.status !== "active") throw sessionArchived(v.sessionId);
    if (draining) throw unavailable("the server is shutting down; retry the Ask", "SHUTTING_DOWN");
    return (await start(tenantId, v, signal, target.agent, false))!;
  }

  /**
   * Claims the session, stores the Ask and starts it. With `known`, the agent is an earlier
   * read: the claim is taken only if the session is free and its agent unchanged, and anything
   * else (a busy session, a changed agent, one whose model no longer resolves) returns undefined
   * with nothing stored, for begin to take the full path.
   */
  async function start(
    tenantId: string,
    v: ValidAsk,
    signal: AbortSignal,
    agent: AskTarget["agent"],
    known: boolean,
  ): Promise<{ askId: string; owned: boolean } | undefined> {
    // Before anything is stored: an Ask nobody can answer leaves no trace.
    let model: ReturnType<ModelRegistry["resolve"]>;
    try {
      model = models.resolve(agent.model);
    } catch (err) {
      if (known) return undefined;
      throw err;
    }

    const askId = newId();
    const userMessageId = v.store ? newId() : null;
    const assistantMessageId = v.store ? newId() : null;
    let ready!: () => void;
    starting.set(askId, new Promise<void>((resolve) => (ready = resolve)));
    let tookOver: string | undefined;
    try {
      let stored: {
        createTime: Date;
        user: MessageRow | undefined;
        state: { owner: { userId: string }; session: JsonObject; user: JsonObject; app: JsonObject; temp: JsonObject };
      };
      let history: HistoryMessage[] | undefined;
      try {
        // The concurrency policy decides when (and whether) this Ask gets the session; see policy.ts.
        const askRow = {
          id: askId,
          tenant_id: tenantId,
          session_id: v.sessionId,
          status: "running" as const,
          request_id: v.requestId,
          request_hash: v.hash,
          user_message_id: userMessageId,
          assistant_message_id: assistantMessageId,
          model: model.id,
          store: v.store,
          owner: replicaId,
        };
        // Most Asks find their session free: one statement claims it and stores the Ask and both messages.
        const free = isEmptyDelta(v.stateDelta)
          ? await claimFreeSession(db, {
              ask: askRow,
              leaseMs: config.askLeaseMs,
              // The turn's history window (run.ts loadContext): its own user message (and placeholder) count in it.
              historyLimit: Math.max(historyWindow(agent) - (userMessageId ? 1 : 0), 0),
              messages:
                userMessageId && assistantMessageId
                  ? [
                      { id: userMessageId, role: "user", content: v.content, metadata: v.metadata },
                      { id: assistantMessageId, role: "assistant", content: "", status: "streaming", model: model.id },
                    ]
                  : [],
              ...(known ? { agent: { id: agent.id, version: agent.version } } : {}),
            })
          : undefined;
        if (!free && known) return undefined;
        if (free) {
          const { owner, state, user, app } = free.state;
          stored = { createTime: free.askCreateTime, user: free.user, state: { owner, session: state, user, app, temp: {} } };
          // Newest first, as run.ts would read it: the placeholder, this Ask's user message, then the ones before.
          if (free.history) {
            history =
              free.user && assistantMessageId
                ? [
                    { id: assistantMessageId, role: "assistant", content: "", status: "streaming" },
                    { id: free.user.id, role: "user", content: v.content, status: "complete" },
                    ...free.history,
                  ]
                : [{ id: "", role: "user", content: v.content, status: "complete" }, ...free.history];
          }
        } else {
          const agentPolicy = { policy: agent.concurrency_policy, enqueueTimeoutMs: agent.enqueue_timeout_ms };
          const gateRequest = { ...v, tenantId, agentPolicy, askId, signal };
          stored = await gate.acquire(gateRequest, async (tx, claim) => {
            // The previous holder's lease expired: its replica is gone.
            if (claim.previousAskId) {
              await interruptAsk(tx, tenantId, claim.previousAskId);
              tookOver = claim.previousAskId;
            }
            const ask = await insertAsk(tx, askRow);
            // The state delta commits with the user message, or not at all; the scopes it returns render this turn.
            const state = await updateState(tx, tenantId, v.sessionId, v.stateDelta, { field: "state_delta", locked: claim.session });
            if (!userMessageId || !assistantMessageId) return { createTime: ask.create_time, user: undefined, state };
            const { messages } = await appendMessages(tx, tenantId, v.sessionId, [
              { id: userMessageId, role: "user", content: v.content, metadata: v.metadata, askId },
              { id: assistantMessageId, role: "assistant", content: "", status: "streaming", askId, model: model.id },
            ]);
            return { createTime: ask.create_time, user: messages[0], state };
          });
        }
      } catch (err) {
        // A concurrent retry of the same request_id won the claim (or the insert): follow its Ask.
        const lostRace =
          isUniqueViolation(err) || (err as { reason?: unknown } | undefined)?.reason === "ASK_ALREADY_RUNNING";
        if (v.requestId && lostRace) {
          const prior = await findAskByRequest(db, tenantId, v.sessionId, v.requestId);
          if (prior) return attach(prior, v);
        }
        throw err;
      }

      if (tookOver) void logInterrupted(db, shared, log, tenantId, tookOver);

      const spec: RunSpec = {
        tenantId,
        sessionId: v.sessionId,
        askId,
        model,
        agent,
        userId: stored.state.owner.userId,
        state: { session: stored.state.session, user: stored.state.user, app: stored.state.app, temp: stored.state.temp },
        overrides: {
          ...(v.temperature !== undefined ? { temperature: v.temperature } : {}),
          ...(v.maxOutputTokens !== undefined ? { maxOutputTokens: v.maxOutputTokens } : {}),
        },
        store: v.store,
        userMessage: stored.user
          ? messageToProto(stored.user)
          : unstoredMessage({
              sessionId: v.sessionId,
              askId,
              role: "user",
              content: v.content,
              status: "complete",
              metadata: v.metadata,
              time: stored.createTime,
            }),
        userContent: v.content,
        assistantMessageId,
        createTime: stored.createTime,
        ...(history ? { history } : {}),
      };
      let run: AskRun;
      try {
        run = await startRun(runDeps, spec);
      } catch (err) {
        // Nothing will run it: finish it now rather than leave the session claimed until the lease expires.
        await finishAsk(db, {
          tenantId,
          sessionId: v.sessionId,
          askId,
          assistantMessageId,
          content: "",
          outcome: { status: "failed", usage: null, errorCode: "unavailable", errorMessage: "the Ask could not start" },
        });
        throw err;
      }
      runs.set(askId, run);
      void run.done.then(() => runs.delete(askId));
      return { askId, owned: true };
    } finally {
      starting.delete(askId);
      ready();
    }
  }

  /**
   * Stops an Ask another replica runs: the request is stored (its lease renewal
   * notices it) and published (its pub/sub subscriber acts at once); then waits
   * until the Ask has finished, or until its lease would have shown the request
   * twice over, or the caller leaves.
   */
  async function cancelElsewhere(tenantId: string, askId: string, signal: AbortSignal): Promise<void> {
    if (!(await requestCancel(db, tenantId, askId))) return;
    await cancels.publish(askId, "cancel_ask");
    // A live replica stops within one renewal (leaseMs / 3) even without pub/sub; a dead one's
    // lease runs out within leaseMs, and then the Ask is finished here.
    const deadline = Date.now() + config.askLeaseMs + 1_000;
    for (let wait = 10; Date.now() < deadline && !signal.aborted; wait = Math.min(wait * 2, 200)) {
      await new Promise((r) => setTimeout(r, wait));
      const row = await getAsk(db, tenantId, askId);
      if (!row || row.status !== "running") return;
      if (await interruptIfAbandoned(db, tenantId, row)) {
        void logInterrupted(db, shared, log, tenantId, askId);
        return;
      }
    }
  }

  function attach(prior: AskRow, v: ValidAsk): { askId: string; owned: boolean } {
    if (prior.request_hash !== v.hash) {
      throw invalidArgument("request_id", "was already used in this session for a different request", "REQUEST_ID_REUSED");
    }
    return { askId: prior.id, owned: false };
  }

  /** The events of an Ask after afterSeq: from the log (replay, then live), or rebuilt from storage once the log has let it go. */
  async function* follow(tenantId: string, askId: string, afterSeq: number, signal: AbortSignal): AsyncGenerator<AskEvent> {
    await starting.get(askId);
    let logged: AsyncIterable<{ seq: number; event: AskEvent }> | undefined;
    let logDown = false;
    try {
      logged = await events.read(askId, afterSeq, signal);
    } catch (err) {
      if (!(err instanceof EventLogUnavailableError)) throw err;
      logDown = true;
    }
    if (logged) {
      try {
        for await (const e of logged) yield e.event;
      } catch (err) {
        // Redis went away mid-follow: the client resumes from its last seq (elsewhere, or later).
        if (err instanceof EventLogUnavailableError) throw askOnOtherReplica(askId, true);
        throw err;
      }
      return;
    }
    let row = await getAsk(db, tenantId, askId);
    if (!row) throw notFound("ask", askId);
    if (row.status === "running") {
      if (!(await interruptIfAbandoned(db, tenantId, row))) throw askOnOtherReplica(askId, logDown);
      row = (await getAsk(db, tenantId, askId)) ?? row;
      void logInterrupted(db, shared, log, tenantId, askId);
    }
    for (const e of await reconstruct(tenantId, row)) {
      if (e.seq > afterSeq) yield e;
    }
  }

  /** The events of a finished Ask, rebuilt from its row and messages: the whole answer as one delta. */
  async function reconstruct(tenantId: string, row: AskRow): Promise<AskEvent[]> {
    const ids = [row.user_message_id, row.assistant_message_id].filter((id): id is string => id !== null);
    const rows = await messagesByIds(db, tenantId, ids);
    const user = rows.find((m) => m.id === row.user_message_id);
    const assistant = rows.find((m) => m.id === row.assistant_message_id);
    const out: AskEvent[] = [];
    const push = (e: AskEventInit) => out.push(askEvent(row.id, out.length + 1, e));
    push({
      case: "started",
      value: {
        askId: row.id,
        ...(user ? { userMessage: messageToProto(user) } : {}),
        assistantMessageId: row.assistant_message_id ?? "",
        model: row.model,
      },
    });
    // The stored references are the ones the References event carried.
    if (assistant?.references) push({ case: "references", value: { references: referencesToProto(assistant.references) } });
    if (assistant && assistant.content !== "") push({ case: "textDelta", value: { text: assistant.content } });
    const usage = usageToProto(row.usage);
    if (usage) push({ case: "usage", value: usage });
    const message = assistant
      ? messageToProto(assistant)
      : unstoredMessage({
          ...(row.assistant_message_id ? { id: row.assistant_message_id } : {}),
          sessionId: row.session_id,
          askId: row.id,
          role: "assistant",
          content: "",
          status: row.status === "completed" ? "complete" : row.status === "running" ? "interrupted" : row.status,
          model: row.model,
          usage: row.usage,
          time: row.finish_time ?? row.create_time,
        });
    switch (row.status) {
      case "completed":
        push({ case: "completed", value: { message } });
        break;
      case "cancelled":
        push({ case: "cancelled", value: { message, reason: row.error_code ?? "cancel_ask" } });
        break;
      case "failed":
        push({ case: "failed", value: { code: row.error_code ?? "unknown", message: row.error_message ?? "", assistantMessage: message } });
        break;
      default:
        push({ case: "interrupted", value: { message } });
    }
    return out;
  }

  async function* ask(req: AskRequest, ctx: HandlerContext) {
    const { tenantId } = callerOf(ctx);
    const v = validateAsk(req);
    const { askId, owned } = await begin(tenantId, v, ctx.signal);
    let ended = false;
    // The client that started the Ask went away before its end: stop the model,
    // keep the partial answer. Watched on the signal itself because a stream
    // whose reader left may never be resumed to notice.
    const onAbort = () => {
      if (owned && !ended && !v.background) runs.get(askId)?.cancel("client");
    };
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    try {
      if (ctx.signal.aborted) onAbort();
      for await (const event of follow(tenantId, askId, 0, ctx.signal)) {
        if (isTerminal(event)) ended = true;
        yield create(AskResponseSchema, { event });
      }
    } finally {
      ctx.signal.removeEventListener("abort", onAbort);
      onAbort();
    }
  }

  return {
    handlers: {
      ask,
      async *resumeAsk(req, ctx) {
        const { tenantId } = callerOf(ctx);
        const askId = requireId("ask_id", req.askId);
        if (req.afterSeq < 0n) throw invalidArgument("after_seq", "must not be negative", "OUT_OF_RANGE");
        // The log is keyed by ask id only: check the tenant before reading it.
        if (!(await getAsk(db, tenantId, askId))) throw notFound("ask", askId);
        const afterSeq = req.afterSeq > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(req.afterSeq);
        for await (const event of follow(tenantId, askId, afterSeq, ctx.signal)) {
          yield create(ResumeAskResponseSchema, { event });
        }
      },
      watchSession,
      async cancelAsk(req, ctx) {
        const { tenantId } = callerOf(ctx);
        const askId = requireId("ask_id", req.askId);
        await starting.get(askId);
        let row = await getAsk(db, tenantId, askId);
        if (!row) throw notFound("ask", askId);
        if (row.status === "running") {
          const run = runs.get(askId);
          if (run && run.spec.tenantId === tenantId) {
            run.cancel("cancel_ask");
            await run.done;
          } else if (await interruptIfAbandoned(db, tenantId, row)) {
            void logInterrupted(db, shared, log, tenantId, askId);
          } else {
            await cancelElsewhere(tenantId, askId, ctx.signal);
          }
          row = (await getAsk(db, tenantId, askId)) ?? row;
        }
        return { ask: askToProto(row) };
      },
      async getAsk(req, ctx) {
        const { tenantId } = callerOf(ctx);
        const askId = requireId("ask_id", req.askId);
        const row = await getAsk(db, tenantId, askId);
        if (!row) throw notFound("ask", askId);
        return { ask: askToProto(row) };
      },
    },
    running: () => runs.size,
    async drain(graceMs) {
      draining = true;
      gate.shutdown();
      sweeper.stop();
      unsubscribeCancels();
      const allDone = () => Promise.all([...runs.values()].map((r) => r.done));
      if (graceMs > 0 && (runs.size > 0 || starting.size > 0)) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          (async () => {
            await Promise.all(starting.values());
            await allDone();
          })(),
          new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs))),
        ]);
        clearTimeout(timer);
      }
      // Asks that were being stored when draining began register late; cancel until none is left.
      for (;;) {
        await Promise.all(starting.values());
        const batch = [...runs.entries()];
        if (batch.length === 0) break;
        for (const [, r] of batch) r.cancel("shutdown");
        await Promise.all(batch.map(([, r]) => r.done));
        for (const [id] of batch) runs.delete(id);
      }
    },
  };
}
