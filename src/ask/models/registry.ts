import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import type { LanguageModel } from "ai";
import type { Config } from "../../config.js";
import { failedPrecondition, type ParleyError } from "../../errors.js";
import { BUILTIN_EXTRACTIVE, createBuiltinExtractiveModel } from "./builtin-extractive.js";

/** Resolves an agent's `provider:model` string to an AI SDK language model. */
export interface ModelRegistry {
  /**
   * The model for `provider:model` (empty: the configured default; with no
   * provider configured at all, builtin:extractive). Throws a
   * ParleyError (failed_precondition, reason MODEL_PROVIDER_NOT_CONFIGURED) that
   * explains how to configure a provider when none matches.
   */
  resolve(model: string): { readonly id: string; readonly model: LanguageModel };
}

const HOW_TO =
  "Configure a provider with environment variables: OPENAI_API_KEY (optionally OPENAI_BASE_URL) for `openai:<model>`, " +
  "ANTHROPIC_API_KEY (optionally ANTHROPIC_BASE_URL) for `anthropic:<model>`, " +
  "OPENAI_COMPATIBLE_BASE_URL (optionally OPENAI_COMPATIBLE_API_KEY) for `openai-compatible:<model>` " +
  "(Ollama, vLLM, LM Studio, llama.cpp server); PARLEY_DEFAULT_MODEL is used by agents whose model is empty. " +
  "`builtin:extractive` needs no provider: it quotes the agent's knowledge with citations.";

/** The FAILED_PRECONDITION an Ask gets when its model cannot be served; `why` names the missing piece. */
export function modelNotConfigured(model: string, why: string): ParleyError {
  return failedPrecondition(`${why}. ${HOW_TO}`, "MODEL_PROVIDER_NOT_CONFIGURED", { model });
}

/** Splits `provider:model` at the first colon (model ids such as `llama3.2:3b` keep theirs). */
export function parseModelId(id: string): { provider: string; name: string } | undefined {
  const i = id.indexOf(":");
  if (i <= 0 || i === id.length - 1) return undefined;
  return { provider: id.slice(0, i), name: id.slice(i + 1) };
}

/** The registry of the providers configured in the environment (openai, anthropic, openai-compatible). */
export function createModelRegistry(config: Config): ModelRegistry {
  const p = config.providers;
  // Chat Completions rather than the Responses API: every OpenAI-style proxy a
  // user may put behind OPENAI_BASE_URL speaks it.
  const openai = p.openai
    ? createOpenAI({ apiKey: p.openai.apiKey, ...(p.openai.baseURL ? { baseURL: p.openai.baseURL } : {}) })
    : undefined;
  const anthropic = p.anthropic
    ? createAnthropic({ apiKey: p.anthropic.apiKey, ...(p.anthropic.baseURL ? { baseURL: p.anthropic.baseURL } : {}) })
    : undefined;
  const compatible = p.openaiCompatible
    ? createOpenAICompatible({
        name: p.openaiCompatible.name,
        baseURL: p.openaiCompatible.baseURL,
        ...(p.openaiCompatible.apiKey ? { apiKey: p.openaiCompatible.apiKey } : {}),
        // Usage is only streamed when asked for (stream_options.include_usage).
        includeUsage: true,
      })
    : undefined;
  // A bare machine (no provider, no default) answers with the built-in model, so a first run works offline.
  const fallback = !openai && !anthropic && !compatible ? BUILTIN_EXTRACTIVE : "";
  let builtin: LanguageModel | undefined;

  return {
    resolve(model) {
      const id = model || config.defaultModel || fallback;
      if (!id) throw modelNotConfigured("", "The agent has no model and PARLEY_DEFAULT_MODEL is not set");
      const parsed = parseModelId(id);
      if (!parsed) throw modelNotConfigured(id, `Model "${id}" is not of the form provider:model`);
      switch (parsed.provider) {
        case "builtin":
          if (parsed.name !== "extractive") throw modelNotConfigured(id, `Unknown built-in model "${parsed.name}" (the built-in model is ${BUILTIN_EXTRACTIVE})`);
          builtin ??= createBuiltinExtractiveModel();
          return { id, model: builtin };
        case "openai":
          if (!openai) throw modelNotConfigured(id, `Provider "openai" is not configured: set OPENAI_API_KEY`);
          return { id, model: openai.chat(parsed.name) };
        case "anthropic":
          if (!anthropic) throw modelNotConfigured(id, `Provider "anthropic" is not configured: set ANTHROPIC_API_KEY`);
          return { id, model: anthropic(parsed.name) };
        case "openai-compatible":
          if (!compatible) {
            throw modelNotConfigured(id, `Provider "openai-compatible" is not configured: set OPENAI_COMPATIBLE_BASE_URL`);
          }
          return { id, model: compatible.chatModel(parsed.name) };
        default:
          throw modelNotConfigured(id, `Unknown model provider "${parsed.provider}"`);
      }
    },
  };
}
