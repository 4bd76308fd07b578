import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // Real sockets on port 0; two cores: a couple of files at once keeps timing-sensitive tests honest.
    maxWorkers: 2,
  },
});
