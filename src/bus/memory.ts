import { EventLogSequenceError, type EventLog, type LoggedEvent } from "./event-log.js";

export interface MemoryEventLogOptions<E> {
  /** How long a finished stream stays readable. */
  readonly retentionMs: number;
  /** Upper bound of the (estimated) bytes of finished streams kept; the oldest finished streams go first. */
  readonly maxRetainedBytes: number;
  /** Estimated size of an event in bytes. */
  readonly sizeOf: (event: E) => number;
  /** Clock, for tests. */
  readonly now?: () => number;
  /** A compact form for the events kept, for logs of many small events (an answer's text deltas). */
  readonly packing?: EventPacking<E>;
}

/**
 * Keeps events as strings where they can be: a running stream's events stay in
 * memory until it has ended (and after), so with thousands of open streams the
 * objects of each small event add up. With packing, E must not be a string.
 */
export interface EventPacking<E> {
  /** The event as a string, or undefined to keep it as it is. */
  pack(streamId: string, seq: number, event: E): string | undefined;
  /** The event a packed string stands for. */
  unpack(streamId: string, seq: number, packed: string): E;
}

interface Stream<E> {
  /** The event of seq n at index n - 1, packed or not. */
  readonly events: (E | string)[];
  bytes: number;
  ended: boolean;
  endTime: number;
  /** Readers waiting for the next event; woken (and forgotten) all at once. */
  waiters: Set<() => void>;
}

/** The in-process EventLog of one replica: memory bounded by retention time and bytes of finished streams. */
export interface MemoryEventLog<E> extends EventLog<E> {
  /** Number of streams held (running and finished) and estimated bytes of the finished ones. */
  stats(): { streams: number; retainedBytes: number };
}

/** Creates the in-process event log. */
export function createMemoryEventLog<E>(options: MemoryEventLogOptions<E>): MemoryEventLog<E> {
  const now = options.now ?? Date.now;
  const streams = new Map<string, Stream<E>>();
  // Finished streams in the order they finished: eviction takes from the front.
  const finished = new Map<string, Stream<E>>();
  let retainedBytes = 0;
  let closed = false;
  const packing = options.packing;
  const eventAt = (streamId: string, s: Stream<E>, i: number): E => {
    const item = s.events[i] as E | string;
    return packing && typeof item === "string" ? packing.unpack(streamId, i + 1, item) : (item as E);
  };

  function evict(): void {
    const t = now();
    for (const [id, s] of finished) {
      if (retainedBytes <= options.maxRetainedBytes && s.endTime + options.retentionMs > t) break;
      finished.delete(id);
      streams.delete(id);
      retainedBytes -= s.bytes;
    }
  }

  function wake(s: Stream<E>): void {
    if (s.waiters.size === 0) return;
    const waiters = s.waiters;
    s.waiters = new Set();
    for (const w of waiters) w();
  }

  return {
    async append(streamId, seq, event) {
      if (closed) throw new Error("event log is closed");
      let s = streams.get(streamId);
      if (!s) {
        s = { events: [], bytes: 0, ended: false, endTime: 0, waiters: new Set() };
        streams.set(streamId, s);
      }
      if (s.ended) throw new EventLogSequenceError(`stream ${streamId} has ended`);
      if (seq !== s.events.length + 1) throw new EventLogSequenceError(`stream ${streamId}: expected seq ${s.events.length + 1}, got ${seq}`);
      s.events.push(packing?.pack(streamId, seq, event) ?? event);
      s.bytes += options.sizeOf(event);
      wake(s);
    },
    async end(streamId) {
      const s = streams.get(streamId);
      if (!s || s.ended) return;
      s.ended = true;
      s.endTime = now();
      finished.set(streamId, s);
      retainedBytes += s.bytes;
      wake(s);
      evict();
    },
    async read(streamId, afterSeq, signal) {
      evict();
      const s = streams.get(streamId);
      if (!s) return undefined;
      return {
        async *[Symbol.asyncIterator](): AsyncGenerator<LoggedEvent<E>> {
          // seq n is at index n - 1.
          let i = Math.max(0, afterSeq);
          // One abort listener for the whole read, not one per wait: a stream waits once per event.
          let wakeUp: (() => void) | undefined;
          const onAbort = () => {
            if (!wakeUp) return;
            s.waiters.delete(wakeUp);
            wakeUp();
          };
          signal?.addEventListener("abort", onAbort, { once: true });
          try {
            for (;;) {
              while (i < s.events.length) {
                const event = eventAt(streamId, s, i++);
                yield { seq: i, event };
              }
              if (s.ended || closed || signal?.aborted) return;
              await new Promise<void>((resolve) => {
                wakeUp = resolve;
                s.waiters.add(resolve);
              });
              wakeUp = undefined;
            }
          } finally {
            signal?.removeEventListener("abort", onAbort);
            if (wakeUp) s.waiters.delete(wakeUp);
          }
        },
      };
    },
    async last(streamId) {
      evict();
      const s = streams.get(streamId);
      return s ? { seq: s.events.length, ended: s.ended } : undefined;
    },
    async close() {
      closed = true;
      for (const s of streams.values()) wake(s);
      streams.clear();
      finished.clear();
      retainedBytes = 0;
    },
    stats() {
      return { streams: streams.size, retainedBytes };
    },
  };
}
