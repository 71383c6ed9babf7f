import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createFlushClock } from "../../src/ask/flush-clock.js";

describe("the flush clock of a replica's Asks", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("runs every flush deferred within a window together, one window after the first deferral", () => {
    const clock = createFlushClock(25);
    const ran: string[] = [];
    const a = () => ran.push("a");
    const b = () => ran.push("b");
    clock.defer(a);
    vi.advanceTimersByTime(10);
    clock.defer(b);
    clock.defer(a);
    vi.advanceTimersByTime(14);
    expect(ran).toEqual([]);
    vi.advanceTimersByTime(1);
    // Both Asks' flushes ran in the same timer callback, each once.
    expect(ran).toEqual(["a", "b"]);
    expect(vi.getTimerCount()).toBe(0);
    // A deferral after the tick waits for a tick of its own.
    clock.defer(b);
    vi.advanceTimersByTime(24);
    expect(ran).toEqual(["a", "b"]);
    vi.advanceTimersByTime(1);
    expect(ran).toEqual(["a", "b", "b"]);
  });

  it("forgets a cancelled flush and stops ticking when nothing is due", () => {
    const clock = createFlushClock(25);
    const ran: string[] = [];
    const a = () => ran.push("a");
    const b = () => ran.push("b");
    clock.defer(a);
    clock.defer(b);
    clock.cancel(a);
    expect(vi.getTimerCount()).toBe(1);
    clock.cancel(b);
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(100);
    expect(ran).toEqual([]);
  });
});
