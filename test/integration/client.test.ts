import * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import { ClaimError, listen, type Tunnel } from '../../src/client/node.js';
import { request, until, type TestGateway } from '../helpers/index.js';
import { cleanup, useApp, useGateway } from '../helpers/fixture.js';

function gateway(options = {}, port = 0): Promise<TestGateway> {
  return useGateway(options, port);
}

/**
 * A gateway on a port that was in use moments ago (a restart): retried, a bounded number of times,
 * while something else holds it, since the kernel may have handed it to another socket meanwhile.
 */
async function gatewayOn(port: number): Promise<TestGateway> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await gateway({}, port);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

async function app(port: number, target: http.RequestListener | http.Server, options = {}): Promise<Tunnel> {
  return useApp(port, target, options);
}

describe('Node client: listen()', () => {
  it('serves an existing http.Server unchanged, without it listening on any port', async () => {
    const gw = await gateway();
    const server = http.createServer((req, res) => {
      res.setHeader('X-App', 'express-like');
      res.end(`${req.method} ${req.url} via ${String(req.headers['x-forwarded-host'])}`);
    });
    const t = await app(gw.port, server, { name: 'site' });
    expect(server.listening).toBe(false);
    const r = await request(gw.port, { host: gw.host('site'), path: '/hello' });
    expect(r.status).toBe(200);
    expect(r.headers['x-app']).toBe('express-like');
    expect(r.body).toBe(`GET /hello via site.localhost:${gw.port}`);
    expect(t.url).toBe(`http://site.localhost:${gw.port}/`);
  });

  it('keeps the configured number of connections, all under one gateway-assigned name', async () => {
    const gw = await gateway();
    const t = await app(gw.port, (_req, res) => res.end('ok'), { connections: 3, http1: true });
    expect(t.name).toMatch(/^[a-z][a-z0-9]{11}$/);
    // The gateway counts a channel when it writes the 101, the client when it reads it: wait for both.
    await until(
      () => gw.gateway.table.lookup(t.name as string)?.channels.length === 3 && t.connections === 3,
      3_000,
      '3 channels',
    );
    expect(t.connections).toBe(3);
    expect(gw.gateway.table.list()).toHaveLength(1);
  });

  it('replaces a connection the gateway closes', async () => {
    const gw = await gateway();
    const t = await app(gw.port, (_req, res) => res.end('ok'), { name: 'heal', connections: 2, http1: true });
    const reg = gw.gateway.table.lookup('heal');
    await until(() => reg?.channels.length === 2);
    const first = reg?.channels[0];
    first?.close();
    await until(
      () => reg?.channels.length === 2 && !reg.channels.includes(first as never) && t.connections === 2,
      3_000,
      'replacement',
    );
    expect(t.connections).toBe(2);
    expect((await request(gw.port, { host: gw.host('heal') })).body).toBe('ok');
  });

  it('reconnects after a gateway restart, gets its name back with its token, and reports offline/online', async () => {
    let gw = await gateway();
    const port = gw.port;
    const events: string[] = [];
    const t = await app(port, (_req, res) => res.end('still here'), { name: 'phoenix', token: 'tok-1' });
    t.on('offline', () => events.push('offline'));
    t.on('online', () => events.push('online'));
    await gw.close();
    await until(() => !t.online, 3_000, 'offline');
    gw = await gatewayOn(port);
    await until(() => t.online, 5_000, 'back online');
    expect(events).toEqual(['offline', 'online']);
    const r = await request(port, { host: gw.host('phoenix') });
    expect(r.body).toBe('still here');
    expect(gw.gateway.table.lookup('phoenix')?.tokenMatches('tok-1')).toBe(true);
  });

  it('retries with backoff while the gateway is unreachable', async () => {
    const gw = await gateway();
    const port = gw.port;
    await gw.close();
    const delays: number[] = [];
    const t = listen((_req, res) => res.end('late'), {
      gateway: `http://127.0.0.1:${port}`,
      name: 'late',
      backoff: 20,
      maxBackoff: 200,
      connections: 1,
    });
    cleanup(() => t.close({ graceMs: 100 }));
    t.on('reconnecting', ({ delay }) => delays.push(delay));
    await until(() => delays.length >= 4, 5_000, 'four retries');
    // Exponential with jitter: each delay is within [base*2^n/2, base*2^n], capped at maxBackoff.
    delays.slice(0, 4).forEach((d, n) => {
      const exp = Math.min(200, 20 * 2 ** n);
      expect(d).toBeGreaterThanOrEqual(exp / 2);
      expect(d).toBeLessThanOrEqual(exp);
    });
    const g2 = await gatewayOn(port);
    await t.ready();
    expect((await request(port, { host: g2.host('late') })).body).toBe('late');
  });

  it('counts backoff per connection: a whole pool failing at once all retry at the first delay', async () => {
    const gw = await gateway();
    const t = await app(gw.port, (_req, res) => res.end('x'), {
      name: 'herd',
      connections: 6,
      http1: true,
      backoff: 40,
      maxBackoff: 10_000,
    });
    await until(() => t.connections === 6, 3_000, 'six connections');
    const delays: number[] = [];
    t.on('reconnecting', ({ delay }) => delays.push(delay));
    await gw.close();
    await until(() => delays.length >= 6, 3_000, 'six retries');
    // The first failure of each of the six slots waits between base/2 and base, not base * 2^n.
    for (const d of delays.slice(0, 6)) {
      expect(d).toBeGreaterThanOrEqual(20);
      expect(d).toBeLessThanOrEqual(40);
    }
  });

  it('stops with a ClaimError when the name is held under another token', async () => {
    const gw = await gateway();
    await app(gw.port, (_req, res) => res.end('owner'), { name: 'taken', token: 'a' });
    const t = listen((_req, res) => res.end('intruder'), {
      gateway: gw.origin,
      name: 'taken',
      token: 'b',
      backoff: 10,
    });
    cleanup(() => t.close({ graceMs: 100 }));
    const errors: Error[] = [];
    t.on('error', (e) => errors.push(e));
    const err = await t.ready().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ClaimError);
    expect((err as ClaimError).status).toBe(403);
    expect((err as ClaimError).code).toBe('PTTH_ERR_TOKEN_MISMATCH');
    await until(() => errors.length === 1);
    expect((await request(gw.port, { host: gw.host('taken') })).body).toBe('owner');
  });

  it('rejects a bad gateway URL or pool size at construction', () => {
    expect(() => listen(() => {}, { gateway: 'ftp://x' })).toThrow(TypeError);
    expect(() => listen(() => {}, { connections: 0 })).toThrow(TypeError);
  });

  it('close() finishes the request in flight, releases the name and leaves nothing open', async () => {
    const gw = await gateway();
    let release!: () => void;
    const t = await app(
      gw.port,
      (_req, res) => {
        release = () => res.end('finished');
      },
      { name: 'bye', connections: 1 },
    );
    const pending = request(gw.port, { host: gw.host('bye') });
    await until(() => typeof release === 'function', 3_000, 'request at the app');
    const closing = t.close({ graceMs: 2_000 });
    setTimeout(() => release(), 100);
    expect((await pending).body).toBe('finished');
    await closing;
    expect(t.connections).toBe(0);
    expect(gw.gateway.table.lookup('bye')).toBeUndefined();
    // Released: another token may claim the name at once.
    const other = await app(gw.port, (_req, res) => res.end('new owner'), { name: 'bye', token: 'other' });
    expect(other.url).toContain('bye.localhost');
  });

  it('close({ release: false }) keeps the name for its lease', async () => {
    const gw = await gateway();
    const t = await app(gw.port, (_req, res) => res.end('x'), { name: 'keep', token: 'k', lease: 60 });
    await t.close({ release: false, graceMs: 100 });
    await until(() => gw.gateway.table.lookup('keep')?.channels.length === 0);
    expect(gw.gateway.table.lookup('keep')).toBeDefined();
  });
});

describe('Node client: a gateway that never answers the claim', () => {
  it('drops the dial after claimTimeout and dials again, so a silent server cannot hold the pool', async () => {
    // Something that accepts connections and never says a word (a wrong port, a stalled proxy).
    const accepted: import('node:net').Socket[] = [];
    let dropped = 0;
    const silent = (await import('node:net')).createServer((s) => {
      accepted.push(s);
      s.on('close', () => dropped++);
      s.resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as import('node:net').AddressInfo).port;
    const tunnel = listen((_req, res) => res.end('ok'), {
      gateway: `http://127.0.0.1:${port}`,
      http1: true,
      connections: 1,
      claimTimeout: 200,
      backoff: 50,
      maxBackoff: 100,
    });
    cleanup(() => tunnel.close({ graceMs: 100 }));
    try {
      const error = await new Promise<Error>((resolve) =>
        tunnel.once('reconnecting', (e: { error: Error }) => resolve(e.error)),
      );
      expect(error.message).toBe('the gateway did not answer the claim within 200 ms');
      // The silent connection was given up, and the client dials again.
      await until(() => accepted.length >= 2, 5_000, 'a second dial');
      await until(() => dropped >= 1, 5_000, 'the first dial to be dropped');
    } finally {
      for (const s of accepted) s.destroy();
      silent.close();
    }
  });
});
