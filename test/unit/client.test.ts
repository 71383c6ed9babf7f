import * as http from "node:http";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createRouterTransport, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { build } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { SessionService, type AskEvent, type AskRequest } from "../../gen/parley/v1/session_pb.js";
import { clientInterceptors, createParleyClientFromTransport, type ParleyClient } from "../../src/client/core.js";
import { createParleyClient as createNodeClient } from "../../src/client/node.js";
import { createParleyClient as createWebClient } from "../../src/client/web.js";

// A stand-in Parley with just enough behaviour to observe what the clients send
// and receive: the real services are tested in test/rpc and test/server.
function createFakeParley() {
  const seenAuth: string[] = [];
  const seenHeaders: Headers[] = [];
  let resolveAborted!: () => void;
  const serverSawAbort = new Promise<void>((r) => (resolveAborted = r));
  function note(ctx: HandlerContext) {
    seenAuth.push(ctx.requestHeader.get("authorization") ?? "");
    seenHeaders.push(ctx.requestHeader);
  }
  const routes = (router: ConnectRouter) => {
    router.service(AgentService, {
      createAgent(req, ctx) {
        note(ctx);
        return { agent: { name: req.agent?.name ?? "", id: "agent-1" } };
      },
    });
    router.service(SessionService, {
      async *ask(req: AskRequest, ctx) {
        note(ctx);
        const base = { askId: "ask-1" };
        yield { event: { ...base, seq: 1n, event: { case: "started", value: { askId: "ask-1", assistantMessageId: "m-2" } } } };
        if (req.content === "hang") {
          await new Promise<void>((resolve) => {
            if (ctx.signal.aborted) resolve();
            ctx.signal.addEventListener("abort", () => resolve(), { once: true });
          });
          resolveAborted();
          return;
        }
        yield { event: { ...base, seq: 2n, event: { case: "textDelta", value: { text: "Hel" } } } };
        yield { event: { ...base, seq: 3n, event: { case: "textDelta", value: { text: "lo" } } } };
        yield {
          event: { ...base, seq: 4n, event: { case: "completed", value: { message: { id: "m-2", content: "Hello" } } } },
        };
      },
    });
  };
  return { routes, seenAuth, seenHeaders, serverSawAbort };
}

async function collect(events: AsyncIterable<AskEvent>): Promise<AskEvent[]> {
  const out: AskEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

async function expectRoundTrip(client: ParleyClient, fake: ReturnType<typeof createFakeParley>, key: string) {
  const before = fake.seenAuth.length;
  const { agent } = await client.agents.createAgent({ agent: { name: "a" } });
  expect(agent?.id).toBe("agent-1");
  const events = await collect(client.ask({ sessionId: "s-1", content: "hi" }));
  expect(events.map((e) => e.event.case)).toEqual(["started", "textDelta", "textDelta", "completed"]);
  expect(events.map((e) => e.seq)).toEqual([1n, 2n, 3n, 4n]);
  const text = events.map((e) => (e.event.case === "textDelta" ? e.event.value.text : "")).join("");
  expect(text).toBe("Hello");
  const last = events.at(-1)!;
  expect(last.event.case === "completed" && last.event.value.message?.content).toBe("Hello");
  expect(fake.seenAuth.slice(before)).toEqual([`Bearer ${key}`, `Bearer ${key}`]);
}

async function expectAbortCancels(client: ParleyClient, fake: ReturnType<typeof createFakeParley>) {
  const controller = new AbortController();
  const seen: string[] = [];
  const run = (async () => {
    for await (const e of client.ask({ sessionId: "s-1", content: "hang" }, { signal: controller.signal })) {
      seen.push(e.event.case ?? "");
      // The server yields nothing after "started" until it is cancelled.
      if (e.event.case === "started") controller.abort();
    }
  })();
  const err = await run.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(ConnectError.from(err).code).toBe(Code.Canceled);
  expect(seen).toEqual(["started"]);
  await fake.serverSawAbort;
}

describe("client core over an in-memory transport", () => {
  it("sends the bearer key and fixed headers, and ask() yields the unwrapped events", async () => {
    const fake = createFakeParley();
    const transport = createRouterTransport(fake.routes, {
      transport: {
        interceptors: clientInterceptors({ baseUrl: "", apiKey: "pk_test", headers: { "x-trace": "t1" } }),
      },
    });
    await expectRoundTrip(createParleyClientFromTransport(transport), fake, "pk_test");
    expect(fake.seenHeaders.every((h) => h.get("x-trace") === "t1")).toBe(true);
  });

  it("asks a key function for the current key on every call", async () => {
    const fake = createFakeParley();
    let n = 0;
    const transport = createRouterTransport(fake.routes, {
      transport: { interceptors: clientInterceptors({ baseUrl: "", apiKey: async () => `key-${++n}` }) },
    });
    const client = createParleyClientFromTransport(transport);
    await client.agents.createAgent({ agent: { name: "a" } });
    await client.agents.createAgent({ agent: { name: "b" } });
    expect(fake.seenAuth).toEqual(["Bearer key-1", "Bearer key-2"]);
  });

  it("sends no authorization header without a key", async () => {
    const fake = createFakeParley();
    const transport = createRouterTransport(fake.routes, {
      transport: { interceptors: clientInterceptors({ baseUrl: "" }) },
    });
    await createParleyClientFromTransport(transport).agents.createAgent({ agent: { name: "a" } });
    expect(fake.seenAuth).toEqual([""]);
  });
});

describe("ask() aborted before its Started event", () => {
  // A Parley whose Ask waits for the test before it starts (or never starts) and which records
  // CancelAsk calls.
  function createSlowStart() {
    const cancelled: string[] = [];
    let entered!: () => void;
    const handlerEntered = new Promise<void>((r) => (entered = r));
    let start!: () => void;
    const started = new Promise<void>((r) => (start = r));
    let closed!: () => void;
    const streamClosed = new Promise<void>((r) => (closed = r));
    const routes = (router: ConnectRouter) => {
      router.service(SessionService, {
        async *ask(req: AskRequest, ctx) {
          expect(req.background).toBe(true);
          ctx.signal.addEventListener("abort", () => closed(), { once: true });
          entered();
          // "later": starts when the test says so; "never": waits for its client to leave.
          await (req.content === "later" ? started : new Promise(() => {}));
          yield { event: { askId: "ask-9", seq: 1n, event: { case: "started", value: { askId: "ask-9", assistantMessageId: "m-9" } } } };
          await new Promise(() => {});
        },
        cancelAsk(req) {
          cancelled.push(req.askId);
          return {};
        },
      });
    };
    const client = createParleyClientFromTransport(createRouterTransport(routes));
    return { client, cancelled, handlerEntered, start, streamClosed };
  }

  const run = (events: AsyncIterable<AskEvent>) =>
    (async () => {
      const seen: string[] = [];
      for await (const e of events) seen.push(e.event.case ?? "");
      return seen;
    })().then(
      (seen) => ({ seen, err: undefined }),
      (err: unknown) => ({ seen: [] as string[], err }),
    );

  it("reads on until Started names the Ask, cancels it, then throws Canceled", async () => {
    const fake = createSlowStart();
    const abort = new AbortController();
    const done = run(fake.client.ask({ sessionId: "s-1", content: "later" }, { signal: abort.signal }));
    await fake.handlerEntered;
    abort.abort();
    // The caller's abort came first; the Ask starts only now (a claim already under way).
    fake.start();
    const { seen, err } = await done;
    expect(ConnectError.from(err).code).toBe(Code.Canceled);
    expect(seen).toEqual([]);
    expect(fake.cancelled).toEqual(["ask-9"]);
    await fake.streamClosed;
  });

  it("closes the stream of an Ask that does not start within the wait (giving up its place), cancelling nothing", async () => {
    const fake = createSlowStart();
    const abort = new AbortController();
    const done = run(fake.client.ask({ sessionId: "s-1", content: "never" }, { signal: abort.signal }));
    await fake.handlerEntered;
    abort.abort();
    const { err } = await done;
    expect(ConnectError.from(err).code).toBe(Code.Canceled);
    await fake.streamClosed;
    expect(fake.cancelled).toEqual([]);
  });

  it("an already aborted signal calls nothing", async () => {
    const fake = createSlowStart();
    const { err } = await run(fake.client.ask({ sessionId: "s-1", content: "later" }, { signal: AbortSignal.abort() }));
    expect(ConnectError.from(err).code).toBe(Code.Canceled);
    const entered = await Promise.race([fake.handlerEntered.then(() => true), new Promise((r) => setTimeout(() => r(false), 50))]);
    expect(entered).toBe(false);
  });
});

describe("web entry point", () => {
  it("bundles for browsers without any Node built-in", async () => {
    const result = await build({
      entryPoints: [fileURLToPath(new URL("../../src/client/web.ts", import.meta.url))],
      bundle: true,
      platform: "browser",
      format: "esm",
      write: false,
      metafile: true,
      logLevel: "silent",
    });
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs.some((i) => i.endsWith("src/client/core.ts"))).toBe(true);
    expect(inputs.filter((i) => i.startsWith("node:") || i.includes("connect-node"))).toEqual([]);
  });
});

describe("clients over real sockets", () => {
  const fake = createFakeParley();
  const h2 = http2.createServer(connectNodeAdapter({ routes: fake.routes }));
  const h1 = http.createServer(connectNodeAdapter({ routes: fake.routes }));
  let h2Url = "";
  let h1Url = "";
  const clients: Array<{ close(): void }> = [];

  beforeAll(async () => {
    await new Promise<void>((r) => h2.listen(0, "127.0.0.1", r));
    await new Promise<void>((r) => h1.listen(0, "127.0.0.1", r));
    h2Url = `http://127.0.0.1:${(h2.address() as AddressInfo).port}`;
    h1Url = `http://127.0.0.1:${(h1.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    h1.closeAllConnections();
    await Promise.all([new Promise((r) => h2.close(r)), new Promise((r) => h1.close(r))]);
  });

  const nodeCases = [
    { name: "gRPC (default)", options: {}, server: () => h2Url },
    { name: "Connect over HTTP/1.1", options: { transport: "connect" as const }, server: () => h1Url },
    { name: "Connect over HTTP/2", options: { transport: "connect" as const, httpVersion: "2" as const }, server: () => h2Url },
    { name: "Connect with JSON", options: { transport: "connect" as const, useJson: true }, server: () => h1Url },
  ];

  describe.each(nodeCases)("node client, $name", ({ options, server }) => {
    it("round-trips a unary call and an Ask stream with the key", async () => {
      const client = createNodeClient({ baseUrl: server(), apiKey: "pk_node", ...options });
      clients.push(client);
      await expectRoundTrip(client, fake, "pk_node");
    });
  });

  it("node client: aborting the signal cancels the stream on the server", async () => {
    const local = createFakeParley();
    const server = http2.createServer(connectNodeAdapter({ routes: local.routes }));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const client = createNodeClient({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, apiKey: "k" });
    try {
      await expectAbortCancels(client, local);
    } finally {
      client.close();
      await new Promise((r) => server.close(r));
    }
  });

  describe.each([
    { name: "Connect (default)", options: {} },
    { name: "gRPC-Web", options: { transport: "grpc-web" as const } },
  ])("web client over fetch, $name", ({ options }) => {
    it("round-trips a unary call and an Ask stream with the key", async () => {
      await expectRoundTrip(createWebClient({ baseUrl: h1Url, apiKey: "pk_web", ...options }), fake, "pk_web");
    });
  });

  it("web client: aborting the signal cancels the stream on the server", async () => {
    const local = createFakeParley();
    const server = http.createServer(connectNodeAdapter({ routes: local.routes }));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const client = createWebClient({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, apiKey: "k" });
      await expectAbortCancels(client, local);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
