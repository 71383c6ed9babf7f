import type { Kysely } from "kysely";
import { Migrator, type Migration, type MigrationResultSet } from "kysely/migration";
import * as initial from "./migrations/2026_11_21_000000_initial.js";
import * as knowledge from "./migrations/2026_11_21_203000_knowledge.js";
import * as memoryState from "./migrations/2026_11_21_203100_memory_state.js";
import * as askConcurrency from "./migrations/2026_11_21_204000_ask_concurrency.js";
import * as askRecovery from "./migrations/2026_11_21_204500_ask_recovery.js";
import * as sessionWatch from "./migrations/2026_11_22_010000_session_watch.js";
import * as sessionIndexes from "./migrations/2026_12_06_000000_session_indexes.js";
import type { Database } from "./schema.js";

// Listed explicitly (not read from the directory) so that the compiled package,
// bundlers and tests all see the same migrations in the same order.
const migrations: Record<string, Migration> = {
  "2026_11_21_000000_initial": initial,
  "2026_11_21_203000_knowledge": knowledge,
  "2026_11_21_203100_memory_state": memoryState,
  "2026_11_21_204000_ask_concurrency": askConcurrency,
  "2026_11_21_204500_ask_recovery": askRecovery,
  "2026_11_22_010000_session_watch": sessionWatch,
  "2026_12_06_000000_session_indexes": sessionIndexes,
};

/** Brings the schema to the latest migration; throws with the failing migration's error. */
export async function migrateToLatest(db: Kysely<Database>): Promise<MigrationResultSet> {
  const migrator = new Migrator({ db, provider: { getMigrations: async () => migrations } });
  const result = await migrator.migrateToLatest();
  if (result.error) throw result.error;
  return result;
}
