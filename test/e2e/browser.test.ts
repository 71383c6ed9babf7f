// The browser example (examples/browser) in a real Chromium, served from another
// origin than Parley (so CORS is exercised), over Connect and over gRPC-Web.
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MessageRole, MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { controlledModel, createFakeModels } from "../helpers/fake-models.js";

const CHROMIUM = "/usr/bin/chromium";
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) {
  if (process.env.PARLEY_REQUIRE_SERVICES === "1") {
    throw new Error(`PARLEY_REQUIRE_SERVICES=1 but ${CHROMIUM} is missing (apt-get install -y chromium)`);
  }
  console.warn(`browser tests skipped: ${CHROMIUM} is missing (apt-get install -y chromium)`);
}

const exampleDir = fileURLToPath(new URL("../../examples/browser/", import.meta.url));

/** Serves examples/browser with its bundle, on its own origin. */
async function serveExample(): Promise<{ url: string; close(): Promise<void> }> {
  const bundle = await build({
    entryPoints: [`${exampleDir}main.ts`],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "silent",
  });
  const js = bundle.outputFiles[0]!.contents;
  const html = await readFile(`${exampleDir}index.html`);
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?", 1)[0];
    if (path === "/" || path === "/index.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(html);
    } else if (path === "/dist/main.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(js);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

describe.skipIf(!hasChromium)("browser example in Chromium", () => {
  const controlled = controlledModel();
  let t: TestServer;
  let site: Awaited<ReturnType<typeof serveExample>>;
  let browser: Browser;

  beforeAll(async () => {
    t = await startTestServer({ models: createFakeModels({ controlled }) });
    site = await serveExample();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  });

  afterAll(async () => {
    await browser?.close();
    await site?.close();
    await t?.close();
  });

  async function openChat(params: Record<string, string>): Promise<Page> {
    const page = await browser.newPage();
    const pageErrors: Error[] = [];
    page.on("pageerror", (e) => pageErrors.push(e));
    const query = new URLSearchParams({ url: t.url, key: t.adminKey, ...params });
    await page.goto(`${site.url}/?${query}`);
    expect(new URL(page.url()).origin).not.toBe(new URL(t.url).origin);
    expect(pageErrors).toEqual([]);
    return page;
  }

  /** Waits until the page's status leaves the in-progress states and returns it. */
  async function finalStatus(page: Page): Promise<string> {
    const status = page.locator("#status");
    await page.waitForFunction(
      () => !["idle", "connecting", "streaming"].includes(document.getElementById("status")?.dataset.status ?? ""),
    );
    return `${await status.getAttribute("data-status")}: ${await status.textContent()}`;
  }

  it.each(["connect", "grpc-web"])("creates an agent and a session and streams an Ask over %s", async (transport) => {
    const page = await openChat({ transport, model: "fake:hello" });
    try {
      await page.fill("#question", `Hi over ${transport}`);
      await page.click("#send");
      expect(await finalStatus(page)).toBe("completed: completed");
      expect(await page.locator(".message.user").allTextContents()).toEqual([`Hi over ${transport}`]);
      expect(await page.locator(".message.assistant").allTextContents()).toEqual(["Hello, world!"]);

      // The page's turn is in the server's history, as the page rendered it.
      const sessions = t.client(SessionService);
      const { sessions: found } = await sessions.listSessions({ userId: "browser-user" });
      const messages = t.client(MessageService);
      const histories = await Promise.all(found.map((s) => messages.listMessages({ sessionId: s.id })));
      const turn = histories.find((h) => h.messages.some((m) => m.content === `Hi over ${transport}`));
      expect(turn?.messages.map((m) => [m.role, m.status, m.content])).toEqual([
        [MessageRole.USER, MessageStatus.COMPLETE, `Hi over ${transport}`],
        [MessageRole.ASSISTANT, MessageStatus.COMPLETE, "Hello, world!"],
      ]);
    } finally {
      await page.close();
    }
  });

  it("Stop cancels the answer; the partial answer is kept as CANCELLED", async () => {
    const page = await openChat({ transport: "connect", model: "fake:controlled" });
    try {
      await page.fill("#question", "Tell me a long story");
      await page.click("#send");
      const call = await controlled.call(0);
      call.push("Once upon");
      await page.locator(".message.assistant", { hasText: "Once upon" }).waitFor();
      await page.click("#stop");
      await call.aborted;
      expect(await finalStatus(page)).toBe("cancelled: cancelled");

      const { sessions: found } = await t.client(SessionService).listSessions({ userId: "browser-user" });
      const messages = t.client(MessageService);
      const histories = await Promise.all(found.map((s) => messages.listMessages({ sessionId: s.id })));
      const turn = histories.find((h) => h.messages.some((m) => m.content === "Tell me a long story"));
      const answer = turn?.messages.find((m) => m.role === MessageRole.ASSISTANT);
      // The final status is written right after the abort reaches the runtime.
      await expect
        .poll(async () => (await messages.getMessage({ messageId: answer!.id })).message?.status, { timeout: 10_000 })
        .toBe(MessageStatus.CANCELLED);
      expect((await messages.getMessage({ messageId: answer!.id })).message?.content).toBe("Once upon");
    } finally {
      await page.close();
    }
  });
});
