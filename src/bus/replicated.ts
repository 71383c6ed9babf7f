import type { Logger } from "../log.js";
import { EventLogSequenceError, EventLogUnavailableError, type EventLog, type LoggedEvent } from "./event-log.js";

export interface ReplicatedEventLogOptions<E> {
  /** This process's log: the producer's writes land here first, and its own followers read here. */
  readonly local: EventLog<E>;
  /** The log every replica reads (Redis). */
  readonly shared: EventLog<E>;
  /** Whether the shared log is reachable now: a stream started while it is not stays local. */
  readonly sharedReachable: () => boolean;
  readonly log: Logger;
  /** How often copies that fell behind (the shared log was unreachable) are retried. */
  readonly retryMs?: number;
  /** A copy still behind after this long is given up. */
  readonly giveUpMs?: number;
}

interface Mirror<E> {
  readonly events: LoggedEvent<E>[];
  /** How many of events the shared log has. */
  sent: number;
  ended: boolean;
  endSent: boolean;
  failing: boolean;
  readonly startTime: number;
  chain: Promise<void>;
}

/** The replicated log, with a view of the copies still being written for tests and health. */
export interface ReplicatedEventLog<E> extends EventLog<E> {
  /** Streams whose copy to the shared log is behind. */
  lagging(): number;
}

/**
 * An EventLog written to this process's log and copied, in the background and in
 * order, to the shared one: the producer never waits on (or fails with) Redis,
 * local followers read locally, other replicas read the shared copy. A copy that
 * fails (Redis down) catches up when Redis answers again, also after Redis lost
 * the stream; a stream that starts while Redis is unreachable stays local.
 */
export function createReplicatedEventLog<E>(options: ReplicatedEventLogOptions<E>): ReplicatedEventLog<E> {
  const { local, shared, log } = options;
  const giveUpMs = options.giveUpMs ?? 10 * 60_000;
  const mirrors = new Map<string, Mirror<E>>();
  let closed = false;

  const retry = setInterval(() => {
    for (const [id, m] of mirrors) {
      if (Date.now() - m.startTime > giveUpMs) {
        log.warn({ askId: id }, "giving up copying an Ask's events to the shared event log");
        mirrors.delete(id);
      } else if (m.failing) sync(id, m);
    }
  }, options.retryMs ?? 1_000);
  retry.unref();

  function sync(streamId: string, m: Mirror<E>): void {
    m.chain = m.chain.then(async () => {
      if (closed) return;
      try {
        while (m.sent < m.events.length) {
          const e = m.events[m.sent]!;
          try {
            await shared.append(streamId, e.seq, e.event);
            m.sent++;
          } catch (err) {
            if (!(err instanceof EventLogSequenceError)) throw err;
            // The shared copy is not where we left it (Redis restarted empty, or the
            // stream was ended by a sweeper): start over from what it holds.
            const at = await shared.last(streamId);
            if (at?.ended) {
              mirrors.delete(streamId);
              return;
            }
            m.sent = at?.seq ?? 0;
          }
        }
        if (m.ended && !m.endSent) {
          await shared.end(streamId);
          m.endSent = true;
        }
        if (m.failing) log.info({ askId: streamId }, "the shared event log caught up");
        m.failing = false;
        if (m.endSent) mirrors.delete(streamId);
      } catch (err) {
        if (!m.failing) log.warn({ err: (err as Error).message, askId: streamId }, "copying events to the shared event log failed; retrying");
        m.failing = true;
      }
    });
  }

  return {
    async append(streamId, seq, event) {
      await local.append(streamId, seq, event);
      let m = mirrors.get(streamId);
      if (!m) {
        if (seq !== 1 || !options.sharedReachable()) return;
        m = {
          events: [],
          sent: 0,
          ended: false,
          endSent: false,
          failing: false,
          startTime: Date.now(),
          chain: Promise.resolve(),
        };
        mirrors.set(streamId, m);
      }
      m.events.push({ seq, event });
      sync(streamId, m);
    },
    async end(streamId) {
      await local.end(streamId);
      const m = mirrors.get(streamId);
      if (!m) return;
      m.ended = true;
      sync(streamId, m);
    },
    async last(streamId) {
      return (await local.last(streamId)) ?? (await shared.last(streamId));
    },
    async read(streamId, afterSeq, signal) {
      const mine = await local.read(streamId, afterSeq, signal);
      if (mine) return mine;
      if (!options.sharedReachable()) {
        throw new EventLogUnavailableError("the shared event log (Redis) is unreachable");
      }
      return shared.read(streamId, afterSeq, signal);
    },
    async close() {
      clearInterval(retry);
      // Let copies in flight land (bounded by the Redis command timeout).
      await Promise.all([...mirrors.values()].map((m) => m.chain));
      closed = true;
      mirrors.clear();
      await local.close();
      await shared.close();
    },
    lagging: () => [...mirrors.values()].filter((m) => m.failing).length,
  };
}
