// The peers, called in-process on the same Postgres server (each in a database of its own,
// since ADK's table names collide with Parley's): Google ADK's DatabaseSessionService and
// LangGraph's PostgresSaver. Each worker owns one session (thread) seeded with `turns` turns.
//
// The workload is the same on all three sides (Parley's side is in run.ts, `peers()`):
// - A turn is a user message of USER_CHARS characters and an assistant answer of
//   ANSWER_CHARS. 200 and 1,000 characters (about 50 and 250 tokens) are the size of a
//   chat turn in public chat logs (LMSYS-Chat-1M reports about 70 tokens per prompt and 215
//   per response). The texts are varied prose, VARIANTS of each size cycled turn by turn, so
//   that neither Postgres' TOAST compression nor gzip on the wire sees a repeated constant.
// - The answer carries the model, the finish reason and the token counts, as each
//   framework stores a model's answer: ADK's `usageMetadata`/`finishReason`, LangChain's
//   `AIMessage.usage_metadata`/`response_metadata`, Parley's message metadata.
// - History of `turns` turns is 2 × turns messages (events), seeded in bulk: Parley's rows
//   in SQL, ADK's as SQL copies of the last turn's two events that ADK appended, LangGraph's
//   as one checkpoint that holds them all.
// - The append op stores one message, the next one of the conversation (user and answer
//   alternate, so two appends are one turn); the load op reads the last 20 messages.
import { randomUUID } from "node:crypto";
import { createEvent, type Event as AdkEvent, type Session as AdkSession } from "@google/adk";
import { DatabaseSessionService } from "@google/adk/sessions/database";
import { AIMessage, HumanMessage, type BaseMessage } from "@langchain/core/messages";
import { uuid6, type Checkpoint } from "@langchain/langgraph-checkpoint";
import { PostgresSaver } from "@langchain/langgraph-checkpoint-postgres";
import pg from "pg";
import type { Operation } from "./load.js";

const USER_CHARS = 200;
const ANSWER_CHARS = 1_000;
const VARIANTS = 64;

const WORDS = (
  "the of and to in is that for it as with be on not this are by or from at an can your which " +
  "you will if more use one all when they their has have each time so data should there also " +
  "about into other these than how only some may any most what its first then like such new " +
  "need well set two make way used over just where work both see between after without three " +
  "because through while before same under order value list query table index server client " +
  "request answer question model token session message user system example function result " +
  "error case file code change version memory cache network latency budget customer invoice " +
  "account report month week plan price travel flight hotel recipe garden weather history"
).split(" ");

/** Prose of exactly `chars` characters, the same for the same seed. */
function prose(seed: number, chars: number): string {
  let s = seed >>> 0;
  const next = () => {
    // mulberry32
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  let out = "";
  while (out.length < chars) {
    const n = 6 + Math.floor(next() * 12);
    const words = Array.from({ length: n }, () => WORDS[Math.floor(next() * WORDS.length)]!);
    words[0] = words[0]!.charAt(0).toUpperCase() + words[0]!.slice(1);
    out += `${words.join(" ")}${next() < 0.15 ? "?" : "."} `;
  }
  return `${out.slice(0, chars - 1)}.`;
}

/** The user messages of the conversation, cycled turn by turn. */
export const USER_TEXTS: readonly string[] = Array.from({ length: VARIANTS }, (_, i) => prose(1_000 + i, USER_CHARS));
/** The assistant answers of the conversation, cycled turn by turn. */
export const ANSWER_TEXTS: readonly string[] = Array.from({ length: VARIANTS }, (_, i) => prose(2_000 + i, ANSWER_CHARS));
/** What the model reports with each answer. */
export const ANSWER_INFO = { model: "gpt-4o-mini", finishReason: "stop", inputTokens: 2_150, outputTokens: 250 } as const;

/** The i-th message (0-based) of a conversation: even ones are the user's, odd ones the answers. */
export function chatMessage(i: number): { readonly role: "user" | "assistant"; readonly text: string } {
  const turn = Math.floor(i / 2) % VARIANTS;
  return i % 2 === 0 ? { role: "user", text: USER_TEXTS[turn]! } : { role: "assistant", text: ANSWER_TEXTS[turn]! };
}

const APP = "bench";
/** The LlmAgent's name: ADK's author of the answers. */
const AGENT = "assistant";

/** ADK's session service on `url`, with helpers that seed and drive one session per worker. */
export async function createAdkPeer(url: string) {
  const service = new DatabaseSessionService(url);
  await service.init();
  // ADK creates the app's state row on the first createSession without a lock: concurrent
  // first sessions collide on its primary key, so the first one is made alone.
  await service.createSession({ appName: APP, userId: "warm-up" });
  const pool = new pg.Pool({ connectionString: url, max: 2 });

  /**
   * The event of the i-th message as ADK's Runner (user message) and LlmAgent (model
   * response merged into the model-response event) create them; a turn's two events share
   * the invocation id.
   */
  function event(i: number, invocationId: string): AdkEvent {
    const m = chatMessage(i);
    if (m.role === "user") {
      return createEvent({ invocationId, author: "user", content: { role: "user", parts: [{ text: m.text }] } });
    }
    return createEvent({
      invocationId,
      author: AGENT,
      content: { role: "model", parts: [{ text: m.text }] },
      usageMetadata: {
        promptTokenCount: ANSWER_INFO.inputTokens,
        candidatesTokenCount: ANSWER_INFO.outputTokens,
        totalTokenCount: ANSWER_INFO.inputTokens + ANSWER_INFO.outputTokens,
      },
      finishReason: "STOP" as AdkEvent["finishReason"],
    });
  }

  /** A session of a user of its own with 2 × turns events; returns it and the next message's index. */
  async function seededSession(turns: number): Promise<{ session: AdkSession; next: number }> {
    const userId = `user-${randomUUID()}`;
    const created = await service.createSession({ appName: APP, userId });
    // The last turn is appended by ADK; the turns before it are copies of its two events,
    // older than them, each with its own id and the text of its place in the conversation.
    const last = 2 * (turns - 1);
    const invocationId = `e-${randomUUID()}`;
    await service.appendEvent({ session: created, event: event(last, invocationId) });
    await service.appendEvent({ session: created, event: event(last + 1, invocationId) });
    if (turns > 1) {
      // Ids as ADK's createNewEventId makes them (8 letters and digits), one invocation id per turn.
      await pool.query(
        `with turn as (
           select g, 'e-' || gen_random_uuid() as inv from generate_series(1, $2::int) g
         ), t as (
           select e.app_name, e.user_id, e.session_id, e.event_data, g, inv,
                  left(translate(encode(uuid_send(gen_random_uuid()), 'base64'), '+/=', ''), 8) as new_id,
                  e.timestamp - make_interval(secs => 2 * g) as new_ts
           from events e, turn where e.session_id = $1
         )
         insert into events (id, app_name, user_id, session_id, invocation_id, timestamp, event_data)
         select new_id, app_name, user_id, session_id, inv, new_ts,
                jsonb_set(jsonb_set(jsonb_set(jsonb_set(event_data,
                  '{id}', to_jsonb(new_id)),
                  '{invocation_id}', to_jsonb(inv)),
                  '{timestamp}', to_jsonb(floor(extract(epoch from new_ts) * 1000))),
                  '{content,parts,0,text}', to_jsonb(
                    case when event_data ->> 'author' = 'user'
                      then ($3::text[])[1 + ($2::int - g) % $5::int]
                      else ($4::text[])[1 + ($2::int - g) % $5::int] end))
         from t`,
        [created.id, turns - 1, USER_TEXTS, ANSWER_TEXTS, VARIANTS],
      );
    }
    const s = await service.getSession({ appName: APP, userId, sessionId: created.id, config: { numRecentEvents: 20 } });
    if (!s) throw new Error("ADK lost the seeded session");
    return { session: s, next: 2 * turns };
  }

  return {
    /** appendEvent of the conversation's next message. */
    async appendWorker(turns: number): Promise<Operation> {
      const { session, next } = await seededSession(turns);
      let i = next;
      let invocationId = "";
      return async () => {
        if (i % 2 === 0) invocationId = `e-${randomUUID()}`;
        await service.appendEvent({ session, event: event(i++, invocationId) });
      };
    },
    /** getSession with the last 20 events. */
    async loadWorker(turns: number): Promise<Operation> {
      const { session: s } = await seededSession(turns);
      return async () => {
        const got = await service.getSession({
          appName: APP,
          userId: s.userId,
          sessionId: s.id,
          config: { numRecentEvents: 20 },
        });
        if (!got || got.events.length !== Math.min(20, 2 * turns)) throw new Error(`ADK returned ${got?.events.length} events`);
      };
    },
    /** listSessions of one user. */
    async listWorker(turns: number): Promise<Operation> {
      const { session: s } = await seededSession(turns);
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

/** The i-th message as a LangGraph app holds it: LangChain messages, the answer as a chat model returns it. */
function langChainMessage(i: number): BaseMessage {
  const m = chatMessage(i);
  // messagesStateReducer gives a message without an id a UUID; ChatOpenAI's answers carry the completion's id.
  if (m.role === "user") return new HumanMessage({ content: m.text, id: randomUUID() });
  return new AIMessage({
    content: m.text,
    id: `chatcmpl-${randomUUID()}`,
    response_metadata: { model_name: ANSWER_INFO.model, finish_reason: ANSWER_INFO.finishReason },
    usage_metadata: {
      input_tokens: ANSWER_INFO.inputTokens,
      output_tokens: ANSWER_INFO.outputTokens,
      total_tokens: ANSWER_INFO.inputTokens + ANSWER_INFO.outputTokens,
    },
    tool_calls: [],
  });
}

type Versions = Checkpoint["channel_versions"];

/** LangGraph's PostgresSaver on `url`, with helpers that seed and drive one thread per worker. */
export async function createLangGraphPeer(url: string) {
  const saver = PostgresSaver.fromConnString(url);
  await saver.setup();

  /**
   * A thread as `new StateGraph(MessagesAnnotation).addNode("agent", …)` with START → agent → END
   * checkpoints it. Each turn (one invoke) makes three checkpoints, with integer channel
   * versions (PostgresSaver keeps BaseCheckpointSaver's getNextVersion):
   *   step n,   source "input": __start__ ← the input (does not touch `messages`);
   *   step n+1, source "loop":  __start__, messages (+ the user's message), branch:to:agent;
   *   step n+2, source "loop":  messages (+ the answer), branch:to:agent.
   * The messages channel (BinaryOperatorAggregate with messagesStateReducer) is stored
   * whole, as one blob, at each version. The bench's append op is the put of step n+1 or
   * n+2, the one that adds a message; the input checkpoint and the putWrites that precede
   * each put are not measured, so LangGraph's cost per turn here is a lower bound.
   */
  async function seededThread(turns: number) {
    const threadId = randomUUID();
    const messages: BaseMessage[] = Array.from({ length: 2 * turns }, (_, i) => langChainMessage(i));
    let config = { configurable: { thread_id: threadId, checkpoint_ns: "" } } as Parameters<PostgresSaver["put"]>[0];
    // The thread after `turns` invokes: the last checkpoint, step 3·turns − 1, is the one that
    // added the last answer (the thread's older checkpoints are not stored: the latest is read).
    let v = 3 * turns;
    let step = 3 * turns - 1;
    const versions: Versions = { __start__: v - 1, messages: v, "branch:to:agent": v };
    const seen: Checkpoint["versions_seen"] = { __input__: {}, __start__: { __start__: v - 2 }, agent: { "branch:to:agent": v - 1 } };

    async function put(newVersions: Versions, values: Record<string, unknown>): Promise<void> {
      const checkpoint: Checkpoint = {
        v: 4,
        id: uuid6(step),
        ts: new Date().toISOString(),
        channel_values: { messages, __pregel_tasks: [], ...values },
        channel_versions: { ...versions },
        versions_seen: structuredClone(seen),
      };
      config = await saver.put(config, checkpoint, { source: "loop", step, parents: {} }, newVersions);
    }
    await put(versions, {});
    let next = 2 * turns;
    return {
      threadId,
      /** The put that adds the conversation's next message. */
      async addMessage() {
        const i = next++;
        messages.push(langChainMessage(i));
        if (i % 2 === 0) {
          // The user's message: the input checkpoint took step + 1 and version v + 1.
          step += 2;
          seen.__start__ = { __start__: v + 1 };
          v += 2;
          Object.assign(versions, { __start__: v, messages: v, "branch:to:agent": v });
          await put({ __start__: v, messages: v, "branch:to:agent": v }, { "branch:to:agent": null });
        } else {
          // The agent node's answer.
          step += 1;
          seen.agent = { "branch:to:agent": v };
          v += 1;
          Object.assign(versions, { messages: v, "branch:to:agent": v });
          await put({ messages: v, "branch:to:agent": v }, {});
        }
      },
    };
  }

  return {
    /** put of the checkpoint that adds the conversation's next message. */
    async appendWorker(turns: number): Promise<Operation> {
      const t = await seededThread(turns);
      return () => t.addMessage();
    },
    /** getTuple of the latest checkpoint (its messages: the whole history); the app keeps the last 20. */
    async loadWorker(turns: number): Promise<Operation> {
      const t = await seededThread(turns);
      return async () => {
        const tuple = await saver.getTuple({ configurable: { thread_id: t.threadId, checkpoint_ns: "" } });
        const messages = tuple?.checkpoint.channel_values.messages as BaseMessage[] | undefined;
        if (messages?.slice(-20).length !== Math.min(20, 2 * turns)) throw new Error("LangGraph returned no messages");
      };
    },
    async close() {
      await saver.end();
    },
  };
}
