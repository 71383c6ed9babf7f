import { randomBytes } from "node:crypto";
import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { createMemoryCancelBus, type CancelBus } from "../../src/bus/cancel.js";
import { createRedisCancelBus, openRedis, type RedisConnections } from "../../src/bus/redis.js";
import { testRedisUrl } from "../helpers/databases.js";

const silent = pino({ level: "silent" });
const redisUrl = testRedisUrl();

/** A publisher and a subscriber that may be different replicas' buses. */
interface Pair {
  readonly from: CancelBus;
  readonly to: CancelBus;
}

const pairs: [string, () => Promise<Pair>][] = [
  [
    "in-process",
    async () => {
      const bus = createMemoryCancelBus();
      return { from: bus, to: bus };
    },
  ],
];
const opened: RedisConnections[] = [];
if (redisUrl) {
  pairs.push([
    "Redis (two replicas)",
    async () => {
      const prefix = `parley-test:${randomBytes(6).toString("hex")}:`;
      const a = openRedis(redisUrl, silent, prefix);
      const b = openRedis(redisUrl, silent, prefix);
      opened.push(a, b);
      expect(await a.ready(5_000)).toBe(true);
      expect(await b.ready(5_000)).toBe(true);
      return { from: createRedisCancelBus(a, silent), to: createRedisCancelBus(b, silent) };
    },
  ]);
}

afterAll(async () => {
  await Promise.all(opened.map((r) => r.close()));
});

describe.each(pairs)("cancel bus: %s", (_name, make) => {
  it("delivers the ask id with its reason to the subscribers, until they unsubscribe", async () => {
    const { from, to } = await make();
    const got: [string, string][] = [];
    let arrived!: () => void;
    const wait = () => new Promise<void>((r) => (arrived = r));
    const unsubscribe = to.subscribe((askId, reason) => {
      got.push([askId, reason]);
      arrived();
    });
    // The subscriber may still be subscribing: publish until the first message arrives.
    let first = wait();
    for (let i = 0; i < 50 && got.length === 0; i++) {
      expect(await from.publish("ask-1", "interrupt")).toBe(true);
      await Promise.race([first, new Promise((r) => setTimeout(r, 100))]);
    }
    expect(got[0]).toEqual(["ask-1", "interrupt"]);
    got.length = 0;
    first = wait();
    await from.publish("ask-2", "cancel_ask");
    await first;
    expect(got).toEqual([["ask-2", "cancel_ask"]]);
    unsubscribe();
    got.length = 0;
    await from.publish("ask-3", "cancel_ask");
    await new Promise((r) => setTimeout(r, 50));
    expect(got).toEqual([]);
  });
});
