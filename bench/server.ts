// The server process of the bench: Parley (with the bench models) plus the bare echo service,
// on the same one-port server (src/server.ts). Forked by bench/run.ts with an IPC channel:
// it reports {type:"ready"} with its URL and admin key, answers {type:"memory"} (after a
// forced GC when run with --expose-gc; with the CPU time it has used) and {type:"cpu"} (the CPU
// time alone, no GC) and exits on {type:"stop"}.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createApp } from "../src/app.js";
import { loadConfig } from "../src/config.js";
import { createLogger } from "../src/log.js";
import { startServer } from "../src/server.js";
import { echoRoutes } from "./echo.js";
import { createBenchModels } from "./models.js";

/** What the server reports to its parent. */
export type ServerMessage =
  | { type: "ready"; url: string; apiKey: string; databaseKind: string; poolSize: number }
  | { type: "memory"; rss: number; heapUsed: number; external: number; arrayBuffers: number; cpuMicros: number }
  | { type: "cpu"; cpuMicros: number };

/** What the parent sends. */
export type ParentMessage = { type: "memory" } | { type: "cpu" } | { type: "stop" };

function send(m: ServerMessage): void {
  process.send?.(m);
}

async function main(): Promise<void> {
  const config = loadConfig(process.env, {
    host: "127.0.0.1",
    port: 0,
    dataDir: mkdtempSync(join(tmpdir(), "parley-bench-")),
    bootstrap: true,
    logLevel: process.env.PARLEY_LOG_LEVEL || "warn",
  });
  const app = await createApp(config, { models: createBenchModels(), log: createLogger(config.logLevel) });
  if (!app.bootstrap) throw new Error("the bench database must be empty (no admin key was created)");
  const server = await startServer({
    ...app,
    routes(router) {
      app.routes(router);
      echoRoutes(router);
    },
  });
  process.on("message", (m: ParentMessage) => {
    if (m.type === "memory") {
      const gc = (globalThis as { gc?: () => void }).gc;
      gc?.();
      gc?.();
      const u = process.memoryUsage();
      const cpu = process.cpuUsage();
      send({ type: "memory", rss: u.rss, heapUsed: u.heapUsed, external: u.external, arrayBuffers: u.arrayBuffers, cpuMicros: cpu.user + cpu.system });
    } else if (m.type === "cpu") {
      const cpu = process.cpuUsage();
      send({ type: "cpu", cpuMicros: cpu.user + cpu.system });
    } else if (m.type === "stop") {
      // close() drains running Asks; the bench cancels its streams before it stops the server.
      void server.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    }
  });
  send({
    type: "ready",
    url: server.url,
    apiKey: app.bootstrap.adminKey,
    databaseKind: app.database.kind,
    poolSize: config.dbPoolSize,
  });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
