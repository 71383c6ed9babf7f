import * as net from "node:net";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb.js";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { SessionService, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import { bearer } from "../helpers/app.js";
import { controlledModel, createFakeModels, type ControlledModel } from "../helpers/fake-models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const protocols: Array<{ name: string; transport(baseUrl: string, key: string): Transport }> = [
  { name: "gRPC over HTTP/2", transport: (baseUrl, key) => createGrpcTransport({ baseUrl, interceptors: [bearer(key)] }) },
  {
    name: "Connect over HTTP/1.1",
    transport: (baseUrl, key) => createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors: [bearer(key)] }),
  },
];

/** Resolves with the connection error code, or "connected". */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
  });
}

describe.each(protocols)("graceful shutdown, $name", ({ transport }) => {
  let s: TestServer | undefined;
  afterEach(async () => {
    await s?.close();
    s = undefined;
  });

  async function startAsk(graceMs: number) {
    const model: ControlledModel = controlledModel();
    s = await startTestServer({ models: createFakeModels({ ctl: model }), config: { shutdownGraceMs: graceMs } });
    const t = transport(s.url, s.adminKey);
    const { agent } = await createClient(AgentService, t).createAgent({ agent: { name: "slow", model: "fake:ctl" } });
    const { session } = await createClient(SessionService, t).createSession({
      session: { agentId: agent!.id, userId: "u" },
    });
    const events = createClient(SessionService, t)
      .ask({ sessionId: session!.id, content: "tell me a long story" })
      [Symbol.asyncIterator]();
    const next = async (): Promise<AskEvent> => {
      const r = await events.next();
      if (r.done) throw new Error("the Ask stream ended early");
      return r.value.event!;
    };
    const started = await next();
    expect(started.event.case).toBe("started");
    const call = await model.call(0);
    call.push("Once upon ");
    const first = await next();
    expect(first.event).toMatchObject({ case: "textDelta", value: { text: "Once upon " } });
    return { server: s, call, next, events, started };
  }

  it("lets a running Ask finish within the grace period, refusing new connections meanwhile", async () => {
    const { server, call, next, events } = await startAsk(60_000);
    const health = createClient(Health, transport(server.url, server.adminKey));
    const watch = health.watch({ service: "" })[Symbol.asyncIterator]();
    expect((await watch.next()).value?.status).toBe(Status.SERVING);

    const closing = server.server.close();
    expect(await tryConnect(server.port)).toBe("ECONNREFUSED");
    // Health watchers learn that the server stops serving, and their stream ends.
    expect((await watch.next()).value?.status).toBe(Status.NOT_SERVING);
    expect((await watch.next()).done).toBe(true);

    call.push("a time.");
    call.finish();
    const texts: string[] = [];
    let last: AskEvent | undefined;
    for (;;) {
      last = await next();
      if (last.event.case === "textDelta") texts.push(last.event.value.text);
      if (last.event.case === "completed" || last.event.case === "cancelled" || last.event.case === "failed") break;
    }
    expect(texts.join("")).toBe("a time.");
    expect(last.event.case).toBe("completed");
    if (last.event.case === "completed") {
      expect(last.event.value.message?.status).toBe(MessageStatus.COMPLETE);
      expect(last.event.value.message?.content).toBe("Once upon a time.");
    }
    expect((await events.next()).done).toBe(true);
    await closing;
  });

  it("cancels an Ask still running after the grace period, keeping its partial answer as CANCELLED", async () => {
    const { server, call, next, started } = await startAsk(200);
    const closing = server.server.close();
    // The model is never finished: only the end of the grace period stops it.
    const cancelled = await next();
    expect(cancelled.event.case).toBe("cancelled");
    if (cancelled.event.case === "cancelled") {
      expect(cancelled.event.value.message?.status).toBe(MessageStatus.CANCELLED);
      expect(cancelled.event.value.message?.content).toBe("Once upon ");
    }
    await call.aborted;
    await closing;

    const assistantId = started.event.case === "started" ? started.event.value.assistantMessageId : "";
    const row = await server.database.handle.db
      .selectFrom("messages")
      .select(["status", "content"])
      .where("id", "=", assistantId)
      .executeTakeFirstOrThrow();
    expect(row).toEqual({ status: "cancelled", content: "Once upon " });
  });
});
