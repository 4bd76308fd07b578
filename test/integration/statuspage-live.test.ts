import type { Browser, Page } from 'playwright-core';
import { launchChromium } from '../helpers/chromium.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Tunnel } from '../../src/client/node.js';
import type { TestGateway } from '../helpers/index.js';
import { useApp, useGateway } from '../helpers/fixture.js';

/*
 * The status page in real headless Chromium: the app URL it advertises is the one claims get (port
 * included), and a registration made after the page loaded appears without a reload. Screenshots
 * at a desktop and a phone width go to /tmp (STATUS_SHOTS=0 skips them) for a person to look at.
 */

const SHOTS = process.env['STATUS_SHOTS'] !== '0';

let browser: Browser;
let page: Page | undefined;

beforeAll(async () => {
  browser = await launchChromium();
}, 30_000);

afterAll(async () => {
  await browser?.close();
});

// The page closes here, before the fixture's hooks close the apps and the gateway it shows.
afterEach(async () => {
  await page?.close();
  page = undefined;
});

async function app(g: TestGateway, name: string, body: string): Promise<Tunnel> {
  return useApp(g.port, (_req, res) => res.end(body), { name, connections: 1 });
}

describe('status page in Chromium', () => {
  it('shows the app URL with the port and lists a new registration without a reload', async () => {
    const g = await useGateway();
    await app(g, 'first-app', 'one');
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    let navigations = 0;
    page.on('framenavigated', (f) => {
      if (f === page?.mainFrame()) navigations++;
    });
    await page.goto(`${g.origin}/`);
    expect(navigations).toBe(1);

    // The app URL pattern and every listed link carry the port, as claims advertise them.
    expect(await page.locator('#app-url').textContent()).toBe(`http://NAME.localhost:${g.port}/`);
    const first = page.locator('#rows a', { hasText: 'first-app' });
    expect(await first.getAttribute('href')).toBe(`http://first-app.localhost:${g.port}/`);
    expect(await page.locator('#rows').textContent()).toMatch(/http[12] from 127\.0\.0\.1:\d+/);
    expect(await page.locator('#rows').textContent()).not.toContain('::ffff:');
    expect(await page.locator('.cmd').textContent()).toBe(
      `npx ptth-proxy connect 3000 --gateway http://localhost:${g.port}`,
    );
    expect(await page.locator('#count').textContent()).toBe('1');

    // A second app registers: the page shows it by itself (the JSON poll), without navigating.
    await app(g, 'second-app', 'two');
    const second = page.locator('#rows a', { hasText: 'second-app' });
    await second.waitFor({ timeout: 10_000 });
    expect(await second.getAttribute('href')).toBe(`http://second-app.localhost:${g.port}/`);
    await page.locator('#count', { hasText: '2' }).waitFor({ timeout: 10_000 });
    await page.locator('#live.on').waitFor({ timeout: 10_000 });
    expect(navigations).toBe(1);
    if (SHOTS) await page.screenshot({ path: '/tmp/statuspage-1280.png', fullPage: true });

    await page.setViewportSize({ width: 390, height: 844 });
    // No horizontal scrolling on a phone: the page fits its width.
    expect(Number(await page.evaluate('document.documentElement.scrollWidth'))).toBeLessThanOrEqual(390);
    if (SHOTS) await page.screenshot({ path: '/tmp/statuspage-390.png', fullPage: true });
  }, 40_000);

  it('a release disappears from the list without a reload; the empty list says so', async () => {
    const g = await useGateway();
    const t = await app(g, 'going-away', 'bye');
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(`${g.origin}/`);
    await page.locator('#rows a', { hasText: 'going-away' }).waitFor();
    await t.close({ graceMs: 100 });
    await page.locator('#rows tr.empty', { hasText: 'No app is connected.' }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#count').textContent()).toBe('0');
  }, 40_000);
});
