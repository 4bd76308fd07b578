import { createHash } from 'node:crypto';
import * as http from 'node:http';
import type * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { closed, rawConnect, readUntil, request, until, type TestGateway } from '../helpers/index.js';
import WebSocket from 'ws';
import { cleanup, track, useGateway } from '../helpers/fixture.js';
import { loadLibrary, RawWsApp, wsRefusal, type BodyFrame } from '../helpers/wsapp.js';

/*
 * The WebSocket channel (docs/PROTOCOL.md section 6, README "WebSocket channel framing"): claims with
 * the native semantics, many requests at once completing out of order, bodies in chunks with
 * per-stream credit, and every failure path.
 */

function gateway(options: GatewayOptions = {}): Promise<TestGateway> {
  return useGateway(options);
}

/** The gateway's side of the next connection it accepts. */
function accepted(g: TestGateway): Promise<net.Socket> {
  return new Promise((resolve) => g.gateway.server.once('connection', (c: net.Socket) => resolve(c)));
}

async function app(g: TestGateway, query: Record<string, string>): Promise<RawWsApp> {
  const a = await RawWsApp.connect(g.port, query);
  cleanup(() => a.close());
  return a;
}

/**
 * A WebSocket channel app written with ws directly: it answers each request frame with
 * `onRequest`, so a test can send any frames, valid or not. Terminated when the test finishes.
 */
function plainWsApp(
  port: number,
  name: string,
  onRequest?: (ws: WebSocket, m: { id: number }) => void,
): Promise<WebSocket> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/?name=${name}`, 'ptth.v1', {
    headers: { Host: `localhost:${port}` },
  });
  track(ws);
  ws.on('message', (data, binary) => {
    if (binary) return;
    const m = JSON.parse(String(data)) as { t: string; id: number };
    if (m.t === 'request') onRequest?.(ws, m);
  });
  ws.on('error', () => {});
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', () => reject(new Error('refused')));
  });
}

/** A body frame of the WebSocket channel: flags, then the stream id, then the payload. */
const frame = (id: number, flags: number, text = ''): Buffer => {
  const p = Buffer.from(text);
  const b = Buffer.alloc(5 + p.length);
  b[0] = flags;
  b.writeUInt32BE(id, 1);
  p.copy(b, 5);
  return b;
};

describe('WebSocket channel claims', () => {
  it('register like a native claim: a hello with the public and private URLs, Link and Location on the 101', async () => {
    const g = await gateway();
    const heads = new Promise<string[]>((resolve) => {
      const req = http.request({
        host: '127.0.0.1',
        port: g.port,
        path: '/?name=wsapp&token=t&lease=30',
        headers: {
          connection: 'Upgrade',
          upgrade: 'websocket',
          'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
          'sec-websocket-version': '13',
          'sec-websocket-protocol': 'ptth.v1',
        },
      });
      req.on('upgrade', (res, socket) => {
        resolve(res.rawHeaders);
        socket.destroy();
      });
      req.end();
    });
    const raw = await heads;
    expect(raw).toContain('Link');
    expect(raw).toContain(`<http://wsapp.localhost:${g.port}/>; rel="related"`);
    expect(raw).toContain('Sec-WebSocket-Protocol');
    const a = await app(g, { name: 'wsapp', token: 't', lease: '30' });
    expect(a.hello).toMatchObject({
      t: 'hello',
      v: 1,
      name: 'wsapp',
      url: `http://wsapp.localhost:${g.port}/`,
      window: 262_144,
    });
    expect(String(a.hello?.['location'])).toMatch(/\/_ptth\/[\w-]{32}$/);
    const reg = g.gateway.table.lookup('wsapp');
    expect(reg?.lease).toBe(30);
    await until(() => reg?.channels.length === 1);
    expect(reg?.channels.map((c) => c.transport)).toEqual(['websocket']);
  });

  it('refuse with the native statuses before the upgrade: 403, 400, 429', async () => {
    const g = await gateway({ maxChannels: 1 });
    await app(g, { name: 'taken', token: 'a' });
    expect(await wsRefusal(g.port, { name: 'taken', token: 'b' })).toEqual({
      status: 403,
      code: 'PTTH_ERR_TOKEN_MISMATCH',
    });
    expect(await wsRefusal(g.port, { name: 'taken', token: 'a' })).toEqual({
      status: 429,
      code: 'PTTH_ERR_TOO_MANY_CHANNELS',
    });
    expect(await wsRefusal(g.port, { name: '-bad-' })).toEqual({ status: 400, code: 'PTTH_ERR_BAD_NAME' });
    expect(await wsRefusal(g.port, { name: 'ok', lease: 'x' })).toEqual({ status: 400, code: 'PTTH_ERR_BAD_LEASE' });
  });

  it('refuse an upgrade to websocket that is not a valid handshake', async () => {
    const g = await gateway();
    const s = await rawConnect(g.port);
    s.write(`GET /?name=x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`);
    const got = (await readUntil(s, (b) => b.includes('\r\n\r\n'))).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 400 /);
    expect(got).toContain('X-Ptth-Error: PTTH_ERR_NOT_WEBSOCKET');
    s.destroy();
    expect(g.gateway.table.lookup('x')).toBeUndefined();
  });

  it('close a channel whose app stops answering pings (--ws-ping-interval)', async () => {
    const g = await gateway({ wsPingInterval: 100 });
    const a = await RawWsApp.connect(g.port, { name: 'mute' }, { autoPong: false });
    cleanup(() => a.close());
    await until(() => g.gateway.table.lookup('mute')?.channels.length === 1);
    expect(await a.closed(5_000)).toBe(1006);
    await until(() => g.gateway.table.lookup('mute')?.channels.length === 0);
  });

  it('refuse a WebSocket claim with 503 while the gateway closes', async () => {
    const g = await gateway();
    const a = await app(g, { name: 'stay' });
    const busy = request(g.port, { host: g.host('stay') });
    const r = await a.control('request');
    // A connection opened (and accepted by the gateway) before the shutdown sends its WebSocket
    // claim after it started.
    const atGateway = accepted(g);
    const s = await rawConnect(g.port);
    await atGateway;
    const closing = g.gateway.close(2_000);
    s.write(
      `GET /?name=late HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ptth.v1\r\n\r\n',
    );
    const refusal = (await readUntil(s, (b) => b.includes('\r\n\r\n'))).toString('latin1');
    expect(refusal).toMatch(/^HTTP\/1\.1 503 /);
    expect(refusal).toContain('X-Ptth-Error: PTTH_ERR_SHUTTING_DOWN');
    s.destroy();
    a.respond(r['id'] as number, 200, 'finished during shutdown');
    expect((await busy).body).toBe('finished during shutdown');
    await closing;
  });

  it('close with 1001 when the registration is deleted', async () => {
    const g = await gateway();
    const a = await app(g, { name: 'bye' });
    const del = await fetch(String(a.hello?.['location']).replace(/^http:\/\/localhost/, 'http://127.0.0.1'), {
      method: 'DELETE',
    });
    expect(del.status).toBe(204);
    expect(await a.closed()).toBe(1001);
  });

  it('a handshake that ws itself refuses leaves no registration behind', async () => {
    const g = await useGateway();
    const registered: string[] = [];
    g.gateway.on('register', (reg) => registered.push(reg.name));
    const s = track(await rawConnect(g.port));
    // Passes the gateway's own checks (GET, a key, version 13) but not ws's: Upgrade is a list here.
    s.write(
      `GET /?name=leftover HTTP/1.1\r\nHost: localhost:${g.port}\r\nUpgrade: websocket, foo\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    );
    const got = (await readUntil(s, (b) => b.includes('\r\n\r\n'))).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 400 /);
    expect(await closed(s)).toBe(true);
    // The claim passed the gateway's own checks (it registered the name), so ws's refusal is the
    // path under test; the name is released once the gateway sees the socket close.
    expect(registered).toEqual(['leftover']);
    await until(() => g.gateway.table.lookup('leftover') === undefined, 3_000, 'the leftover name released');
  });
});

describe('WebSocket channel requests', () => {
  it('carry several requests at once and complete them out of order', async () => {
    const g = await gateway();
    const a = await app(g, { name: 'multi' });
    const visits = [1, 2, 3].map((i) =>
      request(g.port, { host: g.host('multi'), path: `/${i}`, headers: { 'X-Case': `v${i}` } }),
    );
    const reqs = [];
    for (let i = 0; i < 3; i++) reqs.push(await a.control('request'));
    expect(reqs.map((r) => r['url']).sort()).toEqual(['/1', '/2', '/3']);
    const first = reqs[0] as Record<string, unknown>;
    expect(first['method']).toBe('GET');
    expect(first['body']).toBe(false);
    expect(first['client']).toMatch(/^127\.0\.0\.1:\d+$/);
    const headers = first['headers'] as string[];
    expect(headers).toContain('X-Case');
    expect(headers).toContain('X-Forwarded-For');
    // Answer the last first.
    for (const r of [...reqs].reverse())
      a.respond(r['id'] as number, 200, `answer ${String(r['url'])}`, ['X-App', 'yes']);
    const replies = await Promise.all(visits);
    expect(replies.map((r) => r.body)).toEqual(['answer /1', 'answer /2', 'answer /3']);
    expect(replies[0]?.headers['x-app']).toBe('yes');
  });

  it("stream multi-megabyte bodies both ways through the browser library's code run in Node over ws", async () => {
    // Only the browser WebSocket API is used (the library's own code); what this cannot show is a
    // browser's behaviour itself (test/browser runs the library in Chromium).
    const g = await gateway();
    const serve = await loadLibrary();
    const big = Buffer.alloc(5 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE(i, i);
    const server = serve({ gateway: g.origin, name: 'bulk', transport: 'websocket' }, async (req) => {
      const got = new Uint8Array(await req.arrayBuffer());
      const digest = createHash('sha256').update(got).digest('hex');
      // Stream the body back in pieces, reversed, with the digest in a header.
      const reversed = Buffer.from(got).reverse();
      let at = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(c) {
          if (at >= reversed.length) return c.close();
          c.enqueue(reversed.subarray(at, at + 100_000));
          at += 100_000;
        },
      });
      return new Response(body, { headers: { 'x-digest': digest, 'x-size': String(got.length) } });
    });
    cleanup(() => server.close());
    await server.url;
    const res = await new Promise<{ headers: http.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: g.port, method: 'POST', path: '/up', headers: { host: g.host('bulk') } },
        (r) => {
          const chunks: Buffer[] = [];
          r.on('data', (c: Buffer) => chunks.push(c));
          r.on('end', () => resolve({ headers: r.headers, body: Buffer.concat(chunks) }));
        },
      );
      req.on('error', reject);
      req.end(big);
    });
    expect(res.headers['x-size']).toBe(String(big.length));
    expect(res.headers['x-digest']).toBe(createHash('sha256').update(big).digest('hex'));
    expect(res.body.equals(Buffer.from(big).reverse())).toBe(true);
  });

  it('never send more request body than the window until the app returns credit', async () => {
    const g = await gateway({ wsWindow: 64 * 1024 });
    const a = await app(g, { name: 'credit' });
    const visitor = accepted(g);
    const visit = request(g.port, { host: g.host('credit'), method: 'POST', body: Buffer.alloc(300 * 1024, 7) });
    const r = await a.control('request');
    const id = r['id'] as number;
    expect(r['body']).toBe(true);
    const first: BodyFrame[] = [];
    const sent = (): number => first.reduce((n, f) => n + f.payload.length, 0);
    await until(
      () => {
        first.push(...a.takeFrames(id));
        return sent() >= 64 * 1024;
      },
      3_000,
      'a window of body',
    );
    // The gateway holds more of the body than the window (read from the visitor: well past 64 KiB
    // plus the request head), and a ping's pong, which leaves after every frame sent before it,
    // has come back: a gateway ignoring the window would have sent more by now.
    const conn = await visitor;
    await until(() => conn.bytesRead > 64 * 1024 + 4_096, 3_000, 'more body at the gateway than the window');
    await new Promise<void>((resolve) => {
      a.ws.once('pong', () => resolve());
      a.ws.ping();
    });
    first.push(...a.takeFrames(id));
    expect(sent()).toBe(64 * 1024);
    expect(first.some((f) => f.end)).toBe(false);
    a.send({ t: 'credit', id, bytes: 64 * 1024 });
    const rest = await a.body(id);
    expect(rest.length).toBe(300 * 1024 - 64 * 1024);
    a.respond(id, 200, 'got it');
    expect((await visit).body).toBe('got it');
  });

  it('close the channel when the app sends more response body than its window, and the visitor loses its response', async () => {
    const g = await gateway({ wsWindow: 4096 });
    const a = await app(g, { name: 'greedy' });
    const s = await rawConnect(g.port);
    const cut = closed(s, 5_000);
    const got = readUntil(s, () => false, 5_000);
    s.write(`GET / HTTP/1.1\r\nHost: ${g.host('greedy')}\r\n\r\n`);
    const r = await a.control('request');
    a.send({ t: 'response', id: r['id'] as number, status: 200, headers: [], body: true });
    a.frame(r['id'] as number, Buffer.alloc(8192));
    expect(await a.closed()).toBe(1002);
    // The visitor's connection is closed with nothing on it: the head the app sent waits for the
    // first body bytes (none within the window came), and no byte past the window is relayed.
    expect(await cut).toBe(true);
    expect((await got).toString('latin1')).toBe('');
  });

  it('tell the app when the visitor goes away mid-response', async () => {
    const g = await gateway();
    const a = await app(g, { name: 'leaver' });
    const s = await rawConnect(g.port);
    s.write(`GET /slow HTTP/1.1\r\nHost: ${g.host('leaver')}\r\n\r\n`);
    const r = await a.control('request');
    a.send({ t: 'response', id: r['id'] as number, status: 200, headers: [], body: true });
    a.frame(r['id'] as number, Buffer.from('partial'));
    await readUntil(s, (b) => b.includes('partial'));
    s.destroy();
    const abort = await a.control('abort', r['id'] as number);
    expect(abort['message']).toMatch(/visitor/);
    await until(() => g.gateway.table.lookup('leaver')?.channels[0]?.active === 0);
  });

  it('give the visitor 504 when the head does not come within --response-timeout, and abort the stream', async () => {
    const g = await gateway({ responseTimeout: 150 });
    const a = await app(g, { name: 'late' });
    const visit = request(g.port, { host: g.host('late') });
    const r = await a.control('request');
    expect((await visit).status).toBe(504);
    expect((await a.control('abort', r['id'] as number))['message']).toMatch(/timeout/);
  });

  it('give the visitor 502 for an invalid response head or an app abort, and 502 when the channel drops', async () => {
    const g = await gateway();
    const a = await app(g, { name: 'flaky' });
    const one = request(g.port, { host: g.host('flaky'), path: '/1' });
    const r1 = await a.control('request');
    a.send({ t: 'response', id: r1['id'] as number, status: 99, headers: [], body: false });
    expect((await one).status).toBe(502);
    await a.control('abort', r1['id'] as number);
    const two = request(g.port, { host: g.host('flaky'), path: '/2' });
    const r2 = await a.control('request');
    a.send({ t: 'abort', id: r2['id'] as number, message: 'handler crashed' });
    const t = await two;
    expect(t.status).toBe(502);
    expect(t.body).toContain('handler crashed');
    const three = request(g.port, { host: g.host('flaky'), path: '/3' });
    await a.control('request');
    a.close();
    const th = await three;
    expect(th.status).toBe(502);
    expect(th.headers['x-ptth-error']).toBe('PTTH_ERR_CHANNEL_LOST');
  });

  it('close the channel on a frame that breaks the framing', async () => {
    const g = await gateway();
    const a = await app(g, { name: 'garbled' });
    a.ws.send('not json');
    expect(await a.closed()).toBe(1002);
    await until(() => g.gateway.table.lookup('garbled')?.channels.length === 0);
  });

  it("take at most --ws-max-streams requests at once; the rest wait in the name's queue", async () => {
    const g = await gateway({ wsMaxStreams: 2 });
    const a = await app(g, { name: 'narrow' });
    const visits = [1, 2, 3].map((i) => request(g.port, { host: g.host('narrow'), path: `/${i}` }));
    const r1 = await a.control('request');
    await a.control('request');
    await until(() => g.gateway.table.lookup('narrow')?.waiting === 1);
    a.respond(r1['id'] as number, 200, 'one');
    const r3 = await a.control('request');
    a.respond(r3['id'] as number, 200, 'three');
    expect((await visits[0])?.body).toBe('one');
    expect((await visits[2])?.body).toBe('three');
    a.close();
    await Promise.allSettled(visits);
  });
});

describe('WebSocket channel apps that break the rules', () => {
  it('a control frame with a long non-ASCII type closes that channel with 1002 and never the gateway', async () => {
    const gw = await useGateway();
    const ws = await plainWsApp(gw.port, 'crash');
    const code = new Promise<number>((resolve) => ws.once('close', (c) => resolve(c)));
    ws.send(JSON.stringify({ t: '\u00e9'.repeat(60), id: 1 }));
    expect(await code).toBe(1002);
    // Still serving: another app claims and answers.
    await plainWsApp(gw.port, 'alive', (app, m) => {
      app.send(JSON.stringify({ t: 'response', id: m.id, status: 200, headers: ['Content-Length', '2'], body: true }));
      app.send(frame(m.id, 1, 'ok'), { binary: true });
    });
    expect((await request(gw.port, { host: gw.host('alive') })).body).toBe('ok');
  });

  it('an app writing past its Content-Length cuts the visitor connection instead of forging the next response', async () => {
    const gw = await useGateway();
    await plainWsApp(gw.port, 'evil', (app, m) => {
      app.send(JSON.stringify({ t: 'response', id: m.id, status: 200, headers: ['Content-Length', '5'], body: true }));
      app.send(frame(m.id, 0, 'helloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged'), { binary: true });
      app.send(frame(m.id, 1), { binary: true });
    });
    const s = track(await rawConnect(gw.port));
    const cut = closed(s, 5_000);
    s.write(`GET / HTTP/1.1\r\nHost: ${gw.host('evil')}\r\n\r\n`);
    // Everything the visitor gets until its connection closes (readUntil ends at the close): once
    // closed, nothing more can come, so the absence of the forged response is final.
    const got = (await readUntil(s, () => false, 5_000)).toString('latin1');
    expect(await cut).toBe(true);
    expect(got).not.toContain('forged');
  });

  it('an app ending short of its Content-Length cuts the visitor connection too', async () => {
    const gw = await useGateway();
    await plainWsApp(gw.port, 'short', (app, m) => {
      app.send(JSON.stringify({ t: 'response', id: m.id, status: 200, headers: ['Content-Length', '10'], body: true }));
      app.send(frame(m.id, 1, 'abc'), { binary: true });
    });
    const s = track(await rawConnect(gw.port));
    s.write(`GET / HTTP/1.1\r\nHost: ${gw.host('short')}\r\n\r\n`);
    expect(await closed(s)).toBe(true);
  });
});

/*
 * The browser library's own code (dist/browser/ptth.js), run in Node with ws as its WebSocket. It
 * uses only what browsers offer (the WebSocket API, fetch); but Node's fetch enforces no CORS, so
 * that a browser page may read the gateway's answers cross-origin is shown by the CORS tests and
 * test/browser (Chromium), not here.
 */
describe("the browser library's code, run in Node over ws", () => {
  it('reconnects with backoff when the gateway restarts, and gets its name back', async () => {
    const g = await gateway();
    const port = g.port;
    const serve = await loadLibrary();
    const listens: string[] = [];
    const server = serve(
      {
        gateway: g.origin,
        name: 'phoenix',
        transport: 'websocket',
        onListen: (i: { transport: string }) => listens.push(i.transport),
      },
      () => new Response('alive'),
    );
    cleanup(() => server.close());
    await server.url;
    await g.close();
    const again = await useGateway({}, port);
    await until(() => again.gateway.table.lookup('phoenix')?.channels.length === 1, 5_000, 'reconnect');
    expect((await request(port, { host: again.host('phoenix') })).body).toBe('alive');
    expect(listens).toEqual(['websocket', 'websocket']);
  });

  // The WebSocket refusal's status is invisible to the WebSocket API (as in a browser): the library
  // learns 403 and the code from its Comet registration, whose X-Ptth-Error the gateway exposes.
  it('stops with a ServeError when the gateway refuses the name for good', async () => {
    const g = await gateway();
    await app(g, { name: 'owned', token: 'mine' });
    const serve = await loadLibrary();
    const errors: { status?: number; code?: string }[] = [];
    const server = serve(
      {
        gateway: g.origin,
        name: 'owned',
        token: 'yours',
        onError: (e: { status?: number; code?: string }) => errors.push(e),
      },
      () => new Response('x'),
    );
    cleanup(() => server.close());
    await expect(server.url).rejects.toMatchObject({
      name: 'ServeError',
      status: 403,
      code: 'PTTH_ERR_TOKEN_MISMATCH',
    });
    expect(errors.some((e) => e.status === 403)).toBe(true);
  });
});
