import { resolve } from "node:path";

/** Model provider settings, read from the environment. */
export interface ProviderConfig {
  readonly openai?: { readonly apiKey: string; readonly baseURL?: string };
  readonly anthropic?: { readonly apiKey: string; readonly baseURL?: string };
  readonly openaiCompatible?: {
    readonly baseURL: string;
    readonly apiKey?: string;
    readonly name: string;
  };
}

/** The whole configuration of a Parley process: built once, frozen. */
export interface Config {
  /** Interface to listen on. */
  readonly host: string;
  /** Port of the one listener (0 picks a free port). */
  readonly port: number;
  /** postgres://… for a server, memory:// for ephemeral PGlite, undefined for PGlite under dataDir. */
  readonly databaseUrl: string | undefined;
  /** Directory of the embedded database and admin.key. */
  readonly dataDir: string;
  /** Max connections of the pg pool. */
  readonly dbPoolSize: number;
  /** Run migrations at start. */
  readonly migrateOnStart: boolean;
  /** Create a default tenant and admin key on an empty database. */
  readonly bootstrap: boolean;
  readonly tls: { readonly certFile: string; readonly keyFile: string } | undefined;
  /** How long running Asks may take to finish on shutdown before they are cancelled. */
  readonly shutdownGraceMs: number;
  /** Origins allowed by CORS; ["*"] allows any. */
  readonly corsOrigins: readonly string[];
  /** Model used by agents whose model is empty. */
  readonly defaultModel: string;
  readonly providers: ProviderConfig;
  /** `provider:model` of the embedding model for vector search; empty: full-text search only. */
  readonly embeddingModel: string;
  /** Documents larger than this many bytes are ingested in the background (CreateDocument returns PROCESSING). */
  readonly knowledgeSyncMaxBytes: number;
  /** Interval at which a streaming answer's partial content is written to the database. */
  readonly flushIntervalMs: number;
  /** Responses smaller than this many bytes are sent uncompressed even when the client accepts gzip. */
  readonly compressMinBytes: number;
  /** Lease of a running Ask on its session, renewed while it runs; a replica that stops renewing frees the session after it. */
  readonly askLeaseMs: number;
  /** How long a finished Ask's events stay in the event log for replay (afterwards they are rebuilt from storage). */
  readonly askEventRetentionMs: number;
  /** Upper bound of the memory the in-process event log keeps for finished Asks, in bytes. */
  readonly askEventLogMaxBytes: number;
  /** redis://… or rediss://…: the shared Ask event log, cross-replica cancel; undefined: everything in-process. */
  readonly redisUrl: string | undefined;
  /** Prefix of every Redis key and channel, so that deployments (and tests) can share one Redis. */
  readonly redisPrefix: string;
  /** Upper bound of the entries the Redis log keeps per Ask (approximate, MAXLEN ~). */
  readonly askEventLogMaxLen: number;
  /** At most one text delta per Ask per window: sooner ones are merged, a delta after a quieter stretch goes at once (0: every delta as it comes). */
  readonly askDeltaCoalesceMs: number;
  /** The hot statements run as named prepared statements on Postgres (off behind a pooler that cannot keep them). */
  readonly dbPreparedStatements: boolean;
  /** Secret that signs page tokens; undefined: generated once and stored in the database. */
  readonly tokenSecret: string | undefined;
  readonly logLevel: string;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

function int(env: NodeJS.ProcessEnv, name: string, fallback: number, min = 0): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) {
    throw new ConfigError(`${name} must be an integer >= ${min}, got "${raw}"`);
  }
  return n;
}

function bool(env: NodeJS.ProcessEnv, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(`${name} must be true or false, got "${raw}"`);
}

function providers(env: NodeJS.ProcessEnv): ProviderConfig {
  const p: {
    openai?: ProviderConfig["openai"];
    anthropic?: ProviderConfig["anthropic"];
    openaiCompatible?: ProviderConfig["openaiCompatible"];
  } = {};
  if (env.OPENAI_API_KEY) {
    p.openai = { apiKey: env.OPENAI_API_KEY, ...(env.OPENAI_BASE_URL ? { baseURL: env.OPENAI_BASE_URL } : {}) };
  }
  if (env.ANTHROPIC_API_KEY) {
    p.anthropic = {
      apiKey: env.ANTHROPIC_API_KEY,
      ...(env.ANTHROPIC_BASE_URL ? { baseURL: env.ANTHROPIC_BASE_URL } : {}),
    };
  }
  if (env.OPENAI_COMPATIBLE_BASE_URL) {
    p.openaiCompatible = {
      baseURL: env.OPENAI_COMPATIBLE_BASE_URL,
      name: env.OPENAI_COMPATIBLE_NAME || "openai-compatible",
      ...(env.OPENAI_COMPATIBLE_API_KEY ? { apiKey: env.OPENAI_COMPATIBLE_API_KEY } : {}),
    };
  }
  return p;
}

/** Reads the configuration from environment variables (see the README's table). */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Config> = {}): Config {
  const certFile = env.PARLEY_TLS_CERT;
  const keyFile = env.PARLEY_TLS_KEY;
  if (Boolean(certFile) !== Boolean(keyFile)) {
    throw new ConfigError("PARLEY_TLS_CERT and PARLEY_TLS_KEY must be set together");
  }
  const databaseUrl = env.DATABASE_URL || undefined;
  if (databaseUrl && !/^(postgres(ql)?|memory):\/\//.test(databaseUrl)) {
    throw new ConfigError(`DATABASE_URL must start with postgres://, postgresql:// or memory://`);
  }
  const redisUrl = env.REDIS_URL || undefined;
  if (redisUrl && !/^rediss?:\/\//.test(redisUrl)) {
    throw new ConfigError(`REDIS_URL must start with redis:// or rediss://`);
  }
  const config: Config = {
    host: env.PARLEY_HOST || env.HOST || "0.0.0.0",
    port: int(env, "PORT", 8080),
    databaseUrl,
    dataDir: resolve(env.PARLEY_DATA_DIR || ".parley"),
    dbPoolSize: int(env, "PARLEY_DB_POOL_SIZE", 10, 1),
    migrateOnStart: bool(env, "PARLEY_MIGRATE", true),
    bootstrap: bool(env, "PARLEY_BOOTSTRAP", true),
    tls: certFile && keyFile ? { certFile, keyFile } : undefined,
    shutdownGraceMs: int(env, "PARLEY_SHUTDOWN_GRACE_MS", 10_000),
    corsOrigins: (env.PARLEY_CORS_ORIGINS || "*").split(",").map((s) => s.trim()).filter(Boolean),
    defaultModel: env.PARLEY_DEFAULT_MODEL || "",
    providers: providers(env),
    embeddingModel: env.PARLEY_EMBEDDING_MODEL || "",
    knowledgeSyncMaxBytes: int(env, "PARLEY_KB_SYNC_MAX_BYTES", 256 * 1024),
    flushIntervalMs: int(env, "PARLEY_FLUSH_INTERVAL_MS", 1000, 1),
    compressMinBytes: int(env, "PARLEY_COMPRESS_MIN_BYTES", 16 * 1024),
    askLeaseMs: int(env, "PARLEY_ASK_LEASE_MS", 8_000, 100),
    askEventRetentionMs: int(env, "PARLEY_ASK_EVENT_RETENTION_MS", 24 * 60 * 60 * 1000),
    askEventLogMaxBytes: int(env, "PARLEY_ASK_EVENT_LOG_MAX_BYTES", 64 * 1024 * 1024),
    redisUrl: env.REDIS_URL || undefined,
    redisPrefix: env.PARLEY_REDIS_PREFIX ?? "parley:",
    askEventLogMaxLen: int(env, "PARLEY_ASK_EVENT_LOG_MAX_LEN", 100_000, 1),
    askDeltaCoalesceMs: int(env, "PARLEY_ASK_COALESCE_MS", 25),
    dbPreparedStatements: bool(env, "PARLEY_DB_PREPARED_STATEMENTS", true),
    tokenSecret: env.PARLEY_TOKEN_SECRET || undefined,
    logLevel: env.PARLEY_LOG_LEVEL || "info",
    ...overrides,
  };
  return Object.freeze(config);
}
