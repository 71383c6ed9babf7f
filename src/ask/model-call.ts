import { retryWithExponentialBackoff } from "@ai-sdk/provider-utils";
import { APICallError, experimental_streamLanguageModelCall as streamLanguageModelCall, RetryError } from "ai";

/** What one model call of an Ask takes: the prompt and call settings of the AI SDK. */
export type ModelCallOptions = Parameters<typeof streamLanguageModelCall>[0];

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

/**
 * Streams one call of a language model: the AI SDK's prompt standardization and
 * conversion and its stream parts (text-delta, model-call-end with the usage,
 * error), without streamText's step and tool loop, which an Ask does not use:
 * for a 200-token answer that loop cost about 5 ms of CPU (against about 1 ms)
 * and about 80 KB per open stream (bench/findings.md). A call the provider
 * refuses with a retryable error before streaming is retried twice with
 * exponential backoff from 2 s, respecting retry-after; then the RetryError
 * carries the last error.
 */
export async function streamModelCall(options: ModelCallOptions) {
  const retry = retryWithExponentialBackoff({
    maxRetries: MAX_RETRIES,
    initialDelayInMs: INITIAL_DELAY_MS,
    ...(options.abortSignal ? { abortSignal: options.abortSignal } : {}),
    shouldRetry: (error) => APICallError.isInstance(error) && error.isRetryable,
    getDelayInMs: ({ error, exponentialBackoffDelay }) => retryDelayMs(error, exponentialBackoffDelay),
    createRetryError: ({ message, reason, errors }) => new RetryError({ message, reason, errors }),
  });
  const { stream } = await retry(() => streamLanguageModelCall(options));
  return stream;
}
