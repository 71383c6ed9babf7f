import { once } from "node:events";
import * as http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SERVER_WINDOW_BYTES } from "../../src/server.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

// What a client may send before the server acknowledges it, as a plain HTTP/2 peer sees it:
// per stream (the server's SETTINGS) and on the connection (its WINDOW_UPDATE). HTTP/2's
// initial 65,535 bytes of each would hold an upload to 64 KiB per round trip.
describe("the server's HTTP/2 receive windows", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startTestServer();
  });
  afterAll(async () => {
    await s?.close();
  });

  it(`are ${SERVER_WINDOW_BYTES} bytes per stream and per connection`, async () => {
    const session = http2.connect(s.url);
    try {
      await once(session, "remoteSettings");
      expect(session.remoteSettings.initialWindowSize).toBe(SERVER_WINDOW_BYTES);
      // The connection's WINDOW_UPDATE may trail the SETTINGS by a packet.
      for (let i = 0; i < 50 && session.state.remoteWindowSize! < SERVER_WINDOW_BYTES; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(session.state.remoteWindowSize).toBe(SERVER_WINDOW_BYTES);
    } finally {
      session.close();
    }
  });
});
