import * as http from "node:http";
import type * as http2 from "node:http2";
import * as https from "node:https";
import type { ConnectionOptions } from "node:tls";
import type { Transport } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  commonTransportOptions,
  createParleyClientFromTransport,
  type ParleyClient,
  type ParleyClientOptions,
} from "./core.js";

export * from "./core.js";

/** TLS settings of an https:// baseUrl (a private CA, a client certificate for mTLS). */
export interface NodeTlsOptions {
  readonly ca?: string | Buffer | Array<string | Buffer>;
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  /** Default true. */
  readonly rejectUnauthorized?: boolean;
  readonly servername?: string;
}

/** Options of the Node client. */
export interface NodeParleyClientOptions extends ParleyClientOptions {
  /** "grpc" (HTTP/2, the default) or "connect" (the Connect protocol). */
  readonly transport?: "grpc" | "connect";
  /** HTTP version of the Connect transport: "1.1" (default) or "2". gRPC always uses HTTP/2. */
  readonly httpVersion?: "1.1" | "2";
  /** Connect only: JSON instead of binary protobuf on the wire (handy when reading traffic). */
  readonly useJson?: boolean;
  readonly tls?: NodeTlsOptions;
}

/** A Node client: the typed clients, ask(), and close() to release its connections. */
export interface NodeParleyClient extends ParleyClient {
  /** Closes the client's HTTP/2 session or keep-alive sockets; calls in flight fail. */
  close(): void;
}

function tlsOptions(tls: NodeTlsOptions | undefined): ConnectionOptions {
  if (!tls) return {};
  const o: ConnectionOptions = {};
  if (tls.ca !== undefined) o.ca = tls.ca;
  if (tls.cert !== undefined) o.cert = tls.cert;
  if (tls.key !== undefined) o.key = tls.key;
  if (tls.rejectUnauthorized !== undefined) o.rejectUnauthorized = tls.rejectUnauthorized;
  if (tls.servername !== undefined) o.servername = tls.servername;
  return o;
}

/**
 * The flow-control window a client's HTTP/2 connection grants the server, across all of its
 * streams (each stream keeps its own 64 KiB window besides). With the spec's initial 64 KiB,
 * topped up each time half of it has been read, a connection carries at most 32 KiB per round
 * trip of that update, and a busy client takes long to send it: 2,000 open Asks of the bench
 * (a token every 100 ms each) fell behind their model and new Asks on the connection waited for
 * their first token for over 30 s. gRPC's own clients open the window to MiBs for the same reason.
 */
export const CLIENT_CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024;

/** Opens the connection window of every session it starts to CLIENT_CONNECTION_WINDOW_BYTES. */
class WideWindowSessionManager extends Http2SessionManager {
  readonly #widened = new WeakSet<http2.Http2Session>();

  override async request(...args: Parameters<Http2SessionManager["request"]>): Promise<http2.ClientHttp2Stream> {
    const stream = await super.request(...args);
    const session = stream.session;
    if (session && !session.destroyed && !this.#widened.has(session)) {
      this.#widened.add(session);
      session.setLocalWindowSize(CLIENT_CONNECTION_WINDOW_BYTES);
    }
    return stream;
  }
}

/** Creates a Parley client for Node over gRPC (default) or Connect, sending the API key on every call. */
export function createParleyClient(options: NodeParleyClientOptions): NodeParleyClient {
  const common = commonTransportOptions(options);
  const tls = tlsOptions(options.tls);
  let transport: Transport;
  let close: () => void;
  if (options.transport !== "connect" || options.httpVersion === "2") {
    // One session per client (not per call), so that close() can end it.
    const sessionManager = new WideWindowSessionManager(options.baseUrl, {}, tls);
    transport =
      options.transport === "connect"
        ? createConnectTransport({ ...common, httpVersion: "2", sessionManager, useBinaryFormat: !options.useJson })
        : createGrpcTransport({ ...common, sessionManager });
    close = () => sessionManager.abort();
  } else {
    const agent = options.baseUrl.startsWith("https:")
      ? new https.Agent({ keepAlive: true, ...tls })
      : new http.Agent({ keepAlive: true });
    transport = createConnectTransport({
      ...common,
      httpVersion: "1.1",
      nodeOptions: { agent },
      useBinaryFormat: !options.useJson,
    });
    close = () => agent.destroy();
  }
  return { ...createParleyClientFromTransport(transport), close };
}
