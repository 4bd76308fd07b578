import * as http from 'node:http';
import type * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Tunnel } from '../../src/client/node.js';
import {
  closed,
  rawClaim,
  rawConnect,
  readUntil,
  request,
  until,
  type Reply,
  type RequestSpec,
  type TestGateway,
} from '../helpers/index.js';
import { cleanup, track, useApp, useGateway } from '../helpers/fixture.js';
import type { GatewayOptions } from '../../src/gateway/server.js';

/*
 * Routing, forwarding and gateway-made statuses (docs/PROTOCOL.md sections 1, 2, 8 and 9), against a real
 * gateway on 127.0.0.1 with real clients: raw PTTH/1.0 channels written byte by byte where the
 * test needs to control the app's side exactly, and the Node client elsewhere.
 */

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

function g(): TestGateway {
  if (!gw) throw new Error('no gateway started');
  return gw;
}

// These tests pin down reversed HTTP/1.1 (raw header case, one request per connection); the
// HTTP/2 path has its own file (http2.test.ts).
async function app(
  target: http.RequestListener | http.Server,
  options: Parameters<typeof useApp>[2] = {},
): Promise<Tunnel> {
  return useApp(g().port, target, { http1: true, ...options });
}

/** A visitor request for the app `name` through the gateway. */
function visit(name: string, spec: RequestSpec = {}): Promise<Reply> {
  return request(g().port, { host: g().host(name), ...spec });
}

/** A raw visitor connection that has sent `bytes`. */
async function rawVisit(bytes: string): Promise<net.Socket> {
  const s = await rawConnect(g().port);
  track(s);
  s.on('error', noop);
  s.write(bytes);
  return s;
}

function rawHeaderValues(raw: readonly string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === name) out.push(raw[i + 1] as string);
  return out;
}

function pairs(raw: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < raw.length; i += 2) out.push([raw[i] as string, raw[i + 1] as string]);
  return out;
}

/** A complete HTTP response with a Content-Length body in `b`. */
function responseComplete(b: Buffer): boolean {
  const end = b.indexOf('\r\n\r\n');
  if (end === -1) return false;
  const m = /\r\ncontent-length:\s*(\d+)/i.exec(b.subarray(0, end).toString('latin1'));
  return m ? b.length >= end + 4 + Number(m[1]) : true;
}

function parseRawResponse(b: Buffer): { status: number; rawHeaders: string[]; body: string } {
  const end = b.indexOf('\r\n\r\n');
  const lines = b.subarray(0, end).toString('latin1').split('\r\n');
  const status = Number((lines[0] ?? '').split(' ')[1]);
  const rawHeaders: string[] = [];
  for (const line of lines.slice(1)) {
    const c = line.indexOf(':');
    rawHeaders.push(line.slice(0, c), line.slice(c + 1).trim());
  }
  return { status, rawHeaders, body: b.subarray(end + 4).toString('utf8') };
}

// ---------------------------------------------------------------------------------------------
// A raw PTTH/1.0 channel: the test is the app, reading reversed requests and writing raw bytes.
// ---------------------------------------------------------------------------------------------

interface RawRequest {
  method: string;
  url: string;
  version: string;
  rawHeaders: string[];
  body: Buffer;
}

function parseRequest(buf: Buffer): { req: RawRequest; used: number } | undefined {
  const end = buf.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const [method = '', url = '', version = ''] = (lines[0] ?? '').split(' ');
  const rawHeaders: string[] = [];
  for (const line of lines.slice(1)) {
    const c = line.indexOf(':');
    rawHeaders.push(line.slice(0, c), line.slice(c + 1).trim());
  }
  let pos = end + 4;
  let body: Buffer = Buffer.alloc(0);
  const te = rawHeaderValues(rawHeaders, 'transfer-encoding')[0];
  const cl = rawHeaderValues(rawHeaders, 'content-length')[0];
  if (te !== undefined && /chunked/i.test(te)) {
    const parts: Buffer[] = [];
    for (;;) {
      const lineEnd = buf.indexOf('\r\n', pos);
      if (lineEnd === -1) return undefined;
      const size = parseInt(buf.subarray(pos, lineEnd).toString('latin1'), 16);
      if (size === 0) {
        if (buf.length < lineEnd + 4) return undefined;
        pos = lineEnd + 4; // no trailers
        break;
      }
      if (buf.length < lineEnd + 2 + size + 2) return undefined;
      parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
      pos = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  } else if (cl !== undefined) {
    const n = Number(cl);
    if (buf.length < pos + n) return undefined;
    body = buf.subarray(pos, pos + n);
    pos += n;
  }
  return { req: { method, url, version, rawHeaders, body }, used: pos };
}

class RawChannel {
  /** Every request this channel received, in order. */
  readonly received: RawRequest[] = [];
  /** When set, answers each request as it arrives (the bytes returned are written). */
  autoReply: ((r: RawRequest) => string) | undefined;
  #unread: RawRequest[] = [];
  #buf: Buffer;

  constructor(
    readonly socket: net.Socket,
    readonly head: string,
    rest: Buffer,
    readonly label: string,
  ) {
    this.#buf = rest;
    socket.on('error', noop);
    socket.on('data', (c: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, c]);
      this.#parse();
    });
    socket.resume();
    this.#parse();
  }

  get location(): string {
    return /\r\nLocation: ([^\r\n]+)/.exec(this.head)?.[1] ?? '';
  }

  get unread(): number {
    return this.#unread.length;
  }

  #parse(): void {
    for (;;) {
      const p = parseRequest(this.#buf);
      if (!p) return;
      this.#buf = this.#buf.subarray(p.used);
      this.received.push(p.req);
      if (this.autoReply) this.socket.write(this.autoReply(p.req));
      else this.#unread.push(p.req);
    }
  }

  /** The next request not yet taken (waits up to `ms`). */
  async next(ms = 5_000): Promise<RawRequest> {
    await until(() => this.#unread.length > 0, ms, `a request on channel ${this.label}`);
    return this.#unread.shift() as RawRequest;
  }

  write(bytes: string): void {
    this.socket.write(bytes);
  }
}

function ok(body: string, extra = ''): string {
  return `HTTP/1.1 200 OK\r\n${extra}Content-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

async function claimRaw(name: string, token = `tok-${name}`, label = name): Promise<RawChannel> {
  const port = g().port;
  const { socket, head, rest } = await rawClaim(
    port,
    `POST /?name=${name}&token=${token} HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
  );
  track(socket);
  expect(head).toMatch(/^HTTP\/1\.1 101 /);
  return new RawChannel(socket, head, rest, label);
}

/** The first of `channels` that has an unanswered request. */
async function whichGot(channels: RawChannel[], ms = 5_000): Promise<RawChannel> {
  await until(() => channels.some((c) => c.unread > 0), ms, 'a request on one of the channels');
  return channels.find((c) => c.unread > 0) as RawChannel;
}

/** An app handler that echoes what it received as JSON. */
const echo: http.RequestListener = (req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    res.setHeader('Content-Type', 'application/json');
    res.end(
      JSON.stringify({
        method: req.method,
        url: req.url,
        httpVersion: req.httpVersion,
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(chunks).toString('utf8'),
      }),
    );
  });
};

interface Echoed {
  method: string;
  url: string;
  httpVersion: string;
  rawHeaders: string[];
  body: string;
}

/** Headers the gateway itself adds on its hop (forwarding headers and its own Connection). */
const GATEWAY_ADDED = new Set([
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'forwarded',
  'requesting-client',
  'connection',
]);

// =============================================================================================

describe('routing by Host', () => {
  it('NAME.localhost:PORT reaches the app NAME (name matched case-insensitively)', async () => {
    await gateway();
    await app((req, res) => res.end(`alpha saw ${req.url}`), { name: 'alpha' });
    const r = await visit('alpha', { path: '/x?y=1' });
    expect(r.status).toBe(200);
    expect(r.body).toBe('alpha saw /x?y=1');
    const upper = await request(g().port, { host: `ALPHA.LocalHost:${g().port}`, path: '/upper' });
    expect(upper.status).toBe(200);
    expect(upper.body).toBe('alpha saw /upper');
  });

  it('two apps on two names each get only their own requests', async () => {
    await gateway();
    const seen: Record<string, string[]> = { alpha: [], beta: [] };
    const handler =
      (name: string): http.RequestListener =>
      (req, res) => {
        (seen[name] as string[]).push(req.url ?? '');
        res.end(name);
      };
    await app(handler('alpha'), { name: 'alpha' });
    await app(handler('beta'), { name: 'beta' });
    const bodies = [
      (await visit('alpha', { path: '/a1' })).body,
      (await visit('beta', { path: '/b1' })).body,
      (await visit('alpha', { path: '/a2' })).body,
      (await visit('beta', { path: '/b2' })).body,
      (await visit('beta', { path: '/b3' })).body,
    ];
    expect(bodies).toEqual(['alpha', 'beta', 'alpha', 'beta', 'beta']);
    expect(seen['alpha']).toEqual(['/a1', '/a2']);
    expect(seen['beta']).toEqual(['/b1', '/b2', '/b3']);
  });

  it('Host localhost:PORT, 127.0.0.1:PORT and example.com get the gateway status page (HTML by default)', async () => {
    await gateway();
    let hits = 0;
    await app(
      (_req, res) => {
        hits++;
        res.end('app');
      },
      { name: 'shown' },
    );
    for (const host of [`localhost:${g().port}`, `127.0.0.1:${g().port}`, 'example.com']) {
      const r = await request(g().port, { host, path: '/' });
      expect(r.status, host).toBe(200);
      expect(r.headers['content-type'], host).toMatch(/^text\/html/);
      expect(r.body, host).toMatch(/<html/i);
      expect(r.body, host).toContain('ptth-proxy');
      expect(r.body, host).toContain('shown');
    }
    expect(hits).toBe(0);
  });

  it('the status page answers JSON with Accept: application/json, listing registrations, channels and request counts', async () => {
    await gateway();
    const ch = await claimRaw('stat');
    ch.autoReply = () => ok('hi');
    expect((await visit('stat')).status).toBe(200);
    expect((await visit('stat')).status).toBe(200);
    const r = await request(g().port, { host: `localhost:${g().port}`, headers: { accept: 'application/json' } });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^application\/json/);
    const state = JSON.parse(r.body) as {
      registrations: { name: string; requests: number; channels: { transport: string }[] }[];
    };
    expect(Array.isArray(state.registrations)).toBe(true);
    const stat = state.registrations.find((x) => x.name === 'stat');
    expect(stat).toBeDefined();
    expect(stat?.requests).toBe(2);
    expect(stat?.channels).toHaveLength(1);
    expect(stat?.channels[0]?.transport).toBe('http1');
  });

  it('a.b.localhost is not an app host: 404, and the app "b" sees nothing', async () => {
    await gateway();
    let hits = 0;
    await app(
      (_req, res) => {
        hits++;
        res.end('b');
      },
      { name: 'b' },
    );
    const r = await request(g().port, { host: `a.b.localhost:${g().port}`, headers: { accept: 'application/json' } });
    expect(r.status).toBe(404);
    expect(hits).toBe(0);
  });
});

describe('what the app receives', () => {
  it('method, odd Request-URI, Host and end-to-end headers arrive unchanged (raw case, order, duplicates)', async () => {
    await gateway();
    await app(echo, { name: 'echo' });
    const host = g().host('echo');
    const sent: [string, string][] = [
      ['Host', host],
      ['X-Custom-Header', 'One'],
      ['x-lower-case', 'two'],
      ['X-Dup', '1'],
      ['x-MiXeD', 'Three  spaced'],
      ['Accept', '*/*'],
      ['X-Dup', '2'],
      ['Cookie', 'a=1'],
      ['Cookie', 'b=2'],
      ['Content-Type', 'text/plain'],
      ['Content-Length', '5'],
    ];
    const visitor = await rawVisit(
      `PATCH /a%20b?x=1&y HTTP/1.1\r\n${sent.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\nhello`,
    );
    const got = await readUntil(visitor, responseComplete);
    const res = parseRawResponse(got);
    expect(res.status).toBe(200);
    const e = JSON.parse(res.body) as Echoed;
    expect(e.method).toBe('PATCH');
    expect(e.url).toBe('/a%20b?x=1&y');
    expect(e.httpVersion).toBe('1.1');
    expect(e.body).toBe('hello');
    // The two fields the gateway's HTTP/1.1 client (undici) writes itself, Host and the body's
    // Content-Length, arrive in its lower case (docs/PROTOCOL.md section 4); the rest as sent.
    const own = (k: string): string =>
      k === 'host' || k === 'content-length' ? (k === 'host' ? 'Host' : 'Content-Length') : k;
    const endToEnd = pairs(e.rawHeaders)
      .filter(([k]) => !GATEWAY_ADDED.has(k.toLowerCase()))
      .map(([k, v]) => [own(k), v]);
    expect(endToEnd).toEqual(sent);
  });

  it('the gateway adds X-Forwarded-For (appended), X-Forwarded-Host, X-Forwarded-Proto, Forwarded and Requesting-Client, replacing visitor-sent ones', async () => {
    await gateway();
    await app(echo, { name: 'echo' });
    const host = g().host('echo');
    const visitor = await rawVisit(
      'GET /fwd HTTP/1.1\r\n' +
        `Host: ${host}\r\n` +
        'X-Forwarded-For: 10.0.0.1\r\n' +
        'Requesting-Client: 6.6.6.6:666\r\n' +
        'X-Forwarded-Host: evil.example\r\n' +
        'X-Forwarded-Proto: https\r\n' +
        '\r\n',
    );
    const res = parseRawResponse(await readUntil(visitor, responseComplete));
    expect(res.status).toBe(200);
    const raw = (JSON.parse(res.body) as Echoed).rawHeaders;
    expect(rawHeaderValues(raw, 'x-forwarded-for')).toEqual(['10.0.0.1, 127.0.0.1']);
    expect(rawHeaderValues(raw, 'x-forwarded-host')).toEqual([host]);
    expect(rawHeaderValues(raw, 'x-forwarded-proto')).toEqual(['http']);
    expect(rawHeaderValues(raw, 'forwarded')).toEqual([`for=127.0.0.1;proto=http;host="${host}"`]);
    expect(rawHeaderValues(raw, 'requesting-client')).toEqual([`127.0.0.1:${visitor.localPort}`]);

    // Without an incoming X-Forwarded-For the gateway starts the list.
    const plain = await visit('echo', { path: '/plain' });
    const raw2 = (JSON.parse(plain.body) as Echoed).rawHeaders;
    expect(rawHeaderValues(raw2, 'x-forwarded-for')).toEqual(['127.0.0.1']);
    expect(rawHeaderValues(raw2, 'requesting-client')[0]).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it('hop-by-hop headers (Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade, Proxy-Connection, Connection-named) are removed', async () => {
    await gateway();
    await app(echo, { name: 'echo' });
    const host = g().host('echo');
    const visitor = await rawVisit(
      'GET /hop HTTP/1.1\r\n' +
        `Host: ${host}\r\n` +
        'Connection: keep-alive, X-Secret-Hop\r\n' +
        'Keep-Alive: timeout=5\r\n' +
        'TE: trailers\r\n' +
        'Upgrade: h2c\r\n' +
        'Proxy-Connection: keep-alive\r\n' +
        'X-Secret-Hop: do not forward\r\n' +
        'X-Kept: yes\r\n' +
        'Transfer-Encoding: chunked\r\n' +
        '\r\n0\r\n\r\n',
    );
    const res = parseRawResponse(await readUntil(visitor, responseComplete));
    expect(res.status).toBe(200);
    const e = JSON.parse(res.body) as Echoed;
    expect(e.url).toBe('/hop');
    const raw = e.rawHeaders;
    for (const name of ['keep-alive', 'te', 'upgrade', 'proxy-connection', 'x-secret-hop']) {
      expect(rawHeaderValues(raw, name), name).toEqual([]);
    }
    // The visitor's framing is not passed on: the gateway frames the body it relays on its own hop,
    // explicitly, whatever the method (a GET's body would otherwise go down the channel unframed):
    // chunked while its length is unknown, by Content-Length once the whole body is in hand (here
    // an empty one, which a GET then carries without framing at all).
    const te = rawHeaderValues(raw, 'transfer-encoding');
    expect(te.length === 0 ? rawHeaderValues(raw, 'content-length').filter((v) => v !== '0') : te).toEqual(
      te.length === 0 ? [] : ['chunked'],
    );
    expect(e.body).toBe('');
    // The visitor's Connection header is gone; the gateway's own hop may say keep-alive, nothing else.
    const conn = rawHeaderValues(raw, 'connection');
    expect(conn.length).toBeLessThanOrEqual(1);
    for (const v of conn) expect(v.toLowerCase()).toBe('keep-alive');
    expect(rawHeaderValues(raw, 'x-kept')).toEqual(['yes']);
  });

  it("the app's response headers reach the visitor unchanged except hop-by-hop ones", async () => {
    await gateway();
    const ch = await claimRaw('resp');
    const appHeaders: [string, string][] = [
      ['X-App-Header', 'One'],
      ['x-lower-app', 'two'],
      ['Set-Cookie', 'a=1; Path=/'],
      ['Date', 'Tue, 01 Jan 2030 00:00:00 GMT'],
      ['Set-Cookie', 'b=2; Path=/'],
      ['Content-Type', 'text/plain'],
      ['Content-Length', '2'],
    ];
    const hop: [string, string][] = [
      ['Connection', 'keep-alive, X-App-Hop'],
      ['Keep-Alive', 'timeout=30'],
      ['X-App-Hop', 'secret'],
      ['Proxy-Connection', 'keep-alive'],
      ['Upgrade', 'foo/1'],
    ];
    ch.autoReply = () =>
      `HTTP/1.1 200 OK\r\n${[
        hop[0],
        appHeaders[0],
        appHeaders[1],
        hop[1],
        appHeaders[2],
        hop[2],
        appHeaders[3],
        hop[3],
        appHeaders[4],
        hop[4],
        appHeaders[5],
        appHeaders[6],
      ]
        .map((h) => `${(h as [string, string])[0]}: ${(h as [string, string])[1]}\r\n`)
        .join('')}\r\nok`;
    const r = await visit('resp');
    expect(r.status).toBe(200);
    expect(r.body).toBe('ok');
    for (const name of ['x-app-hop', 'proxy-connection', 'upgrade'])
      expect(rawHeaderValues(r.rawHeaders, name), name).toEqual([]);
    expect(rawHeaderValues(r.rawHeaders, 'keep-alive')).not.toContain('timeout=30');
    for (const v of rawHeaderValues(r.rawHeaders, 'connection')) expect(v.toLowerCase()).not.toContain('x-app-hop');
    // The rest, in the app's order and case; the gateway's own hop may add Connection and Keep-Alive.
    const rest = pairs(r.rawHeaders).filter(([k]) => !['connection', 'keep-alive'].includes(k.toLowerCase()));
    expect(rest).toEqual(appHeaders);
  });
});

describe('spreading requests over channels', () => {
  it('consecutive requests alternate between two raw channels of one name (round robin)', async () => {
    await gateway();
    const a = await claimRaw('rr', 'rr-token', 'A');
    const b = await claimRaw('rr', 'rr-token', 'B');
    a.autoReply = () => ok('A');
    b.autoReply = () => ok('B');
    expect(g().registration('rr').channels).toHaveLength(2);
    const bodies: string[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await visit('rr', { path: `/${i}` });
      expect(r.status).toBe(200);
      bodies.push(r.body);
    }
    const [first, second] = bodies;
    expect(first).not.toBe(second);
    expect(bodies).toEqual([first, second, first, second, first, second]);
    expect(a.received).toHaveLength(3);
    expect(b.received).toHaveLength(3);
  });

  it('the Node client with connections: 3 gets requests over more than one connection', async () => {
    await gateway();
    const seen: object[] = [];
    await app(
      (req, res) => {
        seen.push(req.socket);
        res.end('ok');
      },
      { name: 'pool', connections: 3 },
    );
    await until(() => g().gateway.table.lookup('pool')?.channels.length === 3, 5_000, '3 channels');
    for (let i = 0; i < 6; i++) expect((await visit('pool', { path: `/${i}` })).status).toBe(200);
    expect(seen).toHaveLength(6);
    expect(new Set(seen).size).toBeGreaterThan(1);
    expect(new Set(seen).size).toBe(3);
  });
});

describe('queueing', () => {
  it('a request waits while the only channel is busy and is served on it once the first is answered', async () => {
    // Long enough that no request times out while the test drives it, however slow the machine.
    await gateway({ queueTimeout: 10_000 });
    const ch = await claimRaw('q');
    const slow = visit('q', { path: '/slow' });
    const r1 = await ch.next();
    expect(r1.url).toBe('/slow');
    const fast = visit('q', { path: '/fast' });
    // Queued, not sent: a request waiting in the registration's queue has not gone down a channel.
    await until(() => g().registration('q').waiting === 1, 5_000, 'the second request to queue');
    expect(ch.unread).toBe(0);
    ch.write(ok('slow done'));
    const r2 = await ch.next();
    expect(r2.url).toBe('/fast');
    // And it went down only once the first was answered: the channel received nothing between the
    // two (a request pipelined early would show up here, before /fast or twice).
    expect(ch.received.map((r) => r.url)).toEqual(['/slow', '/fast']);
    ch.write(ok('fast done'));
    const [s, f] = await Promise.all([slow, fast]);
    expect(s.status).toBe(200);
    expect(s.body).toBe('slow done');
    expect(f.status).toBe(200);
    expect(f.body).toBe('fast done');
    expect(ch.socket.destroyed).toBe(false);
    expect(g().registration('q').channels).toHaveLength(1);
    expect(g().registration('q').channels[0]?.served).toBe(2);
  });

  it('past queueTimeout the waiting request gets 503 with Retry-After naming PTTH_ERR_NO_CHANNEL (JSON on request)', async () => {
    const queueTimeout = 300;
    await gateway({ queueTimeout, reconnectWait: 5_000 });
    const ch = await claimRaw('qt');
    const busy = visit('qt', { path: '/busy' });
    await ch.next();
    const started = Date.now();
    const [text, json] = await Promise.all([
      visit('qt', { path: '/text' }),
      visit('qt', { path: '/json', headers: { accept: 'application/json' } }),
    ]);
    const elapsed = Date.now() - started;
    // Time is the behaviour: not before queueTimeout (less timer rounding), and well within
    // 10 x queueTimeout, a bound no busy machine reaches but a hang does.
    expect(elapsed).toBeGreaterThanOrEqual(queueTimeout - 20);
    expect(elapsed).toBeLessThan(10 * queueTimeout);
    expect(text.status).toBe(503);
    expect(text.headers['retry-after']).toMatch(/^\d+$/);
    expect(text.body).toContain('PTTH_ERR_NO_CHANNEL');
    expect(json.status).toBe(503);
    expect(json.headers['retry-after']).toMatch(/^\d+$/);
    expect(json.headers['content-type']).toMatch(/^application\/json/);
    const body = JSON.parse(json.body) as { error: { code: string; status: number; message: string } };
    expect(body.error.code).toBe('PTTH_ERR_NO_CHANNEL');
    expect(body.error.status).toBe(503);
    expect(typeof body.error.message).toBe('string');
    expect(body.error.message.length).toBeGreaterThan(0);
    // The busy request is unaffected and the channel took nothing else.
    ch.write(ok('busy done'));
    expect((await busy).body).toBe('busy done');
    expect(ch.received.map((r) => r.url)).toEqual(['/busy']);
  });

  it('with queueLimit: 1 a third concurrent request gets 503 PTTH_ERR_QUEUE_FULL at once', async () => {
    // "At once" without a clock: the queue timeout is a minute, so a 503 before it is not one that
    // waited in the queue (and its code says QUEUE_FULL, not NO_CHANNEL).
    await gateway({ queueLimit: 1, queueTimeout: 60_000 });
    const ch = await claimRaw('ql');
    const first = visit('ql', { path: '/1' });
    await ch.next();
    const second = visit('ql', { path: '/2' });
    await until(() => g().registration('ql').waiting === 1, 5_000, 'the second request to queue');
    const third = await visit('ql', { path: '/3', headers: { accept: 'application/json' } });
    expect(g().registration('ql').waiting, 'the third never joined the queue').toBe(1);
    expect(third.status).toBe(503);
    expect(third.headers['retry-after']).toMatch(/^\d+$/);
    expect((JSON.parse(third.body) as { error: { code: string } }).error.code).toBe('PTTH_ERR_QUEUE_FULL');
    ch.write(ok('one'));
    expect((await ch.next()).url).toBe('/2');
    ch.write(ok('two'));
    expect((await first).body).toBe('one');
    expect((await second).body).toBe('two');
  });
});

describe('lease gap', () => {
  it('a visitor arriving while the only channel is gone is served when the app reconnects within reconnectWait', async () => {
    // The app comes back as soon as the visitor waits; reconnectWait only has to outlast that step.
    await gateway({ reconnectWait: 10_000 });
    const ch1 = await claimRaw('gap', 'gap-token');
    ch1.socket.destroy();
    await until(() => g().registration('gap').channels.length === 0, 5_000, 'the channel to drop');
    const during = visit('gap', { path: '/during-gap' });
    await until(() => g().registration('gap').waiting === 1, 5_000, 'the visitor to wait');
    const ch2 = await claimRaw('gap', 'gap-token');
    const r = await ch2.next();
    expect(r.url).toBe('/during-gap');
    ch2.write(ok('back'));
    const res = await during;
    expect(res.status).toBe(200);
    expect(res.body).toBe('back');
  });

  it('a visitor in the gap gets 503 after reconnectWait when the app does not come back', async () => {
    const reconnectWait = 400;
    await gateway({ reconnectWait, queueTimeout: 60_000 });
    const ch = await claimRaw('gone', 'gone-token');
    ch.socket.destroy();
    await until(() => g().registration('gone').channels.length === 0, 5_000, 'the channel to drop');
    const started = Date.now();
    const res = await visit('gone');
    const elapsed = Date.now() - started;
    expect(res.status).toBe(503);
    // Time is the behaviour: not before reconnectWait (less timer rounding), well within
    // 10 x reconnectWait (and the minute-long queueTimeout is not what ended it).
    expect(elapsed).toBeGreaterThanOrEqual(reconnectWait - 20);
    expect(elapsed).toBeLessThan(10 * reconnectWait);
    expect(res.headers['retry-after']).toMatch(/^\d+$/);
    expect(res.body).toContain('PTTH_ERR_NO_CHANNEL');
  });
});

describe('statuses the gateway produces', () => {
  it('404 for an unknown name: HTML for text/html, JSON for application/json, plain otherwise, naming PTTH_ERR_NOT_FOUND', async () => {
    await gateway();
    const html = await visit('nobody', { headers: { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' } });
    expect(html.status).toBe(404);
    expect(html.headers['content-type']).toMatch(/^text\/html/);
    expect(html.body).toMatch(/<html/i);
    expect(html.body).toContain('PTTH_ERR_NOT_FOUND');

    const json = await visit('nobody', { headers: { accept: 'application/json' } });
    expect(json.status).toBe(404);
    expect(json.headers['content-type']).toMatch(/^application\/json/);
    const body = JSON.parse(json.body) as { error: { code: string; status: number; message: string } };
    expect(body.error).toMatchObject({ code: 'PTTH_ERR_NOT_FOUND', status: 404 });
    expect(typeof body.error.message).toBe('string');

    const plain = await visit('nobody');
    expect(plain.status).toBe(404);
    expect(plain.headers['content-type']).toMatch(/^text\/plain/);
    expect(plain.body).toContain('PTTH_ERR_NOT_FOUND');
  });

  it('504 when the app does not answer within responseTimeout', async () => {
    await gateway({ responseTimeout: 300 });
    const ch = await claimRaw('mute');
    const started = Date.now();
    const pending = visit('mute');
    await ch.next();
    const res = await pending;
    expect(res.status).toBe(504);
    expect(Date.now() - started).toBeGreaterThanOrEqual(280);
    expect(res.body).toContain('PTTH_ERR_APP_TIMEOUT');
  });

  it('502 when the app sends garbage instead of an HTTP response', async () => {
    await gateway();
    const ch = await claimRaw('junk');
    const pending = visit('junk');
    await ch.next();
    ch.write('garbage\r\n\r\n');
    const res = await pending;
    expect(res.status).toBe(502);
    expect(res.body).toContain('PTTH_ERR_BAD_RESPONSE');
  });

  it('502 when the channel closes before responding', async () => {
    await gateway();
    const ch = await claimRaw('drop');
    const pending = visit('drop', { headers: { accept: 'application/json' } });
    await ch.next();
    ch.socket.destroy();
    const res = await pending;
    expect(res.status).toBe(502);
    expect((JSON.parse(res.body) as { error: { code: string } }).error.code).toBe('PTTH_ERR_CHANNEL_LOST');
  });

  it('a channel dying mid-response after the headers were sent closes the visitor connection (Content-Length body cut short)', async () => {
    await gateway();
    const ch = await claimRaw('cut');
    const visitor = await rawVisit(`GET /cut HTTP/1.1\r\nHost: ${g().host('cut')}\r\n\r\n`);
    await ch.next();
    ch.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\npartial');
    const first = await readUntil(visitor, (b) => b.includes('partial'));
    expect(first.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    ch.socket.destroy();
    const wasClosed = await closed(visitor, 5_000);
    expect(wasClosed).toBe(true);
  });

  it('a channel dying mid-response after the headers were sent: a Node visitor sees an aborted, incomplete response (chunked)', async () => {
    await gateway();
    const ch = await claimRaw('cutc');
    const outcome = new Promise<{
      status: number;
      complete: boolean;
      body: string;
      error: string | undefined;
      hung?: true;
    }>((resolve) => {
      const req = http.request({
        host: '127.0.0.1',
        port: g().port,
        path: '/',
        headers: { host: g().host('cutc') },
        agent: false,
      });
      // A visitor left hanging (neither completed nor closed) is a failure too, reported quickly.
      const timer = setTimeout(() => {
        resolve({ status: 0, complete: false, body: '', error: undefined, hung: true });
        req.destroy();
      }, 5_000);
      req.on('close', () => clearTimeout(timer));
      req.on('response', (res) => {
        let body = '';
        let error: string | undefined;
        res.on('data', (c: Buffer) => {
          body += c.toString('utf8');
          if (body.includes('partial')) ch.socket.destroy();
        });
        res.on('error', (e) => (error = e.message));
        res.on('close', () => resolve({ status: res.statusCode ?? 0, complete: res.complete, body, error }));
      });
      req.on('error', (e) => resolve({ status: 0, complete: false, body: '', error: e.message }));
      req.end();
    });
    await ch.next();
    ch.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n');
    const o = await outcome;
    expect(o.hung).toBeUndefined();
    expect(o.status).toBe(200);
    expect(o.body).toBe('partial');
    expect(o.complete).toBe(false);
  });

  it('a failing channel does not disturb another channel of the same name or another name', async () => {
    await gateway();
    await app((_req, res) => res.end('other ok'), { name: 'other' });
    const c1 = await claimRaw('multi', 'multi-token', 'c1');
    const c2 = await claimRaw('multi', 'multi-token', 'c2');
    const x = visit('multi', { path: '/x' });
    const bad = await whichGot([c1, c2]);
    const good = bad === c1 ? c2 : c1;
    const y = visit('multi', { path: '/y' });
    expect((await good.next()).url).toBe('/y');
    expect((await bad.next()).url).toBe('/x');
    bad.write('garbage\r\n\r\n');
    expect((await x).status).toBe(502);
    // The healthy channel's in-flight request completes after the other failed.
    good.write(ok('y ok'));
    const ry = await y;
    expect(ry.status).toBe(200);
    expect(ry.body).toBe('y ok');
    good.autoReply = (r) => ok(`good ${r.url}`);
    for (const path of ['/z1', '/z2']) {
      const r = await visit('multi', { path });
      expect(r.status).toBe(200);
      expect(r.body).toBe(`good ${path}`);
    }
    const o = await visit('other');
    expect(o.status).toBe(200);
    expect(o.body).toBe('other ok');
    expect(good.socket.destroyed).toBe(false);
  });
});

describe('keep-alive on channels', () => {
  it('a raw channel serves 3 requests in sequence on the same socket', async () => {
    await gateway();
    const ch = await claimRaw('ka');
    for (let i = 1; i <= 3; i++) {
      const pending = visit('ka', { path: `/r${i}` });
      const r = await ch.next();
      expect(r.url).toBe(`/r${i}`);
      ch.write(ok(`reply ${i}`));
      const res = await pending;
      expect(res.status).toBe(200);
      expect(res.body).toBe(`reply ${i}`);
    }
    expect(ch.received).toHaveLength(3);
    expect(ch.socket.destroyed).toBe(false);
    expect(g().registration('ka').channels).toHaveLength(1);
    expect(g().registration('ka').channels[0]?.served).toBe(3);
  });

  it("the app's Keep-Alive: timeout=1 hint does not make the gateway close the channel", async () => {
    const responseTimeout = 1_500;
    await gateway({ responseTimeout });
    const ch = await claimRaw('hint');
    const clock = await claimRaw('clock');
    let closedAt: number | undefined;
    ch.socket.once('close', () => (closedAt = Date.now()));
    const first = visit('hint', { path: '/first' });
    await ch.next();
    ch.write(ok('first', 'Connection: keep-alive\r\nKeep-Alive: timeout=1\r\n'));
    const channel = g().registration('hint').channels[0];
    expect((await first).status).toBe(200);
    // The gateway's own clock says when 1 s has passed, not a sleep in the test: a request to
    // another app, sent now and never answered, gets its 504 from a responseTimeout (1.5 s) timer
    // armed after the hint arrived. Timers fire in deadline order, so by that 504 a 1 s close
    // would have happened, and its 'close' been seen here.
    const ticking = visit('clock', { path: '/never' });
    await clock.next();
    const tick = await ticking;
    expect(tick.status).toBe(504);
    expect(tick.body).toContain('PTTH_ERR_APP_TIMEOUT');
    expect(closedAt).toBeUndefined();
    expect(channel?.closed).toBe(false);
    expect(g().registration('hint').channels).toEqual([channel]);
    const second = visit('hint', { path: '/second' });
    const r = await ch.next();
    expect(r.url).toBe('/second');
    ch.write(ok('second'));
    const res = await second;
    expect(res.status).toBe(200);
    expect(res.body).toBe('second');
  });

  it('an app response with Connection: close retires that channel; the next requests go to another one without a 502', async () => {
    await gateway();
    const a = await claimRaw('retire', 'retire-token', 'A');
    const b = await claimRaw('retire', 'retire-token', 'B');
    let first = true;
    const answer = (label: string) => (): string => {
      if (first) {
        first = false;
        return `HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: ${6 + label.length}\r\n\r\nclose-${label}`;
      }
      return ok(label);
    };
    a.autoReply = answer('A');
    b.autoReply = answer('B');
    const r1 = await visit('retire', { path: '/1' });
    expect(r1.status).toBe(200);
    const retired = r1.body === 'close-A' ? 'A' : 'B';
    expect(r1.body).toBe(`close-${retired}`);
    const other = retired === 'A' ? 'B' : 'A';
    for (let i = 2; i <= 4; i++) {
      const r = await visit('retire', { path: `/${i}` });
      expect(r.status).toBe(200);
      expect(r.body).toBe(other);
    }
    await until(
      () => g().registration('retire').channels.length === 1,
      5_000,
      'the retired channel to leave the registration',
    );
    expect((retired === 'A' ? a : b).received).toHaveLength(1);
  });

  it('a request queued behind a Connection: close response is not sent on the retiring channel; it waits for another one', async () => {
    await gateway({ queueTimeout: 10_000 });
    const a = await claimRaw('retq', 'retq-token', 'A');
    const b = await claimRaw('retq', 'retq-token', 'B');
    const r1 = visit('retq', { path: '/1' });
    const x = await whichGot([a, b]);
    const y = x === a ? b : a;
    const r2 = visit('retq', { path: '/2' });
    expect((await y.next()).url).toBe('/2');
    expect((await x.next()).url).toBe('/1');
    const r3 = visit('retq', { path: '/3' });
    await until(() => g().registration('retq').waiting === 1, 5_000, 'the third request to queue');
    // x answers and closes its end, as a server does after Connection: close.
    x.write('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nbye 1');
    x.socket.end();
    const res1 = await r1;
    expect(res1.status).toBe(200);
    expect(res1.body).toBe('bye 1');
    await until(
      () => g().registration('retq').channels.length === 1,
      5_000,
      'the retired channel to leave the registration',
    );
    expect(g().registration('retq').waiting).toBe(1);
    y.write(ok('two'));
    expect((await r2).body).toBe('two');
    expect((await y.next()).url).toBe('/3');
    y.write(ok('three'));
    const res3 = await r3;
    expect(res3.status).toBe(200);
    expect(res3.body).toBe('three');
    expect(x.received.map((r) => r.url)).toEqual(['/1']);
  });
});

describe('private URL', () => {
  async function privateReq(location: string, spec: RequestSpec = {}): Promise<Reply> {
    const u = new URL(location);
    return request(g().port, { host: u.host, path: u.pathname + u.search, ...spec });
  }

  it('GET with Accept: application/json shows name, lease and channels', async () => {
    await gateway();
    const ch = await claimRaw('priv');
    expect(ch.location).toMatch(new RegExp(`^http://localhost:${g().port}/`));
    const r = await privateReq(ch.location, { headers: { accept: 'application/json' } });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^application\/json/);
    const state = JSON.parse(r.body) as { name: string; lease: number; channels: unknown[] };
    expect(state.name).toBe('priv');
    expect(typeof state.lease).toBe('number');
    expect(state.channels).toHaveLength(1);
  });

  it('PUT lease=5 changes the lease; lease=abc is refused with 400', async () => {
    await gateway();
    const ch = await claimRaw('lease');
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    const put = await privateReq(ch.location, { method: 'PUT', headers: form, body: 'lease=5' });
    expect(put.status).toBe(204);
    expect(g().registration('lease').lease).toBe(5);
    const state = JSON.parse((await privateReq(ch.location, { headers: { accept: 'application/json' } })).body) as {
      lease: number;
    };
    expect(state.lease).toBe(5);
    const bad = await privateReq(ch.location, {
      method: 'PUT',
      headers: { ...form, accept: 'application/json' },
      body: 'lease=abc',
    });
    expect(bad.status).toBe(400);
    expect((JSON.parse(bad.body) as { error: { code: string } }).error.code).toBe('PTTH_ERR_BAD_LEASE');
    expect(g().registration('lease').lease).toBe(5);
  });

  it('DELETE releases the name: 204, the name is free for another token, the private URL then answers 404', async () => {
    await gateway();
    const ch = await claimRaw('del', 'first-token');
    const del = await privateReq(ch.location, { method: 'DELETE' });
    expect(del.status).toBe(204);
    expect(await closed(ch.socket, 5_000)).toBe(true);
    expect(g().gateway.table.lookup('del')).toBeUndefined();
    const again = await claimRaw('del', 'second-token');
    expect(again.head).toMatch(/^HTTP\/1\.1 101 /);
    expect(again.location).not.toBe(ch.location);
    const old = await privateReq(ch.location, { headers: { accept: 'application/json' } });
    expect(old.status).toBe(404);
  });

  it('an unknown private URL answers 404', async () => {
    await gateway();
    const r = await request(g().port, {
      host: `localhost:${g().port}`,
      path: '/_ptth/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
      headers: { accept: 'application/json' },
    });
    expect(r.status).toBe(404);
    expect((JSON.parse(r.body) as { error: { code: string } }).error.code).toBe('PTTH_ERR_NOT_FOUND');
  });

  it('a private URL answers CORS to a DELETE preflight (the browser library releases with it), no other', async () => {
    await gateway();
    const ch = await claimRaw('cors');
    const put = await privateReq(ch.location, {
      method: 'OPTIONS',
      headers: {
        origin: 'http://page.example',
        'access-control-request-method': 'PUT',
        'access-control-request-headers': 'content-type',
      },
    });
    expect(put.status).toBe(405);
    expect(put.headers['access-control-allow-origin']).toBeUndefined();
    const r = await privateReq(ch.location, {
      method: 'OPTIONS',
      headers: { origin: 'http://page.example', 'access-control-request-method': 'DELETE' },
    });
    expect(r.status).toBe(204);
    expect(['http://page.example', '*']).toContain(r.headers['access-control-allow-origin']);
    const exposed = String(r.headers['access-control-expose-headers'] ?? '')
      .split(',')
      .map((s) => s.trim().toLowerCase());
    expect(exposed).toContain('link');
    expect(exposed).toContain('location');
    expect(String(r.headers['access-control-allow-methods'] ?? '')).toBe('DELETE');
  });
});
