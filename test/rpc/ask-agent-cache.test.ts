import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient, createRouterTransport } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { createApp, type App } from "../../src/app.js";
import { loadConfig } from "../../src/config.js";
import { bearer, createTestApp, type TestApp } from "../helpers/app.js";
import { collect } from "../helpers/ask-stream.js";
import { backends } from "../helpers/databases.js";
import { failure, reasonOf } from "../helpers/errors.js";
import { createFakeModels } from "../helpers/fake-models.js";
import { snapshot } from "../helpers/snapshot.js";

/**
 * A replica remembers the agent of the sessions it has run Asks in, so that the next
 * Ask there claims the session in its first statement; the claim checks that the
 * session still has that agent at the version remembered. These tests change what
 * the replica remembers behind its back and expect the Ask to see the change.
 */
describe.each(backends())("the agent a replica remembers for an Ask, on %s", (backend) => {
  let t: TestApp;
  let agentId: string;

  beforeAll(async () => {
    t = await createTestApp({ backend, models: createFakeModels() });
    agentId = (await t.client(AgentService).createAgent({ agent: { name: "cached", model: "fake:hello" } })).agent!.id;
  });
  afterAll(async () => {
    await t?.close();
  });

  /** A new session of the agent with one finished Ask in it (so the replica remembers its agent). */
  async function warmSession(): Promise<string> {
    const sessions = t.client(SessionService);
    const sessionId = (await sessions.createSession({ session: { agentId, userId: "u" } })).session!.id;
    const first = await collect(sessions.ask({ sessionId, content: "first" }));
    expect(first.at(-1)?.event.case).toBe("completed");
    return sessionId;
  }

  /** The model an Ask ran with, and its answer. */
  async function askOnce(sessionId: string, content: string): Promise<{ model: string; text: string }> {
    const events = await collect(t.client(SessionService).ask({ sessionId, content }));
    const started = events[0]!.event;
    const end = events.at(-1)!.event;
    if (started.case !== "started" || end.case !== "completed") throw new Error(`unexpected events ${events.map((e) => e.event.case)}`);
    return { model: started.value.model, text: end.value.message!.content };
  }

  it("runs the next Ask with the agent as updated since the last one", async () => {
    const sessionId = await warmSession();
    expect(await askOnce(sessionId, "again")).toEqual({ model: "fake:hello", text: "Hello, world!" });

    const agents = t.client(AgentService);
    const { agent } = await agents.getAgent({ agentId });
    await agents.updateAgent({
      agent: { id: agentId, model: "fake:echo", etag: agent!.etag },
      updateMask: create(FieldMaskSchema, { paths: ["model"] }),
    });
    expect(await askOnce(sessionId, "say this back")).toEqual({ model: "fake:echo", text: "say this back" });

    await agents.updateAgent({
      agent: { id: agentId, model: "fake:hello", etag: (await agents.getAgent({ agentId })).agent!.etag },
      updateMask: create(FieldMaskSchema, { paths: ["model"] }),
    });
    expect((await askOnce(sessionId, "and now")).model).toBe("fake:hello");
  });

  it("refuses an Ask in a session archived or deleted since the last one, storing nothing", async () => {
    const sessions = t.client(SessionService);
    const archived = await warmSession();
    await sessions.archiveSession({ sessionId: archived });
    const before = await snapshot(t.app.db, ["sessions", "messages", "asks"]);
    const err = await failure(collect(sessions.ask({ sessionId: archived, content: "q" })));
    expect([err.code, reasonOf(err)]).toEqual([Code.FailedPrecondition, "SESSION_ARCHIVED"]);
    expect(await snapshot(t.app.db, ["sessions", "messages", "asks"])).toBe(before);

    const deleted = await warmSession();
    await sessions.deleteSession({ sessionId: deleted });
    expect((await failure(collect(sessions.ask({ sessionId: deleted, content: "q" })))).code).toBe(Code.NotFound);
  });

  it("keeps sessions of one tenant apart from another's", async () => {
    const sessionId = await warmSession();
    const other = await t.newTenant("other-cache");
    const err = await failure(collect(t.client(SessionService, other.key).ask({ sessionId, content: "q" })));
    expect(err.code).toBe(Code.NotFound);
  });
});

describe.runIf(backends().includes("postgres"))("the agent remembered by one replica, updated on another", () => {
  let t: TestApp;
  let second: App;
  let dataDir: string;

  beforeAll(async () => {
    t = await createTestApp({ backend: "postgres", models: createFakeModels() });
    dataDir = mkdtempSync(join(tmpdir(), "parley-test-"));
    second = await createApp(loadConfig({}, { dataDir, databaseUrl: t.database.url, logLevel: "silent", askDeltaCoalesceMs: 0 }), {
      log: pino({ level: "silent" }),
      models: createFakeModels(),
    });
  });
  afterAll(async () => {
    await second?.close(0);
    await t?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("runs the first replica's next Ask with the second replica's update", async () => {
    const agents = t.client(AgentService);
    const sessions = t.client(SessionService);
    const agent = (await agents.createAgent({ agent: { name: "shared", model: "fake:hello" } })).agent!;
    const sessionId = (await sessions.createSession({ session: { agentId: agent.id, userId: "u" } })).session!.id;
    expect((await collect(sessions.ask({ sessionId, content: "first" }))).at(-1)?.event.case).toBe("completed");

    const onSecond = createClient(
      AgentService,
      createRouterTransport(second.routes, {
        router: { interceptors: second.interceptors },
        transport: { interceptors: [bearer(t.adminKey)] },
      }),
    );
    await onSecond.updateAgent({
      agent: { id: agent.id, model: "fake:echo", etag: agent.etag },
      updateMask: create(FieldMaskSchema, { paths: ["model"] }),
    });

    const events = await collect(sessions.ask({ sessionId, content: "echo me" }));
    const started = events[0]!.event;
    const end = events.at(-1)!.event;
    expect(started.case === "started" ? started.value.model : started.case).toBe("fake:echo");
    expect(end.case === "completed" ? end.value.message!.content : end.case).toBe("echo me");
  });
});
