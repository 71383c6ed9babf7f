/**
 * One clock for the coalesced text deltas of all of a replica's Asks. A
 * deferred flush runs on the clock's next tick, at most windowMs after the
 * first deferral since the last tick, together with every other Ask's flush
 * deferred meanwhile: their events are then logged, and their HTTP/2 frames
 * written, in one turn of the event loop, which Node sends in one write per
 * connection. A timer per Ask (the previous design) wrote each token of a slow
 * model in a write of its own: with thousands of open streams, those writes
 * were the largest part of the server's CPU (bench/findings.md).
 */
export interface FlushClock {
  /** Runs flush on the next tick (once, however often it is deferred before). */
  defer(flush: () => void): void;
  /** Forgets a deferred flush (the Ask flushed on its own, before another event). */
  cancel(flush: () => void): void;
}

/** A clock ticking windowMs after the first deferral since its last tick. */
export function createFlushClock(windowMs: number): FlushClock {
  let due = new Set<() => void>();
  let timer: NodeJS.Timeout | undefined;
  const tick = () => {
    timer = undefined;
    const batch = due;
    due = new Set();
    for (const flush of batch) flush();
  };
  return {
    defer(flush) {
      due.add(flush);
      timer ??= setTimeout(tick, windowMs);
    },
    cancel(flush) {
      due.delete(flush);
      if (due.size === 0 && timer) {
        clearTimeout(timer);
        timer = undefined;
      }
    },
  };
}
