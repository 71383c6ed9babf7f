import { randomUUID } from "node:crypto";
import { getHeapSnapshot } from "node:v8";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { StateService } from "../../gen/parley/v1/state_pb.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { readUntilDeltas } from "../helpers/ask-stream.js";
import { controlledModel, createFakeModels } from "../helpers/fake-models.js";

/**
 * Whether the heap holds a string with these bytes: searched in a heap snapshot's text (which
 * lists every string) as bytes, so the search itself makes no such string.
 */
async function heapHolds(needle: Buffer): Promise<boolean> {
  let tail = Buffer.alloc(0);
  for await (const chunk of getHeapSnapshot()) {
    const text = Buffer.concat([tail, chunk as Buffer]);
    if (text.indexOf(needle) >= 0) return true;
    tail = text.subarray(Math.max(0, text.length - needle.length));
  }
  return false;
}

/** A marker kept as bytes only: no JS string with its text exists until one is made from it. */
const marker = (what: string) => Buffer.from(`${what}-${randomUUID()}`);

// Thousands of Asks can be open on a replica, each for as long as its model talks: what an open
// Ask holds is what it needs until its end, not what only its start needed.
describe("an open Ask", () => {
  let t: TestApp;
  const model = controlledModel();
  beforeAll(async () => {
    t = await createTestApp({ models: createFakeModels({ ctl: model }) });
  });
  afterAll(async () => {
    await t?.close();
  });

  it("does not hold the session state it rendered its instructions with", async () => {
    const { agent } = await t.client(AgentService).createAgent({ agent: { name: "r", model: "fake:ctl", instructions: "Be brief." } });
    const sessions = t.client(SessionService);
    const { session } = await sessions.createSession({ session: { agentId: agent!.id, userId: "u" } });
    const sessionId = session!.id;
    const inState = marker("state-of-the-session");
    await t.client(StateService).updateState({ sessionId, delta: { set: { note: inState.toString() } } });
    // The control: a string this test holds is found.
    const held = marker("held-by-the-test");
    const heldText = held.toString();

    const stream = sessions.ask({ sessionId, content: "go" });
    const call = await model.call(0);
    call.push("a ");
    const first = await readUntilDeltas(stream, 1);
    // The Ask is open (its model has more to say) while the heap is searched.
    expect(await heapHolds(held)).toBe(true);
    expect(await heapHolds(inState)).toBe(false);
    expect(heldText.length).toBeGreaterThan(0);

    call.push("b");
    call.finish();
    const rest = await first.rest;
    expect(rest.at(-1)?.event.case).toBe("completed");
    // The state itself is stored, untouched.
    const { state } = await t.client(StateService).getState({ sessionId });
    expect(Buffer.from(String(state?.note))).toEqual(inState);
  });
});
