/**
 * Per-address rate limits (claims on every transport, visitor requests and upgrades), the header
 * count limit and the idle timeout, against real gateways on 127.0.0.1. Loopback is exempt from the
 * rate limits by default, so these gateways pass `limitLoopback: true` unless a test is about the
 * exemption itself.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { GatewayOptions } from '../../src/gateway/server.js';
import type { Tunnel } from '../../src/client/node.js';
import {
  closed,
  headEnd,
  readUntil,
  request,
  sleep,
  startApp,
  startGateway,
  until,
  type Reply,
  type TestGateway,
} from '../helpers/index.js';
import { cleanup, track, useGateway } from '../helpers/fixture.js';
import { fetchRaw, register } from '../helpers/comet.js';

function start(options: GatewayOptions): Promise<TestGateway> {
  return useGateway(options);
}

async function app(
  port: number,
  target: http.RequestListener | http.Server,
  options: Parameters<typeof startApp>[2] = {},
): Promise<Tunnel> {
  const t = await startApp(port, target, options);
  cleanup(() => t.close({ graceMs: 50 }));
  return t;
}

/** A raw connection from `from` (any 127.x address: a distinct client to the gateway). */
function connectFrom(port: number, from = '127.0.0.1'): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress: from }, () => resolve(s));
    s.once('error', reject);
    s.on('error', () => {});
    track(s);
  });
}

interface Answer {
  status: number;
  head: string;
  header(name: string): string | undefined;
  socket: net.Socket;
}

/** Writes exact bytes on a fresh connection and parses the answer's status line and head. */
async function send(port: number, bytes: string, from?: string): Promise<Answer> {
  const socket = await connectFrom(port, from);
  socket.write(bytes);
  const got = await readUntil(socket, headEnd, 2_000);
  const text = got.toString('latin1');
  const head = text.slice(0, Math.max(0, text.indexOf('\r\n\r\n')));
  const lines = head.split('\r\n');
  return {
    status: Number(lines[0]?.split(' ')[1] ?? 0),
    head,
    header: (name) => {
      const line = lines.slice(1).find((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`));
      return line?.slice(line.indexOf(':') + 1).trim();
    },
    socket,
  };
}

const crlf = (lines: string[]): string => `${lines.join('\r\n')}\r\n\r\n`;

/** The native claim of docs/PROTOCOL.md section 2, with or without Connection: Upgrade. */
const nativeClaim = (port: number, name: string, connection = true): string =>
  crlf([
    `POST /?name=${name} HTTP/1.1`,
    `Host: localhost:${port}`,
    'Upgrade: PTTH/1.0',
    ...(connection ? ['Connection: Upgrade'] : []),
    'Content-Length: 0',
  ]);

/** A WebSocket channel claim (docs/PROTOCOL.md section 6); resolves with the socket or the refusal. */
function wsClaim(
  port: number,
  name: string,
): Promise<{ ws: WebSocket } | { status: number; headers: http.IncomingHttpHeaders }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/?name=${name}`, 'ptth.v1', {
    headers: { Host: `localhost:${port}` },
  });
  track(ws);
  ws.on('error', () => {});
  return new Promise((resolve) => {
    ws.once('open', () => resolve({ ws }));
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
    });
  });
}

/** Retry-After is what the bucket says: a whole number of seconds close to `expected` (the test's own run time refills a little). */
function expectRetryAfter(value: string | undefined, expected: number): void {
  expect(value).toMatch(/^\d+$/);
  expect(Number(value)).toBeLessThanOrEqual(expected);
  expect(Number(value)).toBeGreaterThan(expected - 10);
}

/**
 * Resolves with the ms from now until the socket closes (reading and dropping what arrives unless
 * `read` is false), or Infinity after `ms`: the bound only tells a cut that came late from one that
 * never comes, so it is wide (many times the timeout under test), never the behaviour itself.
 */
async function closesAfter(socket: net.Socket, ms: number, read = true): Promise<number> {
  const started = performance.now();
  return (await closed(socket, ms, read)) ? performance.now() - started : Infinity;
}

/** Slack for timers: node may fire one a millisecond early against performance.now(). */
const EARLY = 5;

/**
 * A raw connection that sends nothing, opened now: the gateway cuts it once idleTimeout has passed.
 * Its close is the positive signal that the idle timers of everything older have fired too.
 */
async function idleCut(g: TestGateway): Promise<void> {
  const s = await connectFrom(g.port);
  expect(await closesAfter(s, 10_000), 'a connection that sends nothing is cut').toBeLessThan(Infinity);
}

const names = (g: TestGateway): string[] =>
  g.gateway.table
    .list()
    .map((r) => r.name)
    .sort();

describe('claim rate per client address', () => {
  // '2/h': a burst of two claims, then one every 30 minutes (Retry-After 1800 s).
  const LIMITED: GatewayOptions = { claimRate: '2/h', limitLoopback: true };

  it('a raw PTTH/1.0 claim with Connection: Upgrade past the burst gets a raw 429 with Retry-After and registers nothing', async () => {
    const g = await start(LIMITED);
    expect((await send(g.port, nativeClaim(g.port, 'one'))).status).toBe(101);
    expect((await send(g.port, nativeClaim(g.port, 'two'))).status).toBe(101);
    const r = await send(g.port, nativeClaim(g.port, 'three'));
    expect(r.status).toBe(429);
    expect(r.header('x-ptth-error')).toBe('PTTH_ERR_RATE_LIMITED');
    expectRetryAfter(r.header('retry-after'), 1800);
    expect(r.header('connection')).toBe('close');
    expect(await closed(r.socket)).toBe(true);
    expect(g.gateway.table.lookup('three')).toBeUndefined();
    expect(names(g)).toEqual(['one', 'two']);
  });

  it('a claim without Connection: Upgrade past the burst gets 429 too and registers nothing', async () => {
    const g = await start(LIMITED);
    expect((await send(g.port, nativeClaim(g.port, 'one', false))).status).toBe(101);
    expect((await send(g.port, nativeClaim(g.port, 'two', false))).status).toBe(101);
    const r = await send(g.port, nativeClaim(g.port, 'three', false));
    expect(r.status).toBe(429);
    expect(r.header('x-ptth-error')).toBe('PTTH_ERR_RATE_LIMITED');
    expectRetryAfter(r.header('retry-after'), 1800);
    expect(await closed(r.socket)).toBe(true);
    expect(g.gateway.table.lookup('three')).toBeUndefined();
    expect(names(g)).toEqual(['one', 'two']);
  });

  it('a WebSocket channel claim past the burst gets 429 and registers nothing', async () => {
    const g = await start(LIMITED);
    expect('ws' in (await wsClaim(g.port, 'one'))).toBe(true);
    expect('ws' in (await wsClaim(g.port, 'two'))).toBe(true);
    const r = await wsClaim(g.port, 'three');
    expect('status' in r && r.status).toBe(429);
    if (!('status' in r)) return;
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_RATE_LIMITED');
    expectRetryAfter(r.headers['retry-after'] as string, 1800);
    expect(g.gateway.table.lookup('three')).toBeUndefined();
    expect(names(g)).toEqual(['one', 'two']);
  });

  it('a Comet registration (POST /reversehttp) past the burst gets 429 and registers nothing', async () => {
    const g = await start(LIMITED);
    expect((await register(g.origin, { name: 'one' })).status).toBe(201);
    expect((await register(g.origin, { name: 'two' })).status).toBe(201);
    const r = await register(g.origin, { name: 'three' });
    expect(r.status).toBe(429);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_RATE_LIMITED');
    expectRetryAfter(r.headers['retry-after'], 1800);
    expect(g.gateway.table.lookup('three')).toBeUndefined();
    expect(names(g)).toEqual(['one', 'two']);
  });

  it('POST /reversehttp/ (the trailing-slash spelling Comet also registers at) is limited too', async () => {
    const g = await start(LIMITED);
    const post = (name: string) =>
      fetchRaw(`${g.origin}/reversehttp/`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: `name=${name}`,
      });
    expect((await post('one')).status).toBe(201);
    expect((await post('two')).status).toBe(201);
    const r = await post('three');
    expect(r.status).toBe(429);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_RATE_LIMITED');
    expect(g.gateway.table.lookup('three')).toBeUndefined();
  });

  it('all transports draw on one bucket per address', async () => {
    const g = await start(LIMITED);
    expect((await send(g.port, nativeClaim(g.port, 'raw'))).status).toBe(101);
    expect('ws' in (await wsClaim(g.port, 'ws'))).toBe(true);
    expect((await register(g.origin, { name: 'comet' })).status).toBe(429);
    expect((await send(g.port, nativeClaim(g.port, 'raw2', false))).status).toBe(429);
    expect(names(g)).toEqual(['raw', 'ws']);
  });

  it('another client address has its own bucket', async () => {
    const g = await start(LIMITED);
    expect((await send(g.port, nativeClaim(g.port, 'a1'), '127.0.0.1')).status).toBe(101);
    expect((await send(g.port, nativeClaim(g.port, 'a2'), '127.0.0.1')).status).toBe(101);
    expect((await send(g.port, nativeClaim(g.port, 'a3'), '127.0.0.1')).status).toBe(429);
    expect((await send(g.port, nativeClaim(g.port, 'b1'), '127.0.0.2')).status).toBe(101);
  });

  it('claims being limited does not limit visitors, and a refused claim leaves working channels alone', async () => {
    const g = await start({ ...LIMITED, requestRate: '100/s:400' });
    await app(g.port, (_req, res) => res.end('ok'), { name: 'site', http1: true, connections: 1 });
    // The app's claim took a token; burn the other.
    expect((await send(g.port, nativeClaim(g.port, 'other'))).status).toBe(101);
    expect((await send(g.port, nativeClaim(g.port, 'refused'))).status).toBe(429);
    for (let i = 0; i < 5; i++) expect((await request(g.port, { host: g.host('site') })).body).toBe('ok');
  });

  it('rate-limited claims on every transport are reported as refuse events (logs, refused-claims metric)', async () => {
    const g = await start({ claimRate: '1/h', limitLoopback: true });
    const refused: { code: string; status: number; remote: string | undefined; name?: string | undefined }[] = [];
    g.gateway.on('refuse', (r) => refused.push(r));
    expect((await send(g.port, nativeClaim(g.port, 'one'))).status).toBe(101);
    expect(refused).toEqual([]);
    expect((await send(g.port, nativeClaim(g.port, 'two'))).status).toBe(429);
    expect((await send(g.port, nativeClaim(g.port, 'three', false))).status).toBe(429);
    expect('status' in (await wsClaim(g.port, 'four'))).toBe(true);
    expect((await register(g.origin, { name: 'five' })).status).toBe(429);
    expect(refused).toHaveLength(4);
    // The name where the refused request gave one before its body (the query): none for the Comet form.
    const names = ['two', 'three', 'four', undefined];
    refused.forEach((r, i) => {
      expect(r).toEqual({ code: 'PTTH_ERR_RATE_LIMITED', status: 429, remote: '127.0.0.1', name: names[i] });
    });
  });
});

describe('visitor request rate per client address', () => {
  it('requests past the burst get 429 with X-Ptth-Error and Retry-After, and never reach the app', async () => {
    const g = await start({ requestRate: '3/h', limitLoopback: true, claimRate: false });
    let seen = 0;
    await app(
      g.port,
      (_req, res) => {
        seen++;
        res.end('ok');
      },
      { name: 'named' },
    );
    for (let i = 0; i < 3; i++) expect((await request(g.port, { host: g.host('named') })).status).toBe(200);
    const r = await request(g.port, { host: g.host('named') });
    expect(r.status).toBe(429);
    expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_RATE_LIMITED');
    expectRetryAfter(r.headers['retry-after'], 1200);
    expect(r.body).toContain('PTTH_ERR_RATE_LIMITED');
    expect(seen).toBe(3);
    // Requests for names nobody holds count too: a scanner cannot probe names for free.
    expect((await request(g.port, { host: g.host('nobody') })).status).toBe(429);
  });

  it('counts requests on one keep-alive connection one by one', async () => {
    const g = await start({ requestRate: '2/h', limitLoopback: true, claimRate: false });
    await app(g.port, (_req, res) => res.end('ok'), { name: 'k' });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await request(g.port, { host: g.host('k'), agent })).status).toBe(200);
      expect((await request(g.port, { host: g.host('k'), agent })).status).toBe(200);
      expect((await request(g.port, { host: g.host('k'), agent })).status).toBe(429);
    } finally {
      agent.destroy();
    }
  });

  it('visitor upgrades draw on the same bucket and get a raw 429', async () => {
    const g = await start({ requestRate: '2/h', limitLoopback: true, claimRate: false });
    const server = http.createServer((_req, res) => res.end('ok'));
    cleanup(() => server.close());
    server.on('upgrade', (_req, socket: net.Socket) => {
      socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n');
    });
    await app(g.port, server, { name: 'up' });
    const upgrade = crlf(['GET / HTTP/1.1', `Host: ${g.host('up')}`, 'Upgrade: echo', 'Connection: Upgrade']);
    expect((await send(g.port, upgrade)).status).toBe(101);
    expect((await request(g.port, { host: g.host('up') })).status).toBe(200);
    const r = await send(g.port, upgrade);
    expect(r.status).toBe(429);
    expect(r.header('x-ptth-error')).toBe('PTTH_ERR_RATE_LIMITED');
    expectRetryAfter(r.header('retry-after'), 1800);
    expect(await closed(r.socket)).toBe(true);
  });

  it('the gateway host (status page, Comet polls) is not a visitor request: it is not counted', async () => {
    const g = await start({ requestRate: '1/h', limitLoopback: true, claimRate: false });
    for (let i = 0; i < 5; i++) expect((await request(g.port, { host: `localhost:${g.port}` })).status).toBe(200);
    await app(g.port, (_req, res) => res.end('ok'), { name: 'v' });
    expect((await request(g.port, { host: g.host('v') })).status).toBe(200);
    expect((await request(g.port, { host: g.host('v') })).status).toBe(429);
  });
});

describe('loopback exemption and turning limits off', () => {
  it('loopback clients are not limited unless limitLoopback is set', async () => {
    const g = await start({ claimRate: '1/h', requestRate: '1/h' });
    expect((await send(g.port, nativeClaim(g.port, 'a'))).status).toBe(101);
    expect((await send(g.port, nativeClaim(g.port, 'b', false))).status).toBe(101);
    expect('ws' in (await wsClaim(g.port, 'c'))).toBe(true);
    expect((await register(g.origin, { name: 'd' })).status).toBe(201);
    await app(g.port, (_req, res) => res.end('ok'), { name: 'e' });
    for (let i = 0; i < 10; i++) expect((await request(g.port, { host: g.host('e') })).status).toBe(200);
    expect(names(g)).toEqual(['a', 'b', 'c', 'd', 'e']);
  });

  it('every 127.x address counts as loopback', async () => {
    const g = await start({ claimRate: '1/h' });
    for (const name of ['a', 'b', 'c'])
      expect((await send(g.port, nativeClaim(g.port, name), '127.0.0.2')).status).toBe(101);
  });

  it('claimRate: false and requestRate: false turn the limits off', async () => {
    const g = await start({ claimRate: false, requestRate: false, limitLoopback: true });
    for (const name of ['a', 'b', 'c', 'd']) expect((await send(g.port, nativeClaim(g.port, name))).status).toBe(101);
    for (const name of ['e', 'f']) expect('ws' in (await wsClaim(g.port, name))).toBe(true);
    for (const name of ['g', 'h']) expect((await register(g.origin, { name })).status).toBe(201);
    await app(g.port, (_req, res) => res.end('ok'), { name: 'site' });
    for (let i = 0; i < 20; i++) expect((await request(g.port, { host: g.host('site') })).status).toBe(200);
  });

  it("'0' and 'off' turn them off too", async () => {
    const g = await start({ claimRate: '0', requestRate: 'off', limitLoopback: true });
    for (const name of ['a', 'b', 'c']) expect((await send(g.port, nativeClaim(g.port, name))).status).toBe(101);
    for (let i = 0; i < 5; i++) expect((await request(g.port, { host: g.host('nobody') })).status).toBe(404);
  });

  /**
   * Sends `batch` attempts at once, batch after batch, until one is refused (or `cap` were sent: a
   * limiter that never refuses fails the test instead of looping). `elapsed` is measured by the
   * test around every attempt, so a token bucket of `burst` refilling at `rate` per second can
   * have allowed at most `burst + rate * elapsed / 1000` of them, and at least `burst`.
   */
  async function burst<T>(
    attempt: (i: number) => Promise<T>,
    refused: (r: T) => boolean,
    batch: number,
    cap: number,
  ): Promise<{ results: T[]; elapsed: number }> {
    const results: T[] = [];
    const started = performance.now();
    while (!results.some(refused) && results.length < cap) {
      const from = results.length;
      results.push(...(await Promise.all(Array.from({ length: batch }, (_, i) => attempt(from + i)))));
    }
    return { results, elapsed: performance.now() - started };
  }

  it('the defaults allow a burst of 60 claims (refilling 1/s), then 429 with Retry-After', async () => {
    const g = await start({ limitLoopback: true });
    const claim = (i: number): Promise<Answer> => send(g.port, nativeClaim(g.port, `n${i}`, false));
    const { results, elapsed } = await burst(claim, (r) => r.status === 429, 20, 200);
    const accepted = results.filter((r) => r.status === 101).length;
    const refused = results.filter((r) => r.status === 429);
    expect(accepted + refused.length, 'every claim got 101 or 429').toBe(results.length);
    expect(refused.length, 'a claim past the burst was refused').toBeGreaterThan(0);
    // 60 tokens at the start, one more per second the burst took.
    expect(accepted).toBeGreaterThanOrEqual(60);
    expect(accepted).toBeLessThanOrEqual(60 + Math.floor(elapsed / 1000));
    for (const r of refused) {
      expect(r.header('x-ptth-error')).toBe('PTTH_ERR_RATE_LIMITED');
      expect(r.header('retry-after')).toBe('1');
    }
    // Refused claims registered nothing.
    expect(names(g)).toHaveLength(accepted);
  });

  it('the defaults allow a burst of 400 requests (refilling 100/s), then 429 with Retry-After', async () => {
    const g = await start({ limitLoopback: true });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    try {
      const visit = (): Promise<Reply> => request(g.port, { host: g.host('nobody'), agent });
      const { results, elapsed } = await burst(visit, (r) => r.status === 429, 100, 5_000);
      const allowed = results.filter((r) => r.status === 404).length;
      const refused = results.filter((r) => r.status === 429);
      expect(allowed + refused.length, 'every request got 404 (no such app) or 429').toBe(results.length);
      expect(refused.length, 'a request past the burst was refused').toBeGreaterThan(0);
      // 400 tokens at the start, 100 more per second the burst took.
      expect(allowed).toBeGreaterThanOrEqual(400);
      expect(allowed).toBeLessThanOrEqual(400 + Math.floor((elapsed / 1000) * 100));
      for (const r of refused) {
        expect(r.headers['x-ptth-error']).toBe('PTTH_ERR_RATE_LIMITED');
        expect(r.headers['retry-after']).toBe('1');
        expect(r.body).toContain('PTTH_ERR_RATE_LIMITED');
      }
    } finally {
      agent.destroy();
    }
  });

  it('a bad rate is refused when the gateway is made', async () => {
    await expect(startGateway({ claimRate: 'lots' })).rejects.toThrow(/claimRate: expected a rate like 60\/m/);
    await expect(startGateway({ requestRate: '5/fortnight' })).rejects.toThrow(/requestRate:/);
    await expect(startGateway({ requestRate: { rate: 0, burst: 1 } })).rejects.toThrow(/rate must be a number > 0/);
  });
});

describe('header count limit', () => {
  const fields = (n: number): string[] => Array.from({ length: n }, (_, i) => `X-Field-${i}: ${i}`);

  it('a visitor request with exactly maxHeaders fields is served; one more gets 431 PTTH_ERR_TOO_MANY_HEADERS', async () => {
    const g = await start({ maxHeaders: 5 });
    await app(g.port, (req, res) => res.end(String(req.rawHeaders.length / 2)), { name: 'h' });
    const ok = await send(g.port, crlf(['GET / HTTP/1.1', `Host: ${g.host('h')}`, ...fields(3), 'Connection: close']));
    expect(ok.status).toBe(200);
    const r = await send(g.port, crlf(['GET / HTTP/1.1', `Host: ${g.host('h')}`, ...fields(4), 'Connection: close']));
    expect(r.status).toBe(431);
    expect(r.header('x-ptth-error')).toBe('PTTH_ERR_TOO_MANY_HEADERS');
    expect(await closed(r.socket)).toBe(true);
  });

  it('counts repeated field names one by one', async () => {
    const g = await start({ maxHeaders: 3 });
    const r = await send(
      g.port,
      crlf(['GET / HTTP/1.1', `Host: ${g.host('h')}`, 'Accept: a', 'Accept: b', 'Accept: c']),
    );
    expect(r.status).toBe(431);
  });

  it('a claim (upgrade) with exactly maxHeaders fields succeeds; one more gets a raw 431 and registers nothing', async () => {
    const g = await start({ maxHeaders: 5 });
    const claim = (name: string, extra: number): string =>
      crlf([
        `POST /?name=${name} HTTP/1.1`,
        `Host: localhost:${g.port}`,
        'Upgrade: PTTH/1.0',
        'Connection: Upgrade',
        'Content-Length: 0',
        ...fields(extra),
      ]);
    expect((await send(g.port, claim('fits', 1))).status).toBe(101);
    const r = await send(g.port, claim('flood', 2));
    expect(r.status).toBe(431);
    expect(r.header('x-ptth-error')).toBe('PTTH_ERR_TOO_MANY_HEADERS');
    expect(await closed(r.socket)).toBe(true);
    expect(g.gateway.table.lookup('flood')).toBeUndefined();
  });

  it('a claim without Connection: Upgrade with too many fields gets 431 and registers nothing', async () => {
    const g = await start({ maxHeaders: 4 });
    const claim = (name: string, extra: number): string =>
      crlf([
        `POST /?name=${name} HTTP/1.1`,
        `Host: localhost:${g.port}`,
        'Upgrade: PTTH/1.0',
        'Content-Length: 0',
        ...fields(extra),
      ]);
    expect((await send(g.port, claim('fits', 1))).status).toBe(101);
    const r = await send(g.port, claim('flood', 2));
    expect(r.status).toBe(431);
    expect(r.header('x-ptth-error')).toBe('PTTH_ERR_TOO_MANY_HEADERS');
    expect(g.gateway.table.lookup('flood')).toBeUndefined();
  });

  it('a visitor upgrade with too many fields gets a raw 431 and never reaches the app', async () => {
    const g = await start({ maxHeaders: 5 });
    let upgrades = 0;
    const server = http.createServer((_req, res) => res.end('ok'));
    cleanup(() => server.close());
    server.on('upgrade', (_req, socket: net.Socket) => {
      upgrades++;
      socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n');
    });
    await app(g.port, server, { name: 'up' });
    const r = await send(
      g.port,
      crlf(['GET / HTTP/1.1', `Host: ${g.host('up')}`, 'Upgrade: echo', 'Connection: Upgrade', ...fields(3)]),
    );
    expect(r.status).toBe(431);
    expect(r.header('x-ptth-error')).toBe('PTTH_ERR_TOO_MANY_HEADERS');
    expect(upgrades).toBe(0);
  });

  it('the default is 100 fields: 100 pass, 101 get 431', async () => {
    const g = await start({});
    const ok = await send(g.port, crlf(['GET / HTTP/1.1', `Host: localhost:${g.port}`, ...fields(99)]));
    expect(ok.status).toBe(200);
    const r = await send(g.port, crlf(['GET / HTTP/1.1', `Host: localhost:${g.port}`, ...fields(100)]));
    expect(r.status).toBe(431);
    expect(r.header('x-ptth-error')).toBe('PTTH_ERR_TOO_MANY_HEADERS');
  });

  it('a maxHeaders below 1 is refused when the gateway is made', async () => {
    await expect(startGateway({ maxHeaders: 0 })).rejects.toThrow(/maxHeaders/);
  });
});

describe('idle timeout', () => {
  it('cuts a visitor that stops sending its body half way, and the app serves the next visitor', async () => {
    const g = await start({ idleTimeout: 300 });
    let aborted = 0;
    await app(
      g.port,
      (req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => res.end(`got ${Buffer.concat(chunks).length}`));
        req.on('error', () => aborted++);
        res.on('close', () => {
          if (!res.writableFinished) aborted++;
        });
      },
      { name: 'slow', http1: true, connections: 1 },
    );
    const s = await connectFrom(g.port);
    s.write(crlf(['POST / HTTP/1.1', `Host: ${g.host('slow')}`, 'Content-Length: 100']) + 'x'.repeat(10));
    const after = await closesAfter(s, 10_000);
    expect(after, 'cut once idle for idleTimeout').toBeGreaterThanOrEqual(300 - EARLY);
    expect(after, 'cut at all (the bound is many idle timeouts)').toBeLessThan(Infinity);
    await until(() => aborted > 0, 3_000, 'the app to see its request aborted');
    const next = await request(g.port, { host: g.host('slow'), method: 'POST', body: 'y'.repeat(100) });
    expect(next.body).toBe('got 100');
  });

  it('a slow but steady body is not cut: idle means no bytes, not a deadline', async () => {
    // Ten times the gap between bytes: a busy machine's late timer does not make a gap that long.
    const g = await start({ idleTimeout: 1_000 });
    await app(
      g.port,
      (req, res) => {
        let n = 0;
        req.on('data', (c: Buffer) => (n += c.length));
        req.on('end', () => res.end(`got ${n}`));
      },
      { name: 'steady' },
    );
    const s = await connectFrom(g.port);
    s.write(crlf(['POST / HTTP/1.1', `Host: ${g.host('steady')}`, 'Content-Length: 20', 'Connection: close']));
    // 20 bytes each 100 ms apart: at least twice the idle timeout in all, never idle that long.
    const started = performance.now();
    for (let i = 0; i < 20; i++) {
      await sleep(100);
      s.write('z');
    }
    expect(performance.now() - started).toBeGreaterThanOrEqual(2 * 1_000 - EARLY);
    const got = (await readUntil(s, (b) => b.includes('got 20'), 5_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 200 /);
    expect(got).toContain('got 20');
  });

  for (const http1 of [false, true]) {
    it(`cuts a visitor that stops reading a large response; the app's ${http1 ? 'HTTP/1.1' : 'HTTP/2'} channel is freed and serves the next visitor`, async () => {
      const g = await start({ idleTimeout: 300, reconnectWait: 3_000 });
      let ended = 0;
      const chunk = Buffer.alloc(64 * 1024, 'a');
      const t = await app(
        g.port,
        (req, res) => {
          if (req.url === '/small') return res.end('small');
          // An endless body, written as fast as the reader takes it.
          const pump = (): void => {
            while (!res.destroyed && res.write(chunk));
          };
          res.on('drain', pump);
          res.on('close', () => ended++);
          res.on('error', () => {});
          pump();
        },
        { name: 'big', http1, connections: 1, http2Connections: 1 },
      );
      expect(t.protocol).toBe(http1 ? 'h1' : 'h2');
      const s = await connectFrom(g.port);
      // Sent, then never read: the kernel buffers fill and the gateway's writes stall.
      s.write(crlf(['GET /big HTTP/1.1', `Host: ${g.host('big')}`]));
      await until(() => ended > 0, 5_000, "the app's endless response to be cut");
      // Whatever was buffered drains, then the connection ends: the response was never complete.
      // (A wide bound: it only tells a close from none.)
      expect(await closed(s, 10_000)).toBe(true);
      expect((await request(g.port, { host: g.host('big'), path: '/small' })).body).toBe('small');
    });
  }

  it('does not cut a visitor waiting for a slow app: the response timeout answers 504 instead', async () => {
    const g = await start({ idleTimeout: 200, responseTimeout: 1_000 });
    await app(g.port, () => {}, { name: 'sleepy' });
    const s = await connectFrom(g.port);
    s.write(crlf(['GET / HTTP/1.1', `Host: ${g.host('sleepy')}`]));
    // A wide bound (ten response timeouts): it only tells an answer from a hang.
    const got = (await readUntil(s, headEnd, 10_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 504 /);
    expect(got).toContain('X-Ptth-Error: PTTH_ERR_APP_TIMEOUT');
  });

  it('does not cut a visitor queued for a busy app: the queue timeout answers 503 instead', async () => {
    const g = await start({ idleTimeout: 200, queueTimeout: 800, responseTimeout: 5_000 });
    let first: http.ServerResponse | undefined;
    await app(
      g.port,
      (_req, res) => {
        first ??= res;
      },
      { name: 'busy', http1: true, connections: 1 },
    );
    const a = await connectFrom(g.port);
    a.write(crlf(['GET / HTTP/1.1', `Host: ${g.host('busy')}`]));
    await until(() => first !== undefined, 3_000, 'the first request to reach the app');
    const b = await connectFrom(g.port);
    b.write(crlf(['GET / HTTP/1.1', `Host: ${g.host('busy')}`]));
    // A wide bound (ten queue timeouts): it only tells an answer from a hang.
    const got = (await readUntil(b, headEnd, 8_000)).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 503 /);
    expect(got).toContain('X-Ptth-Error: PTTH_ERR_NO_CHANNEL');
    first?.end('late');
  });

  it('a visitor whose app answers after the idle timeout gets the whole answer', async () => {
    const g = await start({ idleTimeout: 200, responseTimeout: 3_000 });
    await app(g.port, (_req, res) => void setTimeout(() => res.end('worth the wait'), 600), { name: 'late' });
    expect((await request(g.port, { host: g.host('late') })).body).toBe('worth the wait');
  });

  it('between requests keepAliveTimeout governs; the next request on the connection is under idleTimeout again', async () => {
    // keepAliveTimeout far above idleTimeout: which of the two cut the stalled request is plain.
    const g = await start({ idleTimeout: 200, keepAliveTimeout: 10_000 });
    await app(
      g.port,
      (req, res) => {
        let n = 0;
        req.on('data', (c: Buffer) => (n += c.length));
        req.on('end', () => res.end(`got ${n}`));
      },
      { name: 'ka' },
    );
    const s = await connectFrom(g.port);
    s.write(crlf(['GET / HTTP/1.1', `Host: ${g.host('ka')}`]));
    expect((await readUntil(s, (b) => b.includes('got 0'))).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    // Idle between requests past an idle timeout: still open (the keep-alive timeout is longer).
    // A connection opened after this one is cut first: then this one's idle timer would have fired.
    await idleCut(g);
    expect(s.destroyed, 'still open between requests').toBe(false);
    // The second request stalls its body: cut after idleTimeout, long before keepAliveTimeout.
    s.write(`${crlf(['POST / HTTP/1.1', `Host: ${g.host('ka')}`, 'Content-Length: 10'])}ab`);
    const after = await closesAfter(s, 10_000);
    expect(after).toBeGreaterThanOrEqual(200 - EARLY);
    expect(after, 'cut by idleTimeout, not by keepAliveTimeout').toBeLessThan(10_000);
  });

  it('an idle keep-alive connection is closed after keepAliveTimeout', async () => {
    const g = await start({ idleTimeout: 60_000, keepAliveTimeout: 300 });
    const s = await connectFrom(g.port);
    // Counted from before the request: the keep-alive timer starts after the answer, later still.
    const started = performance.now();
    s.write(crlf(['GET / HTTP/1.1', `Host: localhost:${g.port}`]));
    expect((await readUntil(s, headEnd)).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(await closed(s, 10_000), 'closed by keepAliveTimeout, long before idleTimeout').toBe(true);
    expect(performance.now() - started).toBeGreaterThanOrEqual(300 - EARLY);
  });

  it('idleTimeout: 0 turns it off', async () => {
    const g = await start({ idleTimeout: 0, keepAliveTimeout: 60_000, headersTimeout: 60_000 });
    const s = await connectFrom(g.port);
    s.write(`${crlf(['POST / HTTP/1.1', `Host: ${g.host('nobody')}`, 'Content-Length: 10'])}abc`);
    expect(await closed(s, 800)).toBe(false);
  });

  describe('channels idle longer than idleTimeout stay up', () => {
    const IDLE: GatewayOptions = { idleTimeout: 150 };

    it('a reversed HTTP/1.1 channel (client library)', async () => {
      const g = await start(IDLE);
      const closes: string[] = [];
      g.gateway.on('channel-close', (reg) => closes.push(reg.name));
      const t = await app(g.port, (_req, res) => res.end('h1'), { name: 'one', http1: true, connections: 1 });
      expect(t.protocol).toBe('h1');
      // A connection opened after the channel is cut for idling: the channel has idled longer.
      await idleCut(g);
      expect(closes).toEqual([]);
      expect((await request(g.port, { host: g.host('one') })).body).toBe('h1');
      // Idle again after a request: still there.
      await idleCut(g);
      expect(closes).toEqual([]);
      expect(g.gateway.table.lookup('one')?.channels.length).toBe(1);
    });

    it('a reversed HTTP/2 channel', async () => {
      const g = await start(IDLE);
      const closes: string[] = [];
      g.gateway.on('channel-close', (reg) => closes.push(reg.name));
      const t = await app(g.port, (_req, res) => res.end('h2'), { name: 'two' });
      expect(t.protocol).toBe('h2');
      await idleCut(g);
      expect(closes).toEqual([]);
      expect((await request(g.port, { host: g.host('two') })).body).toBe('h2');
      await idleCut(g);
      expect(closes).toEqual([]);
      expect(g.gateway.table.lookup('two')?.channels.length).toBeGreaterThan(0);
    });

    for (const connection of [true, false]) {
      it(`a raw PTTH/1.0 channel claimed ${connection ? 'with' : 'without'} Connection: Upgrade`, async () => {
        const g = await start(IDLE);
        const closes: string[] = [];
        g.gateway.on('channel-close', (reg) => closes.push(reg.name));
        const r = await send(g.port, nativeClaim(g.port, 'raw', connection));
        expect(r.status).toBe(101);
        await idleCut(g);
        expect(closes).toEqual([]);
        expect(g.gateway.table.lookup('raw')?.channels.length).toBe(1);
        const visitor = request(g.port, { host: g.host('raw') });
        const req = (await readUntil(r.socket, headEnd, 2_000)).toString('latin1');
        expect(req).toMatch(/^GET \/ HTTP\/1\.1\r\n/);
        r.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nraw!');
        expect((await visitor).body).toBe('raw!');
      });
    }

    it('a WebSocket channel', async () => {
      const g = await start(IDLE);
      const r = await wsClaim(g.port, 'ws');
      expect('ws' in r).toBe(true);
      if (!('ws' in r)) return;
      const closes: string[] = [];
      g.gateway.on('channel-close', (reg) => closes.push(reg.name));
      await idleCut(g);
      expect(closes).toEqual([]);
      expect(r.ws.readyState).toBe(WebSocket.OPEN);
      expect(g.gateway.table.lookup('ws')?.channels.length).toBe(1);
    });

    it('a Comet long poll longer than idleTimeout ends with its 204, not a cut', async () => {
      const g = await start({ ...IDLE, pollTimeout: 700 });
      const reg = await register(g.origin, { name: 'comet' });
      expect(reg.status).toBe(201);
      const poll = await fetchRaw(reg.links['first'] as string);
      expect(poll.status).toBe(204);
    });
  });
});
