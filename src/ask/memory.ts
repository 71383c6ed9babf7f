import { generateText, Output, type LanguageModel } from "ai";
import type { Kysely } from "kysely";
import { z } from "zod";
import type { Database } from "../db/schema.js";
import type { Embedder } from "../knowledge/embeddings.js";
import { newId } from "../ids.js";
import type { Logger } from "../log.js";
import { insertMemory, memoryVectorsAvailable, searchMemories, type MemoryHitRow, type MemorySearch } from "../repos/memories.js";


/** Defaults of an agent's memory settings (0 or unset in the agent). */
export const MEMORY_DEFAULTS = { maxItems: 5, minQuality: 0.5 } as const;

/** Memory search with vectors when an embedder is configured and pgvector exists, full-text otherwise. */
export interface MemorySearcher {
  /** The hybrid search of one user's memories. */
  search(db: Kysely<Database>, tenantId: string, s: Omit<MemorySearch, "embedding">, signal?: AbortSignal): Promise<MemoryHitRow[]>;
  /** The embedding to store with a new memory; undefined without vectors (or when the model fails: the memory is still found by full text). */
  embed(db: Kysely<Database>, text: string, signal?: AbortSignal): Promise<{ model: string; vector: number[] } | undefined>;
}

/** A searcher that checks once per process whether memory_embeddings exists. */
export function createMemorySearcher(embedder: Embedder | undefined, log: Logger): MemorySearcher {
  let available: Promise<boolean> | undefined;
  const vectors = async (db: Kysely<Database>) => {
    if (!embedder) return false;
    available ??= memoryVectorsAvailable(db).then((ok) => {
      if (!ok) log.info("pgvector is not available: memories are searched by full text only");
      return ok;
    });
    return available;
  };
  async function embed(db: Kysely<Database>, text: string, signal?: AbortSignal) {
    if (!embedder || !(await vectors(db))) return undefined;
    try {
      const [vector] = await embedder.embed([text], signal);
      return vector ? { model: embedder.model, vector } : undefined;
    } catch (err) {
      log.warn({ err }, "embedding for memory search failed; using full text only");
      return undefined;
    }
  }
  return {
    embed,
    async search(db, tenantId, s, signal) {
      const embedding = await embed(db, s.query, signal);
      return searchMemories(db, tenantId, { ...s, ...(embedding ? { embedding } : {}) });
    },
  };
}

/** The block injected into the prompt: the facts, most relevant first; empty when there are none. */
export function formatMemoryContext(hits: readonly MemoryHitRow[]): string {
  if (hits.length === 0) return "";
  const lines = hits.map((h) => `- ${h.memory.content.replace(/\s*\n\s*/g, " ")}`);
  return `What you remember about the user (most relevant first):\n${lines.join("\n")}`;
}

/**
 * The memory block for a question: the user's long-term memories and the
 * session's short-term ones most relevant to query, formatted for the
 * prompt. Called by Ask's context building and by GetMemoryContext.
 */
export async function memoryContext(
  db: Kysely<Database>,
  searcher: MemorySearcher,
  tenantId: string,
  userId: string,
  sessionId: string | undefined,
  query: string,
  maxItems: number,
  signal?: AbortSignal,
): Promise<{ text: string; hits: MemoryHitRow[] }> {
  const hits = await searcher.search(
    db,
    tenantId,
    // Without a session only the user's long-term memories apply.
    { query, userId, ...(sessionId ? { sessionId } : { type: "long" as const }), minQuality: 0, limit: maxItems },
    signal,
  );
  return { text: formatMemoryContext(hits), hits };
}

/** What the extraction model returns: durable facts about the user, each with its quality. */
export const extractedFactsSchema = z.object({
  facts: z
    .array(
      z.object({
        fact: z.string().describe("One durable fact about the user, as a short third-person sentence."),
        quality: z.number().describe("0 to 1: how certain, durable and useful the fact is."),
      }),
    )
    .describe("Facts worth remembering in later conversations; empty when there are none."),
});

const EXTRACTION_INSTRUCTIONS =
  "You extract durable facts about the user from one exchange of a conversation: preferences, " +
  "circumstances, goals, names, constraints. Leave out anything about the assistant, small talk, " +
  "one-off requests and facts already known. Rate each fact's quality from 0 (doubtful or fleeting) " +
  "to 1 (stated plainly and lasting).";

const MAX_FACT_CHARS = 16_384;

/**
 * After a completed Ask: asks the agent's model for durable facts about the
 * user in the exchange and stores those with quality ≥ minQuality as
 * long-term memories. Returns what was stored. The known memories are shown
 * to the model so that it does not repeat them.
 */
export async function extractMemories(args: {
  readonly db: Kysely<Database>;
  readonly searcher: MemorySearcher;
  readonly model: LanguageModel;
  readonly tenantId: string;
  readonly userId: string;
  readonly sessionId: string;
  readonly askId: string;
  readonly question: string;
  readonly answer: string;
  readonly minQuality: number;
  readonly signal?: AbortSignal;
}): Promise<string[]> {
  const known = await args.searcher.search(
    args.db,
    args.tenantId,
    { query: args.question, userId: args.userId, type: "long", minQuality: 0, limit: 20 },
    args.signal,
  );
  const prompt = [
    known.length > 0 ? `Already known:\n${known.map((h) => `- ${h.memory.content}`).join("\n")}\n` : "",
    `User: ${args.question}`,
    `Assistant: ${args.answer}`,
  ].join("\n");
  const { output } = await generateText({
    model: args.model,
    output: Output.object({ schema: extractedFactsSchema }),
    instructions: EXTRACTION_INSTRUCTIONS,
    prompt,
    ...(args.signal ? { abortSignal: args.signal } : {}),
  });
  const knownText = new Set(known.map((h) => h.memory.content.trim().toLowerCase()));
  const stored: string[] = [];
  for (const { fact, quality } of output.facts) {
    const content = fact.trim().slice(0, MAX_FACT_CHARS).replaceAll("\u0000", "");
    const q = Number.isFinite(quality) ? Math.min(1, Math.max(0, quality)) : 0;
    if (content === "" || q < args.minQuality || knownText.has(content.toLowerCase())) continue;
    knownText.add(content.toLowerCase());
    const embedding = await args.searcher.embed(args.db, content, args.signal);
    await insertMemory(
      args.db,
      {
        id: newId(),
        tenant_id: args.tenantId,
        type: "long",
        user_id: args.userId,
        session_id: null,
        content,
        quality: q,
        metadata: { source: "extraction", session_id: args.sessionId, ask_id: args.askId },
      },
      embedding,
    );
    stored.push(content);
  }
  return stored;
}

/** The memory settings of an agent, as stored. */
export interface AgentMemorySettings {
  readonly enabled?: boolean;
  readonly max_items?: number;
  readonly extract?: boolean;
  readonly min_quality?: number;
}

/** Questions longer than this are cut for the memory search (the documented query limit). */
const MAX_QUERY_CHARS = 4096;

/**
 * The memory block of a turn: empty unless the agent has memory enabled.
 * A failing search costs the turn its memories, not its answer.
 */
export async function memoryBlockForTurn(args: {
  readonly db: Kysely<Database>;
  readonly searcher: MemorySearcher | undefined;
  readonly log: Logger;
  readonly settings: AgentMemorySettings | undefined;
  readonly tenantId: string;
  readonly userId: string;
  readonly sessionId: string;
  readonly question: string;
  readonly signal?: AbortSignal;
}): Promise<{ text: string; hits: MemoryHitRow[] }> {
  const s = args.settings;
  if (!s?.enabled || !args.searcher) return { text: "", hits: [] };
  try {
    return await memoryContext(
      args.db,
      args.searcher,
      args.tenantId,
      args.userId,
      args.sessionId,
      args.question.slice(0, MAX_QUERY_CHARS),
      s.max_items || MEMORY_DEFAULTS.maxItems,
      args.signal,
    );
  } catch (err) {
    if (args.signal?.aborted) throw err;
    args.log.warn({ err, sessionId: args.sessionId }, "memory search failed; answering without memories");
    return { text: "", hits: [] };
  }
}

/** After a completed Ask of an agent with memory.extract: extracts and stores facts; failures are logged, never raised. */
export async function extractAfterAsk(args: {
  readonly db: Kysely<Database>;
  readonly searcher: MemorySearcher | undefined;
  readonly log: Logger;
  readonly settings: AgentMemorySettings | undefined;
  readonly model: LanguageModel;
  readonly tenantId: string;
  readonly userId: string;
  readonly sessionId: string;
  readonly askId: string;
  readonly question: string;
  readonly answer: string;
}): Promise<void> {
  const s = args.settings;
  if (!s?.extract || !args.searcher || args.answer.trim() === "") return;
  try {
    await extractMemories({
      ...args,
      searcher: args.searcher,
      question: args.question.slice(0, MAX_QUERY_CHARS * 4),
      answer: args.answer.slice(0, MAX_QUERY_CHARS * 4),
      minQuality: s.min_quality ?? MEMORY_DEFAULTS.minQuality,
    });
  } catch (err) {
    args.log.warn({ err, askId: args.askId }, "extracting memories from an Ask failed");
  }
}
