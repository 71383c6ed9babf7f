import * as http from "node:http";
import * as zlib from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "../helpers/server.js";

/** A Connect unary call in JSON over a plain HTTP/1.1 socket, accepting gzip; the raw body is kept. */
function connectJson(
  s: TestServer,
  method: string,
  body: unknown,
): Promise<{ status: number; encoding: string | undefined; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const payload = Buffer.from(JSON.stringify(body));
    const req = http.request(
      `${s.url}/${method}`,
      {
        method: "POST",
        agent: false,
        headers: {
          "content-type": "application/json",
          "connect-protocol-version": "1",
          "accept-encoding": "gzip",
          authorization: `Bearer ${s.adminKey}`,
          "content-length": payload.length,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const raw = Buffer.concat(chunks);
          const encoding = res.headers["content-encoding"];
          const text = (encoding === "gzip" ? zlib.gunzipSync(raw) : raw).toString("utf8");
          resolve({ status: res.statusCode ?? 0, encoding, json: JSON.parse(text) as Record<string, unknown> });
        });
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

describe.each([
  { name: "by default (16 KiB)", config: {}, smallGzipped: false },
  { name: "with compressMinBytes 0", config: { compressMinBytes: 0 }, smallGzipped: true },
])("response compression $name", ({ config, smallGzipped }) => {
  let s: TestServer;
  let sessionId: string;

  beforeAll(async () => {
    s = await startTestServer({ config });
    const agent = await connectJson(s, "parley.v1.AgentService/CreateAgent", { agent: { name: "a", model: "builtin:extractive" } });
    const agentId = (agent.json.agent as { id: string }).id;
    const session = await connectJson(s, "parley.v1.SessionService/CreateSession", { session: { agentId, userId: "u" } });
    sessionId = (session.json.session as { id: string }).id;
    // 20 messages of 2,000 characters: a page of about 40 KB.
    const messages = Array.from({ length: 20 }, (_, i) => ({ role: "MESSAGE_ROLE_USER", content: `${i} `.padEnd(2000, "lorem ipsum ") }));
    expect((await connectJson(s, "parley.v1.MessageService/AppendMessages", { sessionId, messages })).status).toBe(200);
  });
  afterAll(async () => {
    await s?.close();
  });

  it(`sends a response of a few KiB ${smallGzipped ? "gzipped" : "uncompressed"}`, async () => {
    // Two messages: about 4 KB, over connect-node's own 1 KiB default and under Parley's.
    const r = await connectJson(s, "parley.v1.MessageService/ListMessages", { sessionId, pageSize: 2 });
    expect(r.status).toBe(200);
    expect(r.encoding === "gzip").toBe(smallGzipped);
    expect(r.json.messages as unknown[]).toHaveLength(2);
  });

  it("gzips a large response for a client that accepts it", async () => {
    const r = await connectJson(s, "parley.v1.MessageService/ListMessages", { sessionId, pageSize: 20 });
    expect(r.status).toBe(200);
    expect(r.encoding).toBe("gzip");
    expect(r.json.messages as unknown[]).toHaveLength(20);
  });
});
