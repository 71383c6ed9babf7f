import { APICallError, type LanguageModel } from "ai";
import { MockLanguageModelV4 } from "ai/test";
import { modelNotConfigured, parseModelId, type ModelRegistry } from "../../src/ask/models/registry.js";

type CallOptions = Parameters<MockLanguageModelV4["doStream"]>[0];
type StreamPart = Awaited<ReturnType<MockLanguageModelV4["doStream"]>>["stream"] extends ReadableStream<infer P> ? P : never;

/** Token counts a fake model reports at the end of its answer. */
export interface FakeUsage {
  readonly inputTokens: number;
  readonly outputTokens: number;
}

/** A fake model plus the calls it received (each call's prompt, settings and abort signal). */
export interface FakeModel {
  readonly model: MockLanguageModelV4;
  /** Options of every doStream call, in order. */
  readonly calls: CallOptions[];
}

function usagePart(usage: FakeUsage | null | undefined): StreamPart {
  return {
    type: "finish",
    finishReason: { unified: "stop", raw: "stop" },
    usage: {
      inputTokens: { total: usage?.inputTokens, noCache: undefined, cacheRead: undefined, cacheWrite: undefined },
      outputTokens: { total: usage?.outputTokens, text: undefined, reasoning: undefined },
    },
  } as StreamPart;
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("This operation was aborted", "AbortError");
}

/** Waits ms, or rejects as soon as the signal aborts. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(abortError(signal!));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A pull-based stream of the text deltas `produce` yields, then a finish part
 * with its usage. Pull-based so that an error thrown by `produce` reaches the
 * consumer after the text before it (an errored ReadableStream drops its queue).
 * Honours the call's abort signal like an HTTP provider: the stream errors with
 * the abort reason as soon as the signal fires.
 */
function textStream(
  options: CallOptions,
  produce: (signal: AbortSignal | undefined) => AsyncGenerator<string, FakeUsage | null | undefined>,
): ReadableStream<StreamPart> {
  const signal = options.abortSignal;
  async function* parts(): AsyncGenerator<StreamPart> {
    yield { type: "stream-start", warnings: [] } as StreamPart;
    yield { type: "text-start", id: "t0" } as StreamPart;
    const it = produce(signal);
    for (;;) {
      const next = await abortable(it.next(), signal);
      if (next.done) {
        yield { type: "text-end", id: "t0" } as StreamPart;
        yield usagePart(next.value);
        return;
      }
      yield { type: "text-delta", id: "t0", delta: next.value } as StreamPart;
    }
  }
  const it = parts();
  return new ReadableStream<StreamPart>(
    {
      async pull(controller) {
        try {
          const next = await it.next();
          if (next.done) controller.close();
          else controller.enqueue(next.value);
        } catch (err) {
          controller.error(err);
        }
      },
      async cancel() {
        await it.return(undefined);
      },
    },
    { highWaterMark: 0 },
  );
}

/** p, or a rejection with the abort reason as soon as the signal fires. */
function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(abortError(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** An error like the one a provider raises for an HTTP 503 (code "unavailable" in Parley). Not retryable, so tests stay fast. */
export function unavailableError(message = "the fake model is unavailable"): APICallError {
  return new APICallError({
    message,
    url: "http://fake.invalid/v1/chat/completions",
    requestBodyValues: {},
    statusCode: 503,
    isRetryable: false,
  });
}

/** A model that streams `tokens` (with delayMs before each one), then reports usage; stops when aborted. */
export function tokensModel(
  tokens: readonly string[],
  opts: { delayMs?: number; usage?: FakeUsage | null; modelId?: string } = {},
): FakeModel {
  const calls: CallOptions[] = [];
  const model = new MockLanguageModelV4({
    provider: "fake",
    modelId: opts.modelId ?? "tokens",
    doStream: async (options) => {
      calls.push(options);
      return {
        stream: textStream(options, async function* (signal) {
          for (const t of tokens) {
            if (opts.delayMs) await sleep(opts.delayMs, signal);
            yield t;
          }
          return opts.usage === undefined ? { inputTokens: 10, outputTokens: tokens.length } : opts.usage;
        }),
      };
    },
  });
  return { model, calls };
}

/** A model that answers with the text of the last user message, word by word. */
export function echoModel(): FakeModel {
  const calls: CallOptions[] = [];
  const model = new MockLanguageModelV4({
    provider: "fake",
    modelId: "echo",
    doStream: async (options) => {
      calls.push(options);
      const last = [...options.prompt].reverse().find((m) => m.role === "user");
      const text =
        last && Array.isArray(last.content)
          ? last.content.map((p) => (p.type === "text" ? p.text : "")).join("")
          : "";
      const words = text.split(/(?<=\s)/);
      return {
        stream: textStream(options, async function* () {
          yield* words;
          return { inputTokens: 1, outputTokens: words.length };
        }),
      };
    },
  });
  return { model, calls };
}

/** A model that streams the first `after` tokens, then fails mid-stream with `error` (default: a 503 APICallError). */
export function failingModel(tokens: readonly string[], after: number, error: unknown = unavailableError()): FakeModel {
  const calls: CallOptions[] = [];
  const model = new MockLanguageModelV4({
    provider: "fake",
    modelId: "failing",
    doStream: async (options) => {
      calls.push(options);
      return {
        stream: textStream(options, async function* () {
          yield* tokens.slice(0, after);
          throw error;
        }),
      };
    },
  });
  return { model, calls };
}

/** A model whose call fails before any text (default: a 503 APICallError). */
export function failingImmediatelyModel(error: unknown = unavailableError()): FakeModel {
  const calls: CallOptions[] = [];
  const model = new MockLanguageModelV4({
    provider: "fake",
    modelId: "failing-immediately",
    doStream: async (options) => {
      calls.push(options);
      throw error;
    },
  });
  return { model, calls };
}

/** One call of a controlled model: the test decides what it streams and when. */
export interface ControlledCall {
  /** The prompt, settings and abort signal the model received. */
  readonly options: CallOptions;
  /** Streams a text delta. */
  push(text: string): void;
  /** Ends the answer normally, reporting usage (null: none). */
  finish(usage?: FakeUsage | null): void;
  /** Fails the stream with error (default: a 503 APICallError). */
  fail(error?: unknown): void;
  /** Resolves when the call's abort signal fires (the runtime cancelled it). */
  readonly aborted: Promise<unknown>;
}

/** A model driven step by step by the test, for assertions without timing. */
export interface ControlledModel extends FakeModel {
  /** Resolves with the n-th call (0-based) once the runtime has made it. */
  call(index: number): Promise<ControlledCall>;
}

/** A model whose answers the test writes with push/finish/fail on each call. */
export function controlledModel(): ControlledModel {
  const calls: CallOptions[] = [];
  const handles: ControlledCall[] = [];
  const waiters = new Map<number, Array<(c: ControlledCall) => void>>();
  const model = new MockLanguageModelV4({
    provider: "fake",
    modelId: "controlled",
    doStream: async (options) => {
      calls.push(options);
      // A queue the test fills with push/finish/fail and the stream drains.
      const queue: Array<{ text: string } | { usage: FakeUsage | null | undefined } | { error: unknown }> = [];
      let wake: (() => void) | undefined;
      const put = (item: (typeof queue)[number]) => {
        queue.push(item);
        wake?.();
      };
      const stream = textStream(options, async function* () {
        for (;;) {
          const item = queue.shift();
          if (!item) {
            await new Promise<void>((resolve) => (wake = resolve));
            continue;
          }
          if ("text" in item) yield item.text;
          else if ("usage" in item) return item.usage;
          else throw item.error;
        }
      });
      const signal = options.abortSignal;
      const handle: ControlledCall = {
        options,
        push: (text) => put({ text }),
        finish: (usage) => put({ usage: usage === undefined ? { inputTokens: 10, outputTokens: 5 } : usage }),
        fail: (error = unavailableError()) => put({ error }),
        aborted: new Promise((resolve) => {
          if (!signal) return;
          if (signal.aborted) resolve(signal.reason);
          else signal.addEventListener("abort", () => resolve(signal.reason), { once: true });
        }),
      };
      const index = handles.length;
      handles.push(handle);
      for (const w of waiters.get(index) ?? []) w(handle);
      waiters.delete(index);
      return { stream };
    },
  });
  return {
    model,
    calls,
    call(index) {
      const h = handles[index];
      if (h) return Promise.resolve(h);
      return new Promise((resolve) => waiters.set(index, [...(waiters.get(index) ?? []), resolve]));
    },
  };
}

/**
 * A ModelRegistry of fake models addressed as `fake:<name>`. Built in:
 * `fake:hello` (streams "Hello, world!" in 4 tokens), `fake:echo` (repeats the
 * last user message), `fake:fail` (fails before any text), `fake:fail-midway`
 * (fails after "Hello, "). `models` adds or replaces entries; an empty agent
 * model resolves to defaultModel (default `fake:hello`). Any other model is the
 * same FAILED_PRECONDITION (MODEL_PROVIDER_NOT_CONFIGURED) as the real registry.
 */
export function createFakeModels(
  models: Record<string, LanguageModel | FakeModel> = {},
  opts: { defaultModel?: string } = {},
): ModelRegistry {
  const table = new Map<string, LanguageModel>();
  const builtIn: Record<string, FakeModel> = {
    hello: tokensModel(["Hello", ", ", "world", "!"]),
    echo: echoModel(),
    fail: failingImmediatelyModel(),
    "fail-midway": failingModel(["Hello", ", ", "world", "!"], 2),
  };
  for (const [name, m] of Object.entries({ ...builtIn, ...models })) {
    table.set(name, isFake(m) ? m.model : m);
  }
  const defaultModel = opts.defaultModel ?? "fake:hello";
  return {
    resolve(model) {
      const id = model || defaultModel;
      const parsed = parseModelId(id);
      if (!parsed || parsed.provider !== "fake") throw modelNotConfigured(id, `Provider of "${id}" is not configured`);
      const m = table.get(parsed.name);
      if (!m) throw modelNotConfigured(id, `No fake model "${parsed.name}"`);
      return { id, model: m };
    },
  };
}

function isFake(m: LanguageModel | FakeModel): m is FakeModel {
  return typeof m === "object" && m !== null && "calls" in m && "model" in m;
}
