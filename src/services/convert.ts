import type { JsonObject as PbJsonObject } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { JsonObject } from "../db/schema.js";

/** Timestamp of a Date (undefined for null). */
export function ts(d: Date | null | undefined): Timestamp | undefined {
  return d ? timestampFromDate(d) : undefined;
}

/** A google.protobuf.Struct field (already a JsonObject in protobuf-es v2) as a plain object; unset → {}. */
export function structIn(v: PbJsonObject | undefined): JsonObject {
  return (v ?? {}) as JsonObject;
}

/** A stored JSON object as a Struct field value. */
export function structOut(v: JsonObject | null | undefined): PbJsonObject {
  return (v ?? {}) as PbJsonObject;
}

/** The etag of a row version. */
export function etagOf(version: number): string {
  return `W/"${version}"`;
}
