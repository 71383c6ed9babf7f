import { randomUUID } from "node:crypto";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import { AgentService } from "../gen/parley/v1/agent_pb.js";
import { KnowledgeService } from "../gen/parley/v1/knowledge_pb.js";
import { MemoryService } from "../gen/parley/v1/memory_pb.js";
import { MessageService } from "../gen/parley/v1/message_pb.js";
import { SessionService } from "../gen/parley/v1/session_pb.js";
import { StateService } from "../gen/parley/v1/state_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { createMemorySearcher } from "./ask/memory.js";
import { embedderFromConfig } from "./knowledge/embeddings.js";
import { createAskHeartbeat } from "./ask/heartbeat.js";
import { createAskRuntime, type AskRuntime } from "./ask/runtime.js";
import { createIngestor } from "./knowledge/ingest.js";
import { createKnowledgeSearch } from "./knowledge/search.js";
import { createSessionFeed } from "./ask/session-feed.js";
import { createModelRegistry, type ModelRegistry } from "./ask/models/registry.js";
import { bootstrapIfEmpty, type BootstrapResult } from "./auth/bootstrap.js";
import { createAuthInterceptor } from "./auth/interceptor.js";
import { askEventPacking, eventSize } from "./ask/convert.js";
import { createBus, type Bus } from "./bus/bus.js";
import type { Config } from "./config.js";
import { openDatabase, type DatabaseHandle } from "./db/database.js";
import { migrateToLatest } from "./db/migrate.js";
import type { Database } from "./db/schema.js";
import { createErrorInterceptor } from "./errors.js";
import { createLogger, type Logger } from "./log.js";
import { createPageTokenCodec, type PageTokenCodec } from "./pagination.js";
import { createAgentService } from "./services/agent-service.js";
import { createHealthMonitor, createHealthService, type HealthMonitor } from "./services/health-service.js";
import { createMemoryService } from "./services/memory-service.js";
import { createKnowledgeService } from "./services/knowledge-service.js";
import { createMessageService } from "./services/message-service.js";
import { createSessionService } from "./services/session-service.js";
import { createStateService } from "./services/state-service.js";
import { loadOrCreateTokenSecret } from "./settings.js";

/** What every service factory receives. */
export interface ServiceDeps {
  readonly db: Kysely<Database>;
  readonly log: Logger;
  readonly config: Config;
  readonly pageTokens: PageTokenCodec;
}

export interface AppOptions {
  readonly log?: Logger;
  /** Replaces the model registry built from config.providers (tests use fake models). */
  readonly models?: ModelRegistry;
  /** An already open database (tests share one across apps). Closed by app.close() only when owned. */
  readonly database?: DatabaseHandle;
}

export interface App {
  readonly config: Config;
  readonly log: Logger;
  readonly database: DatabaseHandle;
  readonly db: Kysely<Database>;
  readonly health: HealthMonitor;
  readonly asks: AskRuntime;
  /** Set when this start created the default tenant and admin key. */
  readonly bootstrap: BootstrapResult | undefined;
  /** Identifies this process among replicas (lease owner of the Asks it runs). */
  readonly replicaId: string;
  /** Registers every service on a Connect router. */
  routes(router: ConnectRouter): void;
  /** Server interceptors, in order: errors outermost, then auth. */
  readonly interceptors: Interceptor[];
  /** Lets running Asks finish within graceMs, cancels the rest keeping partial answers, then closes the database. */
  close(graceMs?: number): Promise<void>;
}

/** The composition root: opens the database, migrates, bootstraps and builds every service. */
export async function createApp(config: Config, options: AppOptions = {}): Promise<App> {
  const log = options.log ?? createLogger(config.logLevel);
  const database =
    options.database ??
    (await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolSize: config.dbPoolSize, preparedStatements: config.dbPreparedStatements }));
  const db = database.db;
  try {
    if (config.migrateOnStart) await migrateToLatest(db);
    const bootstrap = config.bootstrap ? await bootstrapIfEmpty(db, config.dataDir) : undefined;
    const secret = config.tokenSecret ?? (await loadOrCreateTokenSecret(db));
    const pageTokens = createPageTokenCodec(secret);
    const replicaId = randomUUID();
    const models = options.models ?? createModelRegistry(config);
    const deps: ServiceDeps = { db, log, config, pageTokens };
    // One embedding model (PARLEY_EMBEDDING_MODEL, when set) serves knowledge and memories.
    const embedder = embedderFromConfig(config);
    const knowledge = createKnowledgeSearch(db, log, embedder);
    const ingestor = createIngestor({
      db,
      log,
      embedder: knowledge.vectorEmbedder,
      syncMaxBytes: config.knowledgeSyncMaxBytes,
      replicaId,
    });
    // Documents a crashed replica was ingesting would stay PROCESSING forever.
    ingestor.failAbandoned().catch((err: unknown) => log.warn({ err }, "checking for abandoned document ingestions failed"));
    // Redis (when configured) may be down at start: the bus connects in the background.
    const bus: Bus = createBus(config, log, { sizeOf: eventSize, packing: askEventPacking });
    // A short wait, so that the first Asks already reach the shared log; past it, start degraded.
    if (bus.redis && !(await bus.redis.ready(3_000))) {
      log.warn("Redis is not reachable yet: starting degraded (Asks stay on this replica until it is)");
    }
    const health = createHealthMonitor(database, log, bus.redis ? { redis: bus.redis } : {});
    // Session changes reach every replica through Postgres NOTIFY (see session-feed.ts).
    const feed = await createSessionFeed(database.listen, { db, log });
    const memories = createMemorySearcher(embedder, log);
    // One ticker renews the leases of all of this replica's Asks and flushes their partial answers.
    const heartbeat = createAskHeartbeat({ db, log, replicaId, leaseMs: config.askLeaseMs, flushIntervalMs: config.flushIntervalMs });
    const asks = createAskRuntime({ ...deps, models, replicaId, memories, events: bus.events, sharedEvents: bus.shared, cancels: bus.cancels, knowledge, feed, heartbeat });
    const interceptors = [createErrorInterceptor(log), createAuthInterceptor(db)];
    let closing: Promise<void> | undefined;
    return {
      config,
      log,
      database,
      db,
      health,
      asks,
      bootstrap,
      replicaId,
      interceptors,
      routes(router) {
        router.service(AgentService, createAgentService(deps));
        router.service(SessionService, createSessionService(deps, asks));
        router.service(MessageService, createMessageService(deps));
        router.service(KnowledgeService, createKnowledgeService({ ...deps, ingestor, search: knowledge }));
        router.service(MemoryService, createMemoryService(deps, memories));
        router.service(StateService, createStateService(deps));
        router.service(Health, createHealthService(health));
      },
      close(graceMs = config.shutdownGraceMs) {
        closing ??= (async () => {
          health.stop();
          await asks.drain(graceMs);
          await heartbeat.stop();
          await feed.close();
          await bus.close();
          await ingestor.close();
          if (!options.database) await database.close();
        })();
        return closing;
      },
    };
  } catch (err) {
    if (!options.database) await database.close().catch(() => {});
    throw err;
  }
}
