import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { FeedbackRating, MessageRole, MessageStatus, type Message } from "../../gen/parley/v1/common_pb.js";
import { MessageService, type NewMessage } from "../../gen/parley/v1/message_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";

type NewMessageInit = Partial<Pick<NewMessage, "role" | "content" | "metadata">>;

const MIB = 1024 * 1024;

/** Awaits a call that must fail and returns its ConnectError after checking code, ErrorInfo reason and (optionally) the violated field. */
async function expectError(call: Promise<unknown>, code: Code, reason: string, field?: string): Promise<ConnectError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  if (!err) throw new Error(`expected ${Code[code]} (${reason}), but the call succeeded`);
  expect(Code[err.code]).toBe(Code[code]);
  expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe(reason);
  if (field !== undefined) {
    expect(err.findDetails(BadRequestSchema)[0]?.fieldViolations.map((v) => v.field)).toContain(field);
  }
  return err;
}

function user(content: string, metadata?: NewMessage["metadata"]): NewMessageInit {
  return { role: MessageRole.USER, content, ...(metadata ? { metadata } : {}) };
}

function assistant(content: string): NewMessageInit {
  return { role: MessageRole.ASSISTANT, content };
}

const seqs = (ms: readonly Message[]) => ms.map((m) => Number(m.seq));

describe.each(backends())("MessageService on %s", (backend) => {
  let t: TestApp;
  let messages: Client<typeof MessageService>;
  let sessions: Client<typeof SessionService>;
  let agentId: string;

  beforeAll(async () => {
    t = await createTestApp({ backend });
    messages = t.client(MessageService);
    sessions = t.client(SessionService);
    const { agent } = await t.client(AgentService).createAgent({ agent: { name: "history" } });
    agentId = agent!.id;
  });
  afterAll(async () => {
    await t?.close();
  });

  async function newSession(): Promise<string> {
    const { session } = await sessions.createSession({ session: { agentId, userId: "u-1" } });
    return session!.id;
  }

  async function append(sessionId: string, ms: NewMessageInit[]): Promise<Message[]> {
    const r = await messages.appendMessages({ sessionId, messages: ms });
    return r.messages;
  }

  /** Everything a rejected request could have changed: the session rows, the messages, the idempotency records. */
  async function snapshot(): Promise<unknown> {
    const db = t.app.db;
    return {
      sessions: await db.selectFrom("sessions").selectAll().orderBy("id").execute(),
      messages: await db.selectFrom("messages").selectAll().orderBy("id").execute(),
      appends: await db.selectFrom("append_requests").selectAll().orderBy("request_id").execute(),
    };
  }

  /** Runs a call that must fail and checks that it changed nothing. */
  async function rejected(call: () => Promise<unknown>, code: Code, reason: string, field?: string) {
    const before = await snapshot();
    const err = await expectError(call(), code, reason, field);
    expect(await snapshot()).toEqual(before);
    return err;
  }

  async function setStatus(messageId: string, status: "streaming" | "complete") {
    await t.app.db.updateTable("messages").set({ status }).where("id", "=", messageId).execute();
  }

  describe("AppendMessages", () => {
    it("stores a batch in order with consecutive seq and returns the session after the append", async () => {
      const sessionId = await newSession();
      const r = await messages.appendMessages({
        sessionId,
        messages: [
          user("hello", { lang: "en", n: 1 }),
          assistant("hi there"),
          { role: MessageRole.SYSTEM, content: "note" },
          { role: MessageRole.TOOL, content: "{}" },
        ],
      });
      expect(seqs(r.messages)).toEqual([1, 2, 3, 4]);
      expect(r.messages.map((m) => m.role)).toEqual([
        MessageRole.USER,
        MessageRole.ASSISTANT,
        MessageRole.SYSTEM,
        MessageRole.TOOL,
      ]);
      expect(r.messages.every((m) => m.status === MessageStatus.COMPLETE && m.sessionId === sessionId)).toBe(true);
      expect(r.messages[0]!.metadata).toEqual({ lang: "en", n: 1 });
      expect(new Set(r.messages.map((m) => m.id)).size).toBe(4);
      expect(r.session!.id).toBe(sessionId);
      expect(r.session!.lastSeq).toBe(4n);
      expect(r.session!.messageCount).toBe(4n);
      expect(r.session!.lastMessageTime).toBeDefined();

      const next = await append(sessionId, [user("again")]);
      expect(seqs(next)).toEqual([5]);
      const { session } = await sessions.getSession({ sessionId });
      expect(session!.lastSeq).toBe(5n);
      expect(session!.messageCount).toBe(5n);
    });

    it("accepts empty content for assistant and tool messages only", async () => {
      const sessionId = await newSession();
      const ok = await append(sessionId, [assistant(""), { role: MessageRole.TOOL, content: "" }]);
      expect(ok.map((m) => m.content)).toEqual(["", ""]);
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [assistant("x"), user("")] }),
        Code.InvalidArgument,
        "REQUIRED",
        "messages[1].content",
      );
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [{ role: MessageRole.SYSTEM, content: "" }] }),
        Code.InvalidArgument,
        "REQUIRED",
        "messages[0].content",
      );
    });

    it("rejects an empty batch as InvalidArgument and more than 1,000 messages as ResourceExhausted", async () => {
      const sessionId = await newSession();
      await rejected(() => messages.appendMessages({ sessionId, messages: [] }), Code.InvalidArgument, "REQUIRED", "messages");
      const err = await rejected(
        () => messages.appendMessages({ sessionId, messages: Array.from({ length: 1001 }, (_, i) => user(`m${i}`)) }),
        Code.ResourceExhausted,
        "BATCH_TOO_LARGE",
      );
      expect(err.findDetails(ErrorInfoSchema)[0]?.metadata).toMatchObject({ field: "messages", max: "1000" });
      const full = await append(sessionId, Array.from({ length: 1000 }, (_, i) => user(`m${i}`)));
      expect(full).toHaveLength(1000);
      expect(Number(full[999]!.seq)).toBe(1000);
    });

    it("requires a role on every message and stores nothing when one lacks it", async () => {
      const sessionId = await newSession();
      const batch = [user("a"), assistant("b"), user("c"), { content: "no role" }, user("e")];
      await rejected(() => messages.appendMessages({ sessionId, messages: batch }), Code.InvalidArgument, "REQUIRED", "messages[3].role");
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [{ role: 42 as MessageRole, content: "x" }] }),
        Code.InvalidArgument,
        "INVALID_ENUM",
        "messages[0].role",
      );
    });

    it("limits content to 1 MiB of UTF-8", async () => {
      const sessionId = await newSession();
      const [m] = await append(sessionId, [user("a".repeat(MIB))]);
      expect(m!.content).toHaveLength(MIB);
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("ok"), user("a".repeat(MIB + 1))] }),
        Code.InvalidArgument,
        "TOO_LONG",
        "messages[1].content",
      );
      // Fewer than 1 Mi characters, more than 1 MiB as UTF-8.
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("é".repeat(MIB / 2 + 1))] }),
        Code.InvalidArgument,
        "TOO_LONG",
        "messages[0].content",
      );
    });

    it("limits metadata to 64 keys and 16 KiB", async () => {
      const sessionId = await newSession();
      const keys64 = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, i]));
      await append(sessionId, [user("ok", keys64)]);
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("x", { ...keys64, k64: 1 })] }),
        Code.InvalidArgument,
        "TOO_MANY_KEYS",
        "messages[0].metadata",
      );
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("x"), user("y", { big: "z".repeat(16 * 1024) })] }),
        Code.InvalidArgument,
        "TOO_LARGE",
        "messages[1].metadata",
      );
    });

    it("rejects text Postgres cannot store (U+0000) as InvalidArgument, not Internal", async () => {
      const sessionId = await newSession();
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("a\u0000b")] }),
        Code.InvalidArgument,
        "INVALID_CHARACTER",
        "messages[0].content",
      );
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("a", { deep: { list: ["x\u0000"] } })] }),
        Code.InvalidArgument,
        "INVALID_CHARACTER",
        "messages[0].metadata",
      );
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("a")], requestId: "r\u0000" }),
        Code.InvalidArgument,
        "INVALID_CHARACTER",
        "request_id",
      );
    });

    it("checks session_id, request_id and expected_last_seq", async () => {
      const sessionId = await newSession();
      const one = [user("x")];
      await rejected(() => messages.appendMessages({ sessionId: "", messages: one }), Code.InvalidArgument, "REQUIRED", "session_id");
      await rejected(() => messages.appendMessages({ sessionId: "nope", messages: one }), Code.InvalidArgument, "INVALID_ID", "session_id");
      await rejected(
        () => messages.appendMessages({ sessionId: "01890a5d-ac96-774b-bcce-b302099a8057", messages: one }),
        Code.NotFound,
        "SESSION_NOT_FOUND",
      );
      await rejected(
        () => messages.appendMessages({ sessionId, messages: one, requestId: "r".repeat(257) }),
        Code.InvalidArgument,
        "TOO_LONG",
        "request_id",
      );
      await rejected(
        () => messages.appendMessages({ sessionId, messages: one, expectedLastSeq: -1n }),
        Code.InvalidArgument,
        "OUT_OF_RANGE",
        "expected_last_seq",
      );
      await rejected(
        () => messages.appendMessages({ sessionId, messages: one, expectedLastSeq: 1n << 40n }),
        Code.InvalidArgument,
        "OUT_OF_RANGE",
        "expected_last_seq",
      );
      const r = await messages.appendMessages({ sessionId, messages: one, requestId: "r".repeat(256) });
      expect(seqs(r.messages)).toEqual([1]);
    });

    it("compare-and-swaps on expected_last_seq: ABORTED with LAST_SEQ_MISMATCH when another append came first", async () => {
      const sessionId = await newSession();
      const first = await messages.appendMessages({ sessionId, messages: [user("a")], expectedLastSeq: 0n });
      expect(first.session!.lastSeq).toBe(1n);
      const err = await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("b")], expectedLastSeq: 0n }),
        Code.Aborted,
        "LAST_SEQ_MISMATCH",
      );
      expect(err.findDetails(ErrorInfoSchema)[0]?.metadata).toMatchObject({ last_seq: "1", expected_last_seq: "0" });
      const second = await messages.appendMessages({ sessionId, messages: [user("b"), assistant("c")], expectedLastSeq: 1n });
      expect(seqs(second.messages)).toEqual([2, 3]);
    });

    it("makes a retry with the same request_id return the first call's messages and store nothing", async () => {
      const sessionId = await newSession();
      const req = { sessionId, messages: [user("q"), assistant("a")], requestId: "req-1", expectedLastSeq: 0n };
      const first = await messages.appendMessages(req);
      const before = await snapshot();
      // The retry's expected_last_seq is stale by now: it still replays instead of failing.
      const retry = await messages.appendMessages(req);
      expect(await snapshot()).toEqual(before);
      expect(retry.messages.map((m) => [m.id, m.seq])).toEqual(first.messages.map((m) => [m.id, m.seq]));
      expect(retry.session!.lastSeq).toBe(2n);
      expect(retry.session!.messageCount).toBe(2n);

      // The key is scoped to its session, and a new key appends again.
      const other = await newSession();
      const elsewhere = await messages.appendMessages({ sessionId: other, messages: [user("q")], requestId: "req-1" });
      expect(seqs(elsewhere.messages)).toEqual([1]);
      const again = await messages.appendMessages({ sessionId, messages: [user("q")], requestId: "req-2" });
      expect(seqs(again.messages)).toEqual([3]);
    });

    it("rejects a request_id reused for other messages as INVALID_ARGUMENT, storing nothing", async () => {
      const sessionId = await newSession();
      await messages.appendMessages({ sessionId, messages: [user("q")], requestId: "req-x" });
      const before = await snapshot();
      await expectError(
        messages.appendMessages({ sessionId, messages: [user("something else")], requestId: "req-x" }),
        Code.InvalidArgument,
        "REQUEST_ID_REUSED",
        "request_id",
      );
      await expectError(
        messages.appendMessages({ sessionId, messages: [user("q")], requestId: "req-x", expectedLastSeq: 1n }),
        Code.InvalidArgument,
        "REQUEST_ID_REUSED",
        "request_id",
      );
      expect(await snapshot()).toEqual(before);
    });

    it("is FAILED_PRECONDITION on an archived session until it is unarchived", async () => {
      const sessionId = await newSession();
      await append(sessionId, [user("before")]);
      await sessions.archiveSession({ sessionId });
      await rejected(
        () => messages.appendMessages({ sessionId, messages: [user("while archived")] }),
        Code.FailedPrecondition,
        "SESSION_ARCHIVED",
      );
      // Reading the history of an archived session still works.
      expect((await messages.listMessages({ sessionId })).messages).toHaveLength(1);
      await sessions.unarchiveSession({ sessionId });
      expect(seqs(await append(sessionId, [user("after")]))).toEqual([2]);
    });
  });

  describe("ListMessages", () => {
    let sessionId: string;
    beforeAll(async () => {
      sessionId = await newSession();
      await append(sessionId, Array.from({ length: 7 }, (_, i) => user(`m${i + 1}`)));
    });

    async function collect(req: { descending?: boolean; afterSeq?: bigint; beforeSeq?: bigint; pageSize: number }) {
      const pages: number[][] = [];
      let pageToken = "";
      for (let i = 0; i < 20; i++) {
        const r = await messages.listMessages({ sessionId, ...req, pageToken });
        pages.push(seqs(r.messages));
        pageToken = r.nextPageToken;
        if (!pageToken) return pages;
      }
      throw new Error("pagination did not end");
    }

    it("pages oldest first by default, with a token until the last page", async () => {
      expect(await collect({ pageSize: 3 })).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
      // A page that ends exactly at the last message has no token.
      expect(await collect({ pageSize: 7 })).toEqual([[1, 2, 3, 4, 5, 6, 7]]);
      const r = await messages.listMessages({ sessionId });
      expect(r.messages.map((m) => m.content)).toEqual(["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
      expect(r.nextPageToken).toBe("");
    });

    it("pages newest first when descending", async () => {
      expect(await collect({ pageSize: 3, descending: true })).toEqual([[7, 6, 5], [4, 3, 2], [1]]);
    });

    it("bounds the range with after_seq and before_seq in both directions", async () => {
      expect(await collect({ pageSize: 2, afterSeq: 2n, beforeSeq: 6n })).toEqual([[3, 4], [5]]);
      expect(await collect({ pageSize: 2, afterSeq: 2n, beforeSeq: 6n, descending: true })).toEqual([[5, 4], [3]]);
      expect(await collect({ pageSize: 10, afterSeq: 5n })).toEqual([[6, 7]]);
      expect(await collect({ pageSize: 10, beforeSeq: 3n, descending: true })).toEqual([[2, 1]]);
      expect(await collect({ pageSize: 10, afterSeq: 4n, beforeSeq: 5n })).toEqual([[]]);
      // Cursors beyond any stored seq are an empty range or no bound, never an error.
      expect(await collect({ pageSize: 10, afterSeq: 1n << 40n })).toEqual([[]]);
      expect(await collect({ pageSize: 10, beforeSeq: 1n << 40n, descending: true })).toEqual([[7, 6, 5, 4, 3, 2, 1]]);
    });

    it("binds page tokens to the query: altered or reused elsewhere is InvalidArgument", async () => {
      const { nextPageToken } = await messages.listMessages({ sessionId, pageSize: 2 });
      expect(nextPageToken).not.toBe("");
      // The page size may change between pages.
      const next = await messages.listMessages({ sessionId, pageSize: 3, pageToken: nextPageToken });
      expect(seqs(next.messages)).toEqual([3, 4, 5]);

      const [body, sig] = nextPageToken.split(".");
      const forged = `${Buffer.from("[0]").toString("base64url")}.${sig}`;
      for (const pageToken of [forged, `${body}.${sig}x`, "garbage", `${nextPageToken}.x`]) {
        await expectError(messages.listMessages({ sessionId, pageToken }), Code.InvalidArgument, "INVALID_PAGE_TOKEN", "page_token");
      }
      for (const other of [{ descending: true }, { afterSeq: 1n }, { beforeSeq: 7n }]) {
        await expectError(
          messages.listMessages({ sessionId, pageToken: nextPageToken, ...other }),
          Code.InvalidArgument,
          "INVALID_PAGE_TOKEN",
          "page_token",
        );
      }
      const otherSession = await newSession();
      await expectError(
        messages.listMessages({ sessionId: otherSession, pageToken: nextPageToken }),
        Code.InvalidArgument,
        "INVALID_PAGE_TOKEN",
      );
    });

    it("defaults page_size to 50, clamps it to 1,000 and rejects negative values and cursors", async () => {
      const big = await newSession();
      await append(big, Array.from({ length: 1000 }, (_, i) => user(`b${i}`)));
      await append(big, Array.from({ length: 5 }, (_, i) => user(`c${i}`)));
      const def = await messages.listMessages({ sessionId: big });
      expect(def.messages).toHaveLength(50);
      expect(def.nextPageToken).not.toBe("");
      const clamped = await messages.listMessages({ sessionId: big, pageSize: 5000 });
      expect(clamped.messages).toHaveLength(1000);
      const rest = await messages.listMessages({ sessionId: big, pageSize: 5000, pageToken: clamped.nextPageToken });
      expect(seqs(rest.messages)).toEqual([1001, 1002, 1003, 1004, 1005]);
      expect(rest.nextPageToken).toBe("");

      await expectError(messages.listMessages({ sessionId, pageSize: -1 }), Code.InvalidArgument, "INVALID_PAGE_SIZE", "page_size");
      await expectError(messages.listMessages({ sessionId, afterSeq: -1n }), Code.InvalidArgument, "OUT_OF_RANGE", "after_seq");
      await expectError(messages.listMessages({ sessionId, beforeSeq: -5n }), Code.InvalidArgument, "OUT_OF_RANGE", "before_seq");
    });

    it("is NotFound for an unknown session, empty for a session without messages", async () => {
      await expectError(
        messages.listMessages({ sessionId: "01890a5d-ac96-774b-bcce-b302099a8057" }),
        Code.NotFound,
        "SESSION_NOT_FOUND",
      );
      await expectError(messages.listMessages({ sessionId: "" }), Code.InvalidArgument, "REQUIRED", "session_id");
      await expectError(messages.listMessages({ sessionId: "x" }), Code.InvalidArgument, "INVALID_ID", "session_id");
      const empty = await newSession();
      const r = await messages.listMessages({ sessionId: empty });
      expect(r.messages).toEqual([]);
      expect(r.nextPageToken).toBe("");
    });
  });

  describe("GetMessage", () => {
    it("returns a message by id; unknown ids are NotFound, malformed ones InvalidArgument", async () => {
      const sessionId = await newSession();
      const [m] = await append(sessionId, [user("get me", { a: true })]);
      const { message } = await messages.getMessage({ messageId: m!.id });
      expect(message).toEqual(m);
      await expectError(messages.getMessage({ messageId: "01890a5d-ac96-774b-bcce-b302099a8057" }), Code.NotFound, "MESSAGE_NOT_FOUND");
      await expectError(messages.getMessage({ messageId: "" }), Code.InvalidArgument, "REQUIRED", "message_id");
      await expectError(messages.getMessage({ messageId: "123" }), Code.InvalidArgument, "INVALID_ID", "message_id");
    });
  });

  describe("UpdateMessage", () => {
    it("updates the fields named in update_mask only", async () => {
      const sessionId = await newSession();
      const [m] = await append(sessionId, [user("old", { keep: 1 })]);
      const before = (await sessions.getSession({ sessionId })).session!;

      const c = await messages.updateMessage({
        message: { id: m!.id, content: "new", metadata: { ignored: true } },
        updateMask: { paths: ["content"] },
      });
      expect(c.message!.content).toBe("new");
      expect(c.message!.metadata).toEqual({ keep: 1 });
      expect(c.message!.seq).toBe(m!.seq);

      const md = await messages.updateMessage({
        message: { id: m!.id, content: "ignored", metadata: { k: "v" } },
        updateMask: { paths: ["metadata"] },
      });
      expect(md.message!.content).toBe("new");
      expect(md.message!.metadata).toEqual({ k: "v" });

      const both = await messages.updateMessage({
        message: { id: m!.id, content: "both", metadata: {} },
        updateMask: { paths: ["*"] },
      });
      expect(both.message!.content).toBe("both");
      expect(both.message!.metadata).toEqual({});
      expect((await messages.getMessage({ messageId: m!.id })).message).toEqual(both.message);

      // The session changed through its message: a new etag, counters untouched.
      const after = (await sessions.getSession({ sessionId })).session!;
      expect(after.etag).not.toBe(before.etag);
      expect(after.messageCount).toBe(1n);
      expect(after.lastSeq).toBe(1n);
    });

    it("rejects bad masks, ids and values, changing nothing", async () => {
      const sessionId = await newSession();
      const [u, a] = await append(sessionId, [user("u"), assistant("a")]);
      const id = u!.id;
      await rejected(() => messages.updateMessage({ updateMask: { paths: ["content"] } }), Code.InvalidArgument, "REQUIRED", "message");
      await rejected(
        () => messages.updateMessage({ message: { id: "", content: "x" }, updateMask: { paths: ["content"] } }),
        Code.InvalidArgument,
        "REQUIRED",
        "message.id",
      );
      await rejected(
        () => messages.updateMessage({ message: { id: "bad", content: "x" }, updateMask: { paths: ["content"] } }),
        Code.InvalidArgument,
        "INVALID_ID",
        "message.id",
      );
      await rejected(() => messages.updateMessage({ message: { id, content: "x" } }), Code.InvalidArgument, "REQUIRED", "update_mask");
      await rejected(
        () => messages.updateMessage({ message: { id, content: "x" }, updateMask: { paths: ["content", "role"] } }),
        Code.InvalidArgument,
        "INVALID_FIELD_MASK",
        "update_mask",
      );
      await rejected(
        () => messages.updateMessage({ message: { id, content: "a".repeat(MIB + 1) }, updateMask: { paths: ["content"] } }),
        Code.InvalidArgument,
        "TOO_LONG",
        "message.content",
      );
      await rejected(
        () => messages.updateMessage({ message: { id, content: "a\u0000" }, updateMask: { paths: ["content"] } }),
        Code.InvalidArgument,
        "INVALID_CHARACTER",
        "message.content",
      );
      await rejected(
        () =>
          messages.updateMessage({
            message: { id, metadata: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, i])) },
            updateMask: { paths: ["metadata"] },
          }),
        Code.InvalidArgument,
        "TOO_MANY_KEYS",
        "message.metadata",
      );
      // Empty content: required for a user message, allowed for an assistant message.
      await rejected(
        () => messages.updateMessage({ message: { id, content: "" }, updateMask: { paths: ["content"] } }),
        Code.InvalidArgument,
        "REQUIRED",
        "message.content",
      );
      const emptied = await messages.updateMessage({ message: { id: a!.id, content: "" }, updateMask: { paths: ["content"] } });
      expect(emptied.message!.content).toBe("");
      await rejected(
        () =>
          messages.updateMessage({
            message: { id: "01890a5d-ac96-774b-bcce-b302099a8057", content: "x" },
            updateMask: { paths: ["content"] },
          }),
        Code.NotFound,
        "MESSAGE_NOT_FOUND",
      );
    });

    it("is FAILED_PRECONDITION for a message an Ask is still writing", async () => {
      const sessionId = await newSession();
      const [a] = await append(sessionId, [assistant("partial")]);
      await setStatus(a!.id, "streaming");
      await rejected(
        () => messages.updateMessage({ message: { id: a!.id, content: "x" }, updateMask: { paths: ["content"] } }),
        Code.FailedPrecondition,
        "MESSAGE_STREAMING",
      );
    });
  });

  describe("DeleteMessage", () => {
    it("deletes a message, decrements message_count and never reuses its seq", async () => {
      const sessionId = await newSession();
      const [m1, m2, m3] = await append(sessionId, [user("1"), assistant("2"), user("3")]);
      await messages.deleteMessage({ messageId: m3!.id });
      await messages.deleteMessage({ messageId: m1!.id });
      await expectError(messages.getMessage({ messageId: m3!.id }), Code.NotFound, "MESSAGE_NOT_FOUND");
      const { session } = await sessions.getSession({ sessionId });
      expect(session!.messageCount).toBe(1n);
      expect(session!.lastSeq).toBe(3n);
      expect(seqs((await messages.listMessages({ sessionId })).messages)).toEqual([Number(m2!.seq)]);
      const [m4] = await append(sessionId, [user("4")]);
      expect(m4!.seq).toBe(4n);
      await rejected(() => messages.deleteMessage({ messageId: m3!.id }), Code.NotFound, "MESSAGE_NOT_FOUND");
      await rejected(() => messages.deleteMessage({ messageId: "" }), Code.InvalidArgument, "REQUIRED", "message_id");
      await rejected(() => messages.deleteMessage({ messageId: "zzz" }), Code.InvalidArgument, "INVALID_ID", "message_id");
    });

    it("is FAILED_PRECONDITION for a message an Ask is still writing", async () => {
      const sessionId = await newSession();
      const [a] = await append(sessionId, [assistant("partial")]);
      await setStatus(a!.id, "streaming");
      await rejected(() => messages.deleteMessage({ messageId: a!.id }), Code.FailedPrecondition, "MESSAGE_STREAMING");
      await setStatus(a!.id, "complete");
      await messages.deleteMessage({ messageId: a!.id });
      expect((await sessions.getSession({ sessionId })).session!.messageCount).toBe(0n);
    });
  });

  describe("SetFeedback", () => {
    it("sets, replaces and clears the feedback of an assistant message", async () => {
      const sessionId = await newSession();
      const [, a] = await append(sessionId, [user("q"), assistant("a")]);
      const messageId = a!.id;

      const up = await messages.setFeedback({ messageId, rating: FeedbackRating.THUMBS_UP, comment: "great" });
      expect(up.message!.feedback).toMatchObject({ rating: FeedbackRating.THUMBS_UP, comment: "great" });
      expect(up.message!.feedback!.updateTime).toBeDefined();
      expect((await messages.getMessage({ messageId })).message!.feedback).toEqual(up.message!.feedback);

      const down = await messages.setFeedback({ messageId, rating: FeedbackRating.THUMBS_DOWN });
      expect(down.message!.feedback).toMatchObject({ rating: FeedbackRating.THUMBS_DOWN, comment: "" });

      const commentOnly = await messages.setFeedback({ messageId, comment: "c".repeat(4096) });
      expect(commentOnly.message!.feedback).toMatchObject({ rating: FeedbackRating.UNSPECIFIED, comment: "c".repeat(4096) });

      const cleared = await messages.setFeedback({ messageId });
      expect(cleared.message!.feedback).toBeUndefined();
      expect((await messages.getMessage({ messageId })).message!.feedback).toBeUndefined();
    });

    it("takes assistant messages only and checks rating and comment, changing nothing", async () => {
      const sessionId = await newSession();
      const [u, a] = await append(sessionId, [user("q"), assistant("a")]);
      const err = await rejected(
        () => messages.setFeedback({ messageId: u!.id, rating: FeedbackRating.THUMBS_UP }),
        Code.FailedPrecondition,
        "NOT_ASSISTANT_MESSAGE",
      );
      expect(err.findDetails(ErrorInfoSchema)[0]?.metadata).toMatchObject({ message_id: u!.id, role: "user" });
      await rejected(
        () => messages.setFeedback({ messageId: a!.id, rating: FeedbackRating.THUMBS_UP, comment: "c".repeat(4097) }),
        Code.InvalidArgument,
        "TOO_LONG",
        "comment",
      );
      await rejected(
        () => messages.setFeedback({ messageId: a!.id, comment: "bad\u0000" }),
        Code.InvalidArgument,
        "INVALID_CHARACTER",
        "comment",
      );
      await rejected(
        () => messages.setFeedback({ messageId: a!.id, rating: 9 as FeedbackRating }),
        Code.InvalidArgument,
        "INVALID_ENUM",
        "rating",
      );
      await rejected(
        () => messages.setFeedback({ messageId: "01890a5d-ac96-774b-bcce-b302099a8057", rating: FeedbackRating.THUMBS_UP }),
        Code.NotFound,
        "MESSAGE_NOT_FOUND",
      );
      await rejected(() => messages.setFeedback({ messageId: "" }), Code.InvalidArgument, "REQUIRED", "message_id");
    });
  });
});
