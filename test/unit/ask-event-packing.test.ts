import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { AskEventSchema, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import { askEvent, askEventPacking, eventSize } from "../../src/ask/convert.js";
import type { LoggedEvent } from "../../src/bus/event-log.js";
import { createMemoryEventLog } from "../../src/bus/memory.js";

async function drain(it: AsyncIterable<LoggedEvent<AskEvent>> | undefined): Promise<LoggedEvent<AskEvent>[]> {
  const out: LoggedEvent<AskEvent>[] = [];
  for await (const e of it ?? []) out.push(e);
  return out;
}

describe("Ask events kept packed in the in-process event log", () => {
  const askId = "0198a8f0-0000-7000-8000-000000000001";

  it("packs text deltas of their own Ask and seq only, and unpacks them to equal events", () => {
    const delta = askEvent(askId, 2, { case: "textDelta", value: { text: "Hel" } });
    expect(askEventPacking.pack(askId, 2, delta)).toBe("Hel");
    expect(askEventPacking.unpack(askId, 2, "Hel")).toEqual(delta);
    // Anything that the text alone would not rebuild stays as it is.
    expect(askEventPacking.pack("another-ask", 2, delta)).toBeUndefined();
    expect(askEventPacking.pack(askId, 3, delta)).toBeUndefined();
    const withUnknown = create(AskEventSchema, delta);
    withUnknown.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([1]) }];
    expect(askEventPacking.pack(askId, 2, withUnknown)).toBeUndefined();
    const started = askEvent(askId, 1, { case: "started", value: { askId, assistantMessageId: "", model: "m" } });
    expect(askEventPacking.pack(askId, 1, started)).toBeUndefined();
  });

  it("replays and follows an Ask with the events appended, in seq order", async () => {
    const log = createMemoryEventLog<AskEvent>({ retentionMs: 60_000, maxRetainedBytes: 1 << 20, sizeOf: eventSize, packing: askEventPacking });
    const events = [
      askEvent(askId, 1, { case: "started", value: { askId, assistantMessageId: "", model: "m" } }),
      askEvent(askId, 2, { case: "textDelta", value: { text: "Hel" } }),
      askEvent(askId, 3, { case: "textDelta", value: { text: "lo" } }),
      askEvent(askId, 4, { case: "usage", value: { inputTokens: 1n, outputTokens: 2n, totalTokens: 3n } }),
    ];
    for (const e of events.slice(0, 3)) await log.append(askId, Number(e.seq), e);
    const ac = new AbortController();
    const live = drain(await log.read(askId, 0, ac.signal));
    await log.append(askId, 4, events[3]!);
    const end = askEvent(askId, 5, { case: "completed", value: {} });
    await log.append(askId, 5, end);
    await log.end(askId);
    const all = [...events, end].map((event) => ({ seq: Number(event.seq), event }));
    expect(await live).toEqual(all);
    expect(await drain(await log.read(askId, 2))).toEqual(all.slice(2));
  });
});
