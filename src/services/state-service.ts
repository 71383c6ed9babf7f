import type { ServiceImpl } from "@connectrpc/connect";
import type { StateDelta } from "../../gen/parley/v1/common_pb.js";
import type { StateService } from "../../gen/parley/v1/state_pb.js";
import type { ServiceDeps } from "../app.js";
import { callerOf } from "../auth/caller.js";
import { invalidArgument, notFound } from "../errors.js";
import { requireId } from "../ids.js";
import { loadState, updateState } from "../repos/state.js";
import { mergedState, validateDelta, type ValidDelta } from "../state/scopes.js";
import { structIn, structOut } from "./convert.js";
import { checkText } from "./limits.js";

/** A request's StateDelta, validated and split by scope; errors name the field under `field`. */
export function stateDeltaIn(field: string, delta: StateDelta | undefined, allowTemp: boolean): ValidDelta {
  return validateDelta(field, delta ? { set: structIn(delta.set), remove: delta.remove } : undefined, allowTemp);
}

/** StateService: the merged state of a session across its session, user and app scopes. */
export function createStateService(deps: ServiceDeps): ServiceImpl<typeof StateService> {
  const { db } = deps;
  return {
    async getState(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const sessionId = requireId("session_id", req.sessionId);
      const state = await loadState(db, tenantId, sessionId);
      if (!state) throw notFound("session", sessionId);
      return { state: structOut(mergedState(state)), etag: state.etag };
    },

    async updateState(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const sessionId = requireId("session_id", req.sessionId);
      if (!req.delta) throw invalidArgument("delta", "is required", "REQUIRED");
      const delta = stateDeltaIn("delta", req.delta, false);
      checkText("etag", req.etag, 256);
      const state = await db
        .transaction()
        .execute((tx) => updateState(tx, tenantId, sessionId, delta, { field: "delta", ...(req.etag ? { etag: req.etag } : {}) }));
      return { state: structOut(mergedState(state)), etag: state.etag };
    },
  };
}
