import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { SessionService, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { setTimeout as sleep } from "node:timers/promises";
import { collect, readUntilDeltas } from "../helpers/ask-stream.js";
import { controlledModel, createFakeModels, tokensModel } from "../helpers/fake-models.js";

// Text deltas are coalesced for the event log: fewer entries, the same text, gap-free seqs.
const textOf = (events: AskEvent[]) => events.map((e) => (e.event.case === "textDelta" ? e.event.value.text : "")).join("");

const TOKENS = Array.from({ length: 200 }, (_, i) => `${i},`);

describe("coalesced text deltas", () => {
  let t: TestApp;
  beforeAll(async () => {
    const models = createFakeModels({ burst: tokensModel(TOKENS), trickle: tokensModel(TOKENS.slice(0, 5), { delayMs: 300 }) });
    t = await createTestApp({ models, config: { askDeltaCoalesceMs: 30 } });
  });
  afterAll(async () => {
    await t?.close();
  });

  async function ask(model: string): Promise<AskEvent[]> {
    const { agent } = await t.client(AgentService).createAgent({ agent: { name: "c", model } });
    const sessions = t.client(SessionService);
    const { session } = await sessions.createSession({ session: { agentId: agent!.id, userId: "u" } });
    return collect(sessions.ask({ sessionId: session!.id, content: "go" }));
  }

  it("merges a burst of tokens into fewer deltas without changing the text or leaving seq gaps", async () => {
    const events = await ask("fake:burst");
    const deltas = events.filter((e) => e.event.case === "textDelta");
    expect(deltas.length).toBeGreaterThan(0);
    expect(deltas.length).toBeLessThan(TOKENS.length);
    expect(textOf(events)).toBe(TOKENS.join(""));
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => BigInt(i + 1)));
    // A replay from the log is the same events.
    const askId = events[0]!.event.case === "started" ? events[0]!.event.value.askId : "";
    const replay = await collect(t.client(SessionService).resumeAsk({ askId, afterSeq: 0n }));
    expect(replay).toEqual(events);
  });

  it("logs tokens that come slower than the window one by one", async () => {
    const events = await ask("fake:trickle");
    expect(events.filter((e) => e.event.case === "textDelta").map((e) => (e.event.value as { text: string }).text)).toEqual(
      TOKENS.slice(0, 5),
    );
  });
});

/** An app whose agent answers with a model the test drives, and an Ask started on a new session. */
async function startControlledAsk(config: NonNullable<Parameters<typeof createTestApp>[0]>["config"]) {
  const model = controlledModel();
  const t = await createTestApp({ models: createFakeModels({ ctl: model }), config });
  try {
    const { agent } = await t.client(AgentService).createAgent({ agent: { name: "c", model: "fake:ctl" } });
    const sessions = t.client(SessionService);
    const { session } = await sessions.createSession({ session: { agentId: agent!.id, userId: "u" } });
    const stream = sessions.ask({ sessionId: session!.id, content: "go" });
    return { t, stream, call: await model.call(0) };
  } catch (err) {
    await t.close();
    throw err;
  }
}

describe("a delta after a quiet stretch", () => {
  it("goes out at once when the window since the last delta has passed; only deltas that come sooner are held", async () => {
    const { t, stream, call } = await startControlledAsk({ askDeltaCoalesceMs: 300 });
    try {
      call.push("a ");
      const first = await readUntilDeltas(stream, 1);
      // Quieter than the window: the next token waits for nothing, the one right after it is held.
      await sleep(450);
      call.push("b ");
      call.push("c ");
      call.finish();
      const tail = await first.rest;
      const deltas = [...first.events, ...tail].flatMap((e) => (e.event.case === "textDelta" ? [e.event.value.text] : []));
      expect(deltas).toEqual(["a ", "b ", "c "]);
    } finally {
      await t.close();
    }
  });
});

describe("partial answers flushed while deltas are held for coalescing", () => {
  it("store only text whose deltas are in the log, so whoever resumes after a crash has seen all of the stored answer", async () => {
    // A window far longer than the test keeps later tokens out of the log; the flush ticks every 10 ms.
    const { t, stream, call } = await startControlledAsk({ askDeltaCoalesceMs: 60_000, flushIntervalMs: 10 });
    try {
      call.push("first ");
      const { events, rest } = await readUntilDeltas(stream, 1);
      const started = events[0]!.event;
      const messageId = started.case === "started" ? started.value.assistantMessageId : "";
      const stored = async () =>
        (await t.app.db.selectFrom("messages").select("content").where("id", "=", messageId).executeTakeFirstOrThrow()).content;
      // The first delta is logged at once; these two wait in the window.
      call.push("held ");
      call.push("back");
      while ((await stored()) === "") await sleep(10);
      // Thirty flush ticks: none of them may write text the log does not have.
      await sleep(300);
      expect(await stored()).toBe("first ");

      call.finish();
      const tail = await rest;
      expect(textOf([...events, ...tail])).toBe("first held back");
      expect(await stored()).toBe("first held back");
    } finally {
      await t.close();
    }
  });
});
