import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentService } from "../../gen/parley/v1/agent_pb.js";
import { bearer } from "../helpers/app.js";
import { backends, createTestDatabase, type Backend, type TestDatabase } from "../helpers/databases.js";
import { runCli, spawnCli, type CliProcess } from "../helpers/server.js";

const KEY = /pk_[A-Za-z0-9_-]{43}/g;

async function listAgentsCode(url: string, key: string): Promise<Code | "ok"> {
  const client = createClient(
    AgentService,
    createConnectTransport({ baseUrl: url, httpVersion: "1.1", interceptors: [bearer(key)] }),
  );
  return client.listAgents({}).then(
    () => "ok" as const,
    (e: unknown) => ConnectError.from(e).code,
  );
}

describe.each(backends())("parley CLI on %s", (backend: Backend) => {
  let dataDir: string;
  let database: TestDatabase | undefined;
  let env: NodeJS.ProcessEnv;
  const running: CliProcess[] = [];

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "parley-cli-"));
    env = { PARLEY_DATA_DIR: dataDir, PORT: "0", PARLEY_HOST: "127.0.0.1", PARLEY_SHUTDOWN_GRACE_MS: "2000" };
    if (backend === "postgres") {
      // An empty database: `parley migrate` is the first thing to touch it.
      database = await createTestDatabase("postgres", { migrate: false });
      env.DATABASE_URL = database.url;
    }
  });
  afterAll(async () => {
    await Promise.all(running.map((p) => p.stop("SIGKILL")));
    await database?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  function serve(extra: NodeJS.ProcessEnv = {}): CliProcess {
    const p = spawnCli(["serve"], { ...env, ...extra });
    running.push(p);
    return p;
  }

  it("rejects bad configuration with one line on stderr and exit code 2", async () => {
    const r = await runCli(["serve"], { ...env, PORT: "not-a-port" });
    expect(r.code).toBe(2);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain("PORT");
    const tls = await runCli(["serve"], { ...env, PARLEY_TLS_CERT: join(dataDir, "missing.pem") });
    expect(tls.code).toBe(2);
    expect(tls.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("migrates, then serves without migrating at start, printing the admin key once", { timeout: 180_000 }, async () => {
    const migrated = await runCli(["migrate"], env);
    expect(migrated.code).toBe(0);
    expect(migrated.stdout).toContain("2026_11_21_000000_initial");
    const again = await runCli(["migrate"], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("already up to date");

    const first = serve({ PARLEY_MIGRATE: "false" });
    const url = await first.listening();
    const printed = first.stdout().match(KEY) ?? [];
    expect(printed).toHaveLength(1);
    const adminKey = printed[0]!;
    const keyFile = join(dataDir, "admin.key");
    expect(first.stdout()).toContain(keyFile);
    expect(readFileSync(keyFile, "utf8").trim()).toBe(adminKey);
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(await listAgentsCode(url, adminKey)).toBe("ok");
    // stdout carries only the announcement; the logs are JSON lines on stderr.
    expect(first.stderr()).not.toContain(adminKey);
    if (backend === "pglite") {
      // The embedded database cannot be shared: one-shot commands refuse it while a server holds it.
      const refused = await runCli(["keys", "list"], env);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain(String(first.child.pid));
    }
    expect(await first.stop("SIGTERM")).toBe(0);

    const second = serve();
    const url2 = await second.listening();
    expect(second.stdout()).not.toMatch(KEY);
    expect(await listAgentsCode(url2, adminKey)).toBe("ok");
    expect(await second.stop("SIGINT")).toBe(0);
    expect(existsSync(join(dataDir, "serve.pid"))).toBe(false);
  });

  it("creates, lists and revokes keys; a revoked key is Unauthenticated", { timeout: 180_000 }, async () => {
    const created = await runCli(["keys", "create", "--name", "backend", "--role", "service"], env);
    expect(created.code).toBe(0);
    const keep = created.stdout.trim();
    expect(keep).toMatch(/^pk_[A-Za-z0-9_-]{43}$/);
    const doomed = (await runCli(["keys", "create", "--name", "doomed"], env)).stdout.trim();
    expect(doomed).toMatch(/^pk_/);
    const other = await runCli(["keys", "create", "--tenant", "no-such-tenant"], env);
    expect(other.code).toBe(1);

    const listed = await runCli(["keys", "list", "--json"], env);
    expect(listed.code).toBe(0);
    const keys = JSON.parse(listed.stdout) as Array<{ id: string; prefix: string; name: string; role: string; revokeTime: string | null }>;
    expect(keys.map((k) => k.name)).toEqual(expect.arrayContaining(["backend", "doomed", "admin (bootstrap)"]));
    expect(listed.stdout).not.toContain(keep);
    const table = await runCli(["keys", "list"], env);
    expect(table.stdout).toContain(keep.slice(0, 9));
    expect(table.stdout).not.toContain(keep);

    const doomedRow = keys.find((k) => k.name === "doomed")!;
    expect(doomed.startsWith(doomedRow.prefix)).toBe(true);
    const revoked = await runCli(["keys", "revoke", doomedRow.prefix], env);
    expect(revoked.code).toBe(0);
    const twice = await runCli(["keys", "revoke", doomedRow.id], env);
    expect(twice.code).toBe(1);
    const after = JSON.parse((await runCli(["keys", "list", "--json"], env)).stdout) as typeof keys;
    expect(after.find((k) => k.id === doomedRow.id)?.revokeTime).not.toBeNull();
    expect(after.find((k) => k.name === "backend")?.revokeTime).toBeNull();

    const server = serve();
    const url = await server.listening();
    expect(await listAgentsCode(url, keep)).toBe("ok");
    expect(await listAgentsCode(url, doomed)).toBe(Code.Unauthenticated);
    if (backend === "postgres") {
      // With a shared database, a key revoked while the server runs stops working too
      // (the server trusts a verified key for a few seconds, so poll, bounded).
      expect((await runCli(["keys", "revoke", keys.find((k) => k.name === "backend")!.id], env)).code).toBe(0);
      let code: Code | "ok" = "ok";
      for (let i = 0; i < 60 && code === "ok"; i++) {
        code = await listAgentsCode(url, keep);
        if (code === "ok") await new Promise((r) => setTimeout(r, 250));
      }
      expect(code).toBe(Code.Unauthenticated);
    }
    expect(await server.stop()).toBe(0);
  });
});
