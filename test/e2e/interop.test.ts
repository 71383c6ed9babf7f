// Acceptance: a gRPC client built from nothing but proto/ (no generated code of ours, no Connect)
// talks to the real server process, whose model is an OpenAI-compatible HTTP server on this machine.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { backends, createTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { startFakeOpenAI, type FakeOpenAI } from "../helpers/fake-openai.js";
import { repoRoot, spawnCli, type CliProcess } from "../helpers/server.js";

/** Plain objects as @grpc/proto-loader decodes them (longs and enums as strings, oneofs named). */
type Json = Record<string, any>;

interface Clients {
  agents: grpc.Client & Record<string, Function>;
  sessions: grpc.Client & Record<string, Function>;
  messages: grpc.Client & Record<string, Function>;
}

function loadClients(address: string): Clients {
  const definition = protoLoader.loadSync(
    ["parley/v1/agent.proto", "parley/v1/session.proto", "parley/v1/message.proto"],
    { includeDirs: [join(repoRoot, "proto")], longs: String, enums: String, defaults: true, oneofs: true },
  );
  const v1 = (grpc.loadPackageDefinition(definition) as any).parley.v1;
  const credentials = grpc.credentials.createInsecure();
  return {
    agents: new v1.AgentService(address, credentials),
    sessions: new v1.SessionService(address, credentials),
    messages: new v1.MessageService(address, credentials),
  };
}

function unary(client: Record<string, Function>, method: string, request: Json, metadata: grpc.Metadata): Promise<Json> {
  return new Promise((resolve, reject) => {
    client[method]!(request, metadata, (err: grpc.ServiceError | null, res: Json) => (err ? reject(err) : resolve(res)));
  });
}

const backend = backends().includes("postgres") ? "postgres" : "pglite";

describe(`interop: @grpc/grpc-js with proto-loader against the server process (${backend})`, () => {
  let fake: FakeOpenAI;
  let database: TestDatabase | undefined;
  let dataDir: string;
  let server: CliProcess;
  let clients: Clients;
  let md: grpc.Metadata;

  beforeAll(async () => {
    // The first answer streams whole; the second stalls after two tokens until the client cancels it.
    fake = await startFakeOpenAI({
      reply: (_req, index) =>
        index === 1 ? { tokens: ["Once", " upon", " a", " time"], stallAfter: 2 } : { tokens: ["Hello", ", ", "world", "!"] },
    });
    dataDir = mkdtempSync(join(tmpdir(), "parley-interop-"));
    const env: NodeJS.ProcessEnv = {
      PARLEY_DATA_DIR: dataDir,
      PORT: "0",
      PARLEY_HOST: "127.0.0.1",
      OPENAI_COMPATIBLE_BASE_URL: fake.baseURL,
    };
    if (backend === "postgres") {
      database = await createTestDatabase("postgres");
      env.DATABASE_URL = database.url;
    }
    server = spawnCli(["serve"], env);
    const url = new URL(await server.listening());
    const adminKey = readFileSync(join(dataDir, "admin.key"), "utf8").trim();
    md = new grpc.Metadata();
    md.add("authorization", `Bearer ${adminKey}`);
    clients = loadClients(url.host);
  }, 120_000);

  afterAll(async () => {
    for (const c of Object.values(clients ?? {})) c.close();
    if (server) expect(await server.stop("SIGTERM")).toBe(0);
    await fake?.close();
    await database?.drop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("creates an agent and a session, streams an Ask, cancels one midway and pages through history", async () => {
    const { agent } = await unary(
      clients.agents,
      "CreateAgent",
      { agent: { name: "interop", instructions: "Answer briefly.", model: "openai-compatible:fake-model" } },
      md,
    );
    expect(agent.id).toMatch(/^[0-9a-f-]{36}$/);
    const { session } = await unary(clients.sessions, "CreateSession", { session: { agentId: agent.id, userId: "interop-user" } }, md);
    expect(session.status).toBe("SESSION_STATUS_ACTIVE");

    // 1. A whole answer, streamed.
    const events: Json[] = await new Promise((resolve, reject) => {
      const got: Json[] = [];
      const call = clients.sessions.Ask!({ sessionId: session.id, content: "first" }, md) as grpc.ClientReadableStream<Json>;
      call.on("data", (res: Json) => got.push(res.event));
      call.on("end", () => resolve(got));
      call.on("error", reject);
    });
    expect(events[0]!.event).toBe("started");
    expect(events.at(-1)!.event).toBe("completed");
    const seqs = events.map((e) => Number(e.seq));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(seqs.length);
    const streamed = events.filter((e) => e.event === "textDelta").map((e) => e.textDelta.text).join("");
    expect(streamed).toBe("Hello, world!");
    const completed = events.at(-1)!.completed.message;
    expect(completed).toMatchObject({ role: "MESSAGE_ROLE_ASSISTANT", status: "MESSAGE_STATUS_COMPLETE", content: "Hello, world!" });
    expect((await fake.request(0)).body.model).toBe("fake-model");

    // 2. An answer cancelled midway with CancelAsk: the partial text is kept as CANCELLED.
    const second = clients.sessions.Ask!({ sessionId: session.id, content: "second" }, md) as grpc.ClientReadableStream<Json>;
    const cancelledEvents: Json[] = [];
    let askId = "";
    let partial = "";
    const ended = new Promise<void>((resolve, reject) => {
      second.on("end", () => resolve());
      second.on("error", reject);
    });
    const midway = new Promise<void>((resolve) => {
      second.on("data", (res: Json) => {
        const e = res.event;
        cancelledEvents.push(e);
        if (e.event === "started") askId = e.started.askId;
        if (e.event === "textDelta") partial += e.textDelta.text;
        if (partial === "Once upon") resolve();
      });
    });
    await midway;
    const providerCall = await fake.request(1);
    const { ask } = await unary(clients.sessions, "CancelAsk", { askId }, md);
    expect(ask.id).toBe(askId);
    await ended;
    const last = cancelledEvents.at(-1)!;
    expect(last.event).toBe("cancelled");
    expect(last.cancelled.message).toMatchObject({ status: "MESSAGE_STATUS_CANCELLED", content: "Once upon" });
    // The cancel reached the provider's HTTP request.
    expect(await providerCall.done).toBe("aborted");
    const { ask: finished } = await unary(clients.sessions, "GetAsk", { askId }, md);
    expect(finished.status).toBe("ASK_STATUS_CANCELLED");

    // 3. History, one page of two at a time, with page tokens.
    const history: Json[] = [];
    let pageToken = "";
    let pages = 0;
    do {
      const page = await unary(clients.messages, "ListMessages", { sessionId: session.id, pageSize: 2, pageToken }, md);
      history.push(...page.messages);
      pageToken = page.nextPageToken;
      pages += 1;
    } while (pageToken !== "" && pages < 10);
    expect(pages).toBeGreaterThanOrEqual(2);
    expect(history.map((m) => [m.role, m.status, m.content])).toEqual([
      ["MESSAGE_ROLE_USER", "MESSAGE_STATUS_COMPLETE", "first"],
      ["MESSAGE_ROLE_ASSISTANT", "MESSAGE_STATUS_COMPLETE", "Hello, world!"],
      ["MESSAGE_ROLE_USER", "MESSAGE_STATUS_COMPLETE", "second"],
      ["MESSAGE_ROLE_ASSISTANT", "MESSAGE_STATUS_CANCELLED", "Once upon"],
    ]);
    const historySeqs = history.map((m) => Number(m.seq));
    expect(historySeqs).toEqual([historySeqs[0], historySeqs[0]! + 1, historySeqs[0]! + 2, historySeqs[0]! + 3]);
  }, 60_000);

  it("answers UNAUTHENTICATED without a key", async () => {
    const err = await unary(clients.agents, "ListAgents", {}, new grpc.Metadata()).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err?.code).toBe(grpc.status.UNAUTHENTICATED);
  });
});
