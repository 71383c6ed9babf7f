import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { DatabaseHandle } from "../../src/db/database.js";
import { createHealthMonitor } from "../../src/services/health-service.js";

/** A database whose pings succeed or fail as the test says. */
function fakeDatabase() {
  let down = false;
  const handle = {
    kind: "postgres",
    async ping() {
      if (down) throw new Error("connection refused");
    },
  } as unknown as DatabaseHandle;
  return { handle, setDown: (v: boolean) => (down = v) };
}

describe("the health monitor", () => {
  it("stops serving after two failed pings in a row, not after one, and serves again on the next answer", async () => {
    const db = fakeDatabase();
    // Ticks far apart: the test drives every ping with checkNow().
    const monitor = createHealthMonitor(db.handle, pino({ level: "silent" }), { intervalMs: 3_600_000 });
    try {
      const changes: boolean[] = [];
      monitor.subscribe((s) => changes.push(s.serving));
      expect((await monitor.ready()).serving).toBe(true);

      db.setDown(true);
      const once = await monitor.checkNow();
      expect([once.serving, once.error]).toEqual([true, "connection refused"]);
      const twice = await monitor.checkNow();
      expect(twice.serving).toBe(false);

      db.setDown(false);
      expect((await monitor.checkNow()).serving).toBe(true);
      // One failure between two answers never turned it off: the changes are the first answer, the outage, the return.
      db.setDown(true);
      await monitor.checkNow();
      db.setDown(false);
      await monitor.checkNow();
      expect(changes).toEqual([true, false, true]);
    } finally {
      monitor.stop();
    }
  });

  it("keeps checking when a subscriber throws, and the other subscribers still hear of each change", async () => {
    const db = fakeDatabase();
    const monitor = createHealthMonitor(db.handle, pino({ level: "silent" }), { intervalMs: 3_600_000 });
    try {
      monitor.subscribe(() => {
        throw new Error("a broken listener");
      });
      const changes: boolean[] = [];
      monitor.subscribe((s) => changes.push(s.serving));
      expect((await monitor.ready()).serving).toBe(true);
      db.setDown(true);
      await monitor.checkNow();
      expect((await monitor.checkNow()).serving).toBe(false);
      db.setDown(false);
      expect((await monitor.checkNow()).serving).toBe(true);
      expect(changes).toEqual([true, false, true]);
    } finally {
      monitor.stop();
    }
  });

  it("with failuresToStop 1, stops serving on the first failure", async () => {
    const db = fakeDatabase();
    const monitor = createHealthMonitor(db.handle, pino({ level: "silent" }), { intervalMs: 3_600_000, failuresToStop: 1 });
    try {
      await monitor.ready();
      db.setDown(true);
      expect((await monitor.checkNow()).serving).toBe(false);
    } finally {
      monitor.stop();
    }
  });

  it("does not serve before a first answer", async () => {
    const db = fakeDatabase();
    db.setDown(true);
    const monitor = createHealthMonitor(db.handle, pino({ level: "silent" }), { intervalMs: 3_600_000 });
    try {
      expect((await monitor.ready()).serving).toBe(false);
    } finally {
      monitor.stop();
    }
  });
});
