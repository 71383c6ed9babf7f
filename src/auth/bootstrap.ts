import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { sql, type Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import { countTenants, createApiKey, createTenant } from "../repos/api-keys.js";

export interface BootstrapResult {
  readonly tenantId: string;
  readonly adminKey: string;
  /** Where the key was written. */
  readonly keyFile: string;
}

/**
 * On an empty database: creates the default tenant and an admin key, writes the key to
 * `<dataDir>/admin.key` (mode 0600) and returns it so that it can be printed once.
 * Returns undefined when a tenant already exists.
 */
export async function bootstrapIfEmpty(db: Kysely<Database>, dataDir: string): Promise<BootstrapResult | undefined> {
  return db.transaction().execute(async (tx) => {
    // Serialize concurrent first starts of several replicas on one database.
    await sql`select pg_advisory_xact_lock(7270001)`.execute(tx);
    if ((await countTenants(tx)) > 0) return undefined;
    const tenant = await createTenant(tx, "default");
    const { key } = await createApiKey(tx, tenant.id, "admin (bootstrap)", "admin");
    mkdirSync(dataDir, { recursive: true });
    const keyFile = join(dataDir, "admin.key");
    writeFileSync(keyFile, key + "\n", { mode: 0o600 });
    chmodSync(keyFile, 0o600);
    return { tenantId: tenant.id, adminKey: key, keyFile };
  });
}
