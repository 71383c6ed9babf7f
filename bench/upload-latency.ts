// Uploads over a link with latency: Parley's HTTP/2 flow-control windows against the link's own
// ceiling, measured in the same run. `npx tsx bench/upload-latency.ts [--mb 8] [--delay-ms 25]`.
//
// A TCP proxy on this machine delays every chunk by --delay-ms each way (a round trip of twice
// that). Through it, the Node client sends CreateDocument with --mb of text to an unknown
// knowledge base (the server answers NotFound once it has read the whole request, so the call
// times the upload), over gRPC and over Connect (HTTP/2); the baseline sends as many bytes on a
// plain TCP connection through the same proxy to a sink that answers once it has them all.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createClient } from "@connectrpc/connect";
import { KnowledgeService } from "../gen/parley/v1/knowledge_pb.js";
import { createParleyClient } from "../src/client/node.js";

const { values } = parseArgs({ options: { mb: { type: "string", default: "8" }, "delay-ms": { type: "string", default: "25" }, runs: { type: "string", default: "3" } } });
const bytes = Math.round(Number(values.mb) * 1024 * 1024);
const delayMs = Number(values["delay-ms"]);
const runs = Number(values.runs);

/** A TCP proxy to port that delays each chunk by delayMs in both directions (order kept). */
async function delayingProxy(port: number): Promise<{ port: number; close(): void }> {
  const relay = (from: net.Socket, to: net.Socket) => from.on("data", (c) => setTimeout(() => to.write(c), delayMs));
  const server = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      s.on("error", () => {});
    }
    relay(client, upstream);
    relay(upstream, client);
    // A close follows the data still on its way (same delay, so its timer fires after theirs).
    client.on("close", () => setTimeout(() => upstream.destroy(), delayMs));
    upstream.on("close", () => setTimeout(() => client.destroy(), delayMs));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as net.AddressInfo).port, close: () => server.close() };
}

/** A sink that answers one byte once it has read `bytes`. */
async function sink(): Promise<{ port: number; close(): void }> {
  const server = net.createServer((s) => {
    let n = 0;
    s.on("data", (c) => {
      n += c.length;
      if (n >= bytes) s.end("k");
    });
    s.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as net.AddressInfo).port, close: () => server.close() };
}

async function rawUpload(port: number): Promise<number> {
  const t = performance.now();
  await new Promise<void>((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1", () => s.write(Buffer.alloc(bytes, "x")));
    s.setNoDelay(true);
    s.on("data", () => {
      s.destroy();
      resolve();
    });
    s.on("error", reject);
  });
  return performance.now() - t;
}

const dataDir = mkdtempSync(join(tmpdir(), "parley-upload-"));
const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "serve"], {
  cwd: join(import.meta.dirname, ".."),
  env: { ...process.env, DATABASE_URL: "memory://", PORT: "0", PARLEY_HOST: "127.0.0.1", PARLEY_DATA_DIR: dataDir, PARLEY_LOG_LEVEL: "warn" },
  stdio: ["ignore", "pipe", "inherit"],
});
try {
  let out = "";
  const { url, key } = await new Promise<{ url: string; key: string }>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`parley exited (${code})`)));
    child.stdout!.on("data", (d: Buffer) => {
      out += d;
      const listening = /^Listening on (\S+)$/m.exec(out);
      const key = /^\s+(pk_\S+)$/m.exec(out);
      if (listening && key) resolve({ url: listening[1]!, key: key[1]! });
    });
  });
  const viaProxy = await delayingProxy(Number(new URL(url).port));
  const target = await sink();
  const sinkProxy = await delayingProxy(target.port);
  const text = "x".repeat(bytes);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const rows: [string, number][] = [];
  const raw: number[] = [];
  for (let i = 0; i < runs; i++) raw.push(await rawUpload(sinkProxy.port));
  rows.push(["raw TCP through the proxy (baseline)", median(raw)]);
  for (const transport of ["grpc", "connect"] as const) {
    const client = createParleyClient({ baseUrl: `http://127.0.0.1:${viaProxy.port}`, apiKey: key, transport, httpVersion: "2" });
    const kb = createClient(KnowledgeService, client.transport);
    const times: number[] = [];
    for (let i = 0; i < runs + 1; i++) {
      const t = performance.now();
      await kb
        .createDocument({ knowledgeBaseId: "00000000-0000-4000-8000-000000000000", document: { name: "big.txt" }, source: { case: "text", value: text } })
        .then(
          () => {
            throw new Error("expected NotFound");
          },
          (err: unknown) => {
            if (!String(err).includes("not_found")) throw err;
          },
        );
      if (i > 0) times.push(performance.now() - t); // the first opens the connection
    }
    client.close();
    rows.push([`Parley CreateDocument over ${transport === "grpc" ? "gRPC" : "Connect"} (HTTP/2)`, median(times)]);
  }
  console.log(`${(bytes / 1024 / 1024).toFixed(1)} MiB upload, ${2 * delayMs} ms round trip, median of ${runs} runs`);
  for (const [name, ms] of rows) console.log(`${name.padEnd(44)} ${ms.toFixed(0).padStart(7)} ms  ${(ms / rows[0]![1]).toFixed(2)}x`);
  viaProxy.close();
  sinkProxy.close();
  target.close();
} finally {
  child.kill();
  rmSync(dataDir, { recursive: true, force: true });
}
