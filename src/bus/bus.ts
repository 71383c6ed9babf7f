import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { AskEventSchema, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import type { Config } from "../config.js";
import type { Logger } from "../log.js";
import { createMemoryCancelBus, type CancelBus } from "./cancel.js";
import type { EventLog } from "./event-log.js";
import { createMemoryEventLog, type EventPacking } from "./memory.js";
import { createRedisCancelBus, createRedisEventLog, openRedis, type RedisConnections } from "./redis.js";
import { createReplicatedEventLog } from "./replicated.js";

/** The infrastructure Asks share across replicas: in-process, or on Redis when REDIS_URL is set. */
export interface Bus {
  /** Where Ask events go and are followed from. */
  readonly events: EventLog<AskEvent>;
  /** The log other replicas read (Redis), when there is one: where a sweeper ends another replica's Ask. */
  readonly shared: EventLog<AskEvent> | undefined;
  readonly cancels: CancelBus;
  /** The Redis connections; undefined without REDIS_URL. */
  readonly redis: RedisConnections | undefined;
  close(): Promise<void>;
}

/** Builds the bus from the config; never waits for Redis (it may be down at start). */
export function createBus(
  config: Config,
  log: Logger,
  options: { sizeOf: (e: AskEvent) => number; packing?: EventPacking<AskEvent> },
): Bus {
  const local = createMemoryEventLog<AskEvent>({
    retentionMs: config.askEventRetentionMs,
    maxRetainedBytes: config.askEventLogMaxBytes,
    sizeOf: options.sizeOf,
    ...(options.packing ? { packing: options.packing } : {}),
  });
  if (!config.redisUrl) {
    return { events: local, shared: undefined, cancels: createMemoryCancelBus(), redis: undefined, close: () => local.close() };
  }
  const redis = openRedis(config.redisUrl, log, config.redisPrefix);
  const shared = createRedisEventLog<AskEvent>({
    redis,
    retentionMs: Math.max(config.askEventRetentionMs, 1),
    maxLen: config.askEventLogMaxLen,
    encode: (e) => toBinary(AskEventSchema, e),
    decode: (b) => fromBinary(AskEventSchema, b),
  });
  const events = createReplicatedEventLog({ local, shared, sharedReachable: redis.reachable, log });
  const cancels = createRedisCancelBus(redis, log);
  return {
    events,
    shared,
    cancels,
    redis,
    async close() {
      await events.close();
      await redis.close();
    },
  };
}
