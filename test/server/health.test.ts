import { mkdtempSync, rmSync } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { createApp, type App } from "../../src/app.js";
import { loadConfig } from "../../src/config.js";
import { openDatabase, type DatabaseHandle } from "../../src/db/database.js";
import { startServer, type RunningServer } from "../../src/server.js";
import { bearer } from "../helpers/app.js";
import { backends, createTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

/** A TCP proxy in front of Postgres that the test can cut (every connection dropped, new ones refused) and restore. */
async function startCuttableProxy(target: { host: string; port: number }) {
  const pairs = new Set<[net.Socket, net.Socket]>();
  let up = true;
  const server = net.createServer((client) => {
    if (!up) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    cut() {
      up = false;
      for (const [a, b] of pairs) {
        a.destroy();
        b.destroy();
      }
      pairs.clear();
    },
    restore() {
      up = true;
    },
    async close() {
      this.cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function getJson(url: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      })
      .on("error", reject);
  });
}

describe("grpc.health.v1.Health", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startTestServer();
  });
  afterAll(async () => {
    await s?.close();
  });

  it("reports SERVING for the server and each of its services, without a key", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: s.url }));
    for (const service of [
      "",
      "parley.v1.AgentService",
      "parley.v1.SessionService",
      "parley.v1.MessageService",
      "grpc.health.v1.Health",
    ]) {
      expect((await health.check({ service })).status, service).toBe(Status.SERVING);
    }
  });

  it("answers NOT_FOUND to Check and SERVICE_UNKNOWN to Watch for an unknown service", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: s.url }));
    const err = await health.check({ service: "no.such.Service" }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.code).toBe(Code.NotFound);
    for await (const res of health.watch({ service: "no.such.Service" })) {
      expect(res.status).toBe(Status.SERVICE_UNKNOWN);
      break;
    }
  });
});

const withPostgres = backends().includes("postgres");

describe.skipIf(!withPostgres)("health while Postgres is unreachable", () => {
  let database: TestDatabase;
  let proxy: Awaited<ReturnType<typeof startCuttableProxy>>;
  let handle: DatabaseHandle;
  let app: App;
  let server: RunningServer;
  let dataDir: string;

  beforeAll(async () => {
    database = await createTestDatabase("postgres");
    const direct = new URL(database.url);
    proxy = await startCuttableProxy({ host: direct.hostname, port: Number(direct.port || 5432) });
    const proxied = new URL(database.url);
    proxied.hostname = "127.0.0.1";
    proxied.port = String(proxy.port);
    handle = await openDatabase({ url: proxied.toString(), dataDir: "", poolSize: 4 });
    dataDir = mkdtempSync(join(tmpdir(), "parley-health-"));
    const config = loadConfig({}, { dataDir, databaseUrl: proxied.toString(), logLevel: "silent" });
    app = await createApp(config, { database: handle, log: pino({ level: "silent" }) });
    server = await startServer(app, { host: "127.0.0.1", port: 0 });
  });
  afterAll(async () => {
    proxy?.restore();
    await server?.close();
    await handle?.close();
    await proxy?.close();
    await database?.drop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("turns NOT_SERVING and 503 during the outage, answers RPCs with UNAVAILABLE, and recovers", async () => {
    const adminKey = app.bootstrap!.adminKey;
    const health = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    const agents = createClient(AgentService, createGrpcTransport({ baseUrl: server.url, interceptors: [bearer(adminKey)] }));
    await agents.createAgent({ agent: { name: "before the outage" } });

    const watch = health.watch({ service: "" })[Symbol.asyncIterator]();
    // On a busy machine a ping may time out now and then: start from a SERVING state.
    for (;;) {
      const r = await watch.next();
      expect(r.done).toBe(false);
      if (r.value?.status === Status.SERVING) break;
    }
    expect((await getJson(`${server.url}/readyz`)).status).toBe(200);

    proxy.cut();
    // Watch sends only changes: the next message is the outage.
    expect((await watch.next()).value?.status).toBe(Status.NOT_SERVING);
    expect((await health.check({ service: "parley.v1.SessionService" })).status).toBe(Status.NOT_SERVING);
    const ready = await getJson(`${server.url}/readyz`);
    expect(ready.status).toBe(503);
    expect(ready.body).toMatchObject({ status: "unavailable", database: { reachable: false } });

    const err = await agents.listAgents({}).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.code).toBe(Code.Unavailable);
    expect(err?.findDetails(ErrorInfoSchema)[0]?.reason).toBe("DATABASE_UNAVAILABLE");

    proxy.restore();
    expect((await watch.next()).value?.status).toBe(Status.SERVING);
    await watch.return?.();
    expect((await getJson(`${server.url}/readyz`)).status).toBe(200);
    const { agents: listed } = await agents.listAgents({});
    expect(listed.map((a) => a.name)).toContain("before the outage");
  });
});
