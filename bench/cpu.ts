// CPU time used by the processes of a run, read around each measured phase: the bench client
// (this process), the server (its own process.cpuUsage over IPC) and Postgres (every process
// named `postgres` on this machine, from /proc; absent where /proc is not readable or Postgres
// runs elsewhere). Divided by the operations of the phase, it says what one operation costs
// the machine, which moves much less with the machine's load than throughput does.
import { readdirSync, readFileSync } from "node:fs";

/** CPU microseconds used so far, by process group. */
export interface CpuCounters {
  readonly client: number;
  readonly server: number;
  /** Undefined when Postgres' processes cannot be read. */
  readonly postgres: number | undefined;
}

const TICK_MICROS = 1e6 / 100; // USER_HZ is 100 on Linux.

/** utime + stime of every `postgres` process, in microseconds; undefined without /proc. */
export function postgresCpuMicros(): number | undefined {
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return undefined;
  }
  let ticks = 0;
  let found = false;
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
    ticks += Number(fields[11]) + Number(fields[12]);
    found = true;
  }
  return found ? ticks * TICK_MICROS : undefined;
}

/** Milliseconds of CPU per operation between two readings. */
export function cpuPerOp(
  from: CpuCounters,
  to: CpuCounters,
  ops: number,
): { client: number; server: number; postgres?: number } {
  const per = (a: number, b: number) => Math.round(((b - a) / 1000 / Math.max(1, ops)) * 1000) / 1000;
  return {
    client: per(from.client, to.client),
    server: per(from.server, to.server),
    ...(from.postgres !== undefined && to.postgres !== undefined ? { postgres: per(from.postgres, to.postgres) } : {}),
  };
}
