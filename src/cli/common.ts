import { existsSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config.js";
import { openDatabase, type DatabaseHandle } from "../db/database.js";
import { migrateToLatest } from "../db/migrate.js";

/** A failure the CLI reports as one line on stderr, exiting with exitCode. */
export class CliError extends Error {
  override name = "CliError";
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** True when the configuration uses the embedded database persisted under dataDir (one process at a time). */
export function usesEmbeddedDir(config: Config): boolean {
  return config.databaseUrl === undefined;
}

function pidFile(config: Config): string {
  return join(config.dataDir, "serve.pid");
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The pid of a `parley serve` that holds the embedded database of this data dir, if one runs. */
export function embeddedServerPid(config: Config): number | undefined {
  if (!usesEmbeddedDir(config)) return undefined;
  const file = pidFile(config);
  if (!existsSync(file)) return undefined;
  const pid = Number(readFileSync(file, "utf8").trim());
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || !isAlive(pid)) return undefined;
  return pid;
}

/**
 * Claims the embedded database of the data dir for this process. PGlite has no lock of its own, and
 * two processes writing one data directory corrupt it. Returns the release function.
 */
export function claimEmbeddedDir(config: Config): () => void {
  if (!usesEmbeddedDir(config)) return () => {};
  const other = embeddedServerPid(config);
  if (other !== undefined) {
    throw new CliError(
      `another parley serve (pid ${other}) is using the embedded database in ${config.dataDir}; stop it first`,
    );
  }
  mkdirSync(config.dataDir, { recursive: true });
  const file = pidFile(config);
  writeFileSync(file, `${process.pid}\n`);
  return () => {
    if (existsSync(file) && readFileSync(file, "utf8").trim() === String(process.pid)) rmSync(file, { force: true });
  };
}

/**
 * Opens the configured database for a one-shot command (keys, migrate), refusing the embedded
 * database while a server holds it, and migrates it when migrate is true.
 */
export async function openForCommand(config: Config, migrate: boolean): Promise<DatabaseHandle> {
  const pid = embeddedServerPid(config);
  if (pid !== undefined) {
    throw new CliError(
      `parley serve (pid ${pid}) is using the embedded database in ${config.dataDir}: ` +
        `stop it before running this command, or use DATABASE_URL=postgres://… to share a database`,
    );
  }
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolSize: 2 });
  try {
    if (migrate) await migrateToLatest(database.db);
  } catch (err) {
    await database.close().catch(() => {});
    throw err;
  }
  return database;
}
