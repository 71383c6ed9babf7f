import { pino, type Logger } from "pino";

export type { Logger };

/** The process logger: JSON lines on stderr (stdout stays free for CLI output such as the admin key). */
export function createLogger(level: string): Logger {
  return pino({ level, base: { service: "parley" } }, pino.destination(2));
}
