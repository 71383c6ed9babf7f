import { sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type DatabaseHandle } from "../../src/db/database.js";
import { inBackground, prioritizedPool } from "../../src/db/priority.js";
import { backends, createTestDatabase, type TestDatabase } from "../helpers/databases.js";

// Under load, a request's statement (an Ask's claim) must not queue behind background
// bookkeeping (an Ask's outcome, lease renewals): it is what the next first token waits on.
describe.runIf(backends().includes("postgres"))("the pool serves requests before background work", () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase("postgres", { migrate: false });
  });
  afterAll(async () => {
    await database?.drop();
  });

  /** A prioritized pool of one connection over a pg pool of one; end() closes both. */
  function onePool(maxBackgroundWaitMs?: number) {
    const pool = new pg.Pool({ connectionString: database.url, max: 1 });
    return prioritizedPool(pool, 1, maxBackgroundWaitMs);
  }

  it("hands a freed connection to a waiting request before background work that waited longer", async () => {
    const p = onePool(10_000);
    try {
      const order: string[] = [];
      const held = await p.connect();
      const bg = inBackground(() => p.connect()).then((c) => (order.push("background"), c));
      await new Promise((r) => setTimeout(r, 20));
      const fg = p.connect().then((c) => (order.push("request"), c));
      expect(p.waiting()).toEqual({ foreground: 1, background: 1 });
      held.release();
      const first = await fg;
      expect(order).toEqual(["request"]);
      first.release();
      (await bg).release();
      expect(order).toEqual(["request", "background"]);
      expect(p.waiting()).toEqual({ foreground: 0, background: 0 });
    } finally {
      await p.end();
    }
  });

  it("lets background work go first once it has waited the longest wait it is allowed", async () => {
    const p = onePool(30);
    try {
      const order: string[] = [];
      const held = await p.connect();
      const bg = inBackground(() => p.connect()).then((c) => (order.push("background"), c));
      await new Promise((r) => setTimeout(r, 60));
      const fg = p.connect().then((c) => (order.push("request"), c));
      held.release();
      (await bg).release();
      (await fg).release();
      expect(order).toEqual(["background", "request"]);
    } finally {
      await p.end();
    }
  });

  it("a second release of one checkout throws and does not free a second slot", async () => {
    const p = onePool();
    try {
      const c = await p.connect();
      c.release();
      expect(() => c.release()).toThrow("already been released");
      const again = await p.connect();
      const waiting = p.connect();
      expect(p.waiting()).toEqual({ foreground: 1, background: 0 });
      again.release();
      (await waiting).release();
    } finally {
      await p.end();
    }
  });

  it("a failed connect frees its slot", async () => {
    const pool = new pg.Pool({ connectionString: "postgres://postgres@127.0.0.1:1/none", max: 1, connectionTimeoutMillis: 2_000 });
    const p = prioritizedPool(pool, 1);
    try {
      await expect(p.connect()).rejects.toThrow();
      // The only slot is free again: this attempt fails the same way instead of waiting forever.
      await expect(p.connect()).rejects.toThrow();
    } finally {
      await pool.end();
    }
  });

  it("ending the pool fails the checkouts still waiting, and later ones", async () => {
    const p = onePool();
    const held = await p.connect();
    const waiting = [p.connect(), inBackground(() => p.connect())];
    held.release();
    // The freed connection went to the request; the background checkout still waits.
    const request = await waiting[0]!;
    const ending = p.end();
    await expect(waiting[1]).rejects.toThrow("the database pool has ended");
    request.release();
    await ending;
    await expect(p.connect()).rejects.toThrow();
  });

  describe("through Kysely (openDatabase)", () => {
    let handle: DatabaseHandle;
    beforeAll(async () => {
      handle = await openDatabase({ url: database.url, dataDir: "", poolSize: 1 });
    });
    afterAll(async () => {
      await handle?.close();
    });

    it("a statement run inBackground waits for a request's statement queued after it", async () => {
      const order: string[] = [];
      let release!: () => void;
      const holding = new Promise<void>((r) => (release = r));
      let holdingStarted!: () => void;
      const started = new Promise<void>((r) => (holdingStarted = r));
      const holder = handle.db.connection().execute(async (c) => {
        await sql`select 1`.execute(c);
        holdingStarted();
        await holding;
      });
      await started;
      const bg = inBackground(() => sql`select 'background'`.execute(handle.db)).then(() => order.push("background"));
      await new Promise((r) => setTimeout(r, 20));
      const fg = sql`select 'request'`.execute(handle.db).then(() => order.push("request"));
      release();
      await Promise.all([holder, bg, fg]);
      expect(order).toEqual(["request", "background"]);
    });
  });
});
