import * as http from 'node:http';
import type * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import { closed, rawClaim, rawConnect, readUntil, request, until } from '../helpers/index.js';
import { useApp, useGateway } from '../helpers/fixture.js';
import { createGateway } from '../../src/gateway/server.js';

describe('gateway lifecycle', () => {
  it('close() lets a request in flight finish, refuses new claims meanwhile, then releases everything', async () => {
    const gw = await useGateway();
    let finish!: () => void;
    await useApp(
      gw.port,
      (_req, res) => {
        finish = () => res.end('completed during shutdown');
      },
      { name: 'busy', connections: 1, backoff: 5_000 },
    );
    const pending = request(gw.port, { host: gw.host('busy') });
    await until(() => typeof finish === 'function', 3_000, 'request at the app');
    // A claim whose head is half sent when the shutdown starts is refused once it completes. The
    // shutdown starts once the gateway has read that half (before, the connection would be idle).
    const atGateway = new Promise<net.Socket>((resolve) => gw.gateway.server.once('connection', resolve));
    const claimant = await rawConnect(gw.port);
    const half = 'POST /?name=late HTTP/1.1\r\nHost: localhost\r\n';
    claimant.write(half);
    const conn = await atGateway;
    await until(() => conn.bytesRead === half.length, 3_000, 'the half claim read by the gateway');
    // A grace far longer than the test: close() ends because the request finished, not because it ran out.
    let closed = false;
    const closing = gw.gateway.close(30_000).then(() => void (closed = true));
    claimant.write('Upgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n');
    const refusal = (await readUntil(claimant, (b) => b.includes('\r\n\r\n'))).toString('latin1');
    expect(refusal).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
    expect(refusal).toContain('X-Ptth-Error: PTTH_ERR_SHUTTING_DOWN');
    claimant.destroy();
    // Shutting down (the refusal came) and still waiting for the request in flight.
    expect(closed).toBe(false);
    expect(gw.gateway.table.lookup('busy')?.channels[0]?.active).toBe(1);
    finish();
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.body).toBe('completed during shutdown');
    await closing;
    expect(gw.gateway.table.list()).toHaveLength(0);
  });

  it('close() ends spliced upgrade connections once the grace period is over', async () => {
    const gw = await useGateway();
    const app = http.createServer();
    app.on('upgrade', (_req, socket) => {
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n');
      socket.pipe(socket);
    });
    await useApp(gw.port, app, { name: 'echo', connections: 1 });
    const s = await rawConnect(gw.port);
    s.write(`GET / HTTP/1.1\r\nHost: ${gw.host('echo')}\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n`);
    const head = await readUntil(s, (b) => b.includes('\r\n\r\n'));
    expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 101 /);
    s.write('ping');
    expect((await readUntil(s, (b) => b.includes('ping'))).toString()).toBe('ping');
    const start = Date.now();
    let closedAt = 0;
    const cut = closed(s, 10_000).then((c) => {
      closedAt = Date.now();
      return c;
    });
    await gw.gateway.close(300);
    expect(await cut).toBe(true);
    // Time is the behaviour: the spliced connection lives through the grace period and is ended
    // once it is over: not before 300 ms (less a timer's millisecond or so), and well before 10 s
    // (closed() gives up there), a bound no busy machine gets near.
    expect(closedAt - start).toBeGreaterThanOrEqual(290);
  });

  it('a visitor hanging up frees nothing twice: the request queued behind it is not sent down the dead channel', async () => {
    const gw = await useGateway({ queueTimeout: 400, reconnectWait: 400 });
    const claim = `POST /?name=solo&token=t HTTP/1.1\r\nHost: localhost\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n`;
    const first = await rawClaim(gw.port, claim);
    expect(first.head).toMatch(/^HTTP\/1\.1 101 /);
    // Visitor A's request reaches the app (which does not answer); visitor B queues behind it.
    const a = await rawConnect(gw.port);
    a.write(`GET /a HTTP/1.1\r\nHost: ${gw.host('solo')}\r\n\r\n`);
    await readUntil(first.socket, (b) => b.includes('GET /a'));
    const b = request(gw.port, { host: gw.host('solo'), path: '/b' });
    await until(() => gw?.gateway.table.lookup('solo')?.waiting === 1, 2_000, 'B queued');
    // A hangs up: the channel is mid-message and must close; B must not be sent down it.
    a.destroy();
    const rb = await b;
    expect(rb.status).toBe(503);
    expect(rb.headers['x-ptth-error']).toBe('PTTH_ERR_NO_CHANNEL');
    expect(await closed(first.socket)).toBe(true);
    // The gateway is alive and serves a fresh channel.
    const second = await rawClaim(gw.port, claim);
    const c = request(gw.port, { host: gw.host('solo'), path: '/c' });
    await readUntil(second.socket, (buf) => buf.includes('GET /c'));
    second.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    expect((await c).body).toBe('ok');
    second.socket.destroy();
  });

  it('rejects impossible settings at construction', () => {
    expect(() => createGateway({ domain: 'bad domain' })).toThrow(TypeError);
    expect(() => createGateway({ publicUrl: 'ftp://x' })).toThrow(TypeError);
    expect(() => createGateway({ maxChannels: 0 })).toThrow(TypeError);
    expect(() => createGateway({ responseTimeout: Number.NaN })).toThrow(TypeError);
  });

  it('advertises --public-url in Link and Location', async () => {
    const gw = await useGateway({ publicUrl: 'https://tunnel.example.com' });
    const { socket, head } = await rawClaim(
      gw.port,
      `POST /?name=pub HTTP/1.1\r\nHost: localhost:${gw.port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n`,
    );
    expect(head).toContain('Link: <https://pub.tunnel.example.com/>; rel="related"\r\n');
    expect(head).toMatch(/Location: https:\/\/tunnel\.example\.com\/_ptth\/[\w-]{32}\r\n/);
    socket.destroy();
  });
});
