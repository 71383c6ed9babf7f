import type { LanguageModel } from "ai";
import type { Config } from "../../config.js";

/** Resolves an agent's `provider:model` string to an AI SDK language model. */
export interface ModelRegistry {
  /**
   * The model for `provider:model` (empty: the configured default). Throws a
   * ParleyError (failed_precondition, reason MODEL_PROVIDER_NOT_CONFIGURED) that
   * explains how to configure a provider when none matches.
   */
  resolve(model: string): { readonly id: string; readonly model: LanguageModel };
}

/** The registry of the providers configured in the environment (openai, anthropic, openai-compatible). */
export function createModelRegistry(config: Config): ModelRegistry {
  void config;
  throw new Error("TODO(ask): implement createModelRegistry");
}
