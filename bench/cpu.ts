// CPU time used by the processes of a run, read around each measured phase: the bench client
// (this process), the server (its own process.cpuUsage over IPC) and Postgres (every process
// named `postgres` on this machine, from /proc; absent where /proc is not readable or Postgres
// runs elsewhere). Divided by the operations of the phase, it says what one operation costs
// the machine: it moves with the machine's speed too, but less than throughput does, and it
// says whether the cost is in the client, the server or Postgres.
import { readdirSync, readFileSync } from "node:fs";

/** CPU microseconds used so far, by process group. */
export interface CpuCounters {
  readonly client: number;
  readonly server: number;
  /** By pid: Postgres' backends come and go (a pool closes an idle connection, a peer its pool). Undefined when they cannot be read. */
  readonly postgres: ReadonlyMap<string, number> | undefined;
}

const TICK_MICROS = 1e6 / 100; // USER_HZ is 100 on Linux.

/** utime + stime of every `postgres` process by pid, in microseconds; undefined without /proc or without any. */
export function postgresCpuMicros(): Map<string, number> | undefined {
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return undefined;
  }
  const out = new Map<string, number>();
  for (const pid of entries) {
    if (!/^\d+$/.test(pid)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    } catch {
      continue; // exited meanwhile
    }
    // "pid (comm) state ppid …": comm may hold spaces, so split after its closing parenthesis.
    const close = stat.lastIndexOf(")");
    if (stat.slice(stat.indexOf("(") + 1, close) !== "postgres") continue;
    const fields = stat.slice(close + 2).split(" ");
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state field.
    out.set(pid, (Number(fields[11]) + Number(fields[12])) * TICK_MICROS);
  }
  return out.size > 0 ? out : undefined;
}

/**
 * Postgres' CPU microseconds between two readings: for each process, what it used since the
 * first reading (all of it when it started after). A backend that exited in between takes
 * what it used since the first reading with it (not counted): the figure is a lower bound.
 */
export function postgresDelta(from: CpuCounters["postgres"], to: CpuCounters["postgres"]): number | undefined {
  if (!from || !to) return undefined;
  let sum = 0;
  for (const [pid, t] of to) sum += t - (from.get(pid) ?? 0);
  return sum;
}

/** Milliseconds of CPU per operation from microseconds used over ops operations. */
export function cpuPerOp(
  used: { readonly client: number; readonly server: number; readonly postgres: number | undefined },
  ops: number,
): { client: number; server: number; postgres?: number } {
  const per = (us: number) => Math.round((us / 1000 / Math.max(1, ops)) * 1000) / 1000;
  return {
    client: per(used.client),
    server: per(used.server),
    ...(used.postgres !== undefined ? { postgres: per(used.postgres) } : {}),
  };
}
