import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { MessageRole, MessageSchema, MessageStatus, type Message } from "../../gen/parley/v1/common_pb.js";
import { AskEventSchema, AskSchema, AskStatus, type Ask, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import type { EventPacking } from "../bus/memory.js";
import type { AskRow, AskStatusText, JsonObject, MessageStatusText, UsageJson } from "../db/schema.js";
import { structOut, ts } from "../services/convert.js";
import { messageStatusToProto, usageToProto } from "../services/converters.js";

const askStatusToProto: Record<AskStatusText, AskStatus> = {
  running: AskStatus.RUNNING,
  completed: AskStatus.COMPLETED,
  failed: AskStatus.FAILED,
  cancelled: AskStatus.CANCELLED,
  interrupted: AskStatus.INTERRUPTED,
};

/** The proto Ask of a stored row. */
export function askToProto(row: AskRow): Ask {
  return create(AskSchema, {
    id: row.id,
    sessionId: row.session_id,
    status: askStatusToProto[row.status],
    userMessageId: row.user_message_id ?? "",
    assistantMessageId: row.assistant_message_id ?? "",
    requestId: row.request_id ?? "",
    model: row.model,
    ...(row.usage ? { usage: usageToProto(row.usage) } : {}),
    // error_code also records who cancelled a cancelled Ask; the contract
    // exposes it for failures only.
    errorCode: row.status === "failed" ? (row.error_code ?? "") : "",
    errorMessage: row.status === "failed" || row.status === "interrupted" ? (row.error_message ?? "") : "",
    createTime: ts(row.create_time),
    finishTime: ts(row.finish_time),
  });
}

/** A message of an Ask built in memory: not stored (store=false: no id, no seq), or no longer in storage. */
export function unstoredMessage(args: {
  readonly id?: string;
  readonly sessionId: string;
  readonly askId: string;
  readonly role: "user" | "assistant";
  readonly content: string;
  readonly status: MessageStatusText;
  readonly model?: string;
  readonly usage?: UsageJson | null;
  readonly metadata?: JsonObject;
  readonly time: Date;
}): Message {
  return create(MessageSchema, {
    id: args.id ?? "",
    sessionId: args.sessionId,
    role: args.role === "user" ? MessageRole.USER : MessageRole.ASSISTANT,
    content: args.content,
    status: messageStatusToProto[args.status] ?? MessageStatus.UNSPECIFIED,
    metadata: structOut(args.metadata ?? {}),
    ...(args.usage ? { usage: usageToProto(args.usage) } : {}),
    askId: args.role === "assistant" ? args.askId : "",
    model: args.model ?? "",
    createTime: ts(args.time),
    updateTime: ts(args.time),
  });
}

/** The event oneof of an AskEvent, as accepted by create(). */
export type AskEventInit = NonNullable<MessageInitShape<typeof AskEventSchema>["event"]>;

/** Builds an AskEvent. */
export function askEvent(askId: string, seq: number, event: AskEventInit): AskEvent {
  return create(AskEventSchema, { askId, seq: BigInt(seq), event });
}

/**
 * How the in-process event log keeps Ask events: a text delta (most of an
 * Ask's events) as its text alone, about 30 bytes instead of the ~250 of its
 * message objects; rebuilt with askEvent when read.
 */
export const askEventPacking: EventPacking<AskEvent> = {
  pack(askId, seq, e) {
    if (e.event.case !== "textDelta" || e.askId !== askId || e.seq !== BigInt(seq)) return undefined;
    if (e.$unknown !== undefined || e.event.value.$unknown !== undefined) return undefined;
    return e.event.value.text;
  },
  unpack: (askId, seq, text) => askEvent(askId, seq, { case: "textDelta", value: { text } }),
};

/** Estimated in-memory size of an event, for the event log's bound. */
export function eventSize(e: AskEvent): number {
  switch (e.event.case) {
    case "textDelta":
      return 64 + e.event.value.text.length * 2;
    case "started":
      return 256 + (e.event.value.userMessage?.content.length ?? 0) * 2;
    case "completed":
      return 256 + (e.event.value.message?.content.length ?? 0) * 2;
    case "cancelled":
      return 256 + (e.event.value.message?.content.length ?? 0) * 2;
    case "failed":
      return 256 + (e.event.value.assistantMessage?.content.length ?? 0) * 2 + e.event.value.message.length * 2;
    default:
      return 128;
  }
}
