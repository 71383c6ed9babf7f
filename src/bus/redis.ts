import { Redis, type RedisOptions } from "ioredis";
import type { Logger } from "../log.js";
import type { CancelBus } from "./cancel.js";
import { EventLogSequenceError, EventLogUnavailableError, type EventLog, type LoggedEvent } from "./event-log.js";

/** The Redis connections of one process: commands, the blocking follower reads, pub/sub. */
export interface RedisConnections {
  readonly command: Redis;
  readonly blocking: Redis;
  readonly subscriber: Redis;
  /** Prefix of every key and channel (e.g. "parley:"), so that deployments and tests can share a server. */
  readonly prefix: string;
  /** True while the command connection is ready. */
  reachable(): boolean;
  /** Resolves true once every connection is ready, false if that takes longer than timeoutMs. */
  ready(timeoutMs: number): Promise<boolean>;
  /** PING on the command connection; rejects when Redis does not answer. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Opens the connections lazily-reconnecting with capped exponential backoff.
 * Commands fail fast while Redis is unreachable (no offline queue), so that
 * callers fall back instead of waiting; 'error' events are logged, never thrown.
 */
export function openRedis(url: string, log: Logger, prefix = "parley:"): RedisConnections {
  let lastWarn = 0;
  const base: RedisOptions = {
    // RESP2: the stream replies keep their documented nested-array shape.
    protocol: 2,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: 2_000,
    retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 6), 5_000),
  };
  const make = (name: string, extra: RedisOptions) => {
    const r = new Redis(url, { ...base, ...extra, connectionName: `parley-${name}` });
    r.on("error", (err: Error) => {
      // One line per few seconds: a down Redis retries constantly.
      const now = Date.now();
      if (now - lastWarn < 5_000) return;
      lastWarn = now;
      log.warn({ err: err.message, connection: name }, "Redis unreachable; retrying with backoff");
    });
    return r;
  };
  const command = make("command", { commandTimeout: 2_000 });
  // Blocking reads wait up to their own BLOCK time; a resend after a reconnect would duplicate them.
  const blocking = make("blocking", { autoResendUnfulfilledCommands: false });
  // A subscriber must queue its SUBSCRIBE until the first connect; it resubscribes after reconnects.
  const subscriber = make("subscriber", { enableOfflineQueue: true });
  command.on("ready", () => log.info("Redis connected"));
  return {
    command,
    blocking,
    subscriber,
    prefix,
    reachable: () => command.status === "ready",
    async ready(timeoutMs) {
      const one = (r: Redis) =>
        r.status === "ready" ? Promise.resolve() : new Promise<void>((resolve) => r.once("ready", () => resolve()));
      let timer: NodeJS.Timeout | undefined;
      const result = await Promise.race([
        Promise.all([command, blocking, subscriber].map(one)).then(() => true),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
      ]);
      clearTimeout(timer);
      return result;
    },
    async ping() {
      await command.ping();
    },
    async close() {
      for (const r of [command, blocking, subscriber]) r.disconnect();
    },
  };
}

// Stream entry ids are "<seq>-0" for events and "<last seq>-1" for the end
// marker: ordered, at most one per seq, and the end never takes a seq.
const APPEND = `
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local lastSeq = 0
if #last > 0 then
  local s, sub = string.match(last[1][1], '^(%d+)%-(%d+)$')
  if sub ~= '0' then return redis.error_reply('SEQ ended ' .. s) end
  lastSeq = tonumber(s)
end
if tonumber(ARGV[1]) ~= lastSeq + 1 then return redis.error_reply('SEQ expected ' .. (lastSeq + 1)) end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], ARGV[1] .. '-0', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return lastSeq + 1
`;

const END = `
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return 0 end
local s, sub = string.match(last[1][1], '^(%d+)%-(%d+)$')
if sub ~= '0' then return 0 end
redis.call('XADD', KEYS[1], s .. '-1', 'end', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`;

type Entry = [id: Buffer, fields: Buffer[]];

interface Id {
  readonly seq: number;
  readonly end: boolean;
}

function parseId(raw: Buffer | string): Id {
  const [s, sub] = raw.toString().split("-");
  return { seq: Number(s), end: sub !== "0" };
}

function after(a: Id, b: Id): boolean {
  return a.seq > b.seq || (a.seq === b.seq && a.end && !b.end);
}

function idString(id: Id): string {
  return `${id.seq}-${id.end ? 1 : 0}`;
}

/** Fields of an event entry: ["e", payload]. */
function payloadOf(fields: Buffer[]): Buffer | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i]!.toString() === "e") return fields[i + 1];
  return undefined;
}

export interface RedisEventLogOptions<E> {
  readonly redis: RedisConnections;
  /** How long a stream is kept after its last append or its end. */
  readonly retentionMs: number;
  /** Approximate bound of the entries of one stream (XADD MAXLEN ~); older entries go first. */
  readonly maxLen: number;
  readonly encode: (event: E) => Uint8Array;
  readonly decode: (bytes: Uint8Array) => E;
  /** How long one XREAD BLOCK waits before it is issued again (with the current followers). */
  readonly blockMs?: number;
}

interface Follower {
  readonly key: string;
  last: Id;
  readonly afterSeq: number;
  push(entries: Entry[]): void;
  fail(err: Error): void;
}

function unavailableError(err: unknown): EventLogUnavailableError {
  const message = err instanceof Error ? err.message : String(err);
  return new EventLogUnavailableError(`the shared event log (Redis) is unreachable: ${message}`, { cause: err });
}

/**
 * The EventLog on Redis Streams: one stream per Ask (key hash-tagged by its id,
 * so it is one slot in Redis Cluster), appended with XADD under the producer's
 * seq by a script that refuses gaps and appends after the end, expired
 * retentionMs after the last write, bounded by MAXLEN. Live followers of every
 * stream share one blocking XREAD on a dedicated connection.
 */
export function createRedisEventLog<E>(options: RedisEventLogOptions<E>): EventLog<E> {
  const { redis, encode, decode } = options;
  const { command, blocking } = redis;
  const blockMs = options.blockMs ?? 5_000;
  const key = (streamId: string) => `${redis.prefix}ask:{${streamId}}`;
  command.defineCommand("parleyAppend", { numberOfKeys: 1, lua: APPEND });
  command.defineCommand("parleyEnd", { numberOfKeys: 1, lua: END });
  const scripts = command as unknown as {
    parleyAppend(key: string, seq: number, payload: Buffer, ttl: number, maxLen: number): Promise<number>;
    parleyEnd(key: string, ttl: number): Promise<number>;
  };

  const followers = new Set<Follower>();
  let looping = false;
  let blocked = false;
  let blockingClientId: number | undefined;
  let closed = false;
  const learnClientId = () => {
    blockingClientId = undefined;
    blocking.client("ID").then(
      (id) => (blockingClientId = Number(id)),
      () => {},
    );
  };
  blocking.on("ready", learnClientId);
  if (blocking.status === "ready") learnClientId();

  async function lastEntry(k: string): Promise<Id | undefined> {
    const rows = (await command.callBuffer("XREVRANGE", [k, "+", "-", "COUNT", 1])) as Entry[];
    return rows.length > 0 ? parseId(rows[0]![0]) : undefined;
  }

  /** Wakes the blocked XREAD so that it is issued again with a new follower. */
  function rearm(): void {
    if (!looping) {
      void loop();
      return;
    }
    if (blocked && blockingClientId !== undefined) void command.client("UNBLOCK", blockingClientId).catch(() => {});
  }

  async function loop(): Promise<void> {
    looping = true;
    try {
      while (followers.size > 0 && !closed) {
        // Per key, the earliest position any follower needs.
        const from = new Map<string, Id>();
        for (const f of followers) {
          const cur = from.get(f.key);
          if (!cur || after(cur, f.last)) from.set(f.key, f.last);
        }
        const keys = [...from.keys()];
        // Only the followers this read was issued for get its reply: one that joined
        // meanwhile may be behind the positions asked for, and waits for the next read.
        const participants = new Set(followers);
        let reply: Array<[Buffer, Entry[]]> | null;
        try {
          blocked = true;
          reply = (await blocking.callBuffer("XREAD", [
            "COUNT",
            1000,
            "BLOCK",
            blockMs,
            "STREAMS",
            ...keys,
            ...keys.map((k) => idString(from.get(k)!)),
          ])) as Array<[Buffer, Entry[]]> | null;
        } catch (err) {
          // Everyone following now would wait on a dead connection: end them with the cause.
          const e = unavailableError(err);
          for (const f of [...followers]) f.fail(e);
          continue;
        } finally {
          blocked = false;
        }
        if (!reply) continue;
        for (const [k, entries] of reply) {
          const name = k.toString();
          for (const f of participants) if (f.key === name && followers.has(f)) f.push(entries);
        }
      }
    } finally {
      looping = false;
    }
  }

  return {
    async append(streamId, seq, event) {
      try {
        await scripts.parleyAppend(key(streamId), seq, Buffer.from(encode(event)), options.retentionMs, options.maxLen);
      } catch (err) {
        const m = err instanceof Error ? /^SEQ (ended|expected) (\d+)/.exec(err.message) : null;
        if (m) {
          throw new EventLogSequenceError(
            m[1] === "ended" ? `stream ${streamId} has ended` : `stream ${streamId}: expected seq ${m[2]}, got ${seq}`,
          );
        }
        throw unavailableError(err);
      }
    },
    async end(streamId) {
      try {
        await scripts.parleyEnd(key(streamId), options.retentionMs);
      } catch (err) {
        throw unavailableError(err);
      }
    },
    async last(streamId) {
      try {
        const id = await lastEntry(key(streamId));
        return id ? { seq: id.seq, ended: id.end } : undefined;
      } catch (err) {
        throw unavailableError(err);
      }
    },
    async read(streamId, afterSeq, signal) {
      const k = key(streamId);
      let last: Id | undefined;
      let first: Id | undefined;
      try {
        last = await lastEntry(k);
        const head = (await command.callBuffer("XRANGE", [k, "-", "+", "COUNT", 1])) as Entry[];
        if (head[0]) first = parseId(head[0][0]);
      } catch (err) {
        throw unavailableError(err);
      }
      // Not held, or trimmed past what the reader needs: the caller rebuilds from storage.
      if (!last || !first || (first.seq > afterSeq + 1 && !first.end)) return undefined;
      const startLast = last;

      return {
        async *[Symbol.asyncIterator](): AsyncGenerator<LoggedEvent<E>> {
          // Replay in pages up to the last entry seen above, then follow from it, so the
          // seam between the two is one stream id: nothing skipped, nothing twice.
          let pos: Id = { seq: afterSeq, end: false };
          let sawEnd = false;
          const toEvent = (entry: Entry): LoggedEvent<E> | undefined => {
            const id = parseId(entry[0]);
            if (id.end) {
              sawEnd = true;
              return undefined;
            }
            const payload = payloadOf(entry[1]);
            return payload ? { seq: id.seq, event: decode(payload) } : undefined;
          };
          while (!sawEnd && after(startLast, pos) && !signal?.aborted) {
            let page: Entry[];
            try {
              page = (await command.callBuffer("XRANGE", [k, `${pos.seq + 1}-0`, idString(startLast), "COUNT", 500])) as Entry[];
            } catch (err) {
              throw unavailableError(err);
            }
            if (page.length === 0) break;
            for (const entry of page) {
              pos = parseId(entry[0]);
              const e = toEvent(entry);
              if (e && e.seq > afterSeq) yield e;
            }
          }
          // Ended before this read: the replay was all of it.
          if (sawEnd || startLast.end || signal?.aborted || closed) return;

          const queue: Entry[] = [];
          let failure: Error | undefined;
          let wake: (() => void) | undefined;
          const follower: Follower = {
            key: k,
            last: after(startLast, pos) ? startLast : pos,
            afterSeq,
            push(entries) {
              for (const entry of entries) {
                const id = parseId(entry[0]);
                if (!after(id, follower.last)) continue;
                follower.last = id;
                queue.push(entry);
              }
              wake?.();
            },
            fail(err) {
              failure = err;
              followers.delete(follower);
              wake?.();
            },
          };
          const onAbort = () => wake?.();
          signal?.addEventListener("abort", onAbort);
          followers.add(follower);
          rearm();
          try {
            for (;;) {
              while (queue.length > 0) {
                const e = toEvent(queue.shift()!);
                if (e && e.seq > afterSeq) yield e;
                if (sawEnd) return;
              }
              if (failure) throw failure;
              if (signal?.aborted || closed) return;
              await new Promise<void>((resolve) => (wake = resolve));
              wake = undefined;
            }
          } finally {
            followers.delete(follower);
            signal?.removeEventListener("abort", onAbort);
          }
        },
      };
    },
    async close() {
      closed = true;
      for (const f of [...followers]) f.fail(new EventLogUnavailableError("the event log is closed"));
    },
  };
}

/**
 * Cancel requests across replicas on one pub/sub channel: whoever runs the Ask
 * stops it. Best effort: the lease renewal notices the stored cancel request
 * when a message is lost (Redis down, a replica reconnecting).
 */
export function createRedisCancelBus(redis: RedisConnections, log: Logger): CancelBus {
  const channel = `${redis.prefix}ask-cancel`;
  const handlers = new Set<(askId: string, reason: string) => void>();
  // The message is "<ask id> <reason>"; a bare ask id (older replicas) means cancel_ask.
  redis.subscriber.on("message", (ch: string, message: string) => {
    if (ch !== channel) return;
    const [askId = "", reason = "cancel_ask"] = message.split(" ");
    for (const h of handlers) h(askId, reason);
  });
  redis.subscriber.subscribe(channel).catch((err: unknown) => log.warn({ err }, "subscribing to cancel requests failed"));
  return {
    async publish(askId, reason) {
      try {
        await redis.command.publish(channel, `${askId} ${reason}`);
        return true;
      } catch {
        return false;
      }
    },
    subscribe(handler) {
      handlers.add(handler);
      return () => handlers.delete(handler);
    },
  };
}
