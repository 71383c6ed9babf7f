import type { ServiceImpl } from "@connectrpc/connect";
import type { SessionService } from "../../gen/parley/v1/session_pb.js";
import type { ServiceDeps } from "../app.js";
import type { ModelRegistry } from "./models/registry.js";

export interface AskRuntimeDeps extends ServiceDeps {
  readonly models: ModelRegistry;
  /** Lease owner id of this process. */
  readonly replicaId: string;
}

/** Runs Asks: the three SessionService handlers and the shutdown drain. */
export interface AskRuntime {
  readonly handlers: Pick<ServiceImpl<typeof SessionService>, "ask" | "cancelAsk" | "getAsk">;
  /** Number of Asks running in this process. */
  running(): number;
  /** Waits up to graceMs for running Asks to finish, then cancels the rest (reason "shutdown"), keeping partial answers. */
  drain(graceMs: number): Promise<void>;
}

export function createAskRuntime(deps: AskRuntimeDeps): AskRuntime {
  void deps;
  throw new Error("TODO(ask): implement createAskRuntime");
}
