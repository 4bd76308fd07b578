import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { launchChromium } from '../helpers/chromium.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startEventsFront, type EventsFront } from '../helpers/front.js';
import { request, startGateway, type TestGateway } from '../helpers/index.js';
import { spawnCli, type Spawned } from '../helpers/spawn.js';

/*
 * `connect --inspect` in real headless Chromium: the built CLI as a child against a real gateway
 * (through the pass-through front of helpers/front.ts) and its event stream. The page lists a visitor's request live, shows its headers and
 * body as text (a <script> from a visitor or the app is never run), and replays it.
 */

const SHOTS = process.env['INSPECTOR_SHOTS'] === '1';

let browser: Browser;
let page: Page | undefined;
let gw: TestGateway | undefined;
let front: EventsFront | undefined;
let local: http.Server | undefined;
let c: Spawned | undefined;
let hits = 0;

beforeAll(async () => {
  browser = await launchChromium();
}, 30_000);

afterAll(async () => {
  await browser?.close();
});

afterEach(async () => {
  await page?.close();
  page = undefined;
  c?.kill('SIGKILL');
  c = undefined;
  await front?.close();
  front = undefined;
  await gw?.close();
  gw = undefined;
  local?.closeAllConnections();
  local?.close();
  local = undefined;
});

const EVIL = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">';

async function setup(extra: string[]): Promise<{ port: number; inspector: string }> {
  gw = await startGateway();
  front = await startEventsFront(gw.port);
  hits = 0;
  local = http.createServer((req, res) => {
    hits++;
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      res.writeHead(201, { 'content-type': 'text/html; charset=utf-8', 'x-app-note': EVIL, 'x-hit': String(hits) });
      res.end(`hit ${hits} ${req.method} ${req.url} body=${Buffer.concat(chunks).toString()} ${EVIL}`);
    });
  });
  await new Promise<void>((r) => local?.listen(0, '127.0.0.1', r));
  const lport = (local.address() as AddressInfo).port;
  c = spawnCli(['connect', String(lport), '--gateway', front.origin, '--name', 'insp', '--inspect', '0', ...extra]);
  const m = await c.waitFor(/Inspector {3}(http:\/\/127\.0\.0\.1:\d+\/)/);
  await c.waitFor(/Forwarding/);
  return { port: front.port, inspector: m[1] as string };
}

describe('connect --inspect', () => {
  for (const extra of [[], ['--http1']]) {
    it(`lists requests live, shows them as text, and replays them${extra.length ? ' (--http1)' : ''}`, async () => {
      const { port, inspector } = await setup(extra);
      page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
      await page.goto(inspector);
      await page.waitForSelector('#state:text("live")');
      const host = `insp.localhost:${port}`;
      // The gateway's stream is subscribed a moment after Forwarding: visit until a row shows.
      const rows = page.locator('.row');
      for (let i = 0; (await rows.count()) === 0; i++) {
        await request(port, {
          host,
          method: 'POST',
          path: '/api/items?q=1',
          body: '{"name":"<b>bold</b>"}',
          headers: { 'content-type': 'application/json', 'x-visitor': EVIL },
        });
        if ((await rows.count()) > 0) break;
        await page.waitForSelector('.row', { timeout: 250 }).catch(() => undefined);
        if (i > 40) throw new Error('no row appeared');
      }
      const row = rows.first();
      await expect(row.locator('.path').textContent()).resolves.toBe('/api/items?q=1');
      await expect(row.locator('.status').textContent()).resolves.toBe('201');
      await row.click();
      await page.waitForSelector('.detail h2');
      const detailText = (await page.locator('.detail').textContent()) ?? '';
      expect(detailText).toContain('POST /api/items?q=1');
      expect(detailText).toContain('x-visitor');
      expect(detailText).toContain(EVIL); // the visitor's header, as text
      expect(detailText).toContain('{"name":"<b>bold</b>"}'); // the request body, as text
      expect(detailText).toContain('x-app-note');
      expect(await page.locator('.detail script, .detail img, .detail b').count()).toBe(0);
      if (SHOTS) await page.screenshot({ path: '/tmp/inspector-1280.png' });

      const before = hits;
      await page.click('#replay');
      await page.waitForSelector('#replay-status');
      expect(await page.locator('#replay-status').textContent()).toBe('201');
      const replayed = (await page.locator('#replayed').textContent()) ?? '';
      expect(replayed).toContain(`hit ${before + 1} POST /api/items?q=1 body={"name":"<b>bold</b>"}`);
      expect(replayed).toContain(EVIL);
      expect(hits).toBe(before + 1);
      expect(await page.evaluate(() => (globalThis as unknown as { pwned?: number }).pwned)).toBeUndefined();
      if (SHOTS) {
        await page.screenshot({ path: '/tmp/inspector-1280-replay.png' });
        await page.setViewportSize({ width: 390, height: 844 });
        await page.screenshot({ path: '/tmp/inspector-390-detail.png' });
        await page.click('.detail .back');
        await page.screenshot({ path: '/tmp/inspector-390.png' });
      }
    });
  }

  it('a body past the KiB kept: marked truncated, replay disabled with a note; binary shown as hex', async () => {
    const { port, inspector } = await setup([]);
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(inspector);
    await page.waitForSelector('#state:text("live")');
    const host = `insp.localhost:${port}`;
    const big = Buffer.alloc(3000, 0x61);
    const binary = Buffer.from([0, 1, 2, 0xff, 0xfe, 0x10, 0x80]);
    const rows = page.locator('.row');
    for (let i = 0; (await rows.count()) === 0; i++) {
      await request(port, { host, method: 'PUT', path: '/big', body: big });
      if ((await rows.count()) > 0) break;
      await page.waitForSelector('.row', { timeout: 250 }).catch(() => undefined);
      if (i > 40) throw new Error('no row appeared');
    }
    await request(port, {
      host,
      method: 'POST',
      path: '/bin',
      body: binary,
      headers: { 'content-type': 'application/octet-stream' },
    });
    await page.waitForSelector('.row .path:text-is("/bin")');
    await page
      .locator('.row', { has: page.locator('.path:text-is("/big")') })
      .first()
      .click();
    await page.waitForSelector('.detail h2:text("PUT /big")');
    expect(await page.locator('#replay').isDisabled()).toBe(true);
    const big1 = (await page.locator('.detail').textContent()) ?? '';
    expect(big1).toContain('Replay unavailable: the request body was larger than the 1 KiB kept.');
    expect(big1).toContain('truncated: only the first KiB of 3.0 KB is shown');
    await page
      .locator('.row', { has: page.locator('.path:text-is("/bin")') })
      .first()
      .click();
    await page.waitForSelector('.detail h2:text("POST /bin")');
    const bin = (await page.locator('.detail').textContent()) ?? '';
    expect(bin).toContain('binary: first 7 bytes as hex');
    expect(bin).toContain('00 01 02 ff fe 10 80');
    expect(await page.locator('#replay').isDisabled()).toBe(false);
    if (SHOTS) await page.screenshot({ path: '/tmp/inspector-1280-binary.png' });
  });

  it('the replay endpoint refuses requests without its header, and other Host names', async () => {
    const { inspector } = await setup([]);
    const u = new URL(inspector);
    const post = (headers: http.OutgoingHttpHeaders): Promise<number> =>
      new Promise((resolve, reject) => {
        const spec = { host: '127.0.0.1', port: u.port, method: 'POST', path: '/replay/1', headers, agent: false };
        const r = http.request(spec, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        r.on('error', reject);
        r.end();
      });
    expect(await post({})).toBe(403);
    expect(await post({ 'x-ptth-inspector': '1' })).toBe(404); // nothing kept yet
    expect(await post({ 'x-ptth-inspector': '1', host: `evil.example:${u.port}` })).toBe(421);
  });
});
