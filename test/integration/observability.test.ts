import { spawn } from 'node:child_process';
import type * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type * as net from 'node:net';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createAdminServer } from '../../src/gateway/endpoints.js';
import type { RequestEvent } from '../../src/gateway/eventmap.js';
import { createGateway, type Gateway, type GatewayOptions } from '../../src/gateway/server.js';
import type { Tunnel } from '../../src/client/node.js';
import { attachLogger, createLogger } from '../../src/log.js';
import {
  rawClaim,
  rawConnect,
  readUntil,
  request,
  startApp,
  until,
  type Reply,
  type TestGateway,
} from '../helpers/index.js';
import { cleanup, track, useGateway } from '../helpers/fixture.js';
import { RawWsApp, wsRefusal } from '../helpers/wsapp.js';
import { fetchRaw, register } from '../helpers/comet.js';

/*
 * Logs, metrics and health: /metrics scraped after real traffic through
 * real apps, /healthz and /readyz on the gateway host and on an admin server, and the pino lines
 * a gateway's events become.
 */

function gateway(options: GatewayOptions = {}): Promise<TestGateway> {
  return useGateway(options);
}

async function app(
  gw: TestGateway,
  handler: http.RequestListener,
  options: Parameters<typeof startApp>[2] = {},
): Promise<Tunnel> {
  const t = await startApp(gw.port, handler, options);
  cleanup(() => t.close());
  return t;
}

/** `name{labels}` -> value for every sample of a Prometheus text exposition. */
function samples(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

async function scrape(port: number): Promise<Map<string, number>> {
  const r = await request(port, { path: '/metrics' });
  expect(r.status).toBe(200);
  return samples(r.body);
}

function value(m: Map<string, number>, key: string): number {
  const v = m.get(key);
  if (v === undefined) throw new Error(`no sample ${key}`);
  return v;
}

/** Resolves with the next `request` event for `name`. */
function nextRequest(g: Gateway, name: string): Promise<RequestEvent> {
  return new Promise((resolve) => {
    const on = (r: RequestEvent): void => {
      if (r.name !== name) return;
      g.removeListener('request', on);
      resolve(r);
    };
    g.on('request', on);
  });
}

function listenAdmin(g: Gateway): Promise<number> {
  const server = createAdminServer(g);
  cleanup(() => new Promise((r) => server.close(r)));
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

const echo: http.RequestListener = (req, res) => {
  if (req.url === '/fail') {
    req.resume();
    res.writeHead(500).end('boom');
    return;
  }
  if (req.url === '/stream') {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('a'.repeat(10_000));
    setImmediate(() => {
      res.write('b'.repeat(20_000));
      res.end('c'.repeat(5));
    });
    return;
  }
  let n = 0;
  req.on('data', (c: Buffer) => (n += c.length));
  req.on('end', () => res.end(`got ${n}`));
};

describe('/metrics', () => {
  it('counts requests by status class, body bytes both ways and latencies after real traffic', async () => {
    const gw = await gateway();
    await app(gw, echo, { name: 'm' });
    const before = await scrape(gw.port);
    expect(value(before, 'ptth_requests_total{status_class="2xx"}')).toBe(0);
    expect(value(before, 'ptth_request_duration_seconds_count')).toBe(0);

    const replies: Reply[] = [];
    for (let i = 0; i < 3; i++) replies.push(await request(gw.port, { host: gw.host('m'), path: `/x?i=${i}` }));
    replies.push(await request(gw.port, { host: gw.host('m'), method: 'POST', body: 'x'.repeat(1000) }));
    // A chunked request body is counted as the bytes of its chunks, not of its framing.
    replies.push(
      await request(gw.port, {
        host: gw.host('m'),
        method: 'POST',
        headers: { 'transfer-encoding': 'chunked' },
        body: 'y'.repeat(300),
      }),
    );
    replies.push(await request(gw.port, { host: gw.host('m'), path: '/stream' }));
    replies.push(await request(gw.port, { host: gw.host('m'), path: '/fail' }));
    replies.push(await request(gw.port, { host: gw.host('nobody') }));
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200, 500, 404]);
    expect(replies[3]?.body).toBe('got 1000');
    expect(replies[4]?.body).toBe('got 300');
    expect(replies[5]?.body.length).toBe(30_005);

    const m = await scrape(gw.port);
    expect(value(m, 'ptth_requests_total{status_class="2xx"}')).toBe(6);
    expect(value(m, 'ptth_requests_total{status_class="4xx"}')).toBe(1);
    expect(value(m, 'ptth_requests_total{status_class="5xx"}')).toBe(1);
    expect(value(m, 'ptth_request_duration_seconds_count')).toBe(8);
    expect(value(m, 'ptth_request_duration_seconds_bucket{le="+Inf"}')).toBe(8);
    expect(value(m, 'ptth_request_duration_seconds_sum')).toBeGreaterThan(0);
    expect(value(m, 'ptth_request_bytes_total')).toBe(1300);
    // Every body byte the visitors received, the gateway's own 404 page included.
    expect(value(m, 'ptth_response_bytes_total')).toBe(replies.reduce((n, r) => n + Buffer.byteLength(r.body), 0));
    expect(value(m, 'ptth_request_errors_total{code="PTTH_ERR_NOT_FOUND"}')).toBe(1);
    // The app's own 500 is not a gateway error.
    expect([...m.keys()].filter((k) => k.startsWith('ptth_request_errors_total'))).toEqual([
      'ptth_request_errors_total{code="PTTH_ERR_NOT_FOUND"}',
    ]);
  });

  it('serves the Prometheus text format with its Content-Type, HEAD included, and process metrics', async () => {
    const gw = await gateway();
    const r = await request(gw.port, { path: '/metrics' });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(r.body).toContain('# TYPE ptth_requests_total counter');
    expect(r.body).toContain('# TYPE ptth_request_duration_seconds histogram');
    expect(r.body).toContain('# TYPE ptth_channels gauge');
    expect(r.body).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(r.body).toMatch(/^nodejs_eventloop_lag_seconds \d/m);
    const head = await request(gw.port, { path: '/metrics', method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    const post = await request(gw.port, { path: '/metrics', method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers['allow']).toBe('GET, HEAD');
  });

  it('reports registrations, channels by transport and claims from the table as it is when scraped', async () => {
    const gw = await gateway();
    const empty = await scrape(gw.port);
    expect(value(empty, 'ptth_registrations')).toBe(0);
    for (const t of ['http1', 'http2', 'websocket', 'comet'])
      expect(value(empty, `ptth_channels{transport="${t}"}`)).toBe(0);

    const one = await app(gw, echo, { name: 'one', http1: true, connections: 2 });
    await until(() => gw.gateway.table.lookup('one')?.channels.length === 2, 3_000, 'two HTTP/1.1 channels');
    await app(gw, echo, { name: 'two' });
    const ws = await RawWsApp.connect(gw.port, { name: 'three' });
    cleanup(() => ws.ws.terminate());
    const m = await scrape(gw.port);
    expect(value(m, 'ptth_registrations')).toBe(3);
    expect(value(m, 'ptth_registered_total')).toBe(3);
    expect(value(m, 'ptth_channels{transport="http1"}')).toBe(2);
    expect(value(m, 'ptth_channels{transport="http2"}')).toBe(1);
    expect(value(m, 'ptth_channels{transport="websocket"}')).toBe(1);
    expect(value(m, 'ptth_claims_total{transport="http1"}')).toBe(2);
    expect(value(m, 'ptth_claims_total{transport="http2"}')).toBe(1);
    expect(value(m, 'ptth_claims_total{transport="websocket"}')).toBe(1);
    expect(value(m, 'ptth_channels_opened_total{transport="http1"}')).toBe(2);

    await one.close();
    const after = await scrape(gw.port);
    expect(value(after, 'ptth_registrations')).toBe(2);
    expect(value(after, 'ptth_channels{transport="http1"}')).toBe(0);
    expect(value(after, 'ptth_channels_closed_total{transport="http1"}')).toBe(2);
    expect(value(after, 'ptth_released_total{reason="deleted"}')).toBe(1);
  });

  it('counts refused claims by code', async () => {
    const gw = await gateway();
    await app(gw, echo, { name: 'held', token: 'right-token' });
    const claim = (query: string): string =>
      `POST /?${query} HTTP/1.1\r\nHost: localhost:${gw.port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`;
    const bad = await rawClaim(gw.port, claim('name=-bad-'));
    track(bad.socket);
    expect(bad.head).toMatch(/^HTTP\/1\.1 400 /);
    for (let i = 0; i < 2; i++) {
      const wrong = await rawClaim(gw.port, claim('name=held&token=wrong-token'));
      track(wrong.socket);
      expect(wrong.head).toMatch(/^HTTP\/1\.1 403 /);
    }
    const m = await scrape(gw.port);
    expect(value(m, 'ptth_claims_refused_total{code="PTTH_ERR_BAD_NAME"}')).toBe(1);
    expect(value(m, 'ptth_claims_refused_total{code="PTTH_ERR_TOKEN_MISMATCH"}')).toBe(2);
  });

  it('counts a request whose visitor left before any response head in class 0xx, and queue depth while it waits', async () => {
    const gw = await gateway();
    let arrived = 0;
    await app(
      gw,
      (req) => {
        arrived++;
        req.resume(); // never answered
      },
      { name: 'slow', http1: true, connections: 1 },
    );
    await until(() => gw.gateway.table.lookup('slow')?.channels.length === 1, 3_000, 'one channel');
    // The only channel is busy with the first request: the second waits in the queue.
    const first = await rawConnect(gw.port);
    track(first);
    first.write(`GET / HTTP/1.1\r\nHost: ${gw.host('slow')}\r\n\r\n`);
    await until(() => arrived === 1, 3_000, 'the first request at the app');
    const second = await rawConnect(gw.port);
    track(second);
    second.write(`GET /q HTTP/1.1\r\nHost: ${gw.host('slow')}\r\n\r\n`);
    await until(() => gw.gateway.table.lookup('slow')?.waiting === 1, 3_000, 'a queued request');
    expect(value(await scrape(gw.port), 'ptth_queue_depth')).toBe(1);

    const gone = nextRequest(gw.gateway, 'slow');
    second.destroy();
    const r = await gone;
    expect(r.status).toBe(0);
    expect(r.path).toBe('/q');
    const m = await scrape(gw.port);
    expect(value(m, 'ptth_queue_depth')).toBe(0);
    expect(value(m, 'ptth_requests_total{status_class="0xx"}')).toBe(1);
  });

  it('counts and logs visitor requests refused by the rate limit', async () => {
    const gw = await gateway({ requestRate: '1/m', limitLoopback: true });
    const dest = capture();
    attachLogger(gw.gateway, createLogger({ destination: dest }));
    await app(gw, echo, { name: 'limited' });
    expect((await request(gw.port, { host: gw.host('limited') })).status).toBe(200);
    const refused = await request(gw.port, { host: gw.host('limited'), path: '/again?x=1' });
    expect(refused.status).toBe(429);
    const m = await scrape(gw.port);
    expect(value(m, 'ptth_requests_total{status_class="2xx"}')).toBe(1);
    expect(value(m, 'ptth_requests_total{status_class="4xx"}')).toBe(1);
    expect(value(m, 'ptth_request_errors_total{code="PTTH_ERR_RATE_LIMITED"}')).toBe(1);
    expect(dest.lines.filter((l) => l.event === 'request')[1]).toMatchObject({
      name: 'limited',
      path: '/again',
      status: 429,
      error: 'PTTH_ERR_RATE_LIMITED',
      bytesOut: Buffer.byteLength(refused.body),
    });
  });

  it('two gateways in one process keep separate metrics', async () => {
    const a = await gateway();
    const b = await gateway();
    await request(a.port, { host: a.host('nobody') });
    await request(a.port, { host: a.host('nobody') });
    expect(value(await scrape(a.port), 'ptth_requests_total{status_class="4xx"}')).toBe(2);
    expect(value(await scrape(b.port), 'ptth_requests_total{status_class="4xx"}')).toBe(0);
    expect(a.gateway.metrics?.registry).not.toBe(b.gateway.metrics?.registry);
  });

  it('metrics: false leaves no /metrics, no registry and no request events, and health still answers', async () => {
    const gw = await gateway({ metrics: false });
    expect(gw.gateway.metrics).toBeUndefined();
    expect(gw.gateway.listenerCount('request')).toBe(0);
    const r = await request(gw.port, { path: '/metrics' });
    expect(r.status).toBe(404);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_NO_ENDPOINT');
    expect((await request(gw.port, { path: '/healthz' })).status).toBe(200);
    // Requests still flow through the unobserved path.
    await app(gw, echo, { name: 'plain' });
    expect((await request(gw.port, { host: gw.host('plain'), method: 'POST', body: 'abc' })).body).toBe('got 3');
  });

  it('lists the endpoints on the status page', async () => {
    const gw = await gateway();
    const page = await request(gw.port, { headers: { accept: 'text/html' } });
    expect(page.body).toContain('href="/metrics"');
    expect(page.body).toContain('href="/readyz"');
    const hidden = await gateway({ metricsOnGateway: false });
    const page2 = await request(hidden.port, { headers: { accept: 'text/html' } });
    expect(page2.body).not.toContain('href="/metrics"');
    expect(page2.body).toContain('href="/healthz"');
  });
});

describe('/healthz and /readyz', () => {
  it('answer 200 ok on the gateway host while it serves, HEAD too; other methods get 405', async () => {
    const gw = await gateway();
    for (const path of ['/healthz', '/readyz']) {
      const r = await request(gw.port, { path });
      expect(r.status).toBe(200);
      expect(r.body).toBe('ok\n');
      expect(r.headers['content-type']).toBe('text/plain; charset=utf-8');
      expect(r.headers['cache-control']).toBe('no-store');
      expect((await request(gw.port, { path, method: 'HEAD' })).status).toBe(200);
      expect((await request(gw.port, { path, method: 'DELETE' })).status).toBe(405);
    }
    // Only on the gateway host: on an app host the path belongs to the app.
    await app(gw, (req, res) => res.end(`app saw ${req.url}`), { name: 'mine' });
    expect((await request(gw.port, { host: gw.host('mine'), path: '/healthz' })).body).toBe('app saw /healthz');
  });

  it('/readyz answers 503 on the gateway host once close() began, /healthz still 200', async () => {
    const gw = await gateway();
    // Connections that already began a request are not idle, so close() leaves them to finish it.
    const accepted: net.Socket[] = [];
    gw.gateway.server.on('connection', (s: net.Socket) => accepted.push(s));
    const ready = await rawConnect(gw.port);
    const live = await rawConnect(gw.port);
    track(ready);
    track(live);
    ready.write(`GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:${gw.port}\r\n`);
    live.write(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${gw.port}\r\n`);
    await until(
      () => accepted.length === 2 && accepted.every((s) => s.bytesRead > 0),
      3_000,
      'both heads begun at the gateway',
    );
    const closing = gw.gateway.close(300);
    expect(gw.gateway.ready).toBe(false);
    ready.write('\r\n');
    live.write('\r\n');
    const [r, h] = await Promise.all([
      readUntil(ready, (b) => b.includes('shutting down\n')),
      readUntil(live, (b) => b.includes('ok\n')),
    ]);
    expect(r.toString('latin1')).toMatch(/^HTTP\/1\.1 503 /);
    expect(r.toString('latin1')).toContain('shutting down\n');
    expect(h.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    await closing;
  });
});

describe('admin server', () => {
  it('serves /metrics, /healthz and /readyz and nothing else; /metrics can be kept off the gateway host', async () => {
    const gw = await gateway({ metricsOnGateway: false });
    const admin = await listenAdmin(gw.gateway);
    await request(gw.port, { host: gw.host('nobody') });

    const pub = await request(gw.port, { path: '/metrics' });
    expect(pub.status).toBe(404);
    expect(pub.headers['x-ptth-error']).toBe('PTTH_ERR_NO_ENDPOINT');
    const m = await request(admin, { path: '/metrics' });
    expect(m.status).toBe(200);
    expect(m.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(value(samples(m.body), 'ptth_requests_total{status_class="4xx"}')).toBe(1);
    expect((await request(admin, { path: '/healthz' })).body).toBe('ok\n');
    expect((await request(admin, { path: '/readyz' })).status).toBe(200);
    const other = await request(admin, { path: '/' });
    expect(other.status).toBe(404);
    expect(other.headers['x-ptth-error']).toBe('PTTH_ERR_NO_ENDPOINT');
    expect((await request(admin, { path: '/_ptth/x' })).status).toBe(404);
  });

  it('/readyz turns 503 while the gateway drains in-flight requests and stays so after; /healthz stays 200', async () => {
    const gw = await gateway();
    const admin = await listenAdmin(gw.gateway);
    let release: (() => void) | undefined;
    await app(
      gw,
      (req, res) => {
        req.resume();
        release = () => res.end('late');
      },
      { name: 'busy' },
    );
    const pending = request(gw.port, { host: gw.host('busy') });
    await until(() => release !== undefined, 3_000, 'the request at the app');
    const closing = gw.gateway.close(3_000);
    const r = await request(admin, { path: '/readyz' });
    expect(r.status).toBe(503);
    expect(r.body).toBe('shutting down\n');
    expect((await request(admin, { path: '/healthz' })).status).toBe(200);
    expect((await request(admin, { path: '/metrics' })).status).toBe(200);
    release?.();
    expect((await pending).body).toBe('late');
    await closing;
    expect((await request(admin, { path: '/readyz' })).status).toBe(503);
  });

  it('/readyz is 503 before the gateway listens', async () => {
    const g = createGateway();
    const admin = await listenAdmin(g);
    expect((await request(admin, { path: '/readyz' })).status).toBe(503);
    expect((await request(admin, { path: '/healthz' })).status).toBe(200);
    await g.close(0);
  });
});

interface Line {
  level: number;
  msg: string;
  event: string;
  [field: string]: unknown;
}

/** A pino destination that keeps every line, parsed. */
function capture(): { lines: Line[]; write(s: string): void } {
  const lines: Line[] = [];
  return { lines, write: (s: string) => void lines.push(JSON.parse(s) as Line) };
}

describe('logs', () => {
  it('writes one JSON line per visitor request with its fields, the query string left out', async () => {
    const gw = await gateway();
    const dest = capture();
    attachLogger(gw.gateway, createLogger({ destination: dest }), { requests: true });
    await app(gw, echo, { name: 'logged' });
    await request(gw.port, {
      host: gw.host('logged'),
      method: 'POST',
      path: '/upload?secret=hunter2',
      body: 'z'.repeat(42),
    });
    await request(gw.port, { host: gw.host('ghost'), path: '/a?b=c' });
    const reqs = dest.lines.filter((l) => l.event === 'request');
    expect(reqs).toHaveLength(2);
    const [ok, missing] = reqs as [Line, Line];
    expect(ok).toMatchObject({
      level: 30,
      name: 'logged',
      method: 'POST',
      path: '/upload',
      status: 200,
      bytesIn: 42,
      bytesOut: 6,
      remote: '127.0.0.1',
    });
    expect(typeof ok['ms']).toBe('number');
    expect(typeof ok['time']).toBe('number');
    expect(ok).not.toHaveProperty('error');
    expect(JSON.stringify(dest.lines)).not.toContain('hunter2');
    expect(missing).toMatchObject({
      name: 'ghost',
      method: 'GET',
      path: '/a',
      status: 404,
      bytesIn: 0,
      error: 'PTTH_ERR_NOT_FOUND',
    });
  });

  it('logs a gateway-answered 5xx at warn with its error code', async () => {
    const gw = await gateway({ responseTimeout: 200 });
    const dest = capture();
    attachLogger(gw.gateway, createLogger({ destination: dest }), { requests: true });
    await app(gw, (req) => req.resume(), { name: 'mute' });
    const r = await request(gw.port, { host: gw.host('mute') });
    expect(r.status).toBe(504);
    await until(() => dest.lines.some((l) => l.event === 'request'), 3_000, 'the request line');
    expect(dest.lines.find((l) => l.event === 'request')).toMatchObject({
      level: 40,
      status: 504,
      error: 'PTTH_ERR_APP_TIMEOUT',
    });
    expect(value(await scrape(gw.port), 'ptth_request_errors_total{code="PTTH_ERR_APP_TIMEOUT"}')).toBe(1);
  });

  it('always logs claims, refusals with their code, registrations, channels and releases; request lines only when asked', async () => {
    const gw = await gateway();
    const dest = capture();
    attachLogger(gw.gateway, createLogger({ destination: dest }), { requests: false });
    const t = await app(gw, echo, { name: 'life', token: 'life-token', http1: true, connections: 1 });
    await request(gw.port, { host: gw.host('life') });
    const refused = await rawClaim(
      gw.port,
      `POST /?name=life&token=other HTTP/1.1\r\nHost: localhost:${gw.port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
    );
    track(refused.socket);
    await t.close();
    await until(() => dest.lines.some((l) => l.event === 'release'), 3_000, 'the release line');

    const by = (event: string): Line[] => dest.lines.filter((l) => l.event === event);
    expect(by('request')).toHaveLength(0);
    expect(by('register')[0]).toMatchObject({ level: 30, name: 'life', msg: 'registered' });
    expect(by('claim')[0]).toMatchObject({
      level: 30,
      name: 'life',
      transport: 'http1',
      url: expect.stringContaining('life.localhost') as unknown,
    });
    expect(String(by('claim')[0]?.['remote'])).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(by('refuse')[0]).toMatchObject({
      level: 40,
      code: 'PTTH_ERR_TOKEN_MISMATCH',
      status: 403,
      remote: '127.0.0.1',
      name: 'life',
    });
    expect(by('channel-open')[0]).toMatchObject({ name: 'life', transport: 'http1', channels: 1 });
    expect(by('channel-close')[0]).toMatchObject({ name: 'life', transport: 'http1', channels: 0 });
    expect(by('release')[0]).toMatchObject({ name: 'life', reason: 'deleted' });
    // Secrets never reach the log.
    expect(JSON.stringify(dest.lines)).not.toContain('life-token');
  });

  it('logs gateway errors at error level, respects the level, and stops when detached', async () => {
    const gw = await gateway();
    const dest = capture();
    const detach = attachLogger(gw.gateway, createLogger({ destination: dest, level: 'warn' }));
    await app(gw, echo, { name: 'quiet' });
    await request(gw.port, { host: gw.host('quiet') });
    expect(dest.lines).toHaveLength(0); // claims and requests are info
    gw.gateway.emit('error', Object.assign(new Error('listen EADDRINUSE'), { code: 'EADDRINUSE' }));
    expect(dest.lines).toHaveLength(1);
    expect(dest.lines[0]).toMatchObject({
      level: 50,
      event: 'error',
      msg: 'listen EADDRINUSE',
      err: { message: 'listen EADDRINUSE', code: 'EADDRINUSE' },
    });
    detach();
    expect(gw.gateway.listenerCount('error')).toBe(0);
    const refused = await rawClaim(
      gw.port,
      `POST /?name=-x- HTTP/1.1\r\nHost: localhost:${gw.port}\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n`,
    );
    track(refused.socket);
    expect(dest.lines).toHaveLength(1);
  });

  it('names the claim in refuse lines: query, Host, Comet form or WebSocket query; none when invalid', async () => {
    const gw = await gateway();
    const dest = capture();
    attachLogger(gw.gateway, createLogger({ destination: dest }));
    const claim = (target: string, host: string): string =>
      `POST ${target} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: PTTH/1.0\r\n` +
      'Connection: Upgrade\r\nContent-Length: 0\r\n\r\n';
    const refusedLines = (n: number): Promise<void> =>
      until(() => dest.lines.filter((l) => l.event === 'refuse').length >= n, 3_000, `${n} refuse lines`);
    track((await rawClaim(gw.port, claim('/?name=InQuery&lease=soon', `localhost:${gw.port}`))).socket);
    await refusedLines(1);
    track((await rawClaim(gw.port, claim('/?lease=soon', `fromhost.localhost:${gw.port}`))).socket);
    await refusedLines(2);
    track((await rawClaim(gw.port, claim('/?name=-bad-', `localhost:${gw.port}`))).socket);
    await refusedLines(3);
    const comet = await fetchRaw(`${gw.origin}/reversehttp`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'name=formname&lease=soon',
    });
    expect(comet.status).toBe(400);
    await refusedLines(4);
    const ws = await wsRefusal(gw.port, { name: 'wsname', lease: 'soon' });
    expect(ws.status).toBe(400);
    await refusedLines(5);
    const refuses = dest.lines.filter((l) => l.event === 'refuse');
    expect(refuses.map((l) => [l.code, l['name']])).toEqual([
      ['PTTH_ERR_BAD_LEASE', 'inquery'],
      ['PTTH_ERR_BAD_LEASE', 'fromhost'],
      ['PTTH_ERR_BAD_NAME', undefined],
      ['PTTH_ERR_BAD_LEASE', 'formname'],
      ['PTTH_ERR_BAD_LEASE', 'wsname'],
    ]);
    for (const l of refuses) expect(l).toMatchObject({ level: 40, remote: '127.0.0.1' });
  });

  it('logs Comet requests: unknown URLs, refused replies at warn, session id hashed; answered polls at debug', async () => {
    const gw = await gateway({ pollTimeout: 50 });
    const info = capture();
    const debug = capture();
    attachLogger(gw.gateway, createLogger({ destination: info }));
    attachLogger(gw.gateway, createLogger({ destination: debug, level: 'debug' }));
    const reg = await register(gw.origin, { name: 'cometlog' });
    expect(reg.status).toBe(201);
    const first = reg.links['first'] ?? '';
    const sid = /\/reversehttp\/([^/]+)\//.exec(first)?.[1] ?? '';
    expect(sid.length).toBeGreaterThan(16);
    const poll = await fetchRaw(first);
    expect(poll.status).toBe(204);
    const cometLines = (d: { lines: Line[] }): Line[] => d.lines.filter((l) => l.event === 'comet');
    await until(() => cometLines(debug).some((l) => l['op'] === 'poll'), 3_000, 'the poll line');
    const shape = /^\/reversehttp\/~[A-Za-z0-9_-]{8}\/0$/;
    expect(cometLines(debug).find((l) => l['op'] === 'poll')).toMatchObject({
      level: 20,
      method: 'GET',
      status: 204,
      name: 'cometlog',
      remote: '127.0.0.1',
      path: expect.stringMatching(shape) as unknown,
    });
    const registered = cometLines(debug).find((l) => l['op'] === 'register');
    expect(registered).toMatchObject({ level: 20, method: 'POST', status: 201 });

    // A dead request URL polled in a loop, and a reply to an open slot: each a warn line.
    const dead = first.replace(sid, `${sid.slice(0, -4)}AAAA`);
    for (let i = 0; i < 3; i++) expect((await fetchRaw(dead)).status).toBe(404);
    const body = 'HTTP/1.1 200 OK\r\n\r\n';
    const reply = await fetchRaw(first, { method: 'POST', headers: { 'content-type': 'message/http' }, body });
    expect(reply.status).toBe(404);
    await until(() => cometLines(info).length === 4, 3_000, 'four comet lines at info');
    const warned = cometLines(info);
    const unknown = warned.filter((l) => l['op'] === 'unknown');
    expect(unknown.map((l) => [l.level, l['status'], l['code']])).toEqual(
      Array(3).fill([40, 404, 'PTTH_ERR_UNKNOWN_REQUEST_URL']),
    );
    const msg = /^comet unknown: GET \/reversehttp\/~[A-Za-z0-9_-]{8}\/0 404 PTTH_ERR_UNKNOWN_REQUEST_URL$/;
    expect(unknown[0]?.msg).toMatch(msg);
    expect(unknown[0]?.['name']).toBeUndefined();
    const replied = warned.find((l) => l['op'] === 'reply');
    expect(replied).toMatchObject({ level: 40, method: 'POST', status: 404, name: 'cometlog' });
    // The capability never reaches the log, at any level.
    expect(JSON.stringify(debug.lines)).not.toContain(sid);
    expect(JSON.stringify(debug.lines)).not.toContain(sid.slice(0, 12));
  });

  it('pretty output is one human-readable line per event', async () => {
    const gw = await gateway();
    const out: string[] = [];
    attachLogger(gw.gateway, createLogger({ destination: { write: (s: string) => void out.push(s) }, pretty: true }));
    await app(gw, echo, { name: 'nice' });
    await request(gw.port, { host: gw.host('nice'), path: '/p?q=1' });
    const line = out.find((l) => l.includes('GET /p 200'));
    expect(line).toBeDefined();
    expect(line).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] INFO \(nice\): GET \/p 200 \{.*"bytesOut":5.*\}\n$/);
    expect(line).not.toContain('\x1b['); // no colours into a stream that is not the terminal
  });
});

describe('logger process lifetime', () => {
  const LOG = fileURLToPath(new URL('../../dist/log.js', import.meta.url));
  function run(script: string): Promise<{ code: number | null; out: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ['--input-type=module', '-e', `import { createLogger } from ${JSON.stringify(LOG)};\n${script}`],
        {
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`the process did not exit by itself; output so far: ${out.slice(-200)}`));
      }, 10_000);
      child.on('exit', (code) => {
        clearTimeout(timer);
        // Let the pipe drain the last bytes.
        child.stdout.once('end', () => resolve({ code, out }));
        if (child.stdout.readableEnded) resolve({ code, out });
      });
    });
  }

  it('loses no line when the process exits right after logging', async () => {
    const { code, out } = await run(
      'const log = createLogger({ pretty: false });\nfor (let i = 0; i < 20000; i++) log.info({ i }, "line");\nprocess.exit(0);',
    );
    expect(code).toBe(0);
    const lines = out.split('\n').filter(Boolean);
    expect(lines).toHaveLength(20_000);
    expect(JSON.parse(lines[19_999] as string)).toMatchObject({ i: 19_999, msg: 'line' });
  });

  it('does not keep the process alive, JSON or pretty', async () => {
    const json = await run('createLogger({ pretty: false }).info("bye");');
    expect(json.code).toBe(0);
    expect(JSON.parse(json.out)).toMatchObject({ msg: 'bye' });
    const pretty = await run('createLogger({ pretty: true }).info("bye"); process.exit(0);');
    expect(pretty.code).toBe(0);
    expect(pretty.out).toMatch(/INFO.*: bye\n$/);
  });
});
