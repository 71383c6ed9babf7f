import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import type { CompiledQuery, Kysely } from "kysely";
import { pino } from "pino";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { createApp, type App } from "../../src/app.js";
import { loadConfig } from "../../src/config.js";
import type { Database } from "../../src/db/schema.js";
import { bearer } from "./app.js";
import { createTestDatabase, type Backend, type TestDatabase } from "./databases.js";
import { createFakeModels } from "./fake-models.js";

/**
 * An app like createTestApp's whose database records the SQL of every query,
 * so a test can see what an RPC asked the database and EXPLAIN exactly that.
 */
export async function createRecordingApp(backend: Backend) {
  const database: TestDatabase = await createTestDatabase(backend);
  const base: Kysely<Database> = database.handle.db;
  const queries: CompiledQuery[] = [];
  const db = base.withPlugin({
    transformQuery(args) {
      queries.push(base.getExecutor().compileQuery(args.node, args.queryId));
      return args.node;
    },
    transformResult: async (args) => args.result,
  });
  const dataDir = mkdtempSync(join(tmpdir(), "parley-test-"));
  const config = loadConfig({}, { dataDir, databaseUrl: database.url, logLevel: "silent" });
  const app: App = await createApp(config, {
    database: { ...database.handle, db },
    log: pino({ level: "silent" }),
    models: createFakeModels(),
  });
  const key = app.bootstrap!.adminKey;
  const transport = createRouterTransport(app.routes, {
    router: { interceptors: app.interceptors },
    transport: { interceptors: [bearer(key)] },
  });
  return {
    app,
    base,
    queries,
    tenantId: app.bootstrap!.tenantId,
    messages: createClient(MessageService, transport),
    sessions: createClient(SessionService, transport),
    agents: createClient(AgentService, transport),
    async close() {
      await app.close(0);
      await database.drop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export type RecordingApp = Awaited<ReturnType<typeof createRecordingApp>>;
