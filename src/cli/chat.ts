import { existsSync, readFileSync } from "node:fs";
import { userInfo } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { Code, ConnectError } from "@connectrpc/connect";
import { MessageRole, MessageStatus, type Message } from "../../gen/parley/v1/common_pb.js";
import { createParleyClient, type NodeParleyClient } from "../client/node.js";

/** Options of `parley chat`. */
export interface ChatOptions {
  /** The server, e.g. http://127.0.0.1:8080. */
  readonly url: string;
  /** Empty: PARLEY_API_KEY, then `<dataDir>/admin.key`. */
  readonly apiKey?: string;
  /** Agent of a new session; without it, an agent named "Parley chat" is found or created. Unused with sessionId. */
  readonly agentId?: string;
  /** Continue this session; without it, a new session is created. */
  readonly sessionId?: string;
  /** The end user of a new session. Default: the OS user name. */
  readonly userId?: string;
  /** Model of the agent created when no agent is given (empty: the server's default). */
  readonly model?: string;
  readonly transport?: "grpc" | "connect";
  /** Where admin.key is looked for. Default PARLEY_DATA_DIR or .parley. */
  readonly dataDir?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly input?: NodeJS.ReadableStream;
  readonly output?: NodeJS.WritableStream;
  /** Treat input as a terminal (raw keys, Ctrl-C as a key). Default: whether input is a TTY. */
  readonly terminal?: boolean;
}

/** What one line typed at the prompt asks for. */
export type ChatCommand =
  | { readonly kind: "empty" }
  | { readonly kind: "exit" }
  | { readonly kind: "help" }
  | { readonly kind: "history"; readonly pageSize: number }
  | { readonly kind: "more" }
  | { readonly kind: "ask"; readonly content: string }
  | { readonly kind: "unknown"; readonly name: string };

/** The name of the agent `parley chat` creates when none is given. */
export const CHAT_AGENT_NAME = "Parley chat";
const DEFAULT_HISTORY_PAGE = 20;

export const CHAT_HELP = [
  "Type a message and press Enter; the answer streams as it is written.",
  "  Ctrl-C        cancel the answer being written (at the prompt: quit)",
  "  /history [n]  the last n messages (default 20); /more pages further back",
  "  /exit         quit (also Ctrl-D)",
].join("\n");

/** Parses one input line: a slash command or a message to send. */
export function parseChatLine(line: string): ChatCommand {
  const text = line.trim();
  if (text === "") return { kind: "empty" };
  // "//text" sends "/text" as a message.
  if (text.startsWith("//")) return { kind: "ask", content: text.slice(1) };
  if (!text.startsWith("/")) return { kind: "ask", content: line };
  const [name = "", arg] = text.slice(1).split(/\s+/, 2);
  switch (name.toLowerCase()) {
    case "exit":
    case "quit":
    case "q":
      return { kind: "exit" };
    case "help":
    case "?":
      return { kind: "help" };
    case "more":
      return { kind: "more" };
    case "history": {
      const n = arg === undefined ? DEFAULT_HISTORY_PAGE : Number(arg);
      if (!Number.isInteger(n) || n < 1) return { kind: "unknown", name: text };
      return { kind: "history", pageSize: Math.min(n, 1000) };
    }
    default:
      return { kind: "unknown", name: `/${name}` };
  }
}

/** The API key: the given one, else PARLEY_API_KEY, else the first line of `<dataDir>/admin.key`. */
export function resolveApiKey(given: string | undefined, env: NodeJS.ProcessEnv, dataDir: string): string | undefined {
  if (given) return given;
  if (env.PARLEY_API_KEY) return env.PARLEY_API_KEY;
  const file = join(dataDir, "admin.key");
  if (!existsSync(file)) return undefined;
  return readFileSync(file, "utf8").split(/\r?\n/)[0]?.trim() || undefined;
}

const roleNames: Record<MessageRole, string> = {
  [MessageRole.UNSPECIFIED]: "?",
  [MessageRole.USER]: "you",
  [MessageRole.ASSISTANT]: "assistant",
  [MessageRole.SYSTEM]: "system",
  [MessageRole.TOOL]: "tool",
};

const statusNotes: Partial<Record<MessageStatus, string>> = {
  [MessageStatus.STREAMING]: " (writing…)",
  [MessageStatus.CANCELLED]: " (cancelled)",
  [MessageStatus.FAILED]: " (failed)",
  [MessageStatus.INTERRUPTED]: " (interrupted)",
};

/** One history line: `#seq role (status): content`. */
export function formatMessage(m: Message): string {
  return `#${m.seq} ${roleNames[m.role]}${statusNotes[m.status] ?? ""}: ${m.content}`;
}

/** A short description of an error for the terminal: `code: message`. */
export function describeError(err: unknown): string {
  const e = ConnectError.from(err);
  return `${Code[e.code] ?? e.code}: ${e.rawMessage}`;
}

async function findOrCreateAgent(client: NodeParleyClient, model: string): Promise<string> {
  let pageToken = "";
  do {
    const page = await client.agents.listAgents({ pageSize: 100, pageToken });
    const found = page.agents.find((a) => a.name === CHAT_AGENT_NAME && a.model === model);
    if (found) return found.id;
    pageToken = page.nextPageToken;
  } while (pageToken);
  const { agent } = await client.agents.createAgent({
    agent: { name: CHAT_AGENT_NAME, description: "Created by `parley chat`.", model },
  });
  return agent!.id;
}

function defaultUserId(): string {
  try {
    return userInfo().username || "cli";
  } catch {
    return "cli";
  }
}

/** Runs an interactive, streaming chat against a Parley server until /exit, Ctrl-D, or Ctrl-C at the prompt. */
export async function runChat(opts: ChatOptions): Promise<void> {
  const env = opts.env ?? process.env;
  const input = opts.input ?? process.stdin;
  const output = opts.output ?? process.stdout;
  const say = (text: string) => void output.write(text + "\n");
  const dataDir = resolve(opts.dataDir ?? (env.PARLEY_DATA_DIR || ".parley"));
  const apiKey = resolveApiKey(opts.apiKey, env, dataDir);
  if (!apiKey) {
    throw new Error(`no API key: pass --key, set PARLEY_API_KEY, or run where ${join(dataDir, "admin.key")} exists`);
  }
  const client = createParleyClient({ baseUrl: opts.url, apiKey, transport: opts.transport ?? "grpc" });
  const terminal = opts.terminal ?? Boolean((input as { isTTY?: boolean }).isTTY);
  const rl = createInterface({ input, output, terminal, prompt: "you> " });
  // Iterating from the start buffers lines that arrive (piped input) while the
  // agent and session are set up.
  const lines = rl[Symbol.asyncIterator]();
  // Ctrl-D or the end of piped input can close the interface while an answer is still being read.
  let closed = false;
  rl.once("close", () => (closed = true));

  // What Ctrl-C does depends on whether an answer is being written.
  let answering: { askId: string; controller: AbortController; cancelRequested: boolean } | undefined;
  const onInterrupt = () => {
    if (!answering) {
      rl.close();
      return;
    }
    const a = answering;
    if (a.cancelRequested || !a.askId) {
      a.controller.abort();
      return;
    }
    a.cancelRequested = true;
    // CancelAsk lets the server end the stream with the partial answer; if it
    // cannot be reached, dropping the stream cancels the Ask too.
    client.sessions.cancelAsk({ askId: a.askId }).catch(() => a.controller.abort());
  };
  rl.on("SIGINT", onInterrupt);
  // Without a terminal (input piped), Ctrl-C arrives as a signal, not as a key.
  if (!terminal) process.on("SIGINT", onInterrupt);

  try {
    let sessionId = opts.sessionId ?? "";
    if (sessionId) {
      const { session } = await client.sessions.getSession({ sessionId });
      say(`Session ${sessionId} (${session?.messageCount ?? 0} messages). /history shows them.`);
    } else {
      const agentId = opts.agentId || (await findOrCreateAgent(client, opts.model ?? ""));
      const created = await client.sessions.createSession({
        session: { agentId, userId: opts.userId || defaultUserId(), name: `Chat ${new Date().toISOString().slice(0, 16)}` },
      });
      sessionId = created.session!.id;
      say(`Session ${sessionId}. /help for commands.`);
      if (created.prologueMessage) say(`assistant: ${created.prologueMessage.content}`);
    }

    let history: { pageSize: number; beforeSeq: bigint } | undefined;
    const showHistory = async (pageSize: number, beforeSeq: bigint) => {
      const page = await client.messages.listMessages({ sessionId, descending: true, pageSize, beforeSeq });
      if (page.messages.length === 0) {
        say(beforeSeq === 0n ? "(no messages)" : "(no older messages)");
        history = undefined;
        return;
      }
      for (const m of [...page.messages].reverse()) say(formatMessage(m));
      const oldest = page.messages.at(-1)!.seq;
      history = page.nextPageToken ? { pageSize, beforeSeq: oldest } : undefined;
      if (history) say("(/more for older messages)");
    };

    const ask = async (content: string) => {
      const controller = new AbortController();
      answering = { askId: "", controller, cancelRequested: false };
      let ended = false;
      try {
        for await (const e of client.ask({ sessionId, content }, { signal: controller.signal })) {
          switch (e.event.case) {
            case "started":
              answering.askId = e.event.value.askId;
              output.write("assistant: ");
              break;
            case "textDelta":
              output.write(e.event.value.text);
              break;
            case "completed":
              ended = true;
              output.write("\n");
              break;
            case "cancelled":
              ended = true;
              output.write("\n[cancelled]\n");
              break;
            case "failed":
              ended = true;
              output.write(`\n[failed] ${e.event.value.code}: ${e.event.value.message}\n`);
              break;
            case "interrupted":
              ended = true;
              output.write("\n[interrupted: the server running this answer stopped]\n");
              break;
          }
        }
        if (!ended) say("\n[the stream ended without a final event]");
      } catch (err) {
        if (ConnectError.from(err).code === Code.Canceled && controller.signal.aborted) say("\n[cancelled]");
        else say(`\nerror: ${describeError(err)}`);
      } finally {
        answering = undefined;
      }
    };

    if (!closed) rl.prompt();
    for await (const line of lines) {
      const cmd = parseChatLine(line);
      try {
        switch (cmd.kind) {
          case "exit":
            return;
          case "help":
            say(CHAT_HELP);
            break;
          case "history":
            await showHistory(cmd.pageSize, 0n);
            break;
          case "more":
            if (history) await showHistory(history.pageSize, history.beforeSeq);
            else say("(nothing more: /history first)");
            break;
          case "unknown":
            say(`unknown command ${cmd.name}; /help lists them`);
            break;
          case "ask":
            await ask(cmd.content);
            break;
          case "empty":
            break;
        }
      } catch (err) {
        say(`error: ${describeError(err)}`);
      }
      if (!closed) rl.prompt();
    }
  } finally {
    if (!terminal) process.off("SIGINT", onInterrupt);
    rl.close();
    client.close();
  }
}
