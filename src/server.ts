import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type * as tls from "node:tls";
import type { Duplex } from "node:stream";
import { cors as connectCors } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import cors from "cors";
import type { App } from "./app.js";

/**
 * Largest request or response message an RPC may carry: a CreateDocument with
 * a 16 MiB document plus room for its other fields. Larger messages are
 * refused by the transport with RESOURCE_EXHAUSTED.
 */
export const MAX_MESSAGE_BYTES = 17 * 1024 * 1024;

/**
 * HTTP/2 flow control of what clients send: the window of each stream (SETTINGS
 * initial window size) and of the connection. With the spec's 64 KiB a client
 * uploads at most 64 KiB per round trip whatever its bandwidth (an 8 MB document
 * over a link of 50 ms round trips took over 10 s).
 */
export const SERVER_WINDOW_BYTES = 16 * 1024 * 1024;

/** How long close() waits, after the Asks are drained, for other requests to end before cutting connections. */
const REQUEST_DRAIN_MS = 5_000;

/** How long close() then waits for the connections to close by themselves. */
const CONNECTION_DRAIN_MS = 2_000;

/** How long a new cleartext connection may take to send its first bytes. */
const SNIFF_TIMEOUT_MS = 30_000;

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

export interface ServerOptions {
  /** Interface to listen on; default config.host. */
  readonly host?: string;
  /** Port to listen on, 0 for a free one; default config.port. */
  readonly port?: number;
}

/** A listening Parley server. */
export interface RunningServer {
  /** The port actually bound. */
  readonly port: number;
  /** Base URL for clients on this machine, e.g. http://127.0.0.1:8080. */
  readonly url: string;
  /**
   * Graceful shutdown: refuses new connections and streams, lets running Asks finish within
   * config.shutdownGraceMs (then cancels them, keeping partial answers), ends the remaining
   * requests and connections, and closes the app and its database. Idempotent.
   */
  close(): Promise<void>;
}

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

/**
 * Serves the app on one port: gRPC (HTTP/2), gRPC-Web and Connect (HTTP/1.1 and HTTP/2),
 * CORS, /healthz and /readyz; TLS with ALPN when config.tls is set, otherwise cleartext with
 * HTTP/2 detected by its connection preface.
 */
export async function startServer(app: App, options: ServerOptions = {}): Promise<RunningServer> {
  const { config, log } = app;
  const host = options.host ?? config.host;
  const port = options.port ?? config.port;

  // Aborted once the Asks are drained, so that streams that never end by themselves
  // (health Watch, client-abandoned streams) let the connections close.
  const handlersShutdown = new AbortController();
  const rpc = connectNodeAdapter({
    routes: app.routes,
    interceptors: app.interceptors,
    readMaxBytes: MAX_MESSAGE_BYTES,
    writeMaxBytes: MAX_MESSAGE_BYTES,
    compressMinBytes: config.compressMinBytes,
    shutdownSignal: handlersShutdown.signal,
  });
  const anyOrigin = config.corsOrigins.includes("*");
  const corsMiddleware = cors({
    origin: anyOrigin ? "*" : [...config.corsOrigins],
    methods: [...connectCors.allowedMethods],
    allowedHeaders: [...connectCors.allowedHeaders, "Authorization"],
    exposedHeaders: [...connectCors.exposedHeaders],
    maxAge: 7200,
  });

  let closing = false;
  const inflight = new Set<NodeResponse>();
  const h1Active = new Map<Duplex, number>();
  const sockets = new Set<Duplex>();
  const sessions = new Set<http2.ServerHttp2Session>();
  // Cleartext connections handed to the HTTP/2 server (session.socket is a proxy, not the socket itself).
  const h2Sockets = new WeakSet<Duplex>();
  let drained: (() => void) | undefined;

  function onRequest(req: NodeRequest, res: NodeResponse): void {
    inflight.add(res);
    const socket: net.Socket | undefined = req.httpVersionMajor === 1 ? req.socket : undefined;
    if (socket) h1Active.set(socket, (h1Active.get(socket) ?? 0) + 1);
    if (closing && socket) res.setHeader("Connection", "close");
    res.once("close", () => {
      inflight.delete(res);
      if (socket) {
        const n = (h1Active.get(socket) ?? 1) - 1;
        if (n > 0) h1Active.set(socket, n);
        else {
          h1Active.delete(socket);
          // After the last response of a connection that outlived the start of close(): flush, then close.
          if (closing) socket.destroySoon();
        }
      }
      if (inflight.size === 0) drained?.();
    });
    corsMiddleware(req as http.IncomingMessage, res as http.ServerResponse, () => route(req, res));
  }

  function route(req: NodeRequest, res: NodeResponse): void {
    const path = (req.url ?? "/").split("?", 1)[0];
    if (path === "/healthz" || path === "/readyz") {
      if (req.method !== "GET" && req.method !== "HEAD") {
        sendJson(req.method, res, 405, { error: "method not allowed" }, { Allow: "GET, HEAD" });
        return;
      }
      if (path === "/healthz") {
        sendJson(req.method, res, 200, { status: "ok" });
        return;
      }
      void app.health.ready().then((s) => {
        const ready = s.serving && !closing;
        // Without Redis the replica still serves (degraded): it stays in the load balancer.
        const degraded = ready && s.redis?.reachable === false;
        sendJson(req.method, res, ready ? 200 : 503, {
          status: ready ? (degraded ? "degraded" : "ready") : "unavailable",
          shuttingDown: closing || s.stopping,
          database: {
            kind: app.database.kind,
            reachable: s.serving,
            checkedAt: s.checkedAt?.toISOString() ?? null,
            latencyMs: s.latencyMs ?? null,
            error: s.error ?? null,
          },
          ...(s.redis ? { redis: { reachable: s.redis.reachable, error: s.redis.error ?? null } } : {}),
        });
      });
      return;
    }
    void rpc(req, res);
  }

  function track(socket: Duplex): void {
    sockets.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      h1Active.delete(socket);
    });
  }

  const h2Settings = { enablePush: false, initialWindowSize: SERVER_WINDOW_BYTES };
  let listener: net.Server;
  if (config.tls) {
    const secure = http2.createSecureServer(
      {
        cert: readFileSync(config.tls.certFile),
        key: readFileSync(config.tls.keyFile),
        allowHTTP1: true,
        ALPNProtocols: ["h2", "http/1.1"],
        settings: h2Settings,
      },
      onRequest,
    );
    secure.on("secureConnection", track);
    secure.on("session", (session) => trackSession(session));
    // Long server streams over HTTP/1.1 must not be cut by a socket timeout.
    secure.setTimeout(0);
    listener = secure;
  } else {
    const h1 = http.createServer(
      {
        // Node's default request timeout (5 min) would cut long server streams over HTTP/1.1.
        requestTimeout: 0,
        headersTimeout: 60_000,
        keepAliveTimeout: 65_000,
      },
      onRequest,
    );
    const h2 = http2.createServer({ settings: h2Settings }, onRequest);
    h2.on("session", (session) => trackSession(session));
    listener = net.createServer((socket) => {
      // Nagle's algorithm off, as Node's own HTTP/2 server sets it on the connections it accepts
      // (handed over by emit("connection"), a connection skips that): otherwise a stream's next
      // small message waits for the peer to acknowledge the last.
      socket.setNoDelay(true);
      track(socket);
      sniff(socket, (isH2) => {
        if (isH2) h2Sockets.add(socket);
        (isH2 ? h2 : h1).emit("connection", socket);
      });
    });
  }

  function trackSession(session: http2.ServerHttp2Session): void {
    session.setLocalWindowSize(SERVER_WINDOW_BYTES);
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    session.on("error", (err) => log.debug({ err }, "http2 session error"));
    if (closing) session.close();
  }

  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen({ host, port }, () => {
      listener.off("error", reject);
      resolve();
    });
  });
  listener.on("error", (err) => log.error({ err }, "listener error"));
  const bound = (listener.address() as net.AddressInfo).port;
  const url = `${config.tls ? "https" : "http"}://${clientHost(host)}:${bound}`;
  log.info({ url, tls: Boolean(config.tls), database: app.database.kind }, "parley listening");

  let closed: Promise<void> | undefined;
  async function shutdown(): Promise<void> {
    closing = true;
    log.info({ graceMs: config.shutdownGraceMs, running: app.asks.running() }, "shutting down");
    const listenerClosed = new Promise<void>((resolve) => listener.close(() => resolve()));
    // Readiness and health Watch report NOT_SERVING from now on.
    app.health.stop();
    for (const session of sessions) session.close();
    for (const socket of sockets) {
      // Idle HTTP/1.1 keep-alive connections and connections still being sniffed.
      if (!h1Active.has(socket) && !isH2Socket(socket)) socket.destroy();
    }
    await app.asks.drain(config.shutdownGraceMs);
    handlersShutdown.abort();
    if (inflight.size > 0) await within(REQUEST_DRAIN_MS, new Promise<void>((resolve) => (drained = resolve)));
    // HTTP/2 sessions end by themselves after their last stream (GOAWAY was sent) and HTTP/1.1
    // connections after their last response, so that the final bytes reach the clients.
    for (const socket of sockets) if (!h1Active.has(socket) && !isH2Socket(socket)) socket.destroy();
    await within(CONNECTION_DRAIN_MS, listenerClosed);
    for (const session of sessions) session.destroy();
    for (const socket of sockets) socket.destroy();
    await listenerClosed;
    await app.close(0);
    log.info("shut down");
  }

  function isH2Socket(socket: Duplex): boolean {
    return h2Sockets.has(socket) || (socket as tls.TLSSocket).alpnProtocol === "h2";
  }

  return {
    port: bound,
    url,
    close: () => (closed ??= shutdown()),
  };
}

/** Waits for promise, but no longer than ms. */
async function within(ms: number, promise: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([promise, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

/** Reads just enough of a new connection to tell an HTTP/2 preface from HTTP/1.x, then puts the bytes back. */
function sniff(socket: net.Socket, done: (isH2: boolean) => void): void {
  let buffered = Buffer.alloc(0);
  const onError = () => socket.destroy();
  // A connection that never says which protocol it speaks must not be held open forever.
  const onTimeout = () => socket.destroy();
  socket.setTimeout(SNIFF_TIMEOUT_MS, onTimeout);
  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    const n = Math.min(buffered.length, H2_PREFACE.length);
    const prefixMatches = buffered.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
    if (prefixMatches && buffered.length < H2_PREFACE.length) return;
    socket.off("data", onData);
    socket.off("error", onError);
    socket.setTimeout(0);
    socket.off("timeout", onTimeout);
    socket.pause();
    socket.unshift(buffered);
    done(prefixMatches);
    // http2 takes the bytes put back and the socket's handle over by itself; http1 reads through the stream.
    if (!prefixMatches) socket.resume();
  };
  socket.on("error", onError);
  socket.on("data", onData);
}

function clientHost(host: string): string {
  if (host === "0.0.0.0" || host === "") return "127.0.0.1";
  if (host === "::") return "[::1]";
  return net.isIPv6(host) ? `[${host}]` : host;
}

function sendJson(
  method: string | undefined,
  res: NodeResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  (res as http.ServerResponse).writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text),
    "Cache-Control": "no-store",
    ...headers,
  });
  // HTTP/2 refuses a payload in the answer to HEAD.
  if (method === "HEAD") res.end();
  else res.end(text);
}
