import { createHash } from "node:crypto";
import { stringify } from "safe-stable-stringify";

/** sha256 of a value's canonical JSON (object keys sorted): equal requests give equal fingerprints. */
export function fingerprint(value: unknown): string {
  return createHash("sha256").update(stringify(value) ?? "null").digest("hex");
}
