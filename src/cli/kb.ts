import { readFile, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { SingleBar, MultiBar, Presets } from "cli-progress";
import { DocumentStatus, KnowledgeService, type Document } from "../../gen/parley/v1/knowledge_pb.js";
import { KNOWLEDGE_LIMITS } from "../services/knowledge-service.js";
import { describeError, resolveApiKey } from "./chat.js";
import { CliError } from "./common.js";

export interface KbAddOptions {
  readonly url: string;
  readonly files: readonly string[];
  /** Knowledge base id or name; a name that does not exist is created. Default "Default". */
  readonly knowledgeBase?: string;
  readonly apiKey?: string;
  readonly dataDir: string;
  /** Show progress bars (default: when stderr is a terminal). */
  readonly progress?: boolean;
  /** How often a PROCESSING document is polled. */
  readonly pollMs?: number;
  readonly out?: NodeJS.WritableStream;
  readonly env?: NodeJS.ProcessEnv;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function findOrCreateKnowledgeBase(kb: Client<typeof KnowledgeService>, idOrName: string): Promise<{ id: string; name: string }> {
  if (UUID.test(idOrName)) {
    const found = (await kb.getKnowledgeBase({ knowledgeBaseId: idOrName })).knowledgeBase!;
    return { id: found.id, name: found.name };
  }
  let pageToken = "";
  do {
    const page = await kb.listKnowledgeBases({ pageSize: 1000, pageToken });
    const match = page.knowledgeBases.find((k) => k.name === idOrName);
    if (match) return { id: match.id, name: match.name };
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  const created = (await kb.createKnowledgeBase({ knowledgeBase: { name: idOrName } })).knowledgeBase!;
  return { id: created.id, name: created.name };
}

/**
 * `parley kb add FILE…`: uploads files to a knowledge base of a running
 * server and shows each one's ingestion progress until it is READY or FAILED.
 * Fails (exit code 1) when any file could not be added.
 */
export async function runKbAdd(opts: KbAddOptions): Promise<void> {
  const out = opts.out ?? process.stdout;
  const apiKey = resolveApiKey(opts.apiKey, opts.env ?? process.env, opts.dataDir);
  if (!apiKey) throw new CliError(`no API key: pass --key, set PARLEY_API_KEY, or run where ${join(opts.dataDir, "admin.key")} exists`);
  if (opts.files.length === 0) throw new CliError("name at least one file", 2);
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${apiKey}`);
    return next(req);
  };
  const sessionManager = new Http2SessionManager(opts.url);
  const kb = createClient(KnowledgeService, createGrpcTransport({ baseUrl: opts.url, sessionManager, interceptors: [bearer] }));
  const showProgress = opts.progress ?? Boolean(process.stderr.isTTY);
  const bars = showProgress
    ? new MultiBar({ format: " {bar} {percentage}% | {file} {status}", hideCursor: true, clearOnComplete: false, stopOnComplete: false }, Presets.shades_classic)
    : undefined;
  let failed = 0;
  // Printed after the bars are stopped: lines logged while they redraw can be lost.
  const lines: string[] = [];
  try {
    let base: { id: string; name: string };
    try {
      base = await findOrCreateKnowledgeBase(kb, opts.knowledgeBase ?? "Default");
    } catch (err) {
      throw new CliError(`cannot reach the knowledge base at ${opts.url}: ${describeError(err)}`);
    }
    out.write(`knowledge base "${base.name}" (${base.id})\n`);
    for (const file of opts.files) {
      const name = basename(file);
      const bar: SingleBar | undefined = bars?.create(100, 0, { file: name, status: "uploading" });
      const report = (line: string) => {
        if (bars) lines.push(line);
        else out.write(`${line}\n`);
      };
      try {
        const size = (await stat(file)).size;
        if (size > KNOWLEDGE_LIMITS.documentBytes) throw new Error(`${size} bytes; a document may have at most ${KNOWLEDGE_LIMITS.documentBytes}`);
        const content = await readFile(file);
        let doc = (await kb.createDocument({ knowledgeBaseId: base.id, document: { name }, source: { case: "content", value: content } })).document!;
        while (doc.status === DocumentStatus.PROCESSING) {
          bar?.update(Math.floor(doc.progress * 100), { status: "processing" });
          await new Promise((r) => setTimeout(r, opts.pollMs ?? 500));
          doc = (await kb.getDocument({ documentId: doc.id })).document!;
        }
        finish(doc, bar, report);
        if (doc.status !== DocumentStatus.READY) failed++;
      } catch (err) {
        failed++;
        bar?.update(0, { status: "failed" });
        report(`${name}: failed: ${err instanceof ConnectError ? describeError(err) : err instanceof Error ? err.message : String(err)}`);
      }
    }
  } finally {
    bars?.stop();
    for (const line of lines) out.write(`${line}\n`);
    sessionManager.abort();
  }
  if (failed > 0) throw new CliError(`${failed} of ${opts.files.length} files could not be added`);
}

function finish(doc: Document, bar: SingleBar | undefined, report: (line: string) => void) {
  if (doc.status === DocumentStatus.READY) {
    bar?.update(100, { status: "ready" });
    report(`${doc.name}: ready, ${doc.chunkCount} chunks (${doc.id})`);
  } else {
    bar?.update(Math.floor(doc.progress * 100), { status: "failed" });
    report(`${doc.name}: failed: ${doc.error}`);
  }
}
