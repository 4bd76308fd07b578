import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Browser, BrowserContext } from 'playwright-core';
import { launchChromium } from '../helpers/chromium.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGateway, type Gateway } from '../../src/gateway/server.js';
import { FAST } from '../helpers/index.js';
import { makeCert, type TestCert } from '../helpers/tls.js';

/*
 * The browser library against an HTTPS gateway in real headless Chromium: the tab loads /ptth.js
 * over https and serves over wss:// (and over Comet on https). The certificate is self-signed and
 * made at test time; the browser context is told to accept it, the node visitor verifies it.
 */

const DOMAIN = 'tls.localhost';

const PAGE = `<!doctype html><meta charset="utf-8"><title>ptth tls page</title>
<script type="module">
const q = new URLSearchParams(location.search);
const gateway = q.get('gateway');
const { serve } = await import(gateway + '/ptth.js');
window.server = serve({ gateway, name: q.get('name'), transport: q.get('transport'), backoff: 50, maxBackoff: 500 },
  async (request, info) => new Response(request.method + ' ' + new URL(request.url).pathname + ' via ' + info.transport + ' ' + (await request.text())));
window.ready = window.server.url.then((url) => ({ url, transport: window.server.transport }));
</script>`;

let browser: Browser;
let context: BrowserContext;
let site: http.Server;
let siteOrigin: string;
let cert: TestCert;
let gateway: Gateway;
let port: number;

beforeAll(async () => {
  cert = makeCert(DOMAIN);
  gateway = createGateway({ ...FAST, domain: DOMAIN, pollTimeout: 2_000, tls: { cert: cert.cert, key: cert.key } });
  port = (await gateway.listen(0, '127.0.0.1')).port;
  browser = await launchChromium();
  context = await browser.newContext({ ignoreHTTPSErrors: true });
  site = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  });
  await new Promise<void>((r) => site.listen(0, '127.0.0.1', r));
  siteOrigin = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
}, 30_000);

afterAll(async () => {
  await context?.close();
  await browser?.close();
  await new Promise((r) => site?.close(r));
  await gateway?.close(200);
  cert?.remove();
});

function visit(name: string, path: string, body: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1',
      port,
      servername: `${name}.${DOMAIN}`,
      ca: cert.cert,
      method: 'POST',
      path,
      headers: { host: `${name}.${DOMAIN}:${port}` },
      agent: false,
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('the browser library against an HTTPS gateway', () => {
  for (const transport of ['websocket', 'comet'] as const) {
    it(`serves from the tab over ${transport === 'websocket' ? 'wss://' : 'Comet on https'}`, async () => {
      const page = await context.newPage();
      try {
        const name = `tls-${transport}`;
        const gw = `https://${DOMAIN}:${port}`;
        await page.goto(`${siteOrigin}/?${new URLSearchParams({ gateway: gw, name, transport }).toString()}`);
        await page.waitForFunction(() => 'ready' in globalThis, undefined, { timeout: 10_000 });
        const online = await page.evaluate(
          () => (globalThis as unknown as { ready: Promise<{ url: string; transport: string }> }).ready,
        );
        expect(online).toEqual({ url: `https://${name}.${DOMAIN}:${port}/`, transport });
        expect(gateway.table.lookup(name)?.channels.map((c) => c.transport)).toEqual([transport]);
        const r = await visit(name, '/secure', 'over tls');
        expect(r).toEqual({ status: 200, body: `POST /secure via ${transport} over tls` });
      } finally {
        await page.close();
      }
    });
  }
});
