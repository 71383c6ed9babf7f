import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createParleyClient, type NodeParleyClientOptions } from "../../src/client/node.js";
import { startFakeOpenAI, type FakeOpenAI } from "../helpers/fake-openai.js";
import { spawnCli, type CliProcess } from "../helpers/server.js";

/**
 * A server that dies (SIGKILL) under a Node client's open streams and calls: each of the
 * client's pending reads ends in a ConnectError given to its reader, and nothing is left
 * for Node's unhandled-rejection handler, which by default would end the client's process.
 */
describe("the Node client when its server is killed mid-stream", () => {
  let fake: FakeOpenAI;
  const dirs: string[] = [];
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);

  beforeAll(async () => {
    // Slow enough that the Ask is still streaming when its server is killed.
    fake = await startFakeOpenAI({ tokens: Array.from({ length: 200 }, (_, i) => `t${i} `), delayMs: 50 });
    process.on("unhandledRejection", onUnhandled);
  });

  afterAll(async () => {
    process.off("unhandledRejection", onUnhandled);
    await fake?.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  async function startServer(): Promise<{ p: CliProcess; url: string; key: string }> {
    const dir = mkdtempSync(join(tmpdir(), "parley-killed-"));
    dirs.push(dir);
    const p = spawnCli(["serve"], {
      DATABASE_URL: "memory://",
      PORT: "0",
      PARLEY_HOST: "127.0.0.1",
      PARLEY_DATA_DIR: dir,
      OPENAI_COMPATIBLE_BASE_URL: fake.baseURL,
      PARLEY_LOG_LEVEL: "warn",
    });
    const url = await p.listening();
    const key = /^\s+(pk_\S+)$/m.exec(p.stdout())?.[1];
    if (!key) throw new Error(`no admin key printed:\n${p.stdout()}`);
    return { p, url, key };
  }

  /** How a pending read ended: its error's code, or "no error". */
  const outcome = (read: Promise<unknown>) =>
    read.then(
      () => "no error",
      (err: unknown) => (err instanceof ConnectError ? Code[err.code] : `not a ConnectError: ${String(err)}`),
    );

  type Transport = Pick<NodeParleyClientOptions, "transport" | "httpVersion">;
  const grpc: Transport = { transport: "grpc" };
  const connectH2: Transport = { transport: "connect", httpVersion: "2" };
  const connectH1: Transport = { transport: "connect", httpVersion: "1.1" };
  // ask() without resumes fails on the first transport error; with them it first retries ResumeAsk.
  const cases: [string, number, Transport][] = [
    ["gRPC", 0, grpc],
    ["gRPC", 2, grpc],
    ["Connect over HTTP/2", 2, connectH2],
    ["Connect over HTTP/1.1", 0, connectH1],
  ];

  it.each(cases)("%s, ask() with %i resumes: open streams and an Ask end with errors their readers get", async (_name, maxResumes, options) => {
    const { p, url, key } = await startServer();
    const client = createParleyClient({ baseUrl: url, apiKey: key, ...options });
    try {
      const { agent } = await client.agents.createAgent({ agent: { name: "slow", model: "openai-compatible:slow" } });
      const { session } = await client.sessions.createSession({ session: { agentId: agent!.id, userId: "u" } });
      const { session: other } = await client.sessions.createSession({ session: { agentId: agent!.id, userId: "u" } });

      // Each read's outcome is taken as it starts (a handler attached only after the kill
      // would leave a rejection unhandled for a moment: the test's, not the client's).
      // A WatchSession stream read in a loop, and one whose first read is pending.
      const reading = outcome(
        (async () => {
          for await (const _ of client.sessions.watchSession({ sessionId: other!.id })) void _;
        })(),
      );
      const waiting = outcome(client.sessions.watchSession({ sessionId: other!.id })[Symbol.asyncIterator]().next());
      // An Ask through the client's ask() helper (it resumes after transport errors, then gives up).
      let deltas = 0;
      let firstDelta!: () => void;
      const streaming = new Promise<void>((resolve) => (firstDelta = resolve));
      const asking = outcome(
        (async () => {
          for await (const e of client.ask({ sessionId: session!.id, content: "go" }, { maxResumes, resumeDelayMs: () => 20 })) {
            if (e.event.case === "textDelta" && ++deltas === 1) firstDelta();
          }
        })(),
      );
      await streaming;

      p.child.kill("SIGKILL");
      await p.exited;
      const ends = await Promise.all([reading, waiting, asking]);
      // Seen here: HTTP/2 streams reset by the dying connection read as Canceled (connect-node's
      // mapping of RST_STREAM CANCEL), HTTP/1.1's "socket hang up" as Aborted, and ask() after its
      // resumes found no server as Unavailable.
      for (const end of ends) expect(["Canceled", "Unavailable", "Aborted"]).toContain(end);
      expect(deltas).toBeGreaterThan(0);
      expect(deltas).toBeLessThan(200);

      // Whatever the client settles after the kill has had its turn.
      await new Promise((r) => setTimeout(r, 200));
      expect(unhandled.map(String)).toEqual([]);
    } finally {
      client.close();
      await p.stop("SIGKILL");
    }
  });
});
