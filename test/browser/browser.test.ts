import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Browser, Page } from 'playwright-core';
import { launchChromium } from '../helpers/chromium.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { hashKey, type AccessConfig } from '../../src/table/access.js';
import { request, startGateway, until, type TestGateway } from '../helpers/index.js';

/*
 * End to end in real headless Chromium: a page on another origin (a second local server) loads
 * /ptth.js from the gateway and serves requests from the tab, over the WebSocket channel and over
 * forced Comet; the test visits the public URL with node:http and checks the tab's answers.
 * Chromium comes from the system (`apt-get install chromium`; .ci/run installs it when missing).
 */

let browser: Browser;
let site: http.Server;
let siteOrigin: string;
let gw: TestGateway | undefined;
let page: Page | undefined;

/** The page another origin serves: it imports the library from the gateway named in its query. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>ptth test page</title>
<script type="module">
const q = new URLSearchParams(location.search);
const gateway = q.get('gateway');
const { serve } = await import(gateway + '/ptth.js');
window.errors = [];
const options = { gateway, name: q.get('name'), transport: q.get('transport') || 'auto', backoff: 50, maxBackoff: 500,
  onError: (e) => window.errors.push(String(e && e.message)) };
if (q.get('key')) options.key = q.get('key');
window.server = serve(options, async (request, info) => {
  const body = request.method === 'POST' ? await request.text() : '';
  const delay = Number(new URL(request.url).searchParams.get('delay') || 0);
  if (delay) await new Promise((r) => setTimeout(r, delay));
  return Response.json({ method: request.method, url: request.url, host: request.headers.get('host'), custom: request.headers.get('x-custom'),
    body, remote: info.remoteAddr, transport: info.transport, origin: location.origin, agent: navigator.userAgent },
    { status: 200, headers: { 'x-served-by': 'tab' } });
});
window.ready = window.server.url.then((url) => ({ url, transport: window.server.transport }));
window.outcome = window.server.url.then((url) => ({ url }),
  (e) => ({ error: { name: e.name, status: e.status, code: e.code } }));
</script>`;

beforeAll(async () => {
  browser = await launchChromium();
  site = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  });
  await new Promise<void>((r) => site.listen(0, '127.0.0.1', r));
  siteOrigin = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
}, 30_000);

afterAll(async () => {
  await browser?.close();
  await new Promise((r) => site?.close(r));
});

afterEach(async () => {
  await page?.close();
  page = undefined;
  await gw?.close();
  gw = undefined;
  for (const s of fronts.splice(0)) {
    s.closeAllConnections();
    s.close();
  }
});

const fronts: http.Server[] = [];

/**
 * A proxy in front of the gateway that passes plain HTTP through and refuses every WebSocket
 * handshake with 403, as some corporate proxies do: the tab's WebSocket fails for real, and
 * asynchronously (its close event comes before any hello), as it does in the field.
 */
async function noWebSocketProxy(g: TestGateway): Promise<{ origin: string; refused: () => number }> {
  let refused = 0;
  const front = http.createServer((req, res) => {
    const { method, url: path, headers } = req;
    const out = http.request({ host: '127.0.0.1', port: g.port, method, path, headers, agent: false });
    out.on('response', (back) => {
      res.writeHead(back.statusCode ?? 502, back.rawHeaders);
      back.pipe(res);
    });
    out.on('error', () => res.destroy());
    res.on('close', () => out.destroy());
    req.pipe(out);
  });
  front.on('upgrade', (_req, socket: Duplex) => {
    refused++;
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  fronts.push(front);
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  return { origin: `http://127.0.0.1:${(front.address() as AddressInfo).port}`, refused: () => refused };
}

interface Answer {
  method: string;
  url: string;
  host: string;
  custom: string | null;
  body: string;
  remote: string;
  transport: string;
  origin: string;
  agent: string;
}

/** Opens the test page against a fresh gateway (or what `via` puts in front of it); resolves once it started. */
async function loadTab(
  query: Record<string, string>,
  options: GatewayOptions = {},
  via?: (g: TestGateway) => Promise<string>,
): Promise<Page> {
  gw = await startGateway({ pollTimeout: 2_000, ...options });
  const origin = via ? await via(gw) : gw.origin;
  const p = await browser.newPage();
  page = p;
  const errors: string[] = [];
  p.on('pageerror', (e) => errors.push(e.message));
  await p.goto(`${siteOrigin}/?${new URLSearchParams({ gateway: origin, ...query }).toString()}`);
  await p
    .waitForFunction(() => 'ready' in globalThis, undefined, { timeout: 10_000 })
    .catch(() => {
      throw new Error(`the page did not start: ${errors.join('; ')}`);
    });
  return p;
}

async function openTab(
  query: Record<string, string>,
  options: GatewayOptions = {},
  via?: (g: TestGateway) => Promise<string>,
): Promise<{ url: string; transport: string }> {
  const p = await loadTab(query, options, via);
  return p.evaluate(() => (globalThis as unknown as { ready: Promise<{ url: string; transport: string }> }).ready);
}

async function visit(
  name: string,
  path: string,
  init: { method?: string; body?: string } = {},
): Promise<{ status: number; answer: Answer; headers: http.IncomingHttpHeaders }> {
  const g = gw as TestGateway;
  const r = await request(g.port, {
    host: g.host(name),
    path,
    method: init.method ?? 'GET',
    headers: { 'X-Custom': 'from node' },
    ...(init.body !== undefined ? { body: init.body } : {}),
  });
  return { status: r.status, answer: JSON.parse(r.body) as Answer, headers: r.headers };
}

describe('the browser library in headless Chromium, on a page of another origin', () => {
  for (const transport of ['websocket', 'comet'] as const) {
    it(`serves requests from the tab over ${transport === 'comet' ? 'forced Comet' : 'the WebSocket channel'}`, async () => {
      const name = `tab-${transport}`;
      const online = await openTab({ name, transport });
      const g = gw as TestGateway;
      expect(online).toEqual({ url: `http://${name}.localhost:${g.port}/`, transport });
      expect(g.gateway.table.lookup(name)?.channels.map((c) => c.transport)).toEqual([transport]);

      const get = await visit(name, '/hello?x=1');
      expect(get.status).toBe(200);
      expect(get.headers['x-served-by']).toBe('tab');
      expect(get.answer).toMatchObject({
        method: 'GET',
        url: `http://${name}.localhost:${g.port}/hello?x=1`,
        host: g.host(name),
        custom: 'from node',
        transport,
        origin: siteOrigin,
      });
      expect(get.answer.agent).toMatch(/Chrome/);
      expect(get.answer.remote).toMatch(/^127\.0\.0\.1:\d+$/);

      const post = await visit(name, '/form', { method: 'POST', body: 'payload from a visitor' });
      expect(post.answer).toMatchObject({ method: 'POST', body: 'payload from a visitor' });

      // Several at once, the slow one first: each visitor gets its own answer.
      const many = await Promise.all([300, 0, 100, 0].map((d, i) => visit(name, `/many/${i}?delay=${d}`)));
      expect(many.map((m) => new URL(m.answer.url).pathname)).toEqual(['/many/0', '/many/1', '/many/2', '/many/3']);
    });
  }

  it('falls back to Comet by itself when a proxy refuses the WebSocket handshake', async () => {
    let proxy: { origin: string; refused: () => number } | undefined;
    const online = await openTab({ name: 'fallback' }, {}, async (g) => {
      proxy = await noWebSocketProxy(g);
      return proxy.origin;
    });
    expect(online.transport).toBe('comet');
    // The WebSocket was tried, through the proxy, and refused there: the gateway never saw it.
    expect(proxy?.refused()).toBeGreaterThanOrEqual(1);
    const g = gw as TestGateway;
    const transports = g.gateway.table.lookup('fallback')?.channels.map((c) => c.transport) ?? [];
    expect(transports.length).toBeGreaterThan(0);
    expect(new Set(transports)).toEqual(new Set(['comet']));
    const r = await visit('fallback', '/via-comet');
    expect(r.status).toBe(200);
    expect(r.answer).toMatchObject({ transport: 'comet', url: expect.stringContaining('/via-comet') as unknown });
  });

  it('releases the name when the page closes the server', async () => {
    await openTab({ name: 'closing', transport: 'websocket' });
    const g = gw as TestGateway;
    await (page as Page).evaluate(() =>
      (globalThis as unknown as { server: { close(): Promise<void> } }).server.close(),
    );
    await until(() => g.gateway.table.lookup('closing') === undefined, 3_000, 'release');
    expect((await request(g.port, { host: g.host('closing') })).status).toBe(404);
  });
});

describe('access keys from the tab', () => {
  const KEY = 'ptth_tab-0123456789abcdefghijklmnopqrs';
  const ACCESS: AccessConfig = { keys: [{ id: 'tab', sha256: hashKey(KEY), names: ['team-*'] }] };

  for (const transport of ['websocket', 'comet'] as const) {
    const over = transport === 'comet' ? 'Comet (a form field)' : 'the WebSocket channel (a query parameter)';
    it(`the library passes its key over ${over}`, async () => {
      const name = `team-${transport}`;
      const online = await openTab({ name, transport, key: KEY }, { access: ACCESS });
      const g = gw as TestGateway;
      expect(online).toEqual({ url: `http://${name}.localhost:${g.port}/`, transport });
      const reg = g.gateway.table.lookup(name);
      expect(reg?.keyId).toBe('tab');
      expect(reg?.channels.map((c) => c.transport)).toEqual([transport]);
      const r = await visit(name, '/keyed');
      expect([r.status, r.answer.transport]).toEqual([200, transport]);
    });
  }

  it('a name the key may not claim: the server rejects with 403 (WebSocket refused, then Comet says why)', async () => {
    const p = await loadTab({ name: 'bob', key: KEY }, { access: ACCESS });
    const outcome = await p.evaluate(() => (globalThis as unknown as { outcome: Promise<unknown> }).outcome);
    expect(outcome).toEqual({ error: { name: 'ServeError', status: 403, code: 'PTTH_ERR_KEY_FORBIDDEN' } });
    expect((gw as TestGateway).gateway.table.lookup('bob')).toBeUndefined();
  });

  it('without the key, the claim is refused with 401', async () => {
    const p = await loadTab({ name: 'team-nokey', transport: 'comet' }, { access: ACCESS });
    const outcome = await p.evaluate(() => (globalThis as unknown as { outcome: Promise<unknown> }).outcome);
    expect(outcome).toEqual({ error: { name: 'ServeError', status: 401, code: 'PTTH_ERR_KEY_REQUIRED' } });
  });
});

describe('the gateway home page live demo', () => {
  it('serves a name from the tab, shows the public URL and lists the requests it answered', async () => {
    gw = await startGateway();
    const g = gw;
    page = await browser.newPage();
    await page.goto(`${g.origin}/`);
    await page.fill('#demo-name', 'demo-tab');
    await page.click('#demo-start');
    const link = page.locator('#demo-url');
    await link.waitFor({ state: 'visible' });
    await until(() => g.gateway.table.lookup('demo-tab') !== undefined, 5_000, 'demo registration');
    const url = await link.getAttribute('href');
    expect(url).toBe(`http://demo-tab.localhost:${g.port}/`);
    const r = await request(g.port, { host: g.host('demo-tab'), path: '/from-node?q=1' });
    expect(r.status).toBe(200);
    expect(r.body).toContain('Hello from a browser tab');
    await page.locator('#demo-log li', { hasText: '/from-node?q=1' }).waitFor({ timeout: 5_000 });
    await page.click('#demo-stop');
    await until(() => g.gateway.table.lookup('demo-tab') === undefined, 3_000, 'demo release');
  });
});
