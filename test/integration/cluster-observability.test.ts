import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import pino from 'pino';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium } from '../helpers/chromium.js';
import { createClusterNode, type ClusterNode } from '../../src/cluster/node.js';
import { CLUSTER_LIST_LIMIT } from '../../src/gateway/endpoints.js';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { attachLogger, createLogger } from '../../src/log.js';
import { FAST, request } from '../helpers/index.js';
import { cleanup, useApp, useGateway } from '../helpers/fixture.js';
import { useRedis, useRedisForFile, type RedisServer } from '../helpers/redis.js';

/*
 * What an operator sees of a cluster, from any node: the status page lists every name of the
 * cluster with the nodes holding its channels (and still answers, with this node's view, when Redis
 * is gone), every metric of a node carries its id, and so does every log line.
 */

const shared = useRedisForFile();
let prefixes = 0;

interface TestNode {
  readonly node: ClusterNode;
  readonly id: string;
  readonly port: number;
}

/** A cluster node on 127.0.0.1 port 0, closed when the test finishes. */
async function useNode(
  id: string,
  redis: RedisServer,
  prefix: string,
  options: GatewayOptions = {},
  commandTimeout = 1000,
): Promise<TestNode> {
  const node = await createClusterNode(
    { ...FAST, ...options },
    { redis: redis.url, nodeId: id, prefix, heartbeat: 100, nodeTimeout: 1000, commandTimeout },
  );
  cleanup(() => node.close(200));
  const addr = await node.listen(0, '127.0.0.1');
  return { node, id, port: addr.port };
}

/** Two nodes on one Redis with a key prefix of this test's own. */
async function twoNodes(redis: RedisServer = shared(), options: GatewayOptions = {}): Promise<[TestNode, TestNode]> {
  const prefix = `obs${++prefixes}:`;
  return [await useNode('node-one', redis, prefix, options), await useNode('node-two', redis, prefix, options)];
}

/** Resolves when `check` holds (state that travels through Redis), polling every 20 ms; fails after `ms`. */
async function until<T>(check: () => Promise<T | undefined>, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Holder {
  node: string;
  channels: number;
}
interface Row {
  name: string;
  url: string;
  requests: number;
  waiting: number;
  expiresAt: string | null;
  channels: { transport: string; remote: string }[];
  holders?: Holder[];
  remotes?: number;
}
interface StatusJson {
  gateway: { node?: string };
  count: number;
  registrations?: Row[];
  cluster?: {
    node: string;
    available: boolean;
    nodes?: { id: string; url: string }[];
    truncated?: boolean;
    limit?: number;
    error?: string;
  };
}

async function statusJson(port: number): Promise<StatusJson> {
  const r = await request(port, { host: `localhost:${port}`, headers: { accept: 'application/json' } });
  expect(r.status).toBe(200);
  return JSON.parse(r.body) as StatusJson;
}

async function statusHtml(port: number): Promise<string> {
  const r = await request(port, { host: `localhost:${port}`, headers: { accept: 'text/html' } });
  expect(r.status).toBe(200);
  return r.body;
}

/** The row of `name` on the JSON page of `port` once `ok` holds for it. */
function rowWhen(port: number, name: string, ok: (row: Row, page: StatusJson) => boolean): Promise<Row> {
  return until(async () => {
    const page = await statusJson(port);
    const row = page.registrations?.find((r) => r.name === name);
    return row && ok(row, page) ? row : undefined;
  });
}

describe('the status page of a cluster node', () => {
  it("lists a name whose app is connected to another node, with that node's id and channel count", async () => {
    const [one, two] = await twoNodes();
    await useApp(two.port, (_req, res) => res.end('x'), { name: 'elsewhere' });
    await useApp(one.port, (_req, res) => res.end('x'), { name: 'righthere' });

    const row = await rowWhen(one.port, 'elsewhere', (r) => r.holders?.[0]?.node === 'node-two');
    expect(row.holders).toEqual([{ node: 'node-two', channels: 1 }]);
    // No channel of it here: the detail is node two's.
    expect(row.channels).toEqual([]);
    expect(row.expiresAt).toBeNull();
    expect(row.url).toBe(`http://elsewhere.localhost:${one.port}/`);

    const page = await statusJson(one.port);
    expect(page.gateway.node).toBe('node-one');
    expect(page.count).toBe(2);
    expect(page.registrations?.map((r) => r.name)).toEqual(['elsewhere', 'righthere']);
    const here = page.registrations?.find((r) => r.name === 'righthere');
    expect(here?.holders).toEqual([{ node: 'node-one', channels: 1 }]);
    expect(here?.channels.map((c) => c.transport)).toEqual(['http2']);
    expect(page.cluster).toMatchObject({ node: 'node-one', available: true, truncated: false });
    expect(page.cluster?.nodes?.map((n) => n.id)).toEqual(['node-one', 'node-two']);
    expect(page.cluster?.nodes?.find((n) => n.id === 'node-two')?.url).toBe(new URL(two.node.url).href);

    // Node two shows the same cluster from its side: its own channel in detail.
    const there = await rowWhen(two.port, 'elsewhere', (r) => r.channels.length === 1);
    expect(there.holders).toEqual([{ node: 'node-two', channels: 1 }]);
    expect(there.channels[0]?.remote).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it("shows in HTML the node's id, the live nodes, and which node holds each name", async () => {
    const [one, two] = await twoNodes();
    await useApp(two.port, (_req, res) => res.end('x'), { name: 'htmlapp' });
    await rowWhen(one.port, 'htmlapp', (r) => (r.holders?.length ?? 0) > 0);

    const html = await statusHtml(one.port);
    expect(html).toContain('This is node <code>node-one</code> of a cluster.');
    const [u1, u2] = [new URL(one.node.url).href, new URL(two.node.url).href];
    expect(html).toContain(`Live nodes (2): <code title="${u1}">node-one</code>, <code title="${u2}">node-two</code>.`);
    const row = html.slice(html.indexOf('htmlapp'), html.indexOf('</tr>', html.indexOf('htmlapp')));
    expect(row).toContain('<span class="holder">on <b>node-two</b> <small>1 channel</small></span>');
    expect(row).not.toContain('waiting for the app to reconnect');
    expect(html).toContain('Live registrations (<span id="count">1</span>)');
    expect(html).toContain('<p id="cluster-note" hidden></p>');

    const own = await statusHtml(two.port);
    const ownRow = own.slice(own.indexOf('htmlapp'), own.indexOf('</tr>', own.indexOf('htmlapp')));
    expect(ownRow).toContain('on <b>node-two</b> (this node) <small>1 channel</small>');
    expect(ownRow).toMatch(/<span class="chan"><b>http2<\/b> from <code>127\.0\.0\.1:\d+<\/code>/);
  });

  it('shows a released name as waiting for its app, with the lease end, on every node', async () => {
    const [one, two] = await twoNodes();
    const app = await useApp(two.port, (_req, res) => res.end('x'), { name: 'comesback', lease: 30 });
    await rowWhen(one.port, 'comesback', (r) => (r.holders?.length ?? 0) > 0);
    // Gone without giving the name back: the lease keeps it for the app's return.
    await app.close({ graceMs: 0, release: false });
    const row = await rowWhen(one.port, 'comesback', (r) => r.holders?.length === 0);
    expect(Date.parse(row.expiresAt ?? '') - Date.now()).toBeGreaterThan(20_000);
    const html = await statusHtml(one.port);
    expect(html).toContain('none: waiting for the app to reconnect <time datetime=');
  });

  it('keeps the list, the nodes and the node id from clients that may not see the list', async () => {
    const [one, two] = await twoNodes(shared(), { statusList: 'nobody' });
    await useApp(two.port, (_req, res) => res.end('x'), { name: 'hidden4242' });
    const page = await statusJson(one.port);
    expect(page).not.toHaveProperty('registrations');
    expect(page).not.toHaveProperty('cluster');
    expect(page.gateway).not.toHaveProperty('node');
    const html = await statusHtml(one.port);
    expect(html).not.toContain('hidden4242');
    expect(html).not.toContain('node-two');
    expect(html).not.toContain('node-one');
  });

  it('lists at most CLUSTER_LIST_LIMIT names and says that there are more', async () => {
    const [one] = await twoNodes();
    const prefix = `obs${prefixes}:`;
    const direct = new Redis(shared().url);
    cleanup(() => direct.quit());
    const batch = direct.pipeline();
    for (let i = 0; i <= CLUSTER_LIST_LIMIT; i++) {
      batch.hset(`${prefix}r:many${i}`, { th: 'x', l: '60', c: String(Date.now()), n: 'nonce', v: '1' });
      batch.pexpire(`${prefix}r:many${i}`, 60_000);
    }
    await batch.exec();
    const page = await statusJson(one.port);
    expect(page.registrations).toHaveLength(CLUSTER_LIST_LIMIT);
    expect(page.count).toBe(CLUSTER_LIST_LIMIT);
    expect(page.cluster).toMatchObject({ available: true, truncated: true, limit: CLUSTER_LIST_LIMIT });
    const html = await statusHtml(one.port);
    expect(html).toContain(`Live registrations (<span id="count">${CLUSTER_LIST_LIMIT}+</span>)`);
    expect(html).toContain(
      `The cluster holds more than ${CLUSTER_LIST_LIMIT} registrations: ${CLUSTER_LIST_LIMIT} of them are listed.`,
    );
  }, 20_000);

  it("answers with this node's view and a note while Redis is down, and lists the cluster again once it is back", async () => {
    const redis = await useRedis();
    const [one, two] = await twoNodes(redis);
    await useApp(one.port, (_req, res) => res.end('x'), { name: 'localone' });
    await useApp(two.port, (_req, res) => res.end('x'), { name: 'remoteone' });
    await rowWhen(one.port, 'remoteone', (r) => (r.holders?.length ?? 0) > 0);
    // A visitor of remoteone on node one: the route to node two is cached there.
    expect((await request(one.port, { host: `remoteone.localhost:${one.port}` })).body).toBe('x');

    await redis.kill();
    const page = await until(async () => {
      const p = await statusJson(one.port);
      return p.cluster?.available === false ? p : undefined;
    });
    expect(page.cluster?.node).toBe('node-one');
    expect(page.cluster?.error).toMatch(/Redis|connection|closed|writeable/i);
    expect(page.cluster).not.toHaveProperty('nodes');
    const local = page.registrations?.find((r) => r.name === 'localone');
    expect(local?.holders).toEqual([{ node: 'node-one', channels: 1 }]);
    expect(local?.channels.map((c) => c.transport)).toEqual(['http2']);
    const cached = page.registrations?.find((r) => r.name === 'remoteone');
    expect(cached).toMatchObject({ channels: [], holders: [], remotes: 1 });
    expect(cached?.requests).toBe(1);

    const html = await statusHtml(one.port);
    expect(html).toContain('<p class="warn" id="cluster-note">The cluster list is unavailable');
    expect(html).toContain('This page shows this node&#39;s registrations only.');
    expect(html).toContain('none here: served by another node');
    expect(html).toContain('localone');

    await redis.restart();
    // The nodes restate what they hold: both names are listed again from node one.
    await rowWhen(
      one.port,
      'remoteone',
      (r, p) => p.cluster?.available === true && r.holders?.[0]?.node === 'node-two',
    );
    await rowWhen(one.port, 'localone', (r) => r.holders?.[0]?.node === 'node-one');
  }, 20_000);

  it("answers within the store's command timeout, with the note, while Redis is stalled", async () => {
    const redis = await useRedis();
    const prefix = `obs${++prefixes}:`;
    const one = await useNode('node-one', redis, prefix, {}, 300);
    await useApp(one.port, (_req, res) => res.end('x'), { name: 'stalled' });
    const pid = redis.pid as number;
    process.kill(pid, 'SIGSTOP');
    cleanup(() => {
      if (redis.pid !== undefined) process.kill(redis.pid, 'SIGCONT');
    });
    const start = Date.now();
    const page = await statusJson(one.port);
    expect(Date.now() - start).toBeLessThan(2000);
    expect(page.cluster).toMatchObject({ available: false });
    expect(page.cluster?.error).toMatch(/^the shared store \(Redis\) (did not answer: .*timed out|is unreachable)/i);
    expect(page.registrations?.map((r) => r.name)).toEqual(['stalled']);
    process.kill(pid, 'SIGCONT');
  });
});

describe('the status page of a cluster node in Chromium', () => {
  let browser: Browser | undefined;
  beforeAll(async () => {
    browser = await launchChromium();
  }, 30_000);
  afterAll(async () => {
    await browser?.close();
  });

  it("shows names connected to another node, and the store's loss, without a reload", async () => {
    const redis = await useRedis();
    const [one, two] = await twoNodes(redis);
    await useApp(one.port, (_req, res) => res.end('x'), { name: 'first-here' });
    const page = await (browser as Browser).newPage({ viewport: { width: 1280, height: 800 } });
    cleanup(() => page.close());
    await page.goto(`http://127.0.0.1:${one.port}/`);
    expect(await page.locator('#cluster').textContent()).toContain('This is node node-one of a cluster.');
    expect(await page.locator('#nodes').textContent()).toBe(' Live nodes (2): node-one, node-two.');

    await useApp(two.port, (_req, res) => res.end('x'), { name: 'second-there' });
    const row = page.locator('#rows tr', { hasText: 'second-there' });
    await row.waitFor({ timeout: 10_000 });
    await row.locator('.holder', { hasText: 'on node-two 1 channel' }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#rows tr', { hasText: 'first-here' }).textContent()).toMatch(
      /on node-one \(this node\) 1 channelhttp2 from 127\.0\.0\.1:\d+/,
    );
    await page.locator('#count', { hasText: '2' }).waitFor({ timeout: 10_000 });

    await redis.kill();
    const note = page.locator('#cluster-note.warn');
    await note.waitFor({ timeout: 10_000 });
    expect(await note.textContent()).toContain('The cluster list is unavailable');
    expect(await page.locator('#nodes').textContent()).toBe('');
    await page.locator('#live.on').waitFor({ timeout: 10_000 });
    await page.screenshot({ path: '/tmp/cluster-statuspage-1280.png', fullPage: true });
  }, 40_000);
});

describe('metrics of a cluster node', () => {
  /** The sample lines of a scrape (no comments, no blank lines). */
  async function samples(port: number): Promise<string[]> {
    const r = await request(port, { path: '/metrics' });
    expect(r.status).toBe(200);
    return r.body.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
  }

  it('carry the node label with its id on every line, process metrics included', async () => {
    const [one, two] = await twoNodes();
    await useApp(two.port, (_req, res) => res.end('x'), { name: 'metered' });
    expect((await request(two.port, { host: `metered.localhost:${two.port}` })).status).toBe(200);
    for (const n of [one, two]) {
      const lines = await samples(n.port);
      expect(lines.length).toBeGreaterThan(20);
      for (const line of lines) expect(line, line).toContain(`node="${n.id}"`);
      expect(lines.some((l) => l.startsWith('process_cpu_user_seconds_total{'))).toBe(true);
    }
    expect(await samples(two.port)).toContain('ptth_requests_total{status_class="2xx",node="node-two"} 1');
    expect(await samples(two.port)).toContain('ptth_channels{transport="http2",node="node-two"} 1');
  });

  it('carry no node label on a gateway on its own', async () => {
    const gw = await useGateway();
    const r = await request(gw.port, { path: '/metrics' });
    expect(r.body).not.toContain('node=');
    expect(r.body).toContain('\nptth_registrations 0\n');
  });
});

describe('logs of a cluster node', () => {
  /** A stream whose lines the test reads. */
  function capture(): { stream: Writable; lines: string[] } {
    const lines: string[] = [];
    let rest = '';
    const stream = new Writable({
      write(chunk: Buffer, _enc, done) {
        const parts = (rest + chunk.toString()).split('\n');
        rest = parts.pop() ?? '';
        lines.push(...parts);
        done();
      },
    });
    return { stream, lines };
  }

  /** Attaches `logger` to node two, connects an app there and sends it one visitor; resolves once the request line is in. */
  async function traffic(two: TestNode, lines: string[], logger: pino.Logger): Promise<void> {
    const detach = attachLogger(two.node.gateway, logger);
    cleanup(detach);
    await useApp(two.port, (_req, res) => res.end('x'), { name: 'logged' });
    expect((await request(two.port, { host: `logged.localhost:${two.port}`, path: '/hello' })).status).toBe(200);
    await until(async () => (lines.some((l) => l.includes('/hello')) ? true : undefined));
  }

  it('name the node in every JSON line: access log and events, through createLogger', async () => {
    const [, two] = await twoNodes();
    const { stream, lines } = capture();
    await traffic(two, lines, createLogger({ destination: stream }));
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const events = parsed.map((p) => p['event']);
    expect(events).toEqual(expect.arrayContaining(['claim', 'register', 'channel-open', 'request']));
    for (const p of parsed) expect(p['node'], JSON.stringify(p)).toBe('node-two');
    const req = parsed.find((p) => p['event'] === 'request');
    expect(req).toMatchObject({ name: 'logged', path: '/hello', status: 200, node: 'node-two' });
    // Where pino puts bound fields: after hostname, before the event's own.
    expect(Object.keys(req ?? {}).slice(0, 6)).toEqual(['level', 'time', 'pid', 'hostname', 'node', 'event']);
  });

  it('name the node in every line of any other pino logger', async () => {
    const [, two] = await twoNodes();
    const { stream, lines } = capture();
    await traffic(two, lines, pino(stream));
    for (const l of lines) expect(JSON.parse(l), l).toMatchObject({ node: 'node-two' });
    expect(lines.some((l) => JSON.parse(l).event === 'request')).toBe(true);
  });

  it('show the node as a short tag before the message in pretty output', async () => {
    const [, two] = await twoNodes();
    const { stream, lines } = capture();
    await traffic(two, lines, createLogger({ destination: stream, pretty: true }));
    expect(lines.length).toBeGreaterThan(3);
    for (const l of lines) {
      expect(l, l).toContain('[node-two] ');
      expect(l, l).not.toContain('"node"');
    }
    expect(lines.find((l) => l.includes('/hello'))).toMatch(/INFO \(logged\): \[node-two\] GET \/hello 200 \{/);
  });

  it("name the node once in every line of a logger made for it, the program's own lines included", async () => {
    const [, two] = await twoNodes();
    const { stream, lines } = capture();
    const logger = createLogger({ destination: stream, node: two.node.gateway.nodeId });
    await traffic(two, lines, logger);
    logger.info({ event: 'reload' }, 'keys reloaded');
    await until(async () => (lines.some((l) => l.includes('keys reloaded')) ? true : undefined));
    for (const l of lines) {
      expect(l.split('"node":').length, l).toBe(2);
      expect(JSON.parse(l), l).toMatchObject({ node: 'node-two' });
    }
    expect(lines.some((l) => JSON.parse(l).event === 'request')).toBe(true);
  });

  it('name no node on a gateway on its own', async () => {
    const gw = await useGateway();
    const { stream, lines } = capture();
    cleanup(attachLogger(gw.gateway, createLogger({ destination: stream })));
    await useApp(gw.port, (_req, res) => res.end('x'), { name: 'alone' });
    await request(gw.port, { host: `alone.localhost:${gw.port}`, path: '/hello' });
    await until(async () => (lines.some((l) => l.includes('/hello')) ? true : undefined));
    for (const l of lines) expect(JSON.parse(l), l).not.toHaveProperty('node');
  });
});
