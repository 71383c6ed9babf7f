import type { Interceptor } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import { unauthenticated } from "../errors.js";
import { findActiveKeyByHash } from "../repos/api-keys.js";
import { kCaller, type Caller } from "./caller.js";
import { hashApiKey } from "./keys.js";

/** Services reachable without a key (health checks from load balancers and meshes). */
const PUBLIC_SERVICES = new Set(["grpc.health.v1.Health"]);

export interface AuthInterceptorOptions {
  /** How long a verified key is trusted before it is looked up again (a revoked key stops working within this time). */
  readonly cacheTtlMs?: number;
}

/** Verifies `Authorization: Bearer <api key>` and puts the caller into the context (kCaller). */
export function createAuthInterceptor(db: Kysely<Database>, options: AuthInterceptorOptions = {}): Interceptor {
  const ttl = options.cacheTtlMs ?? 5_000;
  // The lookup itself is cached, so concurrent first calls with a key share one query.
  // A key that is unknown, or whose lookup failed, is dropped once the lookup settles.
  const cache = new Map<string, { caller: Promise<Caller | undefined>; expires: number }>();
  return (next) => async (req) => {
    if (PUBLIC_SERVICES.has(req.service.typeName)) return next(req);
    const header = req.header.get("authorization") ?? "";
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw unauthenticated("missing API key: send the header `Authorization: Bearer <api key>`");
    const hash = hashApiKey(m[1]!);
    const now = Date.now();
    let entry = cache.get(hash);
    if (!entry || entry.expires < now) {
      const lookup = findActiveKeyByHash(db, hash).then((row): Caller | undefined =>
        row ? { tenantId: row.tenant_id, keyId: row.id, role: row.role } : undefined,
      );
      const created = { caller: lookup, expires: now + ttl };
      entry = created;
      if (cache.size > 10_000) cache.clear();
      cache.set(hash, created);
      const drop = () => {
        if (cache.get(hash) === created) cache.delete(hash);
      };
      lookup.then((caller) => caller ?? drop(), drop);
    }
    const caller = await entry.caller;
    if (!caller) throw unauthenticated("invalid or revoked API key");
    req.contextValues.set(kCaller, caller);
    return next(req);
  };
}
