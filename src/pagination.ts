import { createHmac, timingSafeEqual } from "node:crypto";
import { invalidArgument } from "./errors.js";

/** Keyset values of the last row of a page: the sort key(s) and the id. */
export type Keyset = readonly (string | number | null)[];

export interface PageTokenCodec {
  /** Opaque token for the page after the row with this keyset, bound to the query. */
  encode(query: string, keyset: Keyset): string;
  /** The keyset of a token produced by encode for the same query; InvalidArgument for anything else. */
  decode(query: string, token: string, field?: string): Keyset;
}

/** Page tokens: base64url(JSON keyset) + HMAC-SHA256 over the query fingerprint and the keyset. */
export function createPageTokenCodec(secret: string): PageTokenCodec {
  const mac = (query: string, body: string) =>
    createHmac("sha256", secret).update(query).update("\0").update(body).digest().subarray(0, 16);
  return {
    encode(query, keyset) {
      const body = Buffer.from(JSON.stringify(keyset)).toString("base64url");
      return `${body}.${mac(query, body).toString("base64url")}`;
    },
    decode(query, token, field = "page_token") {
      const bad = () => invalidArgument(field, "is not a page token of this query", "INVALID_PAGE_TOKEN");
      const [body, sig, extra] = token.split(".");
      if (!body || !sig || extra !== undefined) throw bad();
      // Compare the text, not the decoded bytes: base64url decoding ignores padding
      // and the unused low bits of the last character, so altered tokens would pass.
      const got = Buffer.from(sig);
      const want = Buffer.from(mac(query, body).toString("base64url"));
      if (got.length !== want.length || !timingSafeEqual(got, want)) throw bad();
      let keyset: unknown;
      try {
        keyset = JSON.parse(Buffer.from(body, "base64url").toString("utf8"));
      } catch {
        throw bad();
      }
      if (!Array.isArray(keyset)) throw bad();
      return keyset as Keyset;
    },
  };
}

export const DEFAULT_PAGE_SIZE = 30;
export const MAX_PAGE_SIZE = 1000;

/** AIP-158 page size: 0 → default, above max → max, negative → InvalidArgument. */
export function pageSize(value: number, def = DEFAULT_PAGE_SIZE, max = MAX_PAGE_SIZE, field = "page_size"): number {
  if (value < 0) throw invalidArgument(field, "must not be negative", "INVALID_PAGE_SIZE");
  if (value === 0) return def;
  return Math.min(value, max);
}
