// `npm run bench`: measures Parley against baselines run in the same process tree on the
// same Postgres (raw pg, a bare Connect service on the same server, Google ADK, LangGraph),
// writes bench/results/<time>.json and renders bench/REPORT.md with its charts.
// `npm run bench -- --smoke` (or PARLEY_BENCH_SMOKE=1) runs a tiny configuration in seconds.
import { execFileSync, fork, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem, loadavg, release, platform, arch } from "node:os";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { Command, Option } from "commander";
import pg from "pg";
import { v7 as uuidv7 } from "uuid";
import { createParleyClient, MessageRole, type NodeParleyClient } from "../src/client/node.js";
import { EchoService } from "./echo.js";
import { postgresCpuMicros, postgresDelta, type CpuCounters } from "./cpu.js";
import { newTotals, runLoad, type LoadResult, type LoadTotals, type Operation } from "./load.js";
import { FAST_MODEL, FAST_TOKEN_TEXT, FAST_TOKENS, SLOW_MODEL } from "./models.js";
import { ANSWER_INFO, ANSWER_TEXTS, chatMessage, createAdkPeer, createLangGraphPeer, USER_TEXTS } from "./peers.js";
import { renderReport, type BenchResults, type RunRecord, versionsOf } from "./report.js";
import type { ParentMessage, ServerMessage } from "./server.js";

const benchDir = fileURLToPath(new URL(".", import.meta.url));

/** Sizes of one bench run. */
interface Profile {
  readonly durationMs: number;
  /** Rounds each run of scenarios 1 and 2 is measured in, interleaved with the runs it is compared with. */
  readonly rounds: number;
  /** When set, each measured phase is this many operations instead of durationMs (the smoke run: it must not depend on speed). */
  readonly ops?: number;
  readonly warmupMs: number;
  readonly concurrency: readonly number[];
  readonly askConcurrency: readonly number[];
  readonly history: readonly number[];
  /** Asks per history level (each Ask adds two messages to the session). */
  readonly historyAsks: number;
  readonly flatSessions: number;
  readonly flatPerSession: number;
  readonly streams: number;
  readonly streamMessages: number;
  readonly batch: number;
  readonly peerHistory: readonly number[];
  readonly peerConcurrency: number;
}

const FULL: Profile = {
  durationMs: 4_000,
  rounds: 4,
  warmupMs: 1_000,
  concurrency: [1, 16, 64],
  askConcurrency: [1, 64, 256],
  history: [10, 10_000, 100_000],
  historyAsks: 100,
  flatSessions: 10_000,
  flatPerSession: 100,
  streams: 2_000,
  streamMessages: FAST_TOKENS,
  batch: 100,
  peerHistory: [10, 1_000, 10_000],
  peerConcurrency: 16,
};

const SMOKE: Profile = {
  durationMs: 200,
  rounds: 2,
  ops: 8,
  warmupMs: 50,
  concurrency: [1, 4],
  askConcurrency: [1, 4],
  history: [10, 200],
  historyAsks: 3,
  flatSessions: 20,
  flatPerSession: 10,
  streams: 10,
  streamMessages: 20,
  batch: 10,
  peerHistory: [10, 50],
  peerConcurrency: 2,
};

const program = new Command()
  .name("bench")
  .description("Parley's benchmark: ratios against baselines measured in the same run")
  .option("--smoke", "tiny configuration that runs in seconds (CI)", process.env.PARLEY_BENCH_SMOKE === "1")
  .addOption(
    new Option("--database-url <url>", "Postgres server (a database of its own is created per part and dropped)")
      .env("PARLEY_BENCH_DATABASE_URL")
      .default(process.env.PARLEY_TEST_DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres"),
  )
  .option("--out <dir>", "where the JSON, REPORT.md and the charts go", benchDir)
  .option("--duration <ms>", "measured phase of each run", (v) => Number(v))
  .option("--warmup <ms>", "warm-up of each run", (v) => Number(v))
  .option("--rounds <n>", "rounds the runs of scenarios 1 and 2 are measured in, interleaved with their baselines (default 4)", (v) => Number(v))
  .option("--concurrency <list>", "concurrency levels of scenario 1 and the baselines, e.g. 1,16,64", (v) => v.split(",").map(Number))
  .option("--ask-concurrency <list>", "concurrent Asks of scenario 2, e.g. 1,64,256", (v) => v.split(",").map(Number))
  .option("--streams <n>", "slow Asks scenario 4 tries to hold open (default 2000)", (v) => Number(v))
  .option("--cpu-prof <dir>", "write V8 CPU profiles of the Postgres server process into dir")
  .option("--only <parts>", "comma-separated parts: baselines,s1,s2,s3,s4,s5,peers")
  .option("--no-progress", "no progress bars");
program.parse();
const opts = program.opts<{
  smoke: boolean;
  databaseUrl: string;
  out: string;
  duration?: number;
  warmup?: number;
  rounds?: number;
  cpuProf?: string;
  only?: string;
  concurrency?: number[];
  askConcurrency?: number[];
  streams?: number;
  progress: boolean;
}>();
const base = opts.smoke ? SMOKE : FULL;
const profile: Profile = {
  ...base,
  ...(opts.duration ? { durationMs: opts.duration } : {}),
  ...(opts.warmup !== undefined ? { warmupMs: opts.warmup } : {}),
  ...(opts.rounds ? { rounds: opts.rounds } : {}),
  ...(opts.concurrency ? { concurrency: opts.concurrency } : {}),
  ...(opts.askConcurrency ? { askConcurrency: opts.askConcurrency } : {}),
  ...(opts.streams ? { streams: opts.streams } : {}),
};
const parts = new Set((opts.only ?? "baselines,s1,s2,s3,s4,s5,peers").split(",").map((s) => s.trim()));
const runs: Record<string, RunRecord> = {};
const notes: string[] = [];
const log = (s: string) => process.stderr.write(`${s}\n`);

/** The rounds measured so far of the runs measured in rounds, by id. */
const roundTotals = new Map<string, LoadTotals>();

/**
 * One run, or with `round` one of profile.rounds rounds of it: each round measures 1/rounds of
 * the phase (the first after the full warm-up, the others after a quarter of it) and runs[id]
 * holds all rounds so far. The runs a goal compares are measured round by round in turn
 * (echo, append, get, list, echo, …), so that both sides of a ratio sample the same stretch of
 * the shared machine's load, not two different moments of it.
 */
async function load(
  id: string,
  tags: RunRecord["tags"],
  o: { concurrency: number; ops?: number; durationMs?: number; round?: number | undefined },
  make: (i: number) => Promise<Operation>,
): Promise<LoadResult> {
  const rounds = o.round === undefined ? 1 : profile.rounds;
  let totals = roundTotals.get(id);
  if (!totals || o.round === undefined || o.round === 0) roundTotals.set(id, (totals = newTotals()));
  const ops = o.ops ?? profile.ops;
  const r = await runLoad(
    {
      name: rounds > 1 ? `${id} (${o.round! + 1}/${rounds})` : id,
      concurrency: o.concurrency,
      durationMs: (o.durationMs ?? profile.durationMs) / rounds,
      warmupMs: o.round ? profile.warmupMs / 4 : profile.warmupMs,
      progress: opts.progress,
      counters: cpuCounters,
      ...(ops !== undefined ? { ops: Math.ceil(ops / rounds) } : {}),
    },
    make,
    totals,
  );
  runs[id] = { ...r, name: id, tags };
  if (r.errors > 0 && (o.round === undefined || o.round === rounds - 1)) log(`  ${id}: ${r.errors} errors, first: ${r.firstError}`);
  return r;
}

// ---------------------------------------------------------------- databases

const runId = `parley_bench_${Date.now().toString(36)}`;
const created: string[] = [];

function dbUrl(name: string): string {
  const u = new URL(opts.databaseUrl);
  u.pathname = `/${name}`;
  return u.toString();
}

async function createDatabase(suffix: string): Promise<string> {
  const name = `${runId}_${suffix}`;
  const admin = new pg.Client({ connectionString: opts.databaseUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  created.push(name);
  return dbUrl(name);
}

async function dropDatabases(): Promise<void> {
  const admin = new pg.Client({ connectionString: opts.databaseUrl });
  await admin.connect();
  try {
    for (const name of created) await admin.query(`drop database if exists ${name} with (force)`);
  } finally {
    await admin.end();
  }
}

// ---------------------------------------------------------------- server process

interface BenchServer {
  readonly url: string;
  readonly apiKey: string;
  readonly poolSize: number;
  readonly kind: string;
  readonly client: NodeParleyClient;
  memory(): Promise<Extract<ServerMessage, { type: "memory" }>>;
  /** CPU microseconds the server process has used (no GC forced, unlike memory()). */
  cpu(): Promise<number>;
  stop(): Promise<void>;
}

let builtServer: string | undefined;
/** The bench server that is up (one at a time), whose CPU the runs count. */
let current: BenchServer | undefined;

async function cpuCounters(): Promise<CpuCounters> {
  const own = process.cpuUsage();
  const server = current ? await current.cpu() : 0;
  return { client: own.user + own.system, server, postgres: postgresCpuMicros() };
}

/**
 * The bench server compiled by tsc (tsconfig.bench.json: src, gen and bench/server.ts into
 * dist/bench-server), so the server measured runs the JavaScript `npm start` runs. Under tsx's
 * loader every named function would be renamed with Object.defineProperty (esbuild's keepNames),
 * which turns it into a slower dictionary-mode object: about 3 KB more per open Ask.
 */
function benchServerScript(): string {
  if (builtServer === undefined) {
    const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
    execFileSync(process.execPath, [tsc, "-p", join(benchDir, "..", "tsconfig.bench.json")], { stdio: "inherit" });
    builtServer = join(benchDir, "..", "dist", "bench-server", "bench", "server.js");
  }
  return builtServer;
}

async function startBenchServer(databaseUrl: string, cpuProfDir?: string): Promise<BenchServer> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(PARLEY_|DATABASE_URL$|PORT$|HOST$|OPENAI_|ANTHROPIC_)/.test(k)) env[k] = v;
  }
  const child: ChildProcess = fork(benchServerScript(), [], {
    execArgv: [
      "--expose-gc",
      ...(cpuProfDir ? ["--cpu-prof", `--cpu-prof-dir=${cpuProfDir}`] : []),
    ],
    env: { ...env, DATABASE_URL: databaseUrl, PARLEY_LOG_LEVEL: "warn" },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = await new Promise<Extract<ServerMessage, { type: "ready" }>>((resolve, reject) => {
    child.on("message", (m: ServerMessage) => {
      if (m.type === "ready") resolve(m);
    });
    void exited.then((code) => reject(new Error(`bench server exited with ${code} before it was ready`)));
  });
  const client = createParleyClient({ baseUrl: ready.url, apiKey: ready.apiKey, transport: "grpc" });
  function ask<T extends "memory" | "cpu">(type: T): Promise<Extract<ServerMessage, { type: T }>> {
    return new Promise((resolve) => {
      const on = (m: ServerMessage) => {
        if (m.type !== type) return;
        child.off("message", on);
        resolve(m as Extract<ServerMessage, { type: T }>);
      };
      child.on("message", on);
      child.send({ type } satisfies ParentMessage);
    });
  }
  const server: BenchServer = {
    url: ready.url,
    apiKey: ready.apiKey,
    poolSize: ready.poolSize,
    kind: ready.databaseKind,
    client,
    memory: () => ask("memory"),
    cpu: async () => (await ask("cpu")).cpuMicros,
    async stop() {
      if (current === server) current = undefined;
      client.close();
      child.send({ type: "stop" } satisfies ParentMessage);
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
  current = server;
  return server;
}

// ---------------------------------------------------------------- Parley helpers

const CONTENT = "a user turn of the benchmark, about as long as a short chat message";

async function newAgent(client: NodeParleyClient, model: string): Promise<string> {
  const res = await client.agents.createAgent({ agent: { name: `bench ${model}`, model, instructions: "Answer." } });
  return res.agent!.id;
}

async function newSession(client: NodeParleyClient, agentId: string, userId = `user-${uuidv7()}`): Promise<string> {
  const res = await client.sessions.createSession({ session: { agentId, userId, name: "bench" } });
  return res.session!.id;
}

/** Adds `n` messages to a session directly in SQL (seeding history is not what is measured). */
async function seedHistory(pool: pg.Pool, sessionId: string, n: number): Promise<void> {
  await pool.query(
    `insert into messages (id, tenant_id, session_id, seq, role, content, status)
     select gen_random_uuid(), s.tenant_id, s.id, s.last_seq + g,
            case when g % 2 = 1 then 'user' else 'assistant' end, $3, 'complete'
     from sessions s, generate_series(1, $2::int) g where s.id = $1`,
    [sessionId, n, CONTENT],
  );
  await pool.query(
    `update sessions set last_seq = last_seq + $2, message_count = message_count + $2, last_message_time = now() where id = $1`,
    [sessionId, n],
  );
}

function askOp(client: NodeParleyClient, sessionId: string): Operation {
  return async (rec) => {
    const t0 = performance.now();
    let first = -1;
    let chars = 0;
    for await (const ev of client.ask({ sessionId, content: CONTENT })) {
      const c = ev.event.case;
      if (c === "started") rec.mark("started", performance.now() - t0);
      if (c === "textDelta") {
        if (first < 0) first = performance.now() - t0;
        chars += ev.event.value.text.length;
      } else if (c === "failed" || c === "cancelled" || c === "interrupted") {
        throw new Error(`Ask ended as ${c}`);
      }
    }
    // The server may coalesce deltas into fewer events (askDeltaCoalesceMs): count the model's tokens delivered.
    const deltas = chars / FAST_TOKEN_TEXT.length;
    if (deltas !== FAST_TOKENS) throw new Error(`Ask delivered ${deltas} tokens, not ${FAST_TOKENS}`);
    // The model emits its first token as soon as it is called: its own time to first token is 0.
    rec.mark("ttft", first);
    return deltas;
  };
}

function listOp(client: NodeParleyClient, sessionId: string): Operation {
  return async () => {
    const res = await client.messages.listMessages({ sessionId, descending: true, pageSize: 20 });
    if (res.messages.length === 0) throw new Error("ListMessages returned nothing");
  };
}

function appendOp(client: NodeParleyClient, sessionId: string, n = 1): Operation {
  const messages = Array.from({ length: n }, () => ({ role: MessageRole.USER, content: CONTENT }));
  return async () => {
    await client.messages.appendMessages({ sessionId, messages });
    return n;
  };
}

// ---------------------------------------------------------------- parts

/** The bare unary echo at concurrency c. */
async function echoUnary(
  server: BenchServer,
  c: number,
  { id = `echo.unary.c${c}`, op = "echo", round }: { id?: string; op?: string; round?: number } = {},
): Promise<void> {
  const echo = createClient(EchoService, server.client.transport);
  await load(id, { system: "connect", op, concurrency: c }, { concurrency: c, round }, async () => async () => {
    await echo.echo({ text: CONTENT });
  });
}

/** The bare server stream of profile.streamMessages small messages at concurrency c. */
async function echoStream(server: BenchServer, c: number, round?: number): Promise<void> {
  const echo = createClient(EchoService, server.client.transport);
  await load(`echo.stream.c${c}`, { system: "connect", op: "stream", concurrency: c }, { concurrency: c, round }, async () => async (rec) => {
    const t0 = performance.now();
    let n = 0;
    for await (const m of echo.stream({ text: "tok ", count: profile.streamMessages })) {
      // Time to the first message: what the framework alone takes to open a stream and deliver one.
      if (n === 0) rec.mark("ttft", performance.now() - t0);
      n += m.text.length > 0 ? 1 : 0;
    }
    return n;
  });
}

async function baselines(server: BenchServer, pool: pg.Pool, agentId: string): Promise<void> {
  // The echoes that scenarios 1 and 2 are compared with run right before those scenarios' runs
  // (same machine load, which drifts on a shared machine); here only when those parts do not run.
  if (!parts.has("s1")) for (const c of profile.concurrency) await echoUnary(server, c);
  // At the highest Ask concurrency (the deltas/s goal compares the two), and at 16 in a full run.
  if (!opts.smoke) await echoStream(server, 16);
  if (!parts.has("s2")) await echoStream(server, profile.askConcurrency.at(-1)!);
  // The database ceiling: the statements Parley's repos issue, straight through pg with the same pool size.
  for (const c of profile.concurrency) {
    await load(`pg.insert.c${c}`, { system: "pg", op: "insert", concurrency: c }, { concurrency: c }, async () => {
      const sessionId = await newSession(server.client, agentId);
      const { rows } = await pool.query<{ tenant_id: string }>("select tenant_id from sessions where id = $1", [sessionId]);
      const tenantId = rows[0]!.tenant_id;
      let seq = 0;
      return async () => {
        seq++;
        await pool.query(
          `insert into messages (id, tenant_id, session_id, seq, role, content, status, metadata, model)
           values ($1, $2, $3, $4, 'user', $5, 'complete', '{}', '') returning *`,
          [uuidv7(), tenantId, sessionId, seq, CONTENT],
        );
      };
    });
  }
  for (const c of profile.concurrency) {
    await load(`pg.select.c${c}`, { system: "pg", op: "select", concurrency: c }, { concurrency: c }, async () => {
      const sessionId = await newSession(server.client, agentId);
      await seedHistory(pool, sessionId, 40);
      const { rows } = await pool.query<{ tenant_id: string }>("select tenant_id from sessions where id = $1", [sessionId]);
      const tenantId = rows[0]!.tenant_id;
      return async () => {
        await pool.query(
          "select * from messages where session_id = $1 and tenant_id = $2 order by seq desc limit 20",
          [sessionId, tenantId],
        );
      };
    });
  }
}

async function scenario1(server: BenchServer, agentId: string, backend: string, pool?: pg.Pool): Promise<void> {
  const p = `parley${backend === "pglite" ? ".pglite" : ""}`;
  const tags = (op: string, c: number) => ({ system: "parley", backend, op, concurrency: c });
  const readSessions: string[] = [];
  async function readSession(i: number): Promise<string> {
    while (readSessions.length <= i) {
      const id = await newSession(server.client, agentId);
      if (pool) await seedHistory(pool, id, 40);
      else await appendOp(server.client, id, 40)({ mark() {} });
      readSessions.push(id);
    }
    return readSessions[i]!;
  }
  // One concurrency level at a time, in rounds: the bare echo (Postgres backend), then each
  // operation, again and again, so that the runs compared in the goals see the same machine load.
  for (const c of profile.concurrency) {
    for (let round = 0; round < profile.rounds; round++) {
      if (backend === "postgres") await echoUnary(server, c, { round });
      await load(`${p}.append.c${c}`, tags("append", c), { concurrency: c, round }, async () =>
        appendOp(server.client, await newSession(server.client, agentId)),
      );
      await load(`${p}.get.c${c}`, tags("get", c), { concurrency: c, round }, async (i) => {
        const sessionId = await readSession(i);
        return async () => {
          await server.client.sessions.getSession({ sessionId });
        };
      });
      await load(`${p}.list.c${c}`, tags("list", c), { concurrency: c, round }, async (i) =>
        listOp(server.client, await readSession(i)),
      );
    }
  }
  if (backend === "postgres") {
    const c = profile.concurrency.includes(16) ? 16 : profile.concurrency.at(-1)!;
    await load(`${p}.append-batch.c${c}`, { ...tags("append-batch", c), batch: profile.batch }, { concurrency: c }, async () =>
      appendOp(server.client, await newSession(server.client, agentId), profile.batch),
    );
  }
}

async function scenario2(server: BenchServer, agentId: string): Promise<void> {
  const top = profile.askConcurrency.at(-1)!;
  for (const c of profile.askConcurrency) {
    // The baselines the Asks at c are compared with, in rounds with them (same machine load):
    // the echo's p50 (overhead goal), and at the top concurrency the bare stream (deltas/s goal).
    // Each round's Asks run in new sessions.
    for (let round = 0; round < profile.rounds; round++) {
      if (c > 1) await echoUnary(server, c, { id: `echo.unary.ask.c${c}`, op: "echo-ask", round });
      // At c=1 the bare stream's time to its first message, for context (the c=1 goal is absolute).
      if (c === top || c === 1) await echoStream(server, c, round);
      // At high concurrency one Ask takes seconds: a longer phase so that many complete inside it.
      const durationMs = c > 16 ? profile.durationMs * 3 : profile.durationMs;
      await load(`parley.ask.c${c}`, { system: "parley", op: "ask", concurrency: c }, { concurrency: c, durationMs, round }, async () =>
        askOp(server.client, await newSession(server.client, agentId)),
      );
    }
  }
}

async function scenario3(url: string): Promise<void> {
  const server = await startBenchServer(url);
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  try {
    const agentId = await newAgent(server.client, FAST_MODEL);
    const sessions = new Map<number, string>();
    for (const h of profile.history) {
      const id = await newSession(server.client, agentId);
      await seedHistory(pool, id, h);
      sessions.set(h, id);
    }
    await settleAfterSeeding(pool);
    async function measure(suffix: string, h: number): Promise<void> {
      const id = sessions.get(h)!;
      const tags = { system: "parley", history: h, table: suffix === "" ? "empty" : "1M-other" };
      await load(`parley.history.list.h${h}${suffix}`, { ...tags, op: "list", concurrency: 1 }, { concurrency: 1 }, async () =>
        listOp(server.client, id),
      );
      await load(
        `parley.history.ask.h${h}${suffix}`,
        { ...tags, op: "ask", concurrency: 1 },
        { concurrency: 1, ops: profile.historyAsks },
        async () => askOp(server.client, id),
      );
    }
    for (const h of profile.history) await measure("", h);
    // The flat-table check: the smallest session again, with many messages of other users in the table.
    const t0 = performance.now();
    const { rows } = await pool.query<{ tenant_id: string }>("select tenant_id from sessions where id = $1", [
      sessions.get(profile.history[0]!)!,
    ]);
    await pool.query(
      `insert into sessions (id, tenant_id, agent_id, user_id, name, message_count, last_seq)
       select gen_random_uuid(), $1, $2, 'other-' || g, 'other', $4, $4 from generate_series(1, $3::int) g`,
      [rows[0]!.tenant_id, agentId, profile.flatSessions, profile.flatPerSession],
    );
    await pool.query(
      `insert into messages (id, tenant_id, session_id, seq, role, content, status)
       select gen_random_uuid(), s.tenant_id, s.id, g, case when g % 2 = 1 then 'user' else 'assistant' end, $1, 'complete'
       from sessions s, generate_series(1, $2::int) g where s.user_id like 'other-%'`,
      [CONTENT, profile.flatPerSession],
    );
    // Measured once Postgres has written out what the seeding dirtied: otherwise the checkpoint,
    // autovacuum and first readers' hint-bit writes of a million fresh rows fall into the runs.
    await settleAfterSeeding(pool);
    log(`  seeded ${profile.flatSessions * profile.flatPerSession} messages of other users in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    await measure(".full", profile.history[0]!);
  } finally {
    await pool.end();
    await server.stop();
  }
}

/**
 * Scenario 4: profile.streams bare Connect streams, then as many slow Asks (60 s answers), each
 * set held open by holdStreams; the Asks' figures at the top level, the bare ones as `bare_*`.
 */
async function scenario4(server: BenchServer, agentId: string): Promise<Record<string, number>> {
  const n = profile.streams;
  const sessions: string[] = [];
  for (let i = 0; i < n; i += 50) {
    sessions.push(...(await Promise.all(Array.from({ length: Math.min(50, n - i) }, () => newSession(server.client, agentId)))));
  }
  // The framework's own share, first: as many bare Connect server streams on the same server, each
  // sending the slow model's token as often (a small message every 100 ms), held open the same way.
  const echo = createClient(EchoService, server.client.transport);
  const bare = await holdStreams(server, n, async function* (_i, signal) {
    for await (const m of echo.stream({ text: FAST_TOKEN_TEXT, count: 600, intervalMs: 100 }, { signal })) {
      if (m.text.length > 0) yield;
    }
  });
  // The bare streams' ends settle before the Asks' "before" is read.
  await new Promise((r) => setTimeout(r, 2_000));
  const parley = await holdStreams(server, n, async function* (i, signal) {
    for await (const ev of server.client.ask({ sessionId: sessions[i]!, content: CONTENT }, { signal })) {
      if (ev.event.case === "textDelta") yield;
    }
  });
  return { ...parley, ...Object.fromEntries(Object.entries(bare).map(([k, v]) => [`bare_${k}`, v])) };
}

/**
 * Opens n streams (each an iterable that yields once per token) in waves of 200, each wave
 * waiting (up to 30 s) for its first tokens, until all are open or a wave does not fully start;
 * then reads the server's memory while every started stream still streams, and divides by the
 * streams open at that moment.
 */
async function holdStreams(
  server: BenchServer,
  n: number,
  stream: (i: number, signal: AbortSignal) => AsyncIterable<void>,
): Promise<Record<string, number>> {
  const wave = Math.min(200, n);
  const before = await server.memory();
  const abort = new AbortController();
  let started = 0;
  let ended = 0;
  let failed = 0;
  const open = (i: number, onFirst: () => void) =>
    (async () => {
      let first = true;
      try {
        for await (const _ of stream(i, abort.signal)) {
          if (first) {
            first = false;
            started++;
            onFirst();
          }
        }
      } catch {
        if (!abort.signal.aborted) failed++;
      } finally {
        if (!first) ended++;
        onFirst();
      }
    })();
  const streams: Promise<void>[] = [];
  for (let i = 0; i < n; i += wave) {
    const size = Math.min(wave, n - i);
    let settled = 0;
    const waveStarted = started;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 30_000);
      const onFirst = () => {
        if (++settled === size) {
          clearTimeout(timer);
          resolve();
        }
      };
      for (let j = i; j < i + size; j++) streams.push(open(j, onFirst));
    });
    if (started - waveStarted < size) break;
  }
  // Let a few tokens flow through every stream before measuring; the CPU both processes use
  // meanwhile (in cores) tells whether the open streams are bound by the machine.
  const cpuFrom = await server.memory();
  const pgFrom = postgresCpuMicros();
  const clientFrom = process.cpuUsage();
  const windowFrom = performance.now();
  await new Promise((r) => setTimeout(r, 1_000));
  const during = await server.memory();
  const clientCpu = process.cpuUsage(clientFrom);
  const windowMicros = (performance.now() - windowFrom) * 1000;
  const pgUsed = postgresDelta(pgFrom, postgresCpuMicros());
  const openNow = started - ended;
  abort.abort();
  await Promise.all(streams);
  const heap = (m: typeof before) => m.heapUsed + m.external + m.arrayBuffers;
  return {
    streams: n,
    started,
    open: openNow,
    failed,
    rssBefore: before.rss,
    rssDuring: during.rss,
    heapBefore: heap(before),
    heapDuring: heap(during),
    bytesPerStreamHeap: (heap(during) - heap(before)) / Math.max(1, openNow),
    bytesPerStreamRss: (during.rss - before.rss) / Math.max(1, openNow),
    serverCores: (during.cpuMicros - cpuFrom.cpuMicros) / windowMicros,
    clientCores: (clientCpu.user + clientCpu.system) / windowMicros,
    ...(pgUsed !== undefined ? { postgresCores: pgUsed / windowMicros } : {}),
  };
}

/** Parley's answer metadata: what the model reported, as peers.ts' ADK and LangGraph answers carry it. */
const PEER_ANSWER_METADATA = {
  model: `openai:${ANSWER_INFO.model}`,
  finish_reason: ANSWER_INFO.finishReason,
  usage: {
    input_tokens: ANSWER_INFO.inputTokens,
    output_tokens: ANSWER_INFO.outputTokens,
    total_tokens: ANSWER_INFO.inputTokens + ANSWER_INFO.outputTokens,
  },
};

/** Adds `turns` turns (peers.ts' user message and answer each) to a session directly in SQL. */
async function seedTurns(pool: pg.Pool, sessionId: string, turns: number): Promise<void> {
  await pool.query(
    `insert into messages (id, tenant_id, session_id, seq, role, content, status, metadata)
     select gen_random_uuid(), s.tenant_id, s.id, s.last_seq + g,
            case when g % 2 = 1 then 'user' else 'assistant' end,
            case when g % 2 = 1 then ($3::text[])[1 + ((g - 1) / 2) % $5::int] else ($4::text[])[1 + ((g - 1) / 2) % $5::int] end,
            'complete',
            case when g % 2 = 1 then '{}'::jsonb else $6::jsonb end
     from sessions s, generate_series(1, $2::int) g where s.id = $1`,
    [sessionId, 2 * turns, USER_TEXTS, ANSWER_TEXTS, USER_TEXTS.length, JSON.stringify(PEER_ANSWER_METADATA)],
  );
  await pool.query(
    `update sessions set last_seq = last_seq + $2, message_count = message_count + $2, last_message_time = now() where id = $1`,
    [sessionId, 2 * turns],
  );
}

/** AppendMessages of the conversation's next message (the first is message `first`), user and answer in turn. */
function peerAppendOp(client: NodeParleyClient, sessionId: string, first: number): Operation {
  let i = first;
  return async () => {
    const m = chatMessage(i++);
    const message =
      m.role === "user"
        ? { role: MessageRole.USER, content: m.text }
        : { role: MessageRole.ASSISTANT, content: m.text, metadata: PEER_ANSWER_METADATA };
    await client.messages.appendMessages({ sessionId, messages: [message] });
  };
}

/** One side of a peer comparison at one history length: Parley, ADK or LangGraph. */
interface PeerSide {
  readonly id: string;
  readonly tags: RunRecord["tags"];
  /** A worker's operation, with its own session seeded to the history length. */
  readonly make: () => Promise<Operation>;
  /** The side's database after its bulk seeding: vacuumed and analyzed. */
  readonly settle?: () => Promise<void>;
  /** Called when the side cannot run (its workers failed to set up): the comparison goes on without it. */
  readonly fail?: (err: unknown) => void;
}

/**
 * The runs of one peer comparison (the same operation on Parley and the peers). Each side first
 * sets up its workers (each seeded, then the side's database settled) and runs its operation once
 * on every worker, all at the same time: a warm-up round that also times one round. The sides
 * whose round is short (under half a phase) are then measured in profile.rounds rounds taken in
 * turn (Parley, ADK, LangGraph, Parley, …), so that the ratios compare the same stretch of the
 * machine's load. A slower side is measured on its own, for at least two of its rounds, or for
 * one more round when a round takes over 30 s (LangGraph's and ADK's operations at long
 * histories take seconds), to bound the run.
 */
async function peerRuns(sides: readonly PeerSide[]): Promise<void> {
  const c = profile.peerConcurrency;
  const ready: { side: PeerSide; ops: Operation[]; round: number }[] = [];
  for (const side of sides) {
    let ops: Operation[];
    try {
      ops = await Promise.all(Array.from({ length: c }, () => side.make()));
      await side.settle?.();
    } catch (err) {
      if (!side.fail) throw err;
      side.fail(err);
      continue;
    }
    const t0 = performance.now();
    // A failing operation fails in the measured phase too, where runLoad counts it.
    await Promise.allSettled(ops.map((op) => op({ mark() {} })));
    ready.push({ side, ops, round: performance.now() - t0 });
  }
  const quick = ready.filter((x) => x.round <= profile.durationMs / 2 || profile.ops !== undefined);
  for (let round = 0; round < profile.rounds; round++) {
    for (const { side, ops } of quick) {
      await load(side.id, side.tags, { concurrency: c, round }, async (i) => ops[i]!);
    }
  }
  for (const { side, ops, round } of ready.filter((x) => !quick.includes(x))) {
    if (round > 30_000) {
      notes.push(`\`${side.id}\`: measured for one round of ${c} operations (its warm-up round took ${(round / 1000).toFixed(0)} s).`);
      await load(side.id, side.tags, { concurrency: c, ops: c }, async (i) => ops[i]!);
      continue;
    }
    const durationMs = Math.max(profile.durationMs, Math.ceil(2 * round));
    notes.push(`\`${side.id}\`: measured on its own for ${(durationMs / 1000).toFixed(0)} s, two rounds of its ${(round / 1000).toFixed(1)} s warm-up round.`);
    await load(side.id, side.tags, { concurrency: c, durationMs }, async (i) => ops[i]!);
  }
}

/** After bulk seeding (or scenario 1's writes): VACUUM ANALYZE of the written tables, then a CHECKPOINT (the empty-table runs get the same). */
async function settleAfterSeeding(pool: pg.Pool): Promise<void> {
  await pool.query("vacuum analyze messages");
  await pool.query("vacuum analyze sessions");
  try {
    await pool.query("checkpoint");
  } catch (err) {
    // CHECKPOINT needs superuser or pg_checkpoint; without it the runs still happen, noted.
    const note = `CHECKPOINT after seeding was refused (${(err as Error).message}): scenarios 2 and 3 ran without it.`;
    if (!notes.includes(note)) notes.push(note);
  }
}

/** VACUUM ANALYZE of a whole database (outside any transaction). */
async function vacuumAnalyze(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query("vacuum analyze");
  } finally {
    await client.end();
  }
}

async function peers(parleyServer: BenchServer, parleyPool: pg.Pool, agentId: string): Promise<BenchResults["peers"]> {
  const c = profile.peerConcurrency;
  const settleParley = async () => {
    await parleyPool.query("vacuum analyze messages");
    await parleyPool.query("vacuum analyze sessions");
  };
  const status: BenchResults["peers"] = {};
  type Peer = Awaited<ReturnType<typeof createAdkPeer>> | Awaited<ReturnType<typeof createLangGraphPeer>>;
  const open: { name: "adk" | "langgraph"; url: string; peer: Peer }[] = [];
  const failed = (name: "adk" | "langgraph") => (err: unknown) => {
    const error = err instanceof Error ? err.message : String(err);
    status[name] = { status: "failed", error };
    log(`${name === "adk" ? "ADK" : "LangGraph"} failed: ${error}`);
    const i = open.findIndex((p) => p.name === name);
    if (i >= 0) void open.splice(i, 1)[0]!.peer.close().catch(() => {});
  };
  for (const [name, create] of [
    ["adk", createAdkPeer],
    ["langgraph", createLangGraphPeer],
  ] as const) {
    try {
      const url = await createDatabase(name);
      open.push({ name, url, peer: await create(url) });
      status[name] = { status: "ok" };
    } catch (err) {
      failed(name)(err);
    }
  }
  try {
    // Parley and each peer at the same history lengths (turns) and concurrency, with the same
    // messages (bench/peers.ts), run by run in turn for the side-by-side ratios.
    for (const h of profile.peerHistory) {
      const seeded = async () => {
        const id = await newSession(parleyServer.client, agentId);
        if (h > 0) await seedTurns(parleyPool, id, h);
        return id;
      };
      for (const op of ["append", "load"] as const) {
        const sides: PeerSide[] = [
          {
            id: `parley.peer.${op}.h${h}`,
            tags: { system: "parley", op, history: h, concurrency: c },
            make: async () => (op === "append" ? peerAppendOp(parleyServer.client, await seeded(), 2 * h) : listOp(parleyServer.client, await seeded())),
            settle: settleParley,
          },
          ...open.map(({ name, url, peer }): PeerSide => ({
            id: `${name}.${op}.h${h}`,
            tags: { system: name, op, history: h, concurrency: c },
            make: () => (op === "append" ? peer.appendWorker(h) : peer.loadWorker(h)),
            settle: () => vacuumAnalyze(url),
            fail: failed(name),
          })),
        ];
        await peerRuns(sides);
      }
    }
    const h = profile.peerHistory[0]!;
    const adk = open.find((p) => p.name === "adk");
    await peerRuns([
      {
        id: "parley.peer.list-sessions",
        tags: { system: "parley", op: "list-sessions", history: h, concurrency: c },
        make: async () => {
          const userId = `user-${uuidv7()}`;
          await newSession(parleyServer.client, agentId, userId);
          return async () => {
            await parleyServer.client.sessions.listSessions({ userId });
          };
        },
      },
      ...(adk && "listWorker" in adk.peer
        ? [
            {
              id: "adk.list-sessions",
              tags: { system: "adk", op: "list-sessions", history: h, concurrency: c },
              make: () => (adk.peer as Awaited<ReturnType<typeof createAdkPeer>>).listWorker(h),
              fail: failed("adk"),
            },
          ]
        : []),
    ]);
  } finally {
    for (const { peer } of open) await peer.close().catch(() => {});
  }
  return status;
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const startedAt = new Date();
  const loadBefore = loadavg();
  log(`bench ${opts.smoke ? "(smoke) " : ""}on ${opts.databaseUrl.replace(/\/\/[^@]*@/, "//…@")}, load ${loadBefore.map((l) => l.toFixed(2)).join(" ")}`);
  let memory: Record<string, number> | undefined;
  let peerStatus: BenchResults["peers"] = {};
  let poolSize = 0;
  let postgresVersion = "";
  try {
    const mainUrl = await createDatabase("main");
    const server = await startBenchServer(mainUrl, opts.cpuProf);
    poolSize = server.poolSize;
    const pool = new pg.Pool({ connectionString: mainUrl, max: server.poolSize });
    postgresVersion = (await pool.query<{ v: string }>("select current_setting('server_version') as v")).rows[0]!.v;
    try {
      const fast = await newAgent(server.client, FAST_MODEL);
      if (parts.has("baselines")) await baselines(server, pool, fast);
      if (parts.has("s1")) await scenario1(server, fast, "postgres", pool);
      if (parts.has("s2")) {
        // Scenario 1 leaves tens of thousands of fresh rows and dead session versions behind: without
        // this, autovacuum and the checkpoint of that write burst run during the Asks at c=1.
        if (parts.has("s1") || parts.has("baselines")) await settleAfterSeeding(pool);
        await scenario2(server, fast);
      }
      if (parts.has("peers")) peerStatus = await peers(server, pool, fast);
    } finally {
      await pool.end();
      await server.stop();
    }
    if (parts.has("s4")) {
      // A server process and a database of its own: the heap the earlier scenarios left behind
      // (finished Asks' events kept for resumption, caches) is not scenario 4's to carry, and its
      // garbage collection would take CPU from the 2,000 streams.
      const streams = await startBenchServer(await createDatabase("streams"), opts.cpuProf);
      try {
        memory = await scenario4(streams, await newAgent(streams.client, SLOW_MODEL));
      } finally {
        await streams.stop();
      }
    }
    if (parts.has("s3")) await scenario3(await createDatabase("history"));
    if (parts.has("s5")) {
      const lite = await startBenchServer("memory://");
      try {
        await scenario1(lite, await newAgent(lite.client, FAST_MODEL), "pglite");
      } finally {
        await lite.stop();
      }
    }
  } finally {
    await dropDatabases().catch((err: unknown) => log(`could not drop the bench databases: ${String(err)}`));
  }
  const results: BenchResults = {
    meta: {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
      smoke: opts.smoke,
      profile: { ...profile },
      machine: {
        cpus: cpus().length,
        cpuModel: cpus()[0]?.model ?? "unknown",
        memoryGiB: Math.round(totalmem() / 2 ** 30),
        os: `${platform()} ${release()} ${arch()}`,
        loadBefore,
        loadAfter: loadavg(),
      },
      versions: { ...versionsOf(), postgres: postgresVersion },
      poolSize,
      notes,
    },
    runs,
    peers: peerStatus,
    ...(memory ? { memory } : {}),
  };
  mkdirSync(join(opts.out, "results"), { recursive: true });
  const name = opts.smoke ? "smoke.json" : `${startedAt.toISOString().replace(/[:.]/g, "-")}.json`;
  const file = join(opts.out, "results", name);
  writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
  await renderReport(results, opts.out, join("results", name));
  log(`wrote ${file}, ${join(opts.out, "REPORT.md")}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
