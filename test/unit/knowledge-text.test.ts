import { describe, expect, it } from "vitest";
import { extractiveAnswer } from "../../src/ask/models/builtin-extractive.js";
import { chunkDocument, o200k } from "../../src/knowledge/chunk.js";
import { DocumentParseError, parseDocument, resolveMimeType } from "../../src/knowledge/parse.js";

const tokens = (s: string) => o200k().encode(s).length;

describe("chunkDocument", () => {
  it("keeps every chunk within the size, repeats up to `overlap` tokens of the previous chunk, and loses no text", async () => {
    const text = Array.from({ length: 60 }, (_, i) => `Sentence number ${i} says something about item ${i}.`).join(" ");
    const chunks = await chunkDocument(text, { size: 64, overlap: 16, markdown: false });
    expect(chunks.length).toBeGreaterThan(3);
    for (const c of chunks) {
      expect(c.tokens).toBeLessThanOrEqual(64);
      expect(c.tokens).toBe(tokens(c.content));
    }
    for (let i = 1; i < chunks.length; i++) {
      const prevTail = chunks[i - 1]!.content.slice(-20);
      // The overlap: the start of a chunk repeats text from the end of the one before.
      expect(chunks[i]!.content.includes(prevTail) || chunks[i - 1]!.content.includes(chunks[i]!.content.slice(0, 20))).toBe(true);
    }
    for (let i = 0; i < 60; i++) expect(chunks.some((c) => c.content.includes(`Sentence number ${i} `))).toBe(true);
  });

  it("starts a chunk at each top-level section, keeps a title with the first section and never carries overlap across sections", async () => {
    const md = "# Title\n\n## One\n\nAlpha text.\n\n## Two\n\nBeta text.\n\n### Two point one\n\nGamma text.";
    const chunks = await chunkDocument(md, { size: 512, overlap: 64, markdown: true });
    expect(chunks.map((c) => c.content)).toEqual(["# Title\n\n## One\n\nAlpha text.", "## Two\n\nBeta text.\n\n### Two point one\n\nGamma text."]);
  });

  it("splits a paragraph larger than a chunk at sentences, and a sentence larger than a chunk at tokens", async () => {
    const long = "word ".repeat(500).trim();
    const chunks = await chunkDocument(long, { size: 100, overlap: 0, markdown: false });
    expect(chunks.length).toBeGreaterThanOrEqual(5);
    for (const c of chunks) expect(c.tokens).toBeLessThanOrEqual(100);
  });
});

describe("parse", () => {
  const bytes = (s: string) => ({ kind: "bytes" as const, bytes: new TextEncoder().encode(s) });
  it("resolves the media type from mime_type, then the extension, then the content", () => {
    expect(resolveMimeType("text/markdown; charset=utf-8", "x", bytes("a"))).toBe("text/markdown");
    expect(resolveMimeType("", "page.HTM", bytes("a"))).toBe("text/html");
    expect(resolveMimeType("", "file", bytes("%PDF-1.7\n"))).toBe("application/pdf");
    expect(resolveMimeType("", "file", bytes("<!DOCTYPE html><p>x"))).toBe("text/html");
    expect(resolveMimeType("", "notes", { kind: "text", text: "# hi" })).toBe("text/markdown");
    expect(() => resolveMimeType("image/png", "x.png", bytes("a"))).toThrow(DocumentParseError);
    expect(() => resolveMimeType("", "x.xlsx", bytes("a"))).toThrow(DocumentParseError);
    expect(() => resolveMimeType("application/pdf", "x", { kind: "text", text: "a" })).toThrow(DocumentParseError);
  });

  it("turns HTML headings into Markdown headings and drops scripts", async () => {
    const parsed = await parseDocument("text/html", bytes("<h2>Setup</h2><p>Run <code>make</code>.</p><script>alert(1)</script>"));
    expect(parsed.text).toContain("## Setup");
    expect(parsed.text).toContain("Run make.");
    expect(parsed.text).not.toContain("alert");
  });

  it("rejects invalid UTF-8 and text with control characters as MALFORMED_DOCUMENT", async () => {
    const reasons: string[] = [];
    for (const b of [new Uint8Array([0xff, 0xfe, 0x41]), new TextEncoder().encode("a\u0001b")]) {
      await parseDocument("text/plain", { kind: "bytes", bytes: b }).catch((e: DocumentParseError) => reasons.push(e.reason));
    }
    expect(reasons).toEqual(["MALFORMED_DOCUMENT", "MALFORMED_DOCUMENT"]);
  });
});

describe("extractiveAnswer", () => {
  const passages = [
    { citation: 1, content: "# Boilers\n\nThe boiler burns wood pellets. It must be cleaned every 14 days.", documentName: "a.pdf" },
    { citation: 2, content: "Roof windows open above 27 degrees.", documentName: "b.md" },
  ];
  it("quotes the most relevant sentences with their citations", () => {
    const a = extractiveAnswer("How often is the boiler cleaned?", { passages, memories: "", cite: true, hasKnowledge: true });
    expect(a).toContain("It must be cleaned every 14 days. [1]");
    expect(a).not.toContain("[2]");
  });
  it("leaves citations out when cite is false, and uses memories", () => {
    const a = extractiveAnswer("which language does the user speak?", {
      passages: [],
      memories: "Known facts:\n- The user speaks Portuguese",
      cite: false,
      hasKnowledge: false,
    });
    expect(a).toBe("The user speaks Portuguese");
  });
  it("says plainly when nothing relevant was found", () => {
    const a = extractiveAnswer("Who painted the Mona Lisa?", { passages, memories: "", cite: true, hasKnowledge: true });
    expect(a).toMatch(/nothing relevant/);
    expect(a).toContain("PARLEY_DEFAULT_MODEL");
  });
});
