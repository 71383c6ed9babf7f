import type { JsonObject, JsonValue } from "../db/schema.js";
import { invalidArgument, invalidArguments, ParleyError, resourceExhausted, type FieldViolation } from "../errors.js";

/** Limits enforced on every request; documented in the proto comments and the README. */
export const LIMITS = {
  contentBytes: 1024 * 1024,
  nameChars: 256,
  descriptionChars: 4096,
  instructionsBytes: 256 * 1024,
  userIdChars: 256,
  requestIdChars: 256,
  metadataKeys: 64,
  metadataBytes: 16 * 1024,
  stateBytes: 256 * 1024,
  appendBatch: 1000,
  deleteBatch: 1000,
  commentChars: 4096,
  stopSequences: 8,
  stopChars: 256,
} as const;

const utf8 = new TextEncoder();

export function byteLength(s: string): number {
  return utf8.encode(s).length;
}

/** Content of a message: optional emptiness, at most 1 MiB. */
export function checkContent(field: string, content: string, allowEmpty: boolean): void {
  checkNoNul(field, content);
  if (!allowEmpty && content.length === 0) throw invalidArgument(field, "is required", "REQUIRED");
  if (content.length > LIMITS.contentBytes || byteLength(content) > LIMITS.contentBytes) {
    throw invalidArgument(field, `exceeds ${LIMITS.contentBytes} bytes`, "TOO_LONG");
  }
}

/** A string field with a character limit (code points). */
export function checkText(field: string, value: string, maxChars: number, required = false): void {
  checkNoNul(field, value);
  if (required && value.trim().length === 0) throw invalidArgument(field, "is required", "REQUIRED");
  if (value.length > maxChars && [...value].length > maxChars) {
    throw invalidArgument(field, `exceeds ${maxChars} characters`, "TOO_LONG");
  }
}

/** Metadata: at most 64 top-level keys and 16 KiB as JSON. */
export function checkMetadata(field: string, value: JsonObject): void {
  checkJsonNoNul(field, value);
  const keys = Object.keys(value).length;
  if (keys > LIMITS.metadataKeys) throw invalidArgument(field, `has ${keys} keys; at most ${LIMITS.metadataKeys}`, "TOO_MANY_KEYS");
  const bytes = byteLength(JSON.stringify(value));
  if (bytes > LIMITS.metadataBytes) throw invalidArgument(field, `is ${bytes} bytes as JSON; at most ${LIMITS.metadataBytes}`, "TOO_LARGE");
}

/** Session state: at most 256 KiB as JSON. */
export function checkState(field: string, value: JsonObject): void {
  checkJsonNoNul(field, value);
  const bytes = byteLength(JSON.stringify(value));
  if (bytes > LIMITS.stateBytes) throw invalidArgument(field, `is ${bytes} bytes as JSON; at most ${LIMITS.stateBytes}`, "TOO_LARGE");
}

/** A batch of at most max items, at least one. */
export function checkBatch(field: string, count: number, max: number): void {
  if (count === 0) throw invalidArgument(field, "must not be empty", "REQUIRED");
  if (count > max) throw resourceExhausted(`${field}: ${count} items; at most ${max} per call`, "BATCH_TOO_LARGE", { field, max: String(max) });
}

/** Runs every check and throws one InvalidArgument with all their field violations, so a client sees every mistake at once. */
export function checkAll(...checks: (() => void)[]): void {
  const violations: FieldViolation[] = [];
  let first: ParleyError | undefined;
  for (const check of checks) {
    try {
      check();
    } catch (err) {
      if (!(err instanceof ParleyError) || err.kind !== "invalid_argument" || err.violations.length === 0) throw err;
      first ??= err;
      violations.push(...err.violations);
    }
  }
  if (violations.length === 1 && first) throw first;
  if (violations.length > 0) throw invalidArguments(violations);
}

// Postgres text and jsonb cannot hold U+0000: rejected here as the client's
// mistake instead of failing in the database as Internal.
export function checkNoNul(field: string, value: string): void {
  if (value.includes("\u0000")) throw invalidArgument(field, "must not contain U+0000", "INVALID_CHARACTER");
}

/** checkNoNul over every key and string of a JSON value. */
export function checkJsonNoNul(field: string, value: JsonValue): void {
  if (typeof value === "string") checkNoNul(field, value);
  else if (Array.isArray(value)) for (const v of value) checkJsonNoNul(field, v);
  else if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      checkNoNul(field, k);
      checkJsonNoNul(field, v);
    }
  }
}
