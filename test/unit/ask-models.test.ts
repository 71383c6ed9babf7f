import { streamText } from "ai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createModelRegistry } from "../../src/ask/models/registry.js";
import { describeModelError } from "../../src/ask/model-errors.js";
import { loadConfig } from "../../src/config.js";
import { ParleyError } from "../../src/errors.js";
import { startFakeOpenAI, type FakeOpenAI } from "../helpers/fake-openai.js";
import { unavailableError } from "../helpers/fake-models.js";

function notConfigured(fn: () => unknown): ParleyError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ParleyError) return err;
    throw err;
  }
  throw new Error("expected resolve to fail");
}

async function answer(model: Parameters<typeof streamText>[0]["model"]): Promise<string> {
  const r = streamText({ model, prompt: "hi", maxRetries: 0, onError: () => {} });
  let text = "";
  for await (const part of r.fullStream) {
    if (part.type === "text-delta") text += part.text;
    if (part.type === "error") throw part.error;
  }
  return text;
}

describe("createModelRegistry", () => {
  let fake: FakeOpenAI;
  beforeAll(async () => {
    fake = await startFakeOpenAI({ tokens: ["o", "k"] });
  });
  afterAll(async () => {
    await fake?.close();
  });

  it("answers FAILED_PRECONDITION MODEL_PROVIDER_NOT_CONFIGURED naming the env vars when no provider is configured", () => {
    const models = createModelRegistry(loadConfig({}));
    for (const model of ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "openai-compatible:llama3.2", "mystery:x", "no-colon", "builtin:nope"]) {
      const err = notConfigured(() => models.resolve(model));
      expect([err.kind, err.reason, err.metadata.model]).toEqual(["failed_precondition", "MODEL_PROVIDER_NOT_CONFIGURED", model]);
      for (const env of ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_COMPATIBLE_BASE_URL", "PARLEY_DEFAULT_MODEL"]) {
        expect(err.message).toContain(env);
      }
    }
  });

  it("uses builtin:extractive for an empty model only when no provider and no default is configured", () => {
    const bare = createModelRegistry(loadConfig({}));
    expect(bare.resolve("").id).toBe("builtin:extractive");
    const builtin = bare.resolve("builtin:extractive").model;
    expect(typeof builtin === "string" ? builtin : `${builtin.provider}/${builtin.modelId}`).toBe("builtin/extractive");
    // A configured provider without PARLEY_DEFAULT_MODEL: an empty model is still a configuration mistake.
    const withProvider = createModelRegistry(loadConfig({ OPENAI_API_KEY: "sk-test" }));
    const err = notConfigured(() => withProvider.resolve(""));
    expect([err.reason, err.metadata.model]).toEqual(["MODEL_PROVIDER_NOT_CONFIGURED", ""]);
    expect(withProvider.resolve("builtin:extractive").id).toBe("builtin:extractive");
  });

  it("resolves each configured provider and uses PARLEY_DEFAULT_MODEL for an empty model", () => {
    const models = createModelRegistry(
      loadConfig({
        OPENAI_API_KEY: "sk-test",
        ANTHROPIC_API_KEY: "ak-test",
        OPENAI_COMPATIBLE_BASE_URL: "http://127.0.0.1:1/v1",
        PARLEY_DEFAULT_MODEL: "anthropic:claude-sonnet-4-5",
      }),
    );
    const provider = (id: string) => {
      const m = models.resolve(id).model;
      return typeof m === "string" ? m : `${m.provider}/${m.modelId}`;
    };
    expect(provider("openai:gpt-4o-mini")).toBe("openai.chat/gpt-4o-mini");
    expect(provider("anthropic:claude-sonnet-4-5")).toMatch(/^anthropic.*\/claude-sonnet-4-5$/);
    // Model ids keep their own colons.
    expect(provider("openai-compatible:llama3.2:3b")).toMatch(/\/llama3\.2:3b$/);
    expect(models.resolve("").id).toBe("anthropic:claude-sonnet-4-5");
  });

  it("talks to OPENAI_BASE_URL with the key, and to OPENAI_COMPATIBLE_BASE_URL with its optional key", async () => {
    const models = createModelRegistry(
      loadConfig({
        OPENAI_API_KEY: "sk-test",
        OPENAI_BASE_URL: fake.baseURL,
        OPENAI_COMPATIBLE_BASE_URL: fake.baseURL,
        OPENAI_COMPATIBLE_API_KEY: "compat-key",
      }),
    );
    const before = fake.requests.length;
    expect(await answer(models.resolve("openai:gpt-4o-mini").model)).toBe("ok");
    expect(await answer(models.resolve("openai-compatible:qwen").model)).toBe("ok");
    const [viaOpenAI, viaCompatible] = fake.requests.slice(before);
    expect([viaOpenAI!.path, viaOpenAI!.headers.authorization, viaOpenAI!.body.model]).toEqual([
      "/v1/chat/completions",
      "Bearer sk-test",
      "gpt-4o-mini",
    ]);
    expect([viaCompatible!.headers.authorization, viaCompatible!.body.model]).toEqual(["Bearer compat-key", "qwen"]);
    expect(viaCompatible!.body.stream_options).toEqual({ include_usage: true });
  });
});

describe("describeModelError", () => {
  it("maps provider failures to the codes of the Failed event", () => {
    expect(describeModelError(unavailableError()).code).toBe("unavailable");
    const status = (statusCode: number) => describeModelError(Object.assign(unavailableError(), { statusCode })).code;
    expect(status(429)).toBe("resource_exhausted");
    expect(status(401)).toBe("failed_precondition");
    expect(status(404)).toBe("failed_precondition");
    expect(status(504)).toBe("deadline_exceeded");
    expect(status(502)).toBe("unavailable");
    expect(describeModelError(Object.assign(new Error("connect"), { code: "ECONNREFUSED" })).code).toBe("unavailable");
    expect(describeModelError(new TypeError("terminated")).code).toBe("unavailable");
  });
});
