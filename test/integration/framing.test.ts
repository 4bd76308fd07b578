/**
 * What a visitor sends reaches the app as exactly one message with the gateway's own headers, on
 * every transport: a body is always framed explicitly (no request smuggled inside another's body,
 * whatever the method), an upgrade request never leaves its body behind in a channel, a refusal
 * cut short retires its channel, and the forwarding headers are the gateway's on every transport.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Tunnel } from '../../src/client/node.js';
import { createLocalProxy } from '../../src/client/proxy.js';
import { fetchRaw, parseRequestMessage, register } from '../helpers/comet.js';
import { closed, headEnd, rawClaim, rawConnect, readUntil, until, type TestGateway } from '../helpers/index.js';
import { RawWsApp } from '../helpers/wsapp.js';
import { cleanup, track, useApp, useGateway } from '../helpers/fixture.js';

/** The running test's gateway: set by gateway(), cleared when the test finishes. */
let gw: TestGateway | undefined;

async function gateway(): Promise<TestGateway> {
  const started = await useGateway();
  gw = started;
  cleanup(() => {
    gw = undefined;
  });
  return started;
}

function g(): TestGateway {
  if (!gw) throw new Error('no gateway');
  return gw;
}

interface Seen {
  method: string;
  url: string;
  body: string;
}

/**
 * An ordinary node:http app that records every request it parsed: behind the client library, or
 * (`local`) as a local service on its own port that `ptth-proxy connect`'s proxy forwards to.
 */
async function recordingApp(name: string, http1: boolean, local = false): Promise<Seen[] & { tunnel?: Tunnel }> {
  const seen: Seen[] = [];
  const handler: http.RequestListener = (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', body: Buffer.concat(chunks).toString('latin1') });
      res.end(`seen ${req.url ?? ''}`);
    });
  };
  let target: http.Server | http.RequestListener = handler;
  if (local) {
    const service = http.createServer(handler);
    cleanup(() => service.close());
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    target = createLocalProxy(new URL(`http://127.0.0.1:${(service.address() as AddressInfo).port}`));
  }
  // One channel: every request, smuggled or not, goes down the same connection in order.
  const tunnel = await useApp(g().port, target, { name, http1, connections: 1 });
  // Not enumerable: `seen` still compares equal to a plain list of what the app parsed.
  return Object.defineProperty(seen, 'tunnel', { value: tunnel, enumerable: false });
}

/** Sends raw bytes as a visitor on a fresh connection and reads the whole answer (Connection: close). */
async function visit(bytes: string): Promise<string> {
  const s = await rawConnect(g().port);
  track(s);
  s.write(bytes);
  return (await readUntil(s, () => false, 3_000)).toString('latin1');
}

/** A request the app would parse as a second one if the body went down the channel unframed. */
const SMUGGLED = `GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n`;
const chunked = (body: string): string => `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;

describe('a request body always reaches the app framed, whatever the method', () => {
  const METHODS = ['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'POST', 'PUT', 'PATCH'];
  it.each(METHODS)(
    'reversed HTTP/1.1: a chunked %s body is one request with that body, never a second request',
    async (method) => {
      await gateway();
      const seen = await recordingApp('smug', true);
      const answer = await visit(
        `${method} /a HTTP/1.1\r\nHost: ${g().host('smug')}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunked(SMUGGLED)}`,
      );
      expect(answer).toMatch(/^HTTP\/1\.1 200 /);
      // A later request on the same channel: anything smuggled before it would have been parsed first.
      const after = await visit(`GET /after HTTP/1.1\r\nHost: ${g().host('smug')}\r\nConnection: close\r\n\r\n`);
      expect(after).toMatch(/^HTTP\/1\.1 200 [^]*seen \/after$/);
      expect(seen).toEqual([
        { method, url: '/a', body: SMUGGLED },
        { method: 'GET', url: '/after', body: '' },
      ]);
    },
  );

  it.each(['GET', 'DELETE'])('reversed HTTP/1.1: a %s with Content-Length keeps it as its framing', async (method) => {
    await gateway();
    const seen = await recordingApp('cl', true);
    const answer = await visit(
      `${method} /a HTTP/1.1\r\nHost: ${g().host('cl')}\r\nContent-Length: ${SMUGGLED.length}\r\nConnection: close\r\n\r\n${SMUGGLED}`,
    );
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    await visit(`GET /after HTTP/1.1\r\nHost: ${g().host('cl')}\r\nConnection: close\r\n\r\n`);
    expect(seen).toEqual([
      { method, url: '/a', body: SMUGGLED },
      { method: 'GET', url: '/after', body: '' },
    ]);
  });

  it('reversed HTTP/2: a chunked GET body is the body of one stream', async () => {
    await gateway();
    const seen = await recordingApp('smug2', false);
    expect(seen.tunnel?.protocol).toBe('h2');
    await visit(
      `GET /a HTTP/1.1\r\nHost: ${g().host('smug2')}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunked(SMUGGLED)}`,
    );
    await visit(`GET /after HTTP/1.1\r\nHost: ${g().host('smug2')}\r\nConnection: close\r\n\r\n`);
    expect(seen).toEqual([
      { method: 'GET', url: '/a', body: SMUGGLED },
      { method: 'GET', url: '/after', body: '' },
    ]);
  });

  it.each([
    ['reversed HTTP/1.1', true],
    ['reversed HTTP/2', false],
  ])(
    "connect's proxy to a local service over %s: a chunked GET body is one request there too",
    async (_label, http1) => {
      await gateway();
      const seen = await recordingApp('smugl', http1, true);
      await visit(
        `GET /a HTTP/1.1\r\nHost: ${g().host('smugl')}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunked(SMUGGLED)}`,
      );
      await visit(`GET /after HTTP/1.1\r\nHost: ${g().host('smugl')}\r\nConnection: close\r\n\r\n`);
      expect(seen).toEqual([
        { method: 'GET', url: '/a', body: SMUGGLED },
        { method: 'GET', url: '/after', body: '' },
      ]);
    },
  );

  it("WebSocket channel: a chunked GET body arrives as that stream's body frames", async () => {
    await gateway();
    const app = await RawWsApp.connect(g().port, { name: 'smugws' });
    cleanup(() => app.ws.terminate());
    const s = await rawConnect(g().port);
    track(s);
    s.write(`GET /a HTTP/1.1\r\nHost: ${g().host('smugws')}\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`);
    const req = await app.control('request');
    expect([req['method'], req['url'], req['body']]).toEqual(['GET', '/a', true]);
    expect((await app.body(req['id'] as number)).toString('latin1')).toBe(SMUGGLED);
  });

  it('Comet: a chunked GET body is framed by its length in the message/http the poller gets', async () => {
    await gateway();
    const r = await register(g().origin, { name: 'smugc' });
    const polled = fetchRaw(r.links['first'] as string);
    const s = await rawConnect(g().port);
    track(s);
    s.write(`GET /a HTTP/1.1\r\nHost: ${g().host('smugc')}\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`);
    const message = (await polled).body;
    const parsed = await parseRequestMessage(message);
    expect([parsed.method, parsed.url, parsed.body.toString('latin1')]).toEqual(['GET', '/a', SMUGGLED]);
    // One message, nothing after it: the body ends where its Content-Length says.
    expect(message.toString('latin1').endsWith(`Content-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`)).toBe(true);
  });
});

describe("a visitor's upgrade request never leaves bytes behind in a channel", () => {
  async function rawApp(name: string): Promise<net.Socket> {
    const c = await rawClaim(
      g().port,
      `GET /?name=${name}&token=t HTTP/1.1\r\nHost: localhost:${g().port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\n\r\n`,
    );
    expect(c.head).toMatch(/^HTTP\/1\.1 101 /);
    track(c.socket);
    c.socket.on('error', () => {});
    return c.socket;
  }
  const upgrade = (host: string, extra: string): string =>
    `GET /ws HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;

  it.each([
    ['Content-Length: 60', 'Content-Length: 60\r\n', 'x'.repeat(60)],
    ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked\r\n', chunked('x'.repeat(60))],
  ])('an upgrade declaring a body (%s) is refused with 400 and never reaches the app', async (_label, header, body) => {
    await gateway();
    const app = await rawApp('up');
    let got = '';
    app.on('data', (c: Buffer) => (got += c.toString('latin1')));
    app.resume();
    const answer = await visit(upgrade(g().host('up'), header) + body);
    expect(answer).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n[^]*X-Ptth-Error: PTTH_ERR_UPGRADE_BODY\r\n/);
    // The next visitor's request is the first thing the app reads.
    const next = await rawConnect(g().port);
    track(next);
    next.write(`GET /next HTTP/1.1\r\nHost: ${g().host('up')}\r\n\r\n`);
    await until(() => got.includes('\r\n\r\n'), 3_000, 'the next request at the app');
    expect(got).toMatch(/^GET \/next HTTP\/1\.1\r\n/);
  });

  it('an upgrade with Content-Length: 0 is forwarded', async () => {
    await gateway();
    const app = await rawApp('up0');
    const s = await rawConnect(g().port);
    track(s);
    s.write(upgrade(g().host('up0'), 'Content-Length: 0\r\n'));
    expect((await readUntil(app, headEnd)).toString('latin1')).toMatch(/^GET \/ws HTTP\/1\.1\r\n/);
  });

  it('a refusal cut short (the visitor left mid-body) retires the channel instead of reusing it mid-message', async () => {
    await gateway();
    const app = await rawApp('cut');
    const s = await rawConnect(g().port);
    track(s);
    s.write(upgrade(g().host('cut'), ''));
    await readUntil(app, headEnd);
    // A chunked refusal whose body never ends; the visitor reads its head and leaves.
    app.write('HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
    expect((await readUntil(s, (b) => b.includes('hello'))).toString('latin1')).toMatch(/^HTTP\/1\.1 426 /);
    s.destroy();
    expect(await closed(app), 'the reversed connection is closed').toBe(true);
    await until(
      () => g().gateway.table.lookup('cut')?.channels.length === 0,
      3_000,
      'the channel to leave the registration',
    );
  });
});

describe("the forwarding headers are the gateway's on every transport", () => {
  /** What a visitor sends to pass itself off as someone else. */
  const FORGED =
    'Requesting-Client: 6.6.6.6:666\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n' +
    'X-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n';

  function forwarding(raw: readonly string[]): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (let i = 0; i < raw.length; i += 2) {
      const n = (raw[i] as string).toLowerCase();
      if (['requesting-client', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-for', 'forwarded'].includes(n)) {
        (out[n] ??= []).push(raw[i + 1] as string);
      }
    }
    return out;
  }

  function expected(host: string, port: number): Record<string, string[]> {
    return {
      'requesting-client': [`127.0.0.1:${port}`],
      'x-forwarded-host': [host],
      'x-forwarded-proto': ['http'],
      // Appended to, as every proxy does: the last entry is the gateway's, the one to trust.
      'x-forwarded-for': ['1.2.3.4, 127.0.0.1'],
      forwarded: [`for=1.2.3.4, for=127.0.0.1;proto=http;host="${host}"`],
    };
  }

  async function visitor(name: string): Promise<net.Socket> {
    const s = await rawConnect(g().port);
    track(s);
    s.write(`GET /f HTTP/1.1\r\nHost: ${g().host(name)}\r\n${FORGED}\r\n`);
    return s;
  }

  it.each([
    ['reversed HTTP/1.1', true],
    ['reversed HTTP/2', false],
  ])('%s', async (_label, http1) => {
    await gateway();
    let raw: string[] = [];
    await useApp(
      g().port,
      (req, res) => {
        raw = req.rawHeaders;
        res.end('ok');
      },
      { name: 'fwd', http1 },
    );
    const s = await visitor('fwd');
    await readUntil(s, (b) => b.includes('ok'));
    expect(forwarding(raw)).toEqual(expected(g().host('fwd'), s.localPort ?? 0));
  });

  it('WebSocket channel', async () => {
    await gateway();
    const app = await RawWsApp.connect(g().port, { name: 'fwdws' });
    cleanup(() => app.ws.terminate());
    const s = await visitor('fwdws');
    const req = await app.control('request');
    expect(forwarding(req['headers'] as string[])).toEqual(expected(g().host('fwdws'), s.localPort ?? 0));
  });

  it('Comet', async () => {
    await gateway();
    const r = await register(g().origin, { name: 'fwdc' });
    const polled = fetchRaw(r.links['first'] as string);
    const s = await visitor('fwdc');
    const parsed = await parseRequestMessage((await polled).body);
    expect(forwarding(parsed.rawHeaders)).toEqual(expected(g().host('fwdc'), s.localPort ?? 0));
  });
});
