// The part of Parley's client shared by Node and browsers. It must stay free of
// node: imports: src/client/web.ts bundles it for browsers.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService, type AskEvent, type AskRequestSchema } from "../../gen/parley/v1/session_pb.js";

/** An API key, or a function that returns the current one (e.g. a short-lived user token). */
export type ApiKeySource = string | (() => string | Promise<string>);

/** Options every Parley client takes, whatever the platform. */
export interface ParleyClientOptions {
  /** The server's address, e.g. `http://127.0.0.1:8080`. */
  readonly baseUrl: string;
  /** Sent as `Authorization: Bearer <apiKey>` on every call. */
  readonly apiKey?: ApiKeySource;
  /** Extra headers sent on every call. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Interceptors run after the one that adds the headers. */
  readonly interceptors?: readonly Interceptor[];
  /** Deadline of every call that does not give its own timeoutMs. */
  readonly defaultTimeoutMs?: number;
}

/** Options of one ask() call. */
export interface AskOptions {
  /** Aborting it cancels the Ask (the server keeps the partial answer as CANCELLED). */
  readonly signal?: AbortSignal;
  /** Deadline of the whole stream. */
  readonly timeoutMs?: number;
  /** Extra headers of this call. */
  readonly headers?: Readonly<Record<string, string>>;
  /**
   * Resume after a transport error (a dropped connection, a replica going away)
   * with ResumeAsk from the last event received, up to this many times in a row.
   * Default 5; 0 turns resuming off. While resuming is on, the Ask runs as a
   * background Ask (so that a dropped connection does not cancel it) and
   * aborting options.signal cancels it with CancelAsk. Aborted before its
   * Started event, ask() reads on for up to 2 s: a Started event names the Ask,
   * which it then cancels; otherwise it closes the stream, which gives up the
   * place of an Ask still waiting for its session (an Ask that starts later
   * than that runs to its end).
   */
  readonly maxResumes?: number;
  /** Pause before the n-th resume in a row: min(250 ms * 2^(n-1), 4 s) by default. */
  readonly resumeDelayMs?: (attempt: number) => number;
}

/** What ask() takes: an AskRequest (session_id and content at least). */
export type AskInput = MessageInitShape<typeof AskRequestSchema>;

/** Typed clients of Parley's three services and the ask() helper. */
export interface ParleyClient {
  readonly agents: Client<typeof AgentService>;
  readonly sessions: Client<typeof SessionService>;
  readonly messages: Client<typeof MessageService>;
  /** The transport the clients use (e.g. for createClient of the Health service). */
  readonly transport: Transport;
  /**
   * Runs one turn and yields its events as they arrive: started, textDelta…,
   * usage, then exactly one of completed / failed / cancelled / interrupted.
   * Errors before the stream starts (bad input, NotFound, a running Ask) are
   * thrown as ConnectError; aborting options.signal throws ConnectError with
   * Code.Canceled. A transport error after Started is resumed from the last
   * event seen (see AskOptions.maxResumes): every event arrives once, in order.
   */
  ask(request: AskInput, options?: AskOptions): AsyncGenerator<AskEvent, void, undefined>;
}

/** An interceptor that adds the bearer key and the fixed headers to every request. */
export function createHeaderInterceptor(
  apiKey: ApiKeySource | undefined,
  headers: Readonly<Record<string, string>> = {},
): Interceptor {
  return (next) => async (req) => {
    for (const [name, value] of Object.entries(headers)) req.header.set(name, value);
    const key = typeof apiKey === "function" ? await apiKey() : apiKey;
    if (key) req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
}

/** The interceptors of a client built from options: headers first, then the caller's own. */
export function clientInterceptors(options: ParleyClientOptions): Interceptor[] {
  return [createHeaderInterceptor(options.apiKey, options.headers), ...(options.interceptors ?? [])];
}

/** The transport options every client shares, whatever its transport: base URL, interceptors, default timeout. */
export function commonTransportOptions(options: ParleyClientOptions): {
  baseUrl: string;
  interceptors: Interceptor[];
  defaultTimeoutMs?: number;
} {
  return {
    baseUrl: options.baseUrl,
    interceptors: clientInterceptors(options),
    ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
  };
}

/** Builds the typed clients and ask() on any transport (Node, web, or in-memory for tests). */
export function createParleyClientFromTransport(transport: Transport): ParleyClient {
  const sessions = createClient(SessionService, transport);
  return {
    agents: createClient(AgentService, transport),
    sessions,
    messages: createClient(MessageService, transport),
    transport,
    async *ask(request, options = {}) {
      const { signal, timeoutMs, headers } = options;
      const maxResumes = options.maxResumes ?? 5;
      const resumeDelay = options.resumeDelayMs ?? ((n: number) => Math.min(250 * 2 ** (n - 1), 4_000));
      if (signal?.aborted) throw abortedError();
      const deadline = timeoutMs !== undefined ? Date.now() + timeoutMs : undefined;
      // The streams' own signal: the caller's abort ends them, except before Started while
      // resuming is on (below).
      const own = new AbortController();
      const callOptions = () => ({
        signal: own.signal,
        headers,
        ...(deadline !== undefined ? { timeoutMs: Math.max(deadline - Date.now(), 1) } : {}),
      });
      let askId: string | undefined;
      let lastSeq = 0n;
      let resumes = 0;
      let ended = false;
      // A dropped connection must not cancel the Ask we mean to resume; the caller's abort still
      // does, and ask() returns only once the server has stopped it (the session is free again).
      let cancelling: Promise<unknown> | undefined;
      const cancel = (id: string) => (cancelling ??= sessions.cancelAsk({ askId: id }, { headers, timeoutMs: 5_000 }).catch(() => {}));
      // The caller's abort ends the read in flight (untilAborted). A background Ask (resuming on)
      // aborted before its Started event keeps its stream open a while for Started to name it (finally).
      const onAbort = () => {
        if (maxResumes === 0 || askId !== undefined || ended) {
          if (askId !== undefined && !ended && maxResumes > 0) void cancel(askId);
          own.abort();
        }
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      type Responses = AsyncIterator<{ event?: AskEvent }>;
      let responses: Responses = sessions
        .ask(maxResumes > 0 ? { ...request, background: true } : request, callOptions())
        [Symbol.asyncIterator]();
      let pending: Promise<IteratorResult<{ event?: AskEvent }>> | undefined;
      try {
        for (;;) {
          try {
            for (;;) {
              pending = responses.next();
              const r = await (signal ? untilAborted(pending, signal) : pending);
              pending = undefined;
              if (r.done) break;
              // An AskResponse always carries an event; one without is skipped rather
              // than surfaced as a half-empty value.
              const e = r.value.event;
              if (!e || e.seq <= lastSeq) continue;
              if (e.event.case === "started") askId = e.event.value.askId;
              lastSeq = e.seq;
              resumes = 0;
              if (isTerminal(e)) ended = true;
              yield e;
              if (ended) return;
            }
            // The stream closed without a terminal event (a proxy ended it): resume too.
            if (!askId || resumes >= maxResumes) {
              throw new ConnectError("the Ask's stream ended before its terminal event", Code.Unavailable);
            }
          } catch (err) {
            if (!askId || signal?.aborted || !resumable(err) || resumes >= maxResumes) throw err;
          }
          resumes++;
          await pause(resumeDelay(resumes), signal);
          responses = sessions.resumeAsk({ askId, afterSeq: lastSeq }, callOptions())[Symbol.asyncIterator]();
        }
      } finally {
        signal?.removeEventListener("abort", onAbort);
        if (signal?.aborted && askId === undefined && !ended && pending && maxResumes > 0) {
          await cancelWhenStarted(pending, responses, cancel, own);
        }
        // A read still in flight ends with the stream; otherwise the stream ends as `for await`
        // ends it (aborting one whose trailers are on their way makes the server's writes fail).
        if (pending) own.abort();
        else await responses.return?.();
        await cancelling;
      }
    },
  };
}

/** How long an ask() aborted before its Started event reads on for it, to cancel the Ask it names. */
const CANCEL_BEFORE_START_WAIT_MS = 2_000;

/**
 * Reads an aborted Ask's stream on (from the read in flight) until its Started event, then
 * cancels that Ask; gives up when the stream ends or fails, or after CANCEL_BEFORE_START_WAIT_MS
 * (the Ask, if it then starts, runs to its end).
 */
async function cancelWhenStarted(
  pending: Promise<IteratorResult<{ event?: AskEvent }>>,
  responses: AsyncIterator<{ event?: AskEvent }>,
  cancel: (askId: string) => Promise<unknown>,
  own: AbortController,
): Promise<void> {
  const timer = setTimeout(() => own.abort(), CANCEL_BEFORE_START_WAIT_MS);
  try {
    for (let r = await pending; !r.done; r = await responses.next()) {
      const e = r.value.event;
      if (e?.event.case === "started") {
        await cancel(e.event.value.askId);
        return;
      }
      if (e && isTerminal(e)) return;
    }
  } catch {
    // The stream failed or the wait ran out.
  } finally {
    clearTimeout(timer);
  }
}

/**
 * p, or a Canceled error as soon as signal aborts (its listener removed once p settles).
 * p's outcome is always taken, so a read that fails after the abort is not left unhandled.
 */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortedError());
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
}

function abortedError(): ConnectError {
  return new ConnectError("the Ask was aborted", Code.Canceled);
}

function isTerminal(e: AskEvent): boolean {
  const c = e.event.case;
  return c === "completed" || c === "failed" || c === "cancelled" || c === "interrupted";
}

/**
 * Errors a resume can cure: the connection or the replica went away, or the
 * server asked to retry. Canceled counts too, because the caller's own abort is
 * ruled out before: an HTTP/2 stream reset by a dying connection reports it.
 */
function resumable(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return (
    code === Code.Unavailable ||
    code === Code.Unknown ||
    code === Code.Internal ||
    code === Code.Aborted ||
    code === Code.Canceled
  );
}

function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortedError());
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortedError());
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export { Code, ConnectError } from "@connectrpc/connect";
export type { Agent } from "../../gen/parley/v1/agent_pb.js";
export { MessageRole, MessageStatus, type Message } from "../../gen/parley/v1/common_pb.js";
export { SessionStatus, type AskEvent, type Session } from "../../gen/parley/v1/session_pb.js";
