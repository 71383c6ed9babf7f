import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { AskStatus, SessionService } from "../../gen/parley/v1/session_pb.js";
import { bearer } from "../helpers/app.js";
import { stepper } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { startFakeOpenAI, type FakeOpenAI, type FakeOpenAIReply } from "../helpers/fake-openai.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

/** The replies of the fake provider, chosen by the question (the last user message of the request). */
const replies: Record<string, FakeOpenAIReply> = {
  complete: { tokens: ["Hel", "lo", "!"], usage: { promptTokens: 12, completionTokens: 3 } },
  stall: { tokens: ["Once ", "upon ", "a ", "time"], stallAfter: 2 },
  reject: { status: 401 },
};

function lastUserContent(body: any): string {
  const msgs: Array<{ role: string; content: unknown }> = body?.messages ?? [];
  const last = [...msgs].reverse().find((m) => m.role === "user");
  return typeof last?.content === "string" ? last.content : "";
}

describe.each(backends())("Ask through openai-compatible against a local HTTP server, over gRPC (%s)", (backend) => {
  let fake: FakeOpenAI;
  let s: TestServer;
  let sessions: Client<typeof SessionService>;
  let messages: Client<typeof MessageService>;
  let agentId: string;

  beforeAll(async () => {
    fake = await startFakeOpenAI({ reply: (r) => replies[lastUserContent(r.body)] ?? {} });
    s = await startTestServer({
      backend,
      env: { OPENAI_COMPATIBLE_BASE_URL: fake.baseURL },
      config: { flushIntervalMs: 5 },
    });
    const transport = createGrpcTransport({ baseUrl: s.url, interceptors: [bearer(s.adminKey)] });
    sessions = createClient(SessionService, transport);
    messages = createClient(MessageService, transport);
    const agent = await createClient(AgentService, transport).createAgent({
      agent: {
        name: "local llm",
        model: "openai-compatible:llama3.2:3b",
        instructions: "Answer briefly.",
        generation: { temperature: 0.2, maxOutputTokens: 64 },
      },
    });
    agentId = agent.agent!.id;
  });
  afterAll(async () => {
    await s?.close();
    await fake?.close();
  });

  async function newSession(): Promise<string> {
    return (await sessions.createSession({ session: { agentId, userId: "u" } })).session!.id;
  }

  /** Starts an Ask on the "stall" script and reads until the provider has sent its first two tokens. */
  async function stalledAsk(signal?: AbortSignal) {
    const sessionId = await newSession();
    const index = fake.requests.length;
    const stream = stepper(sessions.ask({ sessionId, content: "stall" }, signal ? { signal } : {}));
    const started = await stream.next();
    if (started.event.case !== "started") throw new Error("expected Started");
    let text = "";
    while (text !== "Once upon ") {
      const e = await stream.next();
      if (e.event.case === "textDelta") text += e.event.value.text;
    }
    const request = await fake.request(index);
    expect(request.aborted).toBe(false);
    return { stream, started: started.event.value, request };
  }

  it("streams the provider's answer and its usage, sending instructions, history and parameters", async () => {
    const sessionId = await newSession();
    const index = fake.requests.length;
    const events = await stepper(sessions.ask({ sessionId, content: "complete" })).rest();
    expect(events.map((e) => e.event.case)).toEqual(["started", "textDelta", "textDelta", "textDelta", "usage", "completed"]);
    const done = events.at(-1)!.event;
    if (done.case !== "completed") throw new Error("expected Completed");
    expect(done.value.message?.content).toBe("Hello!");
    expect(done.value.message?.model).toBe("openai-compatible:llama3.2:3b");
    const usage = events.find((e) => e.event.case === "usage")!.event.value;
    expect(usage).toMatchObject({ inputTokens: 12n, outputTokens: 3n, totalTokens: 15n });

    const body = (await fake.request(index)).body;
    expect(body.model).toBe("llama3.2:3b");
    expect(body.stream).toBe(true);
    expect(body.temperature).toBe(0.2);
    expect(body.max_tokens).toBe(64);
    expect(body.messages).toEqual([
      { role: "system", content: "Answer briefly." },
      { role: "user", content: "complete" },
    ]);
  });

  it("CancelAsk aborts the provider's HTTP request and keeps the partial answer as CANCELLED", async () => {
    const { stream, started, request } = await stalledAsk();
    const ask = (await sessions.cancelAsk({ askId: started.askId })).ask!;
    expect(ask.status).toBe(AskStatus.CANCELLED);
    expect(await request.done).toBe("aborted");
    expect(request.aborted).toBe(true);
    expect(request.tokensSent).toBe(2);

    const rest = await stream.rest();
    const end = rest.at(-1)!.event;
    if (end.case !== "cancelled") throw new Error("expected Cancelled");
    expect(end.value.reason).toBe("cancel_ask");
    expect([end.value.message?.status, end.value.message?.content]).toEqual([MessageStatus.CANCELLED, "Once upon "]);
    const stored = (await messages.getMessage({ messageId: started.assistantMessageId })).message!;
    expect([stored.status, stored.content]).toEqual([MessageStatus.CANCELLED, "Once upon "]);
  });

  it("the client's own cancellation aborts the provider's HTTP request and keeps the partial answer", async () => {
    const abort = new AbortController();
    const { started, request } = await stalledAsk(abort.signal);
    abort.abort();
    expect(await request.done).toBe("aborted");
    await vi.waitFor(
      async () => expect((await sessions.getAsk({ askId: started.askId })).ask?.status).toBe(AskStatus.CANCELLED),
      { timeout: 10_000, interval: 20 },
    );
    const stored = (await messages.getMessage({ messageId: started.assistantMessageId })).message!;
    expect([stored.status, stored.content]).toEqual([MessageStatus.CANCELLED, "Once upon "]);
  });

  it("reports a provider rejection as Failed, and the session takes the next Ask", async () => {
    const sessionId = await newSession();
    const events = await stepper(sessions.ask({ sessionId, content: "reject" })).rest();
    const end = events.at(-1)!.event;
    if (end.case !== "failed") throw new Error("expected Failed");
    expect(end.value.code).toBe("failed_precondition");
    expect(end.value.assistantMessage?.status).toBe(MessageStatus.FAILED);
    const next = await stepper(sessions.ask({ sessionId, content: "complete" })).rest();
    expect(next.at(-1)?.event.case).toBe("completed");
  });
});
