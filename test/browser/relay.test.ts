import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser } from 'playwright-core';
import { launchChromium } from '../helpers/chromium.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKey } from '../../src/table/access.js';
import { cleanup, useGateway } from '../helpers/fixture.js';

/*
 * relay() from /ptth.js in real headless Chromium: a page on another origin sends fetch-shaped
 * requests through the gateway's RelayHttp endpoint to a loopback target that the test's key lists
 * by address, and gets the target's responses back as Response objects (docs/PROTOCOL.md section 10).
 */

let browser: Browser;
let site: http.Server;
let siteOrigin: string;

beforeAll(async () => {
  browser = await launchChromium();
  site = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><meta charset="utf-8"><title>relay page</title>');
  });
  await new Promise<void>((r) => site.listen(0, '127.0.0.1', r));
  siteOrigin = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
}, 30_000);

afterAll(async () => {
  await browser?.close();
  await new Promise((r) => site?.close(r));
});

describe('relay() in the browser library', () => {
  it('sends a fetch-shaped request through the gateway and resolves with the target response; refusals reject with RelayError', async () => {
    const target = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        res.writeHead(201, { 'content-type': 'application/json', 'x-target': 'yes' });
        res.end(
          JSON.stringify({
            method: req.method,
            url: req.url,
            a: req.headers['x-a'],
            body: Buffer.concat(chunks).toString(),
          }),
        );
      });
    });
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
    cleanup(() => new Promise((r) => target.close(r)));
    const port = (target.address() as AddressInfo).port;
    const k = generateKey();
    const gw = await useGateway({
      relay: true,
      access: { keys: [{ id: 'page', sha256: k.sha256, names: ['*'], relay: [`127.0.0.1:${port}`] }] },
    });
    const page = await browser.newPage();
    cleanup(() => page.close());
    await page.goto(siteOrigin);
    // A string, not a function: vitest would rewrite a function's import() for node.
    const script = `(async ({ gateway, key, port }) => {
      const { relay, RelayError } = await import(gateway + '/ptth.js');
      const res = await relay('http://127.0.0.1:' + port + '/things?x=1', {
        gateway, key, method: 'POST', headers: { 'x-a': 'b', 'content-type': 'text/plain' }, body: 'from the page',
      });
      const ok = { status: res.status, type: res.headers.get('content-type'), target: res.headers.get('x-target'), json: await res.json() };
      let refused;
      try {
        await relay('http://127.0.0.2:' + port + '/', { gateway, key });
      } catch (e) {
        refused = { isRelayError: e instanceof RelayError, name: e.name, status: e.status, code: e.code };
      }
      const bad = [];
      for (const url of ['ftp://127.0.0.1/x', 'https://127.0.0.1:8443/', 'http://u:p@127.0.0.1:' + port + '/']) {
        try {
          await relay(url, { gateway, key });
          bad.push('resolved');
        } catch (e) {
          bad.push(e.name);
        }
      }
      return { ok, refused, bad };
    })(${JSON.stringify({ gateway: gw.origin, key: k.key, port })})`;
    const result = (await page.evaluate(script)) as { ok: unknown; refused: unknown; bad: string[] };
    expect(result.ok).toEqual({
      status: 201,
      type: 'application/json',
      target: 'yes',
      json: { method: 'POST', url: '/things?x=1', a: 'b', body: 'from the page' },
    });
    expect(result.refused).toEqual({
      isRelayError: true,
      name: 'RelayError',
      status: 403,
      code: 'PTTH_ERR_RELAY_FORBIDDEN',
    });
    // URLs the relay cannot carry never reach the gateway: a scheme other than http(s), HTTPS off port 443, userinfo.
    expect(result.bad).toEqual(['TypeError', 'TypeError', 'TypeError']);
  });
});
