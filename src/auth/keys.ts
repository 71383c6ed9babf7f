import { createHash, randomBytes } from "node:crypto";

const KEY_PREFIX = "pk_";

/** A new random API key: "pk_" and 43 base64url characters (256 bits). */
export function generateApiKey(): string {
  return KEY_PREFIX + randomBytes(32).toString("base64url");
}

/** The stored form of a key. Keys carry 256 bits of entropy, so a plain sha256 is enough (no salt/KDF needed). */
export function hashApiKey(key: string): string {
  return createHash("sha256").update(key, "utf8").digest("hex");
}

/** The part of a key that may be shown in lists. */
export function keyPrefix(key: string): string {
  return key.slice(0, KEY_PREFIX.length + 6);
}
