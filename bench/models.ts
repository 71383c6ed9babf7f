// Bench-only models: deterministic, no network, so that what is measured is Parley's own work.
// They reach the server through AppOptions.models (bench/server.ts), never through production config.
import type { LanguageModel } from "ai";
import type { ModelRegistry } from "../src/ask/models/registry.js";
import { modelNotConfigured } from "../src/ask/models/registry.js";

/** A provider's model as the AI SDK 7 specification (v4) defines it. */
type BenchModel = Extract<LanguageModel, { readonly specificationVersion: "v4" }>;
type StreamPart = Awaited<ReturnType<BenchModel["doStream"]>>["stream"] extends ReadableStream<infer P> ? P : never;

/**
 * A streaming-only model. Not ai/test's MockLanguageModelV4: that one keeps every call's options
 * (the whole prompt of every Ask) for a test to inspect, which would grow the server's heap by
 * hundreds of MB over a bench run and slow every scenario after the first Asks.
 */
function benchModel(modelId: string, doStream: BenchModel["doStream"]): BenchModel {
  return {
    specificationVersion: "v4",
    provider: "bench",
    modelId,
    supportedUrls: {},
    doGenerate: () => Promise.reject(new Error(`bench:${modelId} only streams`)),
    doStream,
  };
}

/** Model id of the zero-latency model: 200 tokens, all available at once. */
export const FAST_MODEL = "bench:fast-200";
/** Model id of the slow model: one token every 100 ms (long enough to hold a stream open). */
export const SLOW_MODEL = "bench:slow-100ms";

/** Tokens the fast model emits per answer. */
export const FAST_TOKENS = 200;

/** The text of every token. */
export const FAST_TOKEN_TEXT = "tok ";
const TOKEN = FAST_TOKEN_TEXT;

function parts(n: number): StreamPart[] {
  const out = [{ type: "stream-start", warnings: [] }, { type: "text-start", id: "t0" }] as StreamPart[];
  for (let i = 0; i < n; i++) out.push({ type: "text-delta", id: "t0", delta: TOKEN } as StreamPart);
  out.push({ type: "text-end", id: "t0" } as StreamPart, {
    type: "finish",
    finishReason: { unified: "stop", raw: "stop" },
    usage: {
      inputTokens: { total: 10, noCache: undefined, cacheRead: undefined, cacheWrite: undefined },
      outputTokens: { total: n, text: undefined, reasoning: undefined },
    },
  } as StreamPart);
  return out;
}

const fastParts = parts(FAST_TOKENS);

function fastModel(): BenchModel {
  return benchModel("fast-200", async () => ({
    stream: new ReadableStream<StreamPart>({
      start(controller) {
        for (const p of fastParts) controller.enqueue(p);
        controller.close();
      },
    }),
  }));
}

function slowModel(tokens: number, everyMs: number): BenchModel {
  const all = parts(tokens);
  return benchModel("slow-100ms", async (options) => {
    let i = 0;
    let timer: NodeJS.Timeout | undefined;
    const signal = options.abortSignal;
    return {
      stream: new ReadableStream<StreamPart>(
        {
          pull(controller) {
            const p = all[i++];
            if (!p) return controller.close();
            // Only the deltas wait; the framing parts go out at once.
            if (p.type !== "text-delta") return controller.enqueue(p);
            return new Promise<void>((resolve) => {
              const onAbort = () => {
                clearTimeout(timer);
                controller.error(signal?.reason ?? new DOMException("aborted", "AbortError"));
                resolve();
              };
              if (signal?.aborted) return onAbort();
              signal?.addEventListener("abort", onAbort, { once: true });
              timer = setTimeout(() => {
                signal?.removeEventListener("abort", onAbort);
                controller.enqueue(p);
                resolve();
              }, everyMs);
            });
          },
          cancel() {
            clearTimeout(timer);
          },
        },
        { highWaterMark: 0 },
      ),
    };
  });
}

/** The bench's model registry: FAST_MODEL and SLOW_MODEL (600 tokens, 100 ms apart). */
export function createBenchModels(): ModelRegistry {
  const fast = fastModel();
  const slow = slowModel(600, 100);
  return {
    resolve(id) {
      if (id === FAST_MODEL) return { id, model: fast };
      if (id === SLOW_MODEL) return { id, model: slow };
      throw modelNotConfigured(id, `The bench has no model ${id}`);
    },
  };
}
