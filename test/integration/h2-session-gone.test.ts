import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { constants } from 'node:http2';
import { describe, expect, it } from 'vitest';
import { rawClaim, request, until, type Reply, type TestGateway } from '../helpers/index.js';
import { track, useApp, useGateway } from '../helpers/fixture.js';
import { DATA, END_STREAM, RawH2App, frame, serveH2 } from '../helpers/h2app.js';

/*
 * src/channels/http2.ts: an HTTP/2 channel whose session is going away (a connection error the app
 * committed, node:http2's 'close' not yet run) takes no new request. The exchanges failing with it
 * must not pull the name's queued requests into it (they would get 502 though nothing was sent):
 * those wait for, and go down, the name's other channel.
 *
 * src/table/registration.ts Exchange.retry: a request an HTTP/2 app refused unprocessed (REFUSED_STREAM)
 * while its registration was released meanwhile gets 503 PTTH_ERR_NO_CHANNEL, at once.
 */
async function h2Claim(g: TestGateway, name: string): Promise<{ socket: Socket; rest: Buffer }> {
  const c = await rawClaim(
    g.port,
    `POST /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${g.port}\r\nUpgrade: ptth\r\nALPN: h2\r\n` +
      'Connection: Upgrade\r\nContent-Length: 0\r\n\r\n',
  );
  expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
  c.socket.on('error', () => {});
  track(c.socket);
  return c;
}

describe('a request dispatched to an HTTP/2 session that is going away', () => {
  it("waits for the name's other channel, not failed: a broken connection costs only its own stream", async () => {
    // One stream per HTTP/2 channel: the second request must wait for a channel.
    const g = await useGateway({ maxStreams: 1, responseTimeout: 2_000, queueTimeout: 2_000 });
    const held: ServerResponse[] = [];
    await useApp(
      g.port,
      (req: IncomingMessage, res: ServerResponse) => {
        if (req.url === '/hold') held.push(res);
        else res.end(`h1 ${req.url ?? ''}`);
      },
      { name: 'going', token: 't', http1: true, connections: 1 },
    );
    const { socket, rest } = await h2Claim(g, 'going');
    const app = new RawH2App(socket, rest);
    const reg = g.gateway.table.lookup('going');
    const h2Ready = (): boolean => reg?.channels.some((c) => c.transport === 'http2' && c.available) === true;
    await until(h2Ready, 3_000, 'the HTTP/2 channel');

    // 1 goes to the HTTP/2 channel (preferred), 2 to the HTTP/1.1 one, which holds it; 3 waits.
    const first = request(g.port, { host: g.host('going'), path: '/first' });
    const stream = await app.request(1);
    const second = request(g.port, { host: g.host('going'), path: '/hold' });
    await until(() => held.length === 1, 3_000, 'the HTTP/1.1 app to hold /hold');
    const third = request(g.port, { host: g.host('going'), path: '/third' });
    await until(() => reg?.waiting === 1, 3_000, '/third to queue');

    // DATA on a stream the gateway never opened: a connection error (RFC 9113 section 5.1).
    app.write(frame(DATA, END_STREAM, stream + 20, Buffer.from('x')));
    const r1 = await first;
    expect(r1.status).toBe(502);
    expect(r1.headers['x-ptth-error']).toBe('PTTH_ERR_BAD_RESPONSE');
    // /third was not pulled into the broken channel as /first failed: it still waits.
    expect(reg?.waiting).toBe(1);
    await until(() => reg?.channels.every((c) => c.transport === 'http1') === true, 3_000, 'the HTTP/2 channel to go');
    held[0]?.end('released');
    const [r2, r3] = await Promise.all([second, third]);
    expect([r2.status, r2.body]).toEqual([200, 'released']);
    expect([r3.status, r3.body]).toEqual([200, 'h1 /third']);
  });
});

describe('a request an HTTP/2 app refused while its name was released', () => {
  it('gets 503 PTTH_ERR_NO_CHANNEL at once; nothing hangs, and the refused stream is not sent again', async () => {
    // Waits longer than the test may run: a retry that queued instead of failing would time the test out.
    const g = await useGateway({ responseTimeout: 2_000, queueTimeout: 60_000, reconnectWait: 60_000 });
    const { socket, rest } = await h2Claim(g, 'leaving');
    const reg = g.gateway.table.lookup('leaving');
    let seen = 0;
    await serveH2(socket, rest, (s) => {
      seen++;
      // The name goes first, then the app refuses the stream it had not started on.
      if (reg) g.gateway.table.release(reg, 'test');
      s.close(constants.NGHTTP2_REFUSED_STREAM);
    });
    const r: Reply = await request(g.port, { host: g.host('leaving'), path: '/refused' });
    expect(r.status).toBe(503);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_NO_CHANNEL');
    expect(seen).toBe(1);
    expect(g.gateway.table.lookup('leaving')).toBeUndefined();
  });
});
