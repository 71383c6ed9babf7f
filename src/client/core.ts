// The part of Parley's client shared by Node and browsers. It must stay free of
// node: imports: src/client/web.ts bundles it for browsers.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
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
   * usage, then exactly one of completed / failed / cancelled. Errors before the
   * stream starts (bad input, NotFound, a running Ask) are thrown as ConnectError;
   * aborting options.signal throws ConnectError with Code.Canceled.
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
      for await (const res of sessions.ask(request, { signal, timeoutMs, headers })) {
        // An AskResponse always carries an event; one without is skipped rather
        // than surfaced as a half-empty value.
        if (res.event) yield res.event;
      }
    },
  };
}

export { Code, ConnectError } from "@connectrpc/connect";
export type { Agent } from "../../gen/parley/v1/agent_pb.js";
export { MessageRole, MessageStatus, type Message } from "../../gen/parley/v1/common_pb.js";
export { SessionStatus, type AskEvent, type Session } from "../../gen/parley/v1/session_pb.js";
