import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
  type HealthCheckResponse,
} from "../../gen/grpc/health/v1/health_pb.js";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageService } from "../../gen/parley/v1/message_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import type { DatabaseHandle } from "../db/database.js";
import { notFound } from "../errors.js";
import type { Logger } from "../log.js";

/** What the monitor knows about the database at one moment. */
export interface HealthSnapshot {
  /**
   * True once a ping has answered in time, until `failuresToStop` pings in a row
   * fail (one slow ping under load does not take a replica out) or the monitor stops.
   */
  readonly serving: boolean;
  /** Set by stop(): the process is shutting down. */
  readonly stopping: boolean;
  /** When the last ping finished; undefined before the first one. */
  readonly checkedAt: Date | undefined;
  /** Round trip of the last successful ping. */
  readonly latencyMs: number | undefined;
  /** Why the last ping failed (also while still serving after a single failure). */
  readonly error: string | undefined;
  /**
   * Redis, when configured: unreachable means degraded, not down (Asks run on
   * each replica's own log; following them across replicas is unavailable).
   */
  readonly redis?: { readonly reachable: boolean; readonly error: string | undefined };
}

/** Pings the database periodically and tells who is interested when it stops or starts answering. */
export interface HealthMonitor {
  current(): HealthSnapshot;
  /** Resolves with the snapshot once the first ping has finished (at once afterwards). */
  ready(): Promise<HealthSnapshot>;
  /** Pings now instead of waiting for the next tick. */
  checkNow(): Promise<HealthSnapshot>;
  /** Calls listener on every change of `serving`; returns the unsubscribe function. */
  subscribe(listener: (snapshot: HealthSnapshot) => void): () => void;
  /** Stops pinging and reports NOT_SERVING from now on (shutdown). */
  stop(): void;
}

export interface HealthMonitorOptions {
  /** Time between two pings. */
  readonly intervalMs?: number;
  /** A ping slower than this counts as a failure. */
  readonly timeoutMs?: number;
  /** Failed pings in a row that turn a serving replica NOT_SERVING (default 2). */
  readonly failuresToStop?: number;
  /** Pinged beside the database when Redis is configured; its failures degrade, they do not stop serving. */
  readonly redis?: { ping(): Promise<void> };
}

/**
 * A monitor that pings the database every intervalMs (default 1 s) with a
 * timeout (default 2 s); a serving replica stops serving after
 * failuresToStop failed pings in a row (default 2).
 */
export function createHealthMonitor(
  database: DatabaseHandle,
  log: Logger,
  options: HealthMonitorOptions = {},
): HealthMonitor {
  const intervalMs = options.intervalMs ?? 1_000;
  const timeoutMs = options.timeoutMs ?? 2_000;
  const failuresToStop = Math.max(1, options.failuresToStop ?? 2);
  let failures = 0;
  const listeners = new Set<(s: HealthSnapshot) => void>();
  let snapshot: HealthSnapshot = {
    serving: false,
    stopping: false,
    checkedAt: undefined,
    latencyMs: undefined,
    error: undefined,
  };
  let inFlight: Promise<HealthSnapshot> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  function publish(next: HealthSnapshot): void {
    const first = snapshot.checkedAt === undefined;
    const redisChanged = next.redis?.reachable !== snapshot.redis?.reachable;
    if (redisChanged && next.redis && !next.stopping && !(first && next.redis.reachable)) {
      if (next.redis.reachable) log.info("Redis reachable again: cross-replica resume and cancel restored");
      else log.warn({ reason: next.redis.error }, "Redis unreachable: degraded (Asks run on each replica's own event log)");
    }
    const changed = first || redisChanged || next.serving !== snapshot.serving || next.stopping !== snapshot.stopping;
    snapshot = next;
    if (!changed) return;
    if (!next.stopping && !(first && next.serving)) {
      if (next.serving) log.info("database reachable again: serving");
      else log.warn({ reason: next.error }, "database unreachable: not serving");
    }
    // A listener that throws must not stop the monitor (nor keep the others from hearing of it).
    for (const l of listeners) {
      try {
        l(next);
      } catch (err) {
        log.error({ err }, "a health listener failed");
      }
    }
  }

  async function pingRedis(): Promise<HealthSnapshot["redis"]> {
    if (!options.redis) return undefined;
    let timeout: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        options.redis.ping(),
        new Promise<never>((_, reject) => {
          timeout = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      return { reachable: true, error: undefined };
    } catch (err) {
      return { reachable: false, error: err instanceof Error ? err.message : String(err) };
    } finally {
      clearTimeout(timeout);
    }
  }

  async function ping(): Promise<void> {
    const redisCheck = pingRedis();
    const started = performance.now();
    const ac = new AbortController();
    let timeout: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        database.ping(ac.signal),
        new Promise<never>((_, reject) => {
          timeout = setTimeout(() => {
            ac.abort();
            reject(new Error(`no answer within ${timeoutMs} ms`));
          }, timeoutMs);
        }),
      ]);
      const latencyMs = Math.round((performance.now() - started) * 100) / 100;
      const redis = await redisCheck;
      if (stopped) return;
      failures = 0;
      publish({
        serving: true,
        stopping: false,
        checkedAt: new Date(),
        latencyMs,
        error: undefined,
        ...(redis ? { redis } : {}),
      });
    } catch (err) {
      const redis = await redisCheck;
      if (stopped) return;
      failures++;
      const reason = err instanceof Error ? err.message : String(err);
      if (snapshot.serving && failures < failuresToStop) {
        log.warn({ reason, failures }, "a database ping failed; still serving unless the next one fails too");
      }
      publish({
        serving: snapshot.serving && failures < failuresToStop,
        stopping: false,
        checkedAt: new Date(),
        latencyMs: undefined,
        error: err instanceof Error ? err.message : String(err),
        ...(redis ? { redis } : {}),
      });
    } finally {
      clearTimeout(timeout);
    }
  }

  function checkNow(): Promise<HealthSnapshot> {
    if (stopped) return Promise.resolve(snapshot);
    // Settled either way: a ping that rejected must not leave every later check (and the ticks) waiting on it.
    inFlight ??= ping()
      .catch((err: unknown) => log.error({ err }, "a health check failed"))
      .then(() => {
        inFlight = undefined;
        return snapshot;
      });
    return inFlight;
  }

  function schedule(): void {
    if (stopped) return;
    timer = setTimeout(() => {
      void checkNow().then(schedule);
    }, intervalMs);
    // The monitor must never keep a finished process alive.
    timer.unref();
  }

  const first = checkNow();
  void first.then(schedule);

  return {
    current: () => snapshot,
    ready: () => (snapshot.checkedAt || stopped ? Promise.resolve(snapshot) : first),
    checkNow,
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    stop() {
      if (stopped) return;
      stopped = true;
      clearTimeout(timer);
      publish({ ...snapshot, serving: false, stopping: true });
      listeners.clear();
    },
  };
}

/** Service names the health service answers for ("" is the server as a whole). */
const KNOWN_SERVICES = new Set(["", Health.typeName, AgentService.typeName, SessionService.typeName, MessageService.typeName]);

function response(status: ServingStatus): HealthCheckResponse {
  return create(HealthCheckResponseSchema, { status });
}

function statusOf(s: HealthSnapshot): ServingStatus {
  return s.serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
}

/** The standard grpc.health.v1.Health service: every service is SERVING exactly when the database answers. */
export function createHealthService(monitor: HealthMonitor): ServiceImpl<typeof Health> {
  return {
    async check(req) {
      if (!KNOWN_SERVICES.has(req.service)) throw notFound("service", req.service);
      return response(statusOf(await monitor.ready()));
    },
    async *watch(req, ctx) {
      if (!KNOWN_SERVICES.has(req.service)) {
        // The protocol keeps the stream open for an unknown service, since it may be registered later;
        // Parley's services are fixed, so one answer is all there will ever be until the client leaves.
        yield response(ServingStatus.SERVICE_UNKNOWN);
        let unsubscribe = () => {};
        await new Promise<void>((resolve) => {
          if (ctx.signal.aborted || monitor.current().stopping) return resolve();
          ctx.signal.addEventListener("abort", () => resolve(), { once: true });
          unsubscribe = monitor.subscribe((s) => s.stopping && resolve());
        });
        unsubscribe();
        return;
      }
      // Queue changes from the moment of subscription, so that none slips in between.
      const queue: HealthSnapshot[] = [];
      let wake: (() => void) | undefined;
      let ended = false;
      const onAbort = () => {
        ended = true;
        wake?.();
      };
      const unsubscribe = monitor.subscribe((s) => {
        queue.push(s);
        if (s.stopping) ended = true;
        wake?.();
      });
      ctx.signal.addEventListener("abort", onAbort, { once: true });
      try {
        let last = statusOf(await monitor.ready());
        yield response(last);
        if (monitor.current().stopping) return;
        for (;;) {
          while (queue.length > 0) {
            const s = queue.shift()!;
            const status = statusOf(s);
            if (status !== last) {
              last = status;
              yield response(status);
            }
          }
          // Shutdown ends the stream after its NOT_SERVING so that connections can drain.
          if (ended || ctx.signal.aborted) return;
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
        }
      } finally {
        unsubscribe();
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },
  };
}
