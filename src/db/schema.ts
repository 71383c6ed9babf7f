import type { ColumnType, Generated, Insertable, Selectable, Updateable } from "kysely";

/** A JSON object column. */
export type JsonObject = { [key: string]: JsonValue };
export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;
type Json<T = JsonObject> = ColumnType<T, T | string, T | string>;
type CreatedTime = ColumnType<Date, Date | string | undefined, never>;
type Time = ColumnType<Date, Date | string | undefined, Date | string>;
type NullableTime = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;

export interface TenantTable {
  id: string;
  name: string;
  create_time: CreatedTime;
}

export interface ServerSettingTable {
  key: string;
  value: string;
}

export type ApiKeyRole = "admin" | "service";

export interface ApiKeyTable {
  id: string;
  tenant_id: string;
  name: string;
  /** The first characters of the key, shown by `parley keys list`. */
  prefix: string;
  /** sha256 of the whole key, hex. */
  key_hash: string;
  role: ApiKeyRole;
  create_time: CreatedTime;
  revoke_time: NullableTime;
}

export interface GenerationJson {
  temperature?: number;
  top_p?: number;
  max_output_tokens?: number;
  stop?: string[];
}

export interface ContextPolicyJson {
  max_history_messages?: number;
  max_input_tokens?: number;
}

/** An agent's retrieval settings; absent keys take the defaults. */
export interface RetrievalJson {
  top_k?: number;
  similarity_threshold?: number;
  max_context_tokens?: number;
  cite?: boolean;
}

export type ConcurrencyPolicyText = "reject" | "enqueue" | "interrupt";

/** An agent's memory settings; absent keys take the defaults. */
export interface MemoryConfigJson {
  enabled?: boolean;
  max_items?: number;
  extract?: boolean;
  min_quality?: number;
}

export interface AgentTable {
  id: string;
  tenant_id: string;
  name: string;
  description: Generated<string>;
  instructions: Generated<string>;
  model: Generated<string>;
  generation: Json<GenerationJson>;
  prologue: Generated<string>;
  context_policy: Json<ContextPolicyJson>;
  metadata: Json;
  /** Knowledge bases searched on every turn. */
  knowledge_base_ids: ColumnType<string[], string[] | string | undefined, string[] | string>;
  retrieval: ColumnType<RetrievalJson, RetrievalJson | string | undefined, RetrievalJson | string>;
  memory: ColumnType<MemoryConfigJson, MemoryConfigJson | string | undefined, MemoryConfigJson | string>;
  /** What a second Ask on a busy session does; null: REJECT. */
  concurrency_policy: ColumnType<ConcurrencyPolicyText | null, ConcurrencyPolicyText | null | undefined, ConcurrencyPolicyText | null>;
  /** How long an ENQUEUE Ask waits; null: the default. */
  enqueue_timeout_ms: ColumnType<number | null, number | null | undefined, number | null>;
  version: Generated<number>;
  create_time: CreatedTime;
  update_time: Time;
}

export type SessionStatusText = "active" | "archived";

export interface SessionTable {
  id: string;
  tenant_id: string;
  agent_id: string;
  user_id: string;
  name: string;
  metadata: Json;
  state: Json;
  status: ColumnType<SessionStatusText, SessionStatusText | undefined, SessionStatusText>;
  message_count: Generated<number>;
  last_seq: Generated<number>;
  last_message_time: NullableTime;
  version: Generated<number>;
  create_time: CreatedTime;
  update_time: Time;
  active_ask_id: string | null;
  lease_owner: string | null;
  lease_expire_time: NullableTime;
  /** While ahead, a replica waits on the session and its changes are notified (migration 2026_11_22_010000). */
  watch_expire_time: NullableTime;
}

export type MessageRoleText = "user" | "assistant" | "system" | "tool";
export type MessageStatusText = "complete" | "streaming" | "cancelled" | "failed" | "interrupted";

export interface UsageJson {
  input_tokens: number;
  output_tokens: number;
  total_tokens: number;
}

export interface FeedbackJson {
  rating: "thumbs_up" | "thumbs_down" | null;
  comment: string;
  update_time: string;
}

/** One cited chunk as stored with a message. */
export interface ReferenceChunkJson {
  chunk_id: string;
  content: string;
  document_id: string;
  document_name: string;
  knowledge_base_id: string;
  similarity: number;
  term_similarity: number;
  vector_similarity: number;
  citation: number;
}

/** The references of an answer (RAGFlow's reference.chunks / doc_aggs). */
export interface ReferencesJson {
  chunks: ReferenceChunkJson[];
  doc_aggs: { document_id: string; document_name: string; count: number }[];
}

export interface MessageTable {
  id: string;
  tenant_id: string;
  session_id: string;
  seq: number;
  role: MessageRoleText;
  content: string;
  status: MessageStatusText;
  metadata: Json;
  usage: ColumnType<UsageJson | null, UsageJson | string | null | undefined, UsageJson | string | null>;
  feedback: ColumnType<FeedbackJson | null, FeedbackJson | string | null | undefined, FeedbackJson | string | null>;
  /** The knowledge an assistant answer cites, as the References event carried it. */
  references: ColumnType<ReferencesJson | null, ReferencesJson | string | null | undefined, ReferencesJson | string | null>;
  ask_id: string | null;
  model: Generated<string>;
  create_time: CreatedTime;
  update_time: Time;
}

export interface AppendRequestTable {
  session_id: string;
  request_id: string;
  tenant_id: string;
  message_ids: Json<string[]>;
  /** fingerprint() of the request's messages and expected_last_seq. */
  request_hash: string;
  create_time: CreatedTime;
}

export type AskStatusText = "running" | "completed" | "failed" | "cancelled" | "interrupted";

export interface AskTable {
  id: string;
  tenant_id: string;
  session_id: string;
  status: AskStatusText;
  request_id: string | null;
  /** sha256 of the request's content and options: a reused request_id with other content is rejected. */
  request_hash: string;
  user_message_id: string | null;
  assistant_message_id: string | null;
  model: string;
  store: boolean;
  usage: ColumnType<UsageJson | null, UsageJson | string | null | undefined, UsageJson | string | null>;
  error_code: string | null;
  error_message: string | null;
  /** The replica that runs (or ran) the Ask. */
  owner: string | null;
  create_time: CreatedTime;
  finish_time: NullableTime;
  /** Set by a CancelAsk served on another replica: the running replica's lease renewal stops the Ask. */
  cancel_request_time: ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
}

export interface KnowledgeBaseTable {
  id: string;
  tenant_id: string;
  name: string;
  description: Generated<string>;
  chunk_size: number;
  chunk_overlap: number;
  metadata: Json;
  create_time: CreatedTime;
  update_time: Time;
}

export type DocumentStatusText = "processing" | "ready" | "failed";

export interface DocumentTable {
  id: string;
  tenant_id: string;
  knowledge_base_id: string;
  name: string;
  mime_type: string;
  status: DocumentStatusText;
  error: Generated<string>;
  progress: Generated<number>;
  size_bytes: ColumnType<string, number | string, number | string>;
  chunk_count: Generated<number>;
  metadata: Json;
  ingest_owner: string | null;
  heartbeat_time: NullableTime;
  create_time: CreatedTime;
  update_time: Time;
}

export interface ChunkTable {
  id: string;
  tenant_id: string;
  knowledge_base_id: string;
  document_id: string;
  ordinal: number;
  content: string;
  token_count: number;
  tsv: ColumnType<string, never, never>;
}

/** Exists only where pgvector is available (see the knowledge migration). */
export interface ChunkEmbeddingTable {
  chunk_id: string;
  tenant_id: string;
  knowledge_base_id: string;
  model: string;
  /** pgvector's text form, "[0.1,0.2,…]". */
  embedding: string;
}

/** An Ask waiting for its busy session (ENQUEUE, or INTERRUPT until the cancelled Ask is gone). */
export interface AskQueueTable {
  ask_id: string;
  tenant_id: string;
  session_id: string;
  /** 0: INTERRUPT, 1: ENQUEUE; the queue is ordered by (priority, position). */
  priority: number;
  position: ColumnType<string, never, never>;
  /** The replica whose Ask waits; it renews expire_time. */
  owner: string;
  expire_time: ColumnType<Date, Date | string, Date | string>;
  create_time: CreatedTime;
}

export type MemoryTypeText = "short" | "long";

export interface MemoryTable {
  id: string;
  tenant_id: string;
  type: MemoryTypeText;
  user_id: string;
  /** The session of a short-term memory; null for long-term ones. */
  session_id: string | null;
  content: string;
  quality: ColumnType<number, number | undefined, number>;
  metadata: Json;
  tsv: ColumnType<string, never, never>;
  create_time: CreatedTime;
}

/** Exists only where pgvector is available (see the memory migration). */
export interface MemoryEmbeddingTable {
  memory_id: string;
  tenant_id: string;
  model: string;
  /** pgvector's text form, "[0.1,0.2,…]". */
  embedding: string;
}

/** The `user:` state scope of one user within a tenant. */
export interface UserStateTable {
  tenant_id: string;
  user_id: string;
  state: Json;
  version: Generated<number>;
  update_time: Time;
}

/** The `app:` state scope of one agent. */
export interface AppStateTable {
  tenant_id: string;
  agent_id: string;
  state: Json;
  version: Generated<number>;
  update_time: Time;
}

export interface Database {
  tenants: TenantTable;
  server_settings: ServerSettingTable;
  api_keys: ApiKeyTable;
  agents: AgentTable;
  sessions: SessionTable;
  messages: MessageTable;
  append_requests: AppendRequestTable;
  asks: AskTable;
  ask_queue: AskQueueTable;
  knowledge_bases: KnowledgeBaseTable;
  documents: DocumentTable;
  chunks: ChunkTable;
  chunk_embeddings: ChunkEmbeddingTable;
  memories: MemoryTable;
  memory_embeddings: MemoryEmbeddingTable;
  user_states: UserStateTable;
  app_states: AppStateTable;
}

export type TenantRow = Selectable<TenantTable>;
export type ApiKeyRow = Selectable<ApiKeyTable>;
export type AgentRow = Selectable<AgentTable>;
export type NewAgentRow = Insertable<AgentTable>;
export type AgentUpdate = Updateable<AgentTable>;
export type SessionRow = Selectable<SessionTable>;
export type NewSessionRow = Insertable<SessionTable>;
export type SessionUpdate = Updateable<SessionTable>;
export type MessageRow = Selectable<MessageTable>;
export type NewMessageRow = Insertable<MessageTable>;
export type MessageUpdate = Updateable<MessageTable>;
export type AskRow = Selectable<AskTable>;
export type NewAskRow = Insertable<AskTable>;
export type AskUpdate = Updateable<AskTable>;
export type KnowledgeBaseRow = Selectable<KnowledgeBaseTable>;
export type DocumentRow = Selectable<DocumentTable>;
export type ChunkRow = Selectable<ChunkTable>;
export type MemoryRow = Selectable<MemoryTable>;
