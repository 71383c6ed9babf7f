import { create } from "@bufbuild/protobuf";
import { fingerprint } from "../fingerprint.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Kysely, Transaction } from "kysely";
import { FeedbackRating, MessageRole } from "../../gen/parley/v1/common_pb.js";
import {
  AppendMessagesResponseSchema,
  DeleteMessageResponseSchema,
  GetMessageResponseSchema,
  ListMessagesResponseSchema,
  SetFeedbackResponseSchema,
  UpdateMessageResponseSchema,
  type MessageService,
} from "../../gen/parley/v1/message_pb.js";
import type { ServiceDeps } from "../app.js";
import { callerOf } from "../auth/caller.js";
import type { Database, FeedbackJson, JsonObject, MessageRow, SessionRow } from "../db/schema.js";
import { failedPrecondition, invalidArgument, notFound } from "../errors.js";
import { requireId } from "../ids.js";
import { pageSize } from "../pagination.js";
import {
  appendMessages,
  deleteMessage,
  findAppendRequest,
  getMessage,
  getMessagesByIds,
  isDuplicateAppendRequest,
  listMessages,
  setFeedback,
  updateMessage,
  type MessageInput,
} from "../repos/messages.js";
import { findSession } from "../repos/sessions.js";
import { updateState } from "../repos/state.js";
import { isEmptyDelta } from "../state/scopes.js";
import { structIn } from "./convert.js";
import { messageToProto, roleFromProto, sessionToProto } from "./converters.js";
import { checkBatch, checkContent, checkJsonNoNul, checkMetadata, checkNoNul, checkText, LIMITS } from "./limits.js";
import { stateDeltaIn } from "./state-service.js";

/** Default and maximum page_size of ListMessages (message.proto). */
export const MESSAGES_PAGE_SIZE = { default: 50, max: 1000 } as const;

/** seq is a Postgres integer: no stored seq is larger, so larger cursors are clamped rather than sent as out-of-range parameters. */
const SEQ_MAX = 2_147_483_647;

/** The Message Service: history reads with a seq cursor, appends from clients that run their own model, edits and feedback. */
export function createMessageService(deps: ServiceDeps): ServiceImpl<typeof MessageService> {
  const { db, pageTokens } = deps;

  return {
    async listMessages(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const sessionId = requireId("session_id", req.sessionId);
      const after = nonNegative("after_seq", req.afterSeq);
      const before = nonNegative("before_seq", req.beforeSeq);
      const size = pageSize(req.pageSize, MESSAGES_PAGE_SIZE.default, MESSAGES_PAGE_SIZE.max);
      const query = JSON.stringify(["parley.v1.MessageService/ListMessages", sessionId, after, before, req.descending]);

      let lower = after > 0 ? after : undefined;
      let upper = before > 0 ? before : undefined;
      if (req.pageToken !== "") {
        const keyset = pageTokens.decode(query, req.pageToken);
        const seq = keyset[0];
        if (keyset.length !== 1 || typeof seq !== "number" || !Number.isInteger(seq) || seq < 0) {
          throw invalidArgument("page_token", "is not a page token of this query", "INVALID_PAGE_TOKEN");
        }
        if (req.descending) upper = upper === undefined ? seq : Math.min(upper, seq);
        else lower = Math.max(lower ?? 0, seq);
      }
      if (upper !== undefined && upper > SEQ_MAX) upper = undefined;
      if (lower !== undefined && lower > SEQ_MAX) lower = SEQ_MAX;

      // One more row than the page tells whether a next page exists without counting.
      const rows = await listMessages(db, tenantId, sessionId, {
        ...(lower !== undefined ? { afterSeq: lower } : {}),
        ...(upper !== undefined ? { beforeSeq: upper } : {}),
        descending: req.descending,
        limit: size + 1,
      });
      // Rows prove the session exists; only an empty page needs the (primary key) lookup.
      if (rows.length === 0 && !(await findSession(db, tenantId, sessionId))) throw notFound("session", sessionId);
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      return create(ListMessagesResponseSchema, {
        messages: page.map(messageToProto),
        nextPageToken: rows.length > size && last ? pageTokens.encode(query, [last.seq]) : "",
      });
    },

    async getMessage(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const messageId = requireId("message_id", req.messageId);
      const row = await getMessage(db, tenantId, messageId);
      if (!row) throw notFound("message", messageId);
      return create(GetMessageResponseSchema, { message: messageToProto(row) });
    },

    async appendMessages(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const sessionId = requireId("session_id", req.sessionId);
      checkBatch("messages", req.messages.length, LIMITS.appendBatch);
      const inputs: MessageInput[] = req.messages.map((m, i) => {
        const field = `messages[${i}]`;
        const role = roleFromProto(m.role);
        if (!role) {
          throw m.role === MessageRole.UNSPECIFIED
            ? invalidArgument(`${field}.role`, "is required", "REQUIRED")
            : invalidArgument(`${field}.role`, "must be USER, ASSISTANT, SYSTEM or TOOL", "INVALID_ENUM");
        }
        checkContent(`${field}.content`, m.content, role === "assistant" || role === "tool");
        checkNoNul(`${field}.content`, m.content);
        const metadata = structIn(m.metadata);
        checkMetadata(`${field}.metadata`, metadata);
        checkJsonNoNul(`${field}.metadata`, metadata);
        return { role, content: m.content, metadata };
      });
      let expectedLastSeq: number | undefined;
      if (req.expectedLastSeq !== undefined) {
        if (req.expectedLastSeq < 0n) throw invalidArgument("expected_last_seq", "must not be negative", "OUT_OF_RANGE");
        if (req.expectedLastSeq > BigInt(SEQ_MAX)) {
          throw invalidArgument("expected_last_seq", `exceeds the largest seq, ${SEQ_MAX}`, "OUT_OF_RANGE");
        }
        expectedLastSeq = Number(req.expectedLastSeq);
      }
      const requestId = req.requestId;
      checkText("request_id", requestId, LIMITS.requestIdChars);
      checkNoNul("request_id", requestId);
      const stateDelta = stateDeltaIn("state_delta", req.stateDelta, true);

      const respond = (r: { session: SessionRow; messages: MessageRow[] }) =>
        create(AppendMessagesResponseSchema, { messages: r.messages.map(messageToProto), session: sessionToProto(r.session) });
      // Only a request_id's record (and its replay check) needs the request's fingerprint.
      const requestHash = requestId === "" ? "" : fingerprint([inputs, expectedLastSeq ?? null, ...(isEmptyDelta(stateDelta) ? [] : [stateDelta])]);
      const replay = async (
        q: Kysely<Database> | Transaction<Database>,
        prior: { messageIds: readonly string[]; requestHash: string },
      ) => {
        if (prior.requestHash !== requestHash) {
          throw invalidArgument("request_id", "was already used in this session for other messages", "REQUEST_ID_REUSED");
        }
        const ids = prior.messageIds;
        const session = await findSession(q, tenantId, sessionId);
        if (!session) throw notFound("session", sessionId);
        return { session, messages: await getMessagesByIds(q, tenantId, sessionId, ids) };
      };

      // A plain append is one statement (no transaction); a state delta must
      // commit with the messages, so that path runs both in one transaction.
      const append = async (q: Kysely<Database> | Transaction<Database>) => {
        // The record is checked before the CAS: a retry of a successful
        // conditional append must replay, not fail on the seq it moved.
        if (requestId !== "") {
          const prior = await findAppendRequest(q, tenantId, sessionId, requestId);
          if (prior) return replay(q, prior);
        }
        return appendMessages(q, tenantId, sessionId, inputs, {
          ...(expectedLastSeq !== undefined ? { expectedLastSeq } : {}),
          ...(requestId !== "" ? { record: { requestId, requestHash } } : {}),
        });
      };
      try {
        if (isEmptyDelta(stateDelta)) return respond(await append(db));
        return respond(
          await db.transaction().execute(async (tx) => {
            // First, so the returned session shows it.
            await updateState(tx, tenantId, sessionId, stateDelta, { field: "state_delta" });
            return append(tx);
          }),
        );
      } catch (err) {
        // An identical request committed while this one waited for the session
        // row lock: this one stored nothing, and answers with the first one's messages.
        if (requestId !== "" && isDuplicateAppendRequest(err)) {
          const prior = await findAppendRequest(db, tenantId, sessionId, requestId);
          if (prior) return respond(await replay(db, prior));
        }
        throw err;
      }
    },

    async updateMessage(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const m = req.message;
      if (!m) throw invalidArgument("message", "is required", "REQUIRED");
      const messageId = requireId("message.id", m.id);
      const paths = req.updateMask?.paths ?? [];
      if (paths.length === 0) throw invalidArgument("update_mask", "is required: content, metadata or *", "REQUIRED");
      let content = false;
      let metadata = false;
      for (const p of paths) {
        if (p === "*") content = metadata = true;
        else if (p === "content") content = true;
        else if (p === "metadata") metadata = true;
        else throw invalidArgument("update_mask", `"${p}" cannot be updated; use content, metadata or *`, "INVALID_FIELD_MASK");
      }
      const patch: { content?: string; metadata?: JsonObject } = {};
      if (content) {
        checkContent("message.content", m.content, true);
        checkNoNul("message.content", m.content);
        patch.content = m.content;
      }
      if (metadata) {
        const value = structIn(m.metadata);
        checkMetadata("message.metadata", value);
        checkJsonNoNul("message.metadata", value);
        patch.metadata = value;
      }
      const row = await db.transaction().execute((tx) =>
        updateMessage(tx, tenantId, messageId, patch, (current) => {
          // Same rule as on append: only assistant and tool messages may be empty.
          if (patch.content === "" && current.role !== "assistant" && current.role !== "tool") {
            throw invalidArgument("message.content", "is required", "REQUIRED");
          }
        }),
      );
      return create(UpdateMessageResponseSchema, { message: messageToProto(row) });
    },

    async deleteMessage(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const messageId = requireId("message_id", req.messageId);
      await db.transaction().execute((tx) => deleteMessage(tx, tenantId, messageId));
      return create(DeleteMessageResponseSchema, {});
    },

    async setFeedback(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const messageId = requireId("message_id", req.messageId);
      let rating: FeedbackJson["rating"];
      switch (req.rating) {
        case FeedbackRating.UNSPECIFIED:
          rating = null;
          break;
        case FeedbackRating.THUMBS_UP:
          rating = "thumbs_up";
          break;
        case FeedbackRating.THUMBS_DOWN:
          rating = "thumbs_down";
          break;
        default:
          throw invalidArgument("rating", "must be THUMBS_UP, THUMBS_DOWN or unspecified", "INVALID_ENUM");
      }
      checkText("comment", req.comment, LIMITS.commentChars);
      checkNoNul("comment", req.comment);
      const feedback = rating === null && req.comment === "" ? null : { rating, comment: req.comment };
      const row = await db.transaction().execute((tx) =>
        setFeedback(tx, tenantId, messageId, feedback, (current) => {
          if (current.role !== "assistant") {
            throw failedPrecondition(
              `message "${messageId}" is a ${current.role} message; feedback is for assistant messages`,
              "NOT_ASSISTANT_MESSAGE",
              { message_id: messageId, role: current.role },
            );
          }
        }),
      );
      return create(SetFeedbackResponseSchema, { message: messageToProto(row) });
    },
  };
}

/** An int64 cursor field that must not be negative, as a number (values beyond seq's range are clamped by the caller). */
function nonNegative(field: string, value: bigint): number {
  if (value < 0n) throw invalidArgument(field, "must not be negative", "OUT_OF_RANGE");
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}

