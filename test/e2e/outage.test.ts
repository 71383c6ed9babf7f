import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { AskStatus, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import type { ParleyClient } from "../../src/client/core.js";
import { createParleyClient } from "../../src/client/node.js";
import { backends, createTestDatabase, testRedisUrl, type TestDatabase } from "../helpers/databases.js";
import { readUntilDeltas } from "../helpers/ask-stream.js";
import { errorOf, reasonOf } from "../helpers/errors.js";
import { startFakeOpenAI, type FakeOpenAI } from "../helpers/fake-openai.js";
import { spawnCli, type CliProcess } from "../helpers/server.js";
import { freePort, startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js";

// Outages of the infrastructure under two server processes: a PRIVATE redis-server
// (never the shared one) stopped and started again, and Postgres made unreachable
// through a TCP proxy in front of it.
const enabled = backends().includes("postgres") && testRedisUrl() !== undefined;

const TOKENS = Array.from({ length: 40 }, (_, i) => `t${i} `);
const FULL = TOKENS.join("");

const textOf = (events: AskEvent[]) => events.map((e) => (e.event.case === "textDelta" ? e.event.value.text : "")).join("");

async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 45_000,
  context: () => string = () => "",
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    const v = await check().catch((err: unknown) => {
      lastError = err;
      return undefined;
    });
    if (v !== undefined) return v;
    // What the check last threw, if anything, tells a stuck state from a failing call.
    if (Date.now() > end) {
      throw new Error(`${what}: not within ${timeoutMs} ms (last error: ${String(lastError ?? "none")})${context()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.runIf(enabled)("outages: Redis and Postgres going away under two replicas", () => {
  let fake: FakeOpenAI;
  let database: TestDatabase;
  let pgProxy: TcpProxy;
  let redisPort: number;
  let redis: ChildProcess | undefined;
  const dirs: string[] = [];
  const replicas: Array<{ p: CliProcess; url: string; client: ParleyClient }> = [];
  let agentId: string;

  async function startRedis(): Promise<void> {
    redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: "ignore",
    });
    const probe = new Redis(redisPort, "127.0.0.1", { lazyConnect: true, retryStrategy: () => 50, maxRetriesPerRequest: 0 });
    probe.on("error", () => {});
    try {
      await eventually("private redis-server answers", async () => ((await probe.ping()) === "PONG" ? true : undefined));
    } finally {
      probe.disconnect();
    }
  }

  async function stopRedis(): Promise<void> {
    const r = redis!;
    redis = undefined;
    const exited = new Promise((resolve) => r.once("exit", resolve));
    r.kill("SIGKILL");
    await exited;
  }

  /** Each replica's exit status and the end of its stderr, for a step that timed out. */
  const replicaState = () =>
    replicas
      .map((r, i) => `\nreplica ${i}: exit ${r.p.child.exitCode ?? r.p.child.signalCode ?? "none (running)"}; stderr: ${r.p.stderr().slice(-2_000)}`)
      .join("");

  async function readyz(url: string): Promise<{ http: number; body: { status: string; redis?: { reachable: boolean } } }> {
    const res = await fetch(`${url}/readyz`);
    return { http: res.status, body: (await res.json()) as never };
  }

  async function newSession(c: ParleyClient): Promise<string> {
    const { session } = await c.sessions.createSession({ session: { agentId, userId: "outage" } });
    return session!.id;
  }

  async function askToEnd(c: ParleyClient, sessionId: string): Promise<AskEvent[]> {
    const out: AskEvent[] = [];
    for await (const r of c.sessions.ask({ sessionId, content: "go" })) out.push(r.event!);
    return out;
  }

  /** Starts an Ask and returns once `deltas` deltas arrived, with the rest of the stream as a promise. */
  function startAsk(c: ParleyClient, sessionId: string, deltas: number) {
    return readUntilDeltas(c.sessions.ask({ sessionId, content: "go" }), deltas);
  }

  beforeAll(async () => {
    fake = await startFakeOpenAI({ tokens: TOKENS, delayMs: 40 });
    database = await createTestDatabase("postgres");
    const pg = new URL(database.url);
    pgProxy = await startTcpProxy(Number(pg.port || 5432));
    pg.hostname = "127.0.0.1";
    pg.port = String(pgProxy.port);
    redisPort = await freePort();
    await startRedis();
    const env: NodeJS.ProcessEnv = {
      DATABASE_URL: pg.toString(),
      REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      PORT: "0",
      PARLEY_HOST: "127.0.0.1",
      OPENAI_COMPATIBLE_BASE_URL: fake.baseURL,
      PARLEY_ASK_LEASE_MS: "2000",
      PARLEY_LOG_LEVEL: "warn",
    };
    let adminKey = "";
    for (let i = 0; i < 2; i++) {
      const dir = mkdtempSync(join(tmpdir(), "parley-outage-"));
      dirs.push(dir);
      const p = spawnCli(["serve"], { ...env, PARLEY_DATA_DIR: dir });
      const url = await p.listening();
      if (i === 0) adminKey = readFileSync(join(dir, "admin.key"), "utf8").trim();
      replicas.push({ p, url, client: createParleyClient({ baseUrl: url, apiKey: adminKey }) });
    }
    const { agent } = await replicas[0]!.client.agents.createAgent({ agent: { name: "slow", model: "openai-compatible:slow" } });
    agentId = agent!.id;
  }, 120_000);

  afterAll(async () => {
    for (const r of replicas) await r.p.stop("SIGTERM");
    if (redis) await stopRedis();
    await pgProxy?.close();
    await fake?.close();
    await database?.drop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("Redis stopped mid-Ask and started again: Asks keep working, cross-replica follow is UNAVAILABLE, readiness degrades and recovers", async () => {
    const [a, b] = [replicas[0]!, replicas[1]!];
    for (const r of replicas) {
      // The health monitor pings once a second.
      await eventually("readyz ready", async () => {
        const { http, body } = await readyz(r.url);
        return http === 200 && body.status === "ready" && body.redis?.reachable === true ? true : undefined;
      });
    }
    const running = await startAsk(a.client, await newSession(a.client), 2);
    await stopRedis();

    // Both replicas notice, stay in service (200) and say they are degraded.
    for (const r of replicas) {
      await eventually("readyz degraded", async () => {
        const { http, body } = await readyz(r.url);
        return http === 200 && body.status === "degraded" && body.redis?.reachable === false ? true : undefined;
      });
    }
    // The Ask that was streaming finishes for its client; new Asks run on each replica.
    const rest = await running.rest;
    expect(textOf([...running.events, ...rest])).toBe(FULL);
    expect(rest.at(-1)!.event.case).toBe("completed");
    for (const r of replicas) {
      const events = await askToEnd(r.client, await newSession(r.client));
      expect(textOf(events)).toBe(FULL);
    }

    // Following A's running Ask from B needs Redis: UNAVAILABLE, saying so.
    const onA = await startAsk(a.client, await newSession(a.client), 2);
    const err = await errorOf(
      (async () => {
        for await (const _ of b.client.sessions.resumeAsk({ askId: onA.askId, afterSeq: 0n })) void _;
      })(),
    );
    expect([err?.code, err && reasonOf(err)]).toEqual([Code.Unavailable, "EVENT_LOG_UNAVAILABLE"]);
    // CancelAsk from B still reaches A, through the stored request its lease renewal reads.
    const t0 = performance.now();
    const { ask } = await b.client.sessions.cancelAsk({ askId: onA.askId });
    console.log(`[outage] CancelAsk across replicas without Redis (lease-renewal fallback): ${(performance.now() - t0).toFixed(0)} ms`);
    expect(ask!.status).toBe(AskStatus.CANCELLED);
    expect((await onA.rest).at(-1)!.event.case).toBe("cancelled");

    await startRedis();
    for (const r of replicas) {
      await eventually("readyz ready again", async () => {
        const { http, body } = await readyz(r.url);
        return http === 200 && body.status === "ready" ? true : undefined;
      });
    }
    // Cross-replica resume works again.
    const again = await startAsk(a.client, await newSession(a.client), 2);
    const onB: AskEvent[] = [];
    for await (const r of b.client.sessions.resumeAsk({ askId: again.askId, afterSeq: again.events.at(-1)!.seq })) onB.push(r.event!);
    expect(textOf([...again.events, ...onB])).toBe(FULL);
    await again.rest;

    for (const r of replicas) {
      expect(r.p.child.exitCode).toBeNull();
      expect(r.p.stderr()).not.toMatch(/unhandled|uncaught/i);
    }
  }, 120_000);

  it("Postgres unreachable: RPCs fail UNAVAILABLE, health is NOT_SERVING, and both recover by themselves", async () => {
    const health = replicas.map((r) => createClient(Health, r.client.transport));
    pgProxy.block(true);
    pgProxy.cut();
    for (const [i, r] of replicas.entries()) {
      await eventually("NOT_SERVING", async () =>
        (await health[i]!.check({ service: "" })).status === ServingStatus.NOT_SERVING ? true : undefined,
        45_000,
        replicaState,
      );
      expect((await readyz(r.url)).http).toBe(503);
      const err = await errorOf(r.client.agents.getAgent({ agentId }));
      expect(err?.code).toBe(Code.Unavailable);
    }

    pgProxy.block(false);
    for (const [i, r] of replicas.entries()) {
      await eventually("SERVING again", async () =>
        (await health[i]!.check({ service: "" })).status === ServingStatus.SERVING ? true : undefined,
        45_000,
        replicaState,
      );
      await eventually("RPCs work again", async () => ((await r.client.agents.getAgent({ agentId })).agent ? true : undefined));
      const events = await askToEnd(r.client, await newSession(r.client));
      expect(textOf(events)).toBe(FULL);
      expect(r.p.child.exitCode).toBeNull();
      expect(r.p.stderr()).not.toMatch(/unhandled|uncaught/i);
    }
    // A bound for a loaded machine (2 cores shared by the suite), not a speed assertion.
  }, 120_000);
});
