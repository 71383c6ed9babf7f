import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { embedMany, type EmbeddingModel } from "ai";
import { ConfigError, type Config } from "../config.js";
import { parseModelId } from "../ask/models/registry.js";

/** Turns texts into vectors with one embedding model. */
export interface Embedder {
  /** `provider:model`, stored with each vector: only vectors of the same model are compared. */
  readonly model: string;
  embed(values: string[], signal?: AbortSignal): Promise<number[][]>;
}

/** An Embedder over an AI SDK embedding model. */
export function createEmbedder(id: string, model: EmbeddingModel): Embedder {
  return {
    model: id,
    async embed(values, signal) {
      if (values.length === 0) return [];
      const { embeddings } = await embedMany({ model, values, maxRetries: 2, ...(signal ? { abortSignal: signal } : {}) });
      return embeddings;
    },
  };
}

/**
 * The embedder named by PARLEY_EMBEDDING_MODEL (`openai:…`, `openai-compatible:…`
 * or `builtin:hash`), undefined when none is set. A named provider that is not
 * configured is a configuration error, reported at start.
 */
export function embedderFromConfig(config: Config): Embedder | undefined {
  const id = config.embeddingModel;
  if (!id) return undefined;
  const parsed = parseModelId(id);
  if (!parsed) throw new ConfigError(`PARLEY_EMBEDDING_MODEL must be provider:model, got "${id}"`);
  const p = config.providers;
  switch (parsed.provider) {
    case "openai":
      if (!p.openai) throw new ConfigError(`PARLEY_EMBEDDING_MODEL=${id} needs OPENAI_API_KEY`);
      return createEmbedder(
        id,
        createOpenAI({ apiKey: p.openai.apiKey, ...(p.openai.baseURL ? { baseURL: p.openai.baseURL } : {}) }).embeddingModel(parsed.name),
      );
    case "openai-compatible":
      if (!p.openaiCompatible) throw new ConfigError(`PARLEY_EMBEDDING_MODEL=${id} needs OPENAI_COMPATIBLE_BASE_URL`);
      return createEmbedder(
        id,
        createOpenAICompatible({
          name: p.openaiCompatible.name,
          baseURL: p.openaiCompatible.baseURL,
          ...(p.openaiCompatible.apiKey ? { apiKey: p.openaiCompatible.apiKey } : {}),
        }).embeddingModel(parsed.name),
      );
    case "builtin":
      if (parsed.name !== "hash") throw new ConfigError(`unknown builtin embedding model "${parsed.name}"; the only one is builtin:hash`);
      return createEmbedder(id, createHashEmbeddingModel());
    default:
      throw new ConfigError(`PARLEY_EMBEDDING_MODEL: unknown provider "${parsed.provider}" (openai, openai-compatible or builtin)`);
  }
}

type EmbeddingModelV4 = Extract<EmbeddingModel, { specificationVersion: "v4" }>;

const STOPWORDS = new Set(
  "a an and are as at be by can do does for from has have how i in is it its of on or that the this to was what when where which who why will with you your".split(" "),
);
const words = new Intl.Segmenter("en", { granularity: "word" });

/** 32-bit FNV-1a: a stable hash for feature hashing. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * A deterministic embedding model that needs no network and no weights:
 * feature hashing of a text's words and their character 4-grams into `dims`
 * dimensions, L2-normalized. It measures lexical and morphological overlap,
 * not meaning; it exists for tests and offline demos of hybrid search.
 */
export function createHashEmbeddingModel(dims = 256): EmbeddingModelV4 {
  const embedOne = (text: string): number[] => {
    const v = new Array<number>(dims).fill(0);
    for (const { segment, isWordLike } of words.segment(text.toLowerCase())) {
      if (!isWordLike || STOPWORDS.has(segment)) continue;
      const add = (feature: string, weight: number) => {
        const h = fnv1a(feature);
        v[h % dims]! += (h & 0x80000000 ? -1 : 1) * weight;
      };
      add(`w:${segment}`, 1);
      const padded = `^${segment}$`;
      for (let i = 0; i + 4 <= padded.length; i++) add(`g:${padded.slice(i, i + 4)}`, 0.5);
    }
    const norm = Math.hypot(...v);
    return norm === 0 ? v : v.map((x) => x / norm);
  };
  return {
    specificationVersion: "v4",
    provider: "builtin",
    modelId: "hash",
    maxEmbeddingsPerCall: Infinity,
    supportsParallelCalls: true,
    async doEmbed({ values }) {
      return { embeddings: values.map(embedOne), warnings: [] };
    },
  };
}
