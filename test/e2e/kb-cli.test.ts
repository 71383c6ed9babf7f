import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KnowledgeService } from "../../gen/parley/v1/knowledge_pb.js";
import { createParleyClient, type NodeParleyClient } from "../../src/client/node.js";
import { makePdf } from "../helpers/pdf.js";
import { runCli, spawnCli, type CliProcess } from "../helpers/server.js";

// A bare machine: embedded database, no model provider. `parley serve`, `parley kb add`, then an Ask answered by builtin:extractive.
describe("parley kb add against a running server on embedded defaults", () => {
  let dir: string;
  let server: CliProcess;
  let url: string;
  let key: string;
  let client: NodeParleyClient;
  const env = () => ({ PARLEY_DATA_DIR: join(dir, "data"), DATABASE_URL: "memory://", PORT: "0", PARLEY_KB_SYNC_MAX_BYTES: "200" });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "parley-kb-cli-"));
    server = spawnCli(["serve"], env());
    url = await server.listening();
    key = readFileSync(join(dir, "data", "admin.key"), "utf8").trim();
    client = createParleyClient({ baseUrl: url, apiKey: key });
  }, 120_000);
  afterAll(async () => {
    client?.close();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("adds Markdown and PDF files (the large one in the background, polled to READY) and reports a bad file with exit code 1", async () => {
    writeFileSync(join(dir, "guide.md"), "# Bees\n\nA honeybee colony has exactly one queen.\n");
    const long = Array.from({ length: 30 }, (_, i) => `Page paragraph ${i}: the lighthouse keeper refills the lamp oil every ${i + 2} days.`);
    writeFileSync(join(dir, "lighthouse.pdf"), await makePdf([long.slice(0, 15), long.slice(15), ["The lighthouse lamp is visible from 40 kilometres away."]]));
    writeFileSync(join(dir, "notes.docx"), "PK\u0003\u0004 not supported");

    const ok = await runCli(["kb", "add", join(dir, "guide.md"), join(dir, "lighthouse.pdf"), "--kb", "Manuals", "--url", url, "--no-progress"], env());
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/guide\.md: ready, 1 chunks/);
    expect(ok.stdout).toMatch(/lighthouse\.pdf: ready, \d+ chunks/);

    const bad = await runCli(["kb", "add", join(dir, "notes.docx"), "--kb", "Manuals", "--url", url, "--no-progress"], env());
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/notes\.docx: failed: InvalidArgument/);
  });

  it("answers a question about the added PDF with builtin:extractive and a citation", async () => {
    const kbs = createClient(KnowledgeService, createKbTransport());
    const manuals = (await kbs.listKnowledgeBases({})).knowledgeBases.find((k) => k.name === "Manuals")!;
    expect(Number(manuals.documentCount)).toBe(2);
    const agent = (await client.agents.createAgent({ agent: { name: "Keeper", knowledgeBaseIds: [manuals.id] } })).agent!;
    const session = (await client.sessions.createSession({ session: { agentId: agent.id, userId: "me" } })).session!;
    let text = "";
    let model = "";
    let citations: number[] = [];
    for await (const r of client.sessions.ask({ sessionId: session.id, content: "How far away is the lighthouse lamp visible?" })) {
      const e = r.event!.event;
      if (e.case === "started") model = e.value.model;
      if (e.case === "references") citations = e.value.references!.chunks.filter((c) => c.documentName === "lighthouse.pdf").map((c) => c.citation);
      if (e.case === "textDelta") text += e.value.text;
    }
    expect(model).toBe("builtin:extractive");
    expect(text).toContain("40 kilometres");
    expect(citations.some((n) => text.includes(`[${n}]`))).toBe(true);
  });

  function createKbTransport() {
    // The same server over gRPC with the admin key, for the one service the bundled client does not expose.
    return createGrpcTransport({
      baseUrl: url,
      interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${key}`), next(req))],
    });
  }
});
