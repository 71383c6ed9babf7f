// The runnable examples run as a user would run them, against a real server.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { createFakeModels } from "../helpers/fake-models.js";

const run = promisify(execFile);
const root = fileURLToPath(new URL("../../", import.meta.url));

describe("examples/node-chat.ts", () => {
  let t: TestServer;

  beforeAll(async () => {
    t = await startTestServer({ models: createFakeModels() });
  });

  afterAll(async () => {
    await t?.close();
  });

  it.each(["grpc", "connect"])("creates an agent and a session, streams an Ask and prints the history over %s", async (transport) => {
    const { stdout } = await run(`${root}node_modules/.bin/tsx`, ["examples/node-chat.ts", "Hi", "there"], {
      cwd: root,
      env: {
        ...process.env,
        PARLEY_URL: t.url,
        PARLEY_API_KEY: t.adminKey,
        PARLEY_MODEL: "fake:hello",
        PARLEY_TRANSPORT: transport,
      },
    });
    expect(stdout).toContain("> Hi there\nHello, world!\n");
    expect(stdout).toContain(
      ["history:", "  #1 ASSISTANT: Hi! Ask me anything.", "  #2 USER: Hi there", "  #3 ASSISTANT: Hello, world!"].join("\n"),
    );
  });
});
