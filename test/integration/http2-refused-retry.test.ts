import { constants } from 'node:http2';
import { describe, expect, it } from 'vitest';
import { rawClaim, rawConnect, request, startApp, until } from '../helpers/index.js';
import { cleanup, useApp, useGateway } from '../helpers/fixture.js';
import { serveH2 } from '../helpers/h2app.js';
import { CometApp } from '../helpers/comet.js';

/*
 * RFC 9113 section 8.7: a stream the app refused (REFUSED_STREAM, or above the last stream id of
 * its GOAWAY) was not processed and may be retried. A visitor whose request met an app that was
 * closing its reversed HTTP/2 connection is sent down another channel instead of getting 502.
 */
async function h2Claim(port: number, name: string): Promise<{ socket: import('node:net').Socket; rest: Buffer }> {
  const c = await rawClaim(
    port,
    `POST /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: ptth\r\nALPN: h2\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
  );
  expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
  cleanup(() => c.socket.destroy());
  return c;
}

describe('requests an HTTP/2 app refused unprocessed', () => {
  it("go to the name's other channel: an app closing its HTTP/2 connection costs visitors no 502", async () => {
    const g = await useGateway();
    // One HTTP/1.1 app and one HTTP/2 app share the name; the HTTP/2 one takes requests first.
    await useApp(g.port, (_req, res) => res.end('h1'), { name: 'closing', http1: true, token: 't', connections: 1 });
    const { socket, rest } = await h2Claim(g.port, 'closing');
    let refusedCount = 0;
    await serveH2(socket, rest, (stream) => {
      refusedCount++;
      stream.close(constants.NGHTTP2_REFUSED_STREAM);
    });
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => request(g.port, { host: g.host('closing'), path: `/${i}` })),
    );
    expect(refusedCount).toBeGreaterThan(0);
    expect(replies.map((r) => r.status)).toEqual(replies.map(() => 200));
    expect(new Set(replies.map((r) => r.body))).toEqual(new Set(['h1']));
  });

  it("listen() closing its HTTP/2 connection under load (GOAWAY): visitors are served by the name's other app, none gets 502", async () => {
    const g = await useGateway();
    await useApp(g.port, (_req, res) => res.end('stays'), { name: 'shared', http1: true, token: 't', connections: 4 });
    // The leaving app answers after 20 ms, so requests are always in flight on its connection.
    const leaving = await startApp(g.port, (_req, res) => setTimeout(() => res.end('leaves'), 20), {
      name: 'shared',
      token: 't',
    });
    expect(leaving.protocol).toBe('h2');
    const replies: { status: number; body: string }[] = [];
    let running = true;
    const loops = Array.from({ length: 20 }, async () => {
      while (running) {
        const r = await request(g.port, { host: g.host('shared') });
        replies.push({ status: r.status, body: r.body });
      }
    });
    const served = (body: string): number => replies.filter((r) => r.body === body).length;
    const reg = g.gateway.table.lookup('shared');
    const h2 = reg?.channels.find((c) => c.transport === 'http2');
    if (!reg || !h2) throw new Error('no HTTP/2 channel for the leaving app');
    // Under load: the HTTP/2 app has served some and holds requests in flight when it closes.
    await until(() => served('leaves') >= 10 && h2.active > 0, 5_000, 'the HTTP/2 app to be serving under load');
    const left = new Promise<void>((resolve) => {
      const onClose = (_r: unknown, ch: unknown): void => {
        if (ch !== h2) return;
        g.gateway.removeListener('channel-close', onClose);
        resolve();
      };
      g.gateway.on('channel-close', onClose);
    });
    await leaving.close({ graceMs: 500, release: false });
    // Its GOAWAY took the channel out of the name (the registration stays: release: false).
    await left;
    expect(h2.closed).toBe(true);
    const after = replies.length;
    await until(() => replies.length >= after + 20, 5_000, 'requests after the HTTP/2 app left');
    running = false;
    await Promise.all(loops);
    expect(replies.filter((r) => r.status !== 200)).toEqual([]);
    // The other app served what came after, and nothing was lost in between.
    expect(replies.slice(after).every((r) => r.body === 'stays')).toBe(true);
    expect(served('stays')).toBeGreaterThanOrEqual(20);
  });

  it('never go back to the channel that refused them: with no other channel they wait for one (503 after the queue timeout), never loop', async () => {
    const g = await useGateway();
    const { socket, rest } = await h2Claim(g.port, 'refuser');
    let seen = 0;
    await serveH2(socket, rest, (stream) => {
      seen++;
      stream.close(constants.NGHTTP2_REFUSED_STREAM);
    });
    const r = await request(g.port, { host: g.host('refuser'), path: '/' });
    expect(r.status).toBe(503);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_NO_CHANNEL');
    expect(seen).toBe(1);
    expect(g.gateway.table.lookup('refuser')?.waiting).toBe(0);
  });

  it('a refused request waiting for another channel holds up no later request: the refusing channel serves them at once', async () => {
    const g = await useGateway({ queueTimeout: 3_000 });
    const { socket, rest } = await h2Claim(g.port, 'onerefusal');
    let seen = 0;
    await serveH2(socket, rest, (stream) => {
      // The first stream is refused (the app was briefly over its stream limit); the rest are served.
      if (++seen === 1) stream.close(constants.NGHTTP2_REFUSED_STREAM);
      else {
        stream.respond({ ':status': 200 });
        stream.end('served');
      }
    });
    const first = request(g.port, { host: g.host('onerefusal'), path: '/first' });
    await until(() => g.gateway.table.lookup('onerefusal')?.waiting === 1, 3_000, 'the refused request to wait');
    // The channel is idle and healthy: a new request must not queue behind the one that avoids it.
    const second = await request(g.port, { host: g.host('onerefusal'), path: '/second' });
    expect(second.status).toBe(200);
    expect(second.body).toBe('served');
    const r = await first;
    expect(r.status).toBe(503);
    expect(seen).toBe(2);
  });

  it('a visitor upgrade waiting for the busy upgradable channel holds up no plain request an idle channel can serve', async () => {
    const g = await useGateway({ queueTimeout: 3_000 });
    // An HTTP/1.1 channel (can carry upgrades) kept busy, and an HTTP/2 one without extended CONNECT.
    let release: (() => void) | undefined;
    await useApp(g.port, (_req, res) => void (release = () => res.end('slow')), {
      name: 'mixed',
      http1: true,
      token: 't',
      connections: 1,
    });
    // Busy before the HTTP/2 channel joins (plain requests prefer HTTP/2 channels).
    const slow = request(g.port, { host: g.host('mixed'), path: '/slow' });
    await until(() => release !== undefined, 3_000, 'the slow request to reach the HTTP/1.1 app');
    const { socket, rest } = await h2Claim(g.port, 'mixed');
    await serveH2(socket, rest, (stream) => {
      stream.respond({ ':status': 200 });
      stream.end('h2');
    });
    await until(() => g.gateway.table.lookup('mixed')?.channels.length === 2, 3_000, 'both channels');
    const visitor = await rawConnect(g.port);
    cleanup(() => visitor.destroy());
    visitor.write(
      `GET /ws HTTP/1.1\r\nHost: ${g.host('mixed')}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
    );
    await until(() => g.gateway.table.lookup('mixed')?.waiting === 1, 3_000, 'the upgrade to wait');
    const plain = await request(g.port, { host: g.host('mixed'), path: '/plain' });
    expect(plain.status).toBe(200);
    expect(plain.body).toBe('h2');
    release?.();
    expect((await slow).status).toBe(200);
  });

  it('a refused request retried onto a Comet channel of the name is delivered to its poller (its body was already read to the end)', async () => {
    const g = await useGateway({ queueTimeout: 3_000, pollTimeout: 5_000 });
    const { socket, rest } = await h2Claim(g.port, 'cometmix');
    let seen = 0;
    await serveH2(socket, rest, (stream) => {
      seen++;
      stream.close(constants.NGHTTP2_REFUSED_STREAM);
    });
    const comet = await CometApp.start(g.origin, { name: 'cometmix', token: 't' }, (req) => ({
      status: 200,
      body: `comet ${req.url}`,
    }));
    cleanup(() => comet.stop());
    expect(
      g.gateway.table
        .lookup('cometmix')
        ?.channels.map((c) => c.transport)
        .sort(),
    ).toEqual(['comet', 'http2']);
    // Plain requests prefer the HTTP/2 channel, which refuses the stream: the retry goes to Comet.
    const r = await request(g.port, { host: g.host('cometmix'), path: '/mixed' });
    expect(seen).toBe(1);
    expect(r.status).toBe(200);
    expect(r.body).toBe('comet /mixed');
  });

  it("wait for the app's next channel when it reconnects, and are served there", async () => {
    const g = await useGateway({ queueTimeout: 3_000 });
    const { socket, rest } = await h2Claim(g.port, 'phoenix2');
    await serveH2(socket, rest, (stream) => stream.close(constants.NGHTTP2_REFUSED_STREAM));
    const pending = request(g.port, { host: g.host('phoenix2'), path: '/again' });
    await new Promise((r) => setTimeout(r, 200));
    await useApp(g.port, (req, res) => res.end(`second channel ${req.url}`), { name: 'phoenix2', token: 't' });
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.body).toBe('second channel /again');
  });

  it('a request with a body is not retried (its body may have been read): 502', async () => {
    const g = await useGateway();
    const { socket, rest } = await h2Claim(g.port, 'bodyrefuser');
    let seen = 0;
    await serveH2(socket, rest, (stream) => {
      seen++;
      stream.close(constants.NGHTTP2_REFUSED_STREAM);
    });
    const r = await request(g.port, { host: g.host('bodyrefuser'), method: 'POST', path: '/', body: 'payload' });
    expect(r.status).toBe(502);
    expect(seen).toBe(1);
  });
});
