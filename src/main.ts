#!/usr/bin/env node
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { CliError } from "./cli/common.js";
import { runChat } from "./cli/chat.js";
import { runKbAdd } from "./cli/kb.js";
import { createKeyCommand, listKeysCommand, revokeKeyCommand } from "./cli/keys.js";
import { migrateCommand } from "./cli/migrate.js";
import { serveCommand } from "./cli/serve.js";
import { ConfigError, loadConfig, type Config } from "./config.js";
import { isDatabaseUnavailable } from "./errors.js";

/** Exit code for bad configuration or usage. */
const EXIT_USAGE = 2;

function packageVersion(): string {
  // src/main.ts and dist/src/main.js sit at different depths below package.json.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const file = join(dir, "package.json");
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, "utf8")) as { name?: string; version?: string };
      if (pkg.name === "parley" && pkg.version) return pkg.version;
    }
    dir = dirname(dir);
  }
  return "0.0.0";
}

function portArg(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError("must be an integer from 0 to 65535");
  return n;
}

function config(overrides: Partial<Config> = {}): Config {
  return loadConfig(process.env, overrides);
}

/** The `parley` command line. */
export function createProgram(): Command {
  const program = new Command("parley")
    .description("Parley: sessions, history and streaming answers for LLM chat assistants, over gRPC, gRPC-Web and Connect")
    .version(packageVersion())
    .showHelpAfterError()
    .exitOverride();

  program
    .command("serve")
    .description("serve every protocol on one port (configuration from the environment, see the README)")
    .option("-p, --port <port>", "port to listen on, 0 for a free one (env PORT, default 8080)", portArg)
    .option("--host <host>", "interface to listen on (env PARLEY_HOST, default 0.0.0.0)")
    .action(async (opts: { port?: number; host?: string }) => {
      await serveCommand(
        config({ ...(opts.port !== undefined ? { port: opts.port } : {}), ...(opts.host ? { host: opts.host } : {}) }),
      );
    });

  program
    .command("migrate")
    .description("bring the database to the latest schema and exit")
    .action(async () => {
      await migrateCommand(config());
    });

  const keys = program.command("keys").description("manage API keys (talks to the database directly)");
  keys
    .command("create")
    .description("create an API key and print it once")
    .option("--name <name>", "a name to recognize the key by")
    .addOption(new Option("--role <role>", "what the key may do").choices(["admin", "service"]).default("service"))
    .option("--tenant <id|name>", "tenant of the key (default: the default tenant)")
    .action(async (opts: { name?: string; role?: string; tenant?: string }) => {
      await createKeyCommand(config(), opts);
    });
  keys
    .command("list")
    .description("list API keys (never the keys themselves)")
    .option("--tenant <id|name>", "only this tenant's keys")
    .option("--json", "print JSON")
    .action(async (opts: { tenant?: string; json?: boolean }) => {
      await listKeysCommand(config(), opts);
    });
  keys
    .command("revoke")
    .description("revoke an API key by id or prefix")
    .argument("<id|prefix>", "the key's id or prefix, as `parley keys list` shows them")
    .action(async (idOrPrefix: string) => {
      await revokeKeyCommand(config(), idOrPrefix);
    });

  program
    .command("chat")
    .description("chat with an agent on a running server, streaming the answers")
    .option("--url <url>", "the server (default http://127.0.0.1:$PORT)")
    .option("--key <key>", "API key (default: PARLEY_API_KEY, then <data dir>/admin.key)")
    .option("--agent <id>", "agent to talk to (default: find or create one named \"Parley chat\")")
    .option("--session <id>", "continue this session")
    .option("--user <id>", "end user id of a new session (default: your user name)")
    .option("--model <provider:model>", "model of the agent created when none is given")
    .addOption(new Option("--transport <transport>", "protocol").choices(["grpc", "connect"]).default("grpc"))
    .action(
      async (opts: {
        url?: string;
        key?: string;
        agent?: string;
        session?: string;
        user?: string;
        model?: string;
        transport: "grpc" | "connect";
      }) => {
        const c = config();
        await runChat({
          url: opts.url ?? `http://127.0.0.1:${c.port}`,
          dataDir: c.dataDir,
          transport: opts.transport,
          ...(opts.key ? { apiKey: opts.key } : {}),
          ...(opts.agent ? { agentId: opts.agent } : {}),
          ...(opts.session ? { sessionId: opts.session } : {}),
          ...(opts.user ? { userId: opts.user } : {}),
          ...(opts.model ? { model: opts.model } : {}),
        });
      },
    );

  const kb = program.command("kb").description("manage knowledge bases on a running server");
  kb.command("add")
    .description("add files (text, Markdown, HTML, PDF) to a knowledge base, with progress")
    .argument("<files...>", "the files to add")
    .option("--kb <id|name>", "knowledge base id, or a name (created when missing)", "Default")
    .option("--url <url>", "the server (default http://127.0.0.1:$PORT)")
    .option("--key <key>", "API key (default: PARLEY_API_KEY, then <data dir>/admin.key)")
    .option("--no-progress", "print one line per file instead of progress bars")
    .action(async (files: string[], opts: { kb: string; url?: string; key?: string; progress: boolean }) => {
      const c = config();
      await runKbAdd({
        url: opts.url ?? `http://127.0.0.1:${c.port}`,
        files,
        knowledgeBase: opts.kb,
        dataDir: c.dataDir,
        ...(opts.key ? { apiKey: opts.key } : {}),
        ...(opts.progress ? {} : { progress: false }),
      });
    });

  return program;
}

/** Runs the CLI; failures become one line on stderr and an exit code, never a stack trace for a user mistake. */
export async function main(argv: string[] = process.argv): Promise<void> {
  try {
    await createProgram().parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version end here too, with exit code 0; commander already printed the message.
      process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`parley: configuration error: ${err.message}\n`);
      process.exit(EXIT_USAGE);
    }
    if (err instanceof CliError) {
      process.stderr.write(`parley: ${err.message}\n`);
      process.exit(err.exitCode);
    }
    const message = err instanceof Error ? err.message : String(err);
    if (isDatabaseUnavailable(err)) process.stderr.write(`parley: cannot reach the database: ${message}\n`);
    else if ((err as { code?: unknown }).code === "42P01") {
      // undefined_table: started with PARLEY_MIGRATE=false on a database that was never migrated.
      process.stderr.write(`parley: the database has no Parley schema yet (${message}): run \`parley migrate\`\n`);
    } else process.stderr.write(`parley: ${message}\n`);
    if (process.env.PARLEY_DEBUG) console.error(err);
    process.exit(1);
  }
}

await main();
