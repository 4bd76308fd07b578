import type * as http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { listen, type Tunnel } from '../../src/client/node.js';
import { request, until } from '../helpers/index.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

/*
 * `ptth-proxy serve` under SIGTERM/SIGINT (graceful shutdown): stop accepting, let
 * requests in flight finish up to --shutdown-grace, tell native channels (GOAWAY for HTTP/2,
 * close for HTTP/1.1) so clients reconnect elsewhere, then exit 0.
 */
const procs: Spawned[] = [];
const tunnels: Tunnel[] = [];
afterEach(async () => {
  for (const t of tunnels.splice(0)) await t.close({ graceMs: 100, release: false });
  for (const p of procs.splice(0)) p.kill('SIGKILL');
});

async function serve(extra: string[]): Promise<{ p: Spawned; port: number }> {
  const p = spawnCli(['serve', '--port', '0', '--host', '127.0.0.1', ...extra]);
  procs.push(p);
  const m = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/);
  await p.waitFor(/expose an app/);
  return { p, port: Number(m[1]) };
}

/** An app that holds every response until the test ends it: `held` fills as requests arrive. */
async function holdingApp(
  port: number,
  name: string,
  http1: boolean,
): Promise<{ tunnel: Tunnel; held: http.ServerResponse[] }> {
  const held: http.ServerResponse[] = [];
  const tunnel = listen((_req, res) => void held.push(res), {
    gateway: `http://127.0.0.1:${port}`,
    name,
    connections: 2,
    backoff: 50,
    maxBackoff: 200,
    ...(http1 ? { http1: true } : {}),
  });
  tunnels.push(tunnel);
  await tunnel.ready();
  return { tunnel, held };
}

describe('serve: graceful shutdown on signals', () => {
  for (const [signal, http1] of [
    ['SIGTERM', false],
    ['SIGINT', true],
  ] as const) {
    it(`${signal}: a request in flight over ${http1 ? 'HTTP/1.1' : 'HTTP/2'} finishes, the client hears of it, exit 0`, async () => {
      const { p, port } = await serve(['--shutdown-grace', '10000']);
      const { tunnel, held } = await holdingApp(port, 'slow', http1);
      const inFlight = request(port, { host: `slow.localhost:${port}`, path: '/inflight' });
      await until(() => held.length === 1, 3_000, 'the request at the app');
      let wentOffline = false;
      tunnel.once('offline', () => (wentOffline = true));
      p.kill(signal);
      await p.waitFor(new RegExp(`${signal}: closing \\(in-flight requests get up to 10\\.0 s\\)`));
      // Shutting down, and waiting for the request in flight: the app finishes it only now.
      expect(p.child.exitCode).toBeNull();
      held[0]?.end('finished during shutdown');
      const r = await inFlight;
      expect(r.status).toBe(200);
      expect(r.body).toBe('finished during shutdown');
      expect(await p.exited()).toBe(0);
      await until(() => wentOffline || !tunnel.online, 3_000, 'the client to notice');
    });
  }

  it('a request still running when --shutdown-grace ends is cut, and the process still exits 0', async () => {
    const { p, port } = await serve(['--shutdown-grace', '300']);
    const { held } = await holdingApp(port, 'stuck', true);
    const inFlight = request(port, { host: `stuck.localhost:${port}`, path: '/stuck' });
    await until(() => held.length === 1, 3_000, 'the request at the app');
    const t0 = Date.now();
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(0);
    // Time is the behaviour: the gateway waited out the grace (300 ms from the signal, which came
    // after t0; less a timer's millisecond or so). No upper bound: the app never answers, so an
    // exit at all shows the request was cut rather than waited for, and a busy machine only adds.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(held[0]?.writableEnded).toBe(false);
    // The visitor hears that its app's channel went away before a response head (README errors).
    const r = await inFlight;
    expect(r.status).toBe(502);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_CHANNEL_LOST');
  });

  it('a second signal exits at once with code 1', async () => {
    const { p, port } = await serve(['--shutdown-grace', '10000']);
    const { held } = await holdingApp(port, 'twice', true);
    void request(port, { host: `twice.localhost:${port}`, path: '/held' }).catch(() => {});
    await until(() => held.length === 1, 3_000, 'the request at the app');
    p.kill('SIGTERM');
    await p.waitFor(/SIGTERM: closing/);
    p.kill('SIGTERM');
    // Code 1, not the graceful path's 0 (which would wait for the held request, up to 10 s).
    expect(await p.exited()).toBe(1);
  });
});
