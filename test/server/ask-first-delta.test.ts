import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { MockLanguageModelV4 } from "ai/test";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { bearer } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { createFakeModels } from "../helpers/fake-models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

type StreamPart = Awaited<ReturnType<MockLanguageModelV4["doStream"]>>["stream"] extends ReadableStream<infer P> ? P : never;

// A model whose whole answer is ready at once (a burst; a fast local model): reading it
// never waits for I/O. The first delta must still leave the server before the burst is read.
const TOKENS = 20_000;

describe.each(backends())("the first delta of a burst, over HTTP/2 (%s)", (backend) => {
  let s: TestServer;
  let pulled = 0;

  beforeAll(async () => {
    const burst = new MockLanguageModelV4({
      provider: "fake",
      modelId: "burst",
      doStream: async () => {
        pulled = 0;
        return {
          stream: new ReadableStream<StreamPart>(
            {
              start(c) {
                c.enqueue({ type: "stream-start", warnings: [] } as StreamPart);
                c.enqueue({ type: "text-start", id: "t0" } as StreamPart);
              },
              pull(c) {
                if (pulled < TOKENS) {
                  pulled++;
                  c.enqueue({ type: "text-delta", id: "t0", delta: "x" } as StreamPart);
                  return;
                }
                c.enqueue({ type: "text-end", id: "t0" } as StreamPart);
                c.enqueue({
                  type: "finish",
                  finishReason: { unified: "stop", raw: "stop" },
                  usage: {
                    inputTokens: { total: 1, noCache: undefined, cacheRead: undefined, cacheWrite: undefined },
                    outputTokens: { total: TOKENS, text: undefined, reasoning: undefined },
                  },
                } as StreamPart);
                c.close();
              },
            },
            { highWaterMark: 0 },
          ),
        };
      },
    });
    s = await startTestServer({ backend, models: createFakeModels({ burst }) });
  });
  afterAll(async () => {
    await s?.close();
  });

  it("reaches the client while the model's remaining parts are still being read", async () => {
    const transport = createGrpcTransport({ baseUrl: s.url, interceptors: [bearer(s.adminKey)] });
    const { agent } = await createClient(AgentService, transport).createAgent({ agent: { name: "b", model: "fake:burst" } });
    const sessions = createClient(SessionService, transport);
    const { session } = await sessions.createSession({ session: { agentId: agent!.id, userId: "u" } });
    let pulledAtFirst = -1;
    let text = "";
    let last = "";
    for await (const res of sessions.ask({ sessionId: session!.id, content: "go" })) {
      const e = res.event!.event;
      last = e.case ?? "";
      if (e.case !== "textDelta") continue;
      if (pulledAtFirst < 0) pulledAtFirst = pulled;
      text += e.value.text;
    }
    expect(last).toBe("completed");
    expect(text).toBe("x".repeat(TOKENS));
    // Without yielding to the event loop, the server read all of the burst before it wrote anything.
    expect(pulledAtFirst).toBeGreaterThan(0);
    expect(pulledAtFirst).toBeLessThan(TOKENS / 2);
  });
});
