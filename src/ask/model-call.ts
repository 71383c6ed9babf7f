import { retryWithExponentialBackoff } from "@ai-sdk/provider-utils";
import { APICallError, RetryError, type LanguageModel, type LanguageModelUsage, type ModelMessage } from "ai";
import {
  asLanguageModelUsage,
  convertToLanguageModelPrompt,
  prepareCallSettings,
  resolveLanguageModel,
  standardizePrompt,
} from "ai/internal";

type ProviderModel = ReturnType<typeof resolveLanguageModel>;
type DoStreamOptions = Parameters<ProviderModel["doStream"]>[0];
/** What a provider's stream carries (text-start, text-delta, finish with the usage, error…). */
export type ModelStreamPart = Awaited<ReturnType<ProviderModel["doStream"]>>["stream"] extends ReadableStream<infer P> ? P : never;

/** One model call of an Ask: its prompt and call settings. */
export interface ModelCallOptions {
  readonly model: LanguageModel;
  readonly instructions?: string;
  /** The conversation, oldest first; system messages are allowed among them. */
  readonly messages: ModelMessage[];
  readonly temperature?: number | undefined;
  readonly topP?: number | undefined;
  readonly maxOutputTokens?: number | undefined;
  readonly stopSequences?: string[] | undefined;
  readonly providerOptions?: DoStreamOptions["providerOptions"];
  readonly abortSignal?: AbortSignal;
}

/** Retries of a call that failed before it streamed anything, as the AI SDK's streamText does by default. */
const MAX_RETRIES = 2;
const INITIAL_DELAY_MS = 2_000;

/**
 * The provider's own wait (retry-after-ms, retry-after) when it gives a sane one (under a minute),
 * else the exponential backoff: the rule of the AI SDK's streamText.
 */
function retryDelayMs(error: unknown, backoffMs: number): number {
  const headers = APICallError.isInstance(error) ? error.responseHeaders : undefined;
  if (!headers) return backoffMs;
  let ms: number | undefined;
  const afterMs = headers["retry-after-ms"];
  if (afterMs) {
    const v = Number.parseFloat(afterMs);
    if (!Number.isNaN(v)) ms = v;
  }
  const after = headers["retry-after"];
  if (after && ms === undefined) {
    const seconds = Number.parseFloat(after);
    ms = Number.isNaN(seconds) ? Date.parse(after) - Date.now() : seconds * 1000;
  }
  return ms !== undefined && !Number.isNaN(ms) && ms >= 0 && (ms < 60_000 || ms < backoffMs) ? ms : backoffMs;
}

/** The usage of a provider's finish part, as the AI SDK reports it. */
export function usageOfFinish(part: Extract<ModelStreamPart, { type: "finish" }>): LanguageModelUsage {
  return asLanguageModelUsage(part.usage);
}

/**
 * Streams one call of a language model: the AI SDK resolves the model (adapting
 * older provider specifications), standardizes and converts the prompt and
 * checks the call settings, then the provider's own stream is returned as it
 * is, without the AI SDK's per-part transform (streamText's step and tool loop,
 * or streamLanguageModelCall's content collection), which an Ask does not use:
 * per 200-token answer they cost about 5 ms and 1.2 ms of CPU against 0.1 ms,
 * and most of an open stream's memory (bench/findings.md). A call the provider
 * refuses with a retryable error before streaming is retried twice with
 * exponential backoff from 2 s, respecting retry-after; then the RetryError
 * carries the last error.
 */
export async function streamModelCall(options: ModelCallOptions): Promise<ReadableStream<ModelStreamPart>> {
  const model = resolveLanguageModel(options.model);
  const standardized = await standardizePrompt({
    ...(options.instructions !== undefined ? { instructions: options.instructions } : {}),
    messages: options.messages,
    allowSystemInMessages: true,
  });
  const prompt = await convertToLanguageModelPrompt({
    prompt: standardized,
    supportedUrls: await model.supportedUrls,
    download: undefined,
    ...(options.abortSignal ? { abortSignal: options.abortSignal } : {}),
    provider: model.provider.split(".")[0]!,
  });
  const settings = prepareCallSettings({
    temperature: options.temperature,
    topP: options.topP,
    maxOutputTokens: options.maxOutputTokens,
    stopSequences: options.stopSequences,
  });
  const retry = retryWithExponentialBackoff({
    maxRetries: MAX_RETRIES,
    initialDelayInMs: INITIAL_DELAY_MS,
    ...(options.abortSignal ? { abortSignal: options.abortSignal } : {}),
    shouldRetry: (error) => APICallError.isInstance(error) && error.isRetryable,
    getDelayInMs: ({ error, exponentialBackoffDelay }) => retryDelayMs(error, exponentialBackoffDelay),
    createRetryError: ({ message, reason, errors }) => new RetryError({ message, reason, errors }),
  });
  const { stream } = await retry(() =>
    model.doStream({
      ...settings,
      prompt,
      ...(options.providerOptions ? { providerOptions: options.providerOptions } : {}),
      ...(options.abortSignal ? { abortSignal: options.abortSignal } : {}),
    }),
  );
  return stream;
}
