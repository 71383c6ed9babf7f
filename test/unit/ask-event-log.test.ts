import { describe, expect, it } from "vitest";
import type { EventLog, LoggedEvent } from "../../src/bus/event-log.js";
import { createMemoryEventLog } from "../../src/bus/memory.js";

type Ev = { text: string };

async function drain<E>(it: AsyncIterable<LoggedEvent<E>>): Promise<LoggedEvent<E>[]> {
  const out: LoggedEvent<E>[] = [];
  for await (const e of it) out.push(e);
  return out;
}

const ev = (text: string): Ev => ({ text });

/** The contract every EventLog implementation keeps (a Redis one joins this list). */
const implementations: Array<[string, () => EventLog<Ev>]> = [
  [
    "memory",
    () => createMemoryEventLog<Ev>({ retentionMs: 60_000, maxRetainedBytes: 1 << 20, sizeOf: (e) => e.text.length }),
  ],
];

describe.each(implementations)("EventLog contract: %s", (_name, make) => {
  it("replays the events after afterSeq, then follows live until the stream ends, without gaps or duplicates", async () => {
    const log = make();
    await log.append("s", 1, ev("a"));
    await log.append("s", 2, ev("b"));
    const fromStart = (await log.read("s", 0))!;
    const fromOne = (await log.read("s", 1))!;
    const all = drain(fromStart);
    const tail = drain(fromOne);
    await log.append("s", 3, ev("c"));
    await log.end("s");
    expect((await all).map((e) => [e.seq, e.event.text])).toEqual([
      [1, "a"],
      [2, "b"],
      [3, "c"],
    ]);
    expect((await tail).map((e) => e.seq)).toEqual([2, 3]);
    // After the end: a replay, no waiting.
    expect((await drain((await log.read("s", 2))!)).map((e) => e.seq)).toEqual([3]);
    expect(await drain((await log.read("s", 3))!)).toEqual([]);
    await log.close();
  });

  it("answers undefined for a stream it does not hold", async () => {
    const log = make();
    expect(await log.read("unknown", 0)).toBeUndefined();
    await log.close();
  });

  it("stops following when the reader's signal aborts", async () => {
    const log = make();
    await log.append("s", 1, ev("a"));
    const abort = new AbortController();
    const seen: number[] = [];
    const reading = (async () => {
      for await (const e of (await log.read("s", 0, abort.signal))!) {
        seen.push(e.seq);
        if (e.seq === 1) abort.abort();
      }
    })();
    await reading;
    expect(seen).toEqual([1]);
    await log.close();
  });

  it("rejects an append out of sequence or after the end", async () => {
    const log = make();
    await expect(log.append("s", 2, ev("x"))).rejects.toThrow();
    await log.append("s", 1, ev("a"));
    await expect(log.append("s", 1, ev("a"))).rejects.toThrow();
    await log.end("s");
    await expect(log.append("s", 2, ev("b"))).rejects.toThrow();
    await log.close();
  });
});

describe("in-process EventLog retention", () => {
  it("drops finished streams after the retention time, never running ones", async () => {
    let now = 1_000;
    const log = createMemoryEventLog<Ev>({ retentionMs: 100, maxRetainedBytes: 1 << 20, sizeOf: () => 1, now: () => now });
    await log.append("done", 1, ev("a"));
    await log.end("done");
    await log.append("running", 1, ev("a"));
    now += 99;
    expect(await log.read("done", 0)).toBeDefined();
    now += 1;
    expect(await log.read("done", 0)).toBeUndefined();
    expect(await log.read("running", 0)).toBeDefined();
    expect(log.stats()).toEqual({ streams: 1, retainedBytes: 0 });
  });

  it("bounds the memory of finished streams, dropping the oldest first", async () => {
    const log = createMemoryEventLog<Ev>({ retentionMs: 60_000, maxRetainedBytes: 10, sizeOf: (e) => e.text.length });
    for (const id of ["a", "b", "c"]) {
      await log.append(id, 1, ev("12345"));
      await log.end(id);
    }
    expect(await log.read("a", 0)).toBeUndefined();
    expect(await log.read("b", 0)).toBeDefined();
    expect(await log.read("c", 0)).toBeDefined();
    expect(log.stats().retainedBytes).toBeLessThanOrEqual(10);
  });

  it("lets a follower that started before eviction finish its stream", async () => {
    const log = createMemoryEventLog<Ev>({ retentionMs: 60_000, maxRetainedBytes: 0, sizeOf: () => 1 });
    await log.append("s", 1, ev("a"));
    const following = drain((await log.read("s", 0))!);
    await log.append("s", 2, ev("b"));
    await log.end("s");
    expect((await following).map((e) => e.seq)).toEqual([1, 2]);
    expect(await log.read("s", 0)).toBeUndefined();
  });
});
