// The load generator: N workers each run one operation in a loop (closed loop: a worker
// starts its next call when the previous one ends), first for a warm-up whose results are
// dropped, then for a duration or an operation count; latencies go to HDR histograms.
import { SingleBar, Presets } from "cli-progress";
import * as hdr from "hdr-histogram-js";
import { cpuPerOp, postgresDelta, type CpuCounters } from "./cpu.js";

/** Percentiles of one histogram, in milliseconds. */
export interface Latency {
  readonly count: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
  readonly mean: number;
}

/** What one load run measured. */
export interface LoadResult {
  readonly name: string;
  readonly concurrency: number;
  /** Operations completed in the measured phase. */
  readonly ops: number;
  readonly errors: number;
  readonly firstError?: string;
  readonly seconds: number;
  /** Operations per second. */
  readonly throughput: number;
  /** Units per second (messages, deltas) when the operation reports them. */
  readonly unitsPerSecond: number;
  readonly latency: Latency;
  /** Extra per-operation measurements (e.g. time to first token), by name. */
  readonly marks: Readonly<Record<string, Latency>>;
  /** CPU milliseconds per operation in the measured phase, by process (when counters were given). */
  readonly cpuMs?: { readonly client: number; readonly server: number; readonly postgres?: number };
  /** Throughput of each round, when the run was measured in several (see LoadTotals). */
  readonly rounds?: readonly number[];
}

/**
 * What the rounds of one run add up to: runLoad called again with the same totals measures
 * another round of the same run (interleaved with other runs in between), and returns the
 * result of all rounds so far: operations over the sum of the measured windows, one latency
 * histogram, CPU over all rounds' operations.
 */
export interface LoadTotals {
  readonly latency: hdr.Histogram;
  readonly marks: Map<string, hdr.Histogram>;
  ops: number;
  units: number;
  errors: number;
  firstError: string | undefined;
  seconds: number;
  cpu: { client: number; server: number; postgres: number | undefined } | undefined;
  readonly rounds: number[];
}

export function newTotals(): LoadTotals {
  return { latency: histogram(), marks: new Map(), ops: 0, units: 0, errors: 0, firstError: undefined, seconds: 0, cpu: undefined, rounds: [] };
}

/** Lets an operation record extra measurements (milliseconds). */
export interface Recorder {
  mark(name: string, ms: number): void;
}

/** One worker's operation: returns how many units it handled (default 1). */
export type Operation = (rec: Recorder) => Promise<number | void>;

export interface LoadOptions {
  readonly name: string;
  readonly concurrency: number;
  /** Measured phase length; ignored when ops is set. */
  readonly durationMs?: number;
  /** Measured phase as a number of operations across all workers. */
  readonly ops?: number;
  readonly warmupMs: number;
  /** Show a progress bar on stderr (only drawn on a TTY). */
  readonly progress?: boolean;
  /** Read at the start and the end of the measured phase, for cpuMs. */
  readonly counters?: () => Promise<CpuCounters>;
}

function histogram(): hdr.Histogram {
  // Microseconds from 1 µs to 10 minutes, 3 significant digits.
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: 3 });
}

function summary(h: hdr.Histogram): Latency {
  const ms = (us: number) => Math.round(us) / 1000;
  return {
    count: h.totalCount,
    p50: ms(h.getValueAtPercentile(50)),
    p90: ms(h.getValueAtPercentile(90)),
    p99: ms(h.getValueAtPercentile(99)),
    max: ms(h.maxValue),
    mean: ms(h.mean),
  };
}

function record(h: hdr.Histogram, ms: number): void {
  h.recordValue(Math.max(1, Math.round(ms * 1000)));
}

/** Runs `concurrency` workers, each built by makeWorker(i) before the clock starts; adds to totals when given (another round of the same run). */
export async function runLoad(
  options: LoadOptions,
  makeWorker: (i: number) => Promise<Operation>,
  totals: LoadTotals = newTotals(),
): Promise<LoadResult> {
  const workers = await Promise.all(Array.from({ length: options.concurrency }, (_, i) => makeWorker(i)));
  const latency = histogram();
  const marks = new Map<string, hdr.Histogram>();
  let measuring = false;
  let stop = false;
  // The measured window ends when the phase does: operations still in flight then finish
  // (the workers stop after them) but neither count nor add to the window, just as the
  // ones in flight when it began count without having started in it, so the throughput
  // is unbiased for operations of any length.
  let stopAt: number | undefined;
  let countersTo: Promise<CpuCounters> | undefined;
  const end = () => {
    stop = true;
    if (stopAt === undefined) {
      stopAt = performance.now();
      countersTo = options.counters?.();
    }
  };
  let ops = 0;
  let units = 0;
  let errors = 0;
  let firstError: string | undefined;
  const rec: Recorder = {
    mark(name, ms) {
      if (!measuring) return;
      let h = marks.get(name);
      if (!h) marks.set(name, (h = histogram()));
      record(h, ms);
    },
  };
  const target = options.ops;
  const durationMs = options.durationMs ?? 5_000;
  const bar =
    options.progress !== false
      ? new SingleBar(
          {
            format: `${options.name.padEnd(44)} |{bar}| {percentage}% {phase} {ops} ops`,
            hideCursor: true,
            clearOnComplete: false,
          },
          Presets.shades_classic,
        )
      : undefined;
  bar?.start(100, 0, { phase: "warm-up", ops: 0 });

  async function loop(op: Operation): Promise<void> {
    while (!stop) {
      const t0 = performance.now();
      try {
        const n = await op(rec);
        if (measuring && !stop) {
          record(latency, performance.now() - t0);
          ops++;
          units += typeof n === "number" ? n : 1;
          if (target !== undefined && ops >= target) end();
        }
      } catch (err) {
        if (measuring) {
          errors++;
          firstError ??= err instanceof Error ? err.message : String(err);
        }
        // A failing operation must not spin the CPU.
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  const running = Promise.all(workers.map(loop));
  const warmStart = performance.now();
  const ticker = setInterval(() => {
    const now = performance.now();
    if (!measuring) bar?.update(Math.min(100, ((now - warmStart) / Math.max(1, options.warmupMs)) * 100), { phase: "warm-up", ops });
    else {
      const pct = target !== undefined ? (ops / target) * 100 : ((now - start) / durationMs) * 100;
      bar?.update(Math.min(100, pct), { phase: "measure", ops });
    }
  }, 200);
  await new Promise((r) => setTimeout(r, options.warmupMs));
  const countersFrom = await options.counters?.();
  measuring = true;
  const start = performance.now();
  let timer: NodeJS.Timeout | undefined;
  if (target === undefined) timer = setTimeout(end, durationMs);
  await running;
  const seconds = ((stopAt ?? performance.now()) - start) / 1000;
  clearTimeout(timer);
  clearInterval(ticker);
  bar?.update(100, { phase: "done", ops });
  bar?.stop();
  const to = await countersTo;
  const t = totals;
  t.latency.add(latency);
  for (const [k, h] of marks) {
    const into = t.marks.get(k);
    if (into) into.add(h);
    else t.marks.set(k, h);
  }
  t.ops += ops;
  t.units += units;
  t.errors += errors;
  t.firstError ??= firstError;
  t.seconds += seconds;
  t.rounds.push(ops / seconds);
  if (countersFrom && to) {
    const pg = postgresDelta(countersFrom.postgres, to.postgres);
    const prev = t.cpu;
    t.cpu = {
      client: (prev?.client ?? 0) + to.client - countersFrom.client,
      server: (prev?.server ?? 0) + to.server - countersFrom.server,
      // Postgres' share only when every round could read it.
      postgres: pg !== undefined && (prev === undefined || prev.postgres !== undefined) ? (prev?.postgres ?? 0) + pg : undefined,
    };
  }
  return {
    name: options.name,
    concurrency: options.concurrency,
    ops: t.ops,
    errors: t.errors,
    ...(t.firstError !== undefined ? { firstError: t.firstError } : {}),
    seconds: t.seconds,
    throughput: t.ops / t.seconds,
    unitsPerSecond: t.units / t.seconds,
    latency: summary(t.latency),
    marks: Object.fromEntries([...t.marks].map(([k, h]) => [k, summary(h)])),
    ...(t.cpu ? { cpuMs: cpuPerOp(t.cpu, t.ops) } : {}),
    ...(t.rounds.length > 1 ? { rounds: [...t.rounds] } : {}),
  };
}
