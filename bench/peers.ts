// The peers, called in-process on the same Postgres server (each in a database of its own,
// since ADK's table names collide with Parley's): Google ADK's DatabaseSessionService and
// LangGraph's PostgresSaver. Each worker owns one session (thread) seeded with `history` turns.
import { randomUUID } from "node:crypto";
import { createEvent, type Session as AdkSession } from "@google/adk";
import { DatabaseSessionService } from "@google/adk/sessions/database";
import { emptyCheckpoint, uuid6, type Checkpoint } from "@langchain/langgraph-checkpoint";
import { PostgresSaver } from "@langchain/langgraph-checkpoint-postgres";
import pg from "pg";
import type { Operation } from "./load.js";

const APP = "bench";
const TEXT = "a user turn of the benchmark, about as long as a short chat message";

/** ADK's session service on `url`, with helpers that seed and drive one session per worker. */
export async function createAdkPeer(url: string) {
  const service = new DatabaseSessionService(url);
  await service.init();
  // ADK creates the app's state row on the first createSession without a lock: concurrent
  // first sessions collide on its primary key, so the first one is made alone.
  await service.createSession({ appName: APP, userId: "warm-up" });
  const pool = new pg.Pool({ connectionString: url, max: 2 });

  function event(text: string) {
    return createEvent({
      invocationId: randomUUID(),
      author: "user",
      content: { role: "user", parts: [{ text }] },
    });
  }

  /** A session of a user of its own with `history` events (one appended by ADK, the rest copied in SQL). */
  async function seededSession(history: number): Promise<AdkSession> {
    const userId = `user-${randomUUID()}`;
    const created = await service.createSession({ appName: APP, userId });
    await service.appendEvent({ session: created, event: event(TEXT) });
    if (history > 1) {
      // Copies of the first event, older than it, so that new events sort last.
      await pool.query(
        `insert into events (id, app_name, user_id, session_id, invocation_id, timestamp, event_data)
         select e.id || '-' || g, e.app_name, e.user_id, e.session_id, e.invocation_id,
                e.timestamp - make_interval(secs => g), e.event_data
         from events e, generate_series(1, $2::int) g where e.session_id = $1`,
        [created.id, history - 1],
      );
    }
    const s = await service.getSession({ appName: APP, userId, sessionId: created.id, config: { numRecentEvents: 20 } });
    if (!s) throw new Error("ADK lost the seeded session");
    return s;
  }

  return {
    /** appendEvent of one user turn to the worker's session. */
    async appendWorker(history: number): Promise<Operation> {
      const session = await seededSession(history);
      return async () => {
        await service.appendEvent({ session, event: event(TEXT) });
      };
    },
    /** getSession with the last 20 events. */
    async loadWorker(history: number): Promise<Operation> {
      const s = await seededSession(history);
      return async () => {
        const got = await service.getSession({
          appName: APP,
          userId: s.userId,
          sessionId: s.id,
          config: { numRecentEvents: 20 },
        });
        if (!got || got.events.length === 0) throw new Error("ADK returned no events");
      };
    },
    /** listSessions of one user. */
    async listWorker(history: number): Promise<Operation> {
      const s = await seededSession(history);
      return async () => {
        await service.listSessions({ appName: APP, userId: s.userId });
      };
    },
    async close() {
      await pool.end();
      await (service as unknown as { orm?: { close(force?: boolean): Promise<void> } }).orm?.close(true);
    },
  };
}

interface ChatMessage {
  readonly role: string;
  readonly content: string;
}

/** LangGraph's PostgresSaver on `url`, with helpers that seed and drive one thread per worker. */
export async function createLangGraphPeer(url: string) {
  const saver = PostgresSaver.fromConnString(url);
  await saver.setup();

  async function seededThread(history: number) {
    const threadId = randomUUID();
    const messages: ChatMessage[] = Array.from({ length: history }, (_, i) => ({
      role: i % 2 ? "assistant" : "user",
      content: TEXT,
    }));
    let version = 1;
    let config = { configurable: { thread_id: threadId, checkpoint_ns: "" } } as Parameters<PostgresSaver["put"]>[0];
    async function put(): Promise<void> {
      // What a graph with a messages channel does on a turn: a new checkpoint whose
      // messages channel (the whole list) gets a new version.
      const checkpoint: Checkpoint = {
        ...emptyCheckpoint(),
        id: uuid6(-1),
        ts: new Date().toISOString(),
        channel_values: { messages },
        channel_versions: { messages: version },
      };
      config = await saver.put(config, checkpoint, { source: "loop", step: version, parents: {} }, { messages: version });
      version++;
    }
    await put();
    return {
      threadId,
      async addTurn() {
        messages.push({ role: "user", content: TEXT });
        await put();
      },
    };
  }

  return {
    /** put of a checkpoint that adds one message. */
    async appendWorker(history: number): Promise<Operation> {
      const t = await seededThread(history);
      return () => t.addTurn();
    },
    /** getTuple of the latest checkpoint. */
    async loadWorker(history: number): Promise<Operation> {
      const t = await seededThread(history);
      return async () => {
        const tuple = await saver.getTuple({ configurable: { thread_id: t.threadId, checkpoint_ns: "" } });
        if (!tuple) throw new Error("LangGraph returned no checkpoint");
      };
    },
    async close() {
      await saver.end();
    },
  };
}
