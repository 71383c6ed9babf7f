import type { Config } from "../config.js";
import { migrateToLatest } from "../db/migrate.js";
import { openForCommand } from "./common.js";

/** `parley migrate`: brings the configured database to the latest schema and reports what ran. */
export async function migrateCommand(config: Config): Promise<void> {
  const database = await openForCommand(config, false);
  try {
    const result = await migrateToLatest(database.db);
    const applied = (result.results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
    const where = config.databaseUrl ? redact(config.databaseUrl) : `embedded database in ${config.dataDir}`;
    process.stdout.write(
      applied.length === 0
        ? `${where}: already up to date\n`
        : `${where}: applied ${applied.length} migration(s):\n${applied.map((n) => `  ${n}\n`).join("")}`,
    );
  } finally {
    await database.close();
  }
}

/** A database URL without its password, for output. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "the database";
  }
}
