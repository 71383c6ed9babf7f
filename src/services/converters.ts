import { create } from "@bufbuild/protobuf";
import {
  FeedbackRating,
  MessageRole,
  MessageSchema,
  MessageStatus,
  ReferencesSchema,
  UsageSchema,
  type Message,
  type References,
  type Usage,
} from "../../gen/parley/v1/common_pb.js";
import { SessionSchema, SessionStatus, type Session } from "../../gen/parley/v1/session_pb.js";
import type { MessageRoleText, MessageRow, MessageStatusText, ReferencesJson, SessionRow, UsageJson } from "../db/schema.js";
import { etagOf, structOut, ts } from "./convert.js";

export const roleToProto: Record<MessageRoleText, MessageRole> = {
  user: MessageRole.USER,
  assistant: MessageRole.ASSISTANT,
  system: MessageRole.SYSTEM,
  tool: MessageRole.TOOL,
};

/** The stored role of a proto role; undefined for UNSPECIFIED or unknown values. */
export function roleFromProto(role: MessageRole): MessageRoleText | undefined {
  switch (role) {
    case MessageRole.USER:
      return "user";
    case MessageRole.ASSISTANT:
      return "assistant";
    case MessageRole.SYSTEM:
      return "system";
    case MessageRole.TOOL:
      return "tool";
    default:
      return undefined;
  }
}

export const messageStatusToProto: Record<MessageStatusText, MessageStatus> = {
  complete: MessageStatus.COMPLETE,
  streaming: MessageStatus.STREAMING,
  cancelled: MessageStatus.CANCELLED,
  failed: MessageStatus.FAILED,
  interrupted: MessageStatus.INTERRUPTED,
};

export function usageToProto(u: UsageJson | null | undefined): Usage | undefined {
  if (!u) return undefined;
  return create(UsageSchema, {
    inputTokens: BigInt(u.input_tokens),
    outputTokens: BigInt(u.output_tokens),
    totalTokens: BigInt(u.total_tokens),
  });
}

/** The proto Message of a stored row. */
export function messageToProto(row: MessageRow): Message {
  return create(MessageSchema, {
    id: row.id,
    sessionId: row.session_id,
    seq: BigInt(row.seq),
    role: roleToProto[row.role],
    content: row.content,
    status: messageStatusToProto[row.status],
    metadata: structOut(row.metadata),
    ...(row.usage ? { usage: usageToProto(row.usage) } : {}),
    ...(row.feedback
      ? {
          feedback: {
            rating:
              row.feedback.rating === "thumbs_up"
                ? FeedbackRating.THUMBS_UP
                : row.feedback.rating === "thumbs_down"
                  ? FeedbackRating.THUMBS_DOWN
                  : FeedbackRating.UNSPECIFIED,
            comment: row.feedback.comment,
            updateTime: ts(new Date(row.feedback.update_time)),
          },
        }
      : {}),
    askId: row.ask_id ?? "",
    model: row.model,
    ...(row.references ? { references: referencesToProto(row.references) } : {}),
    createTime: ts(row.create_time),
    updateTime: ts(row.update_time),
  });
}

/** The proto Session of a stored row. */
export function sessionToProto(row: SessionRow): Session {
  return create(SessionSchema, {
    id: row.id,
    agentId: row.agent_id,
    userId: row.user_id,
    name: row.name,
    metadata: structOut(row.metadata),
    state: structOut(row.state),
    status: row.status === "archived" ? SessionStatus.ARCHIVED : SessionStatus.ACTIVE,
    messageCount: BigInt(row.message_count),
    lastSeq: BigInt(row.last_seq),
    lastMessageTime: ts(row.last_message_time),
    createTime: ts(row.create_time),
    updateTime: ts(row.update_time),
    etag: etagOf(row.version),
  });
}

/** The proto References of stored references (the same records in the Ask stream and in history). */
export function referencesToProto(r: ReferencesJson): References {
  return create(ReferencesSchema, {
    chunks: r.chunks.map((c) => ({
      chunkId: c.chunk_id,
      content: c.content,
      documentId: c.document_id,
      documentName: c.document_name,
      knowledgeBaseId: c.knowledge_base_id,
      similarity: c.similarity,
      termSimilarity: c.term_similarity,
      vectorSimilarity: c.vector_similarity,
      citation: c.citation,
    })),
    docAggs: r.doc_aggs.map((a) => ({ documentId: a.document_id, documentName: a.document_name, count: a.count })),
  });
}
