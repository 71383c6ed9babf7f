// Renders a results JSON into bench/REPORT.md and its charts (Vega-Lite → SVG → PNG).
// Run alone to re-render: `tsx bench/report.ts bench/results/<file>.json`.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Resvg } from "@resvg/resvg-js";
import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import type { LoadResult } from "./load.js";

/** One load run with what it measured and its labels. */
export interface RunRecord extends LoadResult {
  readonly tags: Readonly<Record<string, string | number>>;
}

/** Everything one `npm run bench` measured. */
export interface BenchResults {
  readonly meta: {
    readonly startedAt: string;
    readonly finishedAt: string;
    readonly command: string;
    readonly smoke: boolean;
    readonly profile: Readonly<Record<string, unknown>>;
    readonly machine: {
      readonly cpus: number;
      readonly cpuModel: string;
      readonly memoryGiB: number;
      readonly os: string;
      readonly loadBefore: readonly number[];
      readonly loadAfter: readonly number[];
    };
    readonly versions: Readonly<Record<string, string>>;
    readonly poolSize: number;
    readonly notes: readonly string[];
  };
  readonly runs: Readonly<Record<string, RunRecord>>;
  readonly peers: { adk?: PeerStatus; langgraph?: PeerStatus };
  readonly memory?: Readonly<Record<string, number>>;
}

interface PeerStatus {
  readonly status: "ok" | "failed";
  readonly error?: string;
}

/** One goal of the issue, as a ratio against a same-run baseline. */
export interface Goal {
  readonly goal: string;
  readonly measured: string;
  readonly baseline: string;
  readonly ratio: number | undefined;
  /** "≥ 0.7" or "≤ 1.2". */
  readonly target: string;
  readonly holds: boolean | undefined;
}

/** Versions of the runtime and of every measured package. */
export function versionsOf(): Record<string, string> {
  // Read from node_modules: packages whose "exports" hide package.json cannot be required for it.
  const v = (name: string) => {
    try {
      const file = new URL(`../node_modules/${name}/package.json`, import.meta.url);
      return (JSON.parse(readFileSync(file, "utf8")) as { version: string }).version;
    } catch {
      return "unknown";
    }
  };
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
  return {
    node: process.version,
    parley: pkg.version,
    "@connectrpc/connect": v("@connectrpc/connect"),
    "@connectrpc/connect-node": v("@connectrpc/connect-node"),
    pg: v("pg"),
    kysely: v("kysely"),
    "@electric-sql/pglite": v("@electric-sql/pglite"),
    "@google/adk": v("@google/adk"),
    "@mikro-orm/postgresql": v("@mikro-orm/postgresql"),
    "@langchain/langgraph-checkpoint-postgres": v("@langchain/langgraph-checkpoint-postgres"),
  };
}

const fmt = (n: number | undefined, digits = 2) =>
  n === undefined || !Number.isFinite(n) ? "–" : n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(digits);

/** The goals of issue 5, computed from the runs of one bench. */
export function goals(r: BenchResults): Goal[] {
  const run = (id: string) => r.runs[id];
  const out: Goal[] = [];
  function atLeast(goal: string, mId: string, mVal: number | undefined, bId: string, bVal: number | undefined, min: number) {
    const ratio = mVal !== undefined && bVal ? mVal / bVal : undefined;
    out.push({ goal, measured: mId, baseline: bId, ratio, target: `≥ ${min}`, holds: ratio === undefined ? undefined : ratio >= min });
  }
  function atMost(goal: string, mId: string, mVal: number | undefined, bId: string, bVal: number | undefined, max: number) {
    const ratio = mVal !== undefined && bVal ? mVal / bVal : undefined;
    out.push({ goal, measured: mId, baseline: bId, ratio, target: `≤ ${max}`, holds: ratio === undefined ? undefined : ratio <= max });
  }
  const concs = Object.values(r.runs)
    .filter((x) => x.tags.op === "echo")
    .map((x) => Number(x.tags.concurrency))
    .filter((c) => c > 1);
  for (const c of concs) {
    const echo = run(`echo.unary.c${c}`);
    for (const op of ["append", "get", "list"]) {
      const m = run(`parley.${op}.c${c}`);
      atLeast(`Unary ${op === "append" ? "AppendMessages(1)" : op === "get" ? "GetSession" : "ListMessages(last 20)"} calls/s at c=${c} vs bare echo`, `parley.${op}.c${c}`, m?.throughput, `echo.unary.c${c}`, echo?.throughput, 0.7);
    }
    // Context for the append goal: one append is one commit, so the database ceiling bounds it too.
    const ins = run(`pg.insert.c${c}`);
    const app = run(`parley.append.c${c}`);
    if (ins && app) {
      out.push({
        goal: `(context) AppendMessages(1) calls/s at c=${c} vs raw pg INSERT (database ceiling); raw INSERT vs echo: ${fmt(ins.throughput / (echo?.throughput ?? NaN))}×`,
        measured: app.name,
        baseline: ins.name,
        ratio: app.throughput / ins.throughput,
        target: "context",
        holds: undefined,
      });
    }
  }
  const batch = Object.values(r.runs).find((x) => x.tags.op === "append-batch");
  if (batch) {
    const c = batch.tags.concurrency;
    const ins = run(`pg.insert.c${c}`);
    atLeast(`Batched AppendMessages(${batch.tags.batch}) messages/s vs raw pg INSERT rows/s (c=${c})`, batch.name, batch.unitsPerSecond, `pg.insert.c${c}`, ins?.throughput, 0.5);
  }
  const ask1 = run("parley.ask.c1");
  if (ask1) {
    const p50 = ask1.marks.ttft?.p50;
    out.push({
      goal: "Ask overhead (TTFT − model's 0 ms) p50 at c=1, in ms",
      measured: "parley.ask.c1",
      baseline: "3 ms (absolute)",
      ratio: p50 !== undefined ? p50 / 3 : undefined,
      target: "≤ 1 (p50 ≤ 3 ms)",
      holds: p50 !== undefined ? p50 <= 3 : undefined,
    });
    // What the framework alone takes to open a server stream and deliver its first message, measured in turn with the Asks.
    const bare1 = run("echo.stream.c1")?.marks.ttft?.p50;
    if (p50 !== undefined && bare1 !== undefined) {
      out.push({
        goal: "(context) Ask time to first token p50 at c=1 vs a bare Connect stream's time to its first message",
        measured: `${fmt(p50)} ms`,
        baseline: `${fmt(bare1)} ms`,
        ratio: p50 / bare1,
        target: "context",
        holds: undefined,
      });
    }
  }
  const askMid = Object.values(r.runs).find((x) => x.name.startsWith("parley.ask.c") && x.concurrency > 1 && askEcho(r, x.concurrency));
  if (askMid) {
    const echo = askEcho(r, askMid.concurrency)!;
    atMost(`Ask overhead p50 at c=${askMid.concurrency} vs bare echo p50`, askMid.name, askMid.marks.ttft?.p50, echo.name, echo.latency.p50, 2);
  }
  const askTop = Object.values(r.runs)
    .filter((x) => x.name.startsWith("parley.ask.c"))
    .sort((a, b) => b.concurrency - a.concurrency)[0];
  if (askTop) {
    const stream = run(`echo.stream.c${askTop.concurrency}`) ?? Object.values(r.runs).find((x) => x.tags.op === "stream");
    if (stream) atLeast(`Delivered deltas/s at ${askTop.concurrency} concurrent Asks vs bare stream messages/s`, askTop.name, askTop.unitsPerSecond, stream.name, stream.unitsPerSecond, 0.5);
  }
  const hist = Object.values(r.runs)
    .filter((x) => x.name.startsWith("parley.history.list.h") && !x.name.endsWith(".full"))
    .map((x) => Number(x.tags.history))
    .sort((a, b) => a - b);
  if (hist.length >= 2) {
    const lo = hist[0]!;
    const hi = hist.at(-1)!;
    atMost(`Flat history: Ask overhead p50 at ${hi.toLocaleString("en-US")} messages vs ${lo}`, `parley.history.ask.h${hi}`, run(`parley.history.ask.h${hi}`)?.marks.ttft?.p50, `parley.history.ask.h${lo}`, run(`parley.history.ask.h${lo}`)?.marks.ttft?.p50, 1.2);
    atMost(`Flat history: ListMessages p50 at ${hi.toLocaleString("en-US")} messages vs ${lo}`, `parley.history.list.h${hi}`, run(`parley.history.list.h${hi}`)?.latency.p50, `parley.history.list.h${lo}`, run(`parley.history.list.h${lo}`)?.latency.p50, 1.2);
    const fullAsk = run(`parley.history.ask.h${lo}.full`);
    const fullList = run(`parley.history.list.h${lo}.full`);
    const others = Number(r.meta.profile.flatSessions) * Number(r.meta.profile.flatPerSession);
    if (fullAsk) atMost(`Flat table: Ask overhead p50 with ${others.toLocaleString("en-US")} other messages vs empty table`, fullAsk.name, fullAsk.marks.ttft?.p50, `parley.history.ask.h${lo}`, run(`parley.history.ask.h${lo}`)?.marks.ttft?.p50, 1.2);
    if (fullList) atMost(`Flat table: ListMessages p50 with ${others.toLocaleString("en-US")} other messages vs empty table`, fullList.name, fullList.latency.p50, `parley.history.list.h${lo}`, run(`parley.history.list.h${lo}`)?.latency.p50, 1.2);
  }
  if (r.memory) {
    const kb = r.memory.bytesPerStreamHeap! / 1024;
    out.push({
      goal: `Server memory per open streaming Ask (${r.memory.open ?? r.memory.streams} of ${r.memory.streams} slow Asks open; heap+external after GC)`,
      measured: `${fmt(kb)} KB (RSS: ${fmt(r.memory.bytesPerStreamRss! / 1024)} KB)`,
      baseline: "50 KB (absolute)",
      ratio: kb / 50,
      target: "≤ 1 (≤ 50 KB)",
      holds: kb <= 50,
    });
    const bareKb = r.memory.bare_bytesPerStreamHeap !== undefined ? r.memory.bare_bytesPerStreamHeap / 1024 : undefined;
    if (bareKb !== undefined) {
      out.push({
        goal: `(context) Server memory per open streaming Ask vs per open bare Connect stream (${r.memory.bare_open} open, a message every 100 ms)`,
        measured: `${fmt(kb)} KB`,
        baseline: `${fmt(bareKb)} KB`,
        ratio: kb / bareKb,
        target: "context",
        holds: undefined,
      });
    }
  }
  const peerH = Object.values(r.runs)
    .filter((x) => x.tags.system === "adk" && x.tags.op === "append")
    .map((x) => Number(x.tags.history))
    .sort((a, b) => a - b);
  const h = peerH.includes(1000) ? 1000 : peerH.at(-1);
  if (h !== undefined) {
    for (const [peer, min] of [["adk", 4], ["langgraph", 10]] as const) {
      for (const op of ["append", "load"]) {
        const p = run(`${peer}.${op}.h${h}`);
        const m = run(`parley.peer.${op}.h${h}`);
        const what = op === "append" ? "append a message" : "load the last 20";
        atLeast(`Parley vs ${peer === "adk" ? "ADK" : "LangGraph"} (in-process): ${what}/s at ${h.toLocaleString("en-US")} turns`, `parley.peer.${op}.h${h}`, m?.throughput, `${peer}.${op}.h${h}`, p?.throughput, min);
      }
    }
  }
  return out;
}

function table(headers: string[], rows: (string | number)[][]): string {
  return [
    `| ${headers.join(" | ")} |`,
    `| ${headers.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

async function png(spec: TopLevelSpec, file: string): Promise<void> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  const image = new Resvg(svg, { background: "white", fitTo: { mode: "zoom", value: 2 }, font: { loadSystemFonts: true, defaultFontFamily: "DejaVu Sans" } }).render();
  writeFileSync(file, image.asPng());
}

async function charts(r: BenchResults, outDir: string): Promise<string[]> {
  const files: string[] = [];
  const label: Record<string, string> = {
    "parley/append": "Parley AppendMessages(1)",
    "parley/get": "Parley GetSession",
    "parley/list": "Parley ListMessages(last 20)",
    "connect/echo": "bare Connect echo",
    "pg/insert": "raw pg INSERT",
    "pg/select": "raw pg SELECT last 20",
  };
  const tp = Object.values(r.runs)
    .filter((x) => label[`${x.tags.system}/${x.tags.op}`] && x.tags.backend !== "pglite" && !x.tags.history)
    .map((x) => ({ series: label[`${x.tags.system}/${x.tags.op}`], concurrency: x.concurrency, throughput: x.throughput }));
  if (tp.length) {
    await png(
      {
        $schema: "https://vega.github.io/schema/vega-lite/v6.json",
        title: "Throughput vs concurrency (calls/s, same run)",
        width: 520,
        height: 300,
        data: { values: tp },
        mark: { type: "line", point: true },
        encoding: {
          x: { field: "concurrency", type: "quantitative", scale: { type: "log" }, title: "concurrency" },
          y: { field: "throughput", type: "quantitative", scale: { type: "log" }, title: "calls/s (log)" },
          color: { field: "series", type: "nominal", title: null, legend: { labelLimit: 400, orient: "bottom", columns: 2 } },
        },
      },
      join(outDir, "throughput.png"),
    );
    files.push("throughput.png");
  }
  const hist = Object.values(r.runs)
    .filter((x) => x.tags.history !== undefined && x.tags.table !== "1M-other" && (x.tags.op === "list" || x.tags.op === "ask" || x.tags.op === "load"))
    .map((x) => ({
      series:
        x.tags.system === "parley"
          ? x.tags.op === "ask"
            ? "Parley Ask TTFT (c=1)"
            : x.name.startsWith("parley.peer")
              ? `Parley ListMessages(last 20) (c=${x.concurrency})`
              : "Parley ListMessages(last 20) (c=1)"
          : x.tags.system === "adk"
            ? `ADK getSession(last 20) (c=${x.concurrency})`
            : `LangGraph getTuple (c=${x.concurrency})`,
      history: Number(x.tags.history),
      p50: x.tags.op === "ask" ? (x.marks.ttft?.p50 ?? x.latency.p50) : x.latency.p50,
    }));
  if (hist.length) {
    await png(
      {
        $schema: "https://vega.github.io/schema/vega-lite/v6.json",
        title: "Latency p50 vs history length (ms, same run)",
        width: 520,
        height: 300,
        data: { values: hist },
        mark: { type: "line", point: true },
        encoding: {
          x: { field: "history", type: "quantitative", scale: { type: "log" }, title: "messages (turns) in the session" },
          y: { field: "p50", type: "quantitative", scale: { type: "log" }, title: "p50 ms (log)" },
          color: { field: "series", type: "nominal", title: null, legend: { labelLimit: 400, orient: "bottom", columns: 2 } },
        },
      },
      join(outDir, "history.png"),
    );
    files.push("history.png");
  }
  return files;
}

/** A run's ops/s over another run's (or the inverse when invert is set, to read "Parley is N× the peer"). */
/** The bare echo the Asks at concurrency c are compared with: the one measured right before them, else scenario 1's. */
function askEcho(r: BenchResults, c: number): RunRecord | undefined {
  return r.runs[`echo.unary.ask.c${c}`] ?? r.runs[`echo.unary.c${c}`];
}

/** CPU per operation by process, "0.31 + 0.33 + 0.00 = 0.64". */
function cpuCell(x: RunRecord): string {
  const c = x.cpuMs;
  if (!c) return "–";
  const parts = [c.client, c.server, ...(c.postgres !== undefined ? [c.postgres] : [])];
  return `${parts.map((v) => v.toFixed(2)).join(" + ")} = ${parts.reduce((a, b) => a + b, 0).toFixed(2)}`;
}

function runTable(
  r: BenchResults,
  ids: string[],
  baseline?: (x: RunRecord) => RunRecord | undefined,
  units?: string,
  invert = false,
): string {
  const rows = ids
    .map((id) => r.runs[id])
    .filter((x): x is RunRecord => x !== undefined)
    .map((x) => {
      const b = baseline?.(x);
      return [
        `\`${x.name}\``,
        x.concurrency,
        x.rounds ? `${fmt(x.throughput)} (${fmt(Math.min(...x.rounds))}–${fmt(Math.max(...x.rounds))})` : fmt(x.throughput),
        ...(units ? [fmt(x.unitsPerSecond)] : []),
        fmt(x.latency.p50),
        fmt(x.latency.p99),
        ...(x.marks.ttft ? [`${fmt(x.marks.ttft.p50)} / ${fmt(x.marks.ttft.p99)}`] : ["–"]),
        b ? (invert ? `\`${b.name}\` is ${fmt(b.throughput / x.throughput)}×` : `${fmt(x.throughput / b.throughput)}× \`${b.name}\``) : "–",
        cpuCell(x),
        x.errors,
      ];
    });
  return table(
    ["run", "c", "ops/s (range of its rounds)", ...(units ? [units] : []), "p50 ms", "p99 ms", "TTFT p50 / p99 ms", "ratio (ops/s)", "CPU ms/op: client + server + Postgres", "errors"],
    rows,
  );
}

/** Writes REPORT.md (and its PNG charts) into outDir. */
export async function renderReport(r: BenchResults, outDir: string, jsonRel: string): Promise<void> {
  const images = await charts(r, outDir);
  const m = r.meta;
  const ids = Object.keys(r.runs);
  const by = (prefix: string) => ids.filter((id) => id.startsWith(prefix));
  const g = goals(r);
  const findingsFile = join(outDir, "findings.md");
  const findings = existsSync(findingsFile) ? readFileSync(findingsFile, "utf8").trim() : "";
  const lines: string[] = [
    "# Parley benchmark report",
    "",
    "Generated by the harness (`bench/run.ts`, `bench/report.ts`) from",
    `[\`${jsonRel}\`](${jsonRel}); do not edit by hand. Every figure is a ratio against a baseline`,
    "measured in the same run, on the same machine, Postgres server and pool size.",
    "",
    `- Command: \`${m.command}\`${m.smoke ? " (smoke configuration: the numbers mean nothing)" : ""}`,
    `- When: ${m.startedAt} → ${m.finishedAt}`,
    `- Machine: ${m.machine.cpus} × ${m.machine.cpuModel}, ${m.machine.memoryGiB} GiB, ${m.machine.os}; load average before ${m.machine.loadBefore.map((l) => l.toFixed(2)).join(" / ")}, after ${m.machine.loadAfter.map((l) => l.toFixed(2)).join(" / ")} (shared machine)`,
    `- Versions: ${Object.entries(m.versions).map(([k, v]) => `${k} ${v}`).join(", ")}`,
    `- Pool size: ${m.poolSize} connections for Parley's server, the raw pg baseline and LangGraph (pg.Pool default); ADK uses MikroORM's default pool.`,
    `- Client and server on this one machine: the load generator and the peers (in-process) run in one Node process, the Parley server (Postgres, then PGlite) in another, over gRPC (HTTP/2 cleartext) through \`createParleyClient\`. The server runs as compiled by tsc (\`tsconfig.bench.json\`: src, gen and bench/server.ts into \`dist/bench-server\`), the JavaScript \`npm start\` runs, not through tsx's loader.`,
    `- Phases: warm-up ${m.profile.warmupMs} ms then ${m.profile.durationMs} ms measured per run (closed loop: each of c workers starts its next call when the previous one ends).${Number(m.profile.rounds ?? 1) > 1 ? ` The runs of scenarios 1 and 2 and the baselines they are compared with are measured in ${m.profile.rounds} rounds of ${Number(m.profile.durationMs) / Number(m.profile.rounds)} ms each (three times as long for the Asks at c > 16; after ${Number(m.profile.warmupMs) / 4} ms of warm-up from the second round on), taken in turn (echo, append, get, list, echo, append, …; echo, Asks, echo, Asks, …): both sides of a ratio sample the same stretch of the shared machine's load. Their figures are over all rounds; the range in brackets is the lowest and highest round's throughput.` : ""}`,
    "- CPU ms/op: the CPU time the bench client process (the load generator, and the peers, which run in it), the server process and every `postgres` process on the machine (from /proc) used during a run's measured phase, divided by its operations. Kernel work not charged to a process (loopback TCP delivery in softirq) is not in it. It moves with the machine too (its speed changes over the day), though less than throughput does, and it says where an operation's cost is: in the client, the server or Postgres.",
    ...m.notes.map((n) => `- ${n}`),
    "",
    "## Goals",
    "",
    table(
      ["goal", "measured", "baseline (same run)", "ratio", "target", "holds"],
      g.map((x) => [x.goal, x.measured.startsWith("parley") || x.measured.startsWith("echo") ? `\`${x.measured}\`` : x.measured, x.baseline.includes(".") && !x.baseline.includes(" ") ? `\`${x.baseline}\`` : x.baseline, x.ratio === undefined ? "–" : `${fmt(x.ratio)}×`, x.target === "context" ? "–" : x.target, x.target === "context" ? "–" : x.holds === undefined ? "not measured" : x.holds ? "yes" : "**no**"]),
    ),
    "",
    ...images.map((f) => `![${f}](${f})`),
    "",
    "## Baselines",
    "",
    "Bare Connect service (`bench/echo.ts`: unary echo; server stream of small messages) on the same one-port server",
    "and process as Parley, without Parley's interceptors; raw `pg` with the statements Parley's repository issues.",
    "Each `echo.unary.c*` runs in turn with scenario 1's runs at the same concurrency (one round of each, then the next), and `echo.unary.ask.c*` and the top `echo.stream.c*` in turn with the Asks they are compared with, so both sides of a ratio see the same machine load.",
    "",
    runTable(r, [...by("echo."), ...by("pg.")], undefined, "units/s"),
    "",
    "## Scenario 1: AppendMessages, GetSession, ListMessages(last 20) on Postgres",
    "",
    runTable(r, by("parley.append").concat(by("parley.get"), by("parley.list")), (x) => r.runs[`echo.unary.c${x.concurrency}`], "messages/s"),
    "",
    "## Scenario 2: Ask with a zero-latency model emitting 200 tokens",
    "",
    "TTFT is client-observed time to the first TextDelta; the model's own time to first token is 0 (all its tokens are ready when it is called), so TTFT is Parley's overhead. Units are delivered deltas. Runs on the database scenario 1 wrote to, after VACUUM ANALYZE of messages and sessions and a CHECKPOINT (as in scenario 3), so that the Asks do not share the machine with the write-out of scenario 1's rows.",
    "",
    runTable(r, by("parley.ask."), (x) => askEcho(r, x.concurrency), "deltas/s"),
    "",
    "## Scenario 3: history length (and a table full of other sessions)",
    "",
    "History seeded in SQL; after each seeding VACUUM ANALYZE of messages and sessions and a CHECKPOINT, so that no run measures the write-out of the rows just seeded. `.full` runs repeat the smallest session after the other users' messages were added. Each Ask adds two messages to its session.",
    "",
    runTable(r, by("parley.history."), undefined),
    "",
    "## Scenario 4: open streams",
    "",
    r.memory
      ? table(
          ["streams", "of", "started", "open when measured", "failed", "heap+external before → during", "per open stream", "RSS before → during", "RSS per open stream", "CPU while open: server / client (cores)"],
          (["", "bare_"] as const)
            .filter((p) => r.memory![`${p}streams`] !== undefined)
            .map((p) => {
              const m = (k: string) => r.memory![`${p}${k}`];
              return [
                m("streams")!,
                p === "" ? "slow Asks" : "bare Connect streams",
                m("started")!,
                m("open") ?? "–",
                m("failed") ?? "–",
                `${fmt(m("heapBefore")! / 2 ** 20)} → ${fmt(m("heapDuring")! / 2 ** 20)} MiB`,
                `${fmt(m("bytesPerStreamHeap")! / 1024)} KB`,
                `${fmt(m("rssBefore")! / 2 ** 20)} → ${fmt(m("rssDuring")! / 2 ** 20)} MiB`,
                `${fmt(m("bytesPerStreamRss")! / 1024)} KB`,
                m("serverCores") !== undefined ? `${m("serverCores")!.toFixed(2)} / ${m("clientCores")!.toFixed(2)}` : "–",
              ];
            }),
        )
      : "Not run.",
    "",
    "On a server process and a database of its own, started after the other scenarios' server stopped. Opened in waves of 200, each waiting for its first tokens, until all are open or a wave does not fully start; memory is read while the started answers still stream and divided by the streams open then. The bare Connect streams (`bench/echo.ts`, the same server, a 4-byte message every 100 ms, as many as the slow Asks) are held open the same way first: the framework's own share of an open stream.",
    "",
    "## Scenario 5: embedded PGlite against server Postgres",
    "",
    runTable(r, by("parley.pglite."), (x) => r.runs[x.name.replace("parley.pglite.", "parley.")], "messages/s"),
    "",
    "## Peers on the same Postgres, in-process, same concurrency",
    "",
    `ADK: ${r.peers.adk ? (r.peers.adk.status === "ok" ? "ran" : `could not run: ${r.peers.adk.error}`) : "not run"}. LangGraph: ${r.peers.langgraph ? (r.peers.langgraph.status === "ok" ? "ran" : `could not run: ${r.peers.langgraph.error}`) : "not run"}.`,
    "The same conversation on all three sides (`bench/peers.ts`): a turn is a user message of 200 characters and an answer of 1,000 (varied prose; the answer carries its model, finish reason and token counts in each framework's own fields), and a history of N turns is 2N messages, seeded in bulk (Parley's rows and copies of the events ADK appended, in SQL; one LangGraph checkpoint holding them all), then each side's database vacuumed and analyzed. " +
      "Append (`*.append.*`) stores the conversation's next message, user and answer in turn: Parley AppendMessages(1) over gRPC; ADK `appendEvent` of the event its Runner (user) or LlmAgent (answer) creates; LangGraph `put` of the checkpoint a `StateGraph(MessagesAnnotation)` writes when a node adds one message (LangChain `HumanMessage`/`AIMessage` objects, the whole `messages` channel stored as one blob by the saver's serde; the input checkpoint and the `putWrites` of a real turn are not counted). " +
      "Load (`*.load.*`) reads the last 20 messages: ListMessages(last 20); `getSession({numRecentEvents: 20})`; `getTuple` of the latest checkpoint, which holds the whole history. `listSessions` of one user against ListSessions. Each run starts with one round of all workers' operations (a warm-up that also times a round). The runs of one operation and history length (Parley's and each peer's) whose round is short are then measured in rounds taken in turn (Parley, ADK, LangGraph, Parley, …), like scenarios 1 and 2; a slower one is measured on its own for at least two of its rounds, or for one more round when a round takes over 30 s (notes above). Ratio: Parley's ops/s over the peer's.",
    "",
    runTable(
      r,
      [...by("parley.peer."), ...by("adk."), ...by("langgraph.")],
      (x) =>
        x.tags.system === "parley"
          ? undefined
          : r.runs[x.name === "adk.list-sessions" ? "parley.peer.list-sessions" : `parley.peer.${x.tags.op}.h${x.tags.history}`],
      undefined,
      true,
    ),
    "",
    "## Profile findings",
    "",
    findings || "None recorded (bench/findings.md).",
    "",
  ];
  writeFileSync(join(outDir, "REPORT.md"), lines.join("\n"));
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  if (!file) throw new Error("usage: tsx bench/report.ts bench/results/<file>.json");
  const outDir = fileURLToPath(new URL(".", import.meta.url));
  const results = JSON.parse(readFileSync(file, "utf8")) as BenchResults;
  await renderReport(results, outDir, join("results", file.split("/").at(-1)!));
}
