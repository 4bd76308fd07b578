/**
 * Faults: apps killed mid-request and mid-response, the gateway killed and
 * restarted under load, and connections that stall without closing.
 *
 * Apps run in their own processes (test/helpers/child-app.ts, the library's listen()), so SIGKILL
 * and SIGSTOP do to them what a crash or a frozen host does: the kernel closes (or keeps silently
 * open) their sockets. The gateway runs in this process where the test inspects its table, or as
 * `ptth-proxy serve` in a child of its own where it must be killed and restarted on the same port.
 */
import * as http from 'node:http';
import type * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Tunnel } from '../../src/client/node.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { CHILD_APP, spawnTs } from '../helpers/child.js';
import {
  rawClaim,
  rawConnect,
  readUntil,
  request,
  sleep,
  startApp,
  until,
  type Reply,
  type TestGateway,
} from '../helpers/index.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';
import { cleanup, track, useGateway } from '../helpers/fixture.js';

/** The running test's gateway: set by gateway(), cleared when the test finishes. */
let gw: TestGateway | undefined;

function noop(): void {}

async function gateway(options: GatewayOptions = {}): Promise<TestGateway> {
  const started = await useGateway(options);
  gw = started;
  cleanup(() => {
    gw = undefined;
  });
  return started;
}

/** Kills `p` when the test finishes (woken first, in case the test stopped it). */
function killAtEnd(p: Spawned): void {
  cleanup(() => {
    p.kill('SIGCONT');
    p.kill('SIGKILL');
  });
}

/** Closes `t` when the test finishes, leaving its name registered (the test may have killed its gateway). */
function closeAtEnd(t: Tunnel): void {
  cleanup(() => t.close({ graceMs: 100, release: false }));
}

function g(): TestGateway {
  if (!gw) throw new Error('no gateway started');
  return gw;
}

function count(text: string, re: RegExp): number {
  return text.match(re)?.length ?? 0;
}

/** Starts the child app and waits until it is online for the `n`th time. */
async function childApp(name: string, mode: 'h1' | 'h2', connections = 2): Promise<Spawned> {
  const p = spawnTs(CHILD_APP, [g().origin, name, 'the-token', mode, String(connections)]);
  killAtEnd(p);
  await p.waitFor(/^online /m, 15_000);
  return p;
}

function visit(name: string, path = '/hello'): Promise<Reply> {
  return request(g().port, { host: g().host(name), path });
}

/** Nothing of the app's last exchanges is left in the gateway: no request waits, no channel is busy. */
function noLeaks(name: string): void {
  const r = g().registration(name);
  expect(r.waiting, 'requests waiting').toBe(0);
  for (const c of r.channels) expect(c.active, `requests in flight on channel ${c.id}`).toBe(0);
}

describe('apps killed', () => {
  it.each(['h2', 'h1'] as const)(
    'mid-request (%s): the visitor gets 502 PTTH_ERR_CHANNEL_LOST, nothing leaks, the gap gets 503, and the app comes back under its name',
    async (mode) => {
      await gateway({ reconnectWait: 300 });
      const app = await childApp('victim', mode);
      expect((await visit('victim')).body).toMatch(/^hello from \d+$/);
      const registration = g().registration('victim');

      const hung = visit('victim', '/hang');
      await app.waitFor(/^request \/hang$/m);
      app.kill('SIGKILL');
      const r = await hung;
      expect(r.status).toBe(502);
      expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_CHANNEL_LOST');

      await until(() => g().registration('victim').channels.length === 0, 2_000, 'the dead app channels to go');
      noLeaks('victim');
      // The lease holds the name; a visitor in the gap waits reconnectWait, then 503.
      const gap = await visit('victim');
      expect(gap.status).toBe(503);
      expect(gap.headers['x-ptth-error']).toBe('PTTH_ERR_NO_CHANNEL');
      noLeaks('victim');

      const again = await childApp('victim', mode);
      const back = await visit('victim');
      expect(back.status).toBe(200);
      expect(back.body).toBe(`hello from ${again.child.pid ?? 0}`);
      expect(g().registration('victim'), 'the same registration, kept by its token').toBe(registration);
      noLeaks('victim');
    },
  );

  it.each([
    ['h2', '/partial'],
    ['h2', '/chunked'],
    ['h1', '/partial'],
    ['h1', '/chunked'],
  ] as const)(
    'mid-response (%s, %s): the visitor connection closes after the partial body, never a complete response; nothing leaks; the app comes back',
    async (mode, path) => {
      await gateway();
      const app = await childApp('halfway', mode);
      const s = await rawConnect(g().port);
      s.on('error', noop);
      track(s);
      s.write(`GET ${path} HTTP/1.1\r\nHost: ${g().host('halfway')}\r\n\r\n`);
      const head = (await readUntil(s, (b) => b.includes('partial'), 3_000)).toString('latin1');
      expect(head).toMatch(/^HTTP\/1\.1 200 /);
      expect(head).toMatch(
        path === '/partial' ? /\r\ncontent-length: 1000\r\n/i : /\r\ntransfer-encoding: chunked\r\n/i,
      );
      await app.waitFor(/^partial sent$/m);
      const rest = readUntil(s, () => false, 3_000);
      app.kill('SIGKILL');
      // Headers went out, so the only honest signal left is a cut connection (docs/PROTOCOL.md section 9),
      // at once rather than after the keep-alive timeout, and never the chunked terminator.
      const got = (await rest).toString('latin1');
      expect(got).not.toContain('0\r\n\r\n');
      expect(s.destroyed, 'the visitor connection is closed').toBe(true);
      await until(() => g().registration('halfway').channels.length === 0, 2_000, 'the dead app channels to go');
      noLeaks('halfway');

      await childApp('halfway', mode);
      expect((await visit('halfway')).status).toBe(200);
      noLeaks('halfway');
    },
  );

  it('killed with requests queued behind a busy channel: each gets a status (502 or 503), none hangs, nothing leaks', async () => {
    await gateway({ queueTimeout: 2_000, reconnectWait: 300 });
    const app = await childApp('crowded', 'h1', 1);
    const hung = visit('crowded', '/hang');
    await app.waitFor(/^request \/hang$/m);
    // The only channel is busy: these wait in the registration's queue.
    const queued = Array.from({ length: 5 }, () => visit('crowded'));
    await until(() => g().registration('crowded').waiting === 5, 2_000, 'five queued requests');
    app.kill('SIGKILL');
    expect((await hung).status).toBe(502);
    // Each gets a status that says what happened: the channel was lost under it (502), or no
    // channel came back while it waited (503).
    const outcomes = (await Promise.all(queued)).map((r) => `${r.status} ${String(r.headers['x-ptth-error'])}`);
    for (const o of outcomes) expect(['502 PTTH_ERR_CHANNEL_LOST', '503 PTTH_ERR_NO_CHANNEL']).toContain(o);
    await until(() => g().registration('crowded').channels.length === 0, 2_000, 'the dead app channels to go');
    noLeaks('crowded');
  });
});

// ---------------------------------------------------------------------------------------------

/**
 * `ptth-proxy serve` on `port`; 0 lets the kernel pick one, read back from the listening line (no
 * port is taken free and then used). The restart must reuse its port by design: that port was
 * the killed gateway's a moment ago and something else on the machine may hold it briefly, so an
 * EADDRINUSE is retried, a bounded number of times.
 */
async function serveOn(port: number): Promise<{ p: Spawned; port: number }> {
  const args = ['serve', '--port', String(port), '--host', '127.0.0.1', '--quiet'];
  const timeouts = ['--reconnect-wait', '500', '--queue-timeout', '1000', '--response-timeout', '2000'];
  for (let attempt = 1; ; attempt++) {
    const p = spawnCli([...args, ...timeouts]);
    killAtEnd(p);
    try {
      const m = await p.waitFor(/listening on 127\.0\.0\.1:(\d+)/, 10_000);
      return { p, port: Number(m[1]) };
    } catch (err) {
      if (port === 0 || attempt >= 20 || !/EADDRINUSE/.test(p.output())) throw err;
      await p.exited();
      await sleep(100 * attempt); // backoff before binding again, not a synchronisation
    }
  }
}

type Outcome = { at: number; status: number; body: string } | { at: number; error: string };

/** One visitor request with a hard deadline: a request that outlives it is recorded as a hang. */
function probe(port: number, name: string, ms: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const at = Date.now();
    const req = http.request({
      host: '127.0.0.1',
      port,
      path: '/hello',
      headers: { host: `${name}.localhost:${port}` },
      agent: false,
    });
    const timer = setTimeout(() => {
      req.destroy();
      resolve({ at, error: 'HANG' });
    }, ms);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ at, status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        resolve({ at, error: err.code ?? err.message });
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ at, error: err.code ?? err.message });
    });
    req.end();
  });
}

describe('the gateway restarted under load', () => {
  it.each(['SIGKILL', 'SIGTERM'] as const)(
    'killed with %s and started again on the same port: the client reconnects by itself and gets its name back under its token; visitors never hang',
    async (signal) => {
      const { p: first, port } = await serveOn(0);
      const app = startApp(port, (_req, res) => res.end('phoenix'), {
        name: 'phoenix',
        token: 'phoenix-token',
        backoff: 50,
        maxBackoff: 300,
      });
      const tunnel = await app;
      closeAtEnd(tunnel);
      const url = tunnel.url;
      expect(url).toBe(`http://phoenix.localhost:${port}/`);

      // Visitors: four at a time, one request after another, each with a deadline.
      const outcomes: Outcome[] = [];
      let stop = false;
      const workers = Array.from({ length: 4 }, async () => {
        while (!stop) {
          outcomes.push(await probe(port, 'phoenix', 4_000));
          await sleep(10); // pacing between one visitor's requests, not a synchronisation
        }
      });
      const served = (): number => outcomes.filter((o) => 'status' in o && o.status === 200).length;
      await until(() => served() >= 20, 5_000, 'visitors served before the restart');

      const offline = new Promise<void>((r) => tunnel.once('offline', () => r()));
      first.kill(signal);
      await first.exited();
      await offline;
      const killedAt = Date.now();
      // Visitors meet the closed port: waited for, not slept through.
      const refusedAfterKill = (): boolean =>
        outcomes.some((o) => o.at >= killedAt && 'error' in o && o.error === 'ECONNREFUSED');
      await until(refusedAfterKill, 5_000, 'a visitor to meet the closed port');

      const { p: second } = await serveOn(port);
      await until(() => tunnel.online, 5_000, 'the client to reconnect by itself');
      const before = served();
      await until(() => served() >= before + 20, 5_000, 'visitors served after the restart');
      stop = true;
      await Promise.all(workers);

      expect(tunnel.url, 'the same public URL').toBe(url);
      // The new gateway holds the name under the client's token: another token is refused.
      const other = await rawClaim(
        port,
        `POST /?name=phoenix&token=someone-else HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
      );
      other.socket.destroy();
      expect(other.head).toMatch(/^HTTP\/1\.1 403 /);
      const status = JSON.parse(
        (await request(port, { host: `localhost:${port}`, headers: { accept: 'application/json' } })).body,
      ) as {
        registrations: { name: string }[];
      };
      expect(status.registrations.map((r) => r.name)).toContain('phoenix');

      // Every visitor got an answer or a refused/reset connection; none hung. Statuses seen in the
      // gap: 503 (old gateway shutting down, or the name waiting for its app), 404 (new gateway,
      // before the client's claim arrived), 502 (a request in flight when the channel closed).
      const hangs = outcomes.filter((o) => 'error' in o && o.error === 'HANG');
      expect(hangs, JSON.stringify(hangs)).toEqual([]);
      for (const o of outcomes) {
        if ('status' in o) {
          expect([200, 404, 502, 503], JSON.stringify(o)).toContain(o.status);
          if (o.status === 200) expect(o.body).toBe('phoenix');
        } else expect(['ECONNREFUSED', 'ECONNRESET', 'socket hang up', 'EPIPE'], JSON.stringify(o)).toContain(o.error);
      }
      // The restart was seen by visitors: some that started after the kill were refused.
      expect(refusedAfterKill()).toBe(true);
      second.kill('SIGTERM');
      await second.exited();
    },
  );
});

// ---------------------------------------------------------------------------------------------

describe('network stalls', () => {
  it('an HTTP/2 app frozen by SIGSTOP is found dead by PING after pingTimeout; serves again on SIGCONT', async () => {
    // The app is another process, but on a busy machine it may wait its turn for the CPU: a full
    // second of pingTimeout keeps the healthy app connected; the frozen one never answers at all.
    const pingInterval = 200;
    const pingTimeout = 1_000;
    await gateway({ pingInterval, pingTimeout, reconnectWait: 300 });
    const app = await childApp('frozen', 'h2');
    expect((await visit('frozen')).status).toBe(200);
    expect(
      g()
        .registration('frozen')
        .channels.map((c) => c.transport),
    ).toEqual(['http2']);

    app.kill('SIGSTOP');
    const stoppedAt = Date.now();
    // Detected by PING, not by TCP: the frozen process's kernel still acknowledges every byte, and
    // TCP keepalive would take more than 30 s. Wide margins: not before about pingTimeout (a PING
    // sent just before the stop may have been on its way: half of it), well within
    // 10 x (pingInterval + pingTimeout).
    const bound = 10 * (pingInterval + pingTimeout);
    await until(
      () => g().registration('frozen').channels.length === 0,
      bound,
      'the stalled HTTP/2 channel to be declared dead',
    );
    expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(pingTimeout / 2);
    const during = await visit('frozen');
    expect(during.status).toBe(503);
    noLeaks('frozen');

    app.kill('SIGCONT');
    await until(() => count(app.output(), /^online /gm) >= 2, 10_000, 'the app to reconnect after it resumed');
    expect((await visit('frozen')).status).toBe(200);
    noLeaks('frozen');
  });

  it('a reversed HTTP/1.1 app that stalls with a request in flight: 504 after responseTimeout, the channel closes, nothing leaks; it serves again once it runs', async () => {
    const responseTimeout = 600;
    await gateway({ responseTimeout, reconnectWait: 300 });
    const app = await childApp('stuck', 'h1', 1);
    expect((await visit('stuck')).status).toBe(200);

    app.kill('SIGSTOP');
    const started = Date.now();
    const r = await visit('stuck');
    const took = Date.now() - started;
    expect(r.status).toBe(504);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_APP_TIMEOUT');
    // Time is the behaviour: not before responseTimeout (less timer rounding), and within
    // 10 x responseTimeout, a bound no busy machine reaches but a hang does.
    expect(took).toBeGreaterThanOrEqual(responseTimeout - 50);
    expect(took).toBeLessThan(10 * responseTimeout);
    // The channel that held the request is closed (it is mid-message), not returned to the pool.
    await until(() => g().registration('stuck').channels.length === 0, 5_000, 'the stalled channel to close');
    noLeaks('stuck');

    app.kill('SIGCONT');
    await until(() => count(app.output(), /^online /gm) >= 2, 10_000, 'the app to reconnect after it resumed');
    expect((await visit('stuck')).status).toBe(200);
    noLeaks('stuck');
  });

  it('an in-process app whose socket stops reading while it uploads: 504 after responseTimeout, not a hang (stall of the request body)', async () => {
    const responseTimeout = 600;
    await gateway({ responseTimeout });
    let paused: net.Socket | undefined;
    const t = await startApp(
      g().port,
      (req) => {
        // Stop reading the connection itself: the request body backs up into the gateway.
        paused = req.socket as net.Socket;
        paused.pause();
      },
      { name: 'plugged', http1: true, connections: 1 },
    );
    closeAtEnd(t);
    const s = await rawConnect(g().port);
    s.on('error', noop);
    track(s);
    s.write(`POST / HTTP/1.1\r\nHost: ${g().host('plugged')}\r\nContent-Length: ${1 << 30}\r\n\r\n`);
    const block = Buffer.alloc(64 * 1024);
    const fill = (): void => {
      while (!s.destroyed && s.write(block));
      if (!s.destroyed) s.once('drain', fill);
    };
    fill();
    const got = (await readUntil(s, (b) => b.includes('\r\n\r\n'), responseTimeout * 3 + 2_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 504 /);
    expect(got).toContain('PTTH_ERR_APP_TIMEOUT');
    expect(paused).toBeDefined();
    noLeaks('plugged');
  });
});
