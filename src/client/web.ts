// Browser entry point: fetch-based transports only, no node: modules.
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  commonTransportOptions,
  createParleyClientFromTransport,
  type ParleyClient,
  type ParleyClientOptions,
} from "./core.js";

export * from "./core.js";

/** Options of the browser client. */
export interface WebParleyClientOptions extends ParleyClientOptions {
  /** "connect" (default) or "grpc-web". */
  readonly transport?: "connect" | "grpc-web";
  /** Binary protobuf instead of JSON (Connect's default in browsers is JSON; gRPC-Web is always binary here). */
  readonly useBinaryFormat?: boolean;
  /** A fetch to use instead of the global one (e.g. to set credentials). */
  readonly fetch?: typeof globalThis.fetch;
}

/** Creates a Parley client for browsers over Connect (default) or gRPC-Web, sending the API key on every call. */
export function createParleyClient(options: WebParleyClientOptions): ParleyClient {
  const common = {
    ...commonTransportOptions(options),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  };
  const transport =
    options.transport === "grpc-web"
      ? createGrpcWebTransport({ ...common, useBinaryFormat: true })
      : createConnectTransport({ ...common, useBinaryFormat: options.useBinaryFormat ?? false });
  return createParleyClientFromTransport(transport);
}
