import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { generate } from "selfsigned";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { createFakeModels } from "../helpers/fake-models.js";
import { bearer } from "../helpers/app.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

type TransportOptions = { baseUrl: string; interceptors: Interceptor[] };

/** Every protocol and HTTP version a client may use on the one port. */
const protocols: Array<{ name: string; transport(o: TransportOptions): Transport }> = [
  { name: "gRPC over HTTP/2", transport: (o) => createGrpcTransport(o) },
  { name: "gRPC-Web over HTTP/1.1", transport: (o) => createGrpcWebTransport({ ...o, httpVersion: "1.1" }) },
  { name: "gRPC-Web over HTTP/2", transport: (o) => createGrpcWebTransport({ ...o, httpVersion: "2" }) },
  { name: "Connect over HTTP/1.1", transport: (o) => createConnectTransport({ ...o, httpVersion: "1.1" }) },
  { name: "Connect over HTTP/2", transport: (o) => createConnectTransport({ ...o, httpVersion: "2" }) },
  {
    name: "Connect GET over HTTP/1.1",
    transport: (o) => createConnectTransport({ ...o, httpVersion: "1.1", useHttpGet: true }),
  },
];

/** A plain HTTP/1.1 request; resolves with status, headers and body text. */
function request1(
  url: string,
  options: http.RequestOptions = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { agent: false, ...options }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("one port, every protocol", () => {
  let s: TestServer;

  beforeAll(async () => {
    s = await startTestServer({ models: createFakeModels() });
  });
  afterAll(async () => {
    await s?.close();
  });

  describe.each(protocols)("$name", ({ transport }) => {
    const clients = (key?: string) => {
      const t = transport({ baseUrl: s.url, interceptors: key === undefined ? [] : [bearer(key)] });
      return {
        agents: createClient(AgentService, t),
        sessions: createClient(SessionService, t),
        health: createClient(Health, t),
      };
    };

    it("creates an agent and reads it back", async () => {
      const c = clients(s.adminKey);
      const { agent } = await c.agents.createAgent({ agent: { name: "over the wire", instructions: "Be brief." } });
      expect(agent?.id).toMatch(/^[0-9a-f-]{36}$/);
      const got = await c.agents.getAgent({ agentId: agent!.id });
      expect(got.agent?.name).toBe("over the wire");
      expect(got.agent?.instructions).toBe("Be brief.");
      expect(got.agent?.etag).toBe(agent?.etag);
    });

    it("streams health Watch without a key", async () => {
      const c = clients();
      const statuses: HealthCheckResponse_ServingStatus[] = [];
      for await (const res of c.health.watch({ service: "parley.v1.SessionService" })) {
        statuses.push(res.status);
        // The stream stays open while nothing changes; leaving the loop cancels it.
        break;
      }
      expect(statuses).toEqual([HealthCheckResponse_ServingStatus.SERVING]);
    });

    it("streams an Ask to completion", async () => {
      const c = clients(s.adminKey);
      const { agent } = await c.agents.createAgent({ agent: { name: "streamer", model: "fake:hello" } });
      const { session } = await c.sessions.createSession({ session: { agentId: agent!.id, userId: "u1" } });
      const kinds: string[] = [];
      let text = "";
      let finalStatus: MessageStatus | undefined;
      for await (const res of c.sessions.ask({ sessionId: session!.id, content: "hi" })) {
        const e = res.event!.event;
        kinds.push(e.case ?? "none");
        if (e.case === "textDelta") text += e.value.text;
        if (e.case === "completed") finalStatus = e.value.message?.status;
      }
      expect(kinds[0]).toBe("started");
      expect(kinds.at(-1)).toBe("completed");
      expect(text).toBe("Hello, world!");
      expect(finalStatus).toBe(MessageStatus.COMPLETE);
    });

    it("answers Unauthenticated without a key, for unary and streaming calls", async () => {
      const c = clients();
      const unary = await c.agents.listAgents({}).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(unary?.code).toBe(Code.Unauthenticated);
      expect(unary?.findDetails(ErrorInfoSchema)[0]?.reason).toBe("UNAUTHENTICATED");
      const streaming = await (async () => {
        for await (const _ of c.sessions.ask({ sessionId: "0190c5c4-0000-7000-8000-000000000000", content: "x" })) {
          // unreachable: the stream must fail before any event
        }
      })().then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(streaming?.code).toBe(Code.Unauthenticated);
    });

    it("answers Unauthenticated for a wrong key", async () => {
      const c = clients("pk_not-a-real-key");
      const err = await c.agents.listAgents({}).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err?.code).toBe(Code.Unauthenticated);
    });
  });

  it("answers a CORS preflight with Connect's and gRPC-Web's headers", async () => {
    const res = await request1(`${s.url}/parley.v1.AgentService/CreateAgent`, {
      method: "OPTIONS",
      headers: {
        Origin: "https://chat.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,connect-protocol-version,x-grpc-web",
      },
    });
    expect(res.status).toBe(204);
    expect(res.headers["access-control-allow-origin"]).toBe("*");
    const allowMethods = String(res.headers["access-control-allow-methods"]).split(",");
    expect(allowMethods).toEqual(expect.arrayContaining(["POST", "GET"]));
    const allowHeaders = String(res.headers["access-control-allow-headers"]).toLowerCase().split(",");
    expect(allowHeaders).toEqual(
      expect.arrayContaining(["authorization", "content-type", "connect-protocol-version", "x-grpc-web"]),
    );
  });

  it("exposes grpc-status and grpc-message to browsers on actual responses", async () => {
    const res = await request1(`${s.url}/parley.v1.AgentService/ListAgents`, {
      method: "POST",
      headers: { Origin: "https://chat.example", "Content-Type": "application/json" },
    });
    expect(res.headers["access-control-allow-origin"]).toBe("*");
    const exposed = String(res.headers["access-control-expose-headers"]).toLowerCase().split(",");
    expect(exposed).toEqual(expect.arrayContaining(["grpc-status", "grpc-message", "grpc-status-details-bin"]));
  });

  it("serves /healthz and /readyz over HTTP/1.1", async () => {
    const live = await request1(`${s.url}/healthz`);
    expect(live.status).toBe(200);
    const ready = await request1(`${s.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.body)).toMatchObject({ status: "ready", database: { reachable: true } });
  });

  it("serves /readyz over HTTP/2 cleartext (prior knowledge) on the same port", async () => {
    const session = http2.connect(s.url);
    try {
      const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = session.request({ ":path": "/readyz", ":method": "GET" });
        let status = 0;
        let body = "";
        req.on("response", (h) => (status = Number(h[":status"])));
        req.setEncoding("utf8");
        req.on("data", (c: string) => (body += c));
        req.on("end", () => resolve({ status, body }));
        req.on("error", reject);
        req.end();
      });
      expect(status).toBe(200);
      expect(JSON.parse(body)).toMatchObject({ status: "ready" });
    } finally {
      session.close();
    }
  });

  it("answers 404 for a path that is neither an RPC nor a health endpoint", async () => {
    const res = await request1(`${s.url}/nope`);
    expect(res.status).toBe(404);
  });

  // As Node's own HTTP and HTTP/2 servers do: with Nagle's algorithm on, a stream's next small
  // message (an Ask's next delta) waits until the client has acknowledged the previous one.
  it("turns Nagle's algorithm off on every connection it accepts, HTTP/1.1 and HTTP/2 alike", async () => {
    const calls: Array<{ localPort: number | undefined; remotePort: number | undefined; noDelay: boolean | undefined }> = [];
    const original = net.Socket.prototype.setNoDelay;
    net.Socket.prototype.setNoDelay = function (this: net.Socket, noDelay?: boolean) {
      calls.push({ localPort: this.localPort, remotePort: this.remotePort, noDelay });
      return original.call(this, noDelay);
    };
    try {
      expect((await request1(`${s.url}/healthz`)).status).toBe(200);
      const session = http2.connect(s.url);
      try {
        await new Promise<void>((resolve, reject) => {
          const req = session.request({ ":path": "/healthz", ":method": "GET" });
          req.on("error", reject);
          req.on("end", resolve);
          req.resume();
          req.end();
        });
      } finally {
        session.close();
      }
    } finally {
      net.Socket.prototype.setNoDelay = original;
    }
    // Node's setNoDelay() without an argument turns it on too.
    const on = new Set(calls.filter((c) => c.localPort === s.port && c.noDelay !== false).map((c) => c.remotePort));
    // One HTTP/1.1 connection and one HTTP/2 connection, each set as it was accepted.
    expect(on.size).toBe(2);
  });
});

describe("CORS with an allow-list", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startTestServer({ config: { corsOrigins: ["https://allowed.example"] } });
  });
  afterAll(async () => {
    await s?.close();
  });

  const preflight = (origin: string) =>
    request1(`${s.url}/parley.v1.AgentService/CreateAgent`, {
      method: "OPTIONS",
      headers: { Origin: origin, "Access-Control-Request-Method": "POST" },
    });

  it("allows a listed origin", async () => {
    const res = await preflight("https://allowed.example");
    expect(res.headers["access-control-allow-origin"]).toBe("https://allowed.example");
  });

  it("does not allow another origin", async () => {
    const res = await preflight("https://evil.example");
    expect(res.headers["access-control-allow-origin"]).toBeUndefined();
  });
});

describe("TLS", () => {
  let s: TestServer;
  let dir: string;
  let ca: string;

  beforeAll(async () => {
    const pems = await generate([{ name: "commonName", value: "localhost" }], {
      keyType: "ec",
      curve: "P-256",
      extensions: [{ name: "subjectAltName", altNames: [{ type: 2, value: "localhost" }, { type: 7, ip: "127.0.0.1" }] }],
    });
    dir = mkdtempSync(join(tmpdir(), "parley-tls-"));
    writeFileSync(join(dir, "cert.pem"), pems.cert);
    writeFileSync(join(dir, "key.pem"), pems.private);
    ca = pems.cert;
    s = await startTestServer({
      config: { tls: { certFile: join(dir, "cert.pem"), keyFile: join(dir, "key.pem") } },
    });
  });
  afterAll(async () => {
    await s?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function alpn(protocols: string[]): Promise<string | false> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port: s.port, ca, ALPNProtocols: protocols, servername: "localhost" }, () => {
        resolve(socket.alpnProtocol ?? false);
        socket.end();
      });
      socket.on("error", reject);
    });
  }

  it("negotiates h2 and http/1.1 with ALPN", async () => {
    expect(s.url).toMatch(/^https:/);
    expect(await alpn(["h2", "http/1.1"])).toBe("h2");
    expect(await alpn(["http/1.1"])).toBe("http/1.1");
  });

  it("serves gRPC over HTTP/2 with TLS", async () => {
    const t = createGrpcTransport({ baseUrl: s.url, nodeOptions: { ca }, interceptors: [bearer(s.adminKey)] });
    const { agent } = await createClient(AgentService, t).createAgent({ agent: { name: "secure" } });
    expect(agent?.name).toBe("secure");
  });

  it("serves Connect and gRPC-Web over HTTP/1.1 with TLS", async () => {
    const connect = createConnectTransport({
      baseUrl: s.url,
      httpVersion: "1.1",
      nodeOptions: { ca },
      interceptors: [bearer(s.adminKey)],
    });
    const { agent } = await createClient(AgentService, connect).createAgent({ agent: { name: "secure 1.1" } });
    const grpcWeb = createGrpcWebTransport({
      baseUrl: s.url,
      httpVersion: "1.1",
      nodeOptions: { ca },
      interceptors: [bearer(s.adminKey)],
    });
    const got = await createClient(AgentService, grpcWeb).getAgent({ agentId: agent!.id });
    expect(got.agent?.name).toBe("secure 1.1");
  });
});
