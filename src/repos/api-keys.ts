import type { Kysely, Transaction } from "kysely";
import type { ApiKeyRole, ApiKeyRow, Database, TenantRow } from "../db/schema.js";
import { generateApiKey, hashApiKey, keyPrefix } from "../auth/keys.js";
import { newId } from "../ids.js";

type Db = Kysely<Database> | Transaction<Database>;

export async function createTenant(db: Db, name: string): Promise<TenantRow> {
  return db.insertInto("tenants").values({ id: newId(), name }).returningAll().executeTakeFirstOrThrow();
}

export async function findTenantByName(db: Db, name: string): Promise<TenantRow | undefined> {
  return db.selectFrom("tenants").selectAll().where("name", "=", name).orderBy("create_time").executeTakeFirst();
}

export async function findTenantById(db: Db, id: string): Promise<TenantRow | undefined> {
  return db.selectFrom("tenants").selectAll().where("id", "=", id).executeTakeFirst();
}

export async function countTenants(db: Db): Promise<number> {
  const r = await db.selectFrom("tenants").select((eb) => eb.fn.countAll<string>().as("n")).executeTakeFirstOrThrow();
  return Number(r.n);
}

/** Creates a key and returns it in clear text once, with its row. */
export async function createApiKey(
  db: Db,
  tenantId: string,
  name: string,
  role: ApiKeyRole,
  key: string = generateApiKey(),
): Promise<{ key: string; row: ApiKeyRow }> {
  const row = await db
    .insertInto("api_keys")
    .values({ id: newId(), tenant_id: tenantId, name, role, prefix: keyPrefix(key), key_hash: hashApiKey(key) })
    .returningAll()
    .executeTakeFirstOrThrow();
  return { key, row };
}

export async function findActiveKeyByHash(db: Db, keyHash: string): Promise<ApiKeyRow | undefined> {
  return db
    .selectFrom("api_keys")
    .selectAll()
    .where("key_hash", "=", keyHash)
    .where("revoke_time", "is", null)
    .executeTakeFirst();
}

export async function listApiKeys(db: Db, tenantId?: string): Promise<ApiKeyRow[]> {
  let q = db.selectFrom("api_keys").selectAll().orderBy("create_time").orderBy("id");
  if (tenantId) q = q.where("tenant_id", "=", tenantId);
  return q.execute();
}

/** Revokes a key by id or prefix; returns the number of keys revoked. */
export async function revokeApiKey(db: Db, idOrPrefix: string): Promise<number> {
  const r = await db
    .updateTable("api_keys")
    .set({ revoke_time: new Date() })
    .where((eb) => eb.or([eb("prefix", "=", idOrPrefix), eb(eb.cast("id", "text"), "=", idOrPrefix)]))
    .where("revoke_time", "is", null)
    .executeTakeFirst();
  return Number(r.numUpdatedRows);
}
