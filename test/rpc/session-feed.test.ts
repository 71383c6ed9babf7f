import { sql } from "kysely";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { createSessionFeed, SESSION_CHANNEL, type SessionFeed } from "../../src/ask/session-feed.js";
import type { Unlisten } from "../../src/db/notifications.js";
import { appendMessages } from "../../src/repos/messages.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { createFakeModels } from "../helpers/fake-models.js";

const log = pino({ level: "silent" });

describe.each(backends())("The session feed on %s", (backend) => {
  let t: TestApp;
  let agentId: string;
  /** Every parley_session payload the database sent, in commit order. */
  const heard: string[] = [];
  const waiters: Array<{ id: string; resolve: () => void }> = [];
  let unlisten: Unlisten;

  beforeAll(async () => {
    t = await createTestApp({ backend, models: createFakeModels() });
    agentId = (await t.client(AgentService).createAgent({ agent: { name: "bot", model: "fake:hello" } })).agent!.id;
    unlisten = await t.database.handle.listen(
      SESSION_CHANNEL,
      (id) => {
        heard.push(id);
        for (const w of waiters.filter((x) => x.id === id)) w.resolve();
      },
      () => {},
    );
  });
  afterAll(async () => {
    await unlisten?.();
    await t?.close();
  });

  const newSession = async () =>
    (await t.client(SessionService).createSession({ session: { agentId, userId: "u" } })).session!.id;
  const heardFor = (id: string) => new Promise<void>((resolve) => waiters.push({ id, resolve }));
  const append = (sessionId: string, n = 1) =>
    appendMessages(t.app.db, t.tenantId, sessionId, Array.from({ length: n }, (_, i) => ({ role: "user" as const, content: `m${i}` })));

  it("notifies changes of watched sessions only, once per statement, and wakes the subscriber", async () => {
    const quiet = await newSession();
    const watched = await newSession();
    const feed: SessionFeed = await createSessionFeed(t.database.handle.listen, { db: t.app.db, log });
    try {
      let woken!: () => void;
      const wake = new Promise<void>((resolve) => (woken = resolve));
      const unsubscribe = await feed.subscribe(t.tenantId, watched, () => woken());
      heard.length = 0;
      await append(quiet, 3);
      const notified = heardFor(watched);
      await append(watched, 3);
      // Notifications arrive in commit order: the quiet session's append came first and sent none.
      await notified;
      expect(heard).toEqual([watched]);
      await wake;
      unsubscribe();
    } finally {
      await feed.close();
    }
  });

  it("stops notifying once the watch mark has lapsed, and a subscriber's renewals keep it", async () => {
    const sessionId = await newSession();
    const feed = await createSessionFeed(t.database.handle.listen, { db: t.app.db, log, watchTtlMs: 60_000 });
    try {
      const unsubscribe = await feed.subscribe(t.tenantId, sessionId, () => {});
      const left = async () =>
        Number(
          (
            await t.app.db
              .selectFrom("sessions")
              .select(sql<number>`extract(epoch from watch_expire_time - now())::float8`.as("left"))
              .where("id", "=", sessionId)
              .executeTakeFirstOrThrow()
          ).left,
        );
      expect(await left()).toBeGreaterThan(50);
      unsubscribe();
      // As if the subscribing replica had gone long ago.
      await t.app.db.updateTable("sessions").set({ watch_expire_time: sql<Date>`now() - interval '1 second'` }).where("id", "=", sessionId).execute();
      const other = await newSession();
      await feed.subscribe(t.tenantId, other, () => {});
      heard.length = 0;
      await append(sessionId);
      const notified = heardFor(other);
      await append(other);
      await notified;
      expect(heard).toEqual([other]);
    } finally {
      await feed.close();
    }
  });

  it("a claim and a release of a watched session notify, an unwatched one's do not", async () => {
    const quiet = await newSession();
    const watched = await newSession();
    const feed = await createSessionFeed(t.database.handle.listen, { db: t.app.db, log });
    try {
      await feed.subscribe(t.tenantId, watched, () => {});
      heard.length = 0;
      for await (const _ of t.client(SessionService).ask({ sessionId: quiet, content: "hi" })) void _;
      const notified = heardFor(watched);
      for await (const _ of t.client(SessionService).ask({ sessionId: watched, content: "hi" })) void _;
      await notified;
      // The watched Ask's claim, messages and release; nothing for the quiet one.
      expect(heard.length).toBeGreaterThan(0);
      expect(new Set(heard)).toEqual(new Set([watched]));
    } finally {
      await feed.close();
    }
  });
});
