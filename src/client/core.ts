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
   * aborting options.signal cancels it with CancelAsk (an abort before the
   * Started event arrived cannot name the Ask: it then runs to its end).
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
      const deadline = timeoutMs !== undefined ? Date.now() + timeoutMs : undefined;
      const callOptions = () => ({
        signal,
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
      const onAbort = () => {
        if (askId && !ended) cancelling = sessions.cancelAsk({ askId }, { headers, timeoutMs: 5_000 }).catch(() => {});
      };
      if (maxResumes > 0) signal?.addEventListener("abort", onAbort, { once: true });
      try {
        let stream: AsyncIterable<{ event?: AskEvent }> = sessions.ask(
          maxResumes > 0 ? { ...request, background: true } : request,
          callOptions(),
        );
        for (;;) {
          try {
            for await (const res of stream) {
              // An AskResponse always carries an event; one without is skipped rather
              // than surfaced as a half-empty value.
              const e = res.event;
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
          stream = sessions.resumeAsk({ askId, afterSeq: lastSeq }, callOptions());
        }
      } finally {
        signal?.removeEventListener("abort", onAbort);
        await cancelling;
      }
    },
  };
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
    if (signal?.aborted) return reject(new ConnectError("the Ask was aborted", Code.Canceled));
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new ConnectError("the Ask was aborted", Code.Canceled));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export { Code, ConnectError } from "@connectrpc/connect";
export type { Agent } from "../../gen/parley/v1/agent_pb.js";
export { MessageRole, MessageStatus, type Message } from "../../gen/parley/v1/common_pb.js";
export { SessionStatus, type AskEvent, type Session } from "../../gen/parley/v1/session_pb.js";
