// The framework ceiling: a bare Connect service (no Parley interceptors, no database)
// served by the same one-port server as Parley. Declared from a descriptor built at
// run time so that the bench needs no generated code of its own.
import { create, createFileRegistry, type Message } from "@bufbuild/protobuf";
import type { GenMessage, GenService } from "@bufbuild/protobuf/codegenv2";
import {
  FileDescriptorProtoSchema,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
} from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, ServiceImpl } from "@connectrpc/connect";
import { setTimeout as sleep } from "node:timers/promises";

const file = create(FileDescriptorProtoSchema, {
  name: "bench/v1/echo.proto",
  package: "bench.v1",
  syntax: "proto3",
  messageType: [
    {
      name: "EchoMessage",
      field: [
        { name: "text", number: 1, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL, jsonName: "text" },
        { name: "count", number: 2, type: FieldDescriptorProto_Type.INT32, label: FieldDescriptorProto_Label.OPTIONAL, jsonName: "count" },
        { name: "interval_ms", number: 3, type: FieldDescriptorProto_Type.INT32, label: FieldDescriptorProto_Label.OPTIONAL, jsonName: "intervalMs" },
      ],
    },
  ],
  service: [
    {
      name: "EchoService",
      method: [
        { name: "Echo", inputType: ".bench.v1.EchoMessage", outputType: ".bench.v1.EchoMessage" },
        { name: "Stream", inputType: ".bench.v1.EchoMessage", outputType: ".bench.v1.EchoMessage", serverStreaming: true },
      ],
    },
  ],
});

const registry = createFileRegistry(file, () => undefined);

/** The one message of the echo service. */
export type EchoMessage = Message<"bench.v1.EchoMessage"> & { text: string; count: number; intervalMs: number };

/** Schema of EchoMessage. */
export const EchoMessageSchema = registry.getMessage("bench.v1.EchoMessage") as GenMessage<EchoMessage>;

/** bench.v1.EchoService: Echo returns its request; Stream sends `count` copies of `text`, `interval_ms` apart. */
export const EchoService = registry.getService("bench.v1.EchoService") as GenService<{
  echo: { methodKind: "unary"; input: typeof EchoMessageSchema; output: typeof EchoMessageSchema };
  stream: { methodKind: "server_streaming"; input: typeof EchoMessageSchema; output: typeof EchoMessageSchema };
}>;

const impl: ServiceImpl<typeof EchoService> = {
  echo: (req) => req,
  async *stream(req, ctx) {
    for (let i = 0; i < req.count; i++) {
      if (i > 0 && req.intervalMs > 0) await sleep(req.intervalMs, undefined, { signal: ctx.signal });
      yield { text: req.text, count: i, intervalMs: req.intervalMs };
    }
  },
};

/** Registers the bare echo service without the server's interceptors (per-service options replace the adapter's). */
export function echoRoutes(router: ConnectRouter): void {
  router.service(EchoService, impl, { interceptors: [] });
}
