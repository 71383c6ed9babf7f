import type { ModelMessage } from "ai";
import { Tiktoken } from "js-tiktoken/lite";
import o200kBase from "js-tiktoken/ranks/o200k_base";
import { LRUCache } from "lru-cache";
import type { MessageRoleText, MessageStatusText } from "../db/schema.js";

/** Counts the tokens of a text. */
export interface TokenCounter {
  count(text: string): number;
}

/** Texts shorter than this are tokenized every time: caching them saves less than the lookup costs. */
const MEMO_MIN_CHARS = 64;

/**
 * The o200k_base tokenizer (GPT-4o family): a fair measure for any model's context budget.
 * Counts are remembered (up to memoChars characters of text, least recently used first out):
 * every turn measures the same recent history again, and tokenizing it was most of an Ask's CPU.
 */
export function createTokenCounter(memoChars = 8 * 1024 * 1024): TokenCounter {
  const enc = new Tiktoken(o200kBase);
  const memo = new LRUCache<string, number>({ maxSize: memoChars, sizeCalculation: (_, text) => text.length });
  // Special-token text typed by a user (e.g. "<|endoftext|>") is ordinary text here, not an error.
  const encode = (text: string) => enc.encode(text, [], []).length;
  return {
    count(text) {
      if (text.length < MEMO_MIN_CHARS || text.length > memoChars / 8) return encode(text);
      let n = memo.get(text);
      if (n === undefined) memo.set(text, (n = encode(text)));
      return n;
    },
  };
}

/** Defaults of an agent's context policy (0 or unset in the agent). */
export const CONTEXT_DEFAULTS = { maxHistoryMessages: 50, maxInputTokens: 16_000 } as const;

/** How many messages of history a turn of this agent reads (its context policy's window). */
export function historyWindow(agent: { readonly context_policy: { readonly max_history_messages?: number } | null }): number {
  return agent.context_policy?.max_history_messages || CONTEXT_DEFAULTS.maxHistoryMessages;
}

/** Tokens a chat format spends on each message besides its text (role, separators). */
export const MESSAGE_OVERHEAD_TOKENS = 4;

// Tokenizing is CPU work on the event loop: a text with more bytes than this
// many times the remaining budget is taken not to fit without tokenizing it
// (o200k averages about 4 bytes per token; only degenerate text packs more
// than 16 into one).
const MAX_BYTES_PER_TOKEN = 16;

/** A stored message as the context builder sees it. */
export interface HistoryMessage {
  readonly id: string;
  readonly role: MessageRoleText;
  readonly content: string;
  readonly status: MessageStatusText;
}

export interface ContextInput {
  /** The agent's instructions (system prompt); empty: none. */
  readonly instructions: string;
  /** The most recent messages, newest first (as lastMessages returns them); the newest is the user's question. */
  readonly history: readonly HistoryMessage[];
  readonly maxHistoryMessages: number;
  readonly maxInputTokens: number;
}

export interface BuiltContext {
  /** The instructions, undefined when empty. */
  readonly instructions: string | undefined;
  /** The messages for the model, oldest first. */
  readonly messages: ModelMessage[];
  /** Tokens of instructions and messages, overhead included. */
  readonly inputTokens: number;
  /** Ids of the messages used, oldest first. */
  readonly messageIds: string[];
}

/**
 * The model's context for a turn: the instructions plus the newest messages
 * that fit both max_history_messages and the token budget. Walks from the
 * newest message back and stops at the first one that does not fit, so the
 * history is always a contiguous tail. Assistant messages an Ask is still
 * writing (STREAMING: the current turn's placeholder) and empty messages are
 * skipped; partial answers of cancelled, failed or interrupted Asks are kept,
 * since the user saw them. The newest message (the question) is always sent.
 */
export function buildContext(input: ContextInput, counter: TokenCounter): BuiltContext {
  const instructions = input.instructions.trim() === "" ? undefined : input.instructions;
  let used = instructions === undefined ? 0 : measure(counter, instructions, input.maxInputTokens) + MESSAGE_OVERHEAD_TOKENS;
  const picked: HistoryMessage[] = [];
  for (const m of input.history) {
    if (picked.length >= input.maxHistoryMessages) break;
    if (m.status === "streaming" || m.content === "") continue;
    const remaining = input.maxInputTokens - used - MESSAGE_OVERHEAD_TOKENS;
    const first = picked.length === 0;
    const tokens = measure(counter, m.content, first ? input.maxInputTokens : remaining);
    if (!first && tokens > remaining) break;
    used += tokens + MESSAGE_OVERHEAD_TOKENS;
    picked.push(m);
  }
  picked.reverse();
  return {
    instructions,
    messages: picked.map(toModelMessage),
    inputTokens: used,
    messageIds: picked.map((m) => m.id),
  };
}

/** The tokens of text; for a text that cannot fit in limit, a number above limit without tokenizing it all. */
function measure(counter: TokenCounter, text: string, limit: number): number {
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > Math.max(limit, 0) * MAX_BYTES_PER_TOKEN) return Math.max(Math.ceil(bytes / MAX_BYTES_PER_TOKEN), limit + 1);
  return counter.count(text);
}

function toModelMessage(m: HistoryMessage): ModelMessage {
  switch (m.role) {
    case "user":
      return { role: "user", content: m.content };
    case "assistant":
      return { role: "assistant", content: m.content };
    case "system":
      return { role: "system", content: m.content };
    case "tool":
      // A tool message stored by a client has no tool call to answer in the
      // model's terms; it reaches the model as text the user side provided.
      return { role: "user", content: `[tool result]\n${m.content}` };
  }
}
