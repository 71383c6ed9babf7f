import type { Kysely } from "kysely";
import type { Config } from "../config.js";
import type { ApiKeyRole, ApiKeyRow, Database, TenantRow } from "../db/schema.js";
import { isUuid } from "../ids.js";
import { createApiKey, findTenantById, findTenantByName, listApiKeys, revokeApiKey } from "../repos/api-keys.js";
import { CliError, openForCommand } from "./common.js";

/** Where the keys commands write: the key itself to out (stdout), explanations to info (stderr). */
export interface KeysOutput {
  out(text: string): void;
  info(text: string): void;
}

const stdio: KeysOutput = {
  out: (t) => process.stdout.write(t),
  info: (t) => process.stderr.write(t),
};

export interface CreateKeyOptions {
  readonly name?: string;
  readonly role?: string;
  /** Tenant id or name; default: the tenant named "default" created at first start. */
  readonly tenant?: string;
}

const ROLES: readonly ApiKeyRole[] = ["admin", "service"];

async function withDatabase<T>(config: Config, fn: (db: Kysely<Database>) => Promise<T>): Promise<T> {
  const database = await openForCommand(config, config.migrateOnStart);
  try {
    return await fn(database.db);
  } finally {
    await database.close();
  }
}

async function resolveTenant(db: Kysely<Database>, tenant: string | undefined): Promise<TenantRow> {
  if (tenant === undefined) {
    const row = await findTenantByName(db, "default");
    if (!row) {
      throw new CliError("no default tenant yet: start `parley serve` once, or pass --tenant <id|name>");
    }
    return row;
  }
  const row = isUuid(tenant) ? await findTenantById(db, tenant.toLowerCase()) : await findTenantByName(db, tenant);
  if (!row) throw new CliError(`tenant "${tenant}" not found`);
  return row;
}

/** `parley keys create`: creates an API key and prints it once. */
export async function createKeyCommand(config: Config, options: CreateKeyOptions, io: KeysOutput = stdio) {
  const role = (options.role ?? "service") as ApiKeyRole;
  if (!ROLES.includes(role)) throw new CliError(`--role must be one of ${ROLES.join(", ")}, got "${options.role}"`, 2);
  const name = options.name ?? `${role} key`;
  if (name.length === 0 || name.length > 256) throw new CliError("--name must have 1 to 256 characters", 2);
  await withDatabase(config, async (db) => {
    const tenant = await resolveTenant(db, options.tenant);
    const { key, row } = await createApiKey(db, tenant.id, name, role);
    io.info(
      `Created ${role} key ${row.id} (${row.prefix}…, "${name}") for tenant ${tenant.name} (${tenant.id}).\n` +
        `It is shown only this once; send it as \`Authorization: Bearer <key>\`:\n`,
    );
    io.out(`${key}\n`);
  });
}

function formatTime(d: Date | null): string {
  return d ? d.toISOString().replace(/\.\d{3}Z$/, "Z") : "-";
}

/** Renders rows as left-aligned columns. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}

/** `parley keys list`: every key's id, prefix, name, role and times; never the key itself. */
export async function listKeysCommand(
  config: Config,
  options: { readonly tenant?: string; readonly json?: boolean },
  io: KeysOutput = stdio,
) {
  await withDatabase(config, async (db) => {
    const tenant = options.tenant === undefined ? undefined : await resolveTenant(db, options.tenant);
    const keys = await listApiKeys(db, tenant?.id);
    if (options.json) {
      io.out(JSON.stringify(keys.map(publicKey), null, 2) + "\n");
      return;
    }
    if (keys.length === 0) {
      io.info("no API keys\n");
      return;
    }
    io.out(
      table(
        ["ID", "PREFIX", "NAME", "ROLE", "TENANT", "CREATED", "REVOKED"],
        keys.map((k) => [k.id, k.prefix, k.name, k.role, k.tenant_id, formatTime(k.create_time), formatTime(k.revoke_time)]),
      ),
    );
  });
}

function publicKey(k: ApiKeyRow) {
  return {
    id: k.id,
    prefix: k.prefix,
    name: k.name,
    role: k.role,
    tenantId: k.tenant_id,
    createTime: k.create_time.toISOString(),
    revokeTime: k.revoke_time?.toISOString() ?? null,
  };
}

/** `parley keys revoke <id|prefix>`: revokes exactly one active key. */
export async function revokeKeyCommand(config: Config, idOrPrefix: string, io: KeysOutput = stdio) {
  await withDatabase(config, async (db) => {
    const wanted = idOrPrefix.toLowerCase();
    const matches = (await listApiKeys(db)).filter(
      (k) => k.revoke_time === null && (k.id === wanted || k.prefix === idOrPrefix),
    );
    if (matches.length === 0) throw new CliError(`no active key with id or prefix "${idOrPrefix}"`);
    if (matches.length > 1) {
      throw new CliError(`"${idOrPrefix}" matches ${matches.length} active keys; revoke by id (see \`parley keys list\`)`);
    }
    const key = matches[0]!;
    await revokeApiKey(db, key.id);
    io.info(`Revoked key ${key.id} (${key.prefix}…, "${key.name}"). Running servers refuse it within seconds.\n`);
  });
}
