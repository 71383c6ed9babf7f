import { extname } from "node:path";
import { convert as htmlToText } from "html-to-text";
import { extractText, getDocumentProxy } from "unpdf";

/** The media types a document can be parsed as. */
export const SUPPORTED_MIME_TYPES = ["text/plain", "text/markdown", "text/html", "application/pdf"] as const;
export type SupportedMimeType = (typeof SUPPORTED_MIME_TYPES)[number];

const BY_EXTENSION: Record<string, SupportedMimeType> = {
  ".txt": "text/plain",
  ".text": "text/plain",
  ".md": "text/markdown",
  ".markdown": "text/markdown",
  ".mdx": "text/markdown",
  ".html": "text/html",
  ".htm": "text/html",
  ".xhtml": "text/html",
  ".pdf": "application/pdf",
};

const ALIASES: Record<string, SupportedMimeType> = {
  "text/x-markdown": "text/markdown",
  "application/xhtml+xml": "text/html",
  "application/x-pdf": "application/pdf",
};

/** Why a document cannot be parsed: an unsupported type, or content that is not what its type says. */
export class DocumentParseError extends Error {
  override name = "DocumentParseError";
  constructor(
    message: string,
    readonly reason: "UNSUPPORTED_MEDIA_TYPE" | "MALFORMED_DOCUMENT" | "EMPTY_DOCUMENT",
  ) {
    super(message);
  }
}

/** A document's content as received: text (plain or Markdown) or a file's bytes. */
export type DocumentSource = { readonly kind: "text"; readonly text: string } | { readonly kind: "bytes"; readonly bytes: Uint8Array };

/**
 * The media type to parse a document as: the given one (parameters such as
 * `; charset=utf-8` ignored), else from the name's extension, else sniffed
 * from the content. Throws DocumentParseError for anything else.
 */
export function resolveMimeType(given: string, name: string, source: DocumentSource): SupportedMimeType {
  if (given.trim() !== "") {
    const base = given.split(";")[0]!.trim().toLowerCase();
    const t = (SUPPORTED_MIME_TYPES as readonly string[]).includes(base) ? (base as SupportedMimeType) : ALIASES[base];
    if (!t) throw new DocumentParseError(`media type "${base}" is not supported; use one of ${SUPPORTED_MIME_TYPES.join(", ")}`, "UNSUPPORTED_MEDIA_TYPE");
    if (source.kind === "text" && t !== "text/plain" && t !== "text/markdown" && t !== "text/html") {
      throw new DocumentParseError(`text cannot be parsed as ${t}; send the file's bytes in content`, "UNSUPPORTED_MEDIA_TYPE");
    }
    return t;
  }
  const ext = extname(name).toLowerCase();
  if (ext !== "") {
    const t = BY_EXTENSION[ext];
    if (t && !(source.kind === "text" && t === "application/pdf")) return t;
    if (!t && source.kind === "bytes") {
      throw new DocumentParseError(`files ending in "${ext}" are not supported; use text, Markdown, HTML or PDF`, "UNSUPPORTED_MEDIA_TYPE");
    }
  }
  if (source.kind === "text") return "text/markdown";
  return sniff(source.bytes);
}

function sniff(bytes: Uint8Array): SupportedMimeType {
  const head = Buffer.from(bytes.subarray(0, 1024));
  if (head.subarray(0, 5).toString("latin1") === "%PDF-") return "application/pdf";
  const text = head.toString("utf8");
  if (!isProbablyText(bytes)) throw new DocumentParseError("the content is binary and not a PDF; use text, Markdown, HTML or PDF", "UNSUPPORTED_MEDIA_TYPE");
  if (/^\s*(<!doctype html|<html[\s>]|<head[\s>]|<body[\s>])/i.test(text)) return "text/html";
  return "text/markdown";
}

/** True when the bytes decode as UTF-8 text without control characters other than whitespace. */
function isProbablyText(bytes: Uint8Array): boolean {
  const sample = bytes.subarray(0, 64 * 1024);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(sample);
  } catch {
    // A multi-byte character cut at the sample's end is still text.
    if (sample.length < bytes.length) {
      text = new TextDecoder("utf-8").decode(sample);
      if ((text.match(/\uFFFD/g)?.length ?? 0) > 1) return false;
    } else return false;
  }
  return !/[\u0000-\u0008\u000E-\u001F]/.test(text);
}

function decodeUtf8(bytes: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch {
    throw new DocumentParseError("the content is not valid UTF-8 text", "MALFORMED_DOCUMENT");
  }
}

/** A parsed document: its text and whether Markdown structure (headings) can guide chunking. */
export interface ParsedDocument {
  readonly text: string;
  readonly markdown: boolean;
}

/** Extracts the text of a document of a supported type; throws DocumentParseError when it is malformed or has no text. */
export async function parseDocument(mimeType: SupportedMimeType, source: DocumentSource): Promise<ParsedDocument> {
  let parsed: ParsedDocument;
  switch (mimeType) {
    case "text/plain":
    case "text/markdown": {
      const text = source.kind === "text" ? source.text : decodeUtf8(source.bytes);
      if (source.kind === "bytes" && /[\u0000-\u0008\u000E-\u001F]/.test(text)) {
        throw new DocumentParseError("the content has control characters; it is not a text file", "MALFORMED_DOCUMENT");
      }
      parsed = { text: text.replace(/^\uFEFF/, ""), markdown: mimeType === "text/markdown" };
      break;
    }
    case "text/html": {
      const html = source.kind === "text" ? source.text : decodeUtf8(source.bytes);
      parsed = { text: htmlText(html), markdown: true };
      break;
    }
    case "application/pdf": {
      if (source.kind !== "bytes") throw new DocumentParseError("a PDF must be sent as bytes", "UNSUPPORTED_MEDIA_TYPE");
      parsed = { text: await pdfText(source.bytes), markdown: false };
      break;
    }
  }
  // Postgres text cannot hold U+0000.
  const text = parsed.text.replace(/\u0000/g, "");
  if (text.trim() === "") throw new DocumentParseError("the document has no text", "EMPTY_DOCUMENT");
  return { ...parsed, text };
}

/** HTML as Markdown-like text: headings become `#` lines so chunking keeps sections together. */
function htmlText(html: string): string {
  const heading = (level: number) => ({
    selector: `h${level}`,
    format: "blockString" as const,
    options: { leadingLineBreaks: 2, trailingLineBreaks: 2 },
  });
  return htmlToText(html, {
    wordwrap: false,
    selectors: [
      { selector: "a", options: { ignoreHref: true } },
      { selector: "img", format: "skip" },
      { selector: "script", format: "skip" },
      { selector: "style", format: "skip" },
      { selector: "nav", format: "skip" },
      ...[1, 2, 3, 4, 5, 6].map(heading),
    ],
    formatters: {
      // Writes the heading's text after `#`s; html-to-text would upper-case it.
      blockString: (elem, walk, builder, options) => {
        const level = Number(String((elem as { name?: string }).name ?? "h1").slice(1)) || 1;
        builder.openBlock({ leadingLineBreaks: options.leadingLineBreaks ?? 2 });
        builder.addInline(`${"#".repeat(level)} `);
        walk(elem.children, builder);
        builder.closeBlock({ trailingLineBreaks: options.trailingLineBreaks ?? 2 });
      },
    },
  });
}

async function pdfText(bytes: Uint8Array): Promise<string> {
  try {
    // pdf.js takes ownership of (and detaches) the buffer it is given.
    const pdf = await getDocumentProxy(new Uint8Array(bytes), { verbosity: 0 });
    try {
      const { text } = await extractText(pdf, { mergePages: false });
      return text.map((page) => page.trim()).filter(Boolean).join("\n\n");
    } finally {
      // Frees pdf.js's worker-side state; the bundled types leave it out.
      await (pdf as unknown as { destroy?: () => Promise<void> }).destroy?.();
    }
  } catch (err) {
    if (err instanceof DocumentParseError) throw err;
    const why = err instanceof Error ? err.message : String(err);
    throw new DocumentParseError(`the PDF cannot be read: ${why}`, "MALFORMED_DOCUMENT");
  }
}
