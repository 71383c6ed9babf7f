import type { FieldMask } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  SessionOrderBy,
  SessionStatus,
  type DeleteSessionsFailure,
  type Session,
  type SessionService,
} from "../../gen/parley/v1/session_pb.js";
import type { ServiceDeps } from "../app.js";
import type { AskRuntime } from "../ask/runtime.js";
import { callerOf } from "../auth/caller.js";
import type { SessionStatusText, SessionUpdate } from "../db/schema.js";
import { failedPrecondition, invalidArgument, notFound, staleEtag } from "../errors.js";
import { isUuid, newId, requireId } from "../ids.js";
import { pageSize } from "../pagination.js";
import { findAgent } from "../repos/agents.js";
import { appendMessages } from "../repos/messages.js";
import {
  deleteSessions,
  findSession,
  insertSession,
  listSessions,
  lockSessions,
  updateSession,
  type SessionClaim,
  type SessionCursor,
  type SessionFilter,
  type SessionSort,
  type SessionWithClaim,
} from "../repos/sessions.js";
import { etagOf, structIn } from "./convert.js";
import { messageToProto, sessionToProto } from "./converters.js";
import { checkSessionState } from "../state/scopes.js";
import { checkAll, checkBatch, checkMetadata, checkText, LIMITS } from "./limits.js";

const DEFAULT_NAME = "New session";
const SESSION_PATHS = ["name", "metadata", "state"] as const;
const CURSOR_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

const sortOf: Record<number, SessionSort> = {
  [SessionOrderBy.UNSPECIFIED]: "create_time",
  [SessionOrderBy.CREATE_TIME]: "create_time",
  [SessionOrderBy.UPDATE_TIME]: "update_time",
  [SessionOrderBy.NAME]: "name",
};

function statusFilter(status: SessionStatus): SessionStatusText | undefined {
  switch (status) {
    case SessionStatus.UNSPECIFIED:
      return undefined;
    case SessionStatus.ACTIVE:
      return "active";
    case SessionStatus.ARCHIVED:
      return "archived";
    default:
      throw invalidArgument("status", `unknown status ${status}`, "INVALID_ENUM");
  }
}

function checkUserId(field: string, userId: string): void {
  checkText(field, userId, LIMITS.userIdChars, true);
}

function checkEtag(given: string, version: number, id: string): void {
  if (given !== "" && given !== etagOf(version)) throw staleEtag("session", id);
}

function askRunning(s: { id: string; active_ask_id: string | null }) {
  return failedPrecondition(`session "${s.id}" has a running Ask; cancel it or wait for it to finish`, "ASK_RUNNING", {
    session_id: s.id,
    ask_id: s.active_ask_id ?? "",
  });
}

/** The update mask's paths, checked against the updatable fields (`*` expands to all of them). */
function maskPaths(mask: FieldMask | undefined): (typeof SESSION_PATHS)[number][] {
  if (!mask || mask.paths.length === 0) throw invalidArgument("update_mask", "is required", "REQUIRED");
  for (const path of mask.paths) {
    if (path !== "*" && !(SESSION_PATHS as readonly string[]).includes(path)) {
      throw invalidArgument("update_mask", `unknown or read-only path "${path}"`, "INVALID_UPDATE_MASK");
    }
  }
  return SESSION_PATHS.filter((p) => mask.paths.includes("*") || mask.paths.includes(p));
}

/** SessionService: the session CRUD implemented here, plus Ask, CancelAsk and GetAsk from the Ask runtime. */
export function createSessionService(deps: ServiceDeps, asks: AskRuntime): ServiceImpl<typeof SessionService> {
  const { db, pageTokens } = deps;

  async function archive(tenantId: string, sessionId: string, etag: string, to: SessionStatusText): Promise<Session> {
    const id = requireId("session_id", sessionId);
    const row = await db.transaction().execute(async (tx) => {
      const current = await findSession(tx, tenantId, id, true);
      if (!current) throw notFound("session", id);
      checkEtag(etag, current.version, id);
      // Already there: nothing changes, so neither do version and update_time.
      if (current.status === to) return current;
      const updated = await updateSession(tx, tenantId, id, current.version, { status: to });
      if (!updated) throw staleEtag("session", id);
      return updated;
    });
    return sessionToProto(row);
  }

  return {
    ...asks.handlers,

    async createSession(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const s = req.session;
      if (!s) throw invalidArgument("session", "is required", "REQUIRED");
      const metadata = structIn(s.metadata);
      const state = structIn(s.state);
      checkAll(
        () => requireId("session.agent_id", s.agentId),
        () => checkUserId("session.user_id", s.userId),
        () => checkText("session.name", s.name, LIMITS.nameChars),
        () => checkMetadata("session.metadata", metadata),
        () => checkSessionState("session.state", state),
      );
      const agentId = s.agentId.toLowerCase();
      const { session, prologue } = await db.transaction().execute(async (tx) => {
        // KEY SHARE: the agent cannot be deleted until this session is committed.
        const agent = await findAgent(tx, tenantId, agentId, "key share");
        if (!agent) throw notFound("agent", agentId);
        const inserted = await insertSession(tx, {
          id: newId(),
          tenant_id: tenantId,
          agent_id: agentId,
          user_id: s.userId,
          name: s.name === "" ? DEFAULT_NAME : s.name,
          metadata: JSON.stringify(metadata),
          state: JSON.stringify(state),
        });
        if (agent.prologue === "") return { session: inserted, prologue: undefined };
        const appended = await appendMessages(tx, tenantId, inserted.id, [{ role: "assistant", content: agent.prologue }]);
        return { session: appended.session, prologue: appended.messages[0] };
      });
      return {
        session: sessionToProto(session),
        ...(prologue ? { prologueMessage: messageToProto(prologue) } : {}),
      };
    },

    async getSession(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("session_id", req.sessionId);
      const row = await findSession(db, tenantId, id);
      if (!row) throw notFound("session", id);
      return { session: sessionToProto(row) };
    },

    async listSessions(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const filter: { -readonly [K in keyof SessionFilter]: SessionFilter[K] } = {};
      let sort = "create_time" as SessionSort;
      let size = 0;
      checkAll(
        () => {
          if (req.agentId !== "") filter.agentId = requireId("agent_id", req.agentId);
        },
        () => {
          if (req.userId === "") return;
          checkUserId("user_id", req.userId);
          filter.userId = req.userId;
        },
        () => {
          checkText("name", req.name, LIMITS.nameChars);
          if (req.name !== "") filter.nameContains = req.name;
        },
        () => {
          const status = statusFilter(req.status);
          if (status) filter.status = status;
        },
        () => {
          const s = sortOf[req.orderBy];
          if (!s) throw invalidArgument("order_by", `unknown order ${req.orderBy}`, "INVALID_ENUM");
          sort = s;
        },
        () => {
          size = pageSize(req.pageSize);
        },
      );
      // Everything that shapes the result set is in the fingerprint, so a token
      // replayed with other filters, another order or another tenant is rejected.
      const query = JSON.stringify([
        "sessions",
        tenantId,
        filter.agentId ?? "",
        filter.userId ?? "",
        filter.nameContains ?? "",
        filter.status ?? "",
        sort,
        req.descending,
      ]);
      let after: SessionCursor | undefined;
      if (req.pageToken !== "") {
        const keyset = pageTokens.decode(query, req.pageToken);
        const [key, id] = keyset;
        const validKey = typeof key === "string" && (sort === "name" || CURSOR_TIME.test(key));
        if (keyset.length !== 2 || !validKey || typeof id !== "string" || !isUuid(id)) {
          throw invalidArgument("page_token", "is not a page token of this query", "INVALID_PAGE_TOKEN");
        }
        after = { key, id };
      }
      const rows = await listSessions(db, tenantId, filter, sort, req.descending, size + 1, after);
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      return {
        sessions: page.map(sessionToProto),
        nextPageToken: rows.length > size && last ? pageTokens.encode(query, [last.cursor, last.id]) : "",
      };
    },

    async updateSession(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const s = req.session;
      if (!s) throw invalidArgument("session", "is required", "REQUIRED");
      const id = requireId("session.id", s.id);
      const paths = maskPaths(req.updateMask);
      const values: SessionUpdate = {};
      const checks: (() => void)[] = [];
      for (const path of paths) {
        if (path === "name") {
          checks.push(() => checkText("session.name", s.name, LIMITS.nameChars));
          // An emptied name falls back to the default, as on create: a session always has a display name.
          values.name = s.name === "" ? DEFAULT_NAME : s.name;
        } else if (path === "metadata") {
          const metadata = structIn(s.metadata);
          checks.push(() => checkMetadata("session.metadata", metadata));
          values.metadata = JSON.stringify(metadata);
        } else {
          const state = structIn(s.state);
          checks.push(() => checkSessionState("session.state", state));
          values.state = JSON.stringify(state);
        }
      }
      checkAll(...checks);
      const row = await db.transaction().execute(async (tx) => {
        const current = await findSession(tx, tenantId, id, true);
        if (!current) throw notFound("session", id);
        checkEtag(s.etag, current.version, id);
        const updated = await updateSession(tx, tenantId, id, current.version, values);
        if (!updated) throw staleEtag("session", id);
        return updated;
      });
      return { session: sessionToProto(row) };
    },

    async archiveSession(req, ctx) {
      return { session: await archive(callerOf(ctx).tenantId, req.sessionId, req.etag, "archived") };
    },

    async unarchiveSession(req, ctx) {
      return { session: await archive(callerOf(ctx).tenantId, req.sessionId, req.etag, "active") };
    },

    async deleteSession(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("session_id", req.sessionId);
      await db.transaction().execute(async (tx) => {
        const current: SessionWithClaim | undefined = await findSession(tx, tenantId, id, true);
        if (!current) throw notFound("session", id);
        checkEtag(req.etag, current.version, id);
        if (current.ask_running) throw askRunning(current);
        await deleteSessions(tx, tenantId, [id]);
      });
      return {};
    },

    async deleteSessions(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const byIds = req.sessionIds.length > 0;
      const byUser = req.agentId !== "" || req.userId !== "";
      if (byIds && byUser) {
        throw invalidArgument("session_ids", "give either session_ids, or agent_id and user_id, not both", "CONFLICTING_FIELDS");
      }
      if (!byIds && !byUser) {
        throw invalidArgument("session_ids", "give either session_ids, or agent_id and user_id", "REQUIRED");
      }
      const failures: Omit<DeleteSessionsFailure, "$typeName">[] = [];
      if (byIds) {
        checkBatch("session_ids", req.sessionIds.length, LIMITS.deleteBatch);
        const wanted: string[] = [];
        const givenOf = new Map<string, string>();
        for (const given of req.sessionIds) {
          if (!isUuid(given)) {
            failures.push({ sessionId: given, code: "invalid_argument", message: "not a UUID" });
            continue;
          }
          const id = given.toLowerCase();
          // A repeated id is deleted (or reported) once.
          if (givenOf.has(id)) continue;
          givenOf.set(id, given);
          wanted.push(id);
        }
        const deleted = await db.transaction().execute(async (tx) => {
          const claims = new Map((await lockSessions(tx, tenantId, { ids: wanted })).map((c) => [c.id, c]));
          const deletable: string[] = [];
          for (const id of wanted) {
            const claim = claims.get(id);
            const given = givenOf.get(id) ?? id;
            if (!claim) failures.push({ sessionId: given, code: "not_found", message: `session "${given}" not found` });
            else if (claim.ask_running) failures.push(runningFailure(claim, given));
            else deletable.push(id);
          }
          await deleteSessions(tx, tenantId, deletable);
          return deletable;
        });
        return { deletedSessionIds: deleted, failures };
      }
      checkAll(
        () => requireId("agent_id", req.agentId),
        () => checkUserId("user_id", req.userId),
      );
      const agentId = req.agentId.toLowerCase();
      const deleted = await db.transaction().execute(async (tx) => {
        if (!(await findAgent(tx, tenantId, agentId))) throw notFound("agent", agentId);
        const claims = await lockSessions(tx, tenantId, { agentId, userId: req.userId });
        const deletable: string[] = [];
        for (const claim of claims) {
          if (claim.ask_running) failures.push(runningFailure(claim));
          else deletable.push(claim.id);
        }
        await deleteSessions(tx, tenantId, deletable);
        return deletable;
      });
      return { deletedSessionIds: deleted, failures };
    },
  };
}

function runningFailure(claim: SessionClaim, given = claim.id) {
  return {
    sessionId: given,
    code: "failed_precondition",
    message: `session "${claim.id}" has a running Ask (${claim.active_ask_id ?? ""}); cancel it or wait for it to finish`,
  };
}
