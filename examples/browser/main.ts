// A chat page that talks to Parley straight from the browser, over Connect or
// gRPC-Web. Build and serve it with `npm run example:browser`; the fields can be
// prefilled with query parameters (?url=…&key=…&transport=grpc-web&model=…).
//
// A real product would not put an admin API key in a page: its backend would
// hand the browser a short-lived key (see the README).
// In your own project: import { createParleyClient } from "parley/client/web";
import { Code, ConnectError, createParleyClient, type ParleyClient } from "../../src/client/web.js";

function $<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el as T;
}

const url = $<HTMLInputElement>("url");
const key = $<HTMLInputElement>("key");
const transport = $<HTMLSelectElement>("transport");
const model = $<HTMLInputElement>("model");
const question = $<HTMLInputElement>("question");
const send = $<HTMLButtonElement>("send");
const stop = $<HTMLButtonElement>("stop");
const log = $<HTMLDivElement>("log");
const status = $<HTMLParagraphElement>("status");

const params = new URLSearchParams(location.search);
for (const [field, input] of [
  ["url", url],
  ["key", key],
  ["transport", transport],
  ["model", model],
] as const) {
  const value = params.get(field);
  if (value !== null) input.value = value;
}

function setStatus(state: string, text = state) {
  status.dataset.status = state;
  status.textContent = text;
}

function bubble(role: "user" | "assistant", text: string): HTMLDivElement {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  div.textContent = text;
  log.append(div);
  return div;
}

// One client and session per combination of settings; changing them starts over.
let current: { settings: string; client: ParleyClient; sessionId: string } | undefined;

async function session(): Promise<{ client: ParleyClient; sessionId: string }> {
  const settings = JSON.stringify([url.value, key.value, transport.value, model.value]);
  if (current?.settings === settings) return current;
  const client = createParleyClient({
    baseUrl: url.value,
    apiKey: key.value,
    transport: transport.value === "grpc-web" ? "grpc-web" : "connect",
  });
  const { agent } = await client.agents.createAgent({ agent: { name: "browser example", model: model.value } });
  const created = await client.sessions.createSession({
    session: { agentId: agent!.id, userId: "browser-user", name: "browser example" },
  });
  if (created.prologueMessage) bubble("assistant", created.prologueMessage.content);
  current = { settings, client, sessionId: created.session!.id };
  return current;
}

$<HTMLFormElement>("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const content = question.value;
  if (!content.trim()) return;
  question.value = "";
  const controller = new AbortController();
  stop.onclick = () => controller.abort();
  send.disabled = true;
  stop.disabled = false;
  void (async () => {
    try {
      setStatus("connecting");
      const { client, sessionId } = await session();
      bubble("user", content);
      const answer = bubble("assistant", "");
      setStatus("streaming");
      for await (const event of client.ask({ sessionId, content }, { signal: controller.signal })) {
        const e = event.event;
        if (e.case === "textDelta") answer.textContent += e.value.text;
        else if (e.case === "completed") setStatus("completed");
        else if (e.case === "cancelled" || e.case === "interrupted") setStatus(e.case);
        else if (e.case === "failed") setStatus("failed", `failed: ${e.value.code}: ${e.value.message}`);
      }
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code === Code.Canceled) setStatus("cancelled");
      else setStatus("error", `error: ${Code[ce.code]}: ${ce.rawMessage}`);
    } finally {
      send.disabled = false;
      stop.disabled = true;
    }
  })();
});
