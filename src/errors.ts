import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { BadRequestSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";

/** Domain of every ErrorInfo Parley sends. */
export const ERROR_DOMAIN = "parley.dev";

export interface FieldViolation {
  /** Path of the field in the request, e.g. "session.name". */
  readonly field: string;
  readonly description: string;
  readonly reason?: string;
}

export type ErrorKind =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "failed_precondition"
  | "aborted"
  | "resource_exhausted"
  | "unauthenticated"
  | "permission_denied"
  | "unavailable"
  | "deadline_exceeded"
  | "canceled";

const codeOf: Record<ErrorKind, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  failed_precondition: Code.FailedPrecondition,
  aborted: Code.Aborted,
  resource_exhausted: Code.ResourceExhausted,
  unauthenticated: Code.Unauthenticated,
  permission_denied: Code.PermissionDenied,
  unavailable: Code.Unavailable,
  deadline_exceeded: Code.DeadlineExceeded,
  canceled: Code.Canceled,
};

/** A typed error thrown by domain code; mapped to a ConnectError in one place. */
export class ParleyError extends Error {
  override name = "ParleyError";
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** UPPER_SNAKE reason for ErrorInfo. */
    readonly reason: string,
    readonly metadata: Readonly<Record<string, string>> = {},
    readonly violations: readonly FieldViolation[] = [],
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A request field is missing or invalid. */
export function invalidArgument(field: string, description: string, reason = "INVALID_FIELD"): ParleyError {
  return new ParleyError("invalid_argument", `${field}: ${description}`, reason, { field }, [
    { field, description, reason },
  ]);
}

/** Several request fields are invalid at once. */
export function invalidArguments(violations: FieldViolation[]): ParleyError {
  const msg = violations.map((v) => `${v.field}: ${v.description}`).join("; ");
  return new ParleyError("invalid_argument", msg, violations[0]?.reason ?? "INVALID_FIELD", {}, violations);
}

/** A resource does not exist (or belongs to another tenant: the same answer). */
export function notFound(resource: string, id: string): ParleyError {
  return new ParleyError("not_found", `${resource} "${id}" not found`, `${resource.toUpperCase()}_NOT_FOUND`, {
    resource,
    id,
  });
}

export function failedPrecondition(message: string, reason: string, metadata: Record<string, string> = {}) {
  return new ParleyError("failed_precondition", message, reason, metadata);
}

export function aborted(message: string, reason: string, metadata: Record<string, string> = {}) {
  return new ParleyError("aborted", message, reason, metadata);
}

export function resourceExhausted(message: string, reason: string, metadata: Record<string, string> = {}) {
  return new ParleyError("resource_exhausted", message, reason, metadata);
}

export function unauthenticated(message: string): ParleyError {
  return new ParleyError("unauthenticated", message, "UNAUTHENTICATED");
}

export function unavailable(message: string, reason = "UNAVAILABLE", options?: { cause?: unknown }) {
  return new ParleyError("unavailable", message, reason, {}, [], options);
}

/** A stale etag. */
export function staleEtag(resource: string, id: string): ParleyError {
  return aborted(`${resource} "${id}" was changed since the given etag`, "ETAG_MISMATCH", { resource, id });
}

const PG_UNAVAILABLE = /^(08|57P0|53300)/; // connection exceptions, admin shutdown, too many connections
const NET_UNAVAILABLE = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EHOSTUNREACH"]);

/** True when an error means the database cannot be reached right now. */
export function isDatabaseUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const e = err as Error & { code?: unknown; errors?: unknown[] };
  if (typeof e.code === "string" && (PG_UNAVAILABLE.test(e.code) || NET_UNAVAILABLE.has(e.code))) return true;
  if (Array.isArray(e.errors) && e.errors.some(isDatabaseUnavailable)) return true; // AggregateError from net
  if (/Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|PGlite is closed/i.test(e.message)) {
    return true;
  }
  return false;
}

export interface ErrorLogger {
  error(obj: object, msg: string): void;
}

/** Maps any thrown value to the ConnectError the client sees; unknown errors become Internal with the cause hidden. */
export function toConnectError(err: unknown, log?: ErrorLogger): ConnectError {
  if (err instanceof ParleyError) {
    const details = [
      {
        desc: ErrorInfoSchema,
        value: create(ErrorInfoSchema, { reason: err.reason, domain: ERROR_DOMAIN, metadata: { ...err.metadata } }),
      },
    ];
    if (err.violations.length > 0) {
      details.push({
        desc: BadRequestSchema,
        value: create(BadRequestSchema, {
          fieldViolations: err.violations.map((v) => ({
            field: v.field,
            description: v.description,
            reason: v.reason ?? "INVALID_FIELD",
          })),
        }),
      } as never);
    }
    return new ConnectError(err.message, codeOf[err.kind], undefined, details, err);
  }
  if (err instanceof ConnectError) return err;
  if (isDatabaseUnavailable(err)) {
    log?.error({ err }, "database unavailable");
    return toConnectError(unavailable("the database is unreachable; retry later", "DATABASE_UNAVAILABLE"));
  }
  const e = err as { code?: unknown } | undefined;
  if (e && (e.code === "40001" || e.code === "40P01")) {
    return toConnectError(aborted("concurrent modification; retry", "SERIALIZATION_FAILURE"));
  }
  log?.error({ err }, "internal error");
  return new ConnectError("internal error", Code.Internal);
}

/** Server interceptor that maps every error a handler throws, unary or streaming, through toConnectError. */
export function createErrorInterceptor(log?: ErrorLogger): Interceptor {
  return (next) => async (req) => {
    try {
      const res = await next(req);
      if (!res.stream) return res;
      return { ...res, message: mapErrors(res.message, (err) => toConnectError(err, log)) };
    } catch (err) {
      throw toConnectError(err, log);
    }
  };
}

/**
 * The same stream, with its errors mapped. Not an async generator: a generator that
 * delegates with `yield*` adds several promise turns to every message of a stream
 * (each of an Ask's deltas), where this adds one `catch`.
 */
function mapErrors<T>(source: AsyncIterable<T>, map: (err: unknown) => unknown): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<T> {
      const it = source[Symbol.asyncIterator]();
      const rethrow = (err: unknown): never => {
        throw map(err);
      };
      return {
        next: () => it.next().catch(rethrow),
        return: (value?: unknown) =>
          it.return ? it.return(value).catch(rethrow) : Promise.resolve({ done: true as const, value: value as T }),
        throw: (err?: unknown) => (it.throw ? it.throw(err).catch(rethrow) : Promise.reject(map(err))),
      };
    },
  };
}
