import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { startServer, type RunningServer } from "../../src/server.js";
import { createTestApp, type TestApp } from "./app.js";

export interface TestServer extends TestApp {
  readonly server: RunningServer;
  /** Base URL of the server, e.g. http://127.0.0.1:40123. */
  readonly url: string;
  readonly port: number;
}

/**
 * An app on a fresh test database served on a free port of 127.0.0.1. close() shuts the server down
 * gracefully (waiting for its connections to drain), then drops the database.
 */
export async function startTestServer(options: Parameters<typeof createTestApp>[0] = {}): Promise<TestServer> {
  const testApp = await createTestApp(options);
  let server: RunningServer;
  try {
    server = await startServer(testApp.app, { host: "127.0.0.1", port: 0 });
  } catch (err) {
    await testApp.close();
    throw err;
  }
  return {
    ...testApp,
    server,
    url: server.url,
    port: server.port,
    async close() {
      await server.close();
      await testApp.close();
    },
  };
}

/** The repository root (where package.json and src/ are). */
export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

/** A `parley` CLI process run from the sources (node --import tsx src/main.ts). */
export interface CliProcess {
  readonly child: ChildProcess;
  /** Everything written to stdout / stderr so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (or the signal's name) once the process has ended and its output is read. */
  readonly exited: Promise<number | NodeJS.Signals>;
  /** Resolves with the server's URL once `serve` prints that it is listening; rejects if the process ends first. */
  listening(timeoutMs?: number): Promise<string>;
  /** Sends signal (default SIGTERM) and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | NodeJS.Signals>;
}

/**
 * Spawns the CLI with env added to a copy of this process's environment minus the Parley and
 * provider variables (so that a developer's settings do not leak into the test).
 */
export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  const base: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(PARLEY_|DATABASE_URL$|PORT$|HOST$|OPENAI_|ANTHROPIC_)/.test(k)) continue;
    base[k] = v;
  }
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts", ...args], {
    cwd: repoRoot,
    env: { ...base, PARLEY_LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout!.setEncoding("utf8").on("data", (c: string) => (out += c));
  child.stderr!.setEncoding("utf8").on("data", (c: string) => (err += c));
  const exited = new Promise<number | NodeJS.Signals>((resolve) =>
    // "close" rather than "exit": by then stdout and stderr have delivered everything.
    child.once("close", (code, signal) => resolve(code ?? signal ?? -1)),
  );
  const listening = (timeoutMs = 60_000) =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`parley did not listen within ${timeoutMs} ms; stderr:\n${err}`));
      }, timeoutMs);
      const check = () => {
        // serve prints this line last, after the admin key when it prints one.
        const m = /^Listening on (\S+)\n/m.exec(out);
        if (m) {
          cleanup();
          resolve(m[1]!);
        }
      };
      const onExit = (code: number | NodeJS.Signals) => {
        cleanup();
        reject(new Error(`parley exited (${code}) before listening; stderr:\n${err}`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        child.stdout!.off("data", check);
      };
      child.stdout!.on("data", check);
      void exited.then(onExit);
      check();
    });
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    listening,
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Runs a one-shot CLI command to its end. */
export async function runCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | NodeJS.Signals; stdout: string; stderr: string }> {
  const p = spawnCli(args, env);
  const code = await p.exited;
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}
