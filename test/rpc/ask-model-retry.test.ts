import { APICallError } from "ai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { SessionService, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { collect } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { createFakeModels, tokensModel } from "../helpers/fake-models.js";

/** A provider's refusal; retry-after-ms 0 keeps the retry immediate. */
function refusal(status: number, isRetryable: boolean): APICallError {
  return new APICallError({
    message: `HTTP ${status}`,
    url: "http://provider.test/v1/chat/completions",
    requestBodyValues: {},
    statusCode: status,
    responseHeaders: { "retry-after-ms": "0" },
    isRetryable,
  });
}

/** A model that refuses its first `failures` calls with `error`, then answers "fine". */
function flaky(failures: number, error: APICallError) {
  const inner = tokensModel(["fine"]);
  let calls = 0;
  const model = inner.model;
  const doStream = model.doStream.bind(model);
  model.doStream = async (options) => {
    calls++;
    if (calls <= failures) throw error;
    return doStream(options);
  };
  return { model, attempts: () => calls };
}

describe.each(backends())("model calls refused before streaming, on %s", (backend) => {
  let t: TestApp;
  const overloaded = flaky(2, refusal(503, true));
  const tooMany = flaky(5, refusal(429, true));
  const badKey = flaky(1, refusal(401, false));

  beforeAll(async () => {
    t = await createTestApp({ backend, models: createFakeModels({ overloaded: overloaded.model, tooMany: tooMany.model, badKey: badKey.model }) });
  });
  afterAll(async () => {
    await t?.close();
  });

  async function ask(model: string): Promise<AskEvent[]> {
    const { agent } = await t.client(AgentService).createAgent({ agent: { name: model, model: `fake:${model}` } });
    const sessions = t.client(SessionService);
    const { session } = await sessions.createSession({ session: { agentId: agent!.id, userId: "u" } });
    return collect(sessions.ask({ sessionId: session!.id, content: "hi" }));
  }

  it("retries a retryable refusal twice and then answers", async () => {
    const events = await ask("overloaded");
    expect(events.at(-1)!.event.case).toBe("completed");
    expect(events.filter((e) => e.event.case === "textDelta").map((e) => (e.event.value as { text: string }).text)).toEqual(["fine"]);
    expect(overloaded.attempts()).toBe(3);
  });

  it("gives up after the third refusal with the provider's code (429: RESOURCE_EXHAUSTED)", async () => {
    const events = await ask("tooMany");
    const end = events.at(-1)!.event;
    expect(end.case).toBe("failed");
    expect(end.case === "failed" && end.value.code).toBe("resource_exhausted");
    expect(tooMany.attempts()).toBe(3);
  });

  it("does not retry a refusal that is not retryable (401)", async () => {
    const events = await ask("badKey");
    const end = events.at(-1)!.event;
    expect(end.case).toBe("failed");
    expect(end.case === "failed" && end.value.code).toBe("failed_precondition");
    expect(badKey.attempts()).toBe(1);
  });
});
