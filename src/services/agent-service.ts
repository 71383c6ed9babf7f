import { create } from "@bufbuild/protobuf";
import type { Duration, FieldMask } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  AgentSchema,
  ContextPolicySchema,
  GenerationConfigSchema,
  RetrievalConfigSchema,
  MemoryConfigSchema,
  type Agent,
  type AgentService,
  type ContextPolicy,
  type GenerationConfig,
  type RetrievalConfig,
  type MemoryConfig,
} from "../../gen/parley/v1/agent_pb.js";
import type { ConcurrencyPolicy } from "../../gen/parley/v1/common_pb.js";
import type { ServiceDeps } from "../app.js";
import { durationFromMs, enqueueTimeoutIn, policyIn, policyToProto } from "../ask/policy.js";
import { callerOf } from "../auth/caller.js";
import { checkTemplate } from "../ask/template.js";
import type { AgentRow, ContextPolicyJson, GenerationJson, JsonObject, MemoryConfigJson } from "../db/schema.js";
import type { RetrievalJson } from "../db/schema.js";
import { failedPrecondition, invalidArgument, notFound, staleEtag } from "../errors.js";
import { checkKnowledgeBaseIds, KNOWLEDGE_LIMITS } from "./knowledge-service.js";
import { newId, requireId } from "../ids.js";
import { pageSize } from "../pagination.js";
import { deleteAgent, findAgent, insertAgent, listAgents, updateAgent } from "../repos/agents.js";
import { agentHasSessions, lockSessions } from "../repos/sessions.js";
import { etagOf, structIn, structOut, ts } from "./convert.js";
import { byteLength, checkAll, checkContent, checkMetadata, checkText, LIMITS } from "./limits.js";

/** The writable fields of an agent, in their stored shape. */
interface AgentFields {
  name: string;
  description: string;
  instructions: string;
  model: string;
  generation: GenerationJson;
  prologue: string;
  context_policy: ContextPolicyJson;
  metadata: JsonObject;
  knowledge_base_ids: string[];
  retrieval: RetrievalJson;
  memory: MemoryConfigJson;
  /** Kept as given until validated (an unknown enum value or a bad duration names its field). */
  concurrency_policy: ConcurrencyPolicy;
  enqueue_timeout: Duration | undefined;
}

const MODEL_SYNTAX = /^[a-z][a-z0-9._-]*:\S+$/i;
const CURSOR_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

/** Update mask paths of UpdateAgent and the fields each one replaces. */
const AGENT_PATHS = new Set([
  "name",
  "description",
  "instructions",
  "model",
  "generation",
  "generation.temperature",
  "generation.top_p",
  "generation.max_output_tokens",
  "generation.stop",
  "prologue",
  "context_policy",
  "context_policy.max_history_messages",
  "context_policy.max_input_tokens",
  "metadata",
  "knowledge_base_ids",
  "retrieval",
  "retrieval.top_k",
  "retrieval.similarity_threshold",
  "retrieval.max_context_tokens",
  "retrieval.cite",
  "memory",
  "memory.enabled",
  "memory.max_items",
  "memory.extract",
  "memory.min_quality",
  "concurrency_policy",
  "enqueue_timeout",
]);

function generationIn(g: GenerationConfig | undefined): GenerationJson {
  const out: GenerationJson = {};
  if (g?.temperature !== undefined) out.temperature = g.temperature;
  if (g?.topP !== undefined) out.top_p = g.topP;
  if (g?.maxOutputTokens !== undefined) out.max_output_tokens = g.maxOutputTokens;
  if (g && g.stop.length > 0) out.stop = [...g.stop];
  return out;
}

function retrievalIn(r: RetrievalConfig | undefined): RetrievalJson {
  // 0 and unset mean "the default": stored as absent so a later change of the default applies.
  const out: RetrievalJson = {};
  if (r?.topK) out.top_k = r.topK;
  if (r?.similarityThreshold) out.similarity_threshold = r.similarityThreshold;
  if (r?.maxContextTokens) out.max_context_tokens = r.maxContextTokens;
  if (r?.cite !== undefined) out.cite = r.cite;
  return out;
}

function contextPolicyIn(p: ContextPolicy | undefined): ContextPolicyJson {
  // 0 means "the default": stored as absent so a later change of the default applies.
  const out: ContextPolicyJson = {};
  if (p?.maxHistoryMessages) out.max_history_messages = p.maxHistoryMessages;
  if (p?.maxInputTokens) out.max_input_tokens = p.maxInputTokens;
  return out;
}

function memoryIn(m: MemoryConfig | undefined): MemoryConfigJson {
  // Defaults (false, 0, unset) are stored as absent so a later change of the default applies.
  const out: MemoryConfigJson = {};
  if (m?.enabled) out.enabled = true;
  if (m?.maxItems) out.max_items = m.maxItems;
  if (m?.extract) out.extract = true;
  if (m?.minQuality !== undefined) out.min_quality = m.minQuality;
  return out;
}

function fieldsOf(a: Agent): AgentFields {
  return {
    name: a.name,
    description: a.description,
    instructions: a.instructions,
    model: a.model,
    generation: generationIn(a.generation),
    prologue: a.prologue,
    context_policy: contextPolicyIn(a.contextPolicy),
    metadata: structIn(a.metadata),
    knowledge_base_ids: [...a.knowledgeBaseIds],
    retrieval: retrievalIn(a.retrieval),
    memory: memoryIn(a.memory),
    concurrency_policy: a.concurrencyPolicy,
    enqueue_timeout: a.enqueueTimeout,
  };
}

function fieldsOfRow(r: AgentRow): AgentFields {
  return {
    name: r.name,
    description: r.description,
    instructions: r.instructions,
    model: r.model,
    generation: r.generation,
    prologue: r.prologue,
    context_policy: r.context_policy,
    metadata: r.metadata,
    knowledge_base_ids: r.knowledge_base_ids,
    retrieval: r.retrieval,
    memory: r.memory,
    concurrency_policy: policyToProto(r.concurrency_policy),
    enqueue_timeout: durationFromMs(r.enqueue_timeout_ms),
  };
}

/** Every documented limit of an agent; violations name the field under `agent.`. */
function validateAgent(f: AgentFields): void {
  const g = f.generation;
  const p = f.context_policy;
  const mem = f.memory;
  const checks: (() => void)[] = [
    () => checkText("agent.name", f.name, LIMITS.nameChars, true),
    () => checkText("agent.description", f.description, LIMITS.descriptionChars),
    () => {
      if (byteLength(f.instructions) > LIMITS.instructionsBytes) {
        throw invalidArgument("agent.instructions", `exceeds ${LIMITS.instructionsBytes} bytes`, "TOO_LONG");
      }
      checkTemplate("agent.instructions", f.instructions);
    },
    () => {
      checkText("agent.model", f.model, LIMITS.nameChars);
      if (f.model !== "" && !MODEL_SYNTAX.test(f.model)) {
        throw invalidArgument("agent.model", "must be `provider:model`, e.g. openai:gpt-4o-mini", "INVALID_MODEL");
      }
    },
    () => {
      if (g.temperature !== undefined && !(g.temperature >= 0 && g.temperature <= 2)) {
        throw invalidArgument("agent.generation.temperature", "must be between 0 and 2", "OUT_OF_RANGE");
      }
    },
    () => {
      if (g.top_p !== undefined && !(g.top_p > 0 && g.top_p <= 1)) {
        throw invalidArgument("agent.generation.top_p", "must be greater than 0 and at most 1", "OUT_OF_RANGE");
      }
    },
    () => {
      const n = g.max_output_tokens;
      if (n !== undefined && !(n >= 1 && n <= 1_000_000)) {
        throw invalidArgument("agent.generation.max_output_tokens", "must be between 1 and 1,000,000", "OUT_OF_RANGE");
      }
    },
    () => {
      const stop = g.stop ?? [];
      if (stop.length > LIMITS.stopSequences) {
        throw invalidArgument("agent.generation.stop", `has ${stop.length} sequences; at most ${LIMITS.stopSequences}`, "TOO_MANY");
      }
    },
    ...(g.stop ?? []).map((s, i) => () => {
      if (s.length === 0) throw invalidArgument(`agent.generation.stop[${i}]`, "must not be empty", "REQUIRED");
      checkText(`agent.generation.stop[${i}]`, s, LIMITS.stopChars);
    }),
    () => checkContent("agent.prologue", f.prologue, true),
    () => {
      const n = p.max_history_messages ?? 0;
      if (n !== 0 && !(n >= 1 && n <= 1000)) {
        throw invalidArgument("agent.context_policy.max_history_messages", "must be between 1 and 1,000 (0: the default)", "OUT_OF_RANGE");
      }
    },
    () => {
      const n = p.max_input_tokens ?? 0;
      if (n !== 0 && !(n >= 256 && n <= 2_000_000)) {
        throw invalidArgument("agent.context_policy.max_input_tokens", "must be between 256 and 2,000,000 (0: the default)", "OUT_OF_RANGE");
      }
    },
    () => checkMetadata("agent.metadata", f.metadata),
    () => {
      const n = f.knowledge_base_ids.length;
      if (n > KNOWLEDGE_LIMITS.searchKnowledgeBases) {
        throw invalidArgument("agent.knowledge_base_ids", `has ${n} ids; at most ${KNOWLEDGE_LIMITS.searchKnowledgeBases}`, "TOO_MANY");
      }
    },
    () => {
      const n = f.retrieval.top_k ?? 0;
      if (!(Number.isInteger(n) && n >= 0 && n <= KNOWLEDGE_LIMITS.maxTopK)) {
        throw invalidArgument("agent.retrieval.top_k", "must be between 1 and 100 (0: the default, 8)", "OUT_OF_RANGE");
      }
    },
    () => {
      const x = f.retrieval.similarity_threshold ?? 0;
      if (!(Number.isFinite(x) && x >= 0 && x <= 1)) {
        throw invalidArgument("agent.retrieval.similarity_threshold", "must be between 0 and 1", "OUT_OF_RANGE");
      }
    },
    () => {
      const n = f.retrieval.max_context_tokens ?? 0;
      if (!(Number.isInteger(n) && n >= 0 && n <= 1_000_000)) {
        throw invalidArgument("agent.retrieval.max_context_tokens", "must be between 0 and 1,000,000 (0: the default, 4,000)", "OUT_OF_RANGE");
      }
    },
    () => policyIn("agent.concurrency_policy", f.concurrency_policy),
    () => enqueueTimeoutIn("agent.enqueue_timeout", f.enqueue_timeout),
    () => {
      const n = mem.max_items ?? 0;
      if (n !== 0 && !(Number.isInteger(n) && n >= 1 && n <= 100)) {
        throw invalidArgument("agent.memory.max_items", "must be between 1 and 100 (0: the default, 5)", "OUT_OF_RANGE");
      }
    },
    () => {
      const q = mem.min_quality;
      if (q !== undefined && !(Number.isFinite(q) && q >= 0 && q <= 1)) {
        throw invalidArgument("agent.memory.min_quality", "must be between 0 and 1", "OUT_OF_RANGE");
      }
    },
  ];
  checkAll(...checks);
}

/** The update mask's paths, checked against the updatable fields (`*` expands to all of them). */
function maskPaths(mask: FieldMask | undefined): string[] {
  if (!mask || mask.paths.length === 0) throw invalidArgument("update_mask", "is required", "REQUIRED");
  for (const path of mask.paths) {
    if (path !== "*" && !AGENT_PATHS.has(path)) {
      throw invalidArgument("update_mask", `unknown or read-only path "${path}"`, "INVALID_UPDATE_MASK");
    }
  }
  if (mask.paths.includes("*")) return [...AGENT_PATHS].filter((p) => !p.includes("."));
  return mask.paths;
}

/** Applies the request's values of the masked fields onto the stored ones. */
function applyMask(current: AgentFields, req: Agent, paths: readonly string[]): AgentFields {
  const given = fieldsOf(req);
  const next: AgentFields = {
    ...current,
    generation: { ...current.generation },
    context_policy: { ...current.context_policy },
    retrieval: { ...current.retrieval },
    memory: { ...current.memory },
  };
  for (const path of paths) {
    const [head, sub] = path.split(".") as [keyof AgentFields, string | undefined];
    if (sub === undefined) {
      (next as unknown as Record<string, unknown>)[head] = given[head];
      continue;
    }
    const target = next[head] as Record<string, unknown>;
    const value = (given[head] as Record<string, unknown>)[sub];
    if (value === undefined) delete target[sub];
    else target[sub] = value;
  }
  return next;
}

/** The proto Agent of a stored row. */
export function agentToProto(row: AgentRow): Agent {
  const g = row.generation;
  const p = row.context_policy;
  const m = row.memory;
  return create(AgentSchema, {
    id: row.id,
    name: row.name,
    description: row.description,
    instructions: row.instructions,
    model: row.model,
    generation: create(GenerationConfigSchema, {
      ...(g.temperature !== undefined ? { temperature: g.temperature } : {}),
      ...(g.top_p !== undefined ? { topP: g.top_p } : {}),
      ...(g.max_output_tokens !== undefined ? { maxOutputTokens: g.max_output_tokens } : {}),
      stop: g.stop ?? [],
    }),
    prologue: row.prologue,
    contextPolicy: create(ContextPolicySchema, {
      maxHistoryMessages: p.max_history_messages ?? 0,
      maxInputTokens: p.max_input_tokens ?? 0,
    }),
    metadata: structOut(row.metadata),
    knowledgeBaseIds: row.knowledge_base_ids,
    retrieval: create(RetrievalConfigSchema, {
      topK: row.retrieval.top_k ?? 0,
      similarityThreshold: row.retrieval.similarity_threshold ?? 0,
      maxContextTokens: row.retrieval.max_context_tokens ?? 0,
      ...(row.retrieval.cite !== undefined ? { cite: row.retrieval.cite } : {}),
    }),
    concurrencyPolicy: policyToProto(row.concurrency_policy),
    ...(row.enqueue_timeout_ms !== null ? { enqueueTimeout: durationFromMs(row.enqueue_timeout_ms) } : {}),
    memory: create(MemoryConfigSchema, {
      enabled: m.enabled ?? false,
      maxItems: m.max_items ?? 0,
      extract: m.extract ?? false,
      ...(m.min_quality !== undefined ? { minQuality: m.min_quality } : {}),
    }),
    createTime: ts(row.create_time),
    updateTime: ts(row.update_time),
    etag: etagOf(row.version),
  });
}

/** The stored values of agent fields (jsonb columns as JSON text). */
function rowValues(f: AgentFields) {
  const { concurrency_policy, enqueue_timeout, ...rest } = f;
  return {
    ...rest,
    concurrency_policy: policyIn("agent.concurrency_policy", concurrency_policy) ?? null,
    enqueue_timeout_ms: enqueueTimeoutIn("agent.enqueue_timeout", enqueue_timeout) ?? null,
    generation: JSON.stringify(f.generation),
    context_policy: JSON.stringify(f.context_policy),
    metadata: JSON.stringify(f.metadata),
    knowledge_base_ids: JSON.stringify(f.knowledge_base_ids),
    retrieval: JSON.stringify(f.retrieval),
    memory: JSON.stringify(f.memory),
  };
}

/** AgentService: CRUD of the tenant's agents. */
export function createAgentService(deps: ServiceDeps): ServiceImpl<typeof AgentService> {
  const { db, pageTokens } = deps;
  return {
    async createAgent(req, ctx) {
      const { tenantId } = callerOf(ctx);
      if (!req.agent) throw invalidArgument("agent", "is required", "REQUIRED");
      const fields = fieldsOf(req.agent);
      validateAgent(fields);
      fields.knowledge_base_ids = await checkKnowledgeBaseIds(db, tenantId, "agent.knowledge_base_ids", fields.knowledge_base_ids, false);
      const row = await insertAgent(db, { id: newId(), tenant_id: tenantId, ...rowValues(fields) });
      return { agent: agentToProto(row) };
    },

    async getAgent(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("agent_id", req.agentId);
      const row = await findAgent(db, tenantId, id);
      if (!row) throw notFound("agent", id);
      return { agent: agentToProto(row) };
    },

    async listAgents(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const size = pageSize(req.pageSize);
      // The tenant is part of the fingerprint: a token only ever pages the list it came from.
      const query = JSON.stringify(["agents", tenantId]);
      let after: { createTime: string; id: string } | undefined;
      if (req.pageToken !== "") {
        const keyset = pageTokens.decode(query, req.pageToken);
        const [time, id] = keyset;
        if (keyset.length !== 2 || typeof time !== "string" || !CURSOR_TIME.test(time) || typeof id !== "string") {
          throw invalidArgument("page_token", "is not a page token of this query", "INVALID_PAGE_TOKEN");
        }
        after = { createTime: time, id };
      }
      const rows = await listAgents(db, tenantId, size + 1, after);
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      return {
        agents: page.map(agentToProto),
        nextPageToken: rows.length > size && last ? pageTokens.encode(query, [last.cursor, last.id]) : "",
      };
    },

    async updateAgent(req, ctx) {
      const { tenantId } = callerOf(ctx);
      if (!req.agent) throw invalidArgument("agent", "is required", "REQUIRED");
      const agent = req.agent;
      const id = requireId("agent.id", agent.id);
      const paths = maskPaths(req.updateMask);
      const row = await db.transaction().execute(async (tx) => {
        const current = await findAgent(tx, tenantId, id, "update");
        if (!current) throw notFound("agent", id);
        if (agent.etag !== "" && agent.etag !== etagOf(current.version)) throw staleEtag("agent", id);
        const next = applyMask(fieldsOfRow(current), agent, paths);
        validateAgent(next);
        if (paths.includes("knowledge_base_ids")) {
          next.knowledge_base_ids = await checkKnowledgeBaseIds(tx, tenantId, "agent.knowledge_base_ids", next.knowledge_base_ids, false);
        }
        const updated = await updateAgent(tx, tenantId, id, current.version, rowValues(next));
        if (!updated) throw staleEtag("agent", id);
        return updated;
      });
      return { agent: agentToProto(row) };
    },

    async deleteAgent(req, ctx) {
      const { tenantId } = callerOf(ctx);
      const id = requireId("agent_id", req.agentId);
      await db.transaction().execute(async (tx) => {
        const current = await findAgent(tx, tenantId, id, "update");
        if (!current) throw notFound("agent", id);
        if (req.etag !== "" && req.etag !== etagOf(current.version)) throw staleEtag("agent", id);
        if (!req.force) {
          if (await agentHasSessions(tx, tenantId, id)) {
            throw failedPrecondition(
              `agent "${id}" still has sessions; delete them first or set force`,
              "AGENT_HAS_SESSIONS",
              { agent_id: id },
            );
          }
        } else {
          // Locking the sessions keeps an Ask from claiming one between this check and the cascade.
          const sessions = await lockSessions(tx, tenantId, { agentId: id });
          const running = sessions.find((s) => s.ask_running);
          if (running) {
            throw failedPrecondition(
              `session "${running.id}" of agent "${id}" has a running Ask; cancel it first`,
              "ASK_RUNNING",
              { agent_id: id, session_id: running.id, ask_id: running.active_ask_id ?? "" },
            );
          }
        }
        await deleteAgent(tx, tenantId, id);
      });
      return {};
    },
  };
}
