import { createServer, connect, type AddressInfo, type Socket } from "node:net";

/** A TCP proxy on 127.0.0.1 that a test can cut, block and point elsewhere. */
export interface TcpProxy {
  readonly port: number;
  /** Number of connections accepted so far. */
  connections(): number;
  /** Destroys every open connection (both sides); new ones are still accepted. */
  cut(): void;
  /** While blocked, new connections are closed at once (the upstream looks down). */
  block(blocked: boolean): void;
  /** Sends new connections to another port. */
  retarget(port: number): void;
  close(): Promise<void>;
}

/** Starts a proxy to 127.0.0.1:targetPort. */
export async function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  let target = targetPort;
  let blocked = false;
  let accepted = 0;
  const open = new Set<Socket>();
  const server = createServer((client) => {
    accepted++;
    if (blocked) {
      client.destroy();
      return;
    }
    const upstream = connect(target, "127.0.0.1");
    for (const s of [client, upstream]) {
      open.add(s);
      s.on("close", () => open.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const cut = () => {
    for (const s of open) s.destroy();
    open.clear();
  };
  return {
    port: (server.address() as AddressInfo).port,
    connections: () => accepted,
    cut,
    block(b) {
      blocked = b;
    },
    retarget(port) {
      target = port;
    },
    async close() {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}
