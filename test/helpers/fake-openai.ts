import { createServer, type IncomingHttpHeaders, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** What the fake server answers to one chat completions request. */
export interface FakeOpenAIReply {
  /** The answer, one SSE chunk per token (or joined for stream: false). Default ["Hello", ", ", "world", "!"]. */
  readonly tokens?: readonly string[];
  /** Pause before each token, in ms. Default 0. */
  readonly delayMs?: number;
  /**
   * After sending this many tokens the response stalls: it stays open and sends
   * nothing more until the client closes it, release() is called, or the server
   * closes. Lets a test cancel "midway" without relying on timing.
   */
  readonly stallAfter?: number;
  /** After sending this many tokens the server destroys the connection (a network failure mid-stream). */
  readonly failAfter?: number;
  /** Answer with this HTTP status and an OpenAI-style error body instead of a completion. */
  readonly status?: number;
  /** Usage reported when the client asks for it (stream_options.include_usage, or always for stream: false). */
  readonly usage?: { readonly promptTokens: number; readonly completionTokens: number };
  /** finish_reason of the last chunk. Default "stop". */
  readonly finishReason?: string;
}

/** One request the fake server received. */
export interface FakeOpenAIRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  /** The parsed JSON body (undefined when it was not JSON). */
  readonly body: any;
  /** Tokens written to the response so far. */
  tokensSent: number;
  /** True when the client closed the connection before the response ended. */
  aborted: boolean;
  /** True when the server ended the response normally. */
  completed: boolean;
  /** Resolves when the exchange is over: "completed", "aborted" (client closed first) or "failed" (failAfter). */
  readonly done: Promise<"completed" | "aborted" | "failed">;
  /** Resolves once tokensSent reaches n (or the exchange ends first). */
  sent(n: number): Promise<void>;
}

export interface FakeOpenAIOptions extends FakeOpenAIReply {
  /** Chooses the reply per request (index counts chat completion requests from 0); overrides the defaults above. */
  readonly reply?: (request: FakeOpenAIRequest, index: number) => FakeOpenAIReply;
  /** Bearer key to require; requests without it get 401. Default: any key (or none) is accepted. */
  readonly apiKey?: string;
}

export interface FakeOpenAI {
  /** e.g. http://127.0.0.1:43210/v1: the value for OPENAI_COMPATIBLE_BASE_URL or OPENAI_BASE_URL. */
  readonly baseURL: string;
  /** Every chat completions request, in arrival order. */
  readonly requests: FakeOpenAIRequest[];
  /** Resolves with the n-th (0-based) chat completions request once it has arrived. */
  request(index: number): Promise<FakeOpenAIRequest>;
  /** Lets every stalled response (and future ones) continue to the end. */
  release(): void;
  /** Closes the server and every open connection. */
  close(): Promise<void>;
}

const DEFAULT_TOKENS = ["Hello", ", ", "world", "!"];

/**
 * A local HTTP server speaking the OpenAI chat completions API (POST
 * /v1/chat/completions, with SSE streaming and stream_options.include_usage;
 * GET /v1/models), recording every request and whether the client aborted it.
 */
export async function startFakeOpenAI(options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const requests: FakeOpenAIRequest[] = [];
  const arrivals: Array<(r: FakeOpenAIRequest) => void> = [];
  let released = false;
  const releaseWaiters = new Set<() => void>();
  let completionSeq = 0;

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const url = new URL(req.url ?? "/", "http://localhost");
      const path = url.pathname;
      if (options.apiKey !== undefined && req.headers.authorization !== `Bearer ${options.apiKey}`) {
        return sendError(res, 401, "invalid_api_key", "Incorrect API key provided");
      }
      if (req.method === "GET" && path === "/v1/models") {
        res.writeHead(200, { "content-type": "application/json" });
        return res.end(JSON.stringify({ object: "list", data: [{ id: "fake", object: "model", owned_by: "parley-test" }] }));
      }
      if (req.method !== "POST" || path !== "/v1/chat/completions") {
        return sendError(res, 404, "not_found", `no route ${req.method} ${path}`);
      }
      let body: any;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        body = undefined;
      }
      const record = newRecord(req.method, path, req.headers, body);
      const index = requests.length;
      requests.push(record.request);
      for (const w of arrivals.splice(0)) w(record.request);

      // "close" on the response fires for a normal end too; only an early close is an abort.
      res.on("close", () => {
        if (!res.writableFinished && !record.request.completed && !record.failed) {
          record.request.aborted = true;
          record.finish("aborted");
        }
      });

      const reply: FakeOpenAIReply = { ...options, ...(options.reply?.(record.request, index) ?? {}) };
      void respond(res, body, reply, record, ++completionSeq);
    });
  });

  const sockets = new Set<import("node:net").Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;

  function waitRelease(record: Record_): Promise<void> {
    if (released) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        releaseWaiters.delete(done);
        resolve();
      };
      releaseWaiters.add(done);
      void record.request.done.then(done);
    });
  }

  async function respond(res: ServerResponse, body: any, reply: FakeOpenAIReply, record: Record_, n: number) {
    if (reply.status !== undefined && reply.status >= 400) {
      sendError(res, reply.status, "fake_error", `fake error ${reply.status}`);
      record.request.completed = true;
      record.finish("completed");
      return;
    }
    const tokens = reply.tokens ?? DEFAULT_TOKENS;
    const model = typeof body?.model === "string" ? body.model : "fake";
    const id = `chatcmpl-fake-${n}`;
    const created = Math.floor(Date.now() / 1000);
    const usage = reply.usage
      ? {
          prompt_tokens: reply.usage.promptTokens,
          completion_tokens: reply.usage.completionTokens,
          total_tokens: reply.usage.promptTokens + reply.usage.completionTokens,
        }
      : { prompt_tokens: 0, completion_tokens: tokens.length, total_tokens: tokens.length };
    const finishReason = reply.finishReason ?? "stop";

    if (body?.stream !== true) {
      for (let i = 0; i < tokens.length; i++) {
        if (record.ended) return;
        await pause(reply, i, record);
        if (record.ended) return;
        record.bump();
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          id,
          object: "chat.completion",
          created,
          model,
          choices: [{ index: 0, message: { role: "assistant", content: tokens.join("") }, finish_reason: finishReason }],
          usage,
        }),
      );
      record.request.completed = true;
      record.finish("completed");
      return;
    }

    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
    const chunk = (delta: object, finish: string | null) =>
      `data: ${JSON.stringify({
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: [{ index: 0, delta, finish_reason: finish }],
      })}\n\n`;
    res.write(chunk({ role: "assistant", content: "" }, null));
    for (let i = 0; i < tokens.length; i++) {
      await pause(reply, i, record);
      if (record.ended) return;
      if (reply.failAfter === i) {
        record.failed = true;
        record.finish("failed");
        res.socket?.destroy();
        return;
      }
      res.write(chunk({ content: tokens[i] }, null));
      record.bump();
    }
    if (reply.failAfter !== undefined && reply.failAfter >= tokens.length && !record.ended) {
      record.failed = true;
      record.finish("failed");
      res.socket?.destroy();
      return;
    }
    if (record.ended) return;
    res.write(chunk({}, finishReason));
    if (body?.stream_options?.include_usage === true) {
      res.write(`data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices: [], usage })}\n\n`);
    }
    res.write("data: [DONE]\n\n");
    record.request.completed = true;
    res.end();
    record.finish("completed");
  }

  async function pause(reply: FakeOpenAIReply, i: number, record: Record_) {
    if (reply.stallAfter !== undefined && i === reply.stallAfter) await waitRelease(record);
    if (reply.delayMs && reply.delayMs > 0 && !record.ended) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, reply.delayMs);
        void record.request.done.then(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  return {
    baseURL: `http://127.0.0.1:${port}/v1`,
    requests,
    request(index) {
      const r = requests[index];
      if (r) return Promise.resolve(r);
      return new Promise((resolve) => {
        const check = () => {
          const got = requests[index];
          if (got) resolve(got);
          else arrivals.push(check);
        };
        arrivals.push(check);
      });
    },
    release() {
      released = true;
      for (const w of [...releaseWaiters]) w();
    },
    close() {
      released = true;
      for (const w of [...releaseWaiters]) w();
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    },
  };
}

interface Record_ {
  readonly request: FakeOpenAIRequest;
  /** The exchange is over (any outcome). */
  ended: boolean;
  failed: boolean;
  bump(): void;
  finish(outcome: "completed" | "aborted" | "failed"): void;
}

function newRecord(method: string, path: string, headers: IncomingHttpHeaders, body: unknown): Record_ {
  let resolveDone!: (o: "completed" | "aborted" | "failed") => void;
  const done = new Promise<"completed" | "aborted" | "failed">((r) => (resolveDone = r));
  const sentWaiters: Array<{ n: number; resolve: () => void }> = [];
  const record: Record_ = {
    ended: false,
    failed: false,
    request: {
      method,
      path,
      headers,
      body,
      tokensSent: 0,
      aborted: false,
      completed: false,
      done,
      sent(n) {
        if (record.request.tokensSent >= n || record.ended) return Promise.resolve();
        return new Promise((resolve) => sentWaiters.push({ n, resolve }));
      },
    },
    bump() {
      record.request.tokensSent++;
      for (let i = sentWaiters.length - 1; i >= 0; i--) {
        const w = sentWaiters[i]!;
        if (record.request.tokensSent >= w.n) {
          sentWaiters.splice(i, 1);
          w.resolve();
        }
      }
    },
    finish(outcome) {
      if (record.ended) return;
      record.ended = true;
      resolveDone(outcome);
      for (const w of sentWaiters.splice(0)) w.resolve();
    },
  };
  return record;
}

function sendError(res: ServerResponse, status: number, code: string, message: string) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ error: { message, type: "invalid_request_error", param: null, code } }));
}
