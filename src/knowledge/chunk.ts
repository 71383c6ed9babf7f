import { Tiktoken } from "js-tiktoken/lite";
import o200kBase from "js-tiktoken/ranks/o200k_base";
import { Lexer, type Token } from "marked";

/** Chunking defaults and limits of a knowledge base (see knowledge.proto). */
export const CHUNKING = { defaultSize: 512, defaultOverlap: 64, minSize: 64, maxSize: 8192 } as const;

/** A chunk of a document. */
export interface TextChunk {
  readonly content: string;
  readonly tokens: number;
}

/** Encodes and decodes o200k tokens. */
export interface Tokenizer {
  encode(text: string): number[];
  decode(tokens: number[]): string;
}

let shared: Tokenizer | undefined;

/** The o200k_base tokenizer, built once per process (its tables are large). */
export function o200k(): Tokenizer {
  if (!shared) {
    const enc = new Tiktoken(o200kBase);
    // Special-token text inside a document is ordinary text.
    shared = { encode: (t) => enc.encode(t, [], []), decode: (t) => enc.decode(t) };
  }
  return shared;
}

interface Block {
  readonly text: string;
  /** Heading depth when the block is a heading. */
  readonly heading?: number;
}

interface Piece {
  readonly text: string;
  readonly tokens: number;
  readonly heading?: boolean;
}

const sentences = new Intl.Segmenter("en", { granularity: "sentence" });

/** Lets other work run between slices of a long, CPU-bound chunking. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Splits a document into chunks of at most `size` tokens (o200k), each
 * starting with up to `overlap` tokens of the previous one. Markdown is split
 * at its blocks (headings, paragraphs, lists, code, tables): a section heading
 * starts a new chunk and stays with the text under it; other text is split at
 * blank lines. A block larger than a chunk is split at sentences, and a
 * sentence larger than a chunk at token boundaries.
 */
export async function chunkDocument(
  text: string,
  options: { readonly size: number; readonly overlap: number; readonly markdown: boolean; readonly signal?: AbortSignal },
  tokenizer: Tokenizer = o200k(),
): Promise<TextChunk[]> {
  const { size, overlap } = options;
  const blocks = options.markdown ? markdownBlocks(text) : paragraphBlocks(text);
  const chunks: TextChunk[] = [];
  let current: Piece[] = [];
  let currentTokens = 0;
  /** True while `current` holds only the overlap carried from the previous chunk. */
  let onlyOverlap = false;

  const separatorTokens = 1;
  const emit = (carry: boolean) => {
    if (current.length === 0 || onlyOverlap) return;
    const content = current.map((p) => p.text).join("\n\n");
    chunks.push({ content, tokens: tokenizer.encode(content).length });
    const tail = carry ? overlapTail(current, overlap, tokenizer) : [];
    current = tail;
    currentTokens = tail.reduce((n, p) => n + p.tokens + separatorTokens, 0);
    onlyOverlap = tail.length > 0;
  };

  let n = 0;
  for (const block of blocks) {
    if (++n % 64 === 0) {
      await yieldToLoop();
      options.signal?.throwIfAborted();
    }
    if (block.heading !== undefined) {
      // A new section: no overlap from the previous one (it would be another topic).
      const fullEnough = currentTokens >= size / 2;
      // Headings with no text under them yet (a title, then a section) stay with the text that follows.
      const onlyHeadings = current.every((p) => p.heading);
      if ((block.heading <= 2 || fullEnough) && !onlyHeadings) emit(false);
      if (onlyOverlap) {
        current = [];
        currentTokens = 0;
        onlyOverlap = false;
      }
    }
    for (const fitted of splitToFit(block.text, size, Math.max(size - overlap, 1), tokenizer)) {
      const piece: Piece = block.heading !== undefined ? { ...fitted, heading: true } : fitted;
      if (currentTokens + piece.tokens + separatorTokens > size && current.length > 0) {
        emit(true);
        // The overlap must leave room for the piece.
        while (current.length > 0 && currentTokens + piece.tokens + separatorTokens > size) {
          const dropped = current.shift()!;
          currentTokens -= dropped.tokens + separatorTokens;
        }
        if (current.length === 0) onlyOverlap = false;
      }
      current.push(piece);
      currentTokens += piece.tokens + separatorTokens;
      onlyOverlap = false;
    }
  }
  emit(false);
  return chunks;
}

/** The last pieces of a chunk that fit in `overlap` tokens, or the last `overlap` tokens of its last piece. */
function overlapTail(pieces: readonly Piece[], overlap: number, tokenizer: Tokenizer): Piece[] {
  if (overlap <= 0) return [];
  const out: Piece[] = [];
  let used = 0;
  for (let i = pieces.length - 1; i >= 0; i--) {
    const p = pieces[i]!;
    if (used + p.tokens > overlap) break;
    out.unshift(p);
    used += p.tokens;
  }
  if (out.length > 0) return out;
  const last = pieces[pieces.length - 1];
  if (!last) return [];
  const tokens = tokenizer.encode(last.text).slice(-overlap);
  const text = tokenizer.decode(tokens).trimStart();
  return text === "" ? [] : [{ text, tokens: tokens.length }];
}

/**
 * A block as pieces: whole when it fits in `size` tokens, else its sentences
 * joined into pieces of at most `pieceMax` tokens (room is left for the
 * overlap), and a sentence larger than that as token windows.
 */
function splitToFit(text: string, size: number, pieceMax: number, tokenizer: Tokenizer): Piece[] {
  const tokens = tokenizer.encode(text).length;
  if (tokens <= size) return [{ text, tokens }];
  const out: Piece[] = [];
  for (const { segment } of sentences.segment(text)) {
    const s = segment.trim();
    if (s === "") continue;
    const ids = tokenizer.encode(s);
    if (ids.length <= pieceMax) {
      // Sentences are joined back into pieces as large as fit, so a chunk is not a list of fragments.
      const prev = out[out.length - 1];
      if (prev && prev.tokens + ids.length + 1 <= pieceMax && !prev.text.endsWith("\n")) {
        const joined = `${prev.text} ${s}`;
        out[out.length - 1] = { text: joined, tokens: tokenizer.encode(joined).length };
      } else out.push({ text: s, tokens: ids.length });
      continue;
    }
    for (let i = 0; i < ids.length; i += pieceMax) {
      const window = ids.slice(i, i + pieceMax);
      out.push({ text: tokenizer.decode(window), tokens: window.length });
    }
  }
  return out;
}

/** Markdown split into its top-level blocks, each as its source text. */
function markdownBlocks(text: string): Block[] {
  const tokens: Token[] = Lexer.lex(text.replace(/\r\n?/g, "\n"), { gfm: true });
  const out: Block[] = [];
  for (const t of tokens) {
    if (t.type === "space" || t.type === "hr") continue;
    const raw = t.raw.trim();
    if (raw === "") continue;
    if (t.type === "heading") out.push({ text: raw, heading: (t as { depth: number }).depth });
    else out.push({ text: raw });
  }
  return out;
}

/** Plain text split at blank lines. */
function paragraphBlocks(text: string): Block[] {
  return text
    .replace(/\r\n?/g, "\n")
    .split(/\n[ \t]*\n+/)
    .map((p) => p.trim())
    .filter((p) => p !== "")
    .map((p) => ({ text: p }));
}
