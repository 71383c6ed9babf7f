import type { LanguageModel } from "ai";
import { o200k } from "../../knowledge/chunk.js";
import { terms } from "../../knowledge/terms.js";

type LanguageModelV4 = Extract<LanguageModel, { specificationVersion: "v4" }>;
type CallOptions = Parameters<LanguageModelV4["doStream"]>[0];
type StreamPart = Awaited<ReturnType<LanguageModelV4["doStream"]>>["stream"] extends ReadableStream<infer P> ? P : never;
type GenerateResult = Awaited<ReturnType<LanguageModelV4["doGenerate"]>>;

/** The id agents use for the built-in model. */
export const BUILTIN_EXTRACTIVE = "builtin:extractive";

/** A passage the turn retrieved, with its citation number (as in the References event). */
export interface ExtractivePassage {
  readonly citation: number;
  readonly content: string;
  readonly documentName: string;
}

/**
 * What the Ask pipeline hands the built-in model through
 * `providerOptions.parley`: the retrieved passages, the memory block and
 * whether to cite.
 */
export interface ExtractiveContext {
  readonly passages: readonly ExtractivePassage[];
  /** Memories of the user, one fact per line ("- fact"). */
  readonly memories: string;
  readonly cite: boolean;
  /** Whether the agent searches any knowledge base. */
  readonly hasKnowledge: boolean;
}

const HOW_TO_LLM =
  "To get answers written by a language model, configure one: set OPENAI_API_KEY (or ANTHROPIC_API_KEY, or " +
  "OPENAI_COMPATIBLE_BASE_URL for Ollama, vLLM, LM Studio or llama.cpp) and PARLEY_DEFAULT_MODEL, e.g. openai:gpt-4o-mini, " +
  "or give the agent a model.";

/** Most sentences an answer quotes. */
const MAX_SENTENCES = 4;
/** Most words of an answer (beyond the sentence it reaches this in). */
const MAX_WORDS = 160;

interface Candidate {
  readonly text: string;
  readonly citation: number | undefined;
  readonly score: number;
  /** Order of appearance, to quote sentences in reading order. */
  readonly order: number;
}

const sentences = new Intl.Segmenter("en", { granularity: "sentence" });

function lastUserText(prompt: CallOptions["prompt"]): string {
  for (let i = prompt.length - 1; i >= 0; i--) {
    const m = prompt[i]!;
    if (m.role !== "user") continue;
    return m.content.map((p) => (p.type === "text" ? p.text : "")).join(" ");
  }
  return "";
}

function contextOf(options: CallOptions): ExtractiveContext {
  const raw = (options.providerOptions?.parley ?? {}) as Partial<Record<keyof ExtractiveContext, unknown>>;
  const passages = Array.isArray(raw.passages) ? (raw.passages as ExtractivePassage[]) : [];
  return {
    passages,
    memories: typeof raw.memories === "string" ? raw.memories : "",
    cite: raw.cite !== false,
    hasKnowledge: raw.hasKnowledge === true || passages.length > 0,
  };
}

/** Splits a passage into sentences, dropping Markdown heading marks and list bullets. */
function sentencesOf(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split(/\n+/)) {
    const clean = line.replace(/^\s*(#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)/, "").trim();
    if (clean === "") continue;
    for (const { segment } of sentences.segment(clean)) {
      const s = segment.trim();
      if (s.length > 0) out.push(s);
    }
  }
  return out;
}

/**
 * The answer: the sentences of the passages and memories that share the most
 * (rarest) words with the question, in reading order, each followed by its
 * citation; or a plain statement that nothing relevant was found.
 */
export function extractiveAnswer(question: string, ctx: ExtractiveContext): string {
  const q = new Set(terms(question));
  const candidates: Omit<Candidate, "score">[] = [];
  const memoryLines = ctx.memories
    .split("\n")
    .map((l) => l.match(/^\s*[-*]\s+(.*)$/)?.[1]?.trim())
    .filter((l): l is string => Boolean(l));
  for (const m of memoryLines) candidates.push({ text: m, citation: undefined, order: candidates.length });
  for (const p of ctx.passages) {
    for (const s of sentencesOf(p.content)) candidates.push({ text: s, citation: p.citation, order: candidates.length });
  }
  // Words rare among the candidates say more about relevance than common ones (an IDF weight).
  const df = new Map<string, number>();
  const termSets = candidates.map((c) => new Set(terms(c.text)));
  for (const set of termSets) for (const t of set) df.set(t, (df.get(t) ?? 0) + 1);
  const n = Math.max(candidates.length, 1);
  const weight = (t: string) => Math.log(1 + n / (df.get(t) ?? 1));
  const maxScore = [...q].reduce((s, t) => s + weight(t), 0);
  const scored: Candidate[] = candidates.map((c, i) => {
    const set = termSets[i]!;
    let score = 0;
    for (const t of q) if (set.has(t)) score += weight(t);
    return { ...c, score };
  });
  // A sentence must share at least a fifth of the question's weight to count as an answer.
  const relevant = scored
    .filter((c) => c.score > 0 && maxScore > 0 && c.score >= 0.2 * maxScore)
    .sort((a, b) => b.score - a.score || a.order - b.order);

  if (relevant.length === 0) {
    const where = ctx.hasKnowledge
      ? "I found nothing relevant to your question in this agent's knowledge bases or in what I remember about you."
      : "This agent has no knowledge base and I remember nothing relevant about you, so I have nothing to answer from.";
    return `${where} I am Parley's built-in extractive model: I can only quote the documents and memories available to the agent. ${HOW_TO_LLM}`;
  }
  const picked: Candidate[] = [];
  let words = 0;
  for (const c of relevant) {
    if (picked.length >= MAX_SENTENCES || words >= MAX_WORDS) break;
    if (picked.some((p) => p.text === c.text)) continue;
    picked.push(c);
    words += c.text.split(/\s+/).length;
  }
  picked.sort((a, b) => a.order - b.order);
  const parts = picked.map((c) => (ctx.cite && c.citation !== undefined ? `${c.text} [${c.citation}]` : c.text));
  return parts.join(" ");
}

/** The answer as text deltas of a few words each, as a model streams. */
function deltas(text: string): string[] {
  const pieces = text.match(/\S+\s*/g) ?? [text];
  const out: string[] = [];
  for (let i = 0; i < pieces.length; i += 4) out.push(pieces.slice(i, i + 4).join(""));
  return out;
}

function usage(options: CallOptions, answer: string) {
  const enc = o200k();
  const input = options.prompt
    .map((m) => (typeof m.content === "string" ? m.content : m.content.map((p) => ("text" in p ? String(p.text) : "")).join(" ")))
    .reduce((sum, t) => sum + enc.encode(t).length, 0);
  return {
    inputTokens: { total: input, noCache: undefined, cacheRead: undefined, cacheWrite: undefined },
    outputTokens: { total: enc.encode(answer).length, text: undefined, reasoning: undefined },
  };
}

/**
 * Parley's built-in model: no network, no weights. It answers by quoting the
 * retrieved passages and memories most relevant to the question, with the
 * citation numbers of the References event, and says plainly when nothing
 * relevant was found.
 */
export function createBuiltinExtractiveModel(): LanguageModelV4 {
  const answerFor = (options: CallOptions) => extractiveAnswer(lastUserText(options.prompt), contextOf(options));
  return {
    specificationVersion: "v4",
    provider: "builtin",
    modelId: "extractive",
    supportedUrls: {},
    async doGenerate(options): Promise<GenerateResult> {
      options.abortSignal?.throwIfAborted();
      const answer = answerFor(options);
      return {
        content: [{ type: "text", text: answer }],
        finishReason: { unified: "stop", raw: "stop" },
        usage: usage(options, answer),
        warnings: [],
      } as GenerateResult;
    },
    async doStream(options) {
      const answer = answerFor(options);
      const parts: StreamPart[] = [
        { type: "stream-start", warnings: [] },
        { type: "text-start", id: "t0" },
        ...deltas(answer).map((delta): StreamPart => ({ type: "text-delta", id: "t0", delta })),
        { type: "text-end", id: "t0" },
        { type: "finish", finishReason: { unified: "stop", raw: "stop" }, usage: usage(options, answer) },
      ];
      let i = 0;
      const signal = options.abortSignal;
      return {
        stream: new ReadableStream<StreamPart>({
          pull(controller) {
            if (signal?.aborted) {
              controller.error(signal.reason ?? new DOMException("This operation was aborted", "AbortError"));
              return;
            }
            const part = parts[i++];
            if (part) controller.enqueue(part);
            else controller.close();
          },
        }),
      };
    },
  };
}
