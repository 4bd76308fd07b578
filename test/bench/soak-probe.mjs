// Preloaded into the soak run's gateway process (test/bench/soak.ts), which is otherwise the
// built CLI unchanged:
//
//   node --expose-gc --import <this file> bin/ptth-proxy.js serve ...
//
// It answers the run's questions over the IPC channel: the process's own memory figures (heap,
// external, array buffers: RSS alone cannot tell a leak from a heap that has not been collected
// yet), after a full collection when asked, and heap snapshots for leak hunting. Nothing here runs
// unless the run asks.
import { writeHeapSnapshot } from 'node:v8';

if (process.send) {
  process.on('message', (m) => {
    if (!m || typeof m !== 'object') return;
    if (m.t === 'memory') {
      void collect(m.gc).then(() => {
        const resources = {};
        for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] ?? 0) + 1;
        process.send({
          t: 'memory',
          id: m.id,
          usage: process.memoryUsage(),
          resources,
          gc: typeof globalThis.gc === 'function',
        });
      });
    } else if (m.t === 'snapshot') {
      if (typeof globalThis.gc === 'function') globalThis.gc();
      process.send({ t: 'snapshot', id: m.id, file: writeHeapSnapshot(m.file) });
    }
  });
  /**
   * A full collection whose freed array buffers are gone from the figures too. V8 frees the memory
   * behind collected ArrayBuffers on a background thread after the collection: read at once, and on
   * a loaded machine (that thread starved), `arrayBuffers` still counted tens of MiB already
   * collected. A collection waits for that sweep to finish first, so this collects again after a
   * turn of the event loop until the figure stops falling (at most 5 rounds).
   */
  async function collect(gc) {
    if (!gc || typeof globalThis.gc !== 'function') return;
    let last = Infinity;
    for (let i = 0; i < 5; i++) {
      globalThis.gc();
      await new Promise((resolve) => setImmediate(resolve));
      const now = process.memoryUsage().arrayBuffers;
      if (now >= last) return;
      last = now;
    }
  }
  // The channel must not keep the gateway alive on its own (the CLI exits by itself on SIGTERM anyway).
  process.channel?.unref();
}
