import type { AgentRow, ReferencesJson, RetrievalJson } from "../db/schema.js";
import type { Logger } from "../log.js";
import type { ExtractivePassage } from "../ask/models/builtin-extractive.js";
import type { KnowledgeSearch } from "./search.js";

export type { KnowledgeSearch } from "./search.js";

/** Defaults of an agent's retrieval settings (0 or unset in the agent). */
export const RETRIEVAL_DEFAULTS = { topK: 8, maxContextTokens: 4000 } as const;

/** What a turn found in its agent's knowledge bases. */
export interface TurnKnowledge {
  /** The References event and the assistant message's references; undefined when the agent uses no knowledge base. */
  readonly references: ReferencesJson | undefined;
  /** The knowledge block of the prompt; empty when the agent uses no knowledge base. */
  readonly block: string;
  /** The cited passages, for the built-in extractive model. */
  readonly passages: ExtractivePassage[];
  readonly cite: boolean;
}

const NONE: TurnKnowledge = { references: undefined, block: "", passages: [], cite: true };

/**
 * Searches the agent's knowledge bases for the question and keeps the best
 * hits that fit the token budget (the agent's max_context_tokens, and what
 * the instructions and the question leave of the context window), numbered
 * from 1 in relevance order.
 */
export async function knowledgeForTurn(args: {
  readonly search: KnowledgeSearch | undefined;
  readonly log: Logger;
  readonly count: (text: string) => number;
  readonly tenantId: string;
  readonly knowledgeBaseIds: readonly string[];
  readonly retrieval: RetrievalJson;
  readonly question: string;
  /** Tokens of the context window left for knowledge. */
  readonly availableTokens: number;
  readonly signal?: AbortSignal;
}): Promise<TurnKnowledge> {
  const { search, retrieval } = args;
  if (!search || args.knowledgeBaseIds.length === 0) return NONE;
  const cite = retrieval.cite !== false;
  const budget = Math.max(0, Math.min(retrieval.max_context_tokens || RETRIEVAL_DEFAULTS.maxContextTokens, args.availableTokens));
  let hits: Awaited<ReturnType<KnowledgeSearch["search"]>> = [];
  if (args.question.trim() !== "") {
    try {
      hits = await search.search(args.tenantId, args.knowledgeBaseIds, args.question.slice(0, 4096), {
        topK: retrieval.top_k || RETRIEVAL_DEFAULTS.topK,
        threshold: retrieval.similarity_threshold ?? 0,
        ...(args.signal ? { signal: args.signal } : {}),
      });
    } catch (err) {
      if (args.signal?.aborted) throw err;
      // The answer can still be given without knowledge; the empty references say none was used.
      args.log.warn({ err }, "knowledge search failed; answering without knowledge");
    }
  }
  const header = cite
    ? "Answer from the numbered passages below when they are relevant, and cite each passage you use as [n] right after the sentence it supports. If they do not contain the answer, say so."
    : "Answer from the passages below when they are relevant. If they do not contain the answer, say so.";
  let used = args.count(header);
  const chunks: ReferencesJson["chunks"] = [];
  const parts: string[] = [];
  for (const h of hits) {
    const citation = chunks.length + 1;
    const text = `[${citation}] (${h.document_name})\n${h.content}`;
    const tokens = args.count(text) + 2;
    if (used + tokens > budget) break;
    used += tokens;
    parts.push(text);
    chunks.push({
      chunk_id: h.chunk_id,
      content: h.content,
      document_id: h.document_id,
      document_name: h.document_name,
      knowledge_base_id: h.knowledge_base_id,
      similarity: h.similarity,
      term_similarity: h.term_similarity,
      vector_similarity: h.vector_similarity,
      citation,
    });
  }
  const aggs = new Map<string, ReferencesJson["doc_aggs"][number]>();
  for (const c of chunks) {
    const a = aggs.get(c.document_id) ?? { document_id: c.document_id, document_name: c.document_name, count: 0 };
    a.count++;
    aggs.set(c.document_id, a);
  }
  const block =
    parts.length > 0
      ? `${header}\n\n${parts.join("\n\n")}`
      : "No passage of the knowledge bases matched the question; if you cannot answer without them, say so.";
  return {
    references: { chunks, doc_aggs: [...aggs.values()] },
    block,
    passages: chunks.map((c) => ({ citation: c.citation, content: c.content, documentName: c.document_name })),
    cite,
  };
}

/** Tokens a chat format spends per message besides its text (as the context builder counts them). */
const OVERHEAD_TOKENS = 4;

/**
 * The knowledge of one Ask turn: reads the agent's knowledge settings and
 * searches within what the instructions (memories included) and the question
 * leave of the context window, so that knowledge never pushes the question
 * out; history then fills the rest.
 */
export async function loadTurnKnowledge(args: {
  readonly search: KnowledgeSearch | undefined;
  readonly log: Logger;
  readonly tokens: { count(text: string): number };
  readonly tenantId: string;
  /** The agent's knowledge settings, as the Ask read them with its agent. */
  readonly settings: Pick<AgentRow, "knowledge_base_ids" | "retrieval">;
  readonly question: string;
  readonly instructions: string;
  readonly maxInputTokens: number;
  readonly signal?: AbortSignal;
}): Promise<TurnKnowledge> {
  if (!args.search) return NONE;
  const { settings } = args;
  if (settings.knowledge_base_ids.length === 0) return NONE;
  const count = (t: string) => args.tokens.count(t);
  const used = (args.instructions.trim() === "" ? 0 : count(args.instructions)) + count(args.question) + 3 * OVERHEAD_TOKENS;
  return knowledgeForTurn({
    search: args.search,
    log: args.log,
    count,
    tenantId: args.tenantId,
    knowledgeBaseIds: settings.knowledge_base_ids,
    retrieval: settings.retrieval,
    question: args.question,
    availableTokens: args.maxInputTokens - used,
    ...(args.signal ? { signal: args.signal } : {}),
  });
}

/** What the built-in extractive model reads from `providerOptions.parley` (other providers ignore it). */
export function builtinModelOptions(knowledge: TurnKnowledge, memories: string, hasKnowledge: boolean): { parley: JSONObjectLike } {
  return {
    parley: {
      passages: knowledge.passages.map((p) => ({ citation: p.citation, content: p.content, documentName: p.documentName })),
      memories,
      cite: knowledge.cite,
      hasKnowledge,
    },
  };
}

type JSONObjectLike = { [key: string]: string | number | boolean | null | JSONObjectLike | (string | number | boolean | JSONObjectLike)[] };
