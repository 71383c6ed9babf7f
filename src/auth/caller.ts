import { createContextKey } from "@connectrpc/connect";
import type { ApiKeyRole } from "../db/schema.js";

/** The authenticated caller of an RPC. */
export interface Caller {
  readonly tenantId: string;
  readonly keyId: string;
  readonly role: ApiKeyRole;
}

/** Context key under which the auth interceptor stores the caller. */
export const kCaller = createContextKey<Caller | undefined>(undefined, { description: "authenticated caller" });

/** The caller of this RPC; throws Unauthenticated when the auth interceptor did not run. */
export function callerOf(ctx: { values: { get<T>(key: { id: symbol; defaultValue: T }): T } }): Caller {
  const c = ctx.values.get(kCaller);
  if (!c) throw new Error("no caller in context: the auth interceptor is not installed");
  return c;
}
