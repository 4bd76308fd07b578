import * as http from 'node:http';
import type * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Tunnel } from '../../src/client/node.js';
import { MAX_SUBSCRIBERS } from '../../src/gateway/events.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { rawClaim, rawConnect, readUntil, request, startApp } from '../helpers/index.js';
import { cleanup, useGateway } from '../helpers/fixture.js';
import type { TestGateway } from '../helpers/index.js';
import { CometApp } from '../helpers/comet.js';
import { RawWsApp } from '../helpers/wsapp.js';

/*
 * A name's event stream: `GET <private URL>/events` (server-sent events), one `request` event per
 * finished exchange, heads and the start of bodies with ?detail=1, `released` at the end, bounded
 * subscribers and unsent bytes.
 */

function gateway(options: GatewayOptions = {}): Promise<TestGateway> {
  return useGateway(options);
}

async function app(gw: TestGateway, handler: http.RequestListener, name: string): Promise<Tunnel> {
  const t = await startApp(gw.port, handler, { name });
  cleanup(() => t.close());
  return t;
}

interface SseEvent {
  event: string;
  data: unknown;
}

interface RequestData {
  id: number;
  time: number;
  method: string;
  url: string;
  status: number;
  ms: number;
  bytesIn: number;
  bytesOut: number;
  error: string | null;
  remote: string;
  request?: { headers: string[]; body: string; bodyBytes: number; truncated: boolean };
  response?: { headers: string[]; body: string; truncated: boolean } | null;
}

/** A subscriber reading the stream with node's HTTP client; `next(n)` waits for n events in all. */
class Follower {
  readonly events: SseEvent[] = [];
  /** Comment lines (`: ok`, `: keep-alive`), in order. */
  readonly comments: string[] = [];
  text = '';
  ended = false;
  #waiters: (() => void)[] = [];

  constructor(readonly res: http.IncomingMessage) {
    res.setEncoding('utf8');
    res.on('data', (c: string) => {
      this.text += c;
      let end: number;
      while ((end = this.text.indexOf('\n\n')) !== -1) {
        const block = this.text.slice(0, end);
        this.text = this.text.slice(end + 2);
        if (block.startsWith(':')) this.comments.push(block);
        const ev = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (ev !== undefined && data !== undefined) this.events.push({ event: ev, data: JSON.parse(data) as unknown });
      }
      this.#wake();
    });
    res.on('end', () => {
      this.ended = true;
      this.#wake();
    });
    res.on('close', () => {
      this.ended = true;
      this.#wake();
    });
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Resolves once `check()` holds (re-checked on every chunk and at the end). */
  async when(check: () => boolean, what: string): Promise<void> {
    while (!check()) {
      if (this.ended) throw new Error(`stream ended before ${what}`);
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }

  async next(n: number): Promise<RequestData[]> {
    await this.when(() => this.events.length >= n, `${n} events`);
    return this.requests();
  }

  requests(): RequestData[] {
    return this.events.filter((e) => e.event === 'request').map((e) => e.data as RequestData);
  }
}

/** Opens `<private URL><suffix>`; resolves with the response (its body not read yet). */
function get(
  gw: TestGateway,
  privateUrl: string,
  suffix: string,
  headers: http.OutgoingHttpHeaders = {},
): Promise<http.IncomingMessage> {
  const u = new URL(privateUrl);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: gw.port,
      path: `${u.pathname}${suffix}`,
      headers: { host: u.host, ...headers },
      agent: false,
    });
    req.on('response', resolve);
    req.on('error', reject);
    req.end();
  });
}

async function follow(gw: TestGateway, t: Tunnel, query = ''): Promise<Follower> {
  const res = await get(gw, t.privateUrl ?? '', `/events${query}`, { origin: 'http://evil.example' });
  expect(res.statusCode).toBe(200);
  const f = new Follower(res);
  cleanup(() => res.destroy());
  // The `: ok` comment: the subscription is in place before the test sends requests.
  await f.when(() => f.comments.length > 0, 'the ok comment');
  return f;
}

const echo: http.RequestListener = (req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    res.writeHead(200, { 'content-type': 'text/plain', 'x-app': 'yes' });
    res.end(body.length > 0 ? body : `you asked for ${req.url ?? ''}`);
  });
};

describe('GET <private URL>/events', () => {
  it('streams one request event per exchange, in order, with the contract fields and no CORS', async () => {
    const gw = await gateway();
    const t = await app(gw, echo, 'ev1');
    const res = await get(gw, t.privateUrl ?? '', '/events', { origin: 'http://evil.example' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream');
    expect(res.headers['cache-control']).toBe('no-store');
    expect(Object.keys(res.headers).filter((h) => h.startsWith('access-control-'))).toEqual([]);
    const f = new Follower(res);
    cleanup(() => res.destroy());
    await f.when(() => f.comments.length > 0, 'the ok comment');
    expect(f.comments[0]).toBe(': ok');

    const before = Date.now();
    const a = await request(gw.port, { host: gw.host('ev1'), path: '/search?q=1&r=two' });
    expect(a.status).toBe(200);
    const b = await request(gw.port, { host: gw.host('ev1'), method: 'POST', path: '/form', body: 'hello=world' });
    expect(b.body).toBe('hello=world');
    const [e1, e2] = await f.next(2);
    expect(e1).toMatchObject({
      method: 'GET',
      url: '/search?q=1&r=two',
      status: 200,
      bytesIn: 0,
      bytesOut: a.bytes.length,
      error: null,
      remote: '127.0.0.1',
    });
    expect(e2).toMatchObject({ method: 'POST', url: '/form', status: 200, bytesIn: 11, bytesOut: 11, error: null });
    expect(e2!.id).toBeGreaterThan(e1!.id);
    expect(e1!.time).toBeGreaterThanOrEqual(before - 1);
    expect(e1!.time).toBeLessThanOrEqual(Date.now());
    expect(typeof e1!.ms).toBe('number');
    expect(e1!.request).toBeUndefined();
    expect(e1!.response).toBeUndefined();
  });

  it('a burst of exchanges ending together: every event arrives once, in id order, before released', async () => {
    // Frames that end in one turn of the event loop go out in one write (events.ts, Topic.#send):
    // none may be lost, duplicated, reordered, or left behind by the release.
    const gw = await gateway();
    const t = await app(gw, echo, 'evburst');
    const f = await follow(gw, t);
    const n = 60;
    const answers = await Promise.all(
      Array.from({ length: n }, (_, i) => request(gw.port, { host: gw.host('evburst'), path: `/b/${i}` })),
    );
    expect(answers.every((a) => a.status === 200)).toBe(true);
    const events = await f.next(n);
    expect(events).toHaveLength(n);
    expect(new Set(events.map((e) => e.url))).toEqual(new Set(answers.map((_, i) => `/b/${i}`)));
    const ids = events.map((e) => e.id);
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(new Set(ids).size).toBe(n);
    await t.close();
    await f.when(() => f.ended, 'the end of the stream');
    expect(f.events.at(-1)).toEqual({ event: 'released', data: {} });
    expect(f.requests()).toHaveLength(n);
  });

  it('?detail=1 adds the forwarded request head, the sent response head and the first KiB of bodies', async () => {
    const gw = await gateway();
    const t = await app(gw, echo, 'ev2');
    const f = await follow(gw, t, '?detail=1');
    const big = Buffer.alloc(5 * 1024, 'abcdefgh');
    const mine = { 'x-mine': 'm' };
    await request(gw.port, { host: gw.host('ev2'), method: 'PUT', path: '/big', body: big, headers: mine });
    await request(gw.port, { host: gw.host('ev2'), method: 'POST', path: '/small', body: 'tiny' });
    const [e1, e2] = await f.next(2);
    expect(e1).toMatchObject({ method: 'PUT', url: '/big', status: 200, bytesIn: 5120, bytesOut: 5120 });
    const rq = e1!.request!;
    expect(rq.bodyBytes).toBe(5120);
    expect(rq.truncated).toBe(true);
    expect(Buffer.from(rq.body, 'base64')).toEqual(big.subarray(0, 1024));
    const names = rq.headers.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
    expect(names).toContain('x-mine');
    expect(names).toContain('x-forwarded-for');
    const rs = e1!.response!;
    expect(rs.truncated).toBe(true);
    expect(Buffer.from(rs.body, 'base64')).toEqual(big.subarray(0, 1024));
    const sent = rs.headers.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
    expect(sent).toContain('x-app');
    expect(sent).toContain('content-type');
    expect(e2!.request).toMatchObject({ bodyBytes: 4, truncated: false, body: Buffer.from('tiny').toString('base64') });
    expect(e2!.response).toMatchObject({ truncated: false, body: Buffer.from('tiny').toString('base64') });
  });

  it('reports the gateway answers for a registered name (502, 504) and ends with released on DELETE', async () => {
    const gw = await gateway({ responseTimeout: 300 });
    // Two raw PTTH channels: one drops its connection on /broken (502), the other never answers /slow (504).
    const claim = (): string =>
      `POST /?name=ev3&token=t0k HTTP/1.1\r\nHost: 127.0.0.1:${gw.port}\r\n` +
      'Upgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n';
    const channels = [await rawClaim(gw.port, claim()), await rawClaim(gw.port, claim())];
    for (const c of channels) {
      expect(c.head).toMatch(/^HTTP\/1\.1 101/);
      cleanup(() => c.socket.destroy());
      c.socket.on('error', () => {});
      c.socket.on('data', (b: Buffer) => {
        if (b.includes('GET /broken')) c.socket.destroy();
      });
      c.socket.resume();
    }
    const location = /\r\nLocation: ([^\r\n]+)/i.exec(channels[0]!.head)?.[1] ?? '';
    const t = { privateUrl: location } as Tunnel;
    const f = await follow(gw, t);
    const slow = await request(gw.port, { host: gw.host('ev3'), path: '/slow' });
    expect(slow.status).toBe(504);
    const [e1] = await f.next(1);
    expect(e1).toMatchObject({ url: '/slow', status: 504, error: slow.headers['x-ptth-error'] });
    expect(String(e1!.error)).toMatch(/^PTTH_ERR_/);
    const broken = await request(gw.port, { host: gw.host('ev3'), path: '/broken' });
    expect(broken.status).toBe(502);
    const [, e2] = await f.next(2);
    expect(e2).toMatchObject({ url: '/broken', status: 502, error: broken.headers['x-ptth-error'] });
    expect(String(e2!.error)).toMatch(/^PTTH_ERR_/);

    const u = new URL(t.privateUrl ?? '');
    const del = await request(gw.port, { host: u.host, method: 'DELETE', path: u.pathname });
    expect(del.status).toBe(204);
    await f.when(() => f.ended, 'the end of the stream');
    expect(f.events.at(-1)).toEqual({ event: 'released', data: {} });
  });

  it('reports exchanges over every transport: HTTP/1.1, HTTP/2, WebSocket channel, Comet', async () => {
    const gw = await gateway();
    const h1 = await startApp(gw.port, echo, { name: 'ev-h1', http1: true });
    cleanup(() => h1.close());
    const h2 = await app(gw, echo, 'ev-h2');
    const ws = await RawWsApp.connect(gw.port, { name: 'ev-ws' });
    cleanup(() => ws.close());
    const comet = await CometApp.start(gw.origin, { name: 'ev-comet' }, () => ({ status: 200, body: 'comet ok' }));
    cleanup(() => void comet.stop().catch(() => undefined));
    const apps: [string, string][] = [
      ['ev-h1', h1.privateUrl ?? ''],
      ['ev-h2', h2.privateUrl ?? ''],
      ['ev-ws', String(ws.hello?.['location'] ?? '')],
      ['ev-comet', comet.location],
    ];
    for (const [name, privateUrl] of apps) {
      const f = await follow(gw, { privateUrl } as Tunnel, '?detail=1');
      const reply = request(gw.port, { host: gw.host(name), path: `/via?${name}` });
      if (name === 'ev-ws') {
        const rq = await ws.control('request');
        ws.respond(rq.id ?? 0, 200, 'ws ok');
      }
      const r = await reply;
      expect(r.status, name).toBe(200);
      const [e] = await f.next(1);
      expect(e, name).toMatchObject({ method: 'GET', url: `/via?${name}`, status: 200, error: null });
      expect(Buffer.from(e!.response!.body, 'base64'), name).toEqual(r.bytes);
      expect(e!.bytesOut, name).toBe(r.bytes.length);
    }
  });

  it('404 for an unknown private id, 405 for other methods', async () => {
    const gw = await gateway();
    const r = await request(gw.port, { path: '/_ptth/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/events' });
    expect(r.status).toBe(404);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_NOT_FOUND');
    const t = await app(gw, echo, 'ev4');
    const u = new URL(t.privateUrl ?? '');
    const post = await request(gw.port, { host: u.host, method: 'POST', path: `${u.pathname}/events` });
    expect(post.status).toBe(405);
    expect(post.headers['allow']).toBe('GET');
  });

  it(`refuses subscriber ${MAX_SUBSCRIBERS + 1} with 429 and takes one again when a place frees`, async () => {
    const gw = await gateway();
    const t = await app(gw, echo, 'ev5');
    const fs: Follower[] = [];
    const firstSide = new Promise<net.Socket>((resolve) => gw.gateway.server.once('connection', resolve));
    for (let i = 0; i < MAX_SUBSCRIBERS; i++) fs.push(await follow(gw, t));
    const u = new URL(t.privateUrl ?? '');
    const ninth = await request(gw.port, { host: u.host, path: `${u.pathname}/events` });
    expect(ninth.status).toBe(429);
    expect(ninth.headers['x-ptth-error']).toBe('PTTH_ERR_TOO_MANY_SUBSCRIBERS');
    expect(ninth.headers['access-control-allow-origin']).toBeUndefined();
    // Every subscriber gets the same event.
    await request(gw.port, { host: gw.host('ev5'), path: '/all' });
    for (const f of fs) expect((await f.next(1))[0]).toMatchObject({ url: '/all' });
    // The first subscriber leaves: once the gateway saw its connection close, a new one fits.
    const side = await firstSide;
    const left = new Promise((r) => side.once('close', r));
    fs[0]!.res.destroy();
    await left;
    await new Promise((r) => setImmediate(r));
    const again = await get(gw, t.privateUrl ?? '', '/events');
    cleanup(() => again.destroy());
    expect(again.statusCode).toBe(200);
  });

  it('disconnects a subscriber that stopped reading once 1 MiB is unsent, and keeps serving', async () => {
    const gw = await gateway();
    const t = await app(gw, echo, 'ev6');
    const u = new URL(t.privateUrl ?? '');
    // The gateway's side of the subscriber's connection: its close is what this test waits for.
    const serverSide = new Promise<net.Socket>((resolve) => gw.gateway.server.once('connection', resolve));
    const stuck = await rawConnect(gw.port);
    cleanup(() => stuck.destroy());
    stuck.write(`GET ${u.pathname}/events?detail=1 HTTP/1.1\r\nHost: ${u.host}\r\n\r\n`);
    const head = await readUntil(stuck, (b) => b.includes(': ok\n\n'));
    expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
    // readUntil paused the socket: from now on the subscriber reads nothing.
    const side = await serverSide;
    let gone = false;
    side.once('close', () => (gone = true));
    // Large request heads make each detail event big (12 KiB): the socket buffers fill in fewer requests.
    const filler = 'x'.repeat(12 * 1024);
    let sent = 0;
    while (!gone) {
      const headers = { 'x-filler': filler };
      const r = await request(gw.port, { host: gw.host('ev6'), path: `/fill/${sent}`, headers });
      expect(r.status).toBe(200);
      sent++;
      if (sent > 5_000) throw new Error('the stuck subscriber was never disconnected');
    }
    expect(sent * filler.length).toBeGreaterThan(1024 * 1024);
    expect(side.destroyed).toBe(true);
    // The registration lives and the gateway serves, to the name and to new subscribers.
    const f = await follow(gw, t);
    const after = await request(gw.port, { host: gw.host('ev6'), path: '/after' });
    expect(after.status).toBe(200);
    expect((await f.next(1))[0]).toMatchObject({ url: '/after' });
    // What the subscriber had not read drains, then its connection ends: no `released` event.
    const rest = await readUntil(stuck, () => false, 10_000);
    expect(stuck.destroyed).toBe(true);
    expect(rest.includes('event: released')).toBe(false);
  });
});
