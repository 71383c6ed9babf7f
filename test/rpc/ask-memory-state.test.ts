import { Code, type Client } from "@connectrpc/connect";
import { MockLanguageModelV4 } from "ai/test";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MemoryService, MemoryType } from "../../gen/parley/v1/memory_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { StateService } from "../../gen/parley/v1/state_pb.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { casesOf, collect } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { expectRejected, failure, fieldsOf } from "../helpers/errors.js";
import { createFakeModels, tokensModel, type FakeModel } from "../helpers/fake-models.js";

type Prompt = FakeModel["calls"][number]["prompt"];

/** The system text a model call received (the rendered instructions). */
function systemOf(prompt: Prompt): string {
  return prompt
    .filter((m) => m.role === "system")
    .map((m) => m.content)
    .join("\n");
}

/** A model that answers "Noted." when streaming and returns `facts` as its structured output. */
function extractingModel(facts: { fact: string; quality: number }[]): FakeModel & { generateCalls: Prompt[] } {
  const stream = tokensModel(["Noted."]);
  const generateCalls: Prompt[] = [];
  const model = new MockLanguageModelV4({
    provider: "fake",
    modelId: "extracting",
    doStream: stream.model.doStream,
    doGenerate: async (options) => {
      generateCalls.push(options.prompt);
      return {
        content: [{ type: "text", text: JSON.stringify({ facts }) }],
        finishReason: { unified: "stop", raw: "stop" },
        usage: {
          inputTokens: { total: 10, noCache: undefined, cacheRead: undefined, cacheWrite: undefined },
          outputTokens: { total: 10, text: undefined, reasoning: undefined },
        },
        warnings: [],
      };
    },
  });
  return { model, calls: stream.calls, generateCalls };
}

describe.each(backends())("Ask with memory and state on %s", (backend) => {
  let t: TestApp;
  let agents: Client<typeof AgentService>;
  let sessions: Client<typeof SessionService>;
  let memory: Client<typeof MemoryService>;
  let state: Client<typeof StateService>;
  const recorder = tokensModel(["ok"]);
  const extractor = extractingModel([
    { fact: "The user goes hiking in the Alps every summer", quality: 0.9 },
    { fact: "The user might own a cat", quality: 0.3 },
  ]);

  const stored = async () => {
    const db = t.app.db;
    const [s, u, m, a] = await Promise.all([
      db.selectFrom("sessions").select(["id", "state", "last_seq"]).orderBy("id").execute(),
      db.selectFrom("user_states").select(["user_id", "state"]).orderBy("user_id").execute(),
      db.selectFrom("messages").select(["id"]).orderBy("id").execute(),
      db.selectFrom("asks").select(["id"]).orderBy("id").execute(),
    ]);
    return JSON.stringify({ s, u, m, a });
  };

  beforeAll(async () => {
    t = await createTestApp({ backend, models: createFakeModels({ recorder, extractor }) });
    agents = t.client(AgentService);
    sessions = t.client(SessionService);
    memory = t.client(MemoryService);
    state = t.client(StateService);
  });
  afterAll(async () => {
    await t?.close();
  });

  async function newSession(agent: { instructions?: string; memory?: { enabled?: boolean; extract?: boolean; minQuality?: number; maxItems?: number }; model?: string }, userId: string) {
    const a = (await agents.createAgent({ agent: { name: "a", model: "fake:recorder", ...agent } })).agent!;
    const s = (await sessions.createSession({ session: { agentId: a.id, userId } })).session!;
    return { agentId: a.id, sessionId: s.id };
  }

  it("renders instructions with the turn's state, temp: keys included, and never stores temp: keys", async () => {
    const { sessionId } = await newSession(
      {
        instructions:
          "Hello {{user:name}} on the {{app:plan}} plan; mood {{state.mood}}; nonce {{temp:nonce}}; missing [{{state.nope}}]; prefs {{user:prefs}}",
      },
      "ann",
    );
    await state.updateState({ sessionId, delta: { set: { "app:plan": "pro", "user:prefs": { units: "metric" } } } });
    const before = recorder.calls.length;
    const events = await collect(
      sessions.ask({ sessionId, content: "hi", stateDelta: { set: { "user:name": "Ann <3", mood: "happy", "temp:nonce": "n-1" } } }),
    );
    expect(casesOf(events).at(-1)).toBe("completed");
    expect(systemOf(recorder.calls[before]!.prompt)).toBe(
      'Hello Ann <3 on the pro plan; mood happy; nonce n-1; missing []; prefs {"units":"metric"}',
    );
    const merged = (await state.getState({ sessionId })).state;
    expect(merged).toEqual({ mood: "happy", "user:name": "Ann <3", "app:plan": "pro", "user:prefs": { units: "metric" } });
    const rows = JSON.stringify(await t.app.db.selectFrom("sessions").select("state").where("id", "=", sessionId).execute());
    expect(rows).not.toContain("nonce");

    // The next turn has no temp: keys and sees the stored ones.
    await collect(sessions.ask({ sessionId, content: "again", stateDelta: { set: { mood: "calm" } } }));
    expect(systemOf(recorder.calls.at(-1)!.prompt)).toBe(
      'Hello Ann <3 on the pro plan; mood calm; nonce ; missing []; prefs {"units":"metric"}',
    );
  });

  it("stores the delta with the user message, or neither", async () => {
    const { sessionId } = await newSession({}, "bo");
    await state.updateState({ sessionId, delta: { set: { "user:a": "x".repeat(200 * 1024) } } });
    // The delta cannot be stored (its scope would pass 256 KiB): no Ask, no message.
    const err = await expectRejected(
      stored,
      () => collect(sessions.ask({ sessionId, content: "hi", stateDelta: { set: { "user:b": "y".repeat(100 * 1024) } } })),
      Code.InvalidArgument,
      { reason: "STATE_TOO_LARGE" },
    );
    expect(fieldsOf(err)).toEqual(["state_delta.set"]);
    await expectRejected(
      stored,
      () => collect(sessions.ask({ sessionId, content: "hi", stateDelta: { set: { "bad key": 1 } } })),
      Code.InvalidArgument,
      { field: "state_delta.set" },
    );
    // The message cannot be stored (archived session): the delta is not applied either.
    await sessions.archiveSession({ sessionId });
    await expectRejected(
      stored,
      () => collect(sessions.ask({ sessionId, content: "hi", stateDelta: { set: { touched: true } } })),
      Code.FailedPrecondition,
    );
    expect((await state.getState({ sessionId })).state!.touched).toBeUndefined();
  });

  it("injects the user's relevant memories, from any of their sessions, and never another user's", async () => {
    const { agentId, sessionId } = await newSession({ memory: { enabled: true, maxItems: 2 } }, "cy");
    await memory.addMemory({ memory: { type: MemoryType.LONG, userId: "cy", content: "Cy is training for the Berlin marathon" } });
    await memory.addMemory({ memory: { type: MemoryType.LONG, userId: "dee", content: "Dee is training for the Paris marathon" } });
    const before = recorder.calls.length;
    await collect(sessions.ask({ sessionId, content: "How should I plan my marathon training this week?" }));
    const system = systemOf(recorder.calls[before]!.prompt);
    expect(system).toContain("Cy is training for the Berlin marathon");
    expect(system).not.toContain("Dee");

    // Memory disabled: nothing injected.
    const off = await newSession({}, "cy");
    const n = recorder.calls.length;
    await collect(sessions.ask({ sessionId: off.sessionId, content: "How should I plan my marathon training?" }));
    expect(systemOf(recorder.calls[n]!.prompt)).toBe("");

    // The agent's memory settings round-trip and can be updated by mask.
    const got = (await agents.getAgent({ agentId })).agent!;
    expect(got.memory).toMatchObject({ enabled: true, maxItems: 2, extract: false });
    const upd = await agents.updateAgent({ agent: { id: agentId, memory: { maxItems: 7 } }, updateMask: { paths: ["memory.max_items"] } });
    expect(upd.agent!.memory).toMatchObject({ enabled: true, maxItems: 7 });
  });

  it("extracts durable facts after a completed Ask and keeps those above min_quality", async () => {
    const { sessionId } = await newSession({ model: "fake:extractor", memory: { extract: true } }, "eli");
    const events = await collect(sessions.ask({ sessionId, content: "I go hiking in the Alps every summer, and I think I have a cat" }));
    expect(casesOf(events).at(-1)).toBe("completed");
    await vi.waitFor(
      async () => {
        const listed = await memory.listMemories({ userId: "eli" });
        expect(listed.memories.map((m) => [m.content, m.type, m.quality])).toEqual([
          ["The user goes hiking in the Alps every summer", MemoryType.LONG, 0.9],
        ]);
      },
      { timeout: 10_000, interval: 20 },
    );
    expect(JSON.stringify(extractor.generateCalls.at(-1))).toContain("hiking in the Alps");
    // A new session of the same user finds it.
    const next = (await sessions.createSession({ session: { agentId: (await sessions.getSession({ sessionId })).session!.agentId, userId: "eli" } })).session!;
    const found = await memory.searchMemory({ query: "hiking", userId: "eli", sessionId: next.id });
    expect(found.hits).toHaveLength(1);
  });

  it("rejects invalid memory settings and instruction templates, naming the field", async () => {
    for (const [agent, field] of [
      [{ memory: { maxItems: 101 } }, "agent.memory.max_items"],
      [{ memory: { minQuality: 1.5 } }, "agent.memory.min_quality"],
      [{ instructions: "Hi {{#state.x}} unclosed" }, "agent.instructions"],
    ] as const) {
      const err = await failure(agents.createAgent({ agent: { name: "bad", ...agent } }));
      expect(Code[err.code]).toBe(Code[Code.InvalidArgument]);
      expect(fieldsOf(err)).toEqual([field]);
    }
  });
});
