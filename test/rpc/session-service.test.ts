import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { Code, type Client } from "@connectrpc/connect";
import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { MessageRole, MessageStatus } from "../../gen/parley/v1/common_pb.js";
import {
  SessionOrderBy,
  SessionService,
  SessionStatus,
  type ListSessionsRequestSchema,
  type SessionSchema,
} from "../../gen/parley/v1/session_pb.js";
import type { Database } from "../../src/db/schema.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { expectRejected, metadataOf } from "../helpers/errors.js";
import { snapshot } from "../helpers/snapshot.js";

type SessionInit = MessageInitShape<typeof SessionSchema>;
type ListInit = MessageInitShape<typeof ListSessionsRequestSchema>;

const UNKNOWN_ID = "0190a5d6-0000-7000-8000-000000000000";

const mask = (...paths: string[]) => create(FieldMaskSchema, { paths });

describe.each(backends())("SessionService on %s", (backend) => {
  let t: TestApp;
  let agents: Client<typeof AgentService>;
  let sessions: Client<typeof SessionService>;
  let db: Kysely<Database>;
  let agentId: string;
  let plainAgentId: string;

  beforeAll(async () => {
    t = await createTestApp({ backend });
    agents = t.client(AgentService);
    sessions = t.client(SessionService);
    db = t.app.db;
    agentId = (await agents.createAgent({ agent: { name: "Greeter", prologue: "Hello! Ask me anything." } })).agent!.id;
    plainAgentId = (await agents.createAgent({ agent: { name: "Quiet" } })).agent!.id;
  });
  afterAll(async () => {
    await t?.close();
  });

  /** Expects the call to be rejected with this code (and reason/field when given) and the database to be unchanged. */
  const rejects = (
    call: () => Promise<unknown>,
    code: Code,
    expected: { reason?: string; field?: string; fields?: string[] } = {},
  ) => expectRejected(() => snapshot(db, ["agents", "sessions", "messages"]), call, code, expected);

  async function newSession(init: SessionInit = {}) {
    return (await sessions.createSession({ session: { agentId: plainAgentId, userId: "user-1", ...init } })).session!;
  }

  /** Makes the session look held by a running Ask (lease in the future), or by a dead one (lease expired). */
  async function holdByAsk(sessionId: string, live = true): Promise<string> {
    const askId = "0190a5d6-0000-7000-8000-0000000000aa";
    await db
      .updateTable("sessions")
      .set({
        active_ask_id: askId,
        lease_owner: "some-replica",
        lease_expire_time: live ? sql<Date>`now() + interval '1 hour'` : sql<Date>`now() - interval '1 second'`,
      })
      .where("id", "=", sessionId)
      .execute();
    return askId;
  }

  describe("CreateSession", () => {
    it("stores the agent's prologue as the first assistant message", async () => {
      const res = await sessions.createSession({
        session: { agentId, userId: "alice", metadata: { plan: "pro" }, state: { step: 1, cart: [] }, id: "ignored", messageCount: 9n },
      });
      const s = res.session!;
      expect(s.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(s).toMatchObject({ agentId, userId: "alice", name: "New session", status: SessionStatus.ACTIVE, messageCount: 1n, lastSeq: 1n });
      expect(s.metadata).toEqual({ plan: "pro" });
      expect(s.state).toEqual({ step: 1, cart: [] });
      expect(s.lastMessageTime).toBeDefined();
      expect(s.createTime).toBeDefined();
      expect(s.etag).not.toBe("");
      const m = res.prologueMessage!;
      expect(m).toMatchObject({
        sessionId: s.id,
        seq: 1n,
        role: MessageRole.ASSISTANT,
        content: "Hello! Ask me anything.",
        status: MessageStatus.COMPLETE,
      });
      const stored = await db.selectFrom("messages").selectAll().where("session_id", "=", s.id).execute();
      expect(stored.map((r) => [r.id, r.seq, r.role])).toEqual([[m.id, 1, "assistant"]]);
      expect((await sessions.getSession({ sessionId: s.id })).session).toEqual(s);
    });

    it("creates an empty session when the agent has no prologue", async () => {
      const res = await sessions.createSession({ session: { agentId: plainAgentId.toUpperCase(), userId: "bob", name: "Trip planning" } });
      expect(res.prologueMessage).toBeUndefined();
      expect(res.session).toMatchObject({ agentId: plainAgentId, name: "Trip planning", messageCount: 0n, lastSeq: 0n });
      expect(res.session!.lastMessageTime).toBeUndefined();
      expect(res.session!.metadata).toEqual({});
      expect(res.session!.state).toEqual({});
    });

    it("accepts values at the edge of their limits", async () => {
      const s = await newSession({
        userId: "u".repeat(256),
        name: "n".repeat(256),
        metadata: Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, i])),
        state: { blob: "s".repeat(256 * 1024 - 20) },
      });
      expect(s.userId).toHaveLength(256);
    });

    const bad: [string, SessionInit, string, string][] = [
      ["no agent_id", { agentId: "" }, "session.agent_id", "REQUIRED"],
      ["a malformed agent_id", { agentId: "agent-1" }, "session.agent_id", "INVALID_ID"],
      ["no user_id", { userId: "" }, "session.user_id", "REQUIRED"],
      ["a user_id over 256 characters", { userId: "u".repeat(257) }, "session.user_id", "TOO_LONG"],
      ["a name over 256 characters", { name: "n".repeat(257) }, "session.name", "TOO_LONG"],
      ["metadata with 65 keys", { metadata: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, i])) }, "session.metadata", "TOO_MANY_KEYS"],
      ["metadata over 16 KiB", { metadata: { big: "x".repeat(16 * 1024) } }, "session.metadata", "TOO_LARGE"],
      ["state over 256 KiB", { state: { big: "x".repeat(256 * 1024) } }, "session.state", "TOO_LARGE"],
    ];
    it.each(bad)("rejects %s as InvalidArgument and stores nothing", async (_what, init, field, reason) => {
      await rejects(() => sessions.createSession({ session: { agentId, userId: "u", ...init } }), Code.InvalidArgument, { field, reason });
    });

    it("rejects a missing session and reports every invalid field at once", async () => {
      await rejects(() => sessions.createSession({}), Code.InvalidArgument, { field: "session", reason: "REQUIRED" });
      await rejects(() => sessions.createSession({ session: { agentId: "x", userId: "", name: "n".repeat(300) } }), Code.InvalidArgument, {
        fields: ["session.agent_id", "session.user_id", "session.name"],
      });
    });

    it("treats an unknown agent and another tenant's agent as NOT_FOUND", async () => {
      await rejects(() => sessions.createSession({ session: { agentId: UNKNOWN_ID, userId: "u" } }), Code.NotFound, {
        reason: "AGENT_NOT_FOUND",
      });
      const other = await t.newTenant();
      await rejects(() => t.client(SessionService, other.key).createSession({ session: { agentId, userId: "u" } }), Code.NotFound, {
        reason: "AGENT_NOT_FOUND",
      });
    });
  });

  describe("GetSession", () => {
    it("rejects missing and malformed ids; unknown and other tenants' ids are NOT_FOUND", async () => {
      await rejects(() => sessions.getSession({ sessionId: "" }), Code.InvalidArgument, { field: "session_id", reason: "REQUIRED" });
      await rejects(() => sessions.getSession({ sessionId: "nope" }), Code.InvalidArgument, { field: "session_id", reason: "INVALID_ID" });
      await rejects(() => sessions.getSession({ sessionId: UNKNOWN_ID }), Code.NotFound, { reason: "SESSION_NOT_FOUND" });
      const s = await newSession();
      const other = await t.newTenant();
      await rejects(() => t.client(SessionService, other.key).getSession({ sessionId: s.id }), Code.NotFound, {
        reason: "SESSION_NOT_FOUND",
      });
    });
  });

  describe("ListSessions", () => {
    interface Row {
      id: string;
      agent: string;
      user: string;
      name: string;
      created: string;
      updated: string;
      archived: boolean;
    }
    let c: Client<typeof SessionService>;
    let tenantKey: string;
    let rows: Row[];
    let agentA: string;
    let agentB: string;

    // Times with microsecond differences and ties, names with ties and LIKE
    // wildcards: the expected orders are computed here, independently of SQL.
    const layout: Omit<Row, "id" | "agent">[] = [
      { user: "u1", name: "beta", created: "2030-01-01T00:00:00.000100Z", updated: "2030-01-02T00:00:00.000300Z", archived: false },
      { user: "u1", name: "alpha", created: "2030-01-01T00:00:00.000100Z", updated: "2030-01-02T00:00:00.000300Z", archived: false },
      { user: "u2", name: "beta", created: "2030-01-01T00:00:00.000101Z", updated: "2030-01-02T00:00:00.000100Z", archived: true },
      { user: "u1", name: "beta", created: "2030-01-01T00:00:00.000099Z", updated: "2030-01-02T00:00:00.000301Z", archived: false },
      { user: "u2", name: "gamma", created: "2030-01-01T00:00:00.000100Z", updated: "2030-01-02T00:00:00.000299Z", archived: false },
      { user: "u1", name: "delta", created: "2030-01-01T00:00:01.000000Z", updated: "2030-01-02T00:00:00.000300Z", archived: true },
      { user: "u3", name: "beta", created: "2030-01-01T00:00:00.000100Z", updated: "2030-01-01T23:59:59.999999Z", archived: false },
      { user: "u1", name: "epsilon", created: "2029-12-31T23:59:59.999999Z", updated: "2030-01-02T00:00:00.000302Z", archived: false },
      { user: "u2", name: "alpha", created: "2030-01-01T00:00:00.000100Z", updated: "2030-01-02T00:00:00.000300Z", archived: false },
      { user: "u1", name: "zeta", created: "2030-01-01T00:00:00.000102Z", updated: "2030-01-02T00:00:00.000303Z", archived: false },
      { user: "u1", name: "100% sure", created: "2030-01-01T00:00:02.000000Z", updated: "2030-01-03T00:00:00.000000Z", archived: false },
      { user: "u1", name: "100 percent", created: "2030-01-01T00:00:03.000000Z", updated: "2030-01-03T00:00:00.000001Z", archived: false },
      { user: "u1", name: "snake_case", created: "2030-01-01T00:00:04.000000Z", updated: "2030-01-03T00:00:00.000002Z", archived: false },
      { user: "u1", name: "snakeXcase", created: "2030-01-01T00:00:05.000000Z", updated: "2030-01-03T00:00:00.000003Z", archived: false },
      { user: "u1", name: "back\\slash", created: "2030-01-01T00:00:06.000000Z", updated: "2030-01-03T00:00:00.000004Z", archived: false },
      { user: "u1", name: "Mixed CASE Alpha", created: "2030-01-01T00:00:07.000000Z", updated: "2030-01-03T00:00:00.000005Z", archived: false },
    ];
    const wildcardNames = new Set(["100% sure", "100 percent", "snake_case", "snakeXcase", "back\\slash", "Mixed CASE Alpha"]);

    beforeAll(async () => {
      const tenant = await t.newTenant("list-sessions");
      tenantKey = tenant.key;
      c = t.client(SessionService, tenant.key);
      const ac = t.client(AgentService, tenant.key);
      agentA = (await ac.createAgent({ agent: { name: "A" } })).agent!.id;
      agentB = (await ac.createAgent({ agent: { name: "B" } })).agent!.id;
      rows = [];
      for (const [i, l] of layout.entries()) {
        const agent = i % 3 === 2 ? agentB : agentA;
        const s = (await c.createSession({ session: { agentId: agent, userId: l.user, name: l.name } })).session!;
        if (l.archived) await c.archiveSession({ sessionId: s.id });
        rows.push({ ...l, id: s.id, agent });
      }
      for (const r of rows) {
        // create_time is immutable for the app; tests rewrite it with raw SQL.
        await sql`update sessions set create_time = ${r.created}::timestamptz, update_time = ${r.updated}::timestamptz
          where id = ${r.id}::uuid`.execute(db);
      }
    });

    function expectedOrder(pick: (r: Row) => boolean, key: (r: Row) => string, descending: boolean): string[] {
      const out = rows.filter(pick).sort((a, b) => {
        const ka = key(a);
        const kb = key(b);
        const cmp = ka === kb ? (a.id < b.id ? -1 : 1) : ka < kb ? -1 : 1;
        return descending ? -cmp : cmp;
      });
      return out.map((r) => r.id);
    }

    async function pageAll(req: ListInit, size: number): Promise<{ ids: string[]; pages: number }> {
      const ids: string[] = [];
      let token = "";
      let pages = 0;
      do {
        const page = await c.listSessions({ ...req, pageSize: size, pageToken: token });
        expect(page.sessions.length).toBeLessThanOrEqual(size);
        ids.push(...page.sessions.map((s) => s.id));
        token = page.nextPageToken;
        pages++;
      } while (token !== "" && pages < 100);
      return { ids, pages };
    }

    const orders: [string, SessionOrderBy, (r: Row) => string][] = [
      ["unspecified (create_time)", SessionOrderBy.UNSPECIFIED, (r) => r.created],
      ["create_time", SessionOrderBy.CREATE_TIME, (r) => r.created],
      ["update_time", SessionOrderBy.UPDATE_TIME, (r) => r.updated],
    ];
    for (const [label, orderBy, key] of orders) {
      for (const descending of [false, true]) {
        it(`pages by ${label}${descending ? ", descending" : ""} without skipping or repeating ties`, async () => {
          const want = expectedOrder(() => true, key, descending);
          const { ids, pages } = await pageAll({ orderBy, descending }, 3);
          expect(ids).toEqual(want);
          expect(pages).toBe(Math.ceil(want.length / 3));
        });
      }
    }

    for (const descending of [false, true]) {
      it(`pages by name${descending ? ", descending" : ""}, ties broken by id`, async () => {
        // Names of the ordering check are plain lower-case letters, whose order is the same in every collation.
        const plain = (r: Row) => !wildcardNames.has(r.name);
        const want = expectedOrder(plain, (r) => r.name, descending);
        const ids: string[] = [];
        let token = "";
        let pages = 0;
        do {
          const page = await c.listSessions({ orderBy: SessionOrderBy.NAME, descending, pageSize: 2, pageToken: token });
          ids.push(...page.sessions.map((s) => s.id));
          token = page.nextPageToken;
          pages++;
        } while (token !== "" && pages < 100);
        const plainIds = new Set(want);
        expect(ids.filter((id) => plainIds.has(id))).toEqual(want);
        expect(new Set(ids).size).toBe(rows.length);
        expect(ids).toHaveLength(rows.length);
      });
    }

    it("filters by agent, user and status, alone and combined, through several pages", async () => {
      const cases: [ListInit, (r: Row) => boolean][] = [
        [{ agentId: agentA }, (r) => r.agent === agentA],
        [{ agentId: agentB.toUpperCase() }, (r) => r.agent === agentB],
        [{ userId: "u1" }, (r) => r.user === "u1"],
        [{ agentId: agentA, userId: "u1" }, (r) => r.agent === agentA && r.user === "u1"],
        [{ status: SessionStatus.ARCHIVED }, (r) => r.archived],
        [{ status: SessionStatus.ACTIVE, userId: "u2" }, (r) => !r.archived && r.user === "u2"],
        [{ userId: "nobody" }, () => false],
        [{ agentId: UNKNOWN_ID }, () => false],
      ];
      for (const [filter, pick] of cases) {
        for (const descending of [false, true]) {
          const want = expectedOrder(pick, (r) => r.updated, descending);
          const { ids } = await pageAll({ ...filter, orderBy: SessionOrderBy.UPDATE_TIME, descending }, 2);
          expect(ids, JSON.stringify(filter)).toEqual(want);
        }
      }
    });

    it("filters by name: case-insensitive substring, wildcards matched literally", async () => {
      const cases: [string, string[]][] = [
        ["ALPHA", ["alpha", "alpha", "Mixed CASE Alpha"]],
        ["%", ["100% sure"]],
        ["100%", ["100% sure"]],
        ["_", ["snake_case"]],
        ["snake_", ["snake_case"]],
        ["\\", ["back\\slash"]],
        ["et", ["beta", "beta", "beta", "beta", "zeta"]],
      ];
      for (const [name, names] of cases) {
        const want = expectedOrder((r) => names.includes(r.name), (r) => r.created, false);
        const { ids } = await pageAll({ name }, 2);
        expect(ids, name).toEqual(want);
        const filtered = rows.filter((r) => ids.includes(r.id)).map((r) => r.name).sort();
        expect(filtered).toEqual([...names].sort());
      }
    });

    it("rejects a page token used with other filters, another order, another direction or another tenant", async () => {
      const base: ListInit = { userId: "u1", orderBy: SessionOrderBy.UPDATE_TIME, descending: true, pageSize: 2 };
      const { nextPageToken } = await c.listSessions(base);
      expect(nextPageToken).not.toBe("");
      const variants: ListInit[] = [
        { ...base, userId: "u2" },
        { ...base, agentId: agentA },
        { ...base, name: "beta" },
        { ...base, status: SessionStatus.ACTIVE },
        { ...base, orderBy: SessionOrderBy.CREATE_TIME },
        { ...base, orderBy: SessionOrderBy.NAME },
        { ...base, descending: false },
      ];
      for (const v of variants) {
        await rejects(() => c.listSessions({ ...v, pageToken: nextPageToken }), Code.InvalidArgument, {
          field: "page_token",
          reason: "INVALID_PAGE_TOKEN",
        });
      }
      await rejects(() => sessions.listSessions({ ...base, pageToken: nextPageToken }), Code.InvalidArgument, {
        field: "page_token",
        reason: "INVALID_PAGE_TOKEN",
      });
      // Same query, other page size: the token stays valid.
      const next = await c.listSessions({ ...base, pageSize: 5, pageToken: nextPageToken });
      expect(next.sessions.length).toBeGreaterThan(0);
    });

    it("rejects a tampered page token", async () => {
      const { nextPageToken } = await c.listSessions({ pageSize: 2 });
      const [body, sig] = nextPageToken.split(".") as [string, string];
      const forgedBody = Buffer.from(JSON.stringify(["2000-01-01T00:00:00.000000Z", UNKNOWN_ID])).toString("base64url");
      const flipped = sig.startsWith("A") ? `B${sig.slice(1)}` : `A${sig.slice(1)}`;
      for (const token of [`${forgedBody}.${sig}`, `${body}.${flipped}`, `${body}.`, body, "x.y.z", "%%%", `${body}.${sig}=`]) {
        await rejects(() => c.listSessions({ pageSize: 2, pageToken: token }), Code.InvalidArgument, {
          field: "page_token",
          reason: "INVALID_PAGE_TOKEN",
        });
      }
    });

    it("rejects invalid filters and page sizes", async () => {
      await rejects(() => c.listSessions({ pageSize: -1 }), Code.InvalidArgument, { field: "page_size", reason: "INVALID_PAGE_SIZE" });
      await rejects(() => c.listSessions({ agentId: "abc" }), Code.InvalidArgument, { field: "agent_id", reason: "INVALID_ID" });
      await rejects(() => c.listSessions({ userId: "u".repeat(257) }), Code.InvalidArgument, { field: "user_id", reason: "TOO_LONG" });
      await rejects(() => c.listSessions({ name: "n".repeat(257) }), Code.InvalidArgument, { field: "name", reason: "TOO_LONG" });
      await rejects(() => c.listSessions({ status: 7 as SessionStatus }), Code.InvalidArgument, { field: "status", reason: "INVALID_ENUM" });
      await rejects(() => c.listSessions({ orderBy: 9 as SessionOrderBy }), Code.InvalidArgument, { field: "order_by", reason: "INVALID_ENUM" });
    });

    it("defaults to 30 per page and clamps page sizes above 1,000", async () => {
      const tenant = await t.newTenant("many-sessions");
      const ac = t.client(AgentService, tenant.key);
      const a = (await ac.createAgent({ agent: { name: "Many" } })).agent!.id;
      await sql`insert into sessions (id, tenant_id, agent_id, user_id, name)
        select gen_random_uuid(), ${tenant.tenantId}::uuid, ${a}::uuid, 'u', 's' || g from generate_series(1, 1005) g`.execute(db);
      const many = t.client(SessionService, tenant.key);
      const first = await many.listSessions({});
      expect(first.sessions).toHaveLength(30);
      expect(first.nextPageToken).not.toBe("");
      const clamped = await many.listSessions({ pageSize: 5000 });
      expect(clamped.sessions).toHaveLength(1000);
      const rest = await many.listSessions({ pageSize: 5000, pageToken: clamped.nextPageToken });
      expect(rest.sessions).toHaveLength(5);
      expect(rest.nextPageToken).toBe("");
      const all = new Set([...clamped.sessions, ...rest.sessions].map((s) => s.id));
      expect(all.size).toBe(1005);
    });

    it("lists nothing of other tenants", async () => {
      const { sessions: mine } = await sessions.listSessions({ pageSize: 1000 });
      const theirs = new Set(rows.map((r) => r.id));
      expect(mine.length).toBeGreaterThan(0);
      expect(mine.some((s) => theirs.has(s.id))).toBe(false);
      expect(tenantKey).not.toBe(t.adminKey);
    });
  });

  describe("UpdateSession", () => {
    it("updates the masked fields, bumps etag and update_time", async () => {
      const s = await newSession({ name: "Old", metadata: { a: 1 }, state: { step: 1 } });
      const { session: u } = await sessions.updateSession({
        session: { id: s.id, name: "New", metadata: { b: 2 }, state: { ignored: true }, etag: s.etag },
        updateMask: mask("name", "metadata"),
      });
      expect(u).toMatchObject({ name: "New", metadata: { b: 2 }, state: { step: 1 } });
      expect(u!.etag).not.toBe(s.etag);
      expect(u!.createTime).toEqual(s.createTime);
      const before = s.updateTime!;
      const after = u!.updateTime!;
      expect(after.seconds > before.seconds || (after.seconds === before.seconds && after.nanos >= before.nanos)).toBe(true);
      const { session: st } = await sessions.updateSession({ session: { id: s.id, state: { step: 2 } }, updateMask: mask("state") });
      expect(st).toMatchObject({ name: "New", metadata: { b: 2 }, state: { step: 2 } });
      const { session: all } = await sessions.updateSession({ session: { id: s.id, name: "" }, updateMask: mask("*") });
      expect(all).toMatchObject({ name: "New session", metadata: {}, state: {} });
      expect((await sessions.getSession({ sessionId: s.id })).session).toEqual(all);
    });

    it("rejects a stale etag as ABORTED", async () => {
      const s = await newSession();
      await sessions.updateSession({ session: { id: s.id, name: "one" }, updateMask: mask("name") });
      await rejects(
        () => sessions.updateSession({ session: { id: s.id, name: "two", etag: s.etag }, updateMask: mask("name") }),
        Code.Aborted,
        { reason: "ETAG_MISMATCH" },
      );
    });

    it("rejects bad masks, ids and values, changing nothing", async () => {
      const s = await newSession();
      const id = s.id;
      await rejects(() => sessions.updateSession({ updateMask: mask("name") }), Code.InvalidArgument, { field: "session", reason: "REQUIRED" });
      await rejects(() => sessions.updateSession({ session: { id, name: "x" } }), Code.InvalidArgument, { field: "update_mask", reason: "REQUIRED" });
      for (const path of ["status", "agent_id", "user_id", "id", "message_count", "etag", "nme", "metadata.x"]) {
        await rejects(() => sessions.updateSession({ session: { id, name: "x" }, updateMask: mask(path) }), Code.InvalidArgument, {
          field: "update_mask",
          reason: "INVALID_UPDATE_MASK",
        });
      }
      await rejects(() => sessions.updateSession({ session: { name: "x" }, updateMask: mask("name") }), Code.InvalidArgument, {
        field: "session.id",
        reason: "REQUIRED",
      });
      await rejects(() => sessions.updateSession({ session: { id, name: "n".repeat(257) }, updateMask: mask("name") }), Code.InvalidArgument, {
        field: "session.name",
      });
      await rejects(
        () =>
          sessions.updateSession({
            session: { id, metadata: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, i])) },
            updateMask: mask("metadata"),
          }),
        Code.InvalidArgument,
        { field: "session.metadata" },
      );
      await rejects(
        () => sessions.updateSession({ session: { id, state: { big: "x".repeat(256 * 1024) } }, updateMask: mask("state") }),
        Code.InvalidArgument,
        { field: "session.state" },
      );
      await rejects(
        () => sessions.updateSession({ session: { id: UNKNOWN_ID, name: "x" }, updateMask: mask("name") }),
        Code.NotFound,
        { reason: "SESSION_NOT_FOUND" },
      );
      const other = await t.newTenant();
      await rejects(
        () => t.client(SessionService, other.key).updateSession({ session: { id, name: "stolen" }, updateMask: mask("name") }),
        Code.NotFound,
        { reason: "SESSION_NOT_FOUND" },
      );
    });
  });

  describe("ArchiveSession and UnarchiveSession", () => {
    it("switches the status, idempotently, honouring the etag", async () => {
      const s = await newSession();
      const { session: a } = await sessions.archiveSession({ sessionId: s.id, etag: s.etag });
      expect(a!.status).toBe(SessionStatus.ARCHIVED);
      expect(a!.etag).not.toBe(s.etag);
      const { session: again } = await sessions.archiveSession({ sessionId: s.id });
      expect(again).toEqual(a);
      await rejects(() => sessions.unarchiveSession({ sessionId: s.id, etag: s.etag }), Code.Aborted, { reason: "ETAG_MISMATCH" });
      const { session: u } = await sessions.unarchiveSession({ sessionId: s.id, etag: a!.etag });
      expect(u!.status).toBe(SessionStatus.ACTIVE);
      expect((await sessions.getSession({ sessionId: s.id })).session).toEqual(u);
      await rejects(() => sessions.archiveSession({ sessionId: s.id, etag: a!.etag }), Code.Aborted, { reason: "ETAG_MISMATCH" });
    });

    it("rejects bad ids; unknown and other tenants' sessions are NOT_FOUND", async () => {
      await rejects(() => sessions.archiveSession({ sessionId: "" }), Code.InvalidArgument, { field: "session_id", reason: "REQUIRED" });
      await rejects(() => sessions.unarchiveSession({ sessionId: "x" }), Code.InvalidArgument, { field: "session_id" });
      await rejects(() => sessions.archiveSession({ sessionId: UNKNOWN_ID }), Code.NotFound, { reason: "SESSION_NOT_FOUND" });
      const s = await newSession();
      const other = t.client(SessionService, (await t.newTenant()).key);
      await rejects(() => other.archiveSession({ sessionId: s.id }), Code.NotFound, { reason: "SESSION_NOT_FOUND" });
      await rejects(() => other.unarchiveSession({ sessionId: s.id }), Code.NotFound, { reason: "SESSION_NOT_FOUND" });
    });
  });

  describe("DeleteSession", () => {
    it("deletes a session and its messages, honouring the etag", async () => {
      const s = (await sessions.createSession({ session: { agentId, userId: "del" } })).session!;
      await sessions.updateSession({ session: { id: s.id, name: "changed" }, updateMask: mask("name") });
      await rejects(() => sessions.deleteSession({ sessionId: s.id, etag: s.etag }), Code.Aborted, { reason: "ETAG_MISMATCH" });
      const current = (await sessions.getSession({ sessionId: s.id })).session!;
      await sessions.deleteSession({ sessionId: s.id, etag: current.etag });
      await rejects(() => sessions.getSession({ sessionId: s.id }), Code.NotFound);
      expect(await db.selectFrom("messages").select("id").where("session_id", "=", s.id).execute()).toEqual([]);
      await rejects(() => sessions.deleteSession({ sessionId: s.id }), Code.NotFound, { reason: "SESSION_NOT_FOUND" });
    });

    it("refuses a session whose Ask is running, not one whose lease expired", async () => {
      const s = await newSession();
      const askId = await holdByAsk(s.id);
      const err = await rejects(() => sessions.deleteSession({ sessionId: s.id }), Code.FailedPrecondition, { reason: "ASK_RUNNING" });
      expect(metadataOf(err)).toMatchObject({ session_id: s.id, ask_id: askId });
      await holdByAsk(s.id, false);
      await sessions.deleteSession({ sessionId: s.id });
      await rejects(() => sessions.getSession({ sessionId: s.id }), Code.NotFound);
    });

    it("rejects bad ids; other tenants' sessions are NOT_FOUND", async () => {
      await rejects(() => sessions.deleteSession({ sessionId: "" }), Code.InvalidArgument, { field: "session_id", reason: "REQUIRED" });
      await rejects(() => sessions.deleteSession({ sessionId: "1234" }), Code.InvalidArgument, { field: "session_id" });
      const s = await newSession();
      const other = await t.newTenant();
      await rejects(() => t.client(SessionService, other.key).deleteSession({ sessionId: s.id }), Code.NotFound, {
        reason: "SESSION_NOT_FOUND",
      });
    });
  });

  describe("DeleteSessions", () => {
    it("deletes the given ids and reports each one it could not delete", async () => {
      const a = await newSession();
      const b = (await sessions.createSession({ session: { agentId, userId: "batch" } })).session!;
      const running = await newSession();
      await holdByAsk(running.id);
      const bystander = await newSession();
      const other = await t.newTenant();
      const oc = t.client(AgentService, other.key);
      const theirAgent = (await oc.createAgent({ agent: { name: "Theirs" } })).agent!.id;
      const theirs = (await t.client(SessionService, other.key).createSession({ session: { agentId: theirAgent, userId: "x" } })).session!;

      const res = await sessions.deleteSessions({
        sessionIds: [a.id, "not-a-uuid", UNKNOWN_ID, b.id.toUpperCase(), running.id, theirs.id, a.id],
      });
      expect(res.deletedSessionIds.sort()).toEqual([a.id, b.id].sort());
      const failures = res.failures.map((f) => [f.sessionId, f.code]);
      expect(failures).toEqual(
        expect.arrayContaining([
          ["not-a-uuid", "invalid_argument"],
          [UNKNOWN_ID, "not_found"],
          [running.id, "failed_precondition"],
          [theirs.id, "not_found"],
        ]),
      );
      expect(failures).toHaveLength(4);
      expect(res.failures.every((f) => f.message !== "")).toBe(true);
      await rejects(() => sessions.getSession({ sessionId: a.id }), Code.NotFound);
      await rejects(() => sessions.getSession({ sessionId: b.id }), Code.NotFound);
      expect(await db.selectFrom("messages").select("id").where("session_id", "=", b.id).execute()).toEqual([]);
      expect((await sessions.getSession({ sessionId: running.id })).session?.id).toBe(running.id);
      expect((await sessions.getSession({ sessionId: bystander.id })).session?.id).toBe(bystander.id);
      expect((await t.client(SessionService, other.key).getSession({ sessionId: theirs.id })).session?.id).toBe(theirs.id);
    });

    it("deletes all of an agent's sessions of one user, sparing running ones and everybody else's", async () => {
      const mine = [
        (await sessions.createSession({ session: { agentId, userId: "carol" } })).session!,
        (await sessions.createSession({ session: { agentId, userId: "carol" } })).session!,
      ];
      const busy = (await sessions.createSession({ session: { agentId, userId: "carol" } })).session!;
      await holdByAsk(busy.id);
      const otherUser = (await sessions.createSession({ session: { agentId, userId: "dave" } })).session!;
      const otherAgent = (await sessions.createSession({ session: { agentId: plainAgentId, userId: "carol" } })).session!;

      const res = await sessions.deleteSessions({ agentId, userId: "carol" });
      expect(res.deletedSessionIds.sort()).toEqual(mine.map((s) => s.id).sort());
      expect(res.failures.map((f) => [f.sessionId, f.code])).toEqual([[busy.id, "failed_precondition"]]);
      for (const s of [busy, otherUser, otherAgent]) {
        expect((await sessions.getSession({ sessionId: s.id })).session?.id).toBe(s.id);
      }
      const none = await sessions.deleteSessions({ agentId: plainAgentId, userId: "nobody" });
      expect(none.deletedSessionIds).toEqual([]);
      expect(none.failures).toEqual([]);
    });

    it("rejects requests that are not exactly one of the two forms", async () => {
      const s = await newSession();
      await rejects(() => sessions.deleteSessions({}), Code.InvalidArgument, { field: "session_ids", reason: "REQUIRED" });
      await rejects(() => sessions.deleteSessions({ sessionIds: [s.id], agentId, userId: "user-1" }), Code.InvalidArgument, {
        field: "session_ids",
        reason: "CONFLICTING_FIELDS",
      });
      await rejects(() => sessions.deleteSessions({ sessionIds: [s.id], userId: "user-1" }), Code.InvalidArgument, { field: "session_ids" });
      await rejects(() => sessions.deleteSessions({ agentId }), Code.InvalidArgument, { field: "user_id", reason: "REQUIRED" });
      await rejects(() => sessions.deleteSessions({ userId: "user-1" }), Code.InvalidArgument, { field: "agent_id", reason: "REQUIRED" });
      await rejects(() => sessions.deleteSessions({ agentId: "bad", userId: "user-1" }), Code.InvalidArgument, { field: "agent_id" });
      await rejects(() => sessions.deleteSessions({ agentId, userId: "u".repeat(257) }), Code.InvalidArgument, { field: "user_id" });
      await rejects(() => sessions.deleteSessions({ agentId: UNKNOWN_ID, userId: "user-1" }), Code.NotFound, { reason: "AGENT_NOT_FOUND" });
      const other = await t.newTenant();
      await rejects(() => t.client(SessionService, other.key).deleteSessions({ agentId: plainAgentId, userId: "user-1" }), Code.NotFound, {
        reason: "AGENT_NOT_FOUND",
      });
      const tooMany = Array.from({ length: 1001 }, () => s.id);
      await rejects(() => sessions.deleteSessions({ sessionIds: tooMany }), Code.ResourceExhausted, { reason: "BATCH_TOO_LARGE" });
    });
  });
});
