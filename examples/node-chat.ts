// Creates an agent and a session on a running Parley server, streams one Ask and
// prints the history.
//
//   npm start                                   # in another terminal
//   npx tsx examples/node-chat.ts "What is Parley?"
//
// Environment: PARLEY_URL (default http://127.0.0.1:8080), PARLEY_API_KEY
// (default: the first line of .parley/admin.key), PARLEY_MODEL (the agent's
// `provider:model`; empty: the server's PARLEY_DEFAULT_MODEL), PARLEY_TRANSPORT
// (grpc, the default, or connect).
import { readFileSync } from "node:fs";
// In your own project: import { createParleyClient } from "parley/client/node";
import { Code, ConnectError, MessageRole, createParleyClient } from "../src/client/node.js";

const baseUrl = process.env.PARLEY_URL ?? "http://127.0.0.1:8080";
const apiKey = process.env.PARLEY_API_KEY ?? readFileSync(".parley/admin.key", "utf8").trim();
const transport = process.env.PARLEY_TRANSPORT === "connect" ? "connect" : "grpc";
const question = process.argv.slice(2).join(" ") || "Say hello in one sentence.";

const client = createParleyClient({ baseUrl, apiKey, transport });
try {
  const { agent } = await client.agents.createAgent({
    agent: {
      name: "node-chat example",
      instructions: "You are a concise assistant.",
      model: process.env.PARLEY_MODEL ?? "",
      prologue: "Hi! Ask me anything.",
    },
  });
  const { session } = await client.sessions.createSession({
    session: { agentId: agent!.id, userId: "example-user", name: "node-chat example" },
  });
  console.log(`agent ${agent!.id}, session ${session!.id}`);

  process.stdout.write(`> ${question}\n`);
  for await (const event of client.ask({ sessionId: session!.id, content: question })) {
    switch (event.event.case) {
      case "textDelta":
        process.stdout.write(event.event.value.text);
        break;
      case "usage":
        process.stdout.write(`\n(${event.event.value.totalTokens} tokens)`);
        break;
      case "completed":
        process.stdout.write("\n");
        break;
      case "failed":
        throw new Error(`the Ask failed: ${event.event.value.code}: ${event.event.value.message}`);
      case "cancelled":
      case "interrupted":
        throw new Error(`the Ask ended early (${event.event.case})`);
    }
  }

  const { messages } = await client.messages.listMessages({ sessionId: session!.id });
  console.log("history:");
  for (const m of messages) console.log(`  #${m.seq} ${MessageRole[m.role]}: ${m.content}`);
} catch (err) {
  console.error(err instanceof ConnectError ? `error ${Code[err.code]}: ${err.rawMessage}` : err);
  process.exitCode = 1;
} finally {
  client.close();
}
