/**
 * Reversed HTTP/2 (docs/PROTOCOL.md section 4, draft-kazuho-ptth-ptth): the `Upgrade: ptth` +
 * `ALPN` handshake byte for byte, many concurrent streams on one connection, flow control, PING,
 * GOAWAY both ways, errors, visitor upgrades (RFC 8441 extended CONNECT), and the Node client's
 * choice between HTTP/2 and HTTP/1.1.
 *
 * Where the app side must be controlled exactly, the app is a node:http2 server handed the raw
 * claimed socket (the gateway is the HTTP/2 client over it), or bare frames on the socket.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import type * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import type { Channel } from '../../src/channels/channel.js';
import type { Tunnel } from '../../src/client/node.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import {
  headEnd,
  rawClaim,
  rawConnect,
  readUntil,
  request,
  sleep,
  startApp,
  until,
  type RequestSpec,
  type TestGateway,
} from '../helpers/index.js';
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

/** Runs `fn` when the test finishes, ignoring its errors (best effort). */
function bestEffort(fn: () => unknown): void {
  cleanup(async () => {
    try {
      await fn();
    } catch {
      // best effort
    }
  });
}

function g(): TestGateway {
  if (!gw) throw new Error('no gateway started');
  return gw;
}

function transports(name: string): string[] {
  return (g().gateway.table.lookup(name)?.channels ?? []).map((c) => c.transport).sort();
}

/** The gateway's channel whose far end is this app socket. */
function channelOf(name: string, socket: net.Socket): Channel | undefined {
  return g()
    .gateway.table.lookup(name)
    ?.channels.find((c) => c.remote.endsWith(`:${socket.localPort ?? -1}`));
}

// ---------------------------------------------------------------------------------------------
// Handshake helpers

/** A claim request as exact bytes. */
function claimBytes(port: number, query: string, lines: readonly string[]): string {
  return [`POST /${query} HTTP/1.1`, `Host: localhost:${port}`, ...lines, 'Content-Length: 0', '', ''].join('\r\n');
}

const B64URL32 = '[A-Za-z0-9_-]{32}';

/** The byte-exact 101: Upgrade token, then the ALPN line only when negotiated. */
function exact101(name: string, port: number, upgrade: string, alpn: string | undefined): RegExp {
  const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  return new RegExp(
    '^HTTP/1\\.1 101 Switching Protocols\\r\\n' +
      `Upgrade: ${esc(upgrade)}\\r\\n` +
      'Connection: Upgrade\\r\\n' +
      (alpn === undefined ? '' : `ALPN: ${esc(alpn)}\\r\\n`) +
      `Link: <http://${name}\\.localhost:${port}/>; rel="related"\\r\\n` +
      `Location: http://localhost:${port}/_ptth/${B64URL32}\\r\\n` +
      '\\r\\n$',
  );
}

interface Claimed {
  socket: net.Socket;
  head: string;
  rest: Buffer;
}

async function claim(bytes: string): Promise<Claimed> {
  const c = await rawClaim(g().port, bytes);
  c.socket.on('error', noop);
  track(c.socket);
  return c;
}

const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';

/** After an h2 101 the gateway speaks first: the HTTP/2 client connection preface. */
async function expectPreface(c: Claimed): Promise<Buffer> {
  const more =
    c.rest.length >= PREFACE.length
      ? Buffer.alloc(0)
      : await readUntil(c.socket, (b) => c.rest.length + b.length >= PREFACE.length, 1_500);
  const all = Buffer.concat([c.rest, more]);
  expect(all.subarray(0, PREFACE.length).toString('latin1')).toBe(PREFACE);
  return all;
}

/**
 * Reversed HTTP/1.1: the gateway says nothing after the 101 until a visitor comes; the visitor's
 * GET arrives as raw HTTP/1.1 and the raw answer goes back.
 *
 * The silence is proven by what comes next, not by waiting: on an HTTP/2 channel the gateway sends
 * its preface at once after the 101, and TCP keeps order, so the first bytes after the 101 being
 * the visitor's request means nothing (no preface, no stray byte) came before it.
 */
async function serveHttp1(c: Claimed, name: string): Promise<void> {
  expect(c.rest.toString('latin1'), 'nothing read together with the 101').toBe('');
  const visitor = request(g().port, { host: g().host(name), path: '/one?x=1' });
  const got = (await readUntil(c.socket, headEnd, 5_000)).toString('latin1');
  const first = 'no HTTP/2 preface, nothing before the request';
  expect(got.startsWith('GET /one?x=1 HTTP/1.1\r\n'), `${first}: ${got}`).toBe(true);
  c.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nh1 app');
  const r = await visitor;
  expect(r.status).toBe(200);
  expect(r.body).toBe('h1 app');
}

// ---------------------------------------------------------------------------------------------
// A raw reversed-HTTP/2 app: node:http2 server over the claimed socket

type StreamHandler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void;

interface H2App {
  socket: net.Socket;
  head: string;
  server: http2.Http2Server;
  session: http2.ServerHttp2Session;
  /** Streams opened by the gateway so far. */
  streams: number;
}

/** Serves HTTP/2 on an already claimed socket (bytes read past the 101 are put back first). */
async function serveH2(
  socket: net.Socket,
  already: Buffer,
  onStream: StreamHandler,
  settings: http2.Settings = {},
): Promise<H2App> {
  const server = http2.createServer({ settings });
  let session: http2.ServerHttp2Session | undefined;
  const app = { socket, head: '', server, streams: 0 } as H2App;
  server.on('session', (s: http2.ServerHttp2Session) => {
    session = s;
    s.on('error', noop);
  });
  server.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    app.streams++;
    stream.on('error', noop);
    onStream(stream, headers);
  });
  if (already.length > 0) socket.unshift(already);
  server.emit('connection', socket);
  if (!session) throw new Error('no HTTP/2 session');
  app.session = session;
  bestEffort(() => session?.destroy());
  // The gateway has acknowledged our SETTINGS: its channel knows our limits from now on.
  const deadline = sleep(5_000).then(() => Promise.reject(new Error('no SETTINGS ACK')));
  await Promise.race([once(session, 'localSettings'), deadline]);
  return app;
}

/** Claims `name` with `Upgrade: ptth` + `ALPN: h2` and serves `onStream` over reversed HTTP/2. */
async function h2App(
  name: string,
  onStream: StreamHandler,
  settings: http2.Settings = {},
  token = 'tok',
): Promise<H2App> {
  const port = g().port;
  const c = await claim(
    claimBytes(port, `?name=${name}&token=${token}`, ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2']),
  );
  expect(c.head).toMatch(exact101(name, port, 'ptth', 'h2'));
  const app = await serveH2(c.socket, c.rest, onStream, settings);
  app.head = c.head;
  return app;
}

function text(
  stream: http2.ServerHttp2Stream,
  body: string | Buffer,
  status = 200,
  extra: http2.OutgoingHttpHeaders = {},
): void {
  if (stream.destroyed) return;
  stream.respond({ ':status': status, 'content-type': 'text/plain', ...extra });
  stream.end(body);
}

/**
 * A bare-frames HTTP/2 server on a claimed socket: sends an empty SETTINGS, ACKs the gateway's
 * SETTINGS and answers its PINGs, and ignores everything else.
 */
function answerPings(socket: net.Socket, already: Buffer): { pings: number } {
  const state = { pings: 0 };
  let buf = already;
  let preface = false;
  const onData = (chunk: Buffer): void => {
    buf = Buffer.concat([buf, chunk]);
    if (!preface) {
      if (buf.length < PREFACE.length) return;
      expect(buf.subarray(0, PREFACE.length).toString('latin1')).toBe(PREFACE);
      buf = buf.subarray(PREFACE.length);
      preface = true;
    }
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) return;
      const type = buf[3];
      const flags = buf[4] ?? 0;
      const payload = buf.subarray(9, 9 + len);
      if (type === 4 && (flags & 1) === 0) socket.write(Buffer.from([0, 0, 0, 4, 1, 0, 0, 0, 0]));
      if (type === 6 && (flags & 1) === 0) {
        state.pings++;
        socket.write(Buffer.concat([Buffer.from([0, 0, 8, 6, 1, 0, 0, 0, 0]), payload]));
      }
      buf = buf.subarray(9 + len);
    }
  };
  socket.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
  socket.on('data', onData);
  socket.resume();
  onData(Buffer.alloc(0));
  return state;
}

// ---------------------------------------------------------------------------------------------
// Visitors

interface Got {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A visitor request whose body is kept as bytes. */
async function fetchBytes(port: number, spec: RequestSpec & { host: string }): Promise<Got> {
  const r = await request(port, spec);
  return { status: r.status, headers: r.headers, body: r.bytes };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

// =============================================================================================

describe('handshake variants (docs/PROTOCOL.md section 4, draft-kazuho-ptth-ptth)', () => {
  it('Upgrade: ptth + ALPN: h2 gets the exact 101 with ALPN: h2, then HTTP/2: a visitor GET arrives as a stream with pseudo-headers and forwarding headers, and the response is relayed', async () => {
    const gw = await gateway();
    const c = await claim(
      claimBytes(gw.port, '?name=hx&token=t', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2']),
    );
    expect(c.head).toMatch(exact101('hx', gw.port, 'ptth', 'h2'));
    expect(
      g()
        .registration('hx')
        .channels.map((ch) => ch.transport),
    ).toEqual(['http2']);
    const already = await expectPreface(c);
    let seen: http2.IncomingHttpHeaders | undefined;
    await serveH2(c.socket, already, (stream, headers) => {
      seen = headers;
      text(stream, 'from h2', 200, { 'x-app': 'yes' });
    });
    const r = await request(gw.port, { host: gw.host('hx'), path: '/p/q?a=1&b=2', headers: { 'X-Custom': 'kept' } });
    expect(r.status).toBe(200);
    expect(r.body).toBe('from h2');
    expect(r.headers['x-app']).toBe('yes');
    const h = seen as http2.IncomingHttpHeaders;
    expect(h[':method']).toBe('GET');
    expect(h[':path']).toBe('/p/q?a=1&b=2');
    expect(h[':authority']).toBe(gw.host('hx'));
    expect(h[':scheme']).toBe('http');
    expect(h['x-custom']).toBe('kept');
    expect(h['x-forwarded-for']).toBe('127.0.0.1');
    expect(h['x-forwarded-host']).toBe(gw.host('hx'));
    expect(h['x-forwarded-proto']).toBe('http');
    expect(h['forwarded']).toBe(`for=127.0.0.1;proto=http;host="${gw.host('hx')}"`);
    expect(String(h['requesting-client'])).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(h['host'], 'Host travels as :authority only').toBeUndefined();
    expect(h['connection']).toBeUndefined();
  });

  it('Upgrade: ptth + ALPN: http/1.1 gets the exact 101 with ALPN: http/1.1 and reversed HTTP/1.1', async () => {
    const gw = await gateway();
    const c = await claim(
      claimBytes(gw.port, '?name=h1alpn', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: http/1.1']),
    );
    expect(c.head).toMatch(exact101('h1alpn', gw.port, 'ptth', 'http/1.1'));
    expect(transports('h1alpn')).toEqual(['http1']);
    await serveHttp1(c, 'h1alpn');
  });

  it('Upgrade: ptth without ALPN gets the exact 101 with no ALPN line and reversed HTTP/1.1', async () => {
    const gw = await gateway();
    const c = await claim(claimBytes(gw.port, '?name=noalpn', ['Upgrade: ptth', 'Connection: Upgrade']));
    expect(c.head).toMatch(exact101('noalpn', gw.port, 'ptth', undefined));
    expect(c.head).not.toMatch(/\r\nALPN:/i);
    expect(transports('noalpn')).toEqual(['http1']);
    await serveHttp1(c, 'noalpn');
  });

  it('Upgrade: PTTH/1.0 ignores ALPN: h2: exact PTTH/1.0 101 without ALPN, reversed HTTP/1.1', async () => {
    const gw = await gateway();
    const c = await claim(
      claimBytes(gw.port, '?name=legacy', ['Upgrade: PTTH/1.0', 'Connection: Upgrade', 'ALPN: h2']),
    );
    expect(c.head).toMatch(exact101('legacy', gw.port, 'PTTH/1.0', undefined));
    expect(transports('legacy')).toEqual(['http1']);
    await serveHttp1(c, 'legacy');
  });

  it('Upgrade: ptth, PTTH/1.0 + ALPN: h2 picks reversed HTTP/2', async () => {
    const gw = await gateway();
    const c = await claim(
      claimBytes(gw.port, '?name=both', ['Upgrade: ptth, PTTH/1.0', 'Connection: Upgrade', 'ALPN: h2']),
    );
    expect(c.head).toMatch(exact101('both', gw.port, 'ptth', 'h2'));
    const already = await expectPreface(c);
    await serveH2(c.socket, already, (stream) => text(stream, 'both ok'));
    expect(transports('both')).toEqual(['http2']);
    expect((await request(gw.port, { host: gw.host('both') })).body).toBe('both ok');
  });

  it('an ALPN list "h2, http/1.1" picks h2', async () => {
    const gw = await gateway();
    const c = await claim(
      claimBytes(gw.port, '?name=list', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2, http/1.1']),
    );
    expect(c.head).toMatch(exact101('list', gw.port, 'ptth', 'h2'));
    await expectPreface(c);
    expect(transports('list')).toEqual(['http2']);
  });

  it('percent-encoded ALPN ids (RFC 7639) and odd case are understood: %68%32 and H2 give h2, http%2F1.1 gives http/1.1', async () => {
    const gw = await gateway();
    const a = await claim(claimBytes(gw.port, '?name=pct', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: %68%32']));
    expect(a.head).toMatch(exact101('pct', gw.port, 'ptth', 'h2'));
    await expectPreface(a);
    const b = await claim(claimBytes(gw.port, '?name=upper', ['Upgrade: PTTH', 'Connection: Upgrade', 'ALPN: H2']));
    expect(b.head).toMatch(exact101('upper', gw.port, 'ptth', 'h2'));
    await expectPreface(b);
    const c = await claim(
      claimBytes(gw.port, '?name=pct1', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: http%2F1.1']),
    );
    expect(c.head).toMatch(exact101('pct1', gw.port, 'ptth', 'http/1.1'));
    expect(transports('pct')).toEqual(['http2']);
    expect(transports('upper')).toEqual(['http2']);
    expect(transports('pct1')).toEqual(['http1']);
    await serveHttp1(c, 'pct1');
  });

  it('Upgrade: ptth + ALPN: h2 without Connection: Upgrade is taken over as well and speaks HTTP/2', async () => {
    const gw = await gateway();
    const c = await claim(claimBytes(gw.port, '?name=noconn', ['Upgrade: ptth', 'ALPN: h2']));
    expect(c.head).toMatch(exact101('noconn', gw.port, 'ptth', 'h2'));
    const already = await expectPreface(c);
    await serveH2(c.socket, already, (stream) => text(stream, 'noconn ok'));
    expect((await request(gw.port, { host: gw.host('noconn') })).body).toBe('noconn ok');
  });

  it('a gateway with http2: false refuses ptth + ALPN: h2 alone with 400 PTTH_ERR_UNSUPPORTED_UPGRADE and closes the connection', async () => {
    const gw = await gateway({ http2: false });
    const c = await claim(claimBytes(gw.port, '?name=noh2', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2']));
    // Reads until the gateway closes the connection (the deadline is only a bound for a hang).
    const rest = await readUntil(c.socket, () => false, 5_000);
    const all = c.head + rest.toString('latin1');
    expect(all).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(all).toMatch(/\r\nX-Ptth-Error: PTTH_ERR_UNSUPPORTED_UPGRADE\r\n/i);
    expect(all).toMatch(/\r\nConnection: close\r\n/i);
    expect(all).not.toMatch(/ 101 /);
    expect(c.socket.destroyed || c.socket.readableEnded).toBe(true);
    expect(gw.gateway.table.lookup('noh2')).toBeUndefined();
  });

  it('a gateway with http2: false answers ptth, PTTH/1.0 + ALPN: h2 with the PTTH/1.0 101 and reversed HTTP/1.1', async () => {
    const gw = await gateway({ http2: false });
    const c = await claim(
      claimBytes(gw.port, '?name=fallback', ['Upgrade: ptth, PTTH/1.0', 'Connection: Upgrade', 'ALPN: h2']),
    );
    expect(c.head).toMatch(exact101('fallback', gw.port, 'PTTH/1.0', undefined));
    expect(transports('fallback')).toEqual(['http1']);
    await serveHttp1(c, 'fallback');
  });

  it('a gateway with http2: false answers ptth + ALPN: h2, http/1.1 with ALPN: http/1.1', async () => {
    const gw = await gateway({ http2: false });
    const c = await claim(
      claimBytes(gw.port, '?name=fb2', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2, http/1.1']),
    );
    expect(c.head).toMatch(exact101('fb2', gw.port, 'ptth', 'http/1.1'));
    await serveHttp1(c, 'fb2');
  });
});

// =============================================================================================

/** An app that holds every stream the gateway opens; `most` is the most it ever held at once. */
interface Holder {
  held: http2.ServerHttp2Stream[];
  most: number;
  onStream: StreamHandler;
}

function holder(): Holder {
  const h: Holder = {
    held: [],
    most: 0,
    onStream: (stream) => {
      h.held.push(stream);
      h.most = Math.max(h.most, h.held.length);
    },
  };
  return h;
}

/**
 * Answers the held streams `size` at a time, each time only once exactly `size` are held at the
 * app AND every other request waits in the gateway's queue: then nothing else is in flight
 * anywhere, so the limit is reached in every batch by construction (no hold time a busy machine
 * could outlast), and `most` can only pass `size` if the gateway opened more streams than allowed
 * (a stream opened past the limit also keeps the count of queued requests from matching).
 */
async function answerInBatches(name: string, h: Holder, total: number, size: number): Promise<void> {
  for (let answered = 0; answered < total; answered += size) {
    const queued = total - answered - size;
    const ready = (): boolean => {
      expect(h.held.length, `never more than ${size} streams at the app at once`).toBeLessThanOrEqual(size);
      return h.held.length === size && g().registration(name).waiting === queued;
    };
    await until(ready, 10_000, `${size} streams at the app, ${queued} queued`);
    for (const s of h.held.splice(0)) text(s, 'ok');
  }
}

describe('concurrency on one HTTP/2 connection', () => {
  it('carries 300 visitor requests in flight at once on ONE connection (the app answers only when all 300 have arrived)', async () => {
    const gw = await gateway({ maxStreams: 1_000, queueTimeout: 5_000 });
    const N = 300;
    const held: http2.ServerHttp2Stream[] = [];
    const app = await h2App(
      'many',
      (stream, headers) => {
        held.push(stream);
        (stream as { path?: string }).path = String(headers[':path']);
        if (held.length === N) for (const s of held) text(s, `answer ${(s as { path?: string }).path ?? ''}`);
      },
      { maxConcurrentStreams: 1_000 },
    );
    // No clock: the app answers nothing before all N streams are open at once, which is the proof.
    const replies = await Promise.all(
      Array.from({ length: N }, (_, i) => request(gw.port, { host: gw.host('many'), path: `/r${i}` })),
    );
    for (const [i, r] of replies.entries()) {
      expect(r.status).toBe(200);
      expect(r.body).toBe(`answer /r${i}`);
    }
    expect(app.streams).toBe(N);
    expect(held).toHaveLength(N);
    expect(g().registration('many').channels).toHaveLength(1);
  });

  it("respects the app's SETTINGS_MAX_CONCURRENT_STREAMS (5): never more than 5 in flight at the app, the rest queue and are served", async () => {
    const gw = await gateway({ queueTimeout: 10_000 });
    const h = holder();
    const app = await h2App('five', h.onStream, { maxConcurrentStreams: 5 });
    const replies = Promise.all(Array.from({ length: 25 }, () => request(gw.port, { host: gw.host('five') })));
    replies.catch(noop); // awaited below; a failure before that must not go unhandled
    await answerInBatches('five', h, 25, 5);
    expect((await replies).map((r) => r.status)).toEqual(Array(25).fill(200));
    expect(h.most).toBe(5);
    expect(app.streams).toBe(25);
  });

  it("the gateway's maxStreams option caps the streams in flight too (3, app allows 100)", async () => {
    const gw = await gateway({ maxStreams: 3, queueTimeout: 10_000 });
    const h = holder();
    await h2App('capped', h.onStream, { maxConcurrentStreams: 100 });
    const replies = Promise.all(Array.from({ length: 15 }, () => request(gw.port, { host: gw.host('capped') })));
    replies.catch(noop); // awaited below; a failure before that must not go unhandled
    await answerInBatches('capped', h, 15, 3);
    expect((await replies).map((r) => r.status)).toEqual(Array(15).fill(200));
    expect(h.most).toBe(3);
  });
});

// =============================================================================================

describe('flow control', () => {
  it('a stalled visitor holds back only its own stream: the app sees backpressure, its output stays bounded, and another visitor on the same connection is served', async () => {
    const gw = await gateway();
    const TOTAL = 64 * 1024 * 1024;
    const CHUNK = Buffer.alloc(64 * 1024, 'x');
    const big = { written: 0, sawFalse: false, blocked: false, closed: false };
    const SMALL = randomBytes(2 * 1024 * 1024);
    await h2App('flow', (stream, headers) => {
      if (headers[':path'] === '/small') {
        stream.respond({ ':status': 200, 'content-length': SMALL.length });
        stream.end(SMALL);
        return;
      }
      stream.respond({ ':status': 200, 'content-length': TOTAL });
      stream.on('close', () => {
        big.closed = true;
      });
      const pump = (): void => {
        while (big.written < TOTAL && !stream.destroyed) {
          big.written += CHUNK.length;
          if (!stream.write(CHUNK)) {
            big.sawFalse = true;
            big.blocked = true;
            stream.once('drain', () => {
              big.blocked = false;
              pump();
            });
            return;
          }
        }
        if (big.written >= TOTAL && !stream.destroyed) stream.end();
      };
      pump();
    });
    // The gateway's end of the slow visitor's connection, where its backpressure shows.
    const accepted: net.Socket[] = [];
    gw.gateway.server.on('connection', (s: net.Socket) => accepted.push(s));
    // The slow visitor reads the head and a few bytes, then stops reading.
    const slow = await rawConnect(gw.port);
    slow.on('error', noop);
    track(slow);
    slow.write(`GET /big HTTP/1.1\r\nHost: ${gw.host('flow')}\r\n\r\n`);
    const head = (await readUntil(slow, headEnd, 5_000)).toString('latin1');
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    slow.pause();
    const toSlow = accepted.find((s) => s.remotePort === slow.localPort);
    expect(toSlow, "the gateway's socket to the slow visitor").toBeDefined();
    // The stall has gone all the way, and for good: the gateway's writes to the visitor back up
    // (the kernel's buffers are full, and stay full while the visitor does not read) and the app's
    // stream takes nothing more (HTTP/2 flow control: no WINDOW_UPDATE while the relay is held).
    // Both are states, not moments; no sleep guesses when they were reached.
    const stalled = (): boolean => big.blocked && toSlow?.writableNeedDrain === true;
    await until(stalled, 10_000, 'the stall to reach the app through the gateway');
    const stalledAt = big.written;
    expect(stalledAt, 'the gateway does not soak up the whole response').toBeLessThan(TOTAL / 2);
    // The fast visitor is served over the same connection while the slow one is stalled (it never
    // resumes reading, so no clock is needed to tell "meanwhile" from "after").
    const fast = await fetchBytes(gw.port, { host: gw.host('flow'), path: '/small' });
    expect(fast.status).toBe(200);
    expect(sha(fast.body)).toBe(sha(SMALL));
    expect(g().registration('flow').channels).toHaveLength(1);
    // 2 MB of another stream's frames went over the connection since the stall: had the big one
    // been given window meanwhile, it would have moved. It is still held at both ends.
    expect(stalled(), 'still stalled after the other stream was served').toBe(true);
    expect(big.written - stalledAt, 'the stalled stream made no real progress').toBeLessThan(4 * 1024 * 1024);
    expect(big.closed).toBe(false);
    // The slow visitor leaves: its stream is cancelled at the app.
    slow.destroy();
    await until(() => big.closed, 2_000, 'the big stream to be cancelled');
  });

  it('a 20 MB upload and a 20 MB download through reversed HTTP/2 arrive intact', async () => {
    const gw = await gateway();
    const UP = randomBytes(20 * 1024 * 1024);
    const DOWN = randomBytes(20 * 1024 * 1024);
    await h2App('bulk', (stream, headers) => {
      if (headers[':method'] === 'POST') {
        const hash = createHash('sha256');
        let n = 0;
        stream.on('data', (c: Buffer) => {
          hash.update(c);
          n += c.length;
        });
        stream.on('end', () => text(stream, `${n} ${hash.digest('hex')}`));
        return;
      }
      stream.respond({ ':status': 200, 'content-length': DOWN.length, 'content-type': 'application/octet-stream' });
      stream.end(DOWN);
    });
    const [up, down] = await Promise.all([
      fetchBytes(gw.port, {
        host: gw.host('bulk'),
        method: 'POST',
        path: '/up',
        body: UP,
        headers: { 'content-length': UP.length },
      }),
      fetchBytes(gw.port, { host: gw.host('bulk'), path: '/down' }),
    ]);
    expect(up.status).toBe(200);
    expect(up.body.toString()).toBe(`${UP.length} ${sha(UP)}`);
    expect(down.status).toBe(200);
    expect(down.body.length).toBe(DOWN.length);
    expect(sha(down.body)).toBe(sha(DOWN));
  });
});

// =============================================================================================

/**
 * The app side of these tests runs in this process, on the gateway's event loop: a loop stalled
 * for longer than pingTimeout (a busy machine, a GC) would fail a healthy app. So pingTimeout is
 * a full second here, far above any such stall, and the dead app is really dead (a socket nobody
 * reads), not merely slow.
 */
const PING = { pingInterval: 100, pingTimeout: 1_000 };

describe('PING', () => {
  it('declares an app whose socket stops reading dead: its channel goes after pingTimeout', async () => {
    const gw = await gateway(PING);
    const c = await claim(
      claimBytes(gw.port, '?name=dead&token=t', ['Upgrade: ptth', 'Connection: Upgrade', 'ALPN: h2']),
    );
    expect(c.head).toMatch(exact101('dead', gw.port, 'ptth', 'h2'));
    // node:http2 reads its socket's handle directly (socket.pause() would not stop it), so this app
    // speaks bare frames: SETTINGS, SETTINGS ACK, PING ACK. While it reads, it is alive.
    const app = answerPings(c.socket, c.rest);
    // The gateway sends a PING only once the previous one was acknowledged: a fourth PING means
    // three answered round trips.
    await until(() => app.pings >= 4, 5_000, 'PINGs to be answered');
    expect(transports('dead'), 'answered PINGs keep the channel').toEqual(['http2']);
    c.socket.pause();
    const t0 = Date.now();
    // Time is the behaviour here, measured with wide margins: the PING that dies was sent at the
    // earliest just before the pause, so the channel cannot go before about pingTimeout (half of it
    // allows for that), and it must go well within 10 x (pingInterval + pingTimeout).
    const bound = 10 * (PING.pingInterval + PING.pingTimeout);
    await until(() => (gw.gateway.table.lookup('dead')?.channels.length ?? 0) === 0, bound, 'the dead channel to go');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(PING.pingTimeout / 2);
    expect(gw.gateway.table.lookup('dead'), 'the registration itself lives on (lease)').toBeDefined();
  }, 30_000);

  it("a PING falling due while the session is already going (the app's GOAWAY, a destroyed session) never throws out of the gateway", async () => {
    // PINGs fall due every millisecond; their deadline is generous, since no PING is meant to time
    // out here (the app shares this event loop, see PING above).
    const gw = await gateway({ pingInterval: 1, pingTimeout: 10_000 });
    const thrown: Error[] = [];
    const onUncaught = (err: Error): void => {
      thrown.push(err);
    };
    process.on('uncaughtException', onUncaught);
    bestEffort(() => process.removeListener('uncaughtException', onUncaught));
    for (let i = 0; i < 30; i++) {
      const app = await h2App(`ping${i}`, (stream) => text(stream, 'x'));
      if (i % 2 === 0)
        app.session.close(); // GOAWAY on an idle connection
      else app.session.destroy();
      await until(() => (gw.gateway.table.lookup(`ping${i}`)?.channels.length ?? 0) === 0, 5_000, 'the channel to go');
    }
    // A closed channel has stopped its PING timer (the channel left the registration on its close):
    // no PING of these sessions can fall due any more, so nothing can still be thrown.
    expect(thrown.map((e) => `${(e as NodeJS.ErrnoException).code ?? ''} ${e.message}`)).toEqual([]);
  });

  it('a healthy app with the same PING settings stays connected through ten PINGs and keeps serving', async () => {
    const gw = await gateway(PING);
    const app = await h2App('alive', (stream) => text(stream, 'alive'));
    const first = g().registration('alive').channels[0];
    let pings = 0;
    app.session.on('ping', () => pings++);
    // Counted, not slept: the gateway sends a PING only once the previous one was acknowledged, so
    // the eleventh PING received means ten round trips the gateway accepted (over a second at 100 ms).
    await until(() => pings >= 11, 10_000, 'eleven PINGs');
    expect(g().registration('alive').channels).toEqual([first]);
    expect(first?.closed).toBe(false);
    expect((await request(gw.port, { host: gw.host('alive') })).body).toBe('alive');
  });
});

// =============================================================================================

describe('GOAWAY', () => {
  it('on gateway shutdown: the app gets GOAWAY while its stream is in flight, the response completes, nothing new is sent on the connection', async () => {
    const gw = await gateway();
    let held: http2.ServerHttp2Stream | undefined;
    const app = await h2App('bye', (stream) => {
      held = stream;
    });
    let goaway = false;
    app.session.on('goaway', () => {
      goaway = true;
    });
    const visitor = request(gw.port, { host: gw.host('bye'), path: '/slow' });
    await until(() => held !== undefined, 5_000, 'the stream to arrive');
    // A grace far longer than the test may run: close() returning within a sixth of it shows it
    // did not wait the grace out but returned once the stream in flight was done.
    const GRACE = 60_000;
    let closed = false;
    const closing = gw.gateway.close(GRACE).then(() => {
      closed = true;
    });
    // GOAWAY is what tells the app to take nothing new while its stream finishes. The stream is
    // held until the test answers it, so GOAWAY arriving now is GOAWAY while it is in flight.
    await until(() => goaway, 5_000, 'GOAWAY while the stream is in flight');
    expect(held?.closed, 'the stream is still in flight').toBe(false);
    // A visitor arriving now never reaches this connection: the gateway stopped accepting at once.
    const late = await request(gw.port, { host: gw.host('bye'), path: '/late' }).then(
      (r) => `answered ${r.status}`,
      (err: NodeJS.ErrnoException) => err.code ?? err.message,
    );
    expect(late, 'a new visitor is refused by the closed listener').toBe('ECONNREFUSED');
    expect(closed, 'close() waits for the stream in flight').toBe(false);
    text(held as http2.ServerHttp2Stream, 'finished after shutdown began');
    const r = await visitor;
    expect(r.status).toBe(200);
    expect(r.body).toBe('finished after shutdown began');
    await until(() => closed, GRACE / 6, 'close() to return once the stream in flight was done');
    await closing;
    expect(app.streams).toBe(1);
  });

  it('from the app: its channel takes no new streams (another channel gets them) and the in-flight one finishes', async () => {
    const gw = await gateway();
    const got: Record<string, number> = { a: 0, b: 0 };
    let held: http2.ServerHttp2Stream | undefined;
    let holder: 'a' | 'b' | undefined;
    const handler =
      (who: 'a' | 'b'): StreamHandler =>
      (stream, headers) => {
        got[who] = (got[who] ?? 0) + 1;
        if (headers[':path'] === '/first') {
          held = stream;
          holder = who;
          return;
        }
        text(stream, who);
      };
    const a = await h2App('drain', handler('a'), {}, 'same');
    const b = await h2App('drain', handler('b'), {}, 'same');
    expect(transports('drain')).toEqual(['http2', 'http2']);
    const first = request(gw.port, { host: gw.host('drain'), path: '/first' });
    await until(() => held !== undefined, 2_000, 'the first stream');
    const going = holder === 'a' ? a : b;
    const staying = holder === 'a' ? 'b' : 'a';
    const goingChannel = channelOf('drain', going.socket);
    expect(goingChannel).toBeDefined();
    going.session.close(); // GOAWAY; streams in flight may finish
    await until(() => goingChannel?.available === false, 1_000, 'the gateway to see GOAWAY');
    const before = { ...got };
    const replies = await Promise.all(
      Array.from({ length: 6 }, () => request(gw.port, { host: gw.host('drain'), path: '/next' })),
    );
    expect(replies.map((r) => r.body)).toEqual(Array(6).fill(staying));
    expect(got[holder as string]).toBe(before[holder as string]);
    text(held as http2.ServerHttp2Stream, 'first done');
    const r = await first;
    expect(r.status).toBe(200);
    expect(r.body).toBe('first done');
    await until(
      () =>
        !g()
          .registration('drain')
          .channels.includes(goingChannel as Channel),
      2_000,
      'the drained channel to leave',
    );
    expect(g().registration('drain').channels).toHaveLength(1);
  });
});

// =============================================================================================

describe('a lost connection', () => {
  it('is noticed at once: destroying the app socket removes the channel from the registration', async () => {
    await gateway();
    const app = await h2App('lost', (stream) => text(stream, 'x'));
    expect(transports('lost')).toEqual(['http2']);
    app.socket.destroy();
    await until(() => (g().gateway.table.lookup('lost')?.channels.length ?? 0) === 0, 1_000, 'the channel to go');
  });
});

// =============================================================================================

describe('errors over HTTP/2', () => {
  it('the app resets the stream before responding: the visitor gets 502 and the connection keeps serving', async () => {
    const gw = await gateway();
    await h2App('reset', (stream, headers) => {
      if (headers[':path'] === '/reset') stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      else text(stream, 'fine');
    });
    const r = await request(gw.port, { host: gw.host('reset'), path: '/reset' });
    expect(r.status).toBe(502);
    expect(r.headers['x-ptth-error']).toMatch(/^PTTH_ERR_/);
    const ch = g().registration('reset').channels[0];
    expect((await request(gw.port, { host: gw.host('reset'), path: '/ok' })).body).toBe('fine');
    expect(g().registration('reset').channels).toEqual([ch]);
  });

  it('the app never answers: 504 after responseTimeout, the stream is cancelled at the app, the connection keeps serving', async () => {
    const responseTimeout = 300;
    const gw = await gateway({ responseTimeout });
    let cancelled = false;
    await h2App('mute', (stream, headers) => {
      if (headers[':path'] === '/never') {
        stream.on('close', () => {
          cancelled = true;
        });
        return;
      }
      text(stream, 'spoke');
    });
    const t0 = Date.now();
    const r = await request(gw.port, { host: gw.host('mute'), path: '/never' });
    const ms = Date.now() - t0;
    expect(r.status).toBe(504);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_APP_TIMEOUT');
    // Time is the behaviour: not before responseTimeout (less a little timer rounding), and well
    // before 10 x responseTimeout, a bound no busy machine reaches but a hang does.
    expect(ms).toBeGreaterThanOrEqual(responseTimeout - 20);
    expect(ms).toBeLessThan(10 * responseTimeout);
    await until(() => cancelled, 5_000, 'the app stream to be cancelled');
    expect((await request(gw.port, { host: gw.host('mute'), path: '/ok' })).body).toBe('spoke');
    expect(g().registration('mute').channels).toHaveLength(1);
  });

  it("a visitor going away mid-response cancels the app's stream while the connection keeps serving others", async () => {
    const gw = await gateway();
    const partial = { closed: false, aborted: false };
    await h2App('leave', (stream, headers) => {
      if (headers[':path'] === '/partial') {
        stream.on('close', () => {
          partial.closed = true;
        });
        stream.on('aborted', () => {
          partial.aborted = true;
        });
        stream.respond({ ':status': 200 });
        stream.write(Buffer.alloc(64 * 1024, 'p'));
        return; // never ends
      }
      text(stream, 'others fine');
    });
    const ch = g().registration('leave').channels[0];
    const v = await rawConnect(gw.port);
    v.on('error', noop);
    track(v);
    v.write(`GET /partial HTTP/1.1\r\nHost: ${gw.host('leave')}\r\n\r\n`);
    const got = await readUntil(v, (b) => b.length > 1_000, 2_000);
    expect(got.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    v.destroy();
    await until(() => partial.closed, 1_000, "the app's stream to close");
    expect((await request(gw.port, { host: gw.host('leave'), path: '/ok' })).body).toBe('others fine');
    expect(g().registration('leave').channels).toEqual([ch]);
    expect(ch?.active).toBe(0);
  });

  it("a visitor going away mid-upload cancels the app's stream (whether or not the app has begun answering); the app never sees the cut body as complete", async () => {
    const gw = await gateway();
    const seen: Record<string, { closed: boolean; ended: boolean; got: number }> = {};
    await h2App('cutup', (stream, headers) => {
      const path = String(headers[':path']);
      if (path === '/ok') {
        text(stream, 'still serving');
        return;
      }
      const s = { closed: false, ended: false, got: 0 };
      seen[path] = s;
      stream.on('data', (c: Buffer) => {
        s.got += c.length;
      });
      stream.on('end', () => {
        s.ended = true;
      });
      stream.on('close', () => {
        s.closed = true;
      });
      if (path === '/answering') {
        stream.respond({ ':status': 200 });
        stream.write('partial answer');
      }
    });
    const ch = g().registration('cutup').channels[0];
    for (const path of ['/silent', '/answering']) {
      const v = await rawConnect(gw.port);
      v.on('error', noop);
      track(v);
      v.write(`POST ${path} HTTP/1.1\r\nHost: ${gw.host('cutup')}\r\nContent-Length: 1000000\r\n\r\n`);
      v.write(Buffer.alloc(100_000, 'u'));
      await until(() => (seen[path]?.got ?? 0) > 0, 2_000, `the upload to ${path} to reach the app`);
      if (path === '/answering')
        expect((await readUntil(v, (b) => b.includes('partial answer'), 2_000)).toString('latin1')).toMatch(
          /^HTTP\/1\.1 200 /,
        );
      v.destroy();
      await until(() => seen[path]?.closed === true, 1_000, `the app's ${path} stream to be cancelled`);
      expect(seen[path]?.ended, `${path}: a cut upload must not look complete to the app`).toBe(false);
    }
    expect((await request(gw.port, { host: gw.host('cutup'), path: '/ok' })).body).toBe('still serving');
    expect(g().registration('cutup').channels).toEqual([ch]);
    expect(ch?.active).toBe(0);
  });
});

// =============================================================================================

const WS_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const WS_ACCEPT = 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=';

function wsRequest(host: string, path = '/ws'): string {
  return (
    `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n`
  );
}

describe('visitor upgrades on HTTP/2 channels', () => {
  it('an HTTP/2-only app without extended CONNECT: a WebSocket upgrade gets 502 PTTH_ERR_UPGRADE_UNSUPPORTED at once', async () => {
    // "At once" without a clock: every timer that could end the upgrade otherwise (queue, response)
    // is a minute long, and the answer must come (and the connection close) within 10 s.
    const gw = await gateway({ queueTimeout: 60_000, responseTimeout: 60_000, reconnectWait: 60_000 });
    await h2App('noconnect', (stream) => text(stream, 'plain'));
    expect(g().registration('noconnect').channels[0]?.upgradable).toBe(false);
    const v = await rawConnect(gw.port);
    v.on('error', noop);
    track(v);
    v.write(wsRequest(gw.host('noconnect')));
    const got = (await readUntil(v, () => false, 10_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/);
    expect(got).toMatch(/\r\nX-Ptth-Error: PTTH_ERR_UPGRADE_UNSUPPORTED\r\n/i);
    expect(got).toMatch(/\r\nConnection: close\r\n/i);
    expect(v.destroyed || v.readableEnded).toBe(true);
    // Plain requests still work.
    expect((await request(gw.port, { host: gw.host('noconnect') })).body).toBe('plain');
  });

  it('an app with enableConnectProtocol gets the WebSocket as RFC 8441 extended CONNECT; the visitor gets a correct 101 and bytes flow both ways', async () => {
    const gw = await gateway();
    let seen: http2.IncomingHttpHeaders | undefined;
    await h2App(
      'xconnect',
      (stream, headers) => {
        seen = headers;
        if (headers[':method'] !== 'CONNECT') {
          text(stream, 'plain');
          return;
        }
        stream.respond({ ':status': 200, 'sec-websocket-protocol': 'chat' });
        stream.on('data', (c: Buffer) => stream.write(Buffer.concat([Buffer.from('echo:'), c])));
        stream.on('end', () => stream.end());
      },
      { enableConnectProtocol: true },
    );
    expect(g().registration('xconnect').channels[0]?.upgradable).toBe(true);
    const v = await rawConnect(gw.port);
    v.on('error', noop);
    track(v);
    v.write(wsRequest(gw.host('xconnect'), '/chat?room=1'));
    const head = await readUntil(v, headEnd, 2_000);
    const end = head.indexOf('\r\n\r\n');
    const headText = head.subarray(0, end + 4).toString('latin1');
    expect(headText).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(headText).toMatch(/\r\nUpgrade: websocket\r\n/i);
    expect(headText).toMatch(/\r\nConnection: Upgrade\r\n/i);
    expect(headText).toContain(`\r\nSec-WebSocket-Accept: ${WS_ACCEPT}\r\n`);
    expect(headText).toMatch(/\r\nsec-websocket-protocol: chat\r\n/i);
    const h = seen as http2.IncomingHttpHeaders;
    expect(h[':method']).toBe('CONNECT');
    expect(h[':protocol']).toBe('websocket');
    expect(h[':path']).toBe('/chat?room=1');
    expect(h[':authority']).toBe(gw.host('xconnect'));
    expect(h['sec-websocket-version']).toBe('13');
    expect(h['sec-websocket-key'], 'RFC 8441 section 5: no Sec-WebSocket-Key over HTTP/2').toBeUndefined();
    expect(h['x-forwarded-for']).toBe('127.0.0.1');
    // Raw bytes both ways (the app treats them as opaque).
    v.write('hello');
    const early = head.length - end - 4;
    const back = await readUntil(v, (b) => early + b.length >= 10, 2_000);
    expect(Buffer.concat([head.subarray(end + 4), back]).toString('latin1')).toBe('echo:hello');
    v.write('again');
    const back2 = await readUntil(v, (b) => b.length >= 10, 2_000);
    expect(back2.toString('latin1')).toBe('echo:again');
    // Plain requests share the connection.
    expect((await request(gw.port, { host: gw.host('xconnect') })).body).toBe('plain');
    expect(g().registration('xconnect').channels).toHaveLength(1);
  });
});

// =============================================================================================

async function app(
  target: http.RequestListener | http.Server,
  options: Parameters<typeof startApp>[2] = {},
): Promise<Tunnel> {
  const t = await startApp(g().port, target, options);
  cleanup(() => t.close({ graceMs: 100 }));
  return t;
}

/** Every connection the gateway accepts from now on, in the order it accepted them. */
function acceptLog(): net.Socket[] {
  const seen: net.Socket[] = [];
  g().gateway.server.on('connection', (s: net.Socket) => seen.push(s));
  return seen;
}

/**
 * The connections the gateway had accepted before one the test opens now; resolves once the
 * gateway has accepted the test's own. The kernel's accept queue is first in, first out: a dial
 * the client started before this call (its claim connections open as soon as it decides to
 * dial, in the same turn of the event loop) has been accepted by then.
 */
async function acceptedBefore(seen: net.Socket[]): Promise<net.Socket[]> {
  const probe = await rawConnect(g().port);
  track(probe);
  await until(() => seen.some((s) => s.remotePort === probe.localPort), 5_000, 'the gateway to accept the probe');
  return seen.slice(
    0,
    seen.findIndex((s) => s.remotePort === probe.localPort),
  );
}

describe('the Node client: HTTP/2 by default, HTTP/1.1 when needed', () => {
  it('against a default gateway speaks h2 with one HTTP/2 channel and no HTTP/1.1 channel for a plain request listener', async () => {
    const gw = await gateway();
    const seen = acceptLog();
    const t = await app((_req, res) => res.end('hi'), { name: 'plainh2' });
    expect(t.protocol).toBe('h2');
    // The client decides what else to dial when a connection goes live, at once: by the time
    // ready() resolved it had dialed whatever it wanted. No sleep: the gateway accepting a later
    // connection shows it accepted every earlier one, and there was only the one claim.
    expect(await acceptedBefore(seen), 'the client dialed one connection').toHaveLength(1);
    expect(transports('plainh2')).toEqual(['http2']);
    expect(t.connections).toBe(1);
    expect((await request(gw.port, { host: gw.host('plainh2') })).body).toBe('hi');
  });

  it("keeps one HTTP/1.1 channel beside the HTTP/2 one when the target http.Server listens for 'upgrade'", async () => {
    const gw = await gateway();
    const server = http.createServer((_req, res) => res.end('hi'));
    server.on('upgrade', (_req, socket: net.Socket) => socket.destroy());
    const seen = acceptLog();
    const t = await app(server, { name: 'withup' });
    expect(t.protocol).toBe('h2');
    await until(() => transports('withup').join() === 'http1,http2', 5_000, 'h2 + h1 channels');
    // The client has taken both connections in (a third would be dialed in that same step): then
    // the gateway accepting a later connection shows that it accepted every dial there was.
    await until(() => t.connections === 2, 5_000, 'the client to take both connections');
    expect(await acceptedBefore(seen), 'the client dialed two connections, no more').toHaveLength(2);
    expect(transports('withup')).toEqual(['http1', 'http2']);
    expect((await request(gw.port, { host: gw.host('withup') })).body).toBe('hi');
  });

  it('with http1: true uses only HTTP/1.1 channels', async () => {
    const gw = await gateway();
    const t = await app((_req, res) => res.end('old way'), { name: 'forced', http1: true, connections: 2 });
    expect(t.protocol).toBe('h1');
    await until(() => transports('forced').length === 2, 2_000, 'two channels');
    expect(transports('forced')).toEqual(['http1', 'http1']);
    expect((await request(gw.port, { host: gw.host('forced') })).body).toBe('old way');
  });

  it('against a gateway with http2: false falls back to reversed HTTP/1.1 and serves requests', async () => {
    const gw = await gateway({ http2: false });
    const t = await app((req, res) => res.end(`fallback ${req.url ?? ''}`), { name: 'fb', connections: 2 });
    expect(t.protocol).toBe('h1');
    await until(() => transports('fb').length === 2, 2_000, 'two channels');
    expect(transports('fb')).toEqual(['http1', 'http1']);
    const replies = await Promise.all(
      Array.from({ length: 5 }, (_, i) => request(gw.port, { host: gw.host('fb'), path: `/${i}` })),
    );
    expect(replies.map((r) => r.body)).toEqual([0, 1, 2, 3, 4].map((i) => `fallback /${i}`));
  });

  /** An http.Server with a ws echo server on it, served by the Node client over h2 + h1. */
  async function mixedApp(name: string): Promise<{ gw: TestGateway; h2ch: Channel; h1ch: Channel }> {
    const gw = await gateway();
    const server = http.createServer((_req, res) => res.end('plain'));
    const wss = new WebSocketServer({ server });
    bestEffort(() => wss.close());
    wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
    const t = await app(server, { name });
    expect(t.protocol).toBe('h2');
    await until(() => transports(name).join() === 'http1,http2', 2_000, 'h2 + h1 channels');
    const h2ch = g()
      .registration(name)
      .channels.find((c) => c.transport === 'http2') as Channel;
    const h1ch = g()
      .registration(name)
      .channels.find((c) => c.transport === 'http1') as Channel;
    return { gw, h2ch, h1ch };
  }

  it('when h2 and h1 channels coexist, plain requests go over HTTP/2 and the HTTP/1.1 channel stays free for upgrades', async () => {
    const { gw, h2ch, h1ch } = await mixedApp('mixplain');
    for (let i = 0; i < 6; i++) expect((await request(gw.port, { host: gw.host('mixplain') })).body).toBe('plain');
    await Promise.all(
      Array.from({ length: 6 }, async () =>
        expect((await request(gw.port, { host: gw.host('mixplain') })).body).toBe('plain'),
      ),
    );
    expect(h1ch.served + h2ch.served).toBe(12);
    expect(h1ch.served, 'the HTTP/1.1 channel is kept for upgrades').toBe(0);
    expect(h2ch.served, 'plain requests over HTTP/2').toBe(12);
  });

  it('when h2 and h1 channels coexist, a visitor WebSocket goes over the HTTP/1.1 channel and the client replaces the consumed one', async () => {
    const { gw, h2ch, h1ch } = await mixedApp('mix');
    const h2served = h2ch.served;

    const open = (): Promise<WebSocket> =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/`, { headers: { Host: gw.host('mix') } });
        bestEffort(() => ws.terminate());
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
      });
    const echo = async (ws: WebSocket, msg: string): Promise<string> => {
      const reply = once(ws, 'message');
      ws.send(msg);
      const [data] = (await reply) as [Buffer];
      return data.toString();
    };
    const ws1 = await open();
    expect(await echo(ws1, 'one')).toBe('one');
    expect(g().registration('mix').channels, 'the HTTP/1.1 channel was consumed by the upgrade').not.toContain(h1ch);
    expect(g().registration('mix').channels).toContain(h2ch);
    expect(h2ch.served, 'the upgrade did not go over HTTP/2').toBe(h2served);
    await until(
      () =>
        g()
          .registration('mix')
          .channels.some((c) => c.transport === 'http1' && c !== h1ch) && g().registration('mix').channels.length === 2,
      3_000,
      'a replacement HTTP/1.1 channel',
    );
    const ws2 = await open();
    expect(await echo(ws2, 'two')).toBe('two');
    expect(await echo(ws1, 'one again')).toBe('one again');
    expect((await request(gw.port, { host: gw.host('mix') })).body).toBe('plain');
    ws1.close();
    ws2.close();
  });
});

// =============================================================================================

describe('the Node client over HTTP/2 preserves what the app needs', () => {
  const BIG = randomBytes(8 * 1024 * 1024);

  async function h2ClientApp(name: string, handler: http.RequestListener): Promise<{ gw: TestGateway; t: Tunnel }> {
    const gw = await gateway();
    const t = await app(handler, { name });
    expect(t.protocol).toBe('h2');
    expect(transports(name)).toEqual(['http2']);
    return { gw, t };
  }

  it('method, path with query, Host, forwarding headers and duplicate request headers', async () => {
    let seen: http.IncomingMessage | undefined;
    const { gw } = await h2ClientApp('echo', (req, res) => {
      seen = req;
      req.resume();
      req.on('end', () => res.end('seen'));
    });
    const r = await request(gw.port, {
      host: gw.host('echo'),
      method: 'PATCH',
      path: '/a/b?x=1&y=%20z',
      headers: { 'X-A': ['first', 'second'], 'Content-Length': '0' },
    });
    expect(r.body).toBe('seen');
    const req = seen as http.IncomingMessage;
    expect(req.method).toBe('PATCH');
    expect(req.url).toBe('/a/b?x=1&y=%20z');
    expect(req.headers.host).toBe(gw.host('echo'));
    expect(req.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(req.headers['x-forwarded-host']).toBe(gw.host('echo'));
    expect(req.headers['x-forwarded-proto']).toBe('http');
    expect(req.headers['forwarded']).toBe(`for=127.0.0.1;proto=http;host="${gw.host('echo')}"`);
    expect(String(req.headers['requesting-client'])).toMatch(/^127\.0\.0\.1:\d+$/);
    const xa: string[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      if (req.rawHeaders[i]?.toLowerCase() === 'x-a') xa.push(req.rawHeaders[i + 1] as string);
    expect(xa).toEqual(['first', 'second']);
  });

  it('set-cookie arrays, 204 and 304 without a body, and HEAD, on one keep-alive visitor connection', async () => {
    const { gw } = await h2ClientApp('statuses', (req, res) => {
      switch (req.url) {
        case '/cookies':
          res.setHeader('Set-Cookie', ['a=1; Path=/', 'b=2; HttpOnly']);
          res.end('cookies');
          return;
        case '/204':
          res.writeHead(204, { 'X-Kind': 'no content' });
          res.end();
          return;
        case '/304':
          res.writeHead(304, { ETag: '"v1"' });
          res.end();
          return;
        case '/head':
          res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': '11' });
          res.end(req.method === 'HEAD' ? undefined : 'hello world');
          return;
        default:
          res.end(`last ${req.method ?? ''}`);
      }
    });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    bestEffort(() => agent.destroy());
    const host = gw.host('statuses');
    const cookies = await fetchBytes(gw.port, { host, path: '/cookies', agent });
    expect(cookies.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; HttpOnly']);
    expect(cookies.body.toString()).toBe('cookies');
    const nc = await fetchBytes(gw.port, { host, path: '/204', agent });
    expect(nc.status).toBe(204);
    expect(nc.headers['x-kind']).toBe('no content');
    expect(nc.body.length).toBe(0);
    const nm = await fetchBytes(gw.port, { host, path: '/304', agent, headers: { 'If-None-Match': '"v1"' } });
    expect(nm.status).toBe(304);
    expect(nm.headers.etag).toBe('"v1"');
    expect(nm.body.length).toBe(0);
    const head = await fetchBytes(gw.port, { host, path: '/head', method: 'HEAD', agent });
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe('11');
    expect(head.body.length).toBe(0);
    const get = await fetchBytes(gw.port, { host, path: '/head', agent });
    expect(get.body.toString()).toBe('hello world');
    // Framing stayed right: the same connection still carries requests.
    const last = await fetchBytes(gw.port, { host, path: '/last', method: 'POST', agent, body: 'x' });
    expect(last.body.toString()).toBe('last POST');
  });

  it('a POST body is read fully by the app (8 MB, hash compared)', async () => {
    const { gw } = await h2ClientApp('upload', (req, res) => {
      const hash = createHash('sha256');
      let n = 0;
      req.on('data', (c: Buffer) => {
        hash.update(c);
        n += c.length;
      });
      req.on('end', () => res.end(`${n} ${hash.digest('hex')}`));
    });
    const r = await fetchBytes(gw.port, { host: gw.host('upload'), method: 'POST', path: '/up', body: BIG });
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe(`${BIG.length} ${sha(BIG)}`);
    const chunked = await new Promise<string>((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: gw.port,
        method: 'POST',
        path: '/chunked',
        headers: { host: gw.host('upload') },
        agent: false,
      });
      req.on('response', (res) => {
        let s = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (s += c));
        res.on('end', () => resolve(s));
      });
      req.on('error', reject);
      for (let i = 0; i < 8; i++) req.write(BIG.subarray(i * 1024 * 1024, (i + 1) * 1024 * 1024));
      req.end();
    });
    expect(chunked).toBe(`${BIG.length} ${sha(BIG)}`);
  });

  it('an app that answers before reading a large POST body: the visitor gets the answer, nothing hangs, tunnel.close() returns quickly', async () => {
    const gw = await gateway();
    const UP = randomBytes(20 * 1024 * 1024);
    const t = await startApp(
      gw.port,
      (req, res) => {
        if (req.url === '/early') res.end('early answer');
        else req.resume().on('end', () => res.end('later'));
      },
      { name: 'early' },
    );
    let closedByTest = false;
    bestEffort(() => (closedByTest ? undefined : t.close({ graceMs: 100 })));
    expect(t.protocol).toBe('h2');
    const r = await fetchBytes(gw.port, {
      host: gw.host('early'),
      method: 'POST',
      path: '/early',
      body: UP,
      headers: { 'content-length': UP.length },
    });
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('early answer');
    expect((await request(gw.port, { host: gw.host('early'), path: '/after' })).body).toBe('later');
    closedByTest = true;
    // "Quickly" against a grace far longer than the test may run: returning within a sixth of it
    // shows close() found nothing left hanging from the cut upload rather than waiting it out.
    const GRACE = 60_000;
    let closed = false;
    const closing = t.close({ graceMs: GRACE }).then(() => {
      closed = true;
    });
    await until(() => closed, GRACE / 6, 'tunnel.close() to return without waiting out its grace');
    await closing;
  });
});
