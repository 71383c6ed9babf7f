import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores: keep the number of files running at once (each may start a
    // server and a PGlite instance) bounded.
    maxWorkers: 2,
    pool: "forks",
  },
});
