import { defineConfig } from "vitest/config";

// Generous, explicit limits: a test must not fail because the machine is slow or loaded (a 2-core CPU
// running another job beside the suite took over 5 s, vitest's default, for the batching test).
export default defineConfig({ test: { testTimeout: 120_000, hookTimeout: 120_000 } });
