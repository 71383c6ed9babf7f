import { describe, expect, it } from "vitest";
import {
  buildContext,
  createTokenCounter,
  MESSAGE_OVERHEAD_TOKENS,
  type HistoryMessage,
  type TokenCounter,
} from "../../src/ask/context.js";

/** One token per word: budgets in tests are easy to compute. */
const words: TokenCounter = { count: (t) => t.split(/\s+/).filter(Boolean).length };

let n = 0;
function msg(role: HistoryMessage["role"], content: string, status: HistoryMessage["status"] = "complete"): HistoryMessage {
  return { id: `m${++n}`, role, content, status };
}

/** History as lastMessages returns it: newest first. */
const newestFirst = (...oldestFirst: HistoryMessage[]) => [...oldestFirst].reverse();

describe("buildContext", () => {
  it("sends the instructions and the last max_history_messages messages, oldest first", () => {
    const h = [msg("user", "a"), msg("assistant", "b"), msg("user", "c"), msg("assistant", "d"), msg("user", "e")];
    const ctx = buildContext(
      { instructions: "Be brief.", history: newestFirst(...h), maxHistoryMessages: 3, maxInputTokens: 1000 },
      words,
    );
    expect(ctx.instructions).toBe("Be brief.");
    expect(ctx.messages).toEqual([
      { role: "user", content: "c" },
      { role: "assistant", content: "d" },
      { role: "user", content: "e" },
    ]);
    expect(ctx.messageIds).toEqual([h[2]!.id, h[3]!.id, h[4]!.id]);
    expect(ctx.inputTokens).toBe(2 + 3 + 4 * MESSAGE_OVERHEAD_TOKENS);
  });

  it("drops the oldest messages that do not fit the token budget and never skips over one to take an older one", () => {
    const old = msg("user", "one two");
    const big = msg("assistant", "w ".repeat(50));
    const recent = msg("user", "three four five");
    const answer = msg("assistant", "six");
    const question = msg("user", "seven eight");
    // instructions 2 + 4 overhead = 6; question 2+4 → 12; answer 1+4 → 17; recent 3+4 → 24; big 50+4 → 78 (over 40).
    const ctx = buildContext(
      {
        instructions: "be kind",
        history: newestFirst(old, big, recent, answer, question),
        maxHistoryMessages: 50,
        maxInputTokens: 40,
      },
      words,
    );
    expect(ctx.messageIds).toEqual([recent.id, answer.id, question.id]);
    expect(ctx.inputTokens).toBe(24);
    expect(ctx.inputTokens).toBeLessThanOrEqual(40);
  });

  it("fills the budget exactly", () => {
    const a = msg("user", "x y");
    const b = msg("assistant", "z");
    const ctx = buildContext(
      { instructions: "", history: newestFirst(a, b), maxHistoryMessages: 50, maxInputTokens: 2 + 1 + 2 * MESSAGE_OVERHEAD_TOKENS },
      words,
    );
    expect(ctx.messageIds).toEqual([a.id, b.id]);
    const tighter = buildContext(
      { instructions: "", history: newestFirst(a, b), maxHistoryMessages: 50, maxInputTokens: 2 + 1 + 2 * MESSAGE_OVERHEAD_TOKENS - 1 },
      words,
    );
    expect(tighter.messageIds).toEqual([b.id]);
  });

  it("always sends the newest message (the question), even when it alone exceeds the budget", () => {
    const q = msg("user", "w ".repeat(100));
    const ctx = buildContext(
      { instructions: "", history: newestFirst(msg("assistant", "older"), q), maxHistoryMessages: 50, maxInputTokens: 10 },
      words,
    );
    expect(ctx.messageIds).toEqual([q.id]);
  });

  it("skips the STREAMING placeholder and empty messages, keeps cancelled, failed and interrupted partial answers", () => {
    const u1 = msg("user", "first");
    const cancelled = msg("assistant", "cut", "cancelled");
    const u2 = msg("user", "second");
    const emptyFailed = msg("assistant", "", "failed");
    const u3 = msg("user", "third");
    const interrupted = msg("assistant", "half", "interrupted");
    const question = msg("user", "now");
    const placeholder = msg("assistant", "", "streaming");
    const ctx = buildContext(
      {
        instructions: "",
        history: newestFirst(u1, cancelled, u2, emptyFailed, u3, interrupted, question, placeholder),
        maxHistoryMessages: 50,
        maxInputTokens: 1000,
      },
      words,
    );
    expect(ctx.messageIds).toEqual([u1.id, cancelled.id, u2.id, u3.id, interrupted.id, question.id]);
    expect(ctx.instructions).toBeUndefined();
  });

  it("counts max_history_messages over the messages sent, not over skipped rows", () => {
    const a = msg("user", "a");
    const b = msg("assistant", "b");
    const q = msg("user", "q");
    const placeholder = msg("assistant", "", "streaming");
    const ctx = buildContext(
      { instructions: "", history: newestFirst(a, b, q, placeholder), maxHistoryMessages: 2, maxInputTokens: 1000 },
      words,
    );
    expect(ctx.messageIds).toEqual([b.id, q.id]);
  });

  it("maps system messages to system and tool results to user text", () => {
    const ctx = buildContext(
      {
        instructions: "",
        history: newestFirst(msg("system", "note"), msg("tool", "42"), msg("user", "q")),
        maxHistoryMessages: 50,
        maxInputTokens: 1000,
      },
      words,
    );
    expect(ctx.messages).toEqual([
      { role: "system", content: "note" },
      { role: "user", content: "[tool result]\n42" },
      { role: "user", content: "q" },
    ]);
  });
});

describe("createTokenCounter (o200k_base)", () => {
  const counter = createTokenCounter();

  it("counts with the real tokenizer", () => {
    expect(counter.count("")).toBe(0);
    expect(counter.count("hello")).toBe(1);
    const long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    const tokens = counter.count(long);
    expect(tokens).toBeGreaterThan(100);
    expect(tokens).toBeLessThan(long.length / 2);
  });

  it("treats special-token text typed by a user as ordinary text", () => {
    expect(counter.count("<|endoftext|>")).toBeGreaterThan(1);
  });

  it("budgets real text: a turn with the real counter stays within max_input_tokens", () => {
    const history = newestFirst(
      ...Array.from({ length: 40 }, (_, i) => msg(i % 2 ? "assistant" : "user", `message number ${i} `.repeat(30))),
    );
    const ctx = buildContext({ instructions: "You are helpful.", history, maxHistoryMessages: 50, maxInputTokens: 1000 }, counter);
    expect(ctx.messages.length).toBeGreaterThan(1);
    expect(ctx.messages.length).toBeLessThan(40);
    expect(ctx.inputTokens).toBeLessThanOrEqual(1000);
    // The next older message would not have fitted.
    const nextOlder = history[ctx.messages.length]!;
    expect(ctx.inputTokens + counter.count(nextOlder.content) + MESSAGE_OVERHEAD_TOKENS).toBeGreaterThan(1000);
  });
});
