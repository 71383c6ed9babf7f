import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { createApiKey } from "../../src/repos/api-keys.js";
import { bearer } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { createRecordingApp, type RecordingApp } from "../helpers/recording-app.js";

describe.each(backends())("API key lookups on %s", (backend) => {
  let r: RecordingApp;
  beforeAll(async () => {
    r = await createRecordingApp(backend);
  });
  afterAll(async () => {
    await r?.close();
  });

  const sessionsWith = (key: string) =>
    createClient(SessionService, createRouterTransport(r.app.routes, { router: { interceptors: r.app.interceptors }, transport: { interceptors: [bearer(key)] } }));
  const keyLookups = () => r.queries.filter((q) => /from "api_keys"/.test(q.sql)).length;

  it("share one query among the concurrent first calls with a key", async () => {
    const { key } = await createApiKey(r.base, r.tenantId, "burst", "admin");
    const sessions = sessionsWith(key);
    r.queries.length = 0;
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => sessions.getSession({ sessionId: "00000000-0000-7000-8000-000000000000" })));
    // Authenticated (the session is unknown): every call got past the key check.
    for (const res of results) expect(res.status === "rejected" && ConnectError.from(res.reason).code).toBe(Code.NotFound);
    expect(keyLookups()).toBe(1);
  });

  it("keep refusing an unknown key, looking it up again on a later call", async () => {
    const sessions = sessionsWith("pk_unknown_0123456789abcdef0123456789");
    r.queries.length = 0;
    const first = await Promise.allSettled(Array.from({ length: 5 }, () => sessions.getSession({ sessionId: "00000000-0000-7000-8000-000000000000" })));
    for (const res of first) expect(res.status === "rejected" && ConnectError.from(res.reason).code).toBe(Code.Unauthenticated);
    expect(keyLookups()).toBe(1);
    await expect(sessions.getSession({ sessionId: "00000000-0000-7000-8000-000000000000" })).rejects.toMatchObject({ code: Code.Unauthenticated });
    expect(keyLookups()).toBe(2);
  });
});
