import type { AskEvent } from "../../gen/parley/v1/session_pb.js";

/** An Ask or ResumeAsk response stream: each response carries one event. */
type EventStream = AsyncIterable<{ event?: AskEvent | undefined }>;

/** Reads a whole Ask stream. */
export async function collect(stream: EventStream): Promise<AskEvent[]> {
  const out: AskEvent[] = [];
  for await (const r of stream) out.push(r.event!);
  return out;
}

/** Reads an Ask stream one event at a time. */
export function stepper(stream: EventStream) {
  const it = stream[Symbol.asyncIterator]();
  return {
    async next(): Promise<AskEvent> {
      const r = await it.next();
      if (r.done) throw new Error("the stream ended early");
      return r.value.event!;
    },
    async rest(): Promise<AskEvent[]> {
      const out: AskEvent[] = [];
      for (;;) {
        const r = await it.next();
        if (r.done) return out;
        out.push(r.value.event!);
      }
    },
  };
}

/** The kind of each event, e.g. ["started", "textDelta", "completed"]. */
export const casesOf = (events: AskEvent[]) => events.map((e) => e.event.case);

/** Reads an Ask stream until `deltas` text deltas arrived; returns the ask id, those events, and the rest of the stream as a promise. */
export async function readUntilDeltas(stream: EventStream, deltas: number) {
  const it = stream[Symbol.asyncIterator]();
  const events: AskEvent[] = [];
  while (events.filter((e) => e.event.case === "textDelta").length < deltas) {
    const r = await it.next();
    if (r.done) throw new Error("the Ask ended early");
    events.push(r.value.event!);
  }
  const started = events[0]!.event;
  if (started.case !== "started") throw new Error("expected Started first");
  const rest = (async () => {
    const out: AskEvent[] = [];
    for (;;) {
      const r = await it.next();
      if (r.done) return out;
      out.push(r.value.event!);
    }
  })();
  return { askId: started.value.askId, events, rest };
}
