import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request, startGateway, until, type TestGateway } from '../helpers/index.js';

/*
 * End to end in real headless Chromium: a page on another origin (a second local server) loads
 * /ptth.js from the gateway and serves requests from the tab, over the WebSocket channel and over
 * forced Comet; the test visits the public URL with node:http and checks the tab's answers.
 * Chromium comes from the system (`apt-get install chromium`; .ci/run installs it when missing).
 */

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

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
if (q.get('blockWebSocket')) options.WebSocket = class { constructor() { throw new Error('WebSocket blocked by a proxy'); } };
window.server = serve(options, async (request, info) => {
  const body = request.method === 'POST' ? await request.text() : '';
  const delay = Number(new URL(request.url).searchParams.get('delay') || 0);
  if (delay) await new Promise((r) => setTimeout(r, delay));
  return Response.json({ method: request.method, url: request.url, host: request.headers.get('host'), custom: request.headers.get('x-custom'),
    body, remote: info.remoteAddr, transport: info.transport, origin: location.origin, agent: navigator.userAgent },
    { status: 200, headers: { 'x-served-by': 'tab' } });
});
window.ready = window.server.url.then((url) => ({ url, transport: window.server.transport }));
</script>`;

beforeAll(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
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
});

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

async function openTab(query: Record<string, string>): Promise<{ url: string; transport: string }> {
  gw = await startGateway({ pollTimeout: 2_000 });
  page = await browser.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${siteOrigin}/?${new URLSearchParams({ gateway: gw.origin, ...query }).toString()}`);
  await page.waitForFunction(() => 'ready' in globalThis, undefined, { timeout: 10_000 }).catch(() => {
    throw new Error(`the page did not start: ${errors.join('; ')}`);
  });
  return page.evaluate(() => (globalThis as unknown as { ready: Promise<{ url: string; transport: string }> }).ready);
}

async function visit(name: string, path: string, init: { method?: string; body?: string } = {}): Promise<{ status: number; answer: Answer; headers: http.IncomingHttpHeaders }> {
  const g = gw as TestGateway;
  const r = await request(g.port, { host: g.host(name), path, method: init.method ?? 'GET', headers: { 'X-Custom': 'from node' }, ...(init.body !== undefined ? { body: init.body } : {}) });
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
      expect(get.answer).toMatchObject({ method: 'GET', url: `http://${name}.localhost:${g.port}/hello?x=1`, host: g.host(name), custom: 'from node', transport, origin: siteOrigin });
      expect(get.answer.agent).toMatch(/Chrome/);
      expect(get.answer.remote).toMatch(/^127\.0\.0\.1:\d+$/);

      const post = await visit(name, '/form', { method: 'POST', body: 'payload from a visitor' });
      expect(post.answer).toMatchObject({ method: 'POST', body: 'payload from a visitor' });

      // Several at once, the slow one first: each visitor gets its own answer.
      const many = await Promise.all([300, 0, 100, 0].map((d, i) => visit(name, `/many/${i}?delay=${d}`)));
      expect(many.map((m) => new URL(m.answer.url).pathname)).toEqual(['/many/0', '/many/1', '/many/2', '/many/3']);
    });
  }

  it('falls back to Comet by itself when no WebSocket can be opened', async () => {
    const online = await openTab({ name: 'fallback', blockWebSocket: '1' });
    expect(online.transport).toBe('comet');
    const r = await visit('fallback', '/');
    expect(r.answer.transport).toBe('comet');
  });

  it('releases the name when the page closes the server', async () => {
    await openTab({ name: 'closing', transport: 'websocket' });
    const g = gw as TestGateway;
    await (page as Page).evaluate(() => (globalThis as unknown as { server: { close(): Promise<void> } }).server.close());
    await until(() => g.gateway.table.lookup('closing') === undefined, 3_000, 'release');
    expect((await request(g.port, { host: g.host('closing') })).status).toBe(404);
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
