import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { MemoryHitSchema, MemorySchema, MemoryType, type Memory, type MemoryHit, type MemoryService } from "../../gen/parley/v1/memory_pb.js";
import type { ServiceDeps } from "../app.js";
import { memoryContext, type MemorySearcher } from "../ask/memory.js";
import { callerOf } from "../auth/caller.js";
import type { MemoryTypeText } from "../db/schema.js";
import { invalidArgument, notFound } from "../errors.js";
import { newId, requireId } from "../ids.js";
import { pageSize } from "../pagination.js";
import { clearMemories, deleteMemory, insertMemory, listMemories, type MemoryFields, type MemoryHitRow } from "../repos/memories.js";
import { findSession } from "../repos/sessions.js";
import { structIn, structOut, ts } from "./convert.js";
import { checkAll, checkMetadata, checkText, LIMITS } from "./limits.js";

/** Documented limits of MemoryService (memory.proto). */
export const MEMORY_LIMITS = {
  contentChars: 16_384,
  queryChars: 4096,
  searchLimit: { default: 10, max: 100 },
  contextItems: { default: 5, max: 100 },
} as const;

const CURSOR_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

/** The proto Memory of a stored row. */
export function memoryToProto(row: MemoryFields): Memory {
  return create(MemorySchema, {
    id: row.id,
    type: row.type === "short" ? MemoryType.SHORT : MemoryType.LONG,
    userId: row.user_id,
    sessionId: row.session_id ?? "",
    content: row.content,
    quality: row.quality,
    metadata: structOut(row.metadata),
    createTime: ts(row.create_time),
  });
}

function hitToProto(h: MemoryHitRow): MemoryHit {
  return create(MemoryHitSchema, { memory: memoryToProto(h.memory), similarity: h.similarity });
}

/** A type filter: unspecified is both; unknown values are InvalidArgument. */
function typeFilter(field: string, t: MemoryType): MemoryTypeText | undefined {
  switch (t) {
    case MemoryType.UNSPECIFIED:
      return undefined;
    case MemoryType.SHORT:
      return "short";
    case MemoryType.LONG:
      return "long";
    default:
      throw invalidArgument(field, `unknown memory type ${t}`, "INVALID_ENUM");
  }
}

function checkUserId(field: string, userId: string, required: boolean): void {
  checkText(field, userId, LIMITS.userIdChars, required);
}

function checkQuery(field: string, query: string): void {
  checkText(field, query, MEMORY_LIMITS.queryChars);
  if (query.trim() === "") throw invalidArgument(field, "is required", "REQUIRED");
}

function checkFraction(field: string, value: number): void {
  if (!(Number.isFinite(value) && value >= 0 && value <= 1)) throw invalidArgument(field, "must be between 0 and 1", "OUT_OF_RANGE");
}

/** A count with a documented default for 0 and a maximum: out of range is InvalidArgument. */
function countIn(field: string, value: number, limits: { default: number; max: number }): number {
  if (value === 0) return limits.default;
  if (value < 1 || value > limits.max) throw invalidArgument(field, `must be between 1 and ${limits.max} (0: the default, ${limits.default})`, "OUT_OF_RANGE");
  return value;
}

/** MemoryService: what Parley remembers about users (long-term) and sessions (short-term). */
export function createMemoryService(deps: ServiceDeps, searcher: MemorySearcher): ServiceImpl<typeof MemoryService> {
  const { db, pageTokens } = deps;

  /** The session (of the tenant) a request names; NotFound otherwise. With userId, it must be that user's. */
  async function sessionOf(tenantId: string, field: string, sessionId: string, userId?: string) {
    const id = requireId(field, sessionId);
    const s = await findSession(db, tenantId, id);
    if (!s) throw notFound("session", id);
    if (userId !== undefined && s.user_id !== userId) {
      throw invalidArgument(field, `session "${id}" belongs to another user than user_id`, "SESSION_USER_MISMATCH");
    }
    return s;
  }

  return {
    async addMemory(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const m = req.memory;
      if (!m) throw invalidArgument("memory", "is required", "REQUIRED");
      const metadata = structIn(m.metadata);
      const quality = m.quality ?? 1;
      let type: MemoryTypeText | undefined;
      checkAll(
        () => {
          type = typeFilter("memory.type", m.type);
          if (!type) throw invalidArgument("memory.type", "is required: SHORT or LONG", "REQUIRED");
        },
        () => {
          checkText("memory.content", m.content, MEMORY_LIMITS.contentChars);
          if (m.content.trim() === "") throw invalidArgument("memory.content", "is required", "REQUIRED");
        },
        () => checkFraction("memory.quality", quality),
        () => checkMetadata("memory.metadata", metadata),
        () => {
          if (m.type === MemoryType.LONG) checkUserId("memory.user_id", m.userId, true);
        },
        () => {
          if (m.type === MemoryType.LONG && m.sessionId !== "") {
            throw invalidArgument("memory.session_id", "must be empty for a LONG memory (it belongs to the user)", "INVALID_FIELD");
          }
          if (m.type === MemoryType.SHORT) requireId("memory.session_id", m.sessionId);
        },
      );
      let userId = m.userId;
      let sessionId: string | null = null;
      if (type === "short") {
        // A short-term memory is about its session's user, whatever user_id says (output only).
        const s = await sessionOf(tenantId, "memory.session_id", m.sessionId);
        userId = s.user_id;
        sessionId = s.id;
      }
      const embedding = await searcher.embed(db, m.content, ctx.signal);
      const row = await db.transaction().execute(async (tx) => {
        if (sessionId) {
          // KEY SHARE: the session cannot be deleted before this memory is committed with it.
          const alive = await tx
            .selectFrom("sessions")
            .select("id")
            .where("id", "=", sessionId)
            .where("tenant_id", "=", tenantId)
            .forKeyShare()
            .executeTakeFirst();
          if (!alive) throw notFound("session", sessionId);
        }
        return insertMemory(
          tx,
          { id: newId(), tenant_id: tenantId, type: type!, user_id: userId, session_id: sessionId, content: m.content, quality, metadata },
          embedding,
        );
      });
      return { memory: memoryToProto(row) };
    },

    async searchMemory(req, ctx) {
      const { tenantId } = callerOf(ctx);
      let type: MemoryTypeText | undefined;
      let limit = 0;
      checkAll(
        () => checkQuery("query", req.query),
        () => checkUserId("user_id", req.userId, true),
        () => {
          if (req.sessionId !== "") requireId("session_id", req.sessionId);
        },
        () => {
          type = typeFilter("type", req.type);
        },
        () => checkFraction("min_quality", req.minQuality),
        () => {
          limit = countIn("limit", req.limit, MEMORY_LIMITS.searchLimit);
        },
      );
      const session = req.sessionId !== "" ? await sessionOf(tenantId, "session_id", req.sessionId, req.userId) : undefined;
      const hits = await searcher.search(
        db,
        tenantId,
        {
          query: req.query,
          userId: req.userId,
          ...(session ? { sessionId: session.id } : {}),
          ...(type ? { type } : {}),
          minQuality: req.minQuality,
          limit,
        },
        ctx.signal,
      );
      return { hits: hits.map(hitToProto) };
    },

    async listMemories(req, ctx) {
      const { tenantId } = callerOf(ctx);
      let type: MemoryTypeText | undefined;
      let size = 0;
      checkAll(
        () => checkUserId("user_id", req.userId, false),
        () => {
          if (req.sessionId !== "") requireId("session_id", req.sessionId);
        },
        () => {
          type = typeFilter("type", req.type);
        },
        () => {
          size = pageSize(req.pageSize);
        },
      );
      const sessionId = req.sessionId !== "" ? (await sessionOf(tenantId, "session_id", req.sessionId)).id : undefined;
      const filter = {
        ...(req.userId !== "" ? { userId: req.userId } : {}),
        ...(sessionId ? { sessionId } : {}),
        ...(type ? { type } : {}),
      };
      // Everything that shapes the list is in the fingerprint: a token only pages the list it came from.
      const query = JSON.stringify(["memories", tenantId, filter.userId ?? "", sessionId ?? "", type ?? ""]);
      let after: { createTime: string; id: string } | undefined;
      if (req.pageToken !== "") {
        const [time, id, ...rest] = pageTokens.decode(query, req.pageToken);
        if (rest.length > 0 || typeof time !== "string" || !CURSOR_TIME.test(time) || typeof id !== "string") {
          throw invalidArgument("page_token", "is not a page token of this query", "INVALID_PAGE_TOKEN");
        }
        after = { createTime: time, id };
      }
      const rows = await listMemories(db, tenantId, filter, size + 1, after);
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      return {
        memories: page.map(memoryToProto),
        nextPageToken: rows.length > size && last ? pageTokens.encode(query, [last.cursor, last.id]) : "",
      };
    },

    async deleteMemory(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("memory_id", req.memoryId);
      if (!(await deleteMemory(db, tenantId, id))) throw notFound("memory", id);
      return {};
    },

    async clearMemories(req, ctx) {
      const { tenantId } = callerOf(ctx);
      let type: MemoryTypeText | undefined;
      checkAll(
        () => checkUserId("user_id", req.userId, false),
        () => {
          if (req.sessionId !== "") requireId("session_id", req.sessionId);
          else if (req.userId === "") throw invalidArgument("user_id", "user_id or session_id is required", "REQUIRED");
        },
        () => {
          type = typeFilter("type", req.type);
        },
      );
      const sessionId = req.sessionId !== "" ? (await sessionOf(tenantId, "session_id", req.sessionId)).id : undefined;
      const deleted = await clearMemories(db, tenantId, {
        ...(req.userId !== "" ? { userId: req.userId } : {}),
        ...(sessionId ? { sessionId } : {}),
        ...(type ? { type } : {}),
      });
      return { deletedCount: BigInt(deleted) };
    },

    async getMemoryContext(req, ctx) {
      const { tenantId } = callerOf(ctx);
      let maxItems = 0;
      checkAll(
        () => checkQuery("query", req.query),
        () => checkUserId("user_id", req.userId, true),
        () => {
          if (req.sessionId !== "") requireId("session_id", req.sessionId);
        },
        () => {
          maxItems = countIn("max_items", req.maxItems, MEMORY_LIMITS.contextItems);
        },
      );
      const session = req.sessionId !== "" ? await sessionOf(tenantId, "session_id", req.sessionId, req.userId) : undefined;
      const { text, hits } = await memoryContext(db, searcher, tenantId, req.userId, session?.id, req.query, maxItems, ctx.signal);
      return { context: text, hits: hits.map(hitToProto) };
    },
  };
}
