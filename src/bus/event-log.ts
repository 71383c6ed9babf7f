/**
 * The log cannot be reached (Redis down): the caller reports UNAVAILABLE rather
 * than treating the stream as unknown.
 */
export class EventLogUnavailableError extends Error {
  override name = "EventLogUnavailableError";
}

/** An append out of sequence or after the stream's end (someone else wrote to it). */
export class EventLogSequenceError extends Error {
  override name = "EventLogSequenceError";
}

/** One event of a stream with its position: 1, 2, 3… without gaps. */
export interface LoggedEvent<E> {
  readonly seq: number;
  readonly event: E;
}

/**
 * The log of a stream of events (an Ask's events, keyed by ask id): appended by
 * the one producer that runs it, read by any number of followers that replay
 * what is there, then follow live until the stream ends. Finished streams are
 * kept for a retention window. In-process here (memory.ts); Redis Streams when
 * several replicas share the logs.
 */
export interface EventLog<E> {
  /**
   * Appends the next event of a stream, creating the stream on its first event.
   * seq must be the last seq + 1 (the producer numbers its events).
   */
  append(streamId: string, seq: number, event: E): Promise<void>;
  /** Marks the stream finished: no more appends; followers end after its last event; retention starts. */
  end(streamId: string): Promise<void>;
  /**
   * The events after afterSeq, then the live ones until the stream ends or the
   * signal aborts (the iteration then just stops). Undefined when the log does
   * not hold the stream (never appended, or expired): the caller reconstructs
   * from storage.
   */
  read(streamId: string, afterSeq: number, signal?: AbortSignal): Promise<AsyncIterable<LoggedEvent<E>> | undefined>;
  /**
   * Where a stream stands: its last seq and whether it has ended; undefined when
   * the log does not hold it. Lets someone other than the producer (the sweeper
   * of an abandoned Ask) append the terminal event.
   */
  last(streamId: string): Promise<{ seq: number; ended: boolean } | undefined>;
  /** Ends every follower and drops the logs. */
  close(): Promise<void>;
}
