import { APICallError, LoadAPIKeyError, NoSuchModelError, RetryError } from "ai";
import { isDatabaseUnavailable, ParleyError, type ErrorKind } from "../errors.js";

/** How a failed Ask reports its error: a Connect code name and a message for people. */
export interface AskFailure {
  readonly code: ErrorKind | "internal";
  readonly message: string;
}

const NETWORK = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EHOSTUNREACH", "UND_ERR_SOCKET"]);

function statusCode(status: number): ErrorKind {
  if (status === 429) return "resource_exhausted";
  if (status === 408 || status === 504) return "deadline_exceeded";
  if (status >= 500) return "unavailable";
  // The provider rejected the request or the credentials: the server's
  // configuration (model name, API key) must change before a retry can work.
  return "failed_precondition";
}

/** Maps an error of the model call (AI SDK, fetch, or our own) to the code and message of the Failed event. */
export function describeModelError(err: unknown): AskFailure {
  if (err instanceof ParleyError) return { code: err.kind, message: err.message };
  if (RetryError.isInstance(err)) return describeModelError(err.lastError);
  if (APICallError.isInstance(err)) {
    const status = err.statusCode;
    const code = status === undefined ? "unavailable" : statusCode(status);
    return { code, message: `the model provider answered ${status ?? "without a response"}: ${err.message}` };
  }
  if (LoadAPIKeyError.isInstance(err)) return { code: "failed_precondition", message: err.message };
  if (NoSuchModelError.isInstance(err)) return { code: "failed_precondition", message: err.message };
  if (isDatabaseUnavailable(err)) return { code: "unavailable", message: "the database is unreachable" };
  const e = err as { code?: unknown; cause?: { code?: unknown }; message?: unknown } | undefined;
  const netCode = typeof e?.code === "string" ? e.code : typeof e?.cause?.code === "string" ? e.cause.code : undefined;
  if (netCode && NETWORK.has(netCode)) return { code: "unavailable", message: `the model provider is unreachable (${netCode})` };
  // Anything else from the provider's side (a broken stream, an unparsable
  // chunk) means the model could not deliver an answer right now.
  const message = typeof e?.message === "string" && e.message !== "" ? e.message : "the model call failed";
  return { code: "unavailable", message: `the model call failed: ${message}` };
}
