import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, describe, expect, it } from "vitest";
import { MessageRole, MessageSchema, MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { describeError, formatMessage, parseChatLine, resolveApiKey } from "../../src/cli/chat.js";

describe("parseChatLine", () => {
  it.each([
    ["", { kind: "empty" }],
    ["   ", { kind: "empty" }],
    ["/exit", { kind: "exit" }],
    ["/quit", { kind: "exit" }],
    ["/EXIT", { kind: "exit" }],
    ["/help", { kind: "help" }],
    ["/history", { kind: "history", pageSize: 20 }],
    ["/history 5", { kind: "history", pageSize: 5 }],
    ["/history 5000", { kind: "history", pageSize: 1000 }],
    ["/more", { kind: "more" }],
    ["/history zero", { kind: "unknown", name: "/history zero" }],
    ["/history 0", { kind: "unknown", name: "/history 0" }],
    ["/frobnicate now", { kind: "unknown", name: "/frobnicate" }],
    ["hello there", { kind: "ask", content: "hello there" }],
    ["  keeps its spaces ", { kind: "ask", content: "  keeps its spaces " }],
    ["//exit is a message", { kind: "ask", content: "/exit is a message" }],
  ])("%j", (line, expected) => {
    expect(parseChatLine(line)).toEqual(expected);
  });
});

describe("resolveApiKey", () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  function dataDirWithKey(content?: string): string {
    const dir = mkdtempSync(join(tmpdir(), "parley-chat-"));
    dirs.push(dir);
    if (content !== undefined) writeFileSync(join(dir, "admin.key"), content);
    return dir;
  }

  it("prefers the flag, then PARLEY_API_KEY, then admin.key", () => {
    const dir = dataDirWithKey("pk_file\n");
    expect(resolveApiKey("pk_flag", { PARLEY_API_KEY: "pk_env" }, dir)).toBe("pk_flag");
    expect(resolveApiKey(undefined, { PARLEY_API_KEY: "pk_env" }, dir)).toBe("pk_env");
    expect(resolveApiKey("", {}, dir)).toBe("pk_file");
  });

  it("is undefined when there is no key anywhere", () => {
    expect(resolveApiKey(undefined, {}, dataDirWithKey())).toBeUndefined();
    expect(resolveApiKey(undefined, {}, dataDirWithKey("\n"))).toBeUndefined();
  });
});

describe("formatMessage", () => {
  it("shows seq, role, a non-final status and the content", () => {
    const m = (role: MessageRole, status: MessageStatus) =>
      create(MessageSchema, { seq: 7n, role, status, content: "partial" });
    expect(formatMessage(m(MessageRole.USER, MessageStatus.COMPLETE))).toBe("#7 you: partial");
    expect(formatMessage(m(MessageRole.ASSISTANT, MessageStatus.CANCELLED))).toBe("#7 assistant (cancelled): partial");
    expect(formatMessage(m(MessageRole.ASSISTANT, MessageStatus.STREAMING))).toBe("#7 assistant (writing…): partial");
  });
});

describe("describeError", () => {
  it("names the code", () => {
    expect(describeError(new ConnectError("no provider", Code.FailedPrecondition))).toBe("FailedPrecondition: no provider");
  });
});
