import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { AskEventSchema, AskResponseSchema, SessionService } from "../../gen/parley/v1/session_pb.js";
import { createErrorInterceptor, notFound } from "../../src/errors.js";

/** A SessionService whose Ask streams `deltas` text deltas, then throws `fail` (if any); `closed` records its cleanup. */
function serviceClient(deltas: number, fail?: unknown) {
  const state = { sent: 0, closed: false };
  const transport = createRouterTransport(
    (router) =>
      router.service(SessionService, {
        async *ask() {
          try {
            for (let i = 0; i < deltas; i++) {
              state.sent++;
              yield create(AskResponseSchema, {
                event: create(AskEventSchema, { seq: BigInt(i + 1), event: { case: "textDelta", value: { text: `t${i}` } } }),
              });
            }
            if (fail !== undefined) throw fail;
          } finally {
            state.closed = true;
          }
        },
      }),
    { router: { interceptors: [createErrorInterceptor()] } },
  );
  return { client: createClient(SessionService, transport), state };
}

async function drain(stream: AsyncIterable<{ event?: { event: { case?: string; value?: unknown } } }>) {
  const texts: string[] = [];
  try {
    for await (const r of stream) texts.push((r.event?.event.value as { text: string }).text);
  } catch (err) {
    return { texts, error: ConnectError.from(err) };
  }
  return { texts, error: undefined };
}

describe("the error interceptor on a server stream", () => {
  it("passes every message through, then the mapped error of a Parley failure", async () => {
    const { client } = serviceClient(3, notFound("session", "s1"));
    const { texts, error } = await drain(client.ask({ sessionId: "s1", content: "q" }));
    expect(texts).toEqual(["t0", "t1", "t2"]);
    expect(error?.code).toBe(Code.NotFound);
    expect(error?.rawMessage).toContain("s1");
  });

  it("turns an unexpected error mid-stream into Internal without its message", async () => {
    const { client } = serviceClient(1, new Error("secret detail"));
    const { texts, error } = await drain(client.ask({ sessionId: "s1", content: "q" }));
    expect(texts).toEqual(["t0"]);
    expect(error?.code).toBe(Code.Internal);
    expect(error?.rawMessage).not.toContain("secret");
  });

  it("ends a stream without error as it is", async () => {
    const { client, state } = serviceClient(2);
    expect(await drain(client.ask({ sessionId: "s1", content: "q" }))).toEqual({ texts: ["t0", "t1"], error: undefined });
    expect(state.closed).toBe(true);
  });

  it("passes a reader's early return on to the handler's stream, which cleans up", async () => {
    let closed = false;
    async function* source() {
      try {
        for (let i = 0; ; i++) yield i;
      } finally {
        closed = true;
      }
    }
    const next = async () => ({ stream: true, message: source() });
    const res = (await createErrorInterceptor()(next as never)({} as never)) as unknown as { message: AsyncIterable<number> };
    const seen: number[] = [];
    for await (const n of res.message) {
      seen.push(n);
      if (n === 2) break;
    }
    expect(seen).toEqual([0, 1, 2]);
    expect(closed).toBe(true);
  });
});
