import { afterEach, describe, expect, it } from 'vitest';
import { listen, type Tunnel } from '../../src/client/node.js';
import { request, until } from '../helpers/index.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

/*
 * `ptth-proxy serve` under SIGTERM/SIGINT (issue 5, graceful shutdown): stop accepting, let
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

/** An app whose responses take `?ms=` milliseconds. */
async function slowApp(port: number, name: string, http1: boolean): Promise<Tunnel> {
  const t = listen(
    (req, res) => {
      const ms = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('ms') ?? 0);
      setTimeout(() => res.end(`done after ${ms}`), ms);
    },
    { gateway: `http://127.0.0.1:${port}`, name, connections: 2, backoff: 50, maxBackoff: 200, ...(http1 ? { http1: true } : {}) },
  );
  tunnels.push(t);
  await t.ready();
  return t;
}

describe('serve: graceful shutdown on signals', () => {
  for (const [signal, http1] of [['SIGTERM', false], ['SIGINT', true]] as const) {
    it(`${signal}: a request in flight over ${http1 ? 'HTTP/1.1' : 'HTTP/2'} finishes, the client hears of it, exit 0`, async () => {
      const { p, port } = await serve(['--shutdown-grace', '3000']);
      const tunnel = await slowApp(port, 'slow', http1);
      const inFlight = request(port, { host: `slow.localhost:${port}`, path: '/?ms=600' });
      await new Promise((r) => setTimeout(r, 150));
      let wentOffline = false;
      tunnel.once('offline', () => (wentOffline = true));
      p.kill(signal);
      await p.waitFor(new RegExp(`${signal}: closing \\(in-flight requests get up to 3\\.0 s\\)`));
      const r = await inFlight;
      expect(r.status).toBe(200);
      expect(r.body).toBe('done after 600');
      expect(await p.exited()).toBe(0);
      await until(() => wentOffline || !tunnel.online, 3_000, 'the client to notice');
    });
  }

  it('a request still running when --shutdown-grace ends is cut, and the process still exits 0', async () => {
    const { p, port } = await serve(['--shutdown-grace', '300']);
    await slowApp(port, 'stuck', true);
    const inFlight = request(port, { host: `stuck.localhost:${port}`, path: '/?ms=5000' }).then(
      (r) => r.status,
      () => 'closed',
    );
    await new Promise((r) => setTimeout(r, 150));
    const t0 = Date.now();
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(0);
    expect(Date.now() - t0).toBeLessThan(4_000);
    expect(await inFlight).not.toBe(200);
  });

  it('a second signal exits at once with code 1', async () => {
    const { p, port } = await serve(['--shutdown-grace', '10000']);
    await slowApp(port, 'twice', true);
    void request(port, { host: `twice.localhost:${port}`, path: '/?ms=8000' }).catch(() => {});
    await new Promise((r) => setTimeout(r, 150));
    p.kill('SIGTERM');
    await p.waitFor(/SIGTERM: closing/);
    p.kill('SIGTERM');
    expect(await p.exited()).toBe(1);
  });
});
