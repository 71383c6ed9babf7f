import { describe, expect, it } from "vitest";
import { checkTemplate, renderInstructions } from "../../src/ask/template.js";
import { ParleyError } from "../../src/errors.js";
import { fuseRankings } from "../../src/search/fusion.js";
import { applyDelta, mergedState, parseStateKey, stateEtag, validateDelta } from "../../src/state/scopes.js";

const noState = { session: {}, user: {}, app: {}, temp: {} };

describe("state keys and deltas", () => {
  it("parses the scope prefixes and rejects other syntax", () => {
    expect(parseStateKey("step")).toEqual({ scope: "session", name: "step" });
    expect(parseStateKey("user:name")).toEqual({ scope: "user", name: "name" });
    expect(parseStateKey("app:plan-tier")).toEqual({ scope: "app", name: "plan-tier" });
    expect(parseStateKey("temp:_x1")).toEqual({ scope: "temp", name: "_x1" });
    for (const bad of ["", "user:", "1abc", "a b", "other:x", "user:user:x", "a.b", `x${"y".repeat(128)}`]) {
      expect(parseStateKey(bad)).toBeUndefined();
    }
  });

  it("splits a delta by scope, applies it, and fingerprints the merged view", () => {
    const d = validateDelta("d", { set: { a: 1, "user:b": [1], "temp:t": true }, remove: ["app:c", "app:c"] }, true);
    expect(d.set).toEqual({ session: { a: 1 }, user: { b: [1] }, app: {}, temp: { t: true } });
    expect(d.remove.app).toEqual(["c"]);
    const next = applyDelta("d", { session: { z: 0 }, user: {}, app: { c: 3, k: 4 } }, d);
    expect(next).toEqual({ session: { z: 0, a: 1 }, user: { b: [1] }, app: { k: 4 }, temp: { t: true } });
    expect(mergedState(next)).toEqual({ z: 0, a: 1, "user:b": [1], "app:k": 4, "temp:t": true });
    const e1 = stateEtag(next);
    expect(stateEtag({ ...next, user: { b: [2] } })).not.toBe(e1);
    expect(stateEtag({ session: { a: 1, z: 0 }, user: { b: [1] }, app: { k: 4 } })).toBe(e1);
  });

  it("names the field of each mistake", () => {
    const field = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        return (err as ParleyError).violations.map((v) => `${v.field} ${v.reason}`);
      }
      return [];
    };
    expect(field(() => validateDelta("delta", { set: { "temp:x": 1 }, remove: [] }, false))).toEqual(["delta.set TEMP_KEY_NOT_ALLOWED"]);
    expect(field(() => validateDelta("delta", { set: {}, remove: ["ok", "no way"] }, true))).toEqual(["delta.remove[1] INVALID_STATE_KEY"]);
    expect(field(() => validateDelta("delta", { set: { a: 1 }, remove: ["a"] }, true))).toEqual(["delta.remove[0] CONFLICTING_STATE_KEY"]);
  });
});

describe("instruction templates", () => {
  const state = {
    session: { mood: "<happy>", items: ["a", "b"], obj: { x: 1 } },
    user: { name: "Ann" },
    app: { plan: "pro" },
    temp: { nonce: 7 },
  };

  it("renders every scope, objects as JSON, without HTML escaping; missing keys are empty", () => {
    expect(renderInstructions("{{user:name}}/{{app:plan}}/{{state.mood}}/{{temp:nonce}}/{{state.obj}}/[{{state.none}}][{{user:none}}]", state)).toBe(
      'Ann/pro/<happy>/7/{"x":1}/[][]',
    );
    expect(renderInstructions("{{#state.items}}- {{.}}\n{{/state.items}}", state)).toBe("- a\n- b\n");
    expect(renderInstructions("{{^user:missing}}no{{/user:missing}}", state)).toBe("no");
  });

  it("runs no code: partials render empty and text without tags is untouched", () => {
    expect(renderInstructions("a {{> evil}} b", state)).toBe("a  b");
    expect(renderInstructions("plain {text}", state)).toBe("plain {text}");
    expect(renderInstructions("{{user:name}}", undefined)).toBe("{{user:name}}");
  });

  it("rejects templates that do not parse", () => {
    expect(() => checkTemplate("agent.instructions", "{{#state.a}} open")).toThrow(ParleyError);
    expect(() => checkTemplate("agent.instructions", "{{ unclosed")).toThrow(ParleyError);
    expect(() => checkTemplate("agent.instructions", "fine {{state.a}}")).not.toThrow();
  });
});

describe("reciprocal rank fusion", () => {
  it("ranks what both lists found first and scales similarity to 0..1", () => {
    const list = (ids: string[]) => ({ ids, scores: new Map(ids.map((id, i) => [id, 1 - i / 10])) });
    const fused = fuseRankings([list(["a", "b", "c"]), list(["b", "d"])]);
    expect(fused.map((h) => h.id)).toEqual(["b", "a", "d", "c"]);
    expect(fused[0]!.signals).toEqual([0.9, 1]);
    for (const h of fused) expect(h.similarity).toBeGreaterThan(0);
    expect(fuseRankings([list(["x"]), list(["x"])])[0]!.similarity).toBe(1);
    expect(fuseRankings([list([]), list([])])).toEqual([]);
  });
});
