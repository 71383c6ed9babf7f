import Mustache from "mustache";
import type { JsonObject } from "../db/schema.js";
import { invalidArgument } from "../errors.js";

/** The state a turn's instructions are rendered with: the stored scopes and this request's temp: keys. */
export interface TemplateState {
  readonly session: JsonObject;
  readonly user: JsonObject;
  readonly app: JsonObject;
  readonly temp: JsonObject;
}

/** Scalars as text, objects and arrays as JSON; never HTML-escaped (the reader is a model, not a browser). */
function asText(value: unknown): string {
  if (typeof value === "string") return value;
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/**
 * The view of a template: `{{state.key}}` reads session keys, and
 * `{{user:key}}`, `{{app:key}}`, `{{temp:key}}` the other scopes. Mustache
 * is logic-less and the view holds JSON only, so a template can reference
 * values and iterate sections but never run code.
 */
function viewOf(state: TemplateState): Record<string, unknown> {
  const view: Record<string, unknown> = { state: state.session };
  for (const [prefix, scope] of [
    ["user", state.user],
    ["app", state.app],
    ["temp", state.temp],
  ] as const) {
    for (const [k, v] of Object.entries(scope)) view[`${prefix}:${k}`] = v;
  }
  return view;
}

/** Checks that text parses as a template; InvalidArgument naming field otherwise. */
export function checkTemplate(field: string, text: string): void {
  if (!text.includes("{{")) return;
  try {
    new Mustache.Writer().parse(text);
  } catch (err) {
    throw invalidArgument(field, `is not a valid template: ${(err as Error).message}`, "INVALID_TEMPLATE");
  }
}

/** Renders an agent's instructions with the turn's state; missing keys render empty. Text without `{{` is returned as it is. */
export function renderInstructions(text: string, state: TemplateState | undefined): string {
  if (!state || !text.includes("{{")) return text;
  // A writer per render: Mustache's default writer caches every template it sees, without bound.
  const writer = new Mustache.Writer();
  try {
    return writer.render(text, viewOf(state), {}, { escape: asText });
  } catch {
    // Instructions stored before templates were checked: sent as written.
    return text;
  }
}
