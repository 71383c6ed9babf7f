import { accessSync, constants } from "node:fs";
import { createApp } from "../app.js";
import { ConfigError, type Config } from "../config.js";
import { createLogger } from "../log.js";
import { startServer } from "../server.js";
import { CliError, claimEmbeddedDir } from "./common.js";

/** `parley serve`: starts the server and shuts it down gracefully on SIGTERM/SIGINT (a second signal forces exit). */
export async function serveCommand(config: Config): Promise<void> {
  for (const file of config.tls ? [config.tls.certFile, config.tls.keyFile] : []) {
    try {
      accessSync(file, constants.R_OK);
    } catch {
      throw new ConfigError(`cannot read TLS file ${file} (PARLEY_TLS_CERT / PARLEY_TLS_KEY)`);
    }
  }
  const release = claimEmbeddedDir(config);
  const log = createLogger(config.logLevel);
  let server: Awaited<ReturnType<typeof startServer>>;
  try {
    const app = await createApp(config, { log });
    try {
      server = await startServer(app);
    } catch (err) {
      await app.close(0).catch(() => {});
      if ((err as NodeJS.ErrnoException).code === "EADDRINUSE") {
        throw new CliError(`port ${config.port} on ${config.host} is already in use (set PORT or --port)`);
      }
      throw err;
    }
    if (app.bootstrap) {
      process.stdout.write(
        [
          "",
          "Parley created the default tenant and its admin API key. It is shown only this once:",
          "",
          `    ${app.bootstrap.adminKey}`,
          "",
          `It is also saved in ${app.bootstrap.keyFile} (mode 0600).`,
          "Send it as `Authorization: Bearer <key>`; create more keys with `parley keys create`.",
          "",
        ].join("\n"),
      );
    }
    // Always the last line of the announcement: scripts and tests wait for it.
    process.stdout.write(`Listening on ${server.url}\n`);
  } catch (err) {
    release();
    throw err;
  }

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      log.warn({ signal }, "second signal: exiting without waiting");
      release();
      process.exit(130);
    }
    log.info({ signal }, "graceful shutdown started; send the signal again to exit at once");
    server.close().then(
      () => {
        release();
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, "shutdown failed");
        release();
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}
