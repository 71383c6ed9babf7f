import { randomBytes } from "node:crypto";
import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { EventLogSequenceError, type EventLog, type LoggedEvent } from "../../src/bus/event-log.js";
import { createMemoryEventLog } from "../../src/bus/memory.js";
import { createRedisEventLog, openRedis, type RedisConnections } from "../../src/bus/redis.js";
import { createReplicatedEventLog } from "../../src/bus/replicated.js";
import { testRedisUrl } from "../helpers/databases.js";

type Ev = { text: string };

async function drain<E>(it: AsyncIterable<LoggedEvent<E>>): Promise<LoggedEvent<E>[]> {
  const out: LoggedEvent<E>[] = [];
  for await (const e of it) out.push(e);
  return out;
}

const ev = (text: string): Ev => ({ text });

const silent = pino({ level: "silent" });
const memory = () => createMemoryEventLog<Ev>({ retentionMs: 60_000, maxRetainedBytes: 1 << 20, sizeOf: (e) => e.text.length });
const redisUrl = testRedisUrl();
const connections: RedisConnections[] = [];
afterAll(async () => {
  for (const c of connections) await c.close();
});

/** A Redis log under a key prefix of its own, so that test files and runs never see each other's streams. */
async function redisLog(options: { maxLen?: number; retentionMs?: number } = {}): Promise<{ log: EventLog<Ev>; redis: RedisConnections }> {
  const redis = openRedis(redisUrl!, silent, `parley-test:${randomBytes(6).toString("hex")}:`);
  connections.push(redis);
  if (!(await redis.ready(5_000))) throw new Error(`Redis at ${redisUrl} is not reachable`);
  const log = createRedisEventLog<Ev>({
    redis,
    retentionMs: options.retentionMs ?? 60_000,
    maxLen: options.maxLen ?? 1000,
    encode: (e) => new TextEncoder().encode(JSON.stringify(e)),
    decode: (b) => JSON.parse(new TextDecoder().decode(b)) as Ev,
    // Short, so that the re-issue of the shared blocking read is exercised too.
    blockMs: 200,
  });
  return { log, redis };
}

/** The contract every EventLog implementation keeps. */
const implementations: Array<[string, () => EventLog<Ev> | Promise<EventLog<Ev>>]> = [["memory", memory]];
if (redisUrl) {
  implementations.push(["redis", async () => (await redisLog()).log]);
  // Read from another process's point of view: the local log is empty, the shared copy is what it sees.
  implementations.push([
    "replicated (read through the shared copy)",
    async () => {
      const { log: shared, redis } = await redisLog();
      const writer = createReplicatedEventLog({ local: memory(), shared, sharedReachable: redis.reachable, log: silent });
      return {
        append: (id, seq, e) => writer.append(id, seq, e),
        end: (id) => writer.end(id),
        last: async (id) => {
          // The copy is asynchronous: wait until it is there before asking the shared log.
          await until(async () => (await shared.last(id))?.seq === (await writer.last(id))?.seq);
          return shared.last(id);
        },
        read: async (id, after, signal) => {
          await until(async () => {
            const w = await writer.last(id);
            const r = await shared.last(id);
            return w?.seq === r?.seq && w?.ended === r?.ended;
          });
          return shared.read(id, after, signal);
        },
        close: () => writer.close(),
      };
    },
  ]);
}

async function until(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200 && !(await check()); i++) await new Promise((r) => setTimeout(r, 10));
}

describe.each(implementations)("EventLog contract: %s", (_name, make) => {
  it("replays the events after afterSeq, then follows live until the stream ends, without gaps or duplicates", async () => {
    const log = await make();
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
    const log = await make();
    expect(await log.read("unknown", 0)).toBeUndefined();
    await log.close();
  });

  it("stops following when the reader's signal aborts", async () => {
    const log = await make();
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

  it("tells where a stream stands: last seq and whether it ended", async () => {
    const log = await make();
    expect(await log.last("s")).toBeUndefined();
    await log.append("s", 1, ev("a"));
    await log.append("s", 2, ev("b"));
    expect(await log.last("s")).toEqual({ seq: 2, ended: false });
    await log.end("s");
    expect(await log.last("s")).toEqual({ seq: 2, ended: true });
    await log.close();
  });

  it("delivers every event exactly once to followers that join at any point of a busy stream", async () => {
    const log = await make();
    const n = 200;
    const readers: Array<Promise<LoggedEvent<Ev>[]>> = [];
    for (let i = 1; i <= n; i++) {
      await log.append("s", i, ev(String(i)));
      // Joins while events keep coming: the replay/live seam is crossed under load.
      if (i % 40 === 0) {
        const after = i - 20;
        readers.push(
          (async () => {
            const it = await log.read("s", after);
            return drain(it!);
          })(),
        );
      }
    }
    await log.end("s");
    const results = await Promise.all(readers);
    results.forEach((events, k) => {
      const after = (k + 1) * 40 - 20;
      expect(events.map((e) => e.seq)).toEqual(Array.from({ length: n - after }, (_, j) => after + j + 1));
      expect(events.map((e) => e.event.text)).toEqual(events.map((e) => String(e.seq)));
    });
    await log.close();
  });
});

describe.each(implementations.filter(([name]) => name !== "replicated (read through the shared copy)"))(
  "EventLog contract, producer side: %s",
  (_name, make) => {
    it("rejects an append out of sequence or after the end", async () => {
      const log = await make();
      await expect(log.append("s", 2, ev("x"))).rejects.toThrow(EventLogSequenceError);
      await log.append("s", 1, ev("a"));
      await expect(log.append("s", 1, ev("a"))).rejects.toThrow(EventLogSequenceError);
      await log.end("s");
      await expect(log.append("s", 2, ev("b"))).rejects.toThrow(EventLogSequenceError);
      await log.close();
    });
  },
);

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

describe.runIf(redisUrl)("Redis EventLog bounds", () => {
  it("expires a stream retentionMs after its last write", async () => {
    const { log, redis } = await redisLog({ retentionMs: 60_000 });
    await log.append("s", 1, ev("a"));
    await log.end("s");
    const ttl = await redis.command.pttl(`${redis.prefix}ask:{s}`);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(60_000);
  });

  it("keeps at most about maxLen entries, and answers undefined for a reader that needs trimmed events", async () => {
    const { log, redis } = await redisLog({ maxLen: 10 });
    for (let i = 1; i <= 500; i++) await log.append("s", i, ev(String(i)));
    await log.end("s");
    expect(await redis.command.xlen(`${redis.prefix}ask:{s}`)).toBeLessThan(500);
    expect(await log.read("s", 0)).toBeUndefined();
    expect((await drain((await log.read("s", 495))!)).map((e) => e.seq)).toEqual([496, 497, 498, 499, 500]);
  });

  it("keys each stream with a hash tag (one Redis Cluster slot per Ask)", async () => {
    const { log, redis } = await redisLog();
    await log.append("0190f0e2-aaaa-7bbb-8ccc-123456789abc", 1, ev("a"));
    const keys = await redis.command.keys(`${redis.prefix}*`);
    expect(keys).toEqual([`${redis.prefix}ask:{0190f0e2-aaaa-7bbb-8ccc-123456789abc}`]);
  });
});

describe("replicated EventLog", () => {
  /** A shared log that can be switched off, like a Redis going away. */
  function flaky() {
    const inner = memory();
    let up = true;
    const guard = <T>(f: () => Promise<T>) => (up ? f() : Promise.reject(new Error("down")));
    const log: EventLog<Ev> = {
      append: (id, seq, e) => guard(() => inner.append(id, seq, e)),
      end: (id) => guard(() => inner.end(id)),
      last: (id) => guard(() => inner.last(id)),
      read: (id, after, signal) => guard(() => inner.read(id, after, signal)),
      close: () => inner.close(),
    };
    return { log, inner, set: (v: boolean) => (up = v), up: () => up };
  }

  it("catches the shared copy up after an outage, also when the shared log lost the stream", async () => {
    const shared = flaky();
    const log = createReplicatedEventLog({ local: memory(), shared: shared.log, sharedReachable: shared.up, log: silent, retryMs: 10 });
    await log.append("s", 1, ev("a"));
    shared.set(false);
    await log.append("s", 2, ev("b"));
    await log.end("s");
    // The producer and its local followers never noticed.
    expect((await drain((await log.read("s", 0))!)).map((e) => e.event.text)).toEqual(["a", "b"]);
    shared.set(true);
    await until(async () => (await shared.inner.last("s"))?.ended === true);
    expect((await drain((await shared.inner.read("s", 0))!)).map((e) => e.event.text)).toEqual(["a", "b"]);
    await log.close();
  });

  it("keeps a stream local when it starts while the shared log is unreachable, and says so to remote readers", async () => {
    const shared = flaky();
    shared.set(false);
    const log = createReplicatedEventLog({ local: memory(), shared: shared.log, sharedReachable: shared.up, log: silent });
    await log.append("s", 1, ev("a"));
    await log.end("s");
    shared.set(true);
    await new Promise((r) => setTimeout(r, 30));
    expect(await shared.inner.last("s")).toBeUndefined();
    expect((await drain((await log.read("s", 0))!)).map((e) => e.seq)).toEqual([1]);
    shared.set(false);
    await expect(log.read("other", 0)).rejects.toThrow("unreachable");
    await log.close();
  });
});
