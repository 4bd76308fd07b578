import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { launchChromium } from '../helpers/chromium.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CometChannel } from '../../src/channels/comet.js';
import { request, startGateway, until, type TestGateway } from '../helpers/index.js';

/*
 * The browser library over pipelined Comet polls (docs/PROTOCOL.md section 5.7) in headless
 * Chromium: the tab asks for application/http, takes several requests in one poll, answers them
 * concurrently and posts their responses back as one pipeline. Setup as in browser.test.ts.
 */

let browser: Browser;
let site: http.Server;
let siteOrigin: string;
let gw: TestGateway | undefined;
let page: Page | undefined;

/** A page that serves over forced Comet with `pollers` pollers; `/gate` waits for window.release(). */
const PAGE = `<!doctype html><meta charset="utf-8"><title>ptth pipeline page</title>
<script type="module">
const q = new URLSearchParams(location.search);
const gateway = q.get('gateway');
const { serve } = await import(gateway + '/ptth.js');
window.errors = [];
let open;
const gate = new Promise((r) => (open = r));
window.release = () => open();
window.gated = false;
window.server = serve({ gateway, name: q.get('name'), transport: 'comet', pollers: Number(q.get('pollers')), pipeline: q.get('pipeline') !== '0', backoff: 50,
  onError: (e) => window.errors.push(String(e && e.message)) }, async (request, info) => {
  const url = new URL(request.url);
  if (url.pathname === '/gate') {
    window.gated = true;
    await gate;
  }
  const delay = Number(url.searchParams.get('delay') || 0);
  if (delay) await new Promise((r) => setTimeout(r, delay));
  const body = request.method === 'POST' ? await request.text() : '';
  return new Response(request.method === 'HEAD' ? null : url.pathname + ' ' + body + ' ' + info.remoteAddr, { status: 200, headers: { 'x-path': url.pathname } });
});
window.ready = window.server.url;
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
});

/** What the gateway answered on its Comet request URLs: poll answers' types, and reply POSTs. */
interface CometTraffic {
  pipelines: number;
  singles: number;
  replies: number;
}

async function openTab(
  name: string,
  pollers: number,
  pipeline = true,
): Promise<{ g: TestGateway; p: Page; traffic: CometTraffic }> {
  const g = await startGateway({ pollTimeout: 2_000 });
  gw = g;
  const traffic: CometTraffic = { pipelines: 0, singles: 0, replies: 0 };
  g.gateway.server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!req.url?.startsWith('/reversehttp/')) return;
    res.once('finish', () => {
      if (req.method === 'POST' && res.statusCode === 202) traffic.replies++;
      if (req.method === 'GET' && res.getHeader('content-type') === 'application/http') traffic.pipelines++;
      if (req.method === 'GET' && res.getHeader('content-type') === 'message/http') traffic.singles++;
    });
  });
  const p = await browser.newPage();
  page = p;
  await p.goto(
    `${siteOrigin}/?${new URLSearchParams({ gateway: g.origin, name, pollers: String(pollers), pipeline: pipeline ? '1' : '0' }).toString()}`,
  );
  await p.waitForFunction(() => 'ready' in globalThis, undefined, { timeout: 10_000 });
  const url = await p.evaluate(() => (globalThis as unknown as { ready: Promise<string> }).ready);
  expect(url).toBe(`http://${name}.localhost:${g.port}/`);
  return { g, p, traffic };
}

function channel(g: TestGateway, name: string): CometChannel {
  const c = g.gateway.table.lookup(name)?.channels.find((ch) => ch.transport === 'comet');
  if (!(c instanceof CometChannel)) throw new Error('no Comet channel');
  return c;
}

describe('the browser library with pipelined Comet polls, in headless Chromium', () => {
  it('takes the requests that queued while it was busy in one poll and answers each visitor', async () => {
    const { g, p, traffic } = await openTab('tab-pipe', 1);
    const gated = request(g.port, { host: g.host('tab-pipe'), path: '/gate' });
    await p.waitForFunction(() => (globalThis as unknown as { gated: boolean }).gated, undefined, { timeout: 5_000 });
    // The tab's one poller is busy with /gate: these wait in the gateway's queue.
    const visitors = Array.from({ length: 8 }, (_, i) =>
      request(g.port, {
        host: g.host('tab-pipe'),
        path: `/q${i}`,
        ...(i % 2 === 1 ? { method: 'POST', body: `body${i}` } : {}),
      }),
    );
    await until(() => channel(g, 'tab-pipe').queued === 8, 5_000, 'eight requests queued');
    const repliesBefore = traffic.replies;
    await p.evaluate(() => (globalThis as unknown as { release: () => void }).release());
    expect((await gated).status).toBe(200);
    const got = await Promise.all(visitors);
    for (const [i, v] of got.entries()) {
      expect(v.status).toBe(200);
      expect(v.headers['x-path']).toBe(`/q${i}`);
      expect(v.body).toMatch(new RegExp(`^/q${i} ${i % 2 === 1 ? `body${i}` : ''} 127\\.0\\.0\\.1:\\d+$`));
    }
    // The gate's reply, then one reply for all eight.
    expect(traffic.replies - repliesBefore).toBe(2);
    expect(traffic.pipelines).toBeGreaterThanOrEqual(2);
    expect(await p.evaluate(() => (globalThis as unknown as { errors: string[] }).errors)).toEqual([]);
  });

  it('serves many concurrent visitors, slow and fast, GET, HEAD and POST, each its own answer', async () => {
    const { g, p } = await openTab('tab-many', 2);
    const n = 60;
    const got = await Promise.all(
      Array.from({ length: n }, (_, i) => {
        const method = i % 3 === 0 ? 'POST' : i % 3 === 1 ? 'HEAD' : 'GET';
        return request(g.port, {
          host: g.host('tab-many'),
          method,
          path: `/m${i}?delay=${(i * 7) % 50}`,
          ...(method === 'POST' ? { body: `b${i}` } : {}),
        });
      }),
    );
    for (const [i, v] of got.entries()) {
      expect(v.status).toBe(200);
      expect(v.headers['x-path']).toBe(`/m${i}`);
      if (i % 3 === 1) expect(v.body).toBe('');
      else expect(v.body.startsWith(`/m${i} ${i % 3 === 0 ? `b${i}` : ''} `)).toBe(true);
    }
    expect(await p.evaluate(() => (globalThis as unknown as { errors: string[] }).errors)).toEqual([]);
  });

  it('with pipeline: false it polls for one request at a time (message/http), as before', async () => {
    const { g, traffic } = await openTab('tab-single', 2, false);
    const got = await Promise.all(
      Array.from({ length: 6 }, (_, i) => request(g.port, { host: g.host('tab-single'), path: `/s${i}` })),
    );
    expect(got.map((v) => v.headers['x-path'])).toEqual(Array.from({ length: 6 }, (_, i) => `/s${i}`));
    expect(traffic.pipelines).toBe(0);
    expect(traffic.singles).toBe(6);
    expect(traffic.replies).toBe(6);
  });
});
