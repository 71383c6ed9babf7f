import { fingerprint } from "../fingerprint.js";
import type { JsonObject, JsonValue } from "../db/schema.js";
import { invalidArgument } from "../errors.js";
import { byteLength, checkJsonNoNul, checkState, LIMITS } from "../services/limits.js";

/** Where a state key lives (Google ADK's prefixes): the session, the user, the agent ("app"), or this request only. */
export type StateScope = "session" | "user" | "app" | "temp";

/** A state key: its scope and its name without the prefix. */
export interface ScopedKey {
  readonly scope: StateScope;
  readonly name: string;
}

/** The stored scopes of a session's state (names without prefixes). */
export interface StateScopes {
  readonly session: JsonObject;
  readonly user: JsonObject;
  readonly app: JsonObject;
}

/** A validated change: per scope, the names to set and to remove. */
export interface ValidDelta {
  readonly set: Readonly<Record<StateScope, JsonObject>>;
  readonly remove: Readonly<Record<StateScope, readonly string[]>>;
}

const PREFIXES: readonly [string, StateScope][] = [
  ["user:", "user"],
  ["app:", "app"],
  ["temp:", "temp"],
];

/** A key name: a letter or `_`, then letters, digits, `_` or `-`; at most 128 characters. */
export const STATE_KEY_NAME = /^[A-Za-z_][A-Za-z0-9_-]{0,127}$/;

/** The scope and name of a key, or undefined when its syntax is invalid. */
export function parseStateKey(key: string): ScopedKey | undefined {
  let scope: StateScope = "session";
  let name = key;
  for (const [prefix, s] of PREFIXES) {
    if (key.startsWith(prefix)) {
      scope = s;
      name = key.slice(prefix.length);
      break;
    }
  }
  return STATE_KEY_NAME.test(name) ? { scope, name } : undefined;
}

function emptyDelta(): { set: Record<StateScope, JsonObject>; remove: Record<StateScope, string[]> } {
  return {
    set: { session: {}, user: {}, app: {}, temp: {} },
    remove: { session: [], user: [], app: [], temp: [] },
  };
}

/** True when the delta changes nothing. */
export function isEmptyDelta(d: ValidDelta): boolean {
  return (Object.keys(d.set) as StateScope[]).every((s) => Object.keys(d.set[s]).length === 0 && d.remove[s].length === 0);
}

/**
 * Checks a StateDelta (set: a JSON object, remove: key list) and splits it by
 * scope. Errors name the field under `field` (e.g. `state_delta.set`); temp:
 * keys are InvalidArgument unless allowTemp.
 */
export function validateDelta(
  field: string,
  delta: { set?: JsonObject | undefined; remove: readonly string[] } | undefined,
  allowTemp: boolean,
): ValidDelta {
  const out = emptyDelta();
  if (!delta) return out;
  const set = delta.set ?? {};
  const scopeOf = (key: string, path: string): ScopedKey => {
    const k = parseStateKey(key);
    if (!k) {
      throw invalidArgument(
        path,
        `key "${key.slice(0, 160)}" is not a state key: an optional user:, app: or temp: prefix, then a letter or _ and up to 127 letters, digits, _ or -`,
        "INVALID_STATE_KEY",
      );
    }
    if (k.scope === "temp" && !allowTemp) {
      throw invalidArgument(path, `temp: keys live within one Ask or AppendMessages; "${key}" cannot be stored`, "TEMP_KEY_NOT_ALLOWED");
    }
    return k;
  };
  for (const [key, value] of Object.entries(set)) {
    const path = `${field}.set.${key}`;
    const k = scopeOf(key, `${field}.set`);
    checkJsonNoNul(path, value as JsonValue);
    out.set[k.scope][k.name] = value as JsonValue;
  }
  const seen = new Set<string>();
  delta.remove.forEach((key, i) => {
    const path = `${field}.remove[${i}]`;
    const k = scopeOf(key, path);
    if (Object.hasOwn(set, key)) throw invalidArgument(path, `"${key}" is both set and removed`, "CONFLICTING_STATE_KEY");
    if (seen.has(key)) return;
    seen.add(key);
    out.remove[k.scope].push(k.name);
  });
  return out;
}

/** The scopes after a delta; throws InvalidArgument (naming `field`) when a scope would exceed 256 KiB. */
export function applyDelta(field: string, current: StateScopes, delta: ValidDelta): StateScopes & { temp: JsonObject } {
  const next = (scope: StateScope, base: JsonObject): JsonObject => {
    const out: JsonObject = { ...base, ...delta.set[scope] };
    for (const name of delta.remove[scope]) delete out[name];
    const bytes = byteLength(JSON.stringify(out));
    if (bytes > LIMITS.stateBytes) {
      throw invalidArgument(
        `${field}.set`,
        `the ${scope} scope would be ${bytes} bytes as JSON; at most ${LIMITS.stateBytes}`,
        "STATE_TOO_LARGE",
      );
    }
    return out;
  };
  return {
    session: next("session", current.session),
    user: next("user", current.user),
    app: next("app", current.app),
    temp: next("temp", {}),
  };
}

/** The merged view GetState returns: session keys, then `user:` and `app:` keys with their prefixes (temp: keys when given). */
export function mergedState(s: StateScopes & { temp?: JsonObject }): JsonObject {
  const out: JsonObject = { ...s.session };
  for (const [k, v] of Object.entries(s.user)) out[`user:${k}`] = v;
  for (const [k, v] of Object.entries(s.app)) out[`app:${k}`] = v;
  for (const [k, v] of Object.entries(s.temp ?? {})) out[`temp:${k}`] = v;
  return out;
}

/** The etag of a merged view: a fingerprint of its content, so it changes exactly when the view does. */
export function stateEtag(s: StateScopes): string {
  // temp: keys are never part of the stored view, whatever the argument carries.
  return `"${fingerprint(mergedState({ session: s.session, user: s.user, app: s.app })).slice(0, 32)}"`;
}

/** Session.state as CreateSession and UpdateSession take it: the session scope only (256 KiB); prefixed keys belong to StateService and state deltas. */
export function checkSessionState(field: string, state: JsonObject): void {
  checkState(field, state);
  for (const key of Object.keys(state)) {
    const scope = PREFIXES.find(([prefix]) => key.startsWith(prefix));
    if (scope) {
      throw invalidArgument(
        field,
        `key "${key}" belongs to the ${scope[1]} scope; set it with UpdateState or a state_delta`,
        "SCOPED_STATE_KEY",
      );
    }
  }
}
