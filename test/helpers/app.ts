import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, createRouterTransport, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { pino } from "pino";
import { createApp, type App } from "../../src/app.js";
import type { ModelRegistry } from "../../src/ask/models/registry.js";
import { loadConfig, type Config } from "../../src/config.js";
import { createApiKey, createTenant } from "../../src/repos/api-keys.js";
import { createTestDatabase, type Backend, type TestDatabase } from "./databases.js";

export interface TestApp {
  readonly app: App;
  readonly database: TestDatabase;
  /** The bootstrap admin key of the default tenant. */
  readonly adminKey: string;
  readonly tenantId: string;
  /** An in-memory transport (createRouterTransport) through the app's interceptors, sending `key`. */
  transport(key?: string): Transport;
  /** A client of one service over the in-memory transport. */
  client<S extends DescService>(service: S, key?: string): Client<S>;
  /** Creates another tenant with its own admin key. */
  newTenant(name?: string): Promise<{ tenantId: string; key: string }>;
  close(): Promise<void>;
}

export function bearer(key: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
}

/** An app on a fresh test database (PGlite by default), with the RPC surface reachable in memory. */
export async function createTestApp(
  options: { backend?: Backend; models?: ModelRegistry; config?: Partial<Config>; env?: NodeJS.ProcessEnv } = {},
): Promise<TestApp> {
  const database = await createTestDatabase(options.backend ?? "pglite");
  const dataDir = mkdtempSync(join(tmpdir(), "parley-test-"));
  const config = loadConfig(options.env ?? {}, {
    dataDir,
    databaseUrl: database.url,
    logLevel: "silent",
    // Tests look at single deltas; coalescing is tested where it is the subject.
    askDeltaCoalesceMs: 0,
    ...options.config,
  });
  const app = await createApp(config, {
    database: database.handle,
    log: pino({ level: "silent" }),
    ...(options.models ? { models: options.models } : {}),
  });
  if (!app.bootstrap) throw new Error("expected the test database to be bootstrapped");
  const adminKey = app.bootstrap.adminKey;
  const transport = (key: string = adminKey) =>
    createRouterTransport(app.routes, {
      router: { interceptors: app.interceptors },
      transport: { interceptors: [bearer(key)] },
    });
  return {
    app,
    database,
    adminKey,
    tenantId: app.bootstrap.tenantId,
    transport,
    client: (service, key) => createClient(service, transport(key)),
    async newTenant(name = "other") {
      const t = await createTenant(app.db, name);
      const { key } = await createApiKey(app.db, t.id, "admin", "admin");
      return { tenantId: t.id, key };
    },
    async close() {
      await app.close(0);
      await database.drop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
