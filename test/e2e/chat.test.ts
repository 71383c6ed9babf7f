// `parley chat` (runChat) driven like a terminal: keys in, screen text out.
import { PassThrough } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MessageRole, MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { runChat } from "../../src/cli/chat.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { controlledModel, createFakeModels } from "../helpers/fake-models.js";

interface Terminal {
  type(text: string): void;
  /** Resolves once the screen shows `text` (after what was awaited before). */
  waitFor(text: string): Promise<void>;
  screen(): string;
  done: Promise<void>;
}

function startChat(url: string, apiKey: string, extra: { model?: string; userId?: string } = {}): Terminal {
  const input = new PassThrough();
  const output = new PassThrough();
  let screen = "";
  let seenUpTo = 0;
  const waiters: Array<() => void> = [];
  output.on("data", (chunk: Buffer) => {
    screen += chunk.toString("utf8");
    for (const w of waiters.splice(0)) w();
  });
  const done = runChat({ url, apiKey, input, output, terminal: true, env: {}, ...extra });
  return {
    type: (text) => input.write(text),
    screen: () => screen,
    done,
    async waitFor(text) {
      for (;;) {
        const i = screen.indexOf(text, seenUpTo);
        if (i >= 0) {
          seenUpTo = i + text.length;
          return;
        }
        await Promise.race([
          new Promise<void>((r) => waiters.push(r)),
          done.then(() => Promise.reject(new Error(`chat ended before "${text}":\n${screen}`))),
        ]);
      }
    },
  };
}

describe("parley chat against a running server", () => {
  const controlled = controlledModel();
  let t: TestServer;

  beforeAll(async () => {
    t = await startTestServer({ models: createFakeModels({ controlled }) });
  });

  afterAll(async () => {
    await t?.close();
  });

  it("streams answers, pages the history and exits on /exit", async () => {
    const chat = startChat(t.url, t.adminKey, { userId: "chat-user" });
    await chat.waitFor("/help for commands.");
    chat.type("Hello\r");
    await chat.waitFor("assistant: Hello, world!");
    chat.type("Again\r");
    await chat.waitFor("assistant: Hello, world!");
    chat.type("/history 2\r");
    await chat.waitFor("#3 you: Again");
    await chat.waitFor("#4 assistant: Hello, world!");
    await chat.waitFor("/more");
    chat.type("/more\r");
    await chat.waitFor("#1 you: Hello");
    await chat.waitFor("#2 assistant: Hello, world!");
    chat.type("/exit\r");
    await chat.done;

    const { sessions } = await t.client(SessionService).listSessions({ userId: "chat-user" });
    expect(sessions.map((s) => s.messageCount)).toEqual([4n]);
  });

  it("Ctrl-C cancels the answer being written and keeps the partial answer", async () => {
    const chat = startChat(t.url, t.adminKey, { model: "fake:controlled", userId: "chat-cancel" });
    await chat.waitFor("/help for commands.");
    chat.type("Tell me a story\r");
    const call = await controlled.call(0);
    call.push("Once upon");
    await chat.waitFor("assistant: Once upon");
    chat.type("\x03");
    await call.aborted;
    await chat.waitFor("[cancelled]");
    chat.type("\x04"); // Ctrl-D at the prompt ends the chat too.
    await chat.done;

    const { sessions } = await t.client(SessionService).listSessions({ userId: "chat-cancel" });
    const { messages } = await t.client(MessageService).listMessages({ sessionId: sessions[0]!.id });
    expect(messages.map((m) => [m.role, m.status, m.content])).toEqual([
      [MessageRole.USER, MessageStatus.COMPLETE, "Tell me a story"],
      [MessageRole.ASSISTANT, MessageStatus.CANCELLED, "Once upon"],
    ]);
  });

  it("reads piped input that ends before the session is set up", async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    let screen = "";
    output.on("data", (chunk: Buffer) => (screen += chunk.toString("utf8")));
    input.end("Hello\n/history\n");
    await runChat({ url: t.url, apiKey: t.adminKey, userId: "chat-piped", input, output, terminal: false, env: {} });
    expect(screen).toContain("assistant: Hello, world!\n");
    expect(screen).toContain("#1 you: Hello\n#2 assistant: Hello, world!\n");
  });

  it("fails with NotFound for an unknown session instead of starting", async () => {
    const err = await runChat({
      url: t.url,
      apiKey: t.adminKey,
      sessionId: "0190e2c5-0000-7000-8000-000000000000",
      input: new PassThrough(),
      output: new PassThrough(),
      env: {},
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(ConnectError.from(err).code).toBe(Code.NotFound);
  });
});
