import { setImmediate as yieldToLoop } from "node:timers/promises";
import type { LanguageModel, LanguageModelUsage } from "ai";
import type { Kysely } from "kysely";
import type { Message } from "../../gen/parley/v1/common_pb.js";
import type { AskEvent } from "../../gen/parley/v1/session_pb.js";
import type { EventLog } from "../bus/event-log.js";
import type { Database, ReferencesJson, UsageJson } from "../db/schema.js";
import type { Logger } from "../log.js";
import { inBackground } from "../db/priority.js";
import { finishAsk, type AskOutcome, type AskTarget } from "../repos/asks.js";
import { lastMessages } from "../repos/messages.js";
import { messageToProto, referencesToProto, usageToProto } from "../services/converters.js";
import { builtinModelOptions, loadTurnKnowledge, type KnowledgeSearch } from "../knowledge/retrieve.js";
import { setMessageReferences } from "../repos/knowledge.js";
import { buildContext, CONTEXT_DEFAULTS, historyWindow, type HistoryMessage, type TokenCounter } from "./context.js";
import { askEvent, unstoredMessage, type AskEventInit } from "./convert.js";
import { extractAfterAsk, memoryBlockForTurn, type MemorySearcher } from "./memory.js";
import type { AskHeartbeat, OpenAsk } from "./heartbeat.js";
import { streamModelCall, usageOfFinish } from "./model-call.js";
import { describeModelError, type AskFailure } from "./model-errors.js";
import { renderInstructions, type TemplateState } from "./template.js";

/** Longest stretch (ms) an Ask reads ready model parts before it lets the event loop turn. */
const YIELD_EVERY_MS = 2;

/** Who stopped an Ask: CancelAsk, the Ask's own client going away, the server shutting down, or an INTERRUPT Ask taking the session. */
export type CancelReason = "cancel_ask" | "client" | "shutdown" | "interrupt";

/** Why a run's model call is aborted: a cancellation, or the loss of the claim on the session. */
type AbortReason = CancelReason | "lease_lost";

export interface RunDeps {
  readonly db: Kysely<Database>;
  readonly log: Logger;
  readonly events: EventLog<AskEvent>;
  readonly tokens: TokenCounter;
  /** Renews the leases of this replica's running Asks and flushes their partial answers. */
  readonly heartbeat: AskHeartbeat;
  /** Text deltas within this window go to the log as one (0: each as it comes). */
  readonly coalesceMs?: number;
  /** Memory search for agents with memory enabled. */
  readonly memories?: MemorySearcher;
  /** Knowledge search for agents with knowledge bases. */
  readonly knowledge?: KnowledgeSearch;
}

/** One Ask to run, as stored by the runtime. */
export interface RunSpec {
  readonly tenantId: string;
  readonly sessionId: string;
  readonly askId: string;
  readonly model: { readonly id: string; readonly model: LanguageModel };
  readonly agent: AskTarget["agent"];
  /** The session's user (whose memories and `user:` state the turn sees). */
  readonly userId: string;
  /** The state the instructions are rendered with: the scopes after this request's delta, and its temp: keys. */
  readonly state?: TemplateState;
  readonly overrides: { readonly temperature?: number; readonly maxOutputTokens?: number };
  readonly store: boolean;
  /** The user message as Started reports it (stored, or built in memory when store is false). */
  readonly userMessage: Message;
  readonly userContent: string;
  /** The stored assistant message; null when store is false. */
  readonly assistantMessageId: string | null;
  readonly createTime: Date;
  /** The history window (newest first, as loadContext reads it) when the start already read it. */
  readonly history?: readonly HistoryMessage[];
}

/** What a running Ask keeps of its RunSpec: the history window, the state and the Started message are let go once used. */
export type RunningSpec = Omit<RunSpec, "history" | "state" | "userMessage">;

/** A running Ask in this process. */
export interface AskRun {
  readonly spec: RunningSpec;
  /** Resolves when the Ask is finished: stored, terminal event logged, claim released. Never rejects. */
  readonly done: Promise<void>;
  /** Aborts the model call; the partial answer is kept as CANCELLED. The first reason wins; no-op once finished. */
  cancel(reason: CancelReason): void;
}

function usageOf(u: LanguageModelUsage | undefined): UsageJson | null {
  if (!u || (u.inputTokens === undefined && u.outputTokens === undefined && u.totalTokens === undefined)) return null;
  const input = u.inputTokens ?? 0;
  const output = u.outputTokens ?? 0;
  return { input_tokens: input, output_tokens: output, total_tokens: u.totalTokens ?? input + output };
}

/**
 * Starts an Ask whose rows are stored and whose session is claimed: logs the
 * Started event (seq 1) before returning, then streams the model in the
 * background, logging each event with the next seq, with the replica's
 * heartbeat renewing its lease and flushing its partial answer, and finally
 * stores the outcome and releases the claim.
 */
export async function startRun(deps: RunDeps, input: RunSpec): Promise<AskRun> {
  const { db, log, events } = deps;
  // An open Ask holds only what it needs until its end: the history window the claim read and the
  // state the instructions render with are dropped once the context is built (loadContext), the
  // user message once Started is logged.
  const { history: windowRead, state: stateRead, userMessage, ...spec } = input;
  let startInputs: Pick<RunSpec, "history" | "state"> | undefined = { history: windowRead, state: stateRead };
  const { tenantId, askId } = spec;
  const abort = new AbortController();
  let abortReason: AbortReason | undefined;
  let finished = false;

  // Appends go out one after the other in seq order, whoever triggers them.
  let seq = 0;
  let tail: Promise<void> = Promise.resolve();
  const append = (event: AskEventInit): Promise<void> => {
    const n = ++seq;
    const p = tail.then(() => events.append(askId, n, askEvent(askId, n, event)));
    tail = p.catch(() => {});
    return p;
  };
  // The partial answer the heartbeat flushes is the text the log has acknowledged, never
  // text still held for coalescing: after a crash, whoever resumes from the log has seen
  // all of the stored (INTERRUPTED) answer. A failed append freezes it.
  // The answer so far is kept once: the logged text is always a prefix of it (deltas are logged in
  // order), and it lags only while a coalescing window holds text, so it is sliced at most once a window.
  let beat: OpenAsk | undefined;
  let content = "";
  let loggedLength = 0;
  let logBroken = false;
  const appendText = (text: string): Promise<void> =>
    append({ case: "textDelta", value: { text } }).then(
      () => {
        if (logBroken) return;
        loggedLength += text.length;
        if (beat) beat.content = loggedLength === content.length ? content : content.slice(0, loggedLength);
      },
      (err: unknown) => {
        logBroken = true;
        throw err;
      },
    );
  // Deltas are coalesced for the log: fewer, larger entries; the text is the same
  // and the seqs stay gap-free because a seq is taken only when a delta is logged.
  // A delta that comes when the window since the last logged delta has passed goes at once
  // (a slow model's tokens wait for nothing); one that comes sooner is held until the window
  // ends, with whatever else comes meanwhile: at most one text delta per window.
  let pendingText = "";
  let coalesceTimer: NodeJS.Timeout | undefined;
  let loggedAt = Number.NEGATIVE_INFINITY;
  const flushText = (): Promise<void> => {
    clearTimeout(coalesceTimer);
    coalesceTimer = undefined;
    if (pendingText === "") return Promise.resolve();
    const text = pendingText;
    pendingText = "";
    loggedAt = performance.now();
    return appendText(text);
  };
  const emitText = (text: string): Promise<void> => {
    const window = deps.coalesceMs ?? 0;
    const now = performance.now();
    // The first delta is never held back (loggedAt is -Infinity): coalescing must not add to the time to first token.
    if (window <= 0 || (coalesceTimer === undefined && now - loggedAt >= window)) {
      loggedAt = now;
      return appendText(text);
    }
    pendingText += text;
    coalesceTimer ??= setTimeout(
      () => {
        flushText().catch((err: unknown) => log.warn({ err, askId }, "logging a text delta failed"));
      },
      Math.max(0, loggedAt + window - now),
    );
    return Promise.resolve();
  };
  const emit = async (event: AskEventInit): Promise<void> => {
    await flushText();
    await append(event);
  };

  await emit({
    case: "started",
    value: {
      askId,
      userMessage,
      assistantMessageId: spec.assistantMessageId ?? "",
      model: spec.model.id,
    },
  });

  const done = execute().catch((err: unknown) => {
    // execute handles its own failures; this is a last resort so done never rejects.
    log.error({ err, askId }, "ask run crashed");
  });
  return {
    spec,
    done,
    cancel(reason) {
      if (finished || abortReason) return;
      abortReason = reason;
      abort.abort(reason);
    },
  };

  async function execute(): Promise<void> {
    let usage: UsageJson | null = null;
    let failure: AskFailure | undefined;
    let sawFinish = false;
    let references: ReferencesJson | undefined;

    // The replica's heartbeat renews the lease and writes the partial answer on its ticks, never per token.
    beat = deps.heartbeat.join({
      tenantId,
      sessionId: spec.sessionId,
      askId,
      assistantMessageId: spec.assistantMessageId,
      onStop(reason) {
        if (finished || abortReason) return;
        if (reason === "lease_lost") log.warn({ askId }, "lost the claim on the session; stopping the Ask");
        abortReason = reason;
        abort.abort(reason);
      },
    });

    try {
      const context = await loadContext();
      // References go out (and are stored with the answer) before the first text delta.
      const refs = context.knowledge.references;
      references = refs;
      if (refs && !abort.signal.aborted) {
        if (spec.assistantMessageId) await setMessageReferences(db, tenantId, spec.assistantMessageId, refs);
        await emit({ case: "references", value: { references: referencesToProto(refs) } });
      }
      if (!abort.signal.aborted) {
        const g = spec.agent.generation ?? {};
        const stream = await streamModelCall({
          model: spec.model.model,
          ...(context.instructions !== undefined ? { instructions: context.instructions } : {}),
          messages: context.messages,
          ...(spec.model.id.startsWith("builtin:")
            ? { providerOptions: builtinModelOptions(context.knowledge, context.memories, refs !== undefined) }
            : {}),
          abortSignal: abort.signal,
          temperature: spec.overrides.temperature ?? g.temperature,
          topP: g.top_p,
          maxOutputTokens: spec.overrides.maxOutputTokens ?? g.max_output_tokens,
          ...(g.stop && g.stop.length > 0 ? { stopSequences: g.stop } : {}),
        });
        // A model that has many parts ready (a burst, a fast local model) is read in
        // microtasks only, which would hold the event loop until the burst ends: Node
        // writes HTTP/2 frames (this Ask's first delta, other Asks' events) from the
        // loop's next turn. So the loop yields after the first delta and then every
        // YIELD_EVERY_MS of uninterrupted reading.
        let yieldedAt = performance.now();
        let firstYielded = false;
        const reader = stream.getReader();
        try {
          for (;;) {
            const { done, value: part } = await reader.read();
            if (done) break;
            if (part.type === "text-delta") {
              if (part.delta === "") continue;
              content += part.delta;
              await emitText(part.delta);
              if (!firstYielded || performance.now() - yieldedAt >= YIELD_EVERY_MS) {
                firstYielded = true;
                await yieldToLoop();
                yieldedAt = performance.now();
              }
            } else if (part.type === "finish") {
              sawFinish = true;
              usage = usageOf(usageOfFinish(part));
            } else if (part.type === "error") {
              throw part.error;
            }
          }
        } finally {
          // Tells the provider to stop when the Ask ends before its stream does (error part, failed log append).
          reader.cancel().catch(() => {});
        }
      }
    } catch (err) {
      if (!abort.signal.aborted || sawFinish) {
        failure = describeModelError(err);
        log.warn({ err, askId, code: failure.code }, "ask failed");
      }
    } finally {
      finished = true;
      // Before the final store: the flush of a tick already under way is refused once the message has left STREAMING.
      beat.leave();
    }

    // A finished answer stays finished even if a cancel raced its last part.
    const cancelled = abort.signal.aborted && !sawFinish && failure === undefined;
    let outcome: AskOutcome;
    if (cancelled && abortReason === "lease_lost") {
      failure = { code: "aborted", message: "the Ask lost its claim on the session (its lease expired)" };
    }
    if (failure) {
      outcome = { status: "failed", usage, errorCode: failure.code, errorMessage: failure.message };
    } else if (cancelled) {
      outcome = { status: "cancelled", usage, errorCode: abortReason ?? "cancel_ask", errorMessage: null };
    } else {
      outcome = { status: "completed", usage, errorCode: null, errorMessage: null };
    }

    const stored = await finishWithRetry(content, outcome);
    const message =
      stored?.message !== undefined
        ? messageToProto(stored.message)
        : unstoredMessage({
            ...(spec.assistantMessageId ? { id: spec.assistantMessageId } : {}),
            sessionId: spec.sessionId,
            askId,
            role: "assistant",
            content,
            status: outcome.status === "completed" ? "complete" : outcome.status,
            model: spec.model.id,
            usage,
            time: new Date(),
          });
    // An answer that is not stored (store=false) still carries what the References event said.
    if (references && !message.references) message.references = referencesToProto(references);

    try {
      const u = usageToProto(usage);
      if (u) await emit({ case: "usage", value: u });
      if (outcome.status === "completed") {
        await emit({ case: "completed", value: { message } });
      } else if (outcome.status === "cancelled") {
        await emit({ case: "cancelled", value: { message, reason: outcome.errorCode ?? "cancel_ask" } });
      } else {
        await emit({
          case: "failed",
          value: { code: failure?.code ?? "unknown", message: failure?.message ?? "", assistantMessage: message },
        });
      }
    } finally {
      await events.end(askId);
    }
    if (outcome.status === "completed") {
      await inBackground(() =>
        extractAfterAsk({
          db,
          searcher: deps.memories,
          log,
          settings: spec.agent.memory,
          model: spec.model.model,
          tenantId,
          userId: spec.userId,
          sessionId: spec.sessionId,
          askId,
          question: spec.userContent,
          answer: content,
        }),
      );
    }
  }

  async function loadContext() {
    const policy = spec.agent.context_policy ?? {};
    const maxHistoryMessages = historyWindow(spec.agent);
    const maxInputTokens = policy.max_input_tokens || CONTEXT_DEFAULTS.maxInputTokens;
    // Read only the window: one range scan of at most max_history_messages rows
    // (+1 for this Ask's own placeholder when stored).
    const { history: windowRead, state } = startInputs ?? {};
    startInputs = undefined;
    let history: readonly HistoryMessage[];
    if (windowRead) {
      history = windowRead;
    } else if (spec.store) {
      history = await lastMessages(db, tenantId, spec.sessionId, maxHistoryMessages + 1);
    } else {
      const rows = await lastMessages(db, tenantId, spec.sessionId, maxHistoryMessages);
      history = [{ id: "", role: "user", content: spec.userContent, status: "complete" }, ...rows];
    }
    // Instructions are a template over the turn's state, followed by what is remembered about the user.
    const memories = await memoryBlockForTurn({
      db,
      searcher: deps.memories,
      log,
      settings: spec.agent.memory,
      tenantId,
      userId: spec.userId,
      sessionId: spec.sessionId,
      question: spec.userContent,
      signal: abort.signal,
    });
    const instructions = [renderInstructions(spec.agent.instructions, state), memories.text].filter((t) => t.trim() !== "").join("\n\n");
    const knowledge = await loadTurnKnowledge({
      search: deps.knowledge,
      log,
      tokens: deps.tokens,
      tenantId,
      settings: spec.agent,
      question: spec.userContent,
      instructions,
      maxInputTokens,
      signal: abort.signal,
    });
    const withKnowledge = [instructions, knowledge.block].filter((t) => t.trim() !== "").join("\n\n");
    return {
      ...buildContext({ instructions: withKnowledge, history, maxHistoryMessages, maxInputTokens }, deps.tokens),
      knowledge,
      memories: memories.text,
    };
  }

  /** Stores the outcome; retried a few times because the claim stays held (until its lease expires) if this fails. */
  async function finishWithRetry(content: string, outcome: AskOutcome) {
    for (let attempt = 1; ; attempt++) {
      try {
        // Background priority: under load the claims that start other Asks (their first token) go first.
        return await inBackground(() =>
          finishAsk(db, {
            tenantId,
            sessionId: spec.sessionId,
            askId,
            assistantMessageId: spec.assistantMessageId,
            content,
            outcome,
          }),
        );
      } catch (err) {
        if (attempt >= 3) {
          log.error({ err, askId }, "could not store the outcome of an Ask; its lease will expire and mark it interrupted");
          return undefined;
        }
        log.warn({ err, askId, attempt }, "storing the outcome of an Ask failed; retrying");
        await new Promise((r) => setTimeout(r, 250 * attempt));
      }
    }
  }
}
