import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { CLIENT_CONNECTION_WINDOW_BYTES, createParleyClient, type NodeParleyClientOptions } from "../../src/client/node.js";

// What the server may send on the connection before the client reads, as the server sees it
// (its peer's window): the spec's 65,535 bytes unless the client opened it. Why it matters is
// in CLIENT_CONNECTION_WINDOW_BYTES; the bench's scenario 4 shows the effect.
describe("Node client's HTTP/2 connection window", () => {
  let server: http2.Http2Server;
  let baseUrl: string;
  const sessions: http2.ServerHttp2Session[] = [];
  beforeAll(async () => {
    const routes = (router: ConnectRouter) => {
      router.service(AgentService, { createAgent: (req) => ({ agent: { id: "agent-1", name: req.agent?.name ?? "" } }) });
    };
    server = http2.createServer(connectNodeAdapter({ routes }));
    server.on("session", (s) => sessions.push(s));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  for (const transport of [{ transport: "grpc" }, { transport: "connect", httpVersion: "2" }] as const) {
    it(`is opened to ${CLIENT_CONNECTION_WINDOW_BYTES} bytes (${transport.transport})`, async () => {
      const client = createParleyClient({ baseUrl, apiKey: "pk_test", ...(transport as Partial<NodeParleyClientOptions>) });
      try {
        const before = sessions.length;
        const { agent } = await client.agents.createAgent({ agent: { name: "a" } });
        expect(agent?.id).toBe("agent-1");
        // A second call on the same session: the window is opened once per connection.
        await client.agents.createAgent({ agent: { name: "b" } });
        expect(sessions.length).toBe(before + 1);
        const session = sessions.at(-1)!;
        // The WINDOW_UPDATE may trail the responses by a packet.
        for (let i = 0; i < 50 && session.state.remoteWindowSize! < 65_535; i++) await new Promise((r) => setTimeout(r, 10));
        // The window less what the two responses used of it.
        expect(session.state.remoteWindowSize).toBeGreaterThan(CLIENT_CONNECTION_WINDOW_BYTES - 1024);
        expect(session.state.remoteWindowSize).toBeLessThanOrEqual(CLIENT_CONNECTION_WINDOW_BYTES);
      } finally {
        client.close();
      }
    });
  }
});
