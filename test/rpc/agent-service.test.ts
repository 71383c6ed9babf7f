import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { Code, type Client } from "@connectrpc/connect";
import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentSchema, AgentService } from "../../gen/parley/v1/agent_pb.js";
import { SessionService } from "../../gen/parley/v1/session_pb.js";
import type { Database } from "../../src/db/schema.js";
import { createTestApp, type TestApp } from "../helpers/app.js";
import { backends } from "../helpers/databases.js";
import { expectRejected, metadataOf } from "../helpers/errors.js";
import { snapshot } from "../helpers/snapshot.js";

type AgentInit = MessageInitShape<typeof AgentSchema>;

const fullAgent: AgentInit = {
  name: "Support bot",
  description: "Answers questions about the product.",
  instructions: "You are helpful.",
  model: "openai-compatible:llama3.2:3b",
  generation: { temperature: 0.7, topP: 0.9, maxOutputTokens: 512, stop: ["END", "###"] },
  prologue: "Hi! How can I help?",
  contextPolicy: { maxHistoryMessages: 20, maxInputTokens: 4000 },
  metadata: { team: "support", tags: ["a", "b"], level: 3 },
};

const mask = (...paths: string[]) => create(FieldMaskSchema, { paths });

describe.each(backends())("AgentService on %s", (backend) => {
  let t: TestApp;
  let agents: Client<typeof AgentService>;
  let sessions: Client<typeof SessionService>;
  let db: Kysely<Database>;

  beforeAll(async () => {
    t = await createTestApp({ backend });
    agents = t.client(AgentService);
    sessions = t.client(SessionService);
    db = t.app.db;
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

  describe("CreateAgent and GetAgent", () => {
    it("stores every field and reads it back", async () => {
      const { agent } = await agents.createAgent({ agent: { ...fullAgent, id: "ignored", etag: "ignored" } });
      expect(agent).toBeDefined();
      expect(agent!.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(agent!.id).not.toBe("ignored");
      expect(agent!.name).toBe("Support bot");
      expect(agent!.model).toBe("openai-compatible:llama3.2:3b");
      expect(agent!.generation).toMatchObject({ temperature: 0.7, topP: 0.9, maxOutputTokens: 512, stop: ["END", "###"] });
      expect(agent!.contextPolicy).toMatchObject({ maxHistoryMessages: 20, maxInputTokens: 4000 });
      expect(agent!.metadata).toEqual({ team: "support", tags: ["a", "b"], level: 3 });
      expect(agent!.prologue).toBe("Hi! How can I help?");
      expect(agent!.etag).not.toBe("");
      expect(agent!.etag).not.toBe("ignored");
      expect(agent!.createTime).toBeDefined();
      expect(agent!.updateTime).toBeDefined();

      const got = await agents.getAgent({ agentId: agent!.id });
      expect(got.agent).toEqual(agent);
      // Upper-case ids name the same agent.
      const upper = await agents.getAgent({ agentId: agent!.id.toUpperCase() });
      expect(upper.agent?.id).toBe(agent!.id);
    });

    it("creates an agent with only a name, everything else at its default", async () => {
      const { agent } = await agents.createAgent({ agent: { name: "Minimal" } });
      expect(agent).toMatchObject({ name: "Minimal", description: "", instructions: "", model: "", prologue: "" });
      expect(agent!.generation?.temperature).toBeUndefined();
      expect(agent!.generation?.topP).toBeUndefined();
      expect(agent!.generation?.maxOutputTokens).toBeUndefined();
      expect(agent!.generation?.stop).toEqual([]);
      expect(agent!.contextPolicy).toMatchObject({ maxHistoryMessages: 0, maxInputTokens: 0 });
      expect(agent!.metadata).toEqual({});
    });

    it("accepts every value at the edge of its limits", async () => {
      const { agent } = await agents.createAgent({
        agent: {
          name: "n".repeat(256),
          description: "d".repeat(4096),
          instructions: "i".repeat(256 * 1024),
          model: `p:${"m".repeat(254)}`,
          generation: { temperature: 2, topP: 1, maxOutputTokens: 1_000_000, stop: Array.from({ length: 8 }, () => "s".repeat(256)) },
          prologue: "p".repeat(1024 * 1024),
          contextPolicy: { maxHistoryMessages: 1000, maxInputTokens: 2_000_000 },
          metadata: Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, i])),
        },
      });
      expect(agent?.name).toHaveLength(256);
      const low = await agents.createAgent({
        agent: { name: "x", generation: { temperature: 0, topP: 0.0001, maxOutputTokens: 1 }, contextPolicy: { maxHistoryMessages: 1, maxInputTokens: 256 } },
      });
      expect(low.agent?.generation?.temperature).toBe(0);
    });

    const bad: [string, AgentInit, string, string][] = [
      ["an empty name", { name: "" }, "agent.name", "REQUIRED"],
      ["a blank name", { name: "   " }, "agent.name", "REQUIRED"],
      ["a name over 256 characters", { name: "n".repeat(257) }, "agent.name", "TOO_LONG"],
      ["a description over 4,096 characters", { name: "a", description: "d".repeat(4097) }, "agent.description", "TOO_LONG"],
      ["instructions over 256 KiB", { name: "a", instructions: "é".repeat(128 * 1024 + 1) }, "agent.instructions", "TOO_LONG"],
      ["a model without provider", { name: "a", model: "gpt-4o" }, "agent.model", "INVALID_MODEL"],
      ["a model without name", { name: "a", model: "openai:" }, "agent.model", "INVALID_MODEL"],
      ["a model with spaces", { name: "a", model: "open ai:gpt 4" }, "agent.model", "INVALID_MODEL"],
      ["a model over 256 characters", { name: "a", model: `p:${"m".repeat(255)}` }, "agent.model", "TOO_LONG"],
      ["a negative temperature", { name: "a", generation: { temperature: -0.1 } }, "agent.generation.temperature", "OUT_OF_RANGE"],
      ["a temperature above 2", { name: "a", generation: { temperature: 2.01 } }, "agent.generation.temperature", "OUT_OF_RANGE"],
      ["a NaN temperature", { name: "a", generation: { temperature: Number.NaN } }, "agent.generation.temperature", "OUT_OF_RANGE"],
      ["top_p 0", { name: "a", generation: { topP: 0 } }, "agent.generation.top_p", "OUT_OF_RANGE"],
      ["top_p above 1", { name: "a", generation: { topP: 1.5 } }, "agent.generation.top_p", "OUT_OF_RANGE"],
      ["max_output_tokens 0", { name: "a", generation: { maxOutputTokens: 0 } }, "agent.generation.max_output_tokens", "OUT_OF_RANGE"],
      ["max_output_tokens above 1,000,000", { name: "a", generation: { maxOutputTokens: 1_000_001 } }, "agent.generation.max_output_tokens", "OUT_OF_RANGE"],
      ["9 stop sequences", { name: "a", generation: { stop: Array.from({ length: 9 }, (_, i) => `s${i}`) } }, "agent.generation.stop", "TOO_MANY"],
      ["an empty stop sequence", { name: "a", generation: { stop: ["ok", ""] } }, "agent.generation.stop[1]", "REQUIRED"],
      ["a stop sequence over 256 characters", { name: "a", generation: { stop: ["s".repeat(257)] } }, "agent.generation.stop[0]", "TOO_LONG"],
      ["a prologue over 1 MiB", { name: "a", prologue: "p".repeat(1024 * 1024 + 1) }, "agent.prologue", "TOO_LONG"],
      ["negative max_history_messages", { name: "a", contextPolicy: { maxHistoryMessages: -1 } }, "agent.context_policy.max_history_messages", "OUT_OF_RANGE"],
      ["max_history_messages above 1,000", { name: "a", contextPolicy: { maxHistoryMessages: 1001 } }, "agent.context_policy.max_history_messages", "OUT_OF_RANGE"],
      ["max_input_tokens below 256", { name: "a", contextPolicy: { maxInputTokens: 255 } }, "agent.context_policy.max_input_tokens", "OUT_OF_RANGE"],
      ["max_input_tokens above 2,000,000", { name: "a", contextPolicy: { maxInputTokens: 2_000_001 } }, "agent.context_policy.max_input_tokens", "OUT_OF_RANGE"],
      ["metadata with 65 keys", { name: "a", metadata: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, i])) }, "agent.metadata", "TOO_MANY_KEYS"],
      ["metadata over 16 KiB", { name: "a", metadata: { big: "x".repeat(16 * 1024) } }, "agent.metadata", "TOO_LARGE"],
    ];
    it.each(bad)("rejects %s as InvalidArgument and stores nothing", async (_what, agent, field, reason) => {
      await rejects(() => agents.createAgent({ agent }), Code.InvalidArgument, { field, reason });
    });

    it("rejects a missing agent", async () => {
      await rejects(() => agents.createAgent({}), Code.InvalidArgument, { field: "agent", reason: "REQUIRED" });
    });

    it("reports every invalid field at once", async () => {
      await rejects(
        () => agents.createAgent({ agent: { name: "", model: "nope", generation: { temperature: 3, topP: 2 }, contextPolicy: { maxInputTokens: 1 } } }),
        Code.InvalidArgument,
        {
          fields: [
            "agent.name",
            "agent.model",
            "agent.generation.temperature",
            "agent.generation.top_p",
            "agent.context_policy.max_input_tokens",
          ],
        },
      );
    });

    it("rejects U+0000 in text and metadata (Postgres cannot store it) as InvalidArgument, not Internal", async () => {
      await rejects(() => agents.createAgent({ agent: { name: "a\u0000b" } }), Code.InvalidArgument, {
        field: "agent.name",
        reason: "INVALID_CHARACTER",
      });
      await rejects(
        () => agents.createAgent({ agent: { name: "ok", metadata: { k: "v\u0000" } } }),
        Code.InvalidArgument,
        { field: "agent.metadata", reason: "INVALID_CHARACTER" },
      );
    });

    it("GetAgent: a missing, malformed, unknown or other tenant's id", async () => {
      await rejects(() => agents.getAgent({ agentId: "" }), Code.InvalidArgument, { field: "agent_id", reason: "REQUIRED" });
      await rejects(() => agents.getAgent({ agentId: "not-a-uuid" }), Code.InvalidArgument, { field: "agent_id", reason: "INVALID_ID" });
      const unknown = await rejects(() => agents.getAgent({ agentId: "0190a5d6-0000-7000-8000-000000000000" }), Code.NotFound, {
        reason: "AGENT_NOT_FOUND",
      });
      const { agent } = await agents.createAgent({ agent: { name: "Mine" } });
      const other = await t.newTenant();
      const theirs = await rejects(() => t.client(AgentService, other.key).getAgent({ agentId: agent!.id }), Code.NotFound, {
        reason: "AGENT_NOT_FOUND",
      });
      expect(Object.keys(metadataOf(theirs)).sort()).toEqual(Object.keys(metadataOf(unknown)).sort());
    });
  });

  describe("ListAgents", () => {
    it("pages through the tenant's agents newest first, ties on create_time broken by id", async () => {
      const tenant = await t.newTenant("list-agents");
      const c = t.client(AgentService, tenant.key);
      const ids: string[] = [];
      for (let i = 0; i < 9; i++) ids.push((await c.createAgent({ agent: { name: `a${i}` } })).agent!.id);
      // Three agents share one create_time, two others differ from it by one microsecond.
      // create_time is immutable for the app; tests rewrite it with raw SQL.
      const setCreated = (time: string, which: string[]) =>
        sql`update agents set create_time = ${time}::timestamptz where id = any(${which}::uuid[])`.execute(db);
      await setCreated("2030-01-01T00:00:00.000500Z", ids.slice(2, 5));
      await setCreated("2030-01-01T00:00:00.000501Z", [ids[5]!]);
      await setCreated("2030-01-01T00:00:00.000499Z", [ids[6]!]);
      const expected = await db
        .selectFrom("agents")
        .select(["id", sql<string>`to_char(create_time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')`.as("t")])
        .where("tenant_id", "=", tenant.tenantId)
        .execute();
      expected.sort((a, b) => (a.t === b.t ? (a.id < b.id ? 1 : -1) : a.t < b.t ? 1 : -1));
      const order = expected.map((r) => r.id);
      expect(order.slice(0, 5)).toEqual([ids[5], ...ids.slice(2, 5).sort().reverse(), ids[6]]);

      const seen: string[] = [];
      let token = "";
      let pages = 0;
      do {
        const page = await c.listAgents({ pageSize: 2, pageToken: token });
        expect(page.agents.length).toBeLessThanOrEqual(2);
        seen.push(...page.agents.map((a) => a.id));
        token = page.nextPageToken;
        pages++;
      } while (token !== "" && pages < 20);
      expect(seen).toEqual(order);
      expect(pages).toBe(5);

      const all = await c.listAgents({});
      expect(all.agents.map((a) => a.id)).toEqual(order);
      expect(all.nextPageToken).toBe("");
      const clamped = await c.listAgents({ pageSize: 100_000 });
      expect(clamped.agents).toHaveLength(9);
      // An exact last page has no next token.
      const nine = await c.listAgents({ pageSize: 9 });
      expect(nine.nextPageToken).toBe("");
      // The other tenant's list does not include these.
      const mine = await agents.listAgents({ pageSize: 1000 });
      expect(mine.agents.some((a) => ids.includes(a.id))).toBe(false);
    });

    it("rejects a negative page size, a tampered token and another tenant's token", async () => {
      await rejects(() => agents.listAgents({ pageSize: -1 }), Code.InvalidArgument, { field: "page_size", reason: "INVALID_PAGE_SIZE" });
      const tenant = await t.newTenant("tokens");
      const c = t.client(AgentService, tenant.key);
      for (let i = 0; i < 3; i++) await c.createAgent({ agent: { name: `x${i}` } });
      const { nextPageToken } = await c.listAgents({ pageSize: 1 });
      expect(nextPageToken).not.toBe("");
      const [body, sig] = nextPageToken.split(".") as [string, string];
      const forged = Buffer.from(JSON.stringify(["2999-01-01T00:00:00.000000Z", "0190a5d6-0000-7000-8000-000000000000"])).toString("base64url");
      const flipped = sig.startsWith("A") ? `B${sig.slice(1)}` : `A${sig.slice(1)}`;
      for (const token of [`${body}.${flipped}`, `${body}.${sig}=`, `${forged}.${sig}`, "garbage", `${body}`, `${body}.${sig}.x`]) {
        await rejects(() => c.listAgents({ pageSize: 1, pageToken: token }), Code.InvalidArgument, {
          field: "page_token",
          reason: "INVALID_PAGE_TOKEN",
        });
      }
      await rejects(() => agents.listAgents({ pageSize: 1, pageToken: nextPageToken }), Code.InvalidArgument, {
        field: "page_token",
        reason: "INVALID_PAGE_TOKEN",
      });
      // The genuine token still works.
      expect((await c.listAgents({ pageSize: 1, pageToken: nextPageToken })).agents).toHaveLength(1);
    });
  });

  describe("UpdateAgent", () => {
    it("changes only the masked fields and bumps the etag", async () => {
      const { agent } = await agents.createAgent({ agent: fullAgent });
      const a = agent!;
      const { agent: renamed } = await agents.updateAgent({
        agent: { id: a.id, name: "Renamed", description: "ignored: not in the mask", etag: a.etag },
        updateMask: mask("name"),
      });
      expect(renamed!.name).toBe("Renamed");
      expect(renamed!.description).toBe(fullAgent.description);
      expect(renamed!.generation).toEqual(a.generation);
      expect(renamed!.etag).not.toBe(a.etag);
      expect(renamed!.createTime).toEqual(a.createTime);
      expect((await agents.getAgent({ agentId: a.id })).agent).toEqual(renamed);
    });

    it("updates sub-paths of generation and context_policy", async () => {
      const { agent } = await agents.createAgent({ agent: fullAgent });
      const { agent: u } = await agents.updateAgent({
        agent: { id: agent!.id, generation: { temperature: 1.5 }, contextPolicy: { maxInputTokens: 8000 } },
        updateMask: mask("generation.temperature", "context_policy.max_input_tokens"),
      });
      expect(u!.generation).toMatchObject({ temperature: 1.5, topP: 0.9, maxOutputTokens: 512, stop: ["END", "###"] });
      expect(u!.contextPolicy).toMatchObject({ maxHistoryMessages: 20, maxInputTokens: 8000 });
      // A masked sub-path left unset clears it.
      const { agent: cleared } = await agents.updateAgent({
        agent: { id: agent!.id },
        updateMask: mask("generation.top_p", "generation.stop"),
      });
      expect(cleared!.generation?.topP).toBeUndefined();
      expect(cleared!.generation?.stop).toEqual([]);
      expect(cleared!.generation?.temperature).toBe(1.5);
    });

    it("replaces a whole message field, and everything with *", async () => {
      const { agent } = await agents.createAgent({ agent: fullAgent });
      const { agent: g } = await agents.updateAgent({
        agent: { id: agent!.id, generation: { maxOutputTokens: 64 } },
        updateMask: mask("generation", "metadata"),
      });
      expect(g!.generation?.temperature).toBeUndefined();
      expect(g!.generation?.maxOutputTokens).toBe(64);
      expect(g!.metadata).toEqual({});
      const { agent: all } = await agents.updateAgent({
        agent: { id: agent!.id, name: "Only name", model: "anthropic:claude-sonnet-4-5" },
        updateMask: mask("*"),
      });
      expect(all).toMatchObject({ name: "Only name", model: "anthropic:claude-sonnet-4-5", description: "", instructions: "", prologue: "" });
      expect(all!.contextPolicy).toMatchObject({ maxHistoryMessages: 0, maxInputTokens: 0 });
    });

    it("rejects a stale etag as ABORTED", async () => {
      const { agent } = await agents.createAgent({ agent: { name: "v1" } });
      await agents.updateAgent({ agent: { id: agent!.id, name: "v2" }, updateMask: mask("name") });
      await rejects(
        () => agents.updateAgent({ agent: { id: agent!.id, name: "v3", etag: agent!.etag }, updateMask: mask("name") }),
        Code.Aborted,
        { reason: "ETAG_MISMATCH" },
      );
      expect((await agents.getAgent({ agentId: agent!.id })).agent?.name).toBe("v2");
    });

    it("rejects bad masks, bad ids and invalid values, changing nothing", async () => {
      const { agent } = await agents.createAgent({ agent: fullAgent });
      const id = agent!.id;
      await rejects(() => agents.updateAgent({ updateMask: mask("name") }), Code.InvalidArgument, { field: "agent", reason: "REQUIRED" });
      await rejects(() => agents.updateAgent({ agent: { id, name: "x" } }), Code.InvalidArgument, { field: "update_mask", reason: "REQUIRED" });
      await rejects(() => agents.updateAgent({ agent: { id, name: "x" }, updateMask: mask() }), Code.InvalidArgument, { field: "update_mask" });
      for (const path of ["nme", "id", "etag", "create_time", "generation.seed", "context_policy.x", "metadata.key"]) {
        await rejects(() => agents.updateAgent({ agent: { id, name: "x" }, updateMask: mask("name", path) }), Code.InvalidArgument, {
          field: "update_mask",
          reason: "INVALID_UPDATE_MASK",
        });
      }
      await rejects(() => agents.updateAgent({ agent: { id: "", name: "x" }, updateMask: mask("name") }), Code.InvalidArgument, {
        field: "agent.id",
        reason: "REQUIRED",
      });
      await rejects(() => agents.updateAgent({ agent: { id: "x", name: "x" }, updateMask: mask("name") }), Code.InvalidArgument, {
        field: "agent.id",
      });
      await rejects(() => agents.updateAgent({ agent: { id, name: "" }, updateMask: mask("name") }), Code.InvalidArgument, {
        field: "agent.name",
      });
      await rejects(
        () => agents.updateAgent({ agent: { id, generation: { temperature: 9 } }, updateMask: mask("generation.temperature") }),
        Code.InvalidArgument,
        { field: "agent.generation.temperature" },
      );
      await rejects(
        () => agents.updateAgent({ agent: { id, contextPolicy: { maxHistoryMessages: 5000 } }, updateMask: mask("context_policy") }),
        Code.InvalidArgument,
        { field: "agent.context_policy.max_history_messages" },
      );
      // `*` validates every field: a required name cannot be emptied that way either.
      await rejects(() => agents.updateAgent({ agent: { id }, updateMask: mask("*") }), Code.InvalidArgument, { field: "agent.name" });
      // Invalid values outside the mask are ignored.
      const { agent: ok } = await agents.updateAgent({
        agent: { id, description: "new", generation: { temperature: 99 } },
        updateMask: mask("description"),
      });
      expect(ok!.generation?.temperature).toBe(0.7);
    });

    it("treats unknown and other tenants' ids as NOT_FOUND", async () => {
      const { agent } = await agents.createAgent({ agent: { name: "Mine" } });
      const other = await t.newTenant();
      await rejects(
        () => t.client(AgentService, other.key).updateAgent({ agent: { id: agent!.id, name: "stolen" }, updateMask: mask("name") }),
        Code.NotFound,
        { reason: "AGENT_NOT_FOUND" },
      );
      await rejects(
        () => agents.updateAgent({ agent: { id: "0190a5d6-0000-7000-8000-000000000001", name: "x" }, updateMask: mask("name") }),
        Code.NotFound,
        { reason: "AGENT_NOT_FOUND" },
      );
    });
  });

  describe("DeleteAgent", () => {
    it("deletes an agent without sessions, honouring the etag", async () => {
      const { agent } = await agents.createAgent({ agent: { name: "Doomed" } });
      const { agent: v2 } = await agents.updateAgent({ agent: { id: agent!.id, name: "Doomed 2" }, updateMask: mask("name") });
      await rejects(() => agents.deleteAgent({ agentId: agent!.id, etag: agent!.etag }), Code.Aborted, { reason: "ETAG_MISMATCH" });
      await agents.deleteAgent({ agentId: agent!.id, etag: v2!.etag });
      await rejects(() => agents.getAgent({ agentId: agent!.id }), Code.NotFound);
      await rejects(() => agents.deleteAgent({ agentId: agent!.id }), Code.NotFound, { reason: "AGENT_NOT_FOUND" });
    });

    it("refuses an agent with sessions unless forced; force deletes its sessions and their messages", async () => {
      const { agent } = await agents.createAgent({ agent: { name: "Busy", prologue: "Hello" } });
      const id = agent!.id;
      const s1 = (await sessions.createSession({ session: { agentId: id, userId: "u1" } })).session!;
      await sessions.createSession({ session: { agentId: id, userId: "u2" } });
      const keep = (await agents.createAgent({ agent: { name: "Bystander", prologue: "Hi" } })).agent!;
      const kept = (await sessions.createSession({ session: { agentId: keep.id, userId: "u1" } })).session!;

      await rejects(() => agents.deleteAgent({ agentId: id }), Code.FailedPrecondition, { reason: "AGENT_HAS_SESSIONS" });
      await agents.deleteAgent({ agentId: id, force: true });

      await rejects(() => agents.getAgent({ agentId: id }), Code.NotFound);
      await rejects(() => sessions.getSession({ sessionId: s1.id }), Code.NotFound);
      const left = await db.selectFrom("sessions").select("agent_id").where("agent_id", "=", id).execute();
      expect(left).toEqual([]);
      const orphans = await db
        .selectFrom("messages")
        .select("id")
        .where("session_id", "not in", db.selectFrom("sessions").select("id"))
        .execute();
      expect(orphans).toEqual([]);
      expect((await sessions.getSession({ sessionId: kept.id })).session?.messageCount).toBe(1n);
    });

    it("refuses a forced delete while one of the agent's sessions runs an Ask, not once its lease expired", async () => {
      const { agent } = await agents.createAgent({ agent: { name: "Running" } });
      const s = (await sessions.createSession({ session: { agentId: agent!.id, userId: "u" } })).session!;
      const askId = "0190a5d6-0000-7000-8000-0000000000aa";
      await db
        .updateTable("sessions")
        .set({ active_ask_id: askId, lease_owner: "replica", lease_expire_time: sql<Date>`now() + interval '1 hour'` })
        .where("id", "=", s.id)
        .execute();
      const err = await rejects(() => agents.deleteAgent({ agentId: agent!.id, force: true }), Code.FailedPrecondition, {
        reason: "ASK_RUNNING",
      });
      expect(metadataOf(err)).toMatchObject({ session_id: s.id, ask_id: askId });
      await db.updateTable("sessions").set({ lease_expire_time: sql<Date>`now() - interval '1 second'` }).where("id", "=", s.id).execute();
      await agents.deleteAgent({ agentId: agent!.id, force: true });
      await rejects(() => sessions.getSession({ sessionId: s.id }), Code.NotFound);
    });

    it("rejects malformed ids and treats other tenants' agents as NOT_FOUND", async () => {
      await rejects(() => agents.deleteAgent({ agentId: "" }), Code.InvalidArgument, { field: "agent_id", reason: "REQUIRED" });
      await rejects(() => agents.deleteAgent({ agentId: "123" }), Code.InvalidArgument, { field: "agent_id" });
      const { agent } = await agents.createAgent({ agent: { name: "Mine" } });
      const other = await t.newTenant();
      await rejects(() => t.client(AgentService, other.key).deleteAgent({ agentId: agent!.id, force: true }), Code.NotFound, {
        reason: "AGENT_NOT_FOUND",
      });
      expect((await agents.getAgent({ agentId: agent!.id })).agent?.name).toBe("Mine");
    });
  });
});
