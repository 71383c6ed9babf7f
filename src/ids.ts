import { v7, validate, version } from "uuid";
import { invalidArgument } from "./errors.js";

/** A new time-ordered UUIDv7. */
export function newId(): string {
  return v7();
}

/** True when s is a UUID (any version; ids from older versions stay valid). */
export function isUuid(s: string): boolean {
  return validate(s) && version(s) > 0;
}

/** Checks a required id field of a request and returns it. */
export function requireId(field: string, value: string): string {
  if (value === "") throw invalidArgument(field, "is required", "REQUIRED");
  if (!isUuid(value)) throw invalidArgument(field, "must be a UUID", "INVALID_ID");
  return value.toLowerCase();
}
