/**
 * Carries "stop this Ask" to whichever replica runs it. In one process the
 * runtime cancels its own runs directly, so the in-process bus only loops back;
 * Redis pub/sub (redis.ts) reaches the other replicas.
 */
export interface CancelBus {
  /**
   * Asks every replica to cancel askId, for a reason ("cancel_ask", "interrupt")
   * that the cancelled Ask records; false when the request could not be sent (the
   * caller relies on the stored request).
   */
  publish(askId: string, reason: string): Promise<boolean>;
  /** Calls handler with every ask id whose cancellation is requested, and why; returns the unsubscribe function. */
  subscribe(handler: (askId: string, reason: string) => void): () => void;
}

/** The CancelBus of a single process. */
export function createMemoryCancelBus(): CancelBus {
  const handlers = new Set<(askId: string, reason: string) => void>();
  return {
    async publish(askId, reason) {
      for (const h of handlers) h(askId, reason);
      return true;
    },
    subscribe(handler) {
      handlers.add(handler);
      return () => handlers.delete(handler);
    },
  };
}
