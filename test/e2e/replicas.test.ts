import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MessageStatus } from "../../gen/parley/v1/common_pb.js";
import { AskStatus, type AskEvent } from "../../gen/parley/v1/session_pb.js";
import { createParleyClient } from "../../src/client/node.js";
import type { ParleyClient } from "../../src/client/core.js";
import { backends, createTestDatabase, testRedisUrl, type TestDatabase } from "../helpers/databases.js";
import { readUntilDeltas } from "../helpers/ask-stream.js";
import { startFakeOpenAI, type FakeOpenAI } from "../helpers/fake-openai.js";
import { spawnCli, type CliProcess } from "../helpers/server.js";
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js";

// Two server processes on one Postgres database and one Redis (under a key prefix
// of this file's own), answering with a slow OpenAI-compatible model.
const redisUrl = testRedisUrl();
const enabled = backends().includes("postgres") && redisUrl !== undefined;

const TOKENS = Array.from({ length: 60 }, (_, i) => `w${i} `);
const FULL = TOKENS.join("");
const LEASE_MS = 2_000;

const textOf = (events: AskEvent[]) => events.map((e) => (e.event.case === "textDelta" ? e.event.value.text : "")).join("");
const casesOf = (events: AskEvent[]) => events.map((e) => e.event.case);

describe.runIf(enabled)("replicas: resume, cancel and crash recovery across server processes", () => {
  let fake: FakeOpenAI;
  let database: TestDatabase;
  const dirs: string[] = [];
  let env: NodeJS.ProcessEnv;
  let a: CliProcess;
  let b: CliProcess;
  let urlA: string;
  let urlB: string;
  let adminKey: string;
  let clientA: ParleyClient;
  let clientB: ParleyClient;
  let agentId: string;

  async function startReplica(): Promise<{ p: CliProcess; url: string }> {
    const dir = mkdtempSync(join(tmpdir(), "parley-replica-"));
    dirs.push(dir);
    const p = spawnCli(["serve"], { ...env, PARLEY_DATA_DIR: dir });
    return { p, url: await p.listening() };
  }

  const client = (url: string) => createParleyClient({ baseUrl: url, apiKey: adminKey });

  async function newSession(): Promise<string> {
    const { session } = await clientA.sessions.createSession({ session: { agentId, userId: "replicas" } });
    return session!.id;
  }

  /** Reads an Ask's stream until it has seen `deltas` text deltas; returns the events and the rest of the stream. */
  function startAsk(c: ParleyClient, sessionId: string, deltas: number, options: { background?: boolean; signal?: AbortSignal } = {}) {
    const stream = c.sessions.ask({ sessionId, content: "tell me", background: options.background ?? false }, { signal: options.signal });
    return readUntilDeltas(stream, deltas);
  }

  async function resume(c: ParleyClient, askId: string, afterSeq: bigint): Promise<AskEvent[]> {
    const out: AskEvent[] = [];
    for await (const r of c.sessions.resumeAsk({ askId, afterSeq })) out.push(r.event!);
    return out;
  }

  beforeAll(async () => {
    fake = await startFakeOpenAI({ tokens: TOKENS, delayMs: 40 });
    database = await createTestDatabase("postgres");
    env = {
      DATABASE_URL: database.url,
      REDIS_URL: redisUrl!,
      PARLEY_REDIS_PREFIX: `parley-e2e-${randomBytes(6).toString("hex")}:`,
      PORT: "0",
      PARLEY_HOST: "127.0.0.1",
      OPENAI_COMPATIBLE_BASE_URL: fake.baseURL,
      PARLEY_ASK_LEASE_MS: String(LEASE_MS),
      PARLEY_FLUSH_INTERVAL_MS: "100",
      PARLEY_LOG_LEVEL: "warn",
    };
    // A first, alone: it creates the tenant and the admin key that B then shares.
    ({ p: a, url: urlA } = await startReplica());
    adminKey = readFileSync(join(dirs[0]!, "admin.key"), "utf8").trim();
    ({ p: b, url: urlB } = await startReplica());
    clientA = client(urlA);
    clientB = client(urlB);
    const { agent } = await clientA.agents.createAgent({ agent: { name: "slow", model: "openai-compatible:slow" } });
    agentId = agent!.id;
  }, 120_000);

  afterAll(async () => {
    await a?.stop("SIGTERM");
    await b?.stop("SIGTERM");
    await fake?.close();
    await database?.drop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("resumes an Ask started on A from B mid-stream and after completion, with the same events and text", async () => {
    const sessionId = await newSession();
    const onA = await startAsk(clientA, sessionId, 5);
    const seen = onA.events.at(-1)!.seq;
    // B follows from the last event A's client saw: replay from Redis, then live.
    const onB = await resume(clientB, onA.askId, seen);
    const restA = await onA.rest;
    expect(onB.map((e) => e.seq)).toEqual(restA.map((e) => e.seq));
    expect(onB.map((e) => e.seq)).toEqual(onB.map((_, i) => seen + BigInt(i + 1)));
    expect(textOf(onA.events) + textOf(onB)).toBe(FULL);
    expect(onB.at(-1)!.event.case).toBe("completed");

    // After completion, from any replica, from the start: the same events A streamed.
    const whole = [...onA.events, ...restA];
    for (const c of [clientA, clientB]) {
      const replay = await resume(c, onA.askId, 0n);
      expect(replay).toEqual(whole);
      expect(textOf(replay)).toBe(FULL);
    }
  });

  it("CancelAsk on B stops the Ask running on A promptly, keeping the partial answer", async () => {
    const sessionId = await newSession();
    const requestsBefore = fake.requests.length;
    const onA = await startAsk(clientA, sessionId, 3);
    const t0 = performance.now();
    const { ask } = await clientB.sessions.cancelAsk({ askId: onA.askId });
    const cancelRpcMs = performance.now() - t0;
    const rest = await onA.rest;
    const streamEndMs = performance.now() - t0;
    console.log(`[replicas] CancelAsk on B -> Ask on A cancelled: RPC returned after ${cancelRpcMs.toFixed(1)} ms, A's stream ended after ${streamEndMs.toFixed(1)} ms`);
    expect(ask!.status).toBe(AskStatus.CANCELLED);
    const last = rest.at(-1)!.event;
    expect(last.case).toBe("cancelled");
    if (last.case !== "cancelled") return;
    expect(last.value.reason).toBe("cancel_ask");
    const partial = textOf([...onA.events, ...rest]);
    expect(last.value.message!.content).toBe(partial);
    expect(FULL.startsWith(partial) && partial.length < FULL.length).toBe(true);
    // The model call on A was aborted, not left running.
    expect(await fake.requests[requestsBefore]!.done).toBe("aborted");
  });

  it("a background Ask survives its client's disconnect; a foreground one is cancelled", async () => {
    const bgSession = await newSession();
    const abortBg = new AbortController();
    const bg = await startAsk(clientA, bgSession, 2, { background: true, signal: abortBg.signal });
    abortBg.abort();
    await bg.rest.catch(() => {});
    const replay = await resume(clientB, bg.askId, 0n);
    expect(replay.at(-1)!.event.case).toBe("completed");
    expect(textOf(replay)).toBe(FULL);

    const fgSession = await newSession();
    const abortFg = new AbortController();
    const fg = await startAsk(clientA, fgSession, 2, { signal: abortFg.signal });
    abortFg.abort();
    await fg.rest.catch(() => {});
    const fgReplay = await resume(clientB, fg.askId, 0n);
    const end = fgReplay.at(-1)!.event;
    expect(end.case).toBe("cancelled");
    expect(end.case === "cancelled" && end.value.reason).toBe("client");
  });

  it("the client's ask() resumes after the connection is cut mid-stream, on the other replica, assembling exactly the model's output", async () => {
    const proxy: TcpProxy = await startTcpProxy(Number(new URL(urlA).port));
    try {
      const viaProxy = createParleyClient({ baseUrl: `http://127.0.0.1:${proxy.port}`, apiKey: adminKey });
      const sessionId = await newSession();
      let text = "";
      const events: AskEvent[] = [];
      for await (const e of viaProxy.ask({ sessionId, content: "tell me" }, { resumeDelayMs: () => 50 })) {
        events.push(e);
        if (e.event.case === "textDelta") text += e.event.value.text;
        if (events.filter((x) => x.event.case === "textDelta").length === 4 && proxy.connections() === 1) {
          // The connection dies and the next one lands on B.
          proxy.retarget(Number(new URL(urlB).port));
          proxy.cut();
        }
      }
      expect(proxy.connections()).toBeGreaterThan(1);
      expect(text).toBe(FULL);
      expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => BigInt(i + 1)));
      expect(events.at(-1)!.event.case).toBe("completed");
    } finally {
      await proxy.close();
    }
  });

  it("SIGKILL of A mid-stream: after the lease expires the Ask is INTERRUPTED with its flushed content, resumers get Interrupted, the session takes a new Ask", async () => {
    const sessionId = await newSession();
    // A background Ask whose client has gone: nothing but the log will tell how it ended.
    // (Left open across the kill, the stream would end in an error that readUntilDeltas'
    // `rest` promise rejects with; the client itself reports it only to its reader.)
    const detach = new AbortController();
    const onA = await startAsk(clientA, sessionId, 10, { background: true, signal: detach.signal });
    const seen = onA.events.at(-1)!.seq;
    detach.abort();
    await onA.rest.catch(() => {});
    // Let at least one flush of the partial answer land.
    await new Promise((r) => setTimeout(r, 300));
    const killedAt = performance.now();
    a.child.kill("SIGKILL");
    await a.exited;

    const onB = await resume(clientB, onA.askId, seen);
    const observedMs = performance.now() - killedAt;
    console.log(`[replicas] SIGKILL of A -> Interrupted seen by a resumer on B after ${observedMs.toFixed(0)} ms (lease ${LEASE_MS} ms)`);
    const end = onB.at(-1)!.event;
    expect(end.case).toBe("interrupted");
    if (end.case !== "interrupted") return;
    const streamed = textOf([...onA.events, ...onB]);
    const flushed = end.value.message!.content;
    expect(end.value.message!.status).toBe(MessageStatus.INTERRUPTED);
    expect(flushed.length).toBeGreaterThan(0);
    expect(streamed.startsWith(flushed)).toBe(true);

    const { ask } = await clientB.sessions.getAsk({ askId: onA.askId });
    expect(ask!.status).toBe(AskStatus.INTERRUPTED);
    const { message } = await clientB.messages.getMessage({ messageId: ask!.assistantMessageId });
    expect([message!.status, message!.content]).toEqual([MessageStatus.INTERRUPTED, flushed]);

    // The session is free again.
    const next: AskEvent[] = [];
    for await (const e of clientB.ask({ sessionId, content: "again" })) next.push(e);
    expect(casesOf(next).at(-1)).toBe("completed");
    expect(textOf(next)).toBe(FULL);

    // A replica back in its place joins as before.
    ({ p: a, url: urlA } = await startReplica());
    clientA = client(urlA);
  });
});
